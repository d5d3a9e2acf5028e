// Swin conversions and the SwinAttention module schema. Shapes are static here (import resolves
// them), so the window count, bias and mask are read from constants, never from the run-time
// shape subgraphs torch.onnx writes.
#include "graph/swin.h"

#include <algorithm>
#include <array>
#include <numeric>

#include "graph/rewrite_util.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

using kernels::DType;
using kernels::shape_str;

std::optional<int64_t> int_scalar(const Value* v) {
  if (!v || !v->is_constant() || v->constant().numel() != 1) return std::nullopt;
  if (v->dtype() == DType::kInt64) return v->constant().data<int64_t>()[0];
  if (v->dtype() == DType::kInt32) return v->constant().data<int32_t>()[0];
  return std::nullopt;
}

void replace_output(Graph& g, Node& old_node, Value* replacement) {
  Value* old_out = old_node.output(0);
  const std::string name = old_out->name();
  g.replace_all_uses(old_out, replacement);
  g.remove_node(&old_node);
  g.rename_value(replacement, name);
}

// Q, K, V [N, H, S, D] come out of one Swin QKV split: one MHAInProjection's outputs 0, 1, 2, or
// Gather 0, 1, 2 (axis 0) of one Transpose(2, 0, 3, 1, 4).
bool from_swin_qkv_split(const Value* q, const Value* k, const Value* v) {
  const Node* pq = q->producer();
  const Node* pk = k->producer();
  const Node* pv = v->producer();
  if (!pq || !pk || !pv) return false;
  if (pq->op_type() == "MHAInProjection") {
    return pq == pk && pq == pv && pq->output(0) == q && pq->output(1) == k && pq->output(2) == v;
  }
  const std::array<const Node*, 3> gathers = {pq, pk, pv};
  for (int64_t i = 0; i < 3; ++i) {
    const Node* gather = gathers[static_cast<size_t>(i)];
    if (gather->op_type() != "Gather" || gather->attr_int("axis", 0) != 0 ||
        int_scalar(gather->input(1)) != i || gather->input(0) != pq->input(0)) {
      return false;
    }
  }
  const Node* split = pq->input(0)->producer();
  return split && split->op_type() == "Transpose" && has_perm(*split, {2, 0, 3, 1, 4});
}

// Shape checks shared by both Swin attention forms: Q, K, V [N, H, S, D] and a relative-position
// bias constant [1, H, S, S] (or [H, S, S]).
std::optional<std::string> check_core(const Node& where, const Value* q, const Value* k,
                                      const Value* v, const Value* bias) {
  for (const Value* x : {q, k, v}) {
    if (!x->has_shape() || x->dtype() != DType::kFloat32 || x->shape()->size() != 4) {
      return where.label() + ": operand '" + x->name() + "' is not a float [N, H, S, D]";
    }
  }
  const Shape &qs = *q->shape(), &ks = *k->shape(), &vs = *v->shape();
  if (qs != ks || vs[0] != qs[0] || vs[1] != qs[1] || vs[2] != qs[2]) {
    return where.label() + ": Q " + shape_str(qs) + ", K " + shape_str(ks) + ", V " +
           shape_str(vs) + " are not [N, H, S, D] alike";
  }
  const int64_t h = qs[1], s = qs[2];
  if (!is_float_constant(bias)) {
    return where.label() + ": the relative-position bias '" + bias->name() + "' is not a constant";
  }
  const Shape& bs = bias->constant().shape();
  if (bs != Shape{1, h, s, s} && bs != Shape{h, s, s}) {
    return where.label() + ": relative-position bias " + shape_str(bs) + " is not [1, " +
           std::to_string(h) + ", " + std::to_string(s) + ", " + std::to_string(s) + "]";
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Lowering

// SwinAttention(Q, K, V, bias, mask?) → Transpose(K) → MatMul(Q, ·) → Mul(scale) → Add(bias) →
// [Reshape [B, nW, H, S, S] → Add(mask) → Reshape [N, H, S, S]] → Softmax → MatMul(·, V).
void lower_swin_attention(Graph& g, Node& node) {
  const std::string& stem = node.name();
  Value* q = node.input(0);
  Value* k = node.input(1);
  Value* v = node.input(2);
  Value* bias = node.input(3);
  Value* mask = node.input(4);
  const Shape& qs = q->known_shape();
  const int64_t n = qs[0], h = qs[1], s = qs[2], d = qs[3];
  const Shape scores = {n, h, s, s};
  Value* kt = emit(g, &node, name_with(stem, "/Transpose"), "Transpose", {k}, {n, h, d, s},
                   {{"perm", std::vector<int64_t>{0, 1, 3, 2}}});
  Value* cur = emit(g, &node, name_with(stem, "/MatMul"), "MatMul", {q, kt}, scores);
  Value* scale = g.add_constant(g.unique_value_name(name_with(stem, "/scale")),
                                Tensor::scalar_f32(node.attr_float("scale")));
  cur = emit(g, &node, name_with(stem, "/Mul"), "Mul", {cur, scale}, scores);
  cur = emit(g, &node, name_with(stem, "/AddBias"), "Add", {cur, bias}, scores);
  if (mask) {
    const int64_t windows = node.attr_int("num_windows");
    const Shape grouped = {n / windows, windows, h, s, s};
    Value* to_windows = int_constant_value(g, name_with(stem, "/windows_shape"), grouped);
    cur = emit(g, &node, name_with(stem, "/Reshape"), "Reshape", {cur, to_windows}, grouped);
    // The mask constant is [1, nW, 1, S, S] whatever rank it was given in.
    Value* mask5 = int_constant_value(g, name_with(stem, "/mask_shape"), {1, windows, 1, s, s});
    Value* m = emit(g, &node, name_with(stem, "/MaskReshape"), "Reshape", {mask, mask5},
                    {1, windows, 1, s, s});
    cur = emit(g, &node, name_with(stem, "/AddMask"), "Add", {cur, m}, grouped);
    Value* back = int_constant_value(g, name_with(stem, "/scores_shape"), scores);
    cur = emit(g, &node, name_with(stem, "/Reshape_1"), "Reshape", {cur, back}, scores);
  }
  cur = emit(g, &node, name_with(stem, "/Softmax"), "Softmax", {cur}, scores,
             {{"axis", int64_t{-1}}});
  Value* out = emit(g, &node, name_with(stem, "/MatMul_1"), "MatMul", {cur, v},
                    node.output(0)->known_shape());
  replace_output(g, node, out);
}

constexpr std::array kSwinSchemas = {
    // SwinAttention(Q, K, V [N, H, S, D], bias [1, H, S, S], window_mask [1, nW, 1, S, S]?) ->
    // [N, H, S, Dv] with N = B·nW windows; attributes scale, num_windows (1 without a mask),
    // softmax_scale (the fixed scale of the internal softmax quantizer).
    OpSchema{"SwinAttention",
             4,
             5,
             1,
             1,
             13,
             SchemaKind::kModule,
             {0, 1, 2, -1},
             -1,
             0,
             lower_swin_attention,
             "softmax(scale·Q·Kᵀ + bias[h] + mask[window])·V per window and head"},
};

// ---------------------------------------------------------------------------------------------
// ComposeSwinAttention (shifted windows)

bool has_constant_operand(const Node& n) {
  return n.num_inputs() == 2 && is_float_constant(n.input(1));
}

// 8-10 nodes. 0=Mul(q, c)?, 1=MatMul(Q, Kᵀ), 2=Mul(logit scale)? (refused: Swin V2),
// 3=Add(bias [1, H, S, S]), 4=Reshape [B, nW, H, S, S], 5=Add(mask [1, nW, 1, S, S]),
// 6=Reshape [N, H, S, S], 7=Softmax, 8=Dropout?, 9=MatMul(·, V).
Pattern compose_swin_attention_pattern() {
  Pattern p;
  p.name = "ComposeSwinAttention";
  p.kind = PatternKind::kConversion;
  p.topology =
      "[Mul]? -> MatMul -> [Mul]? -> Add(bias) -> Reshape -> Add(window mask) -> Reshape -> "
      "Softmax -> [Dropout]? -> MatMul";
  Fork fork;
  fork.node = one("av", {"MatMul"});
  fork.branches = {
      Branch{.input = 0,
             .chain = {optional("q_scale", {"Mul"}, has_constant_operand), one("qk", {"MatMul"}),
                       optional("logit_scale", {"Mul"}, has_constant_operand),
                       one("bias", {"Add"}, has_constant_operand), one("to_windows", {"Reshape"}),
                       one("mask", {"Add"}, has_constant_operand), one("from_windows", {"Reshape"}),
                       one("softmax", {"Softmax"}), optional("dropout", {"Dropout"})}},
      Branch{.input = 1, .chain = {}}};
  p.fork = std::move(fork);
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& qk = *m.node(g, "qk");
    const Node& av = *m.node(g, "av");
    if (const Node* logit = m.node(g, "logit_scale")) {
      if (!scalar_constant(logit->input(1))) {
        return "Swin V2 at " + logit->label() +
               ": a per-head logit scale (cosine attention) is not supported";
      }
    }
    if (const Node* q_scale = m.node(g, "q_scale");
        q_scale && !scalar_constant(q_scale->input(1))) {
      return q_scale->label() + ": the query scale is not a scalar constant";
    }
    const Value* kt = qk.input(1);
    if (!kt->has_shape() || kt->shape()->size() != 4) {
      return qk.label() + ": Kᵀ '" + kt->name() + "' is not [N, H, D, S]";
    }
    const Node* kt_producer = kt->producer();
    const Value* q = m.node(g, "q_scale") ? m.node(g, "q_scale")->input(0) : qk.input(0);
    if (!kt_producer || kt_producer->op_type() != "Transpose" ||
        !has_perm(*kt_producer, {0, 1, 3, 2})) {
      return qk.label() + ": Kᵀ is not Transpose(0, 1, 3, 2) of K";
    }
    const Value* k = kt_producer->input(0);
    if (auto why = check_core(av, q, k, av.input(1), m.node(g, "bias")->input(1))) return why;
    const Shape& qs = *q->shape();
    const int64_t n = qs[0], h = qs[1], s = qs[2];
    const Node& to_windows = *m.node(g, "to_windows");
    const Shape& grouped = *to_windows.output(0)->shape();
    if (grouped.size() != 5 || grouped[2] != h || grouped[3] != s || grouped[4] != s ||
        grouped[0] * grouped[1] != n) {
      return to_windows.label() + ": " + shape_str(grouped) + " is not [B, nW, " +
             std::to_string(h) + ", " + std::to_string(s) + ", " + std::to_string(s) + "]";
    }
    const int64_t windows = grouped[1];
    const Node& mask = *m.node(g, "mask");
    const Shape& ms = mask.input(1)->constant().shape();
    if (ms != Shape{1, windows, 1, s, s} && ms != Shape{windows, 1, s, s}) {
      return mask.label() + ": window mask " + shape_str(ms) + " is not [1, " +
             std::to_string(windows) + ", 1, " + std::to_string(s) + ", " + std::to_string(s) + "]";
    }
    const Node& from_windows = *m.node(g, "from_windows");
    if (*from_windows.output(0)->shape() != Shape{n, h, s, s}) {
      return from_windows.label() + ": " + shape_str(*from_windows.output(0)->shape()) +
             " is not the scores' shape back";
    }
    const int64_t axis = m.node(g, "softmax")->attr_int("axis", -1);
    if (axis != -1 && axis != 3) return m.node(g, "softmax")->label() + ": axis is not the last";
    if (const Node* dropout = m.node(g, "dropout")) {
      // torchvision calls F.dropout without a training flag: ratio 0 is an identity anyway.
      const auto ratio = dropout->input(1) ? scalar_constant(dropout->input(1)) : 0.0f;
      const Value* mode = dropout->input(2);
      const bool inference =
          !mode || (mode->is_constant() && mode->constant().data<uint8_t>()[0] == 0);
      if (!inference && ratio != 0.0f) {
        return dropout->label() + ": dropout with a non-zero ratio in training mode";
      }
      if (dropout_mask_used(*dropout)) return dropout->label() + ": its mask output is used";
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* q_scale = m.node(g, "q_scale");
    Node* qk = m.node(g, "qk");
    Node* logit = m.node(g, "logit_scale");
    Node* av = m.node(g, "av");
    float scale = 1.0f;
    if (q_scale) scale *= *scalar_constant(q_scale->input(1));
    if (logit) scale *= *scalar_constant(logit->input(1));
    Value* q = q_scale ? q_scale->input(0) : qk->input(0);
    Node* k_transpose = qk->input(1)->producer();
    Value* k = k_transpose->input(0);
    Value* bias = m.node(g, "bias")->input(1);
    Value* mask = m.node(g, "mask")->input(1);
    const int64_t windows = m.node(g, "to_windows")->output(0)->shape()->at(1);
    Node* attn = g.insert_node(
        {.name = name_with(qk->name(), "/SwinAttention"),
         .op_type = "SwinAttention",
         .inputs = {q, k, av->input(1), bias, mask},
         .output_names = {g.unique_value_name(name_with(qk->name(), "/SwinAttention_output"))},
         .attributes = {{"scale", scale},
                        {"num_windows", windows},
                        {"softmax_scale", kSoftmaxScale}},
         .domain = "qforge"},
        av);
    attn->output(0)->set_type(DType::kFloat32, *av->output(0)->shape());
    replace_output(g, *av, attn->output(0));
    for (const char* role : {"dropout", "softmax", "from_windows", "mask", "to_windows", "bias",
                             "logit_scale", "qk", "q_scale"}) {
      if (Node* n = m.node(g, role)) g.remove_node(n);
    }
    if (k_transpose->output(0)->consumers().empty() && !k_transpose->output(0)->is_graph_output()) {
      g.remove_node(k_transpose);
    }
  };
  return p;
}

// ---------------------------------------------------------------------------------------------
// SwinAttentionFromSDPA (unshifted windows)

bool swin_bias_sdpa(const Node& n) {
  return n.num_inputs() == 4 && is_float_constant(n.input(3)) && n.attr_int("causal", 0) == 0;
}

// 1 node. 0=SDPA(Q, K, V, bias constant [1, H, S, S]) whose Q, K, V come from Swin's QKV split.
Pattern swin_attention_from_sdpa_pattern() {
  Pattern p;
  p.name = "SwinAttentionFromSDPA";
  p.kind = PatternKind::kConversion;
  p.topology = "SDPA(Q, K, V, relative-position bias) below Swin's QKV split";
  p.trunk = {one("sdpa", {"SDPA"}, swin_bias_sdpa)};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& sdpa = *m.node(g, "sdpa");
    if (auto why = check_core(sdpa, sdpa.input(0), sdpa.input(1), sdpa.input(2), sdpa.input(3))) {
      return why;
    }
    if (!from_swin_qkv_split(sdpa.input(0), sdpa.input(1), sdpa.input(2))) {
      return sdpa.label() + ": Q, K, V do not come from one Swin QKV split";
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* sdpa = m.node(g, "sdpa");
    Node* attn = g.insert_node(
        {.name = name_with(sdpa->name(), "/SwinAttention"),
         .op_type = "SwinAttention",
         .inputs = {sdpa->input(0), sdpa->input(1), sdpa->input(2), sdpa->input(3)},
         .output_names = {g.unique_value_name(name_with(sdpa->name(), "/SwinAttention_output"))},
         .attributes = {{"scale", sdpa->attr_float("scale")},
                        {"num_windows", int64_t{1}},
                        {"softmax_scale", kSoftmaxScale}},
         .domain = "qforge"},
        sdpa);
    attn->output(0)->set_type(DType::kFloat32, *sdpa->output(0)->shape());
    replace_output(g, *sdpa, attn->output(0));
  };
  return p;
}

// ---------------------------------------------------------------------------------------------
// ComposeSwinInProjection

bool constant_weight(const Node& n) {
  return n.num_inputs() == 2 && is_float_constant(n.input(1));
}

bool either_constant(const Node& n) {
  return n.num_inputs() == 2 && (is_float_constant(n.input(0)) || is_float_constant(n.input(1)));
}

bool swin_split(const Node& n) {
  return has_perm(n, {2, 0, 3, 1, 4});
}

// The three Gathers 0, 1, 2 (axis 0) reading the split, in order; nullopt when its readers are
// anything else.
std::optional<std::array<Node*, 3>> split_gathers(const Node& split) {
  const Value* out = split.output(0);
  if (out->is_graph_output() || out->consumers().size() != 3) return std::nullopt;
  std::array<Node*, 3> found = {nullptr, nullptr, nullptr};
  for (Node* c : out->consumers()) {
    const auto index = int_scalar(c->input(1));
    if (c->op_type() != "Gather" || c->input(0) != out || c->attr_int("axis", 0) != 0 || !index ||
        *index < 0 || *index > 2 || found[static_cast<size_t>(*index)]) {
      return std::nullopt;
    }
    found[static_cast<size_t>(*index)] = c;
  }
  return found;
}

// 7 nodes. 0=MatMul(x, W [E, 3E]), 1=Add(bias [3E]), 2=Reshape [N, S, 3, H, D],
// 3=Transpose(2, 0, 3, 1, 4), 4..6=Gather(0), Gather(1), Gather(2).
Pattern compose_swin_in_projection_pattern() {
  Pattern p;
  p.name = "ComposeSwinInProjection";
  p.kind = PatternKind::kConversion;
  p.topology = "MatMul -> Add -> Reshape -> Transpose(2, 0, 3, 1, 4) -> 3 x Gather";
  p.trunk = {one("matmul", {"MatMul"}, constant_weight), one("bias", {"Add"}, either_constant),
             one("reshape", {"Reshape"}), one("split", {"Transpose"}, swin_split)};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& mm = *m.node(g, "matmul");
    const Node& add = *m.node(g, "bias");
    const Node& split = *m.node(g, "split");
    const std::string where = "Swin QKV at " + mm.label() + ": ";
    const Value* x = mm.input(0);
    if (!x->has_shape() || x->shape()->size() != 3) {
      return where + "input '" + x->name() + "' is not [N, S, E]";
    }
    const int64_t n = (*x->shape())[0], s = (*x->shape())[1], e = (*x->shape())[2];
    if (mm.input(1)->constant().shape() != Shape{e, 3 * e}) {
      return where + "weight " + shape_str(mm.input(1)->constant().shape()) + " is not [" +
             std::to_string(e) + ", " + std::to_string(3 * e) + "]";
    }
    const Value* bias = is_float_constant(add.input(0)) ? add.input(0) : add.input(1);
    if (bias->constant().shape() != Shape{3 * e}) {
      return where + add.label() + ": bias " + shape_str(bias->constant().shape()) + " is not [" +
             std::to_string(3 * e) + "]";
    }
    const Shape& rs = *m.node(g, "reshape")->output(0)->shape();
    if (rs.size() != 5 || rs[0] != n || rs[1] != s || rs[2] != 3 || rs[3] * rs[4] != e) {
      return where + m.node(g, "reshape")->label() + ": " + shape_str(rs) +
             " is not [N, S, 3, H, E/H]";
    }
    if (!split_gathers(split)) {
      return where + split.label() + " is not read by exactly Gather 0, 1, 2 along axis 0";
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* mm = m.node(g, "matmul");
    Node* add = m.node(g, "bias");
    Node* reshape = m.node(g, "reshape");
    Node* split = m.node(g, "split");
    const auto gathers = *split_gathers(*split);
    const Shape& rs = *reshape->output(0)->shape();
    const int64_t n = rs[0], s = rs[1], h = rs[3], d = rs[4];
    Value* bias = is_float_constant(add->input(0)) ? add->input(0) : add->input(1);
    const std::string stem = name_with(mm->name(), "/MHAInProjection");
    std::vector<std::string> out_names;
    for (const char* part : {"_q", "_k", "_v"}) {
      out_names.push_back(g.unique_value_name(name_with(stem, part)));
    }
    Node* in_proj =
        g.insert_node({.name = stem,
                       .op_type = "MHAInProjection",
                       .inputs = {mm->input(0), mm->input(1), bias},
                       .output_names = out_names,
                       .attributes = {{"num_heads", h}, {"weight_layout", std::string("matmul")}},
                       .domain = "qforge"},
                      mm);
    for (size_t i = 0; i < 3; ++i) {
      in_proj->output(i)->set_type(DType::kFloat32, {n, h, s, d});
      Value* old_out = gathers[i]->output(0);
      const std::string name = old_out->name();
      g.replace_all_uses(old_out, in_proj->output(i));
      g.remove_node(gathers[i]);
      g.rename_value(in_proj->output(i), name);
    }
    for (Node* dead : {split, reshape, add, mm}) g.remove_node(dead);
  };
  return p;
}

}  // namespace

std::vector<Pattern> swin_conversion_patterns() {
  return {compose_swin_in_projection_pattern(), compose_swin_attention_pattern(),
          swin_attention_from_sdpa_pattern()};
}

std::span<const OpSchema> swin_module_schemas() {
  return kSwinSchemas;
}

}  // namespace qforge::graph
