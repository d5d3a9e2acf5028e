// Attention conversions: raw attention composed into SDPA (explicit scale, additive mask,
// causal), nn.MultiheadAttention's ONNX form rebuilt as MHAInProjection → SDPA → out projection,
// refusals recorded in the plan with their reason, lowering round trips through ONNX, and the
// bundled ViT computing the same after conversion.
#include "graph/attention.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <random>

#include "graph/conversions.h"
#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "graph/plan.h"
#include "graph/transform.h"
#include "runtime/executor.h"
#include "runtime/resolve.h"
#include "tests/support/graph_builders.h"
#include "tests/support/pass_tester.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Graph;
using graph::Shape;
using kernels::Tensor;

std::vector<graph::Pattern> patterns() {
  return testing::conversion_and_attention_patterns();
}

graph::PlanReport convert(Graph& g) {
  return testing::convert_with_attention(g);
}

std::vector<std::string> refusals(const Graph& g, const std::string& pattern) {
  const auto list = patterns();
  std::vector<std::string> out;
  for (const auto& e : graph::make_plan(g, list).entries) {
    if (e.match.pattern == pattern && !e.apply) out.push_back(e.reason);
  }
  return out;
}

using testing::random_tensor;

using testing::add;
using testing::int_const;

struct RawAttention {
  bool prescale_query = false;   // Q·(1/√d) before the MatMul, as torch's MHA export
  bool divide = false;           // Div by √d instead of Mul by 1/√d
  bool mask_input = false;       // additive mask as a graph input [1, 1, S, S]
  bool causal_constant = false;  // constant 0 / -inf causal mask
  bool dropout = false;
  // Where(mask, fill, scores) instead of an Add: the mask Less(m, 0) of an input m [2, 1, 1, 5]
  // (DistilBERT's masked_fill), or with `causal_fill` a constant causal one.
  std::optional<float> fill;
  bool causal_fill = false;
  // GPT-2's torch.where(keep, scores, fill): the condition says what is kept.
  bool keep_form = false;
  // An additive mask input [2, 1, 1, 5] added after the Where (GPT-2's padding mask).
  bool mask_after_fill = false;
};

// q, k, v [2, 3, 5, 4] -> Transpose(k) -> MatMul -> scale -> [Add mask] -> Softmax ->
// [Dropout] -> MatMul(v) -> y.
std::unique_ptr<Graph> raw_attention(const RawAttention& o) {
  auto g = std::make_unique<Graph>();
  const Shape s{2, 3, 5, 4};
  auto* q = g->add_input("q", DType::kFloat32, s);
  auto* k = g->add_input("k", DType::kFloat32, s);
  auto* v = g->add_input("v", DType::kFloat32, s);
  graph::Value* mask =
      o.mask_input ? g->add_input("mask", DType::kFloat32, Shape{1, 1, 5, 5}) : nullptr;
  auto* c = g->add_constant("c", Tensor::scalar_f32(o.divide ? 2.0f : 0.5f));
  const std::string scale_op = o.divide ? "Div" : "Mul";
  if (o.prescale_query) q = add(*g, "q_scale", scale_op, {q, c});
  auto* kt = add(*g, "k_t", "Transpose", {k}, {{"perm", std::vector<int64_t>{0, 1, 3, 2}}});
  auto* cur = add(*g, "qk", "MatMul", {q, kt});
  if (!o.prescale_query) cur = add(*g, "scale", scale_op, {cur, c});
  if (mask) cur = add(*g, "mask_add", "Add", {cur, mask});
  if (o.fill) {
    graph::Value* cond = nullptr;
    if (o.causal_fill) {
      Tensor m(DType::kBool, {5, 5});
      for (int i = 0; i < 5; ++i) {
        for (int j = 0; j < 5; ++j) m.data<uint8_t>()[i * 5 + j] = (j > i) != o.keep_form;
      }
      cond = g->add_constant("future", m);
    } else {
      auto* keys = g->add_input("keys", DType::kFloat32, Shape{2, 1, 1, 5});
      cond = add(*g, "padding", "Less", {keys, g->add_constant("zero", Tensor::scalar_f32(0.0f))});
    }
    graph::Value* fill = g->add_constant("fill", Tensor::scalar_f32(*o.fill));
    cur = add(*g, "masked_fill", "Where",
              o.keep_form ? std::vector{cond, cur, fill} : std::vector{cond, fill, cur});
    if (o.mask_after_fill) {
      cur = add(*g, "padding_add", "Add",
                {cur, g->add_input("padding_mask", DType::kFloat32, Shape{2, 1, 1, 5})});
    }
  }
  if (o.causal_constant) {
    Tensor m(DType::kFloat32, {5, 5});
    for (int i = 0; i < 5; ++i) {
      for (int j = i + 1; j < 5; ++j)
        m.data<float>()[i * 5 + j] = -std::numeric_limits<float>::infinity();
    }
    cur = add(*g, "causal_add", "Add", {cur, g->add_constant("causal", m)});
  }
  cur = add(*g, "softmax", "Softmax", {cur}, {{"axis", int64_t{-1}}});
  if (o.dropout) cur = add(*g, "dropout", "Dropout", {cur});
  g->add_node({.name = "av", .op_type = "MatMul", .inputs = {cur, v}, .output_names = {"y"}});
  g->mark_output(g->find_value("y"));
  return g;
}

const graph::Node* only(const Graph& g, const std::string& op) {
  const graph::Node* found = nullptr;
  for (const auto* n : g.nodes()) {
    if (n->op_type() == op) {
      EXPECT_EQ(found, nullptr) << "more than one " << op;
      found = n;
    }
  }
  EXPECT_NE(found, nullptr) << "no " << op;
  return found;
}

TEST(AttentionSdpa, ComposesScaleAfterMatMul) {
  auto r = testing::run_pass_test([] { return raw_attention({}); }, [](Graph& g) { convert(g); });
  EXPECT_EQ(r.after, (testing::OpCounts{{"SDPA", 1}}));
  const graph::Node* sdpa = only(*r.transformed, "SDPA");
  ASSERT_NE(sdpa, nullptr);
  EXPECT_EQ(sdpa->name(), "qk/SDPA");
  EXPECT_EQ(sdpa->domain(), "qforge");
  EXPECT_FLOAT_EQ(sdpa->attr_float("scale"), 0.5f);
  EXPECT_EQ(sdpa->attr_int("causal"), 0);
  EXPECT_FLOAT_EQ(graph::find_schema("SDPA")->internal_quantizer.scale, 1.0f / 127.0f);
  // K reaches the module untransposed: the Transpose composed with Kᵀ is the identity.
  EXPECT_EQ(sdpa->input(1)->name(), "k");
}

TEST(AttentionSdpa, HonoursPrescaledQueryDivision) {
  auto r =
      testing::run_pass_test([] { return raw_attention({.prescale_query = true, .divide = true}); },
                             [](Graph& g) { convert(g); });
  EXPECT_EQ(r.after, (testing::OpCounts{{"SDPA", 1}}));
  EXPECT_FLOAT_EQ(only(*r.transformed, "SDPA")->attr_float("scale"), 0.5f);
}

TEST(AttentionSdpa, KeepsAdditiveMaskAndDropsInferenceDropout) {
  auto r =
      testing::run_pass_test([] { return raw_attention({.mask_input = true, .dropout = true}); },
                             [](Graph& g) { convert(g); });
  EXPECT_EQ(r.after, (testing::OpCounts{{"SDPA", 1}}));
  const graph::Node* sdpa = only(*r.transformed, "SDPA");
  ASSERT_NE(sdpa, nullptr);
  ASSERT_EQ(sdpa->num_inputs(), 4u);
  EXPECT_EQ(sdpa->input(3)->name(), "mask");
}

// DistilBERT's masked_fill: Where(mask, lowest float, scores) becomes scores + Where(mask, fill,
// 0), an additive mask SDPA takes (computing the same: the fill absorbs any score); a constant
// causal one becomes the causal flag; a fill that does not mask out is left alone.
TEST(AttentionSdpa, MaskedFillBecomesAnAdditiveMask) {
  const float lowest = std::numeric_limits<float>::lowest();
  auto r = testing::run_pass_test([&] { return raw_attention({.fill = lowest}); },
                                  [](Graph& g) { convert(g); });
  EXPECT_EQ(r.after, (testing::OpCounts{{"Less", 1}, {"SDPA", 1}, {"Where", 1}}));
  const graph::Node* sdpa = only(*r.transformed, "SDPA");
  ASSERT_NE(sdpa, nullptr);
  ASSERT_EQ(sdpa->num_inputs(), 4u);
  const graph::Node* additive = sdpa->input(3)->producer();
  ASSERT_NE(additive, nullptr);
  EXPECT_EQ(additive->op_type(), "Where");
  EXPECT_EQ(additive->input(0)->name(), "padding_out");
  EXPECT_EQ(additive->input(2)->constant().data<float>()[0], 0.0f);

  auto causal = testing::run_pass_test(
      [] {
        return raw_attention(
            {.fill = -std::numeric_limits<float>::infinity(), .causal_fill = true});
      },
      [](Graph& g) { convert(g); });
  EXPECT_EQ(causal.after, (testing::OpCounts{{"SDPA", 1}}));
  EXPECT_EQ(only(*causal.transformed, "SDPA")->attr_int("causal"), 1);

  auto g = raw_attention({.fill = -1.0f});
  runtime::resolve(*g, {});
  EXPECT_EQ(refusals(*g, "MaskedFillToAdd"),
            (std::vector<std::string>{
                "node 'masked_fill' (Where): neither input 1 nor input 2 is a constant fill of "
                "-1e4 or less with the float scores of the output's shape as the other"}));
}

// GPT-2's causal torch.where(keep, scores, lowest), its padding mask added after: the two masks
// join into the one SDPA takes, and the scores meet them as before (run_pass_test compares).
TEST(AttentionSdpa, GptsWhereAndThePaddingMaskAfterItJoinIntoOneMask) {
  const float lowest = std::numeric_limits<float>::lowest();
  auto r = testing::run_pass_test(
      [&] {
        return raw_attention(
            {.fill = lowest, .causal_fill = true, .keep_form = true, .mask_after_fill = true});
      },
      [](Graph& g) { convert(g); });
  EXPECT_EQ(r.after, (testing::OpCounts{{"Add", 1}, {"SDPA", 1}}));
  const graph::Node* sdpa = only(*r.transformed, "SDPA");
  ASSERT_NE(sdpa, nullptr);
  ASSERT_EQ(sdpa->num_inputs(), 4u);
  const graph::Node* joined = sdpa->input(3)->producer();
  ASSERT_NE(joined, nullptr);
  EXPECT_EQ(joined->op_type(), "Add");
  EXPECT_EQ(joined->input(1)->name(), "padding_mask");
  // The causal part, computed: the lowest float above the diagonal, 0 on and below it.
  const Tensor& causal = joined->input(0)->constant();
  EXPECT_EQ(causal.data<float>()[1], lowest);
  EXPECT_EQ(causal.data<float>()[5], 0.0f);
  // Without the Add after it, the kept form alone is a constant mask (with -inf, the flag).
  for (float fill : {lowest, -std::numeric_limits<float>::infinity()}) {
    auto alone = testing::run_pass_test(
        [&] { return raw_attention({.fill = fill, .causal_fill = true, .keep_form = true}); },
        [](Graph& g) { convert(g); });
    EXPECT_EQ(alone.after, (testing::OpCounts{{"SDPA", 1}}));
    const graph::Node* one = only(*alone.transformed, "SDPA");
    ASSERT_NE(one, nullptr);
    EXPECT_EQ(one->attr_int("causal", 0), std::isinf(fill) ? 1 : 0);
    EXPECT_EQ(one->num_inputs(), std::isinf(fill) ? 3u : 4u);
  }
}

// CLIP's attention: q, k, v [B·H, 5, 4] with B = 2, H = 3; MatMul(q, kᵀ) -> Reshape [2, 3, 5, 5]
// -> Add(mask) -> Reshape [6, 5, 5] -> Softmax -> MatMul(v). `constant_mask`: a constant
// [2, 1, 5, 5] causal mask, else a mask input [2, 1, 1, 5].
std::unique_ptr<Graph> split_heads_attention(bool constant_mask) {
  auto g = std::make_unique<Graph>();
  const Shape s{6, 5, 4};
  auto* q = g->add_input("q", DType::kFloat32, s);
  auto* k = g->add_input("k", DType::kFloat32, s);
  auto* v = g->add_input("v", DType::kFloat32, s);
  graph::Value* mask = nullptr;
  if (constant_mask) {
    Tensor m(DType::kFloat32, {2, 1, 5, 5});
    for (int64_t b = 0; b < 2; ++b) {
      for (int64_t i = 0; i < 5; ++i) {
        for (int64_t j = 0; j < 5; ++j) {
          m.data<float>()[(b * 5 + i) * 5 + j] = j > i ? std::numeric_limits<float>::lowest() : 0;
        }
      }
    }
    mask = g->add_constant("causal", m);
  } else {
    mask = g->add_input("mask", DType::kFloat32, Shape{2, 1, 1, 5});
  }
  auto* kt = add(*g, "k_t", "Transpose", {k}, {{"perm", std::vector<int64_t>{0, 2, 1}}});
  auto* scores = add(*g, "qk", "MatMul", {q, kt});
  auto* split = add(*g, "split", "Reshape", {scores, int_const(*g, "split_shape", {2, 3, 5, 5})});
  auto* masked = add(*g, "mask_add", "Add", {split, mask});
  auto* merged = add(*g, "merge", "Reshape", {masked, int_const(*g, "merge_shape", {6, 5, 5})});
  auto* p = add(*g, "softmax", "Softmax", {merged}, {{"axis", int64_t{-1}}});
  g->add_node({.name = "av", .op_type = "MatMul", .inputs = {p, v}, .output_names = {"y"}});
  g->mark_output(g->find_value("y"));
  return g;
}

// The mask moves onto the merged scores (a constant one broadcast and merged to [6, 5, 5], an
// input one through Expand and Reshape), and the chain composes into SDPA computing the same.
TEST(AttentionSdpa, MaskAddedBetweenHeadReshapesMovesOntoTheMergedScores) {
  auto constant = testing::run_pass_test([] { return split_heads_attention(true); },
                                         [](Graph& g) { convert(g); });
  EXPECT_EQ(constant.after, (testing::OpCounts{{"SDPA", 1}}));
  const graph::Node* sdpa = only(*constant.transformed, "SDPA");
  ASSERT_NE(sdpa, nullptr);
  ASSERT_EQ(sdpa->num_inputs(), 4u);
  EXPECT_EQ(sdpa->input(3)->constant().shape(), (Shape{6, 5, 5}));

  auto input = testing::run_pass_test([] { return split_heads_attention(false); },
                                      [](Graph& g) { convert(g); });
  EXPECT_EQ(input.after, (testing::OpCounts{{"Expand", 1}, {"Reshape", 1}, {"SDPA", 1}}));
}

TEST(AttentionSdpa, ConstantCausalMaskBecomesCausalFlag) {
  auto r = testing::run_pass_test([] { return raw_attention({.causal_constant = true}); },
                                  [](Graph& g) { convert(g); });
  EXPECT_EQ(r.after, (testing::OpCounts{{"SDPA", 1}}));
  const graph::Node* sdpa = only(*r.transformed, "SDPA");
  ASSERT_NE(sdpa, nullptr);
  EXPECT_EQ(sdpa->attr_int("causal"), 1);
  EXPECT_EQ(sdpa->num_inputs(), 3u);
}

TEST(AttentionSdpa, RefusesSoftmaxOverAnotherAxis) {
  auto g = raw_attention({});
  g->find_node("softmax")->set_attr("axis", int64_t{2});
  runtime::resolve(*g, {});
  const auto reasons = refusals(*g, "ComposeSDPA");
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_NE(reasons[0].find("node 'softmax' (Softmax): axis 2 is not the last"), std::string::npos)
      << reasons[0];
}

// Runs `g` before and after lowering every module and an ONNX round trip; outputs agree.
void expect_lowering_round_trip(std::unique_ptr<Graph> g, size_t modules) {
  runtime::resolve(*g, {});
  convert(*g);
  std::mt19937 rng(3);
  std::vector<Tensor> inputs;
  for (const auto* in : g->inputs())
    inputs.push_back(testing::random_input(in->dtype(), in->known_shape(), rng));
  runtime::Executor before(*g);
  auto ref = before.run(inputs);
  std::vector<Tensor> ref_copy;
  for (const auto& t : ref) ref_copy.push_back(t.clone());

  auto lowered = g->clone();
  EXPECT_EQ(graph::lower_modules(*lowered), modules);
  for (const auto* n : lowered->nodes()) EXPECT_NE(n->domain(), "qforge") << n->name();
  const std::string bytes = graph::serialize_onnx(*lowered);
  auto reloaded = graph::parse_onnx(bytes, "lowered");
  runtime::resolve(*reloaded, {});
  runtime::Executor after(*reloaded);
  auto got = after.run(inputs);
  ASSERT_EQ(got.size(), ref_copy.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_LE(testing::relative_max_diff(got[i], ref_copy[i]), 1e-5) << "output " << i;
  }
}

TEST(AttentionSdpa, LowersToOnnxAndBack) {
  expect_lowering_round_trip(raw_attention({.mask_input = true}), 1);
  expect_lowering_round_trip(raw_attention({.causal_constant = true}), 1);
}

// torch.onnx's nn.MultiheadAttention (batch_first=False inside torchvision's encoder):
// x [N, S, E] -> Transpose -> MatMul(W [E, 3E]) -> Add(b) -> 3 x (Slice -> Reshape [S, N·H, D]
// -> Transpose) -> Q ÷ √D, Kᵀ -> MatMul -> Softmax -> MatMul(V) -> Transpose -> Reshape
// [S·N, E] -> Gemm(transB) -> Reshape [S, N, E] -> Transpose -> y [N, S, E].
// With `cross`, K and V slice a second projection of another input `m`.
std::unique_ptr<Graph> torch_mha(bool cross) {
  constexpr int64_t n = 2, s = 5, e = 8, h = 2, d = e / h;
  std::mt19937 rng(11);
  auto g = std::make_unique<Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{n, s, e});
  auto project = [&](graph::Value* in, const std::string& p) {
    auto* t = add(*g, p + "_t", "Transpose", {in}, {{"perm", std::vector<int64_t>{1, 0, 2}}});
    auto* w = g->add_constant(p + "_w", random_tensor({e, 3 * e}, rng));
    auto* b = g->add_constant(p + "_b", random_tensor({3 * e}, rng));
    auto* mm = add(*g, p + "_matmul", "MatMul", {t, w});
    return add(*g, p + "_add", "Add", {b, mm});
  };
  auto* packed = project(x, "in_proj");
  auto* kv_packed = packed;
  if (cross) kv_packed = project(g->add_input("m", DType::kFloat32, Shape{n, s, e}), "kv_proj");
  auto* axes = int_const(*g, "axes", {-1});
  auto* heads = int_const(*g, "heads", {s, n * h, d});
  std::vector<graph::Value*> parts;
  for (int64_t i = 0; i < 3; ++i) {
    const std::string p = std::string("part") + std::to_string(i);
    auto* src = i == 0 ? packed : kv_packed;
    auto* sl = add(
        *g, p + "_slice", "Slice",
        {src, int_const(*g, p + "_st", {i * e}), int_const(*g, p + "_en", {(i + 1) * e}), axes});
    auto* rs = add(*g, p + "_reshape", "Reshape", {sl, heads});
    const std::vector<int64_t> perm =
        i == 1 ? std::vector<int64_t>{1, 2, 0} : std::vector<int64_t>{1, 0, 2};
    parts.push_back(add(*g, p + "_transpose", "Transpose", {rs}, {{"perm", perm}}));
  }
  auto* qs =
      add(*g, "q_div", "Div", {parts[0], g->add_constant("sqrt_d", Tensor::scalar_f32(2.0f))});
  auto* scores = add(*g, "qk", "MatMul", {qs, parts[1]});
  auto* probs = add(*g, "softmax", "Softmax", {scores}, {{"axis", int64_t{-1}}});
  auto* att = add(*g, "av", "MatMul", {probs, parts[2]});
  auto* mt = add(*g, "merge_t", "Transpose", {att}, {{"perm", std::vector<int64_t>{1, 0, 2}}});
  auto* mr = add(*g, "merge_r", "Reshape", {mt, int_const(*g, "merged", {s * n, e})});
  auto* op = add(*g, "out_proj", "Gemm",
                 {mr, g->add_constant("out_w", random_tensor({e, e}, rng)),
                  g->add_constant("out_b", random_tensor({e}, rng))},
                 {{"transB", int64_t{1}}});
  auto* un = add(*g, "unflatten", "Reshape", {op, int_const(*g, "unflat", {s, n, e})});
  g->add_node({.name = "batch_first",
               .op_type = "Transpose",
               .inputs = {un},
               .output_names = {"y"},
               .attributes = {{"perm", std::vector<int64_t>{1, 0, 2}}}});
  g->mark_output(g->find_value("y"));
  return g;
}

TEST(AttentionMha, RebuildsTorchMultiheadAttention) {
  auto r = testing::run_pass_test([] { return torch_mha(false); }, [](Graph& g) { convert(g); });
  EXPECT_EQ(
      r.after,
      (testing::OpCounts{
          {"MHAInProjection", 1}, {"SDPA", 1}, {"Transpose", 1}, {"Reshape", 2}, {"Gemm", 1}}));
  const graph::Node* in_proj = only(*r.transformed, "MHAInProjection");
  ASSERT_NE(in_proj, nullptr);
  EXPECT_EQ(in_proj->name(), "in_proj_matmul/MHAInProjection");
  EXPECT_EQ(in_proj->attr_int("num_heads"), 2);
  EXPECT_EQ(in_proj->input(0)->name(), "x");
  EXPECT_EQ(in_proj->output(0)->known_shape(), (Shape{2, 2, 5, 4}));
  EXPECT_FLOAT_EQ(only(*r.transformed, "SDPA")->attr_float("scale"), 0.5f);
}

TEST(AttentionMha, LowersToOnnxAndBack) {
  expect_lowering_round_trip(torch_mha(false), 2);
}

TEST(AttentionMha, SkipsCrossAttentionWithAWarning) {
  auto r = testing::run_pass_test([] { return torch_mha(true); }, [](Graph& g) { convert(g); });
  EXPECT_EQ(r.after.count("MHAInProjection"), 0u);
  EXPECT_EQ(r.after.at("SDPA"), 1u);
  const auto reasons = refusals(*r.transformed, "ComposeMultiheadAttention");
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_EQ(reasons[0],
            "MHA at node 'qk/SDPA' (SDPA): cross-attention (query from 'in_proj_add_out', key "
            "from 'kv_proj_add_out', value from 'kv_proj_add_out') is not supported");
}

// The bundled ViT (data/generate/models.py: num_layers=4) has one nn.MultiheadAttention per
// encoder layer, so one MHAInProjection and one SDPA per layer.
constexpr size_t kVitEncoderLayers = 4;

void check_vit(const std::string& form) {
  auto g = graph::load_onnx(testing::data_path("models/vit_" + form + ".onnx"));
  runtime::resolve(*g, {.input_shapes = runtime::input_shapes_for_batch(*g, 4)});
  auto converted = g->clone();
  const auto report = convert(*converted);
  const auto counts = testing::count_ops(*converted);
  EXPECT_EQ(counts.at("MHAInProjection"), kVitEncoderLayers) << report.to_text();
  EXPECT_EQ(counts.at("SDPA"), kVitEncoderLayers) << report.to_text();
  EXPECT_EQ(counts.count("Softmax"), 0u);

  Tensor input = io::read_npy(testing::data_path("golden/vit_input.npy"));
  ASSERT_EQ(input.dim(0), 4);
  runtime::Executor before(*g), after(*converted);
  const std::vector<Tensor> inputs = {input};
  auto ref = before.run(inputs);
  std::vector<Tensor> ref_copy;
  for (const auto& t : ref) ref_copy.push_back(t.clone());
  auto got = after.run(inputs);
  ASSERT_EQ(got.size(), ref_copy.size());
  EXPECT_LE(testing::relative_max_diff(got[0], ref_copy[0]), 1e-5);

  // Best of 20 runs each, interleaved, so that load from other processes evens out.
  double t_before = 1e30, t_after = 1e30;
  auto time_of = [&](runtime::Executor& ex) {
    const auto start = std::chrono::steady_clock::now();
    ex.run(inputs);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
        .count();
  };
  for (int i = 0; i < 20; ++i) {
    t_before = std::min(t_before, time_of(before));
    t_after = std::min(t_after, time_of(after));
  }
  std::printf("vit_%s batch 4: %.3f ms before, %.3f ms after conversion\n", form.c_str(), t_before,
              t_after);
}

TEST(AttentionVit, BnFormConvertsAndComputesTheSame) {
  check_vit("bn");
}
TEST(AttentionVit, FoldedFormConvertsAndComputesTheSame) {
  check_vit("folded");
}

}  // namespace
}  // namespace qforge
