#include "quant/qdq_export.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>

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
// The scale and zero point are new constants unless given.
Value* add_qdq(Graph& g, Value* x, const Quantizer& q, const std::string& stem,
               const Node* position, Value* scale = nullptr, Value* zero = nullptr) {
  if (!scale) scale = scale_constant(g, stem, q);
  if (!zero) zero = zero_point_constant(g, stem, q);
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

// Activations: one shared pair per tensor, in front of its quantized module inputs.
// Returns each point's scale constant by point tensor.
std::map<std::string, std::string> insert_activation_pairs(Graph& g, const QuantPlan& plan,
                                                           const ActivationAmax& amax,
                                                           const ActivationScales& scales,
                                                           QdqCounts& count) {
  std::map<std::string, std::string> scale_names;
  // A scale group's pairs read one scale constant, made at its first point (the group's name):
  // one initializer, so training learns one scale for the group.
  std::map<std::string, std::pair<Value*, Value*>> group_scale;  // group → scale, zero point
  for (const ActivationPoint& p : plan.activations) {
    const float group_amax = shared_amax(plan, p, amax);
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
    const std::string& leader = p.scale_group.empty() ? p.tensor : p.scale_group;
    auto learned = scales.find(leader);
    float scale = scale_from_amax(group_amax);
    if (learned != scales.end()) {
      if (!std::isfinite(learned->second) || !(learned->second > 0)) {
        throw_invalid("qdq export: point '" + leader + "': expected a finite scale > 0, got " +
                      std::to_string(learned->second));
      }
      scale = learned->second;
    }
    const Quantizer q{{scale}};
    auto shared = group_scale.find(leader);
    Value* dq = nullptr;
    if (shared == group_scale.end()) {
      dq = add_qdq(g, x, q, p.tensor, first_in_order(g, consumers));
      scale_names[leader] = dq->producer()->input(1)->name();
      if (!p.scale_group.empty()) {
        group_scale[leader] = {dq->producer()->input(1), dq->producer()->input(2)};
      }
    } else {
      dq = add_qdq(g, x, q, p.tensor, first_in_order(g, consumers), shared->second.first,
                   shared->second.second);
    }
    for (const QuantConsumer& c : p.consumers) {
      g.set_input(g.find_node(c.node), static_cast<size_t>(c.input), dq);
    }
    ++count.activation_pairs;
  }
  return scale_names;
}

// The fixed-scale pair of a module's internal quantizer on `probs`, the tensor its lowering
// reported.
void insert_internal_pair(Graph& g, Value* probs, float scale) {
  const std::vector<Node*> readers = probs->consumers();
  const std::set<const Node*> reader_set(readers.begin(), readers.end());
  Value* dq = add_qdq(g, probs, Quantizer{{scale}}, probs->name(), first_in_order(g, reader_set));
  for (Node* r : readers) {
    for (size_t i = 0; i < r->num_inputs(); ++i) {
      if (r->input(i) == probs) g.set_input(r, i, dq);
    }
  }
}

// Lowers the module nodes of `g` one by one, in graph order. After each, `after` gets its name,
// label and what its lowering reported, then the fixed-scale pair of the module's internal
// quantizer (OpSchema::internal_quantizer, the attention modules' softmax) goes on the tensor its
// lowering reported, where `plan` quantizes it. Returns the number of softmax pairs.
using AfterLowering = std::function<void(const std::string& name, const std::string& label,
                                         const graph::Lowered& lowered)>;
size_t lower_modules(Graph& g, const QuantPlan& plan, const std::string& stage,
                     const AfterLowering& after) {
  std::map<std::string, float> softmax_scale;
  for (const SoftmaxPoint& s : plan.softmax) softmax_scale[s.node] = s.scale;
  size_t softmax_pairs = 0;
  const std::vector<Node*> order = g.nodes();
  for (Node* node : order) {
    const graph::OpSchema* schema = graph::find_schema(node->op_type());
    if (!schema || schema->kind != graph::SchemaKind::kModule) continue;
    if (!schema->lower)
      throw_internal(stage + ": " + node->label() + ": module without a lowering");
    const std::string name = node->name();
    const std::string label = node->label();
    graph::Lowered lowered;
    schema->lower(g, *node, lowered);
    after(name, label, lowered);
    auto sm = softmax_scale.find(name);
    if (sm != softmax_scale.end()) {
      if (!lowered.internal_quantizer_input) {
        throw_internal(stage + ": " + label + ": lowering reported no input of its " +
                       std::string(schema->internal_quantizer.name) + " quantizer");
      }
      insert_internal_pair(g, lowered.internal_quantizer_input, sm->second);
      ++softmax_pairs;
    }
  }
  return softmax_pairs;
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

  insert_activation_pairs(g, plan, amax, options.activation_scales, count);

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
      const int bias_input =
          graph::input_index(*graph::find_schema(n->op_type()), graph::Role::kBias);
      g.set_input(n, static_cast<size_t>(bias_input),
                  g.add_constant(g.unique_value_name(name), bias));
      folded_modules.insert(w.node);
    }
    ++count.weight_quantizers;
  }

  // Lower module by module, so that the nodes each one became are known.
  count.softmax_pairs = lower_modules(
      g, plan, "qdq export",
      [&](const std::string& name, const std::string& label, const graph::Lowered& lowered) {
        if (!folded_modules.count(name)) return;
        // Conv → BN becomes Conv with the folded weight and bias: the BN goes.
        Node* bn = lowered.batch_norm;
        if (!bn)
          throw_internal("qdq export: " + label + ": lowering reported no BatchNormalization");
        Value* conv_out = bn->input(0);
        Value* bn_out = bn->output(0);
        const std::string bn_out_name = bn_out->name();
        const std::optional<graph::Shape> shape = bn_out->shape();
        g.replace_all_uses(bn_out, conv_out);
        g.remove_node(bn);
        g.rename_value(conv_out, bn_out_name);
        if (shape) conv_out->set_type(DType::kFloat32, *shape);
        ++count.folded_batch_norms;
      });
  g.remove_dead();
  g.check_consistency();
  return out;
}

std::string export_qdq(const Graph& fused, const QuantPlan& plan, const ActivationAmax& amax,
                       const QdqExportOptions& options) {
  std::unique_ptr<Graph> g = build_qdq_graph(fused, plan, amax, options);
  runtime::restore_declared_batch(*g, options.batch);
  return graph::serialize_onnx(*g, options.onnx);
}

void save_qdq(const Graph& fused, const QuantPlan& plan, const ActivationAmax& amax,
              const std::string& path, const QdqExportOptions& options) {
  std::unique_ptr<Graph> g = build_qdq_graph(fused, plan, amax, options);
  runtime::restore_declared_batch(*g, options.batch);
  graph::save_onnx(*g, path, options.onnx);
}

namespace {

// A shape constant [1, C, 1, …] of `rank` dimensions, for a per-channel vector against an
// NC… activation.
Value* channel_shape(Graph& g, const std::string& stem, int64_t channels, size_t rank) {
  std::vector<int64_t> dims(rank, 1);
  dims[1] = channels;
  return g.add_constant(g.unique_value_name(stem + "_channel_shape"),
                        Tensor::from_vector<int64_t>({static_cast<int64_t>(rank)}, dims));
}

// Output types are left to resolution, as the lowerings leave them.
Value* insert_node(Graph& g, const std::string& name, const std::string& op_type,
                   std::vector<Value*> inputs, const Node* position,
                   std::map<std::string, graph::AttributeValue, std::less<>> attributes = {}) {
  Node* n = g.insert_node({.name = g.unique_node_name(name),
                           .op_type = op_type,
                           .inputs = std::move(inputs),
                           .output_names = {g.unique_value_name(name + "_out")},
                           .attributes = std::move(attributes)},
                          position);
  return n->output(0);
}

// In the nodes a folded module lowered to (Conv → BatchNormalization): the Conv loses its
// bias, its output is divided by the fold factor and the bias added back before the BN, as
// PyTorch's fused ConvBn QAT module computes it.
void unfold_conv_output(Graph& g, const graph::Lowered& lowered, Value* factor,
                        const std::string& label) {
  Node* conv = lowered.weight_op;
  Node* bn = lowered.batch_norm;
  if (!conv || !bn) throw_internal("training graph: " + label + ": lowering reported no Conv → BN");
  const graph::OpSchema& conv_schema = *graph::find_schema(conv->op_type());
  Value* x = graph::role_input(conv_schema, *conv, graph::Role::kData);
  Value* w = graph::role_input(conv_schema, *conv, graph::Role::kWeight);
  Value* bias = graph::role_input(conv_schema, *conv, graph::Role::kBias);
  Value* y = conv->output(0);
  const size_t rank = x->known_shape().size();
  const int64_t channels = factor->known_shape()[0];
  const std::string stem = conv->name();
  if (bias) {
    Node* plain = g.insert_node({.name = g.unique_node_name(stem + "_nobias"),
                                 .op_type = conv->op_type(),
                                 .inputs = {x, w},
                                 .output_names = {g.unique_value_name(y->name() + "_nobias")},
                                 .attributes = conv->attributes()},
                                conv);
    g.replace_all_uses(y, plain->output(0));
    g.remove_node(conv);
    y = plain->output(0);
  }
  Value* f = insert_node(g, stem + "/fold_factor", "Reshape",
                         {factor, channel_shape(g, stem, channels, rank)}, bn);
  Value* out = insert_node(g, stem + "/unfold", "Div", {y, f}, bn);
  if (bias) {
    Value* b = insert_node(g, stem + "/bias", "Reshape",
                           {bias, channel_shape(g, stem + "/bias", channels, rank)}, bn);
    out = insert_node(g, stem + "/add_bias", "Add", {out, b}, bn);
  }
  g.set_input(bn, 0, out);
}

}  // namespace

TrainingGraph build_training_graph(const Graph& fused, const QuantPlan& plan,
                                   const ActivationAmax& amax,
                                   const TrainingGraphOptions& options) {
  TrainingGraph result;
  result.graph = fused.clone();
  Graph& g = *result.graph;
  QdqCounts count;

  // What may be trained: the fused graph's float constants, except literals (numbers the model
  // writes, such as a LayerNorm's epsilon written out), attention masks and the settings of ops
  // (Resize's scales, Pow's exponent).
  std::set<std::string> candidates;
  for (const Value* v : fused.values()) {
    if (v->is_constant() && v->dtype() == DType::kFloat32 && !v->is_literal()) {
      candidates.insert(v->name());
    }
  }
  for (const Node* n : fused.nodes()) {
    const graph::OpSchema* schema = graph::find_schema(n->op_type());
    if (const Value* mask = schema ? graph::role_input(*schema, *n, graph::Role::kMask) : nullptr) {
      candidates.erase(mask->name());
    }
    for (size_t i = 0; i < n->num_inputs(); ++i) {
      if (n->input(i) && graph::float_input_is_setting(n->op_type(), i)) {
        candidates.erase(n->input(i)->name());
      }
    }
  }

  const std::map<std::string, std::string> scale_names =
      insert_activation_pairs(g, plan, amax, options.activation_scales, count);

  // Weights: a WeightFakeQuant in front of each, folding the module's BN when the export does.
  std::map<std::string, Value*> fold_factor;  // module node → its factor output
  for (const WeightPoint& w : plan.weights) {
    Node* n = g.find_node(w.node);
    if (!n) throw_invalid("training graph: weight point names node '" + w.node + "', not in it");
    Value* weight = n->input(static_cast<size_t>(w.input));
    std::vector<Value*> inputs = {weight};
    std::map<std::string, graph::AttributeValue, std::less<>> attributes = {
        {"axis", int64_t{w.per_channel ? w.axis : -1}}};
    if (w.folds_batch_norm) {
      const graph::OpSchema& schema = *graph::find_schema(n->op_type());
      inputs.push_back(graph::role_input(schema, *n, graph::Role::kBnGamma));
      inputs.push_back(graph::role_input(schema, *n, graph::Role::kBnVar));
      attributes["epsilon"] = n->attr_float("epsilon", 1e-5f);
      if (w.transposed) {
        attributes["transposed"] = int64_t{1};
        attributes["group"] = w.group;
      }
    }
    const std::string stem = weight->name();
    std::vector<std::string> outputs = {g.unique_value_name(stem + "_fake_quant")};
    if (w.folds_batch_norm) outputs.push_back(g.unique_value_name(stem + "_fold_factor"));
    Node* q = g.insert_node({.name = g.unique_node_name(stem + "/WeightFakeQuant"),
                             .op_type = "WeightFakeQuant",
                             .inputs = std::move(inputs),
                             .output_names = std::move(outputs),
                             .attributes = std::move(attributes)},
                            n);
    q->output(0)->set_type(DType::kFloat32, weight->known_shape());
    if (w.folds_batch_norm) {
      const graph::Shape& ws = weight->known_shape();
      q->output(1)->set_type(DType::kFloat32, {w.transposed ? ws[1] * w.group : ws[0]});
      fold_factor[w.node] = q->output(1);
    }
    g.set_input(n, static_cast<size_t>(w.input), q->output(0));
  }

  lower_modules(
      g, plan, "training graph",
      [&](const std::string& name, const std::string& label, const graph::Lowered& lowered) {
        auto f = fold_factor.find(name);
        if (f != fold_factor.end()) unfold_conv_output(g, lowered, f->second, label);
      });
  g.remove_dead();
  g.check_consistency();

  // BN running statistics are state wherever a BN reads them.
  std::set<std::string> state;
  for (const Node* n : g.nodes()) {
    if (n->op_type() != "BatchNormalization") continue;
    for (size_t i : {size_t{3}, size_t{4}}) {
      if (n->input(i) && n->input(i)->is_constant()) state.insert(n->input(i)->name());
    }
  }
  for (const Value* v : g.values()) {
    if (!v->is_constant() || !candidates.count(v->name())) continue;
    if (state.count(v->name())) {
      result.state.push_back(v->name());
    } else {
      result.parameters.push_back(v->name());
    }
  }
  if (options.learn_scales) {
    for (const auto& [tensor, name] : scale_names) result.parameters.push_back(name);
    result.scale_parameters = scale_names;
  }
  std::sort(result.parameters.begin(), result.parameters.end());
  std::sort(result.state.begin(), result.state.end());
  if (options.point_outputs) {
    for (const ActivationPoint& p : plan.activations) g.mark_output(g.find_value(p.tensor));
  }
  return result;
}

}  // namespace qforge::quant
