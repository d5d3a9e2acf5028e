#include "quant/qdq_export.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <unordered_set>

#include "graph/catalog.h"
#include "kernels/error.h"
#include "quant/int8.h"

namespace qforge::quant {
namespace {

using graph::Graph;
using graph::Node;
using graph::Value;
using kernels::DType;
using kernels::Tensor;

struct Quantizer {
  std::vector<float> scales;  // one: per tensor
  int axis = 0;
  bool per_axis() const { return scales.size() > 1 || axis_forced; }
  bool axis_forced = false;  // per-axis even with a single channel
};

Value* scale_constant(Graph& g, const std::string& stem, const Quantizer& q) {
  Tensor s = q.per_axis()
                 ? Tensor::from_vector<float>({static_cast<int64_t>(q.scales.size())}, q.scales)
                 : Tensor::scalar_f32(q.scales[0]);
  std::string name = stem;
  name.append("_scale");
  return g.add_constant(g.unique_value_name(name), std::move(s));
}

Value* zero_point_constant(Graph& g, const std::string& stem, const Quantizer& q) {
  Tensor z = q.per_axis() ? Tensor(DType::kInt8, {static_cast<int64_t>(q.scales.size())})
                          : Tensor(DType::kInt8, {});
  std::string name = stem;
  name.append("_zero_point");
  return g.add_constant(g.unique_value_name(name), std::move(z));
}

std::map<std::string, graph::AttributeValue, std::less<>> axis_attr(const Quantizer& q) {
  if (!q.per_axis()) return {};
  return {{"axis", int64_t{q.axis}}};
}

// DequantizeLinear(`x_q`) inserted before `position`; x_q is int8 (from a Q node or constant).
Value* add_dequantize(Graph& g, Value* x_q, Value* scale, Value* zero, const Quantizer& q,
                      const std::string& stem, const Node* position,
                      const std::optional<graph::Shape>& shape) {
  std::string node = stem;
  node.append("/DequantizeLinear");
  std::string out = stem;
  out.append("_dequantized");
  Node* dq = g.insert_node({.name = g.unique_node_name(node),
                            .op_type = "DequantizeLinear",
                            .inputs = {x_q, scale, zero},
                            .output_names = {g.unique_value_name(out)},
                            .attributes = axis_attr(q)},
                           position);
  if (shape) dq->output(0)->set_type(DType::kFloat32, *shape);
  return dq->output(0);
}

// x → QuantizeLinear → DequantizeLinear, inserted before `position`; returns the DQ output.
Value* add_qdq(Graph& g, Value* x, const Quantizer& q, const std::string& stem,
               const Node* position) {
  Value* scale = scale_constant(g, stem, q);
  Value* zero = zero_point_constant(g, stem, q);
  std::string node = stem;
  node.append("/QuantizeLinear");
  std::string out = stem;
  out.append("_quantized");
  Node* qn = g.insert_node({.name = g.unique_node_name(node),
                            .op_type = "QuantizeLinear",
                            .inputs = {x, scale, zero},
                            .output_names = {g.unique_value_name(out)},
                            .attributes = axis_attr(q)},
                           position);
  if (x->has_shape()) qn->output(0)->set_type(DType::kInt8, *x->shape());
  return add_dequantize(g, qn->output(0), scale, zero, q, stem, position, x->shape());
}

// The earliest node in graph order among `nodes`.
const Node* first_in_order(const Graph& g, const std::set<const Node*>& nodes) {
  for (const Node* n : g.nodes()) {
    if (nodes.count(n)) return n;
  }
  return nullptr;
}

// Integers of w / scale along `axis`, as ONNX QuantizeLinear computes them (float32 division,
// round half to even, saturation).
Tensor quantize_int8(const Tensor& w, const Quantizer& q) {
  Tensor out(DType::kInt8, w.shape());
  const int64_t channels = q.per_axis() ? w.dim(q.axis) : 1;
  int64_t inner = 1;
  if (q.per_axis()) {
    for (int d = q.axis + 1; d < w.rank(); ++d) inner *= w.dim(d);
  } else {
    inner = w.numel();
  }
  const float* x = w.data<float>();
  int8_t* y = out.data<int8_t>();
  for (int64_t i = 0; i < w.numel(); ++i) {
    const float s = q.scales[static_cast<size_t>((i / inner) % channels)];
    float r = std::nearbyint(x[i] / s);  // the default rounding mode rounds half to even
    r = std::clamp(r, static_cast<float>(kQMin), static_cast<float>(kQMax));
    y[i] = static_cast<int8_t>(r);
  }
  return out;
}

std::vector<Node*> new_nodes(const Graph& g, const std::unordered_set<const Node*>& before) {
  std::vector<Node*> out;
  for (Node* n : g.nodes()) {
    if (!before.count(n)) out.push_back(n);
  }
  return out;
}

Node* find_op(const std::vector<Node*>& nodes, std::string_view op_type) {
  for (Node* n : nodes) {
    if (n->op_type() == op_type) return n;
  }
  return nullptr;
}

}  // namespace

std::unique_ptr<Graph> build_qdq_graph(const Graph& fused, const QuantPlan& plan,
                                       const ActivationAmax& amax, const QdqExportOptions& options,
                                       QdqCounts* counts) {
  QdqCounts local;
  QdqCounts& count = counts ? *counts : local;
  count = {};
  std::unique_ptr<Graph> out = fused.clone();
  Graph& g = *out;

  // Activations: one shared pair per tensor, in front of its quantized module inputs.
  for (const ActivationPoint& p : plan.activations) {
    auto it = amax.find(p.tensor);
    if (it == amax.end() || !std::isfinite(it->second) || it->second < 0) {
      throw_invalid("qdq export: point '" + p.tensor + "': expected a finite amax >= 0, got " +
                    (it == amax.end() ? std::string("none") : std::to_string(it->second)));
    }
    Value* x = g.find_value(p.tensor);
    if (!x) throw_invalid("qdq export: point '" + p.tensor + "' names no tensor of the graph");
    std::set<const Node*> consumers;
    for (const QuantConsumer& c : p.consumers) {
      const Node* n = g.find_node(c.node);
      if (!n)
        throw_invalid("qdq export: point '" + p.tensor + "' names node '" + c.node +
                      "', not in the graph");
      consumers.insert(n);
    }
    Value* dq = add_qdq(g, x, Quantizer{{scale_from_amax(it->second)}}, p.tensor,
                        first_in_order(g, consumers));
    for (const QuantConsumer& c : p.consumers) {
      g.set_input(g.find_node(c.node), static_cast<size_t>(c.input), dq);
    }
    ++count.activation_pairs;
  }

  // Weights: batch norm folded first, so that the quantizer sees the weight that runs.
  std::set<std::string> folded_modules;
  for (const WeightPoint& w : plan.weights) {
    Node* n = g.find_node(w.node);
    if (!n) throw_invalid("qdq export: weight point names node '" + w.node + "', not in the graph");
    Tensor bias;
    const Tensor weight = quantized_weight(fused, w, &bias);
    Quantizer q;
    for (float a : weight_channel_amax(fused, w)) q.scales.push_back(scale_from_amax(a));
    q.axis = w.axis;
    q.axis_forced = w.per_channel;
    Value* original = n->input(static_cast<size_t>(w.input));
    const std::string stem = original->name();
    Value* dq = nullptr;
    if (options.int8_weights) {
      std::string name = stem;
      name.append("_int8");
      Value* wq = g.add_constant(g.unique_value_name(name), quantize_int8(weight, q));
      dq = add_dequantize(g, wq, scale_constant(g, stem, q), zero_point_constant(g, stem, q), q,
                          stem, n, weight.shape());
    } else {
      Value* wv = original;
      if (w.folds_batch_norm) {
        std::string name = stem;
        name.append("_folded");
        wv = g.add_constant(g.unique_value_name(name), weight);
      }
      dq = add_qdq(g, wv, q, stem, n);
    }
    g.set_input(n, static_cast<size_t>(w.input), dq);
    if (w.folds_batch_norm) {
      std::string name = stem;
      name.append("_folded_bias");
      g.set_input(n, static_cast<size_t>(w.input) + 1,
                  g.add_constant(g.unique_value_name(name), bias));
      folded_modules.insert(w.node);
    }
    ++count.weight_quantizers;
  }

  std::map<std::string, float> softmax_scale;
  for (const SoftmaxPoint& s : plan.softmax) softmax_scale[s.node] = s.scale;

  // Lower module by module, so that the nodes each one became are known.
  const std::vector<Node*> order = g.nodes();
  for (Node* node : order) {
    const graph::OpSchema* schema = graph::find_schema(node->op_type());
    if (!schema || schema->kind != graph::SchemaKind::kModule) continue;
    if (!schema->lower)
      throw_internal("qdq export: " + node->label() + ": module without a lowering");
    const std::string name = node->name();
    const std::string label = node->label();
    const std::unordered_set<const Node*> before(g.nodes().begin(), g.nodes().end());
    schema->lower(g, *node);
    const std::vector<Node*> made = new_nodes(g, before);

    if (folded_modules.count(name)) {
      // Conv → BN becomes Conv with the folded weight and bias: the BN goes.
      Node* bn = find_op(made, "BatchNormalization");
      if (!bn) throw_internal("qdq export: " + label + ": lowering made no BatchNormalization");
      Value* conv_out = bn->input(0);
      Value* bn_out = bn->output(0);
      const std::string bn_out_name = bn_out->name();
      const std::optional<graph::Shape> shape = bn_out->shape();
      g.replace_all_uses(bn_out, conv_out);
      g.remove_node(bn);
      g.rename_value(conv_out, bn_out_name);
      if (shape) conv_out->set_type(DType::kFloat32, *shape);
      ++count.folded_batch_norms;
    }
    auto sm = softmax_scale.find(name);
    if (sm != softmax_scale.end()) {
      Node* softmax = find_op(made, "Softmax");
      if (!softmax) throw_internal("qdq export: " + label + ": lowering made no Softmax");
      Value* probs = softmax->output(0);
      const std::vector<Node*> readers = probs->consumers();
      const std::set<const Node*> reader_set(readers.begin(), readers.end());
      Value* dq =
          add_qdq(g, probs, Quantizer{{sm->second}}, probs->name(), first_in_order(g, reader_set));
      for (Node* r : readers) {
        for (size_t i = 0; i < r->num_inputs(); ++i) {
          if (r->input(i) == probs) g.set_input(r, i, dq);
        }
      }
      ++count.softmax_pairs;
    }
  }
  g.remove_dead();
  g.check_consistency();
  return out;
}

std::string export_qdq(const Graph& fused, const QuantPlan& plan, const ActivationAmax& amax,
                       const QdqExportOptions& options) {
  return graph::serialize_onnx(*build_qdq_graph(fused, plan, amax, options), options.onnx);
}

void save_qdq(const Graph& fused, const QuantPlan& plan, const ActivationAmax& amax,
              const std::string& path, const QdqExportOptions& options) {
  graph::save_onnx(*build_qdq_graph(fused, plan, amax, options), path, options.onnx);
}

}  // namespace qforge::quant
