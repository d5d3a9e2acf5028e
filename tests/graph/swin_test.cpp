// Swin conversions: torchvision's window attention (shifted and unshifted) rebuilt as
// MHAInProjection → SwinAttention → the out-projection MatMul, Swin V2's logit scale refused with
// its reason, lowering round trips through ONNX, and the bundled Swin computing the same.
#include "graph/swin.h"

#include <gtest/gtest.h>

#include <random>

#include "graph/attention.h"
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

using testing::random_tensor;

using testing::add;
using testing::int_const;

struct BlockOptions {
  bool shifted = false;
  bool v2_logit_scale = false;  // Swin V2: scores · per-head logit scale [H, 1, 1]
};

// One window-attention core as torchvision writes it, on windows already partitioned:
// x [B·nW, S, E] with B = 2 images, nW = 4 windows of S = 4 tokens, E = 8, H = 2 heads.
std::unique_ptr<Graph> swin_block(BlockOptions o) {
  constexpr int64_t kB = 2, kW = 4, kS = 4, kE = 8, kH = 2, kD = kE / kH, kN = kB * kW;
  std::mt19937 rng(11);
  auto g = std::make_unique<Graph>();
  graph::Value* x = g->add_input("x", DType::kFloat32, Shape{kN, kS, kE});
  graph::Value* w = g->add_constant("qkv_w", random_tensor({kE, 3 * kE}, rng));
  graph::Value* b = g->add_constant("qkv_b", random_tensor({3 * kE}, rng));
  graph::Value* cur = add(*g, "qkv", "MatMul", {x, w});
  cur = add(*g, "qkv_add", "Add", {b, cur});
  cur = add(*g, "qkv_reshape", "Reshape", {cur, int_const(*g, "s5", {kN, kS, 3, kH, kD})});
  graph::Value* split =
      add(*g, "qkv_split", "Transpose", {cur}, {{"perm", std::vector<int64_t>{2, 0, 3, 1, 4}}});
  graph::Value* parts[3];
  for (int64_t i = 0; i < 3; ++i) {
    graph::Value* index = g->add_constant("i" + std::to_string(i), Tensor::scalar_i64(i));
    parts[i] =
        add(*g, "gather" + std::to_string(i), "Gather", {split, index}, {{"axis", int64_t{0}}});
  }
  graph::Value* q =
      add(*g, "q_scale", "Mul", {parts[0], g->add_constant("scale", Tensor::scalar_f32(0.5f))});
  graph::Value* kt =
      add(*g, "k_t", "Transpose", {parts[1]}, {{"perm", std::vector<int64_t>{0, 1, 3, 2}}});
  cur = add(*g, "qk", "MatMul", {q, kt});
  if (o.v2_logit_scale) {
    cur = add(*g, "logit_scale", "Mul",
              {cur, g->add_constant("logit", random_tensor({kH, 1, 1}, rng, 1.f, 3.f))});
  }
  cur = add(*g, "bias_add", "Add",
            {cur, g->add_constant("bias", random_tensor({1, kH, kS, kS}, rng))});
  if (o.shifted) {
    // Region ids differ inside some windows: -100 where they differ, as torchvision builds it.
    Tensor mask(DType::kFloat32, {1, kW, 1, kS, kS});
    float* m = mask.data<float>();
    for (int64_t wi = 0; wi < kW; ++wi) {
      for (int64_t i = 0; i < kS; ++i) {
        for (int64_t j = 0; j < kS; ++j) {
          m[(wi * kS + i) * kS + j] = (wi > 0 && (i % 2) != (j % 2)) ? -100.f : 0.f;
        }
      }
    }
    cur = add(*g, "to_windows", "Reshape", {cur, int_const(*g, "s6", {kB, kW, kH, kS, kS})});
    cur = add(*g, "mask_add", "Add", {cur, g->add_constant("mask", mask)});
    cur = add(*g, "from_windows", "Reshape", {cur, int_const(*g, "s7", {-1, kH, kS, kS})});
  }
  cur = add(*g, "softmax", "Softmax", {cur}, {{"axis", int64_t{-1}}});
  cur = add(*g, "av", "MatMul", {cur, parts[2]});
  cur = add(*g, "merge", "Transpose", {cur}, {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
  cur = add(*g, "merge_reshape", "Reshape", {cur, int_const(*g, "s8", {kN, kS, kE})});
  cur = add(*g, "proj", "MatMul", {cur, g->add_constant("proj_w", random_tensor({kE, kE}, rng))});
  cur = add(*g, "proj_add", "Add", {g->add_constant("proj_b", random_tensor({kE}, rng)), cur});
  g->mark_output(cur);
  return g;
}

size_t count(const testing::OpCounts& c, const std::string& op) {
  const auto it = c.find(op);
  return it == c.end() ? 0 : it->second;
}

void expect_rebuilt(bool shifted) {
  const auto r = testing::run_pass_test([&] { return swin_block({.shifted = shifted}); },
                                        [](Graph& g) { convert(g); });
  EXPECT_EQ(count(r.after, "MHAInProjection"), 1u);
  EXPECT_EQ(count(r.after, "SwinAttention"), 1u);
  EXPECT_EQ(count(r.after, "SDPA"), 0u);
  EXPECT_EQ(count(r.after, "Softmax"), 0u);
  EXPECT_EQ(count(r.after, "Gather"), 0u);
  EXPECT_EQ(count(r.after, "Reshape"), 1u);  // the head merge stays, feeding the out projection
  EXPECT_EQ(count(r.after, "MatMul"), 1u);   // the out projection
  const graph::Node* attn = nullptr;
  for (const auto* n : r.transformed->nodes()) {
    if (n->op_type() == "SwinAttention") attn = n;
  }
  ASSERT_NE(attn, nullptr);
  EXPECT_FLOAT_EQ(attn->attr_float("scale"), 0.5f);
  EXPECT_EQ(attn->attr_int("num_windows"), shifted ? 4 : 1);
  EXPECT_EQ(attn->num_inputs(), shifted ? 5u : 4u);
}

TEST(SwinAttention, RebuildsUnshiftedWindows) {
  expect_rebuilt(false);
}

TEST(SwinAttention, RebuildsShiftedWindowsWithTheirMask) {
  expect_rebuilt(true);
}

void expect_lowering_round_trip(std::unique_ptr<Graph> g) {
  runtime::resolve(*g, {});
  convert(*g);
  std::mt19937 rng(3);
  std::vector<Tensor> inputs;
  for (const auto* in : g->inputs()) {
    inputs.push_back(testing::random_input(in->dtype(), in->known_shape(), rng));
  }
  runtime::Executor before(*g);
  std::vector<Tensor> ref;
  for (const auto& t : before.run(inputs)) ref.push_back(t.clone());

  auto lowered = g->clone();
  EXPECT_EQ(graph::lower_modules(*lowered), 2u);  // MHAInProjection, SwinAttention
  for (const auto* n : lowered->nodes()) EXPECT_NE(n->domain(), "qforge") << n->name();
  auto reloaded = graph::parse_onnx(graph::serialize_onnx(*lowered), "lowered");
  runtime::resolve(*reloaded, {});
  runtime::Executor after(*reloaded);
  auto got = after.run(inputs);
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_LE(testing::relative_max_diff(got[i], ref[i]), 1e-5) << "output " << i;
  }
}

TEST(SwinAttention, LowersToOnnxAndBack) {
  expect_lowering_round_trip(swin_block({.shifted = false}));
  expect_lowering_round_trip(swin_block({.shifted = true}));
}

TEST(SwinAttention, RefusesSwinV2LogitScaleNamingTheNode) {
  auto g = swin_block({.shifted = true, .v2_logit_scale = true});
  runtime::resolve(*g, {});
  const auto list = patterns();
  std::vector<std::string> reasons;
  for (const auto& e : graph::make_plan(*g, list).entries) {
    if (e.match.pattern == "ComposeSwinAttention" && !e.apply) reasons.push_back(e.reason);
  }
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_NE(reasons[0].find("Swin V2"), std::string::npos) << reasons[0];
  EXPECT_NE(reasons[0].find("logit_scale"), std::string::npos) << reasons[0];
  convert(*g);
  const auto counts = testing::count_ops(*g);
  EXPECT_EQ(count(counts, "SwinAttention"), 0u);
  EXPECT_EQ(count(counts, "Softmax"), 1u);
}

// The bundled Swin (data/generate/models.py: depths [2, 2, 2]) has one window attention per
// block, shifted or not, so SwinAttention modules = 2 + 2 + 2 = 6; each has its own QKV
// projection, so MHAInProjection = 6 too. Shifted blocks are the odd ones of stages 1 and 2
// (stage 3's shift is zeroed: its 2×2 map fits one window), so 2 carry a window mask.
constexpr size_t kSwinBlocks = 2 + 2 + 2;
constexpr size_t kMaskedBlocks = 2;

void check_swin(const std::string& form) {
  auto g = graph::load_onnx(testing::data_path("models/swin_" + form + ".onnx"));
  runtime::resolve(*g, {.input_shapes = runtime::input_shapes_for_batch(*g, 4)});
  auto converted = g->clone();
  const auto list = graph::all_conversion_patterns();
  const auto report = graph::run_conversions(*converted, list);
  const auto counts = testing::count_ops(*converted);
  EXPECT_EQ(count(counts, "SwinAttention"), kSwinBlocks) << report.to_text();
  EXPECT_EQ(count(counts, "MHAInProjection"), kSwinBlocks) << report.to_text();
  EXPECT_EQ(count(counts, "SDPA"), 0u) << report.to_text();
  EXPECT_EQ(count(counts, "Softmax"), 0u) << report.to_text();
  size_t masked = 0;
  for (const auto* n : converted->nodes()) {
    if (n->op_type() == "SwinAttention" && n->num_inputs() == 5 && n->input(4)) ++masked;
  }
  EXPECT_EQ(masked, kMaskedBlocks);

  Tensor input = io::read_npy(testing::data_path("golden/swin_input.npy"));
  ASSERT_GE(input.dim(0), 4);
  input = input.slice_rows(0, 4).clone();
  runtime::Executor before(*g), after(*converted);
  const std::vector<Tensor> inputs = {input};
  std::vector<Tensor> ref;
  for (const auto& t : before.run(inputs)) ref.push_back(t.clone());
  auto got = after.run(inputs);
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_LE(testing::relative_max_diff(got[i], ref[i]), 1e-5) << "output " << i;
  }
}

TEST(SwinModel, BnFormConvertsAndComputesTheSame) {
  check_swin("bn");
}
TEST(SwinModel, FoldedFormConvertsAndComputesTheSame) {
  check_swin("folded");
}

}  // namespace
}  // namespace qforge
