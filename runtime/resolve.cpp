// Shape resolution and constant folding in one pass over the topological order.
#include "runtime/resolve.h"

#include <set>
#include <vector>

#include "graph/control_flow.h"
#include "graph/slice_update.h"
#include "runtime/batch_dimension.h"
#include "runtime/fuse_qdq.h"
#include "runtime/fusion_util.h"
#include "runtime/op_registry.h"
#include "runtime/ops/ops.h"

namespace qforge::runtime {
namespace {

bool is_static(const graph::Shape& shape) {
  for (int64_t d : shape) {
    if (d < 0) return false;
  }
  return true;
}

// Ops whose output depends only on the shapes of their inputs, so they fold as soon as the
// shapes are known, even when the input values are not constants.
bool reads_only_shapes(const std::string& op_type) {
  return op_type == "Shape" || op_type == "Size";
}

std::vector<Tensor> evaluate(const graph::Node& node, const OpDef& def,
                             std::span<const InputInfo> infos,
                             const std::vector<TensorInfo>& out_infos) {
  auto kernel = def.create(node, infos, out_infos);
  std::vector<Tensor> inputs;
  for (const InputInfo& info : infos) {
    if (!info.present) {
      inputs.emplace_back();
    } else if (info.constant) {
      inputs.push_back(*info.constant);
    } else {
      inputs.push_back(Tensor::wrap(info.dtype, info.shape, nullptr));  // shape-only input
    }
  }
  std::vector<Tensor> outputs;
  for (const TensorInfo& info : out_infos) outputs.emplace_back(info.dtype, info.shape);
  std::vector<std::byte> workspace(kernel->workspace_bytes());
  kernel->forward(inputs, outputs, workspace.data());
  return outputs;
}

// Ops each of whose float outputs' elements is a copy of one input element, so that a fold of
// them is a derivation (graph/derivation.h) of its float inputs. Identity is not one: an Identity
// of an initializer is torch.onnx's alias of a parameter, a parameter of its own.
bool moves_elements(const std::string& op_type) {
  static const std::set<std::string, std::less<>> kOps = {
      "Concat", "Expand",  "Flatten", "Gather",    "Reshape",  "Slice",
      "Split",  "Squeeze", "Tile",    "Transpose", "Unsqueeze"};
  return kOps.count(op_type) > 0;
}

// Records the fold of an element-moving node as a derivation of each output from the inputs in
// `sources`, and adds those outputs to `sources`: the node runs once more on its float inputs'
// element indices (exact in float32 below 2^24), and each output element's value tells which input
// element it copies.
void record_fold(graph::Graph& graph, const graph::Node& node, const OpDef& def,
                 std::span<const InputInfo> infos, const std::vector<TensorInfo>& out_infos,
                 std::set<std::string, std::less<>>& sources) {
  if (!moves_elements(node.op_type())) return;
  auto float_constant = [&](size_t i) {
    return infos[i].present && infos[i].constant && infos[i].dtype == DType::kFloat32;
  };
  int64_t total = 0;
  bool any_source = false;
  for (size_t i = 0; i < infos.size(); ++i) {
    if (!float_constant(i)) continue;
    total += infos[i].constant->numel();
    any_source = any_source || sources.count(node.input(i)->name()) > 0;
  }
  constexpr int64_t kExactIndices = int64_t{1} << 24;
  if (!any_source || total > kExactIndices) return;
  std::vector<InputInfo> indexed(infos.begin(), infos.end());
  std::vector<Tensor> indices;
  indices.reserve(infos.size());
  std::vector<int64_t> base(infos.size(), -1);
  total = 0;
  for (size_t i = 0; i < infos.size(); ++i) {
    if (!float_constant(i)) continue;
    Tensor t(DType::kFloat32, infos[i].shape);
    for (int64_t j = 0; j < t.numel(); ++j) t.data<float>()[j] = static_cast<float>(total + j);
    base[i] = total;
    total += t.numel();
    indices.push_back(std::move(t));
    indexed[i].constant = &indices.back();
  }
  const std::vector<Tensor> outputs = evaluate(node, def, indexed, out_infos);
  for (size_t o = 0; o < outputs.size() && o < node.num_outputs(); ++o) {
    if (outputs[o].dtype() != DType::kFloat32) continue;
    graph::Derivation d{
        .derived = node.output(o)->name(), .shape = outputs[o].shape(), .terms = {}};
    for (size_t i = 0; i < infos.size(); ++i) {
      if (base[i] < 0 || !sources.count(node.input(i)->name())) continue;
      graph::DerivedTerm term{.source = node.input(i)->name(), .source_shape = infos[i].shape};
      const int64_t end = base[i] + infos[i].constant->numel();
      const float* values = outputs[o].data<float>();
      for (int64_t e = 0; e < outputs[o].numel(); ++e) {
        const auto v = static_cast<int64_t>(values[e]);
        if (v >= base[i] && v < end) term.pairs.emplace_back(e, v - base[i]);
      }
      if (!term.pairs.empty()) d.terms.push_back(std::move(term));
    }
    if (d.terms.empty()) continue;
    sources.insert(d.derived);
    graph.record_derivation(std::move(d));
  }
}

// What resolution knows of `node`'s inputs, which must all have shapes: their types, and the
// constants' values. `all_constant` and `shapes_known` are cleared where an input is not a
// constant (a trained parameter counts as none but where an Identity passes it on as another)
// or has a dynamic shape.
void read_inputs(const graph::Node& node, const ResolveOptions& options,
                 std::vector<InputInfo>& infos, bool& all_constant, bool& shapes_known) {
  infos.assign(node.num_inputs(), InputInfo{});
  for (size_t i = 0; i < node.num_inputs(); ++i) {
    const graph::Value* v = node.input(i);
    if (!v) continue;
    if (!v->has_shape()) {
      throw_internal("resolve: " + node.label() + ": input '" + v->name() +
                     "' has no shape after its producer was resolved");
    }
    infos[i].present = true;
    infos[i].dtype = v->dtype();
    infos[i].shape = *v->shape();
    if (v->is_constant()) {
      infos[i].constant = &v->constant();
      if (options.parameters.count(v->name()) &&
          !(node.op_type() == "Identity" && options.parameters.count(node.output(0)->name()))) {
        all_constant = false;
      }
    } else {
      all_constant = false;
    }
    shapes_known = shapes_known && is_static(infos[i].shape);
  }
}

// The condition of an If, which the shapes must have fixed by now (graph/control_flow.h).
bool if_condition(const graph::Node& node) {
  const graph::Value* cond = node.input(0);
  if (!cond || !cond->is_constant()) {
    throw_unsupported("resolve: " + node.label() + ": its condition '" +
                      (cond ? cond->name() : std::string()) +
                      "' depends on the input values; qforge runs an If whose condition the "
                      "input shapes decide");
  }
  const Tensor& c = cond->constant();
  if (c.numel() != 1 || c.dtype() != DType::kBool) {
    throw_invalid("resolve: " + node.label() + ": expected a condition of one bool, got " +
                  std::string(kernels::dtype_name(c.dtype())) + " " +
                  kernels::shape_str(c.shape()));
  }
  return c.data<bool>()[0];
}

}  // namespace

std::map<std::string, graph::Shape> input_shapes_for_batch(const graph::Graph& graph,
                                                           int64_t batch) {
  std::map<std::string, graph::Shape> shapes;
  for (const graph::Value* in : graph.inputs()) {
    if (!in->has_shape() || in->shape()->empty()) {
      throw_invalid("model input '" + in->name() + "' has no static shape; qforge needs one");
    }
    graph::Shape shape = *in->shape();
    shape[0] = batch;  // a fixed batch too: resolve frees it (runtime/batch_dimension.h)
    shapes[in->name()] = shape;
  }
  return shapes;
}

ResolveStats resolve(graph::Graph& graph, const ResolveOptions& options) {
  // A model that fixes its batch, asked for another, is first made to run at any batch.
  for (const graph::Value* in : graph.inputs()) {
    auto it = options.input_shapes.find(in->name());
    if (it == options.input_shapes.end() || !in->has_shape() || in->shape()->empty() ||
        it->second.size() != in->shape()->size()) {
      continue;
    }
    const int64_t fixed = (*in->shape())[0];
    if (fixed >= 0 && fixed != it->second[0]) {
      try {
        free_fixed_batch(graph, options);
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kUnsupported) throw;
        throw_unsupported(std::string(e.what()) + " than the " + std::to_string(fixed) +
                          " its file fixes (--batch " + std::to_string(fixed) + ")");
      }
      break;
    }
  }
  for (graph::Value* in : graph.inputs()) {
    auto it = options.input_shapes.find(in->name());
    if (it != options.input_shapes.end()) {
      if (in->has_shape() && in->shape()->size() != it->second.size()) {
        throw_invalid("model input '" + in->name() + "' has rank " +
                      std::to_string(in->shape()->size()) + ", got shape " +
                      kernels::shape_str(it->second));
      }
      if (in->has_shape()) {
        for (size_t d = 0; d < it->second.size(); ++d) {
          int64_t model_dim = (*in->shape())[d];
          if (model_dim >= 0 && model_dim != it->second[d]) {
            throw_invalid("model input '" + in->name() + "' has shape " +
                          kernels::shape_str(*in->shape()) + ", got " +
                          kernels::shape_str(it->second));
          }
        }
      }
      in->set_type(in->dtype(), it->second);
    }
    if (!in->has_shape() || !is_static(*in->shape())) {
      throw_invalid("model input '" + in->name() + "' has dynamic shape " +
                    (in->has_shape() ? kernels::shape_str(*in->shape()) : std::string("[?]")) +
                    "; give its static shape");
    }
  }

  const OpRegistry& registry = builtin_ops();
  ResolveStats stats;
  // What a fold may derive from: the float constants the graph starts with, and what earlier
  // folds derived from them.
  std::set<std::string, std::less<>> sources;
  for (const graph::Value* v : graph.values()) {
    if (v->is_constant() && v->dtype() == DType::kFloat32) sources.insert(v->name());
  }
  // Folding edits the live order; an If adds its branch's nodes, which come next.
  std::vector<graph::Node*> order = graph.nodes();
  std::set<const graph::Node*> folded_ahead;  // DequantizeLinears folded with their pair
  // The index nodes of ScatterNDs that may address a box (graph/slice_update.h) wait for the
  // ScatterND: computed, they would be the box's every position.
  std::set<const graph::Node*> deferred;
  for (const graph::Node* node : order) {
    if (node->op_type() != "ScatterND") continue;
    for (const graph::Node* n : graph::box_index_nodes(*node)) deferred.insert(n);
  }
  for (size_t position = 0; position < order.size(); ++position) {
    graph::Node* node = order[position];
    if (folded_ahead.count(node)) continue;
    if (node->op_type() == "If") {
      const bool condition = if_condition(*node);
      const std::vector<graph::Node*> branch = graph::inline_branch(graph, node, condition);
      order.insert(order.begin() + static_cast<std::ptrdiff_t>(position) + 1, branch.begin(),
                   branch.end());
      continue;
    }
    const OpDef* def = registry.find(node->op_type());
    if (!def) {
      throw_unsupported("resolve: " + node->label() + ": no runtime implementation of '" +
                        node->op_type() + "'");
    }
    std::vector<InputInfo> infos;
    bool all_constant = true;
    bool shapes_known = true;
    read_inputs(*node, options, infos, all_constant, shapes_known);
    if (graph.opset > 0) ops::check_opset_form(*node, infos, graph.opset);
    std::vector<TensorInfo> out_infos = def->infer(*node, infos);
    if (out_infos.size() < node->num_outputs()) {
      throw_internal("resolve: " + node->label() + ": inference gave " +
                     std::to_string(out_infos.size()) + " outputs");
    }
    out_infos.resize(node->num_outputs());
    for (size_t i = 0; i < node->num_outputs(); ++i) {
      node->output(i)->set_type(out_infos[i].dtype, out_infos[i].shape);
    }
    if (node->op_type() == "ScatterND") {
      // A node this branch made or held back, its inputs resolved: checked, and folded where
      // they are all constants and it is no graph output.
      auto check_and_fold = [&](graph::Node* n) {
        std::vector<InputInfo> n_infos;
        bool n_constant = true, n_static = true;
        read_inputs(*n, options, n_infos, n_constant, n_static);
        const OpDef& n_def = *registry.find(n->op_type());
        const std::vector<TensorInfo> n_out = n_def.infer(*n, n_infos);
        if (!n_constant || n->output(0)->is_graph_output()) return;
        graph.fold_node(n, evaluate(*n, n_def, n_infos, n_out));
        ++stats.folded_nodes;
      };
      if (graph::Node* update = graph::replace_box_scatter(graph, *node)) {
        // Its index nodes are read by nothing now: remove_dead takes them. Constant data and
        // updates (Swin's attention mask, its windows numbered) fold as the ScatterND would
        // have, to the same values.
        check_and_fold(update);
        continue;
      }
      // Not a box: the index nodes fold as any others would have, and the ScatterND with them.
      for (graph::Node* n : graph::box_index_nodes(*node)) {
        if (deferred.erase(n)) check_and_fold(n);
      }
      all_constant = shapes_known = true;
      read_inputs(*node, options, infos, all_constant, shapes_known);
    }
    bool graph_output = false;
    for (const graph::Value* out : node->outputs()) graph_output |= out->is_graph_output();
    bool foldable = all_constant || (shapes_known && reads_only_shapes(node->op_type()));
    foldable = foldable && !deferred.count(node);
    if (foldable && !graph_output && node->op_type() == "QuantizeLinear" && node->input(2)) {
      // A constant (a weight) quantized and dequantized on the same grid folds as one FakeQuant:
      // dequantize(quantize(x)) bit for bit, in one pass and without the integer tensor.
      graph::Node* dq = sole_consumer(node->output(0));
      if (dq && dq->op_type() == "DequantizeLinear" && !dq->output(0)->is_graph_output() &&
          fake_quant_pair(*node, *dq)) {
        const OpDef* fake = registry.find("FakeQuant");
        const std::vector<TensorInfo> fake_out = fake->infer(*node, infos);
        dq->output(0)->set_type(fake_out[0].dtype, fake_out[0].shape);
        graph.fold_node(dq, evaluate(*node, *fake, infos, fake_out), node);
        folded_ahead.insert(dq);
        stats.folded_nodes += 2;
        continue;  // the QuantizeLinear is read by nothing now: remove_dead takes it
      }
    }
    if (foldable && !graph_output) {
      record_fold(graph, *node, *def, infos, out_infos, sources);
      graph.fold_node(node, evaluate(*node, *def, infos, out_infos));
      ++stats.folded_nodes;
    }
  }
  graph.remove_dead();
  stats.remaining_nodes = graph.nodes().size();
  return stats;
}

}  // namespace qforge::runtime
