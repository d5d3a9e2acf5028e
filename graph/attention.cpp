// Attention conversions and module schemas: raw MatMul·scale·[mask]·Softmax·[Dropout]·MatMul
// composed into SDPA, and the ONNX form of nn.MultiheadAttention (packed in-projection, per-head
// Slice/Reshape/Transpose, SDPA, head merge, out projection) rebuilt as MHAInProjection → SDPA
// → the original out-projection Gemm/MatMul. A select refusal is the warning: it names the node
// and the reason, and the plan records and prints it.
#include "graph/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "graph/catalog.h"
#include "graph/qkv_packing.h"
#include "graph/rewrite_util.h"
#include "graph/swin.h"
#include "kernels/elementwise.h"
#include "kernels/error.h"
#include "kernels/shape_ops.h"

namespace qforge::graph {
namespace {

using kernels::DType;
using kernels::shape_str;

std::optional<std::vector<int64_t>> int_constant(const Value* v) {
  if (!v || !v->is_constant() || v->dtype() != DType::kInt64) return std::nullopt;
  auto s = v->constant().span<int64_t>();
  return std::vector<int64_t>(s.begin(), s.end());
}

// Mul or Div of the chain value (input 0) by a scalar float constant (input 1).
bool scalar_scaling(const Node& n) {
  return n.num_inputs() == 2 && scalar_constant(n.input(1)).has_value();
}

float scaling_factor(const Node& n) {
  const float c = *scalar_constant(n.input(1));
  return n.op_type() == "Div" ? 1.0f / c : c;
}

std::vector<int64_t> transpose_last_two(size_t rank) {
  std::vector<int64_t> perm(rank);
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[rank - 1], perm[rank - 2]);
  return perm;
}

Shape permuted(const Shape& s, const std::vector<int64_t>& perm) {
  Shape out(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) out[i] = s[static_cast<size_t>(perm[i])];
  return out;
}

// Module outputs pass their names and uses to the lowered values, then the module goes.
void replace_module(Graph& g, Node& module, const std::vector<Value*>& lowered) {
  std::vector<std::string> names;
  for (size_t i = 0; i < lowered.size(); ++i) {
    names.push_back(module.output(i)->name());
    g.replace_all_uses(module.output(i), lowered[i]);
  }
  g.remove_node(&module);
  for (size_t i = 0; i < lowered.size(); ++i) g.rename_value(lowered[i], names[i]);
}

// A constant additive mask that is 0 on and below the diagonal and -inf above it, equal for
// every leading index: the causal flag says the same.
bool is_causal_mask(const Value* mask, int64_t q_len, int64_t kv_len) {
  if (!is_float_constant(mask)) return false;
  const Tensor& t = mask->constant();
  if (t.rank() < 2 || t.dim(-2) != q_len || t.dim(-1) != kv_len || t.numel() != q_len * kv_len) {
    return false;
  }
  const float* m = t.data<float>();
  for (int64_t i = 0; i < q_len; ++i) {
    for (int64_t j = 0; j < kv_len; ++j) {
      const float v = m[i * kv_len + j];
      if (j <= i ? v != 0.0f : !(std::isinf(v) && v < 0)) return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Lowering

// SDPA(Q, K, V, mask?) → Transpose(K) → MatMul(Q, ·) → Mul(scale) → [Add mask] → [Add causal]
// → Softmax → MatMul(·, V).
void lower_sdpa(Graph& g, Node& node, Lowered& lowered) {
  const std::string& stem = node.name();
  Value* q = node.input(0);
  Value* k = node.input(1);
  Value* v = node.input(2);
  Value* mask = node.input(3);
  const Shape& ks = k->known_shape();
  const size_t rank = ks.size();
  const auto perm = transpose_last_two(rank);
  Value* kt = emit(g, &node, name_with(stem, "/Transpose"), "Transpose", {k}, permuted(ks, perm),
                   {{"perm", perm}});
  Shape scores = q->known_shape();
  scores[rank - 1] = ks[rank - 2];
  Value* cur = emit(g, &node, name_with(stem, "/MatMul"), "MatMul", {q, kt}, scores);
  Value* scale = g.add_constant(g.unique_value_name(name_with(stem, "/scale")),
                                Tensor::scalar_f32(node.attr_float("scale")));
  cur = emit(g, &node, name_with(stem, "/Mul"), "Mul", {cur, scale}, scores);
  if (mask) cur = emit(g, &node, name_with(stem, "/Add"), "Add", {cur, mask}, scores);
  if (node.attr_int("causal", 0) != 0) {
    const int64_t s = scores[rank - 2], sk = scores[rank - 1];
    Tensor causal(DType::kFloat32, {s, sk});
    for (int64_t i = 0; i < s; ++i) {
      for (int64_t j = i + 1; j < sk; ++j) {
        causal.data<float>()[i * sk + j] = -std::numeric_limits<float>::infinity();
      }
    }
    Value* c = g.add_constant(g.unique_value_name(name_with(stem, "/causal_mask")), causal);
    cur = emit(g, &node, name_with(stem, "/AddCausal"), "Add", {cur, c}, scores);
  }
  cur = emit(g, &node, name_with(stem, "/Softmax"), "Softmax", {cur}, scores,
             {{"axis", int64_t{-1}}});
  lowered.internal_quantizer_input = cur;
  Value* out = emit(g, &node, name_with(stem, "/MatMul_1"), "MatMul", {cur, v},
                    node.output(0)->known_shape());
  replace_module(g, node, {out});
}

// MHAInProjection(x, W [E, 3E], bias?) → MatMul → [Add] → per part Slice → Reshape
// [B, S, H, D] → Transpose(0, 2, 1, 3).
void lower_in_projection(Graph& g, Node& node, Lowered& /*lowered*/) {
  const std::string& stem = node.name();
  Value* x = node.input(0);
  Value* w = node.input(1);
  Value* bias = node.input(2);
  const Shape& xs = x->known_shape();
  const int64_t b = xs[0], s = xs[1], e = xs[2];
  const int64_t h = node.attr_int("num_heads"), d = e / h;
  if (weight_layout(node) == WeightLayout::kGemm) {
    Value* wt = emit(g, &node, name_with(stem, "/TransposeWeight"), "Transpose", {w}, {e, 3 * e},
                     {{"perm", std::vector<int64_t>{1, 0}}});
    w = wt;
  }
  Value* packed = emit(g, &node, name_with(stem, "/MatMul"), "MatMul", {x, w}, {b, s, 3 * e});
  if (bias) packed = emit(g, &node, name_with(stem, "/Add"), "Add", {packed, bias}, {b, s, 3 * e});
  Value* axes = int_constant_value(g, name_with(stem, "/axes"), {-1});
  Value* split_shape = int_constant_value(g, name_with(stem, "/heads_shape"), {b, s, h, d});
  std::vector<Value*> parts;
  const char* names[3] = {"/q", "/k", "/v"};
  for (int64_t i = 0; i < 3; ++i) {
    const std::string part = name_with(stem, names[i]);
    Value* starts = int_constant_value(g, name_with(part, "_starts"), {i * e});
    Value* ends = int_constant_value(g, name_with(part, "_ends"), {(i + 1) * e});
    Value* cur =
        emit(g, &node, name_with(part, "_Slice"), "Slice", {packed, starts, ends, axes}, {b, s, e});
    cur = emit(g, &node, name_with(part, "_Reshape"), "Reshape", {cur, split_shape}, {b, s, h, d});
    cur = emit(g, &node, name_with(part, "_Transpose"), "Transpose", {cur}, {b, h, s, d},
               {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
    parts.push_back(cur);
  }
  replace_module(g, node, parts);
}

constexpr std::array kAttentionSchemas = {
    // SDPA(Q [..., S, D], K [..., S_k, D], V [..., S_k, Dv], mask?) -> [..., S, Dv]; attributes
    // scale, causal.
    OpSchema{.op_type = "SDPA",
             .min_inputs = 3,
             .max_inputs = 4,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 13,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = {{{"Q", Role::kData},
                         {"K", Role::kData},
                         {"V", Role::kData},
                         {"mask", Role::kMask, true}}},
             .quantized_inputs = {0, 1, 2, -1},
             .internal_quantizer = {"softmax", kSoftmaxScale},
             .lower = lower_sdpa,
             .summary = "softmax(scale·Q·Kᵀ + mask)·V per leading index; K is not transposed"},
    // MHAInProjection(x [B, S, E], W, bias [3E]?) -> Q, K, V [B, H, S, E/H]; W is [E, 3E]
    // (weight_layout "matmul", output channels on axis 1) or [3E, E] ("gemm") with Q, K, V in
    // column (row) blocks.
    OpSchema{.op_type = "MHAInProjection",
             .min_inputs = 2,
             .max_inputs = 3,
             .min_outputs = 3,
             .max_outputs = 3,
             .since_opset = 13,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = {{{"x", Role::kData}, {"W", Role::kWeight}, {"bias", Role::kBias, true}}},
             .quantized_inputs = {0, -1, -1, -1},
             .weight_layout_per_node = true,
             .lower = lower_in_projection,
             .summary = "x·W + bias split into Q, K, V, each reshaped to heads [B, H, S, D]"},
};

// ---------------------------------------------------------------------------------------------
// ComposeSDPA

// 6-9 nodes. 0=Mul|Div(Q, c)?, 1=MatMul(Q, Kᵀ), 2=Mul|Div(·, c)?, 3=Add(·, mask)?, 4=Softmax,
// 5=Dropout?, 6=MatMul(·, V).
Pattern compose_sdpa_pattern() {
  Pattern p;
  p.name = "ComposeSDPA";
  p.kind = PatternKind::kConversion;
  p.topology = "[Mul|Div]? -> MatMul -> [Mul|Div]? -> [Add]? -> Softmax -> [Dropout]? -> MatMul";
  // The scores' scale: a scalar, or one value per head (Swin V2's logit scale, checked in
  // select against the scores' shape).
  auto scaling = [](const Node& n) {
    return scalar_scaling(n) || (n.op_type() == "Mul" && has_constant_operand(n));
  };
  Fork fork;
  fork.node = one("av", {"MatMul"});
  fork.branches = {
      Branch{.input = 0,
             .chain = {optional("q_scale", {"Mul", "Div"}, scalar_scaling), one("qk", {"MatMul"}),
                       optional("scale", {"Mul", "Div"}, scaling), optional("mask", {"Add"}),
                       one("softmax", {"Softmax"}), optional("dropout", {"Dropout"})}},
      Branch{.input = 1, .chain = {}}};
  p.fork = std::move(fork);
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& qk = *m.node(g, "qk");
    const Node& av = *m.node(g, "av");
    const Node& softmax = *m.node(g, "softmax");
    const Value* q = qk.input(0);
    const Value* kt = qk.input(1);
    const Value* v = av.input(1);
    for (const Value* x : {q, kt, v}) {
      if (!x->has_shape() || x->dtype() != DType::kFloat32) {
        return "operand '" + x->name() + "' of " + av.label() + " has no resolved float shape";
      }
    }
    const Shape &qs = *q->shape(), &ks = *kt->shape(), &vs = *v->shape();
    const size_t rank = qs.size();
    const bool same_batch = rank >= 3 && ks.size() == rank && vs.size() == rank &&
                            std::equal(qs.begin(), qs.end() - 2, ks.begin()) &&
                            std::equal(qs.begin(), qs.end() - 2, vs.begin());
    if (!same_batch || qs[rank - 1] != ks[rank - 2] || ks[rank - 1] != vs[rank - 2]) {
      return "shapes Q " + shape_str(qs) + ", Kᵀ " + shape_str(ks) + ", V " + shape_str(vs) +
             " are not [..., S, D], [..., D, S_k], [..., S_k, Dv] with equal leading dims";
    }
    const int64_t axis = softmax.attr_int("axis", -1);
    if (axis != -1 && axis != static_cast<int64_t>(rank) - 1) {
      return softmax.label() + ": axis " + std::to_string(axis) + " is not the last";
    }
    if (const Node* scale = m.node(g, "scale")) {
      if (auto why = scores_scale_refusal(*scale, *qk.output(0)->shape())) return why;
    }
    if (const Node* mask = m.node(g, "mask")) {
      const Value* mv = mask->input(1);
      if (!mv->has_shape() || mv->dtype() != DType::kFloat32 || mv->shape()->size() > rank) {
        return mask->label() + ": mask '" + mv->name() +
               "' is not a float of rank <= " + std::to_string(rank);
      }
      const Shape& ms = *mv->shape();
      const Shape& scores = *qk.output(0)->shape();
      for (size_t d = 0; d < ms.size(); ++d) {
        const int64_t want = scores[rank - ms.size() + d];
        if (ms[d] != 1 && ms[d] != want) {
          return mask->label() + ": mask " + shape_str(ms) + " does not broadcast to " +
                 shape_str(scores);
        }
      }
    }
    if (const Node* dropout = m.node(g, "dropout")) {
      const Value* mode = dropout->input(2);
      if (mode && (!mode->is_constant() || mode->constant().data<uint8_t>()[0] != 0)) {
        return dropout->label() + ": training_mode is not a constant false";
      }
      if (dropout_mask_used(*dropout)) return dropout->label() + ": its mask output is used";
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* q_scale = m.node(g, "q_scale");
    Node* qk = m.node(g, "qk");
    Node* scale_node = m.node(g, "scale");
    Node* mask_node = m.node(g, "mask");
    Node* softmax = m.node(g, "softmax");
    Node* dropout = m.node(g, "dropout");
    Node* av = m.node(g, "av");

    float scale = 1.0f;
    if (q_scale) scale *= scaling_factor(*q_scale);
    const bool per_head = scale_node && !scalar_scaling(*scale_node);
    if (scale_node && !per_head) scale *= scaling_factor(*scale_node);
    Value* q = q_scale ? q_scale->input(0) : qk->input(0);
    if (per_head) q = scale_query_per_head(g, av, q, scale_node->input(1), qk->name());
    Value* kt = qk->input(1);
    const size_t rank = kt->shape()->size();

    // K for the module is Kᵀ with its last two axes swapped: a Transpose read only here is
    // replaced by the composed permutation (none when that is the identity).
    Node* kt_producer = kt->producer();
    Node* old_k_transpose = nullptr;
    Value* k_source = kt;
    std::vector<int64_t> perm = transpose_last_two(rank);
    if (kt_producer && kt_producer->op_type() == "Transpose" && kt->consumers().size() == 1 &&
        !kt->is_graph_output()) {
      const std::vector<int64_t> p0 = kt_producer->attr_ints("perm");
      perm = p0;
      std::swap(perm[rank - 1], perm[rank - 2]);
      k_source = kt_producer->input(0);
      old_k_transpose = kt_producer;
    }
    Value* k = k_source;
    std::vector<int64_t> identity(rank);
    std::iota(identity.begin(), identity.end(), 0);
    if (perm != identity) {
      k = emit(g, av, name_with(qk->name(), "/K"), "Transpose", {k_source},
               permuted(*k_source->shape(), perm), {{"perm", perm}});
    }

    Value* mask = mask_node ? mask_node->input(1) : nullptr;
    int64_t causal = 0;
    const Shape& scores = *qk->output(0)->shape();
    if (mask && is_causal_mask(mask, scores[rank - 2], scores[rank - 1])) {
      mask = nullptr;
      causal = 1;
    }
    std::vector<Value*> inputs = {q, k, av->input(1)};
    if (mask) inputs.push_back(mask);
    Node* sdpa =
        g.insert_node({.name = name_with(qk->name(), "/SDPA"),
                       .op_type = "SDPA",
                       .inputs = std::move(inputs),
                       .output_names = {g.unique_value_name(name_with(qk->name(), "/SDPA_output"))},
                       .attributes = {{"scale", scale}, {"causal", causal}},
                       .domain = "qforge"},
                      av);
    sdpa->output(0)->set_type(DType::kFloat32, *av->output(0)->shape());

    Value* old_out = av->output(0);
    const std::string out_name = old_out->name();
    g.replace_all_uses(old_out, sdpa->output(0));
    for (Node* n : {av, dropout, softmax, mask_node, scale_node, qk, q_scale, old_k_transpose}) {
      if (n) g.remove_node(n);
    }
    g.rename_value(sdpa->output(0), out_name);
  };
  return p;
}

// ---------------------------------------------------------------------------------------------
// ComposeMultiheadAttention

// What the select found of the packed in-projection above the three Slices.
struct InProjection {
  Node* transpose = nullptr;  // [N, S, E] -> [S, N, E]
  Node* matmul = nullptr;     // · W [E, 3E]
  Node* add = nullptr;        // + bias [3E]
  Value* x = nullptr;
  Value* weight = nullptr;
  Value* bias = nullptr;
};

std::optional<InProjection> find_in_projection(const Value* packed) {
  InProjection ip;
  Node* add = packed->producer();
  if (!add || add->op_type() != "Add") return std::nullopt;
  const int bias_at = is_float_constant(add->input(0)) ? 0 : 1;
  ip.add = add;
  ip.bias = add->input(static_cast<size_t>(bias_at));
  Node* mm = add->input(static_cast<size_t>(1 - bias_at))->producer();
  if (!mm || mm->op_type() != "MatMul" || !is_float_constant(mm->input(1)) ||
      !is_float_constant(ip.bias)) {
    return std::nullopt;
  }
  ip.matmul = mm;
  ip.weight = mm->input(1);
  Node* tr = mm->input(0)->producer();
  if (!tr || tr->op_type() != "Transpose" ||
      tr->attr_ints("perm", {}) != std::vector<int64_t>{1, 0, 2} || !tr->input(0)->has_shape()) {
    return std::nullopt;
  }
  ip.transpose = tr;
  ip.x = tr->input(0);
  return ip;
}

// 19-20 nodes below the in-projection. Per part p in q, k, v: 0=Slice(packed), 1=Reshape
// [S, N·H, D], 2=Transpose(1, 0, 2); then 9=SDPA, 10=Transpose(1, 0, 2), 11=Reshape [S·N, E],
// 12=Gemm|MatMul (out projection), 13=Add(bias)?, 14=Reshape [S, N, E], 15=Transpose(1, 0, 2).
Pattern compose_multihead_attention_pattern() {
  Pattern p;
  p.name = "ComposeMultiheadAttention";
  p.kind = PatternKind::kConversion;
  p.topology =
      "3 x (Slice -> Reshape -> Transpose) -> SDPA -> Transpose -> Reshape -> Gemm|MatMul -> "
      "[Add]? -> Reshape -> Transpose";
  auto head_split = [](const std::string& x) -> Trunk {
    return {one(x + "_slice", {"Slice"}), one(x + "_reshape", {"Reshape"}),
            one(x + "_transpose", {"Transpose"})};
  };
  Fork fork;
  fork.node = one("sdpa", {"SDPA"});
  fork.branches = {Branch{.input = 0, .chain = head_split("q")},
                   Branch{.input = 1, .chain = head_split("k")},
                   Branch{.input = 2, .chain = head_split("v")}};
  p.fork = std::move(fork);
  p.trunk = {one("merge_transpose", {"Transpose"}), one("merge_reshape", {"Reshape"}),
             one("out_proj", {"Gemm", "MatMul"}),   optional("out_bias", {"Add"}),
             one("unflatten", {"Reshape"}),         one("batch_first", {"Transpose"})};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& sdpa = *m.node(g, "sdpa");
    const std::string where = "MHA at " + sdpa.label() + ": ";
    if (sdpa.input(3)) return where + "an attention mask is not supported";
    const Value* q_src = m.node(g, "q_slice")->input(0);
    const Value* k_src = m.node(g, "k_slice")->input(0);
    const Value* v_src = m.node(g, "v_slice")->input(0);
    if (q_src != k_src || q_src != v_src) {
      return where + "cross-attention (query from '" + q_src->name() + "', key from '" +
             k_src->name() + "', value from '" + v_src->name() + "') is not supported";
    }
    const auto ip = find_in_projection(q_src);
    if (!ip) {
      return where + "'" + q_src->name() +
             "' is not Transpose(1, 0, 2) -> MatMul(constant W) -> Add(constant bias)";
    }
    const Shape& xs = *ip->x->shape();
    if (xs.size() != 3) return where + "input '" + ip->x->name() + "' is not [N, S, E]";
    const int64_t n = xs[0], s = xs[1], e = xs[2];
    if (ip->weight->constant().shape() != Shape{e, 3 * e} ||
        ip->bias->constant().numel() != 3 * e) {
      return where + "in-projection weight " + shape_str(ip->weight->constant().shape()) +
             " is not [" + std::to_string(e) + ", " + std::to_string(3 * e) + "]";
    }
    const Shape& qs = *sdpa.input(0)->shape();
    if (qs.size() != 3 || qs[0] % n != 0 || qs[1] != s || qs[0] / n * qs[2] != e) {
      return where + "Q " + shape_str(qs) + " is not [N·H, S, E/H]";
    }
    const int64_t heads = qs[0] / n, d = qs[2];
    const char* parts[3] = {"q", "k", "v"};
    for (int64_t i = 0; i < 3; ++i) {
      const std::string x = parts[i];
      const Node& slice = *m.node(g, x + "_slice");
      const auto starts = int_constant(slice.input(1));
      const auto ends = int_constant(slice.input(2));
      const auto axes = slice.input(3) ? int_constant(slice.input(3)) : std::nullopt;
      const auto steps = slice.input(4) ? int_constant(slice.input(4)) : std::vector<int64_t>{1};
      const bool last_axis = axes && axes->size() == 1 && ((*axes)[0] == -1 || (*axes)[0] == 2);
      if (!starts || !ends || !last_axis || !steps || *steps != std::vector<int64_t>{1} ||
          (*starts)[0] != i * e || std::min((*ends)[0], 3 * e) != (i + 1) * e) {
        return where + slice.label() + " does not take part " + std::to_string(i) +
               " of the packed projection along its last axis";
      }
      const Node& reshape = *m.node(g, x + "_reshape");
      if (*reshape.output(0)->shape() != Shape{s, n * heads, d}) {
        return where + reshape.label() + " does not split heads to [S, N·H, D]";
      }
      if (!has_perm(*m.node(g, x + "_transpose"), {1, 0, 2})) {
        return where + m.node(g, x + "_transpose")->label() + " is not Transpose(1, 0, 2)";
      }
    }
    if (!has_perm(*m.node(g, "merge_transpose"), {1, 0, 2}) ||
        !has_perm(*m.node(g, "batch_first"), {1, 0, 2})) {
      return where + "the head merge or batch-first Transpose is not (1, 0, 2)";
    }
    const Node& merge = *m.node(g, "merge_reshape");
    const auto merge_shape = int_constant(merge.input(1));
    if (!merge_shape || *merge.output(0)->shape() != Shape{s * n, e} ||
        std::find(merge_shape->begin(), merge_shape->end(), 0) != merge_shape->end()) {
      return where + merge.label() + " is not a constant reshape to [S·N, E]";
    }
    const Node& out_proj = *m.node(g, "out_proj");
    if (!is_float_constant(out_proj.input(1))) {
      return where + out_proj.label() + " has no constant weight";
    }
    if (*m.node(g, "unflatten")->output(0)->shape() !=
        Shape{s, n, out_proj.output(0)->shape()->back()}) {
      return where + m.node(g, "unflatten")->label() + " is not a reshape to [S, N, E]";
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* sdpa = m.node(g, "sdpa");
    const InProjection ip = *find_in_projection(m.node(g, "q_slice")->input(0));
    const Shape xs = *ip.x->shape();
    const int64_t n = xs[0], s = xs[1];
    const Shape& qs = *sdpa->input(0)->shape();
    const int64_t heads = qs[0] / n, d = qs[2];
    const int64_t dv = sdpa->output(0)->shape()->back();

    const std::string stem = name_with(ip.matmul->name(), "/MHAInProjection");
    std::vector<std::string> out_names;
    for (const char* part : {"_q", "_k", "_v"}) {
      out_names.push_back(g.unique_value_name(name_with(stem, part)));
    }
    Node* in_proj = g.insert_node(
        {.name = stem,
         .op_type = "MHAInProjection",
         .inputs = {ip.x, ip.weight, ip.bias},
         .output_names = out_names,
         .attributes = {{"num_heads", heads}, {"weight_layout", std::string("matmul")}},
         .domain = "qforge"},
        sdpa);
    for (size_t i = 0; i < 3; ++i) in_proj->output(i)->set_type(DType::kFloat32, {n, heads, s, d});

    // The SDPA, head merge and unflatten stay, now on [N, H, S, D]: the merge gives rows in
    // (n, s) order and the unflatten reshapes straight to [N, S, E].
    for (size_t i = 0; i < 3; ++i) g.set_input(sdpa, i, in_proj->output(i));
    sdpa->output(0)->set_type(DType::kFloat32, {n, heads, s, dv});
    Node* merge = m.node(g, "merge_transpose");
    merge->set_attr("perm", std::vector<int64_t>{0, 2, 1, 3});
    merge->output(0)->set_type(DType::kFloat32, {n, s, heads, dv});
    Node* unflatten = m.node(g, "unflatten");
    const int64_t out_features = unflatten->output(0)->shape()->back();
    g.set_input(unflatten, 1,
                int_constant_value(g, name_with(unflatten->name(), "/batch_first_shape"),
                                   {n, s, out_features}));
    unflatten->output(0)->set_type(DType::kFloat32, {n, s, out_features});
    Node* batch_first = m.node(g, "batch_first");
    Value* old_out = batch_first->output(0);
    const std::string out_name = old_out->name();
    g.replace_all_uses(old_out, unflatten->output(0));
    g.remove_node(batch_first);
    g.rename_value(unflatten->output(0), out_name);

    for (const char* part : {"q", "k", "v"}) {
      const std::string x = part;
      for (const char* role : {"_transpose", "_reshape", "_slice"}) {
        g.remove_node(m.node(g, name_with(x, role)));
      }
    }
    for (Node* dead : {ip.add, ip.matmul, ip.transpose}) {
      if (dead->output(0)->consumers().empty() && !dead->output(0)->is_graph_output()) {
        g.remove_node(dead);
      }
    }
  };
  return p;
}

// ---------------------------------------------------------------------------------------------
// MaskedFillToAdd

// At most this fill counts as masking out (Hugging Face's float32 lowest, the -10000 of older
// BERT code, -inf): exp(fill - max) is 0 in float, and a score added to it is the fill or as good.
constexpr float kMaskingFill = -1e4f;

// Where the scores meet a masked fill: the Where's scores input and which of its inputs is the
// fill (a scalar constant of -1e4 or less), or the reason it is not one.
struct MaskedFill {
  size_t scores = 2;  // masked_fill(mask, fill): Where(mask, fill, scores)
  size_t fill = 1;    // torch.where(keep, scores, fill): Where(keep, scores, fill)
};

std::optional<MaskedFill> masked_fill_of(const Node& where) {
  for (MaskedFill f : {MaskedFill{2, 1}, MaskedFill{1, 2}}) {
    const Value* scores = where.input(f.scores);
    const std::optional<float> fill = scalar_constant(where.input(f.fill));
    if (fill && *fill <= kMaskingFill && scores && scores->has_shape() &&
        scores->dtype() == DType::kFloat32 && !scores->is_constant() &&
        where.output(0)->has_shape() && *where.output(0)->shape() == *scores->shape()) {
      return f;
    }
  }
  return std::nullopt;
}

// 2 or 3 nodes. 0=Where(mask, fill, scores) or Where(keep, scores, fill) (a boolean condition,
// a scalar fill <= -1e4), 1=Add(·, additive mask) optional, 2=Softmax; becomes scores +
// Where(mask, fill, 0) (or Where(keep, 0, fill)), plus the additive mask when there is one: the
// one additive mask ComposeSDPA takes. DistilBERT's masked_fill of the scores; GPT-2's causal
// torch.where before its padding mask is added. Each value is the Where's bit for bit: a masked
// score's sum stays at or below the fill, an unmasked one adds 0.
Pattern masked_fill_to_add_pattern() {
  Pattern p;
  p.name = "MaskedFillToAdd";
  p.kind = PatternKind::kConversion;
  p.topology = "Where(mask, fill, ·) | Where(keep, ·, fill) -> [Add]? -> Softmax";
  p.trunk = {one("fill", {"Where"}), optional("then_mask", {"Add"}), one("softmax", {"Softmax"})};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& where = *m.node(g, "fill");
    const Value* cond = where.input(0);
    if (!cond || cond->dtype() != DType::kBool) return where.label() + ": no boolean mask";
    if (!masked_fill_of(where)) {
      return where.label() +
             ": neither input 1 nor input 2 is a constant fill of -1e4 or less with the float "
             "scores of the output's shape as the other";
    }
    if (const Node* add = m.node(g, "then_mask")) {
      const Value* other = add->input(add->input(0) == where.output(0) ? 1 : 0);
      if (!other || other->dtype() != DType::kFloat32 || !other->has_shape() ||
          !add->output(0)->has_shape() || *add->output(0)->shape() != *where.output(0)->shape()) {
        return add->label() + ": its mask is not a float that broadcasts to the scores";
      }
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* where = m.node(g, "fill");
    Node* add = m.node(g, "then_mask");
    const MaskedFill form = *masked_fill_of(*where);
    Value* cond = where->input(0);
    Value* scores = where->input(form.scores);
    const float fill = *scalar_constant(where->input(form.fill));
    const bool fill_where_true = form.fill == 1;
    const Shape& out_shape = *where->output(0)->shape();
    // The additive mask: fill where masked, 0 elsewhere; a constant mask (a causal one) is
    // computed here, so that ComposeSDPA can recognise it.
    Value* mask = nullptr;
    if (cond->is_constant()) {
      const Tensor& c = cond->constant();
      Tensor additive(DType::kFloat32, c.shape());
      for (int64_t i = 0; i < c.numel(); ++i) {
        additive.data<float>()[i] = (c.data<uint8_t>()[i] != 0) == fill_where_true ? fill : 0.0f;
      }
      mask = g.add_constant(g.unique_value_name(where->name() + "/additive_mask"), additive);
    } else {
      Value* zero =
          g.add_constant(g.unique_value_name(where->name() + "/zero"), Tensor::scalar_f32(0.0f));
      Value* fill_value = where->input(form.fill);
      Node* n = g.insert_node(
          {.name = g.unique_node_name(where->name() + "/additive_mask"),
           .op_type = "Where",
           .inputs = {cond, fill_where_true ? fill_value : zero,
                      fill_where_true ? zero : fill_value},
           .output_names = {g.unique_value_name(where->name() + "/additive_mask_output")}},
          where);
      n->output(0)->set_type(DType::kFloat32, cond->known_shape());
      mask = n->output(0);
    }
    Node* last = where;
    if (add) {
      // The masks joined first: scores + (m + a) is (scores + m) + a wherever m is 0, and at or
      // below the fill wherever it is not.
      Value* other = add->input(add->input(0) == where->output(0) ? 1 : 0);
      const std::vector<Shape> shapes = {mask->known_shape(), other->known_shape()};
      mask = emit(g, add, name_with(where->name(), "/joined_mask"), "Add", {mask, other},
                  *kernels::broadcast_shape(shapes));
      last = add;  // the Add's mask may come after the Where: the new nodes go before the Add
    }
    Value* added =
        emit(g, last, name_with(where->name(), "/Add"), "Add", {scores, mask}, out_shape);
    Value* old = last->output(0);
    const std::string name = old->name();
    g.replace_all_uses(old, added);
    if (add) g.remove_node(add);
    g.remove_node(where);
    g.rename_value(added, name);
  };
  return p;
}

// ---------------------------------------------------------------------------------------------
// MaskThroughHeadReshapes

// `m` broadcast to `shape` (rank 4; m's dims, right-aligned, 1 or the shape's), then viewed with
// the first two dims merged.
Tensor broadcast_merged(const Tensor& m, const Shape& shape) {
  Tensor out(DType::kFloat32, shape);
  kernels::strided_copy(kernels::plan_expand(m.shape(), shape, sizeof(float)), m.raw(), out.raw());
  return out.reshaped({shape[0] * shape[1], shape[2], shape[3]});
}

// 4 nodes. 0=Reshape [B·H, T, S] -> [B, H, T, S], 1=Add(·, mask), 2=Reshape back to [B·H, T, S],
// 3=Softmax; becomes Add(scores, the mask broadcast to [B, H, T, S] and merged to [B·H, T, S]) ->
// Softmax. CLIP's attention (Hugging Face's CLIPAttention: bmm over the batch and heads merged,
// viewed apart to add the causal mask, merged again for the softmax), so that ComposeSDPA sees
// the scores, one mask and the softmax. Each score meets the same mask value.
Pattern mask_through_head_reshapes_pattern() {
  Pattern p;
  p.name = "MaskThroughHeadReshapes";
  p.kind = PatternKind::kConversion;
  p.topology = "Reshape [B·H, T, S] -> [B, H, T, S] -> Add(mask) -> Reshape back -> Softmax";
  p.trunk = {one("split", {"Reshape"}), one("mask", {"Add"}), one("merge", {"Reshape"}),
             one("softmax", {"Softmax"})};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& split = *m.node(g, "split");
    const Node& add = *m.node(g, "mask");
    const Node& merge = *m.node(g, "merge");
    const Value* scores = split.input(0);
    if (!scores->has_shape() || !split.output(0)->has_shape() || !merge.output(0)->has_shape() ||
        !add.output(0)->has_shape()) {
      return split.label() + ": shapes are not resolved";
    }
    const Shape& s3 = *scores->shape();
    const Shape& s4 = *split.output(0)->shape();
    if (s3.size() != 3 || s4.size() != 4 || s4[0] * s4[1] != s3[0] || s4[2] != s3[1] ||
        s4[3] != s3[2] || *merge.output(0)->shape() != s3 || *add.output(0)->shape() != s4) {
      return split.label() + " does not split the first axis of " + shape_str(s3) +
             " in two, with the Reshape after the Add merging it back";
    }
    const Value* mask = add.input(add.input(0) == split.output(0) ? 1 : 0);
    if (!mask || !mask->has_shape() || mask->dtype() != DType::kFloat32 ||
        mask->shape()->size() > 4) {
      return add.label() + ": its mask is not a float of rank 4 or less";
    }
    const Shape& ms = *mask->shape();
    for (size_t i = 0; i < ms.size(); ++i) {
      const int64_t want = s4[4 - ms.size() + i];
      if (ms[i] != 1 && ms[i] != want) {
        return add.label() + ": its mask " + shape_str(ms) + " does not broadcast to " +
               shape_str(s4);
      }
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* split = m.node(g, "split");
    Node* add = m.node(g, "mask");
    Node* merge = m.node(g, "merge");
    Value* scores = split->input(0);
    Value* mask = add->input(add->input(0) == split->output(0) ? 1 : 0);
    const Shape s3 = *scores->shape();
    const Shape s4 = *split->output(0)->shape();
    Value* merged = nullptr;
    if (mask->is_constant()) {
      merged = g.add_constant(g.unique_value_name(mask->name() + "_merged"),
                              broadcast_merged(mask->constant(), s4));
    } else {
      Value* expanded =
          emit(g, merge, name_with(add->name(), "/expand_mask"), "Expand",
               {mask, g.add_constant(g.unique_value_name(add->name() + "/expand_shape"),
                                     Tensor::from_vector<int64_t>({4}, s4))},
               s4);
      merged = emit(g, merge, name_with(add->name(), "/merge_mask"), "Reshape",
                    {expanded, g.add_constant(g.unique_value_name(add->name() + "/merge_shape"),
                                              Tensor::from_vector<int64_t>({3}, s3))},
                    s3);
    }
    Value* added = emit(g, merge, name_with(add->name(), "/Add"), "Add", {scores, merged}, s3);
    Value* old = merge->output(0);
    const std::string name = old->name();
    g.replace_all_uses(old, added);
    g.remove_node(merge);
    g.remove_node(add);
    g.remove_node(split);
    g.rename_value(added, name);
  };
  return p;
}

}  // namespace

std::vector<Pattern> attention_conversion_patterns() {
  std::vector<Pattern> out = {masked_fill_to_add_pattern(), mask_through_head_reshapes_pattern(),
                              compose_sdpa_pattern(), compose_multihead_attention_pattern(),
                              pack_parallel_qkv_pattern()};
  for (auto& p : swin_conversion_patterns()) out.push_back(std::move(p));
  return out;
}

// SDPA and MHAInProjection are made by the conversions; no fusion adds to them yet.
std::vector<Pattern> attention_fusion_patterns() {
  return {};
}

std::span<const OpSchema> attention_module_schemas() {
  return kAttentionSchemas;
}

}  // namespace qforge::graph
