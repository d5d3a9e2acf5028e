// PackParallelQKV. It anchors at the SDPA that ComposeSDPA made, which tells Q, K and V apart
// and has already folded a K transposed for Q·Kᵀ (Transpose(0, 2, 3, 1), or (0, 2, 1, 3) then
// a last-two swap) into K [N, H, S, D]; a K split any other way is refused. Projections that
// read different tensors (cross-attention) are refused with the nodes named.
#include "graph/qkv_packing.h"

#include <optional>
#include <string>
#include <vector>

#include "graph/catalog.h"
#include "graph/rewrite_util.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

using kernels::shape_str;

constexpr const char* kParts[3] = {"q", "k", "v"};
constexpr const char* kPartNames[3] = {"Q", "K", "V"};

std::string role(size_t part, const char* what) {
  std::string out = kParts[part];
  out.append(what);
  return out;
}

bool constant_matrix(const Value* v) {
  return is_float_constant(v) && v->constant().rank() == 2;
}

// One projection as x · W [E, E'] + bias [E'] (bias undefined when there is none), and the
// nodes that computed it in data-flow order.
struct Projection {
  Value* x = nullptr;
  Tensor weight;
  Tensor bias;
  const Value* weight_value = nullptr;  // the constant `weight` was read from
  bool transposed = false;              // weight_value holds Wᵀ (Gemm transB)
  const Value* bias_value = nullptr;
  std::vector<Node*> nodes;
};

// The projection ending at `end` (Gemm, MatMul, or the bias Add after a MatMul, either order),
// or the reason it is none that can be packed.
std::optional<std::string> read_projection(const Node& end, Projection& out) {
  const Node* linear = &end;
  const Value* bias = nullptr;
  if (end.op_type() == "Add") {
    const int at = is_float_constant(end.input(0)) ? 0 : 1;
    bias = end.input(static_cast<size_t>(at));
    const Value* product = end.input(static_cast<size_t>(1 - at));
    linear = product ? product->producer() : nullptr;
    if (!is_float_constant(bias) || !linear || linear->op_type() != "MatMul" ||
        product->consumers().size() != 1 || product->is_graph_output()) {
      return end.label() + ": expected MatMul(x, W) + constant bias, privately read";
    }
  }
  if (!constant_matrix(linear->input(1))) {
    return linear->label() + ": expected a constant 2-D float weight";
  }
  const Tensor& w = linear->input(1)->constant();
  int64_t in = w.dim(0), features = w.dim(1);
  bool transposed = false;
  if (linear->op_type() == "Gemm") {
    if (linear->attr_int("transA", 0) != 0 || linear->attr_float("alpha", 1.0f) != 1.0f ||
        (linear->input(2) && linear->attr_float("beta", 1.0f) != 1.0f)) {
      return linear->label() + ": expected Gemm with transA 0, alpha 1 and beta 1";
    }
    transposed = linear->attr_int("transB", 0) != 0;
    if (transposed) std::swap(in, features);
    bias = linear->input(2);
    if (bias && !is_float_constant(bias)) return linear->label() + ": bias is not constant";
  }
  if (bias && bias->constant().numel() != features) {
    return linear->label() + ": expected a bias of " + std::to_string(features) + " values, got " +
           shape_str(bias->constant().shape());
  }
  out.x = linear->input(0);
  out.weight = Tensor(DType::kFloat32, {in, features});
  const float* src = w.data<float>();
  float* dst = out.weight.data<float>();
  for (int64_t r = 0; r < in; ++r) {
    for (int64_t c = 0; c < features; ++c) {
      dst[r * features + c] = transposed ? src[c * in + r] : src[r * features + c];
    }
  }
  out.bias = bias ? bias->constant().clone() : Tensor();
  out.weight_value = linear->input(1);
  out.transposed = transposed;
  out.bias_value = bias;
  out.nodes = {const_cast<Node*>(linear)};
  if (linear != &end) out.nodes.push_back(const_cast<Node*>(&end));
  return std::nullopt;
}

bool is_head_split(const Node& transpose) {
  return transpose.attr_ints("perm", {}) == std::vector<int64_t>{0, 2, 1, 3};
}

std::optional<std::string> pack_refusal(const Graph& g, const Match& m) {
  const Node& sdpa = *m.node(g, "sdpa");
  std::string where = "PackParallelQKV at ";
  where.append(sdpa.label()).append(": ");
  Projection proj[3];
  for (size_t i = 0; i < 3; ++i) {
    if (auto refusal = read_projection(*m.node(g, role(i, "_proj")), proj[i])) {
      return where + kPartNames[i] + " projection: " + *refusal;
    }
  }
  if (proj[0].x != proj[1].x || proj[0].x != proj[2].x) {
    std::string reason = where + "cross-attention (";
    for (size_t i = 0; i < 3; ++i) {
      reason.append(i ? ", " : "").append(kPartNames[i]).append(" projection ");
      reason.append(proj[i].nodes.front()->label()).append(" reads '");
      reason.append(proj[i].x->name()).append("'");
    }
    return reason + ") is not packed: the projections must read one tensor";
  }
  const Value* x = proj[0].x;
  if (!x->has_shape() || x->dtype() != DType::kFloat32 ||
      (x->shape()->size() != 2 && x->shape()->size() != 3)) {
    return where + "input '" + x->name() + "' is not a float [N, S, E] or [N·S, E]";
  }
  const int64_t e = x->shape()->back();
  for (size_t i = 0; i < 3; ++i) {
    if (proj[i].weight.shape() != Shape{e, e}) {
      return where + kPartNames[i] + " projection " + proj[i].nodes.front()->label() +
             ": weight maps " + shape_str(proj[i].weight.shape()) + ", expected [" +
             std::to_string(e) + ", " + std::to_string(e) + "] (MHAInProjection packs [E, 3E])";
    }
  }
  const Shape heads = m.node(g, "q_reshape")->output(0)->shape().value_or(Shape{});
  if (heads.size() != 4 || heads[2] * heads[3] != e) {
    return where + m.node(g, "q_reshape")->label() + ": expected a split into [N, S, H, D] with " +
           "H·D = " + std::to_string(e) + ", got " + shape_str(heads);
  }
  const Shape& xs = *x->shape();
  const bool rows_match =
      xs.size() == 3 ? xs[0] == heads[0] && xs[1] == heads[1] : xs[0] == heads[0] * heads[1];
  if (!rows_match) {
    return where + "input '" + x->name() + "' " + shape_str(xs) + " does not give the rows of " +
           shape_str(heads);
  }
  for (size_t i = 0; i < 3; ++i) {
    const Node& reshape = *m.node(g, role(i, "_reshape"));
    if (reshape.output(0)->shape().value_or(Shape{}) != heads) {
      return where + reshape.label() + ": splits " + kPartNames[i] + " into " +
             shape_str(reshape.output(0)->shape().value_or(Shape{})) + ", Q into " +
             shape_str(heads);
    }
    const Node& transpose = *m.node(g, role(i, "_transpose"));
    if (!is_head_split(transpose)) {
      return where + kPartNames[i] + " " + transpose.label() + " has perm " +
             shape_str(transpose.attr_ints("perm", {})) +
             ", expected (0, 2, 1, 3): the packed projection gives " + kPartNames[i] +
             " as [N, H, S, D]";
    }
  }
  return std::nullopt;
}

void pack(Graph& g, const Match& m) {
  Node* sdpa = m.node(g, "sdpa");
  Projection proj[3];
  for (size_t i = 0; i < 3; ++i) read_projection(*m.node(g, role(i, "_proj")), proj[i]);
  const Shape heads = *m.node(g, "q_reshape")->output(0)->shape();
  const int64_t n = heads[0], s = heads[1], h = heads[2], d = heads[3], e = h * d;
  const std::string stem = name_with(proj[0].nodes.front()->name(), "/MHAInProjection");

  Tensor weight(DType::kFloat32, {e, 3 * e});
  for (int64_t r = 0; r < e; ++r) {
    for (size_t i = 0; i < 3; ++i) {
      const float* src = proj[i].weight.data<float>() + r * e;
      std::copy(src, src + e, weight.data<float>() + r * 3 * e + static_cast<int64_t>(i) * e);
    }
  }
  Value* x = proj[0].x;
  std::vector<Value*> inputs = {
      x, g.add_constant(g.unique_value_name(name_with(stem, "/weight")), std::move(weight))};
  // The derivations: packed[r, i·E + c] = W_i[r, c] (W_i[c, r] when transposed), bias[i·E + c]
  // = b_i[c].
  Derivation weight_derivation{.derived = inputs[1]->name(), .shape = {e, 3 * e}, .terms = {}};
  for (size_t i = 0; i < 3; ++i) {
    weight_derivation.terms.push_back({.source = proj[i].weight_value->name(),
                                       .source_shape = proj[i].weight_value->known_shape(),
                                       .extent = {e, e},
                                       .derived_offset = static_cast<int64_t>(i) * e,
                                       .derived_strides = {3 * e, 1},
                                       .source_strides = proj[i].transposed
                                                             ? std::vector<int64_t>{1, e}
                                                             : std::vector<int64_t>{e, 1}});
  }
  g.record_derivation(std::move(weight_derivation));
  if (proj[0].bias.defined() || proj[1].bias.defined() || proj[2].bias.defined()) {
    Tensor bias(DType::kFloat32, {3 * e});  // zero where a projection had none
    Derivation bias_derivation{.derived = {}, .shape = {3 * e}, .terms = {}};
    for (size_t i = 0; i < 3; ++i) {
      if (!proj[i].bias.defined()) continue;
      const float* src = proj[i].bias.data<float>();
      std::copy(src, src + e, bias.data<float>() + static_cast<int64_t>(i) * e);
      bias_derivation.terms.push_back({.source = proj[i].bias_value->name(),
                                       .source_shape = proj[i].bias_value->known_shape(),
                                       .extent = {e},
                                       .derived_offset = static_cast<int64_t>(i) * e,
                                       .derived_strides = {1},
                                       .source_strides = {1}});
    }
    inputs.push_back(g.add_constant(g.unique_value_name(name_with(stem, "/bias")), bias));
    bias_derivation.derived = inputs.back()->name();
    g.record_derivation(std::move(bias_derivation));
  }
  if (x->shape()->size() == 2) {
    // Gemm projections read [N·S, E]; MHAInProjection reads [N, S, E].
    Value* shape = g.add_constant(g.unique_value_name(name_with(stem, "/input_shape")),
                                  Tensor::from_vector<int64_t>({3}, {n, s, e}));
    const std::string name = name_with(stem, "/Reshape");
    Node* reshape = g.insert_node({.name = g.find_node(name) ? g.unique_node_name(name) : name,
                                   .op_type = "Reshape",
                                   .inputs = {x, shape},
                                   .output_names = {g.unique_value_name(name)}},
                                  sdpa);
    reshape->output(0)->set_type(DType::kFloat32, {n, s, e});
    inputs[0] = reshape->output(0);
  }
  std::vector<std::string> temp_names;
  for (const char* part : {"_q", "_k", "_v"}) {
    temp_names.push_back(g.unique_value_name(name_with(stem, part)));
  }
  Node* in_proj =
      g.insert_node({.name = g.find_node(stem) ? g.unique_node_name(stem) : stem,
                     .op_type = "MHAInProjection",
                     .inputs = std::move(inputs),
                     .output_names = temp_names,
                     .attributes = {{"num_heads", h}, {"weight_layout", std::string("matmul")}},
                     .domain = "qforge"},
                    sdpa);
  // Q, K, V take the uses and names of the three head-split Transposes; the chains go.
  std::vector<std::string> names;
  for (size_t i = 0; i < 3; ++i) {
    Value* old = m.node(g, role(i, "_transpose"))->output(0);
    names.push_back(old->name());
    in_proj->output(i)->set_type(DType::kFloat32, {n, h, s, d});
    g.replace_all_uses(old, in_proj->output(i));
  }
  for (size_t i = 0; i < 3; ++i) {
    g.remove_node(m.node(g, role(i, "_transpose")));
    g.remove_node(m.node(g, role(i, "_reshape")));
    for (auto it = proj[i].nodes.rbegin(); it != proj[i].nodes.rend(); ++it) g.remove_node(*it);
  }
  for (size_t i = 0; i < 3; ++i) g.rename_value(in_proj->output(i), names[i]);
}

// The end of a projection: Gemm or MatMul with a constant 2-D weight, or an Add with one
// constant input (its MatMul is checked by select).
bool projection_end(const Node& n) {
  if (n.op_type() == "Add") {
    return n.num_inputs() == 2 && is_float_constant(n.input(0)) != is_float_constant(n.input(1));
  }
  return constant_matrix(n.input(1));
}

}  // namespace

// 10-13 nodes. Per part p in q, k, v: 0=MatMul(x, W)? (when the bias Add reads it as input 0),
// 1=Gemm | MatMul | Add(bias), 2=Reshape [N, S, H, D], 3=Transpose(0, 2, 1, 3); then 12=SDPA.
Pattern pack_parallel_qkv_pattern() {
  Pattern p;
  p.name = "PackParallelQKV";
  p.kind = PatternKind::kConversion;
  p.topology = "3 x (Gemm | MatMul [+ Add] -> Reshape -> Transpose) -> SDPA";
  Fork fork;
  fork.node = one("sdpa", {"SDPA"});
  for (size_t i = 0; i < 3; ++i) {
    fork.branches.push_back(
        Branch{.input = i,
               .chain = {optional(role(i, "_matmul"), {"MatMul"},
                                  [](const Node& n) { return constant_matrix(n.input(1)); }),
                         one(role(i, "_proj"), {"Gemm", "MatMul", "Add"}, projection_end),
                         one(role(i, "_reshape"), {"Reshape"}),
                         one(role(i, "_transpose"), {"Transpose"})}});
  }
  p.fork = std::move(fork);
  p.select = pack_refusal;
  p.rewrite = pack;
  return p;
}

}  // namespace qforge::graph
