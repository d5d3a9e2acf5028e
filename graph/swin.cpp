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

// x back through what Swin V2 applies to its Q and K before the scores, row by row: F.normalize's
// Div by the row norm and the per-head logit scale's Mul by a constant (at most both).
const Value* before_row_scaling(const Value* x) {
  for (int step = 0; step < 2; ++step) {
    const Node* p = x->producer();
    const bool scaling =
        p && ((p->op_type() == "Mul" && is_float_constant(p->input(1))) || p->op_type() == "Div");
    if (!scaling) break;
    x = p->input(0);
  }
  return x;
}

// Q, K, V [N, H, S, D] come out of one Swin QKV split: one MHAInProjection's outputs 0, 1, 2, or
// Gather 0, 1, 2 (axis 0) of one Transpose(2, 0, 3, 1, 4); Q and K possibly normalised and
// scaled per head first (Swin V2's cosine attention).
bool from_swin_qkv_split(const Value* q, const Value* k, const Value* v) {
  q = before_row_scaling(q);
  k = before_row_scaling(k);
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
void lower_swin_attention(Graph& g, Node& node, Lowered& lowered) {
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
  lowered.internal_quantizer_input = cur;
  Value* out = emit(g, &node, name_with(stem, "/MatMul_1"), "MatMul", {cur, v},
                    node.output(0)->known_shape());
  replace_output(g, node, out);
}

// Window attributes shared by SwinWindowPartition and SwinWindowReverse: each a pair (rows,
// columns).
struct WindowAttrs {
  std::vector<int64_t> window;
  std::vector<int64_t> shift;
  std::vector<int64_t> padding;
};

WindowAttrs window_attrs(const Node& n) {
  return {n.attr_ints("window_size"), n.attr_ints("shift", {0, 0}), n.attr_ints("padding", {0, 0})};
}

// A cyclic roll along `axis` as torch.onnx writes torch.roll: Concat(Slice(x, k:), Slice(x, :k)),
// emitted only when k is not 0. Row i of the result is row (i + k) mod n of x.
Value* emit_roll(Graph& g, Node& node, const std::string& stem, Value* x, int64_t axis, int64_t k) {
  const Shape& xs = x->known_shape();
  const int64_t n = xs[static_cast<size_t>(axis)];
  if (k == 0) return x;
  Shape head = xs, tail = xs;
  head[static_cast<size_t>(axis)] = n - k;
  tail[static_cast<size_t>(axis)] = k;
  Value* axes = int_constant_value(g, name_with(stem, "_axes"), {axis});
  Value* first = emit(g, &node, name_with(stem, "_Slice"), "Slice",
                      {x, int_constant_value(g, name_with(stem, "_head_starts"), {k}),
                       int_constant_value(g, name_with(stem, "_head_ends"), {n}), axes},
                      head);
  Value* second = emit(g, &node, name_with(stem, "_Slice_1"), "Slice",
                       {x, int_constant_value(g, name_with(stem, "_tail_starts"), {0}),
                        int_constant_value(g, name_with(stem, "_tail_ends"), {k}), axes},
                       tail);
  return emit(g, &node, name_with(stem, "_Concat"), "Concat", {first, second}, xs,
              {{"axis", axis}});
}

// SwinWindowPartition(x [B, H, W, C]) → [Pad] → [roll rows] → [roll columns] → Reshape
// [B, nWh, wh, nWw, ww, C] → Transpose(0, 1, 3, 2, 4, 5) → Reshape [B·nW, wh·ww, C].
void lower_swin_window_partition(Graph& g, Node& node, Lowered& /*lowered*/) {
  const std::string& stem = node.name();
  const WindowAttrs a = window_attrs(node);
  Value* cur = node.input(0);
  const Shape& xs = cur->known_shape();
  const int64_t b = xs[0], hp = xs[1] + a.padding[0], wp = xs[2] + a.padding[1], c = xs[3];
  if (a.padding[0] != 0 || a.padding[1] != 0) {
    Value* pads = int_constant_value(g, name_with(stem, "/pads"),
                                     {0, 0, 0, 0, 0, a.padding[0], a.padding[1], 0});
    cur = emit(g, &node, name_with(stem, "/Pad"), "Pad", {cur, pads}, {b, hp, wp, c},
               {{"mode", std::string("constant")}});
  }
  cur = emit_roll(g, node, name_with(stem, "/roll_rows"), cur, 1, a.shift[0]);
  cur = emit_roll(g, node, name_with(stem, "/roll_columns"), cur, 2, a.shift[1]);
  const int64_t wh = a.window[0], ww = a.window[1];
  const Shape grid = {b, hp / wh, wh, wp / ww, ww, c};
  cur = emit(g, &node, name_with(stem, "/Reshape"), "Reshape",
             {cur, int_constant_value(g, name_with(stem, "/grid_shape"), grid)}, grid);
  const Shape windows = {b, hp / wh, wp / ww, wh, ww, c};
  cur = emit(g, &node, name_with(stem, "/Transpose"), "Transpose", {cur}, windows,
             {{"perm", std::vector<int64_t>{0, 1, 3, 2, 4, 5}}});
  const Shape& out_shape = node.output(0)->known_shape();
  Value* out =
      emit(g, &node, name_with(stem, "/Reshape_1"), "Reshape",
           {cur, int_constant_value(g, name_with(stem, "/windows_shape"), out_shape)}, out_shape);
  replace_output(g, node, out);
}

// SwinWindowReverse(x [B·nW, wh·ww, C]) → Reshape [B, nWh, nWw, wh, ww, C] →
// Transpose(0, 1, 3, 2, 4, 5) → Reshape [B, Hp, Wp, C] → [roll rows] → [roll columns] →
// [Slice to [B, H, W, C]].
void lower_swin_window_reverse(Graph& g, Node& node, Lowered& /*lowered*/) {
  const std::string& stem = node.name();
  const WindowAttrs a = window_attrs(node);
  const std::vector<int64_t> image = node.attr_ints("image_size");
  const Shape& xs = node.input(0)->known_shape();
  const int64_t c = xs[2], wh = a.window[0], ww = a.window[1];
  const int64_t hp = image[0] + a.padding[0], wp = image[1] + a.padding[1];
  const int64_t b = xs[0] / ((hp / wh) * (wp / ww));
  const Shape windows = {b, hp / wh, wp / ww, wh, ww, c};
  Value* cur = emit(
      g, &node, name_with(stem, "/Reshape"), "Reshape",
      {node.input(0), int_constant_value(g, name_with(stem, "/windows_shape"), windows)}, windows);
  const Shape grid = {b, hp / wh, wh, wp / ww, ww, c};
  cur = emit(g, &node, name_with(stem, "/Transpose"), "Transpose", {cur}, grid,
             {{"perm", std::vector<int64_t>{0, 1, 3, 2, 4, 5}}});
  const Shape padded = {b, hp, wp, c};
  cur = emit(g, &node, name_with(stem, "/Reshape_1"), "Reshape",
             {cur, int_constant_value(g, name_with(stem, "/image_shape"), padded)}, padded);
  // Rolling by +s is rolling by -(n - s).
  cur = emit_roll(g, node, name_with(stem, "/roll_rows"), cur, 1, (hp - a.shift[0]) % hp);
  cur = emit_roll(g, node, name_with(stem, "/roll_columns"), cur, 2, (wp - a.shift[1]) % wp);
  if (a.padding[0] != 0 || a.padding[1] != 0) {
    cur = emit(g, &node, name_with(stem, "/Crop"), "Slice",
               {cur, int_constant_value(g, name_with(stem, "/crop_starts"), {0, 0}),
                int_constant_value(g, name_with(stem, "/crop_ends"), {image[0], image[1]}),
                int_constant_value(g, name_with(stem, "/crop_axes"), {1, 2})},
               {b, image[0], image[1], c});
  }
  replace_output(g, node, cur);
}

constexpr std::array kSwinSchemas = {
    // SwinAttention(Q, K, V [N, H, S, D], bias [1, H, S, S], window_mask [1, nW, 1, S, S]?) ->
    // [N, H, S, Dv] with N = B·nW windows; attributes scale, num_windows (1 without a mask).
    OpSchema{.op_type = "SwinAttention",
             .min_inputs = 4,
             .max_inputs = 5,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 13,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = {{{"Q", Role::kData},
                         {"K", Role::kData},
                         {"V", Role::kData},
                         {"bias", Role::kOther},
                         {"window_mask", Role::kMask, true}}},
             .quantized_inputs = {0, 1, 2, -1},
             .internal_quantizer = {"softmax", kSoftmaxScale},
             .lower = lower_swin_attention,
             .summary = "softmax(scale·Q·Kᵀ + bias[h] + mask[window])·V per window and head"},
    // SwinWindowPartition(x [B, H, W, C]) -> [B·nW, wh·ww, C]: pad at the bottom and right by
    // `padding`, roll by -`shift`, cut into `window_size` windows (row-major). Attributes are
    // (rows, columns) pairs; shifts lie in [0, padded size). Data movement only: nothing to
    // quantize.
    OpSchema{.op_type = "SwinWindowPartition",
             .min_inputs = 1,
             .max_inputs = 1,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 13,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = {{{"x", Role::kData}}},
             .lower = lower_swin_window_partition,
             .summary = "pad, cyclic shift by -shift and window partition of an [B, H, W, C] map"},
    // SwinWindowReverse(x [B·nW, wh·ww, C]) -> [B, H, W, C] with (H, W) = image_size: the exact
    // inverse of SwinWindowPartition with the same window_size, shift and padding.
    OpSchema{.op_type = "SwinWindowReverse",
             .min_inputs = 1,
             .max_inputs = 1,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 13,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = {{{"x", Role::kData}}},
             .lower = lower_swin_window_reverse,
             .summary = "window reverse, cyclic shift by +shift and crop of the padding"},
};

// ---------------------------------------------------------------------------------------------
// ComposeSwinAttention (shifted windows)

// 8-10 nodes. 0=Mul(q, c)?, 1=MatMul(Q, Kᵀ), 2=Mul(logit scale)? (one value, or one per head as
// Swin V2's cosine attention has it, then applied to Q before the module),
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
      if (auto why = scores_scale_refusal(*logit, *qk.output(0)->shape())) return why;
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
    const bool per_head = logit && !scalar_constant(logit->input(1));
    if (logit && !per_head) scale *= *scalar_constant(logit->input(1));
    Value* q = q_scale ? q_scale->input(0) : qk->input(0);
    if (per_head) q = scale_query_per_head(g, av, q, logit->input(1), qk->name());
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
         .attributes = {{"scale", scale}, {"num_windows", windows}},
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
         .attributes = {{"scale", sdpa->attr_float("scale")}, {"num_windows", int64_t{1}}},
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

// ---------------------------------------------------------------------------------------------
// Window partition and reverse: each chain becomes one module in steps, the bare
// Reshape/Transpose/Reshape first, then the ops next to it folded into its attributes one per
// round (conversions run to a fixed point): on the partition side the rolls, then the pad; on the
// reverse side the rolls, then the crop slices. Every intermediate module computes exactly what
// the ops it replaced computed.

std::vector<int64_t> int_values(const Value* v) {
  if (!v || !v->is_constant()) return {};
  const Tensor& t = v->constant();
  std::vector<int64_t> out;
  if (t.dtype() == DType::kInt64) {
    out.assign(t.data<int64_t>(), t.data<int64_t>() + t.numel());
  } else if (t.dtype() == DType::kInt32) {
    out.assign(t.data<int32_t>(), t.data<int32_t>() + t.numel());
  }
  return out;
}

bool ranks_are(const Node& n, size_t in_rank, size_t out_rank) {
  const Value* in = n.input(0);
  const Value* out = n.output(0);
  return in && in->has_shape() && in->shape()->size() == in_rank && out->has_shape() &&
         out->shape()->size() == out_rank;
}

bool window_perm(const Node& n) {
  return has_perm(n, {0, 1, 3, 2, 4, 5});
}

// A step-1 Slice of one spatial range: [begin, end) along `axis` of its input, clamped as ONNX
// clamps (negative bounds count from the end).
struct SliceRange {
  int64_t axis = 0;
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size = 0;  // the input's size along axis
};

std::optional<SliceRange> slice_range(const Node& s) {
  if (s.op_type() != "Slice" || s.num_inputs() < 3 || !s.input(0)->has_shape()) {
    return std::nullopt;
  }
  const Shape& xs = *s.input(0)->shape();
  const auto starts = int_values(s.input(1));
  const auto ends = int_values(s.input(2));
  const auto axes = s.input(3) ? int_values(s.input(3)) : std::vector<int64_t>{0};
  const auto steps = s.input(4) ? int_values(s.input(4)) : std::vector<int64_t>{1};
  if (starts.size() != 1 || ends.size() != 1 || axes.size() != 1 ||
      steps != std::vector<int64_t>{1}) {
    return std::nullopt;
  }
  const auto rank = static_cast<int64_t>(xs.size());
  const int64_t axis = axes[0] < 0 ? axes[0] + rank : axes[0];
  if (axis < 0 || axis >= rank) return std::nullopt;
  const int64_t n = xs[static_cast<size_t>(axis)];
  auto clamp = [n](int64_t i) { return std::clamp<int64_t>(i < 0 ? i + n : i, 0, n); };
  return SliceRange{axis, clamp(starts[0]), clamp(ends[0]), n};
}

// Concat(Slice(x, k:), Slice(x, :k)) along one axis: row i of the result is row (i + k) mod n of
// x, i.e. torch.roll(x, -k).
struct Roll {
  Value* source = nullptr;
  int64_t axis = 0;
  int64_t k = 0;
  int64_t size = 0;
};

std::optional<Roll> roll_of(const Node& concat) {
  if (concat.op_type() != "Concat" || concat.num_inputs() != 2) return std::nullopt;
  const Node* head = concat.input(0)->producer();
  const Node* tail = concat.input(1)->producer();
  if (!head || !tail || head->input(0) != tail->input(0)) return std::nullopt;
  const auto h = slice_range(*head);
  const auto t = slice_range(*tail);
  if (!h || !t || h->axis != t->axis) return std::nullopt;
  const auto rank = static_cast<int64_t>(head->input(0)->shape()->size());
  int64_t axis = concat.attr_int("axis");
  if (axis < 0) axis += rank;
  if (axis != h->axis || h->end != h->size || t->begin != 0 || t->end != h->begin) {
    return std::nullopt;
  }
  return Roll{head->input(0), axis, h->begin % h->size, h->size};
}

bool two_inputs(const Node& n) {
  return n.num_inputs() == 2;
}

// ComposeSwinWindowPartition
// 3 nodes. 0=Reshape [B, Hp, Wp, C] -> [B, nWh, wh, nWw, ww, C], 1=Transpose(0, 1, 3, 2, 4, 5),
// 2=Reshape [B·nWh·nWw, wh·ww, C].
Pattern compose_swin_window_partition_pattern() {
  Pattern p;
  p.name = "ComposeSwinWindowPartition";
  p.kind = PatternKind::kConversion;
  p.topology = "Reshape [B, nWh, wh, nWw, ww, C] -> Transpose(0, 1, 3, 2, 4, 5) -> Reshape";
  p.trunk = {one("grid", {"Reshape"}, [](const Node& n) { return ranks_are(n, 4, 6); }),
             one("swap", {"Transpose"}, window_perm),
             one("windows", {"Reshape"}, [](const Node& n) { return ranks_are(n, 6, 3); })};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& grid = *m.node(g, "grid");
    const Shape& xs = *grid.input(0)->shape();
    const Shape& gs = *grid.output(0)->shape();
    if (gs[0] != xs[0] || gs[1] * gs[2] != xs[1] || gs[3] * gs[4] != xs[2] || gs[5] != xs[3]) {
      return "Swin window partition at " + grid.label() + ": " + shape_str(xs) + " -> " +
             shape_str(gs) + " is not [B, Hp, Wp, C] -> [B, Hp/wh, wh, Wp/ww, ww, C]";
    }
    const Node& windows = *m.node(g, "windows");
    const Shape expected = {gs[0] * gs[1] * gs[3], gs[2] * gs[4], gs[5]};
    if (*windows.output(0)->shape() != expected) {
      return "Swin window partition at " + windows.label() + ": " +
             shape_str(*windows.output(0)->shape()) + " is not " + shape_str(expected);
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* grid = m.node(g, "grid");
    Node* swap = m.node(g, "swap");
    Node* windows = m.node(g, "windows");
    const Shape& gs = *grid->output(0)->shape();
    Node* part = g.insert_node(
        {.name = g.unique_node_name(name_with(grid->name(), "/SwinWindowPartition")),
         .op_type = "SwinWindowPartition",
         .inputs = {grid->input(0)},
         .output_names = {g.unique_value_name(name_with(grid->name(), "/SwinWindowPartition"))},
         .attributes = {{"window_size", std::vector<int64_t>{gs[2], gs[4]}},
                        {"shift", std::vector<int64_t>{0, 0}},
                        {"padding", std::vector<int64_t>{0, 0}}},
         .domain = "qforge"},
        grid);
    part->output(0)->set_type(DType::kFloat32, *windows->output(0)->shape());
    replace_output(g, *windows, part->output(0));
    g.remove_node(swap);
    g.remove_node(grid);
  };
  return p;
}

// SwinPartitionAbsorbRoll
// 4 nodes. 0=Slice(x, k:), 1=Slice(x, :k), 2=Concat (torch.roll(x, -k) along H or W),
// 3=SwinWindowPartition without padding.
Pattern swin_partition_absorb_roll_pattern() {
  Pattern p;
  p.name = "SwinPartitionAbsorbRoll";
  p.kind = PatternKind::kConversion;
  p.topology = "Slice(x, k:) + Slice(x, :k) -> Concat -> SwinWindowPartition";
  Fork fork;
  fork.node = one("roll", {"Concat"}, two_inputs);
  fork.branches = {Branch{.input = 0, .chain = {one("head", {"Slice"})}},
                   Branch{.input = 1, .chain = {one("tail", {"Slice"})}}};
  fork.shared_sources = {{0, 1}};
  p.fork = std::move(fork);
  p.trunk = {one("partition", {"SwinWindowPartition"})};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& roll = *m.node(g, "roll");
    const Node& part = *m.node(g, "partition");
    const auto r = roll_of(roll);
    if (!r || (r->axis != 1 && r->axis != 2)) {
      return "Swin window partition at " + part.label() + ": " + roll.label() +
             " is not a roll Concat(Slice(x, k:), Slice(x, :k)) along H or W";
    }
    const WindowAttrs a = window_attrs(part);
    if (a.padding != std::vector<int64_t>{0, 0}) {
      return "Swin window partition at " + part.label() + ": " + roll.label() +
             " rolls before the padding " + shape_str(a.padding) +
             " (torchvision pads, then rolls)";
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* roll = m.node(g, "roll");
    Node* part = m.node(g, "partition");
    const Roll r = *roll_of(*roll);
    std::vector<int64_t> shift = window_attrs(*part).shift;
    auto& s = shift[static_cast<size_t>(r.axis - 1)];
    s = (s + r.k) % r.size;
    g.set_input(part, 0, r.source);
    part->set_attr("shift", shift);
    g.remove_node(roll);
    g.remove_node(m.node(g, "head"));
    g.remove_node(m.node(g, "tail"));
  };
  return p;
}

// SwinPartitionAbsorbPad
// 2 nodes. 0=Pad(constant 0, bottom and right of H and W only), 1=SwinWindowPartition without
// padding.
Pattern swin_partition_absorb_pad_pattern() {
  Pattern p;
  p.name = "SwinPartitionAbsorbPad";
  p.kind = PatternKind::kConversion;
  p.topology = "Pad -> SwinWindowPartition";
  p.trunk = {one("pad", {"Pad"}), one("partition", {"SwinWindowPartition"})};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& pad = *m.node(g, "pad");
    const Node& part = *m.node(g, "partition");
    const std::string where = "Swin window partition at " + part.label() + ": " + pad.label();
    if (pad.attr_string("mode", "constant") != "constant") return where + ": mode is not constant";
    if (pad.input(2)) {
      const auto fill = scalar_constant(pad.input(2));
      if (fill != 0.0f) return where + ": the fill value is not a constant 0";
    }
    if (pad.input(3)) return where + ": explicit pad axes are not supported";
    const std::vector<int64_t> pads = int_values(pad.input(1));
    if (pads.size() != 8 || pads[0] != 0 || pads[1] != 0 || pads[2] != 0 || pads[3] != 0 ||
        pads[4] != 0 || pads[5] < 0 || pads[6] < 0 || pads[7] != 0) {
      return where + ": pads " + shape_str(pads) +
             " are not [0, 0, 0, 0, 0, bottom, right, 0] (constant, non-negative)";
    }
    const WindowAttrs a = window_attrs(part);
    if (a.padding != std::vector<int64_t>{0, 0}) {
      return where + ": the partition already pads by " + shape_str(a.padding);
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* pad = m.node(g, "pad");
    Node* part = m.node(g, "partition");
    const std::vector<int64_t> pads = int_values(pad->input(1));
    g.set_input(part, 0, pad->input(0));
    part->set_attr("padding", std::vector<int64_t>{pads[5], pads[6]});
    g.remove_node(pad);
  };
  return p;
}

// ComposeSwinWindowReverse
// 3 nodes. 0=Reshape [B·nWh·nWw, wh·ww, C] -> [B, nWh, nWw, wh, ww, C],
// 1=Transpose(0, 1, 3, 2, 4, 5), 2=Reshape [B, nWh·wh, nWw·ww, C].
Pattern compose_swin_window_reverse_pattern() {
  Pattern p;
  p.name = "ComposeSwinWindowReverse";
  p.kind = PatternKind::kConversion;
  p.topology = "Reshape [B, nWh, nWw, wh, ww, C] -> Transpose(0, 1, 3, 2, 4, 5) -> Reshape";
  p.trunk = {one("windows", {"Reshape"}, [](const Node& n) { return ranks_are(n, 3, 6); }),
             one("swap", {"Transpose"}, window_perm),
             one("image", {"Reshape"}, [](const Node& n) { return ranks_are(n, 6, 4); })};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& windows = *m.node(g, "windows");
    const Shape& xs = *windows.input(0)->shape();
    const Shape& ws = *windows.output(0)->shape();
    if (ws[0] * ws[1] * ws[2] != xs[0] || ws[3] * ws[4] != xs[1] || ws[5] != xs[2]) {
      return "Swin window reverse at " + windows.label() + ": " + shape_str(xs) + " -> " +
             shape_str(ws) + " is not [B·nW, wh·ww, C] -> [B, nWh, nWw, wh, ww, C]";
    }
    const Node& image = *m.node(g, "image");
    const Shape expected = {ws[0], ws[1] * ws[3], ws[2] * ws[4], ws[5]};
    if (*image.output(0)->shape() != expected) {
      return "Swin window reverse at " + image.label() + ": " +
             shape_str(*image.output(0)->shape()) + " is not " + shape_str(expected);
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* windows = m.node(g, "windows");
    Node* swap = m.node(g, "swap");
    Node* image = m.node(g, "image");
    const Shape& ws = *windows->output(0)->shape();
    const Shape& is = *image->output(0)->shape();
    Node* rev = g.insert_node(
        {.name = g.unique_node_name(name_with(windows->name(), "/SwinWindowReverse")),
         .op_type = "SwinWindowReverse",
         .inputs = {windows->input(0)},
         .output_names = {g.unique_value_name(name_with(windows->name(), "/SwinWindowReverse"))},
         .attributes = {{"window_size", std::vector<int64_t>{ws[3], ws[4]}},
                        {"shift", std::vector<int64_t>{0, 0}},
                        {"padding", std::vector<int64_t>{0, 0}},
                        {"image_size", std::vector<int64_t>{is[1], is[2]}}},
         .domain = "qforge"},
        windows);
    rev->output(0)->set_type(DType::kFloat32, is);
    replace_output(g, *image, rev->output(0));
    g.remove_node(swap);
    g.remove_node(windows);
  };
  return p;
}

// The SwinWindowReverse whose output a roll Concat's slices read, and nothing else reads.
bool after_window_reverse(const Node& concat) {
  if (concat.num_inputs() != 2 || !concat.input(0)->producer()) return false;
  const Value* source = concat.input(0)->producer()->input(0);
  return source && source->producer() && source->producer()->op_type() == "SwinWindowReverse";
}

// SwinReverseAbsorbRoll
// 3 nodes (and the SwinWindowReverse they read). 0=Slice(x, k:), 1=Slice(x, :k), 2=Concat
// (torch.roll(x, -k) along H or W) with x = SwinWindowReverse without a crop.
Pattern swin_reverse_absorb_roll_pattern() {
  Pattern p;
  p.name = "SwinReverseAbsorbRoll";
  p.kind = PatternKind::kConversion;
  p.topology = "SwinWindowReverse -> Slice(x, k:) + Slice(x, :k) -> Concat";
  Fork fork;
  fork.node = one("roll", {"Concat"}, after_window_reverse);
  fork.branches = {Branch{.input = 0, .chain = {one("head", {"Slice"})}},
                   Branch{.input = 1, .chain = {one("tail", {"Slice"})}}};
  fork.shared_sources = {{0, 1}};
  p.fork = std::move(fork);
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& roll = *m.node(g, "roll");
    const Value* source = m.node(g, "head")->input(0);
    const Node& rev = *source->producer();
    const std::string where = "Swin window reverse at " + rev.label() + ": " + roll.label();
    const auto r = roll_of(roll);
    if (!r || (r->axis != 1 && r->axis != 2)) {
      return where + " is not a roll Concat(Slice(x, k:), Slice(x, :k)) along H or W";
    }
    if (source->is_graph_output() || source->consumers().size() != 2) {
      return where + ": the unrolled windows are read elsewhere too";
    }
    const WindowAttrs a = window_attrs(rev);
    if (a.padding != std::vector<int64_t>{0, 0}) {
      return where + " rolls after the crop " + shape_str(a.padding) +
             " (torchvision rolls, then crops)";
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* roll = m.node(g, "roll");
    Node* head = m.node(g, "head");
    Node* tail = m.node(g, "tail");
    Node* rev = head->input(0)->producer();
    const Roll r = *roll_of(*roll);
    std::vector<int64_t> shift = window_attrs(*rev).shift;
    auto& s = shift[static_cast<size_t>(r.axis - 1)];
    s = (s - r.k + r.size) % r.size;
    rev->set_attr("shift", shift);
    replace_output(g, *roll, rev->output(0));
    g.remove_node(head);
    g.remove_node(tail);
  };
  return p;
}

// SwinReverseAbsorbCrop
// 2 nodes. 0=SwinWindowReverse, 1=Slice(x, 0:e) along H or W.
Pattern swin_reverse_absorb_crop_pattern() {
  Pattern p;
  p.name = "SwinReverseAbsorbCrop";
  p.kind = PatternKind::kConversion;
  p.topology = "SwinWindowReverse -> Slice(0:e) along H or W";
  p.trunk = {one("reverse", {"SwinWindowReverse"}), one("crop", {"Slice"})};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& crop = *m.node(g, "crop");
    const auto r = slice_range(crop);
    if (!r || (r->axis != 1 && r->axis != 2) || r->begin != 0 || r->end < 1) {
      return "Swin window reverse at " + m.node(g, "reverse")->label() + ": " + crop.label() +
             " is not a crop Slice(0:e) of one spatial axis";
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* rev = m.node(g, "reverse");
    Node* crop = m.node(g, "crop");
    const SliceRange r = *slice_range(*crop);
    const auto i = static_cast<size_t>(r.axis - 1);
    std::vector<int64_t> image = rev->attr_ints("image_size");
    std::vector<int64_t> padding = window_attrs(*rev).padding;
    padding[i] += image[i] - r.end;
    image[i] = r.end;
    rev->set_attr("image_size", image);
    rev->set_attr("padding", padding);
    rev->output(0)->set_type(DType::kFloat32, *crop->output(0)->shape());
    replace_output(g, *crop, rev->output(0));
  };
  return p;
}

}  // namespace

std::vector<Pattern> swin_conversion_patterns() {
  return {compose_swin_in_projection_pattern(),  compose_swin_attention_pattern(),
          swin_attention_from_sdpa_pattern(),    compose_swin_window_partition_pattern(),
          swin_partition_absorb_roll_pattern(),  swin_partition_absorb_pad_pattern(),
          compose_swin_window_reverse_pattern(), swin_reverse_absorb_roll_pattern(),
          swin_reverse_absorb_crop_pattern()};
}

std::span<const OpSchema> swin_module_schemas() {
  return kSwinSchemas;
}

}  // namespace qforge::graph
