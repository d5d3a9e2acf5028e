// Conv epilogue fusion.
#include "runtime/fuse_epilogues.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "graph/catalog.h"
#include "graph/fusions.h"
#include "graph/rewrite_util.h"
#include "kernels/norm.h"
#include "runtime/fusion_util.h"

namespace qforge::runtime {
namespace {

using graph::Node;
using graph::Shape;
using graph::Tensor;
using graph::Value;

bool only_first_output_used(const Node& n) {
  for (size_t i = 1; i < n.num_outputs(); ++i) {
    if (!n.output(i)->consumers().empty() || n.output(i)->is_graph_output()) return false;
  }
  return true;
}

bool constant_f32(const Value* v) {
  return v && v->is_constant() && v->dtype() == kernels::DType::kFloat32;
}

// A BatchNormalization in inference form over `v` with constant parameters, as a per-channel
// scale and shift (kernels::batch_norm_fold, in float as the output pass has always run it).
bool fold_batch_norm(const Node& bn, int64_t channels, Tensor& scale, Tensor& shift) {
  if (bn.op_type() != "BatchNormalization" || bn.attr_int("training_mode", 0) != 0 ||
      !only_first_output_used(bn)) {
    return false;
  }
  const graph::OpSchema& schema = *graph::find_schema("BatchNormalization");
  const Value* parameters[] = {graph::role_input(schema, bn, graph::Role::kBnGamma),
                               graph::role_input(schema, bn, graph::Role::kBnBeta),
                               graph::role_input(schema, bn, graph::Role::kBnMean),
                               graph::role_input(schema, bn, graph::Role::kBnVar)};
  for (const Value* p : parameters) {
    if (!constant_f32(p) || p->constant().numel() != channels) return false;
  }
  scale = Tensor(kernels::DType::kFloat32, {channels});
  shift = Tensor(kernels::DType::kFloat32, {channels});
  kernels::batch_norm_fold({.gamma = parameters[0]->constant().data<float>(),
                            .beta = parameters[1]->constant().data<float>(),
                            .mean = parameters[2]->constant().data<float>(),
                            .var = parameters[3]->constant().data<float>(),
                            .epsilon = bn.attr_float("epsilon", 1e-5f),
                            .channels = channels},
                           nullptr, kernels::FoldPrecision::kFloat,
                           {.scale = scale.data<float>(), .shift = shift.data<float>()});
  return true;
}

// Relu or Clip with constant bounds as a clamp range.
bool clamp_of(const Node& n, float& lo, float& hi) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (n.op_type() == "Relu") {
    lo = 0;
    hi = kInf;
    return true;
  }
  if (n.op_type() != "Clip") return false;
  lo = -kInf;
  hi = kInf;
  for (size_t i : {size_t{1}, size_t{2}}) {
    const Value* bound = n.input(i);
    if (!bound) continue;
    if (!constant_f32(bound) || bound->constant().numel() != 1) return false;
    (i == 1 ? lo : hi) = bound->constant().data<float>()[0];
  }
  return true;
}

// An activation other than a clamp that the output pass applies last (kernels::ConvEpilogue):
// one node as the module fusions match it (graph::match_single_activation: HardSwish,
// HardSigmoid, Sigmoid, LeakyRelu, Elu, erf-form Gelu), or the runtime's Silu (fuse_silu),
// written as the modules' activation attributes, which FusedConv reads as they do.
// With `clamps`, Relu and Clip too (a convolution's output pass applies them as a clamp range
// instead).
bool output_activation_of(Node& n, graph::NodeSpec& spec, bool clamps = false) {
  std::optional<graph::Activation> a;
  if (n.op_type() == "Silu") {
    a.emplace().kind = "Silu";
  } else {
    a = graph::match_single_activation(n);
  }
  if (!a || (!clamps && (a->kind == "Relu" || a->kind == "Clip"))) return false;
  graph::write_activation_attributes(spec, *a);
  return true;
}

}  // namespace

size_t fuse_conv_epilogues(graph::Graph& graph) {
  size_t fused = 0;
  const std::vector<Node*> order = graph.nodes();
  std::vector<const Node*> removed;
  for (Node* conv : order) {
    if (std::find(removed.begin(), removed.end(), conv) != removed.end()) continue;
    if (conv->op_type() != "Conv" || !constant_f32(conv->input(1)) ||
        (conv->input(2) && !constant_f32(conv->input(2)))) {
      continue;
    }
    const Value* out = conv->output(0);
    if (!out->has_shape() || out->shape()->size() != 4) continue;
    const int64_t channels = (*out->shape())[1];
    std::vector<Node*> chain = {conv};
    Value* cur = conv->output(0);
    Tensor scale, shift;
    Value* residual = nullptr;
    constexpr float kInf = std::numeric_limits<float>::infinity();
    float lo = -kInf, hi = kInf;

    Node* next = sole_consumer(cur);
    if (next && fold_batch_norm(*next, channels, scale, shift)) {
      chain.push_back(next);
      cur = next->output(0);
      next = sole_consumer(cur);
    }
    if (next && next->op_type() == "Add") {
      Value* other = next->input(0) == cur ? next->input(1) : next->input(0);
      if (!other->is_constant() && other->has_shape() && *other->shape() == *cur->shape() &&
          next->output(0)->shape() == cur->shape()) {
        residual = other;
        chain.push_back(next);
        cur = next->output(0);
        next = sole_consumer(cur);
      }
    }
    if (next && clamp_of(*next, lo, hi)) {
      chain.push_back(next);
      cur = next->output(0);
      next = sole_consumer(cur);
    }
    graph::NodeSpec spec;
    spec.attributes = conv->attributes();
    if (next && output_activation_of(*next, spec)) {
      chain.push_back(next);
      cur = next->output(0);
    }
    if (chain.size() < 2) continue;

    spec.name = conv->name();
    spec.op_type = "FusedConv";
    spec.attributes["clamp_min"] = lo;
    spec.attributes["clamp_max"] = hi;
    spec.inputs = {conv->input(0), conv->input(1), conv->input(2), nullptr, nullptr, residual};
    if (scale.defined()) {
      spec.inputs[3] =
          graph.add_constant(graph.unique_value_name(conv->name() + "_bn_scale"), scale);
      spec.inputs[4] =
          graph.add_constant(graph.unique_value_name(conv->name() + "_bn_shift"), shift);
    }
    removed.insert(removed.end(), chain.begin(), chain.end());
    replace_chain(graph, std::move(spec), chain);
    ++fused;
  }
  graph.remove_dead();
  return fused;
}

size_t fuse_silu(graph::Graph& graph) {
  // The pairs first, then the rewrites: a rewrite removes nodes that a walk over a snapshot of
  // the node list would reach afterwards.
  std::vector<std::pair<Node*, Node*>> pairs;  // Sigmoid, Mul
  for (Node* sigmoid : graph.nodes()) {
    if (sigmoid->op_type() != "Sigmoid") continue;
    Value* x = sigmoid->input(0);
    Node* mul = sole_consumer(sigmoid->output(0));
    if (!mul || mul->op_type() != "Mul" || x->dtype() != kernels::DType::kFloat32) continue;
    const Value* other = mul->input(0) == sigmoid->output(0) ? mul->input(1) : mul->input(0);
    const Value* out = mul->output(0);
    if (other == x && x->has_shape() && out->has_shape() && *out->shape() == *x->shape()) {
      pairs.emplace_back(sigmoid, mul);
    }
  }
  for (auto [sigmoid, mul] : pairs) {
    graph::NodeSpec spec;
    spec.name = mul->name();
    spec.op_type = "Silu";
    spec.inputs = {sigmoid->input(0)};
    Node* const chain[] = {sigmoid, mul};
    replace_chain(graph, std::move(spec), chain);
  }
  graph.remove_dead();
  return pairs.size();
}

size_t fuse_gelu(graph::Graph& graph) {
  // The float nearest √2, the constant torch.onnx writes and the Gelu kernel divides by.
  constexpr float kSqrt2 = 1.41421356237309504880f;
  // `n`'s input other than `v` is a one-element float constant equal to `c`, and n keeps v's
  // shape (the constant does not broadcast it to another).
  auto with_constant = [](const Node* n, const Value* v, float c) {
    const Value* other = n->input(0) == v ? n->input(1) : n->input(0);
    const std::optional<float> k = graph::scalar_constant(other);
    return k && *k == c && other->has_shape() && v->has_shape() && n->output(0)->has_shape() &&
           other->shape()->size() <= v->shape()->size() && *n->output(0)->shape() == *v->shape();
  };
  std::vector<std::vector<Node*>> chains;
  for (Node* div : graph.nodes()) {
    if (div->op_type() != "Div" || div->num_inputs() != 2) continue;
    Value* x = div->input(0);
    if (x->dtype() != kernels::DType::kFloat32 || div->input(1) == x ||
        !with_constant(div, x, kSqrt2)) {
      continue;
    }
    Node* erf = sole_consumer(div->output(0));
    if (!erf || erf->op_type() != "Erf") continue;
    Node* add = sole_consumer(erf->output(0));
    if (!add || add->op_type() != "Add" || !with_constant(add, erf->output(0), 1.0f)) continue;
    Node* mul = sole_consumer(add->output(0));
    if (!mul || mul->op_type() != "Mul") continue;
    const Value* times = mul->input(0) == add->output(0) ? mul->input(1) : mul->input(0);
    if (times != x) continue;
    Node* half = sole_consumer(mul->output(0));
    if (!half || half->op_type() != "Mul" || !with_constant(half, mul->output(0), 0.5f)) continue;
    chains.push_back({div, erf, add, mul, half});
  }
  for (const std::vector<Node*>& chain : chains) {
    graph::NodeSpec spec;
    spec.name = chain.back()->name();
    spec.op_type = "Gelu";
    spec.inputs = {chain.front()->input(0)};
    replace_chain(graph, std::move(spec), chain);
  }
  graph.remove_dead();
  return chains.size();
}

size_t fuse_matmul_add(graph::Graph& graph) {
  std::vector<std::pair<Node*, Node*>> pairs;  // MatMul, Add
  for (Node* matmul : graph.nodes()) {
    if (matmul->op_type() != "MatMul" || matmul->num_inputs() != 2) continue;
    const Value* a = matmul->input(0);
    const Value* w = matmul->input(1);
    const Value* product = matmul->output(0);
    if (a->dtype() != kernels::DType::kFloat32 || !constant_f32(w) || !w->has_shape() ||
        w->shape()->size() != 2 || !product->has_shape() || product->shape()->empty()) {
      continue;
    }
    Node* add = sole_consumer(product);
    if (!add || add->op_type() != "Add" || add->num_inputs() != 2) continue;
    const Value* row = add->input(0) == product ? add->input(1) : add->input(0);
    const Shape& out = *product->shape();
    const int64_t n = out.back();
    if (!constant_f32(row) || !row->has_shape() || row->shape()->empty() ||
        row->shape()->back() != n || kernels::shape_numel(*row->shape()) != n ||
        row->shape()->size() > out.size() || !add->output(0)->has_shape() ||
        *add->output(0)->shape() != out) {
      continue;
    }
    pairs.emplace_back(matmul, add);
  }
  for (auto [matmul, add] : pairs) {
    graph::NodeSpec spec;
    spec.name = matmul->name();
    spec.op_type = "MatMulAdd";
    spec.inputs = {matmul->input(0), matmul->input(1),
                   add->input(0) == matmul->output(0) ? add->input(1) : add->input(0)};
    std::vector<Node*> chain = {matmul, add};
    Node* next = sole_consumer(add->output(0));
    if (next && output_activation_of(*next, spec, true)) chain.push_back(next);
    replace_chain(graph, std::move(spec), chain);
  }
  graph.remove_dead();
  return pairs.size();
}

}  // namespace qforge::runtime
