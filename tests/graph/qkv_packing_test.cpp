// PackParallelQKV: hand-written attention whose three Q/K/V projections of one tensor are split
// into heads by Reshape -> Transpose(0, 2, 1, 3) becomes one MHAInProjection in front of the
// SDPA, with unchanged outputs and exact op counts, for MatMul + Add (either order), Gemm
// (transB = 1) and bias-free projections; K transposed for Q·Kᵀ is handled; cross-attention and
// a K split into another layout are refused with the nodes named.
#include "graph/qkv_packing.h"

#include <gtest/gtest.h>

#include <random>

#include "graph/attention.h"
#include "graph/conversions.h"
#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "graph/plan.h"
#include "graph/transform.h"
#include "tests/support/derivation_checks.h"
#include "tests/support/graph_builders.h"
#include "tests/support/pass_tester.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Graph;
using graph::Shape;
using graph::Value;
using kernels::Tensor;
using testing::OpCounts;

std::vector<graph::Pattern> patterns() {
  return testing::conversion_and_attention_patterns();
}

graph::PlanReport convert(Graph& g) {
  return testing::convert_with_attention(g);
}

std::vector<std::string> refusals(const Graph& g) {
  const auto list = patterns();
  std::vector<std::string> out;
  for (const auto& e : graph::make_plan(g, list).entries) {
    if (e.match.pattern == "PackParallelQKV" && !e.apply) out.push_back(e.reason);
  }
  return out;
}

enum class Projection { kMatMulAdd, kBiasFirst, kGemm, kMatMul };
enum class KLayout { kPermute0231, kTransposeTwice };

struct Attention {
  Projection projection = Projection::kMatMulAdd;
  KLayout k_layout = KLayout::kPermute0231;
  bool cross = false;  // K and V project a second input
};

constexpr int64_t kN = 2, kS = 5, kH = 2, kD = 4, kE = kH * kD;

struct Builder {
  std::unique_ptr<Graph> g = std::make_unique<Graph>();
  std::mt19937 rng{13};

  Value* constant(const std::string& name, Shape shape) {
    Tensor t(DType::kFloat32, std::move(shape));
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    for (float& f : t.span<float>()) f = dist(rng);
    return g->add_constant(name, std::move(t));
  }
  Value* ints(const std::string& name, std::vector<int64_t> v) {
    return g->add_constant(name, Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v));
  }
  Value* node(const std::string& name, const std::string& op, std::vector<Value*> inputs,
              std::map<std::string, graph::AttributeValue, std::less<>> attrs = {}) {
    return g
        ->add_node({.name = name,
                    .op_type = op,
                    .inputs = std::move(inputs),
                    .output_names = {name + "_out"},
                    .attributes = std::move(attrs)})
        ->output(0);
  }
  Value* perm(const std::string& name, Value* x, std::vector<int64_t> p) {
    return node(name, "Transpose", {x}, {{"perm", std::move(p)}});
  }

  // x -> projection -> Reshape [N, S, H, D] -> Transpose(perm).
  Value* heads(const std::string& part, Value* x, Projection kind, std::vector<int64_t> p) {
    Value* y = nullptr;
    switch (kind) {
      case Projection::kMatMulAdd:
        y = node(part + "_add", "Add",
                 {node(part + "_mm", "MatMul", {x, constant(part + "_w", {kE, kE})}),
                  constant(part + "_b", {kE})});
        break;
      case Projection::kBiasFirst:
        y = node(part + "_add", "Add",
                 {constant(part + "_b", {kE}),
                  node(part + "_mm", "MatMul", {x, constant(part + "_w", {kE, kE})})});
        break;
      case Projection::kGemm:
        y = node(part + "_gemm", "Gemm",
                 {x, constant(part + "_w", {kE, kE}), constant(part + "_b", {kE})},
                 {{"transB", int64_t{1}}});
        break;
      case Projection::kMatMul:
        y = node(part + "_mm", "MatMul", {x, constant(part + "_w", {kE, kE})});
        break;
    }
    y = node(part + "_reshape", "Reshape", {y, ints(part + "_shape", {kN, kS, kH, kD})});
    return perm(part + "_transpose", y, std::move(p));
  }
};

// x [N, S, E] (flattened to [N·S, E] for Gemm) -> Q, K, V heads -> MatMul(Q, Kᵀ) -> Mul ->
// Softmax -> MatMul(·, V) -> Transpose(0, 2, 1, 3) -> Reshape [N, S, E] -> y.
std::unique_ptr<Graph> hand_written_attention(const Attention& o) {
  Builder b;
  Value* x = b.g->add_input("x", DType::kFloat32, Shape{kN, kS, kE});
  Value* kv = o.cross ? b.g->add_input("memory", DType::kFloat32, Shape{kN, kS, kE}) : x;
  if (o.projection == Projection::kGemm) {
    x = b.node("flatten", "Reshape", {x, b.ints("rows", {kN * kS, kE})});
    if (o.cross)
      kv = b.node("flatten_memory", "Reshape", {kv, b.ints("rows_memory", {kN * kS, kE})});
    else
      kv = x;
  }
  Value* q = b.heads("q", x, o.projection, {0, 2, 1, 3});
  Value* kt = o.k_layout == KLayout::kPermute0231
                  ? b.heads("k", kv, o.projection, {0, 2, 3, 1})
                  : b.perm("k_t", b.heads("k", kv, o.projection, {0, 2, 1, 3}), {0, 1, 3, 2});
  Value* v = b.heads("v", kv, o.projection, {0, 2, 1, 3});
  Value* scores =
      b.node("scale", "Mul",
             {b.node("qk", "MatMul", {q, kt}), b.g->add_constant("c", Tensor::scalar_f32(0.5f))});
  Value* ctx =
      b.node("av", "MatMul", {b.node("softmax", "Softmax", {scores}, {{"axis", int64_t{-1}}}), v});
  Value* merged = b.perm("merge", ctx, {0, 2, 1, 3});
  Value* y = b.node("unflatten", "Reshape", {merged, b.ints("out_shape", {kN, kS, kE})});
  b.g->opset = 17;
  b.g->mark_output(y);
  return std::move(b.g);
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

// The converted graph lowers to ONNX ops that compute the same, also after an ONNX round trip.
void expect_lowering_equivalent(const Graph& converted) {
  testing::expect_lowering_equivalent(converted, 2u, 9);  // MHAInProjection and SDPA
}

void expect_packed(const Attention& o, const OpCounts& after) {
  auto r = testing::run_pass_test(
      [&] { return hand_written_attention(o); },
      [](Graph& g) { EXPECT_EQ(convert(g).find("PackParallelQKV")->applied, 1u); });
  EXPECT_EQ(r.after, after);
  const graph::Node* ip = only(*r.transformed, "MHAInProjection");
  ASSERT_NE(ip, nullptr);
  EXPECT_EQ(ip->attr_int("num_heads"), kH);
  EXPECT_EQ(ip->attr_string("weight_layout"), "matmul");
  EXPECT_EQ(ip->input(1)->constant().shape(), (Shape{kE, 3 * kE}));
  if (o.projection == Projection::kMatMul) {
    EXPECT_EQ(ip->input(2), nullptr);
  } else {
    ASSERT_NE(ip->input(2), nullptr);
    EXPECT_EQ(ip->input(2)->constant().shape(), (Shape{3 * kE}));
  }
  const graph::Node* sdpa = only(*r.transformed, "SDPA");
  ASSERT_NE(sdpa, nullptr);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(sdpa->input(i), ip->output(i)) << i;
  EXPECT_EQ(ip->output(0)->name(), "q_transpose_out");
  EXPECT_EQ(ip->output(2)->name(), "v_transpose_out");
  expect_lowering_equivalent(*r.transformed);
  // The packed weight and bias are recorded as derived from the three projections' (a Gemm's
  // transposed), so that a training gradient can go back to them.
  auto before = hand_written_attention(o);
  EXPECT_EQ(testing::expect_derivations_reproduce(*before, *r.transformed),
            o.projection == Projection::kMatMul ? 1u : 2u);
  for (const graph::Derivation& d : r.transformed->derivations()) {
    if (d.derived == ip->input(1)->name()) {
      EXPECT_EQ(d.terms.size(), 3u);
    }
  }
}

TEST(PackQkvConversion, PacksMatMulAddProjections) {
  expect_packed({},
                OpCounts{{"MHAInProjection", 1}, {"SDPA", 1}, {"Transpose", 1}, {"Reshape", 1}});
}

TEST(PackQkvConversion, PacksBiasFirstAddsWithKTransposedTwice) {
  expect_packed({.projection = Projection::kBiasFirst, .k_layout = KLayout::kTransposeTwice},
                OpCounts{{"MHAInProjection", 1}, {"SDPA", 1}, {"Transpose", 1}, {"Reshape", 1}});
}

// The flatten Reshape stays (nothing else reads it now, but it is the packed input's source)
// and one Reshape back to [N, S, E] feeds the MHAInProjection.
TEST(PackQkvConversion, PacksGemmProjections) {
  expect_packed({.projection = Projection::kGemm},
                OpCounts{{"MHAInProjection", 1}, {"SDPA", 1}, {"Transpose", 1}, {"Reshape", 3}});
}

TEST(PackQkvConversion, PacksBiasFreeMatMuls) {
  expect_packed({.projection = Projection::kMatMul},
                OpCounts{{"MHAInProjection", 1}, {"SDPA", 1}, {"Transpose", 1}, {"Reshape", 1}});
}

TEST(PackQkvConversion, RefusesCrossAttentionNamingTheNodes) {
  auto r = testing::run_pass_test([] { return hand_written_attention({.cross = true}); },
                                  [](Graph& g) { convert(g); });
  EXPECT_EQ(r.after.count("MHAInProjection"), 0u);
  EXPECT_EQ(r.after.at("SDPA"), 1u);
  const auto reasons = refusals(*r.transformed);
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_EQ(reasons[0],
            "PackParallelQKV at node 'qk/SDPA' (SDPA): cross-attention (Q projection node 'q_mm' "
            "(MatMul) reads 'x', K projection node 'k_mm' (MatMul) reads 'memory', V projection "
            "node 'v_mm' (MatMul) reads 'memory') is not packed: the projections must read one "
            "tensor");
}

// An SDPA given K as [N, H, D, S] (S = D, so the shapes fit): the packed projection would give
// [N, H, S, D], so the match is refused with K's Transpose named.
TEST(PackQkvConversion, RefusesKInAnotherLayout) {
  auto make = [] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{kN, kD, kE});
    auto heads = [&](const std::string& part, std::vector<int64_t> p) {
      Value* y = b.node(part + "_add", "Add",
                        {b.node(part + "_mm", "MatMul", {x, b.constant(part + "_w", {kE, kE})}),
                         b.constant(part + "_b", {kE})});
      y = b.node(part + "_reshape", "Reshape", {y, b.ints(part + "_shape", {kN, kD, kH, kD})});
      return b.perm(part + "_transpose", y, std::move(p));
    };
    Value* q = heads("q", {0, 2, 1, 3});
    Value* k = heads("k", {0, 2, 3, 1});
    Value* v = heads("v", {0, 2, 1, 3});
    b.g->add_node({.name = "sdpa",
                   .op_type = "SDPA",
                   .inputs = {q, k, v},
                   .output_names = {"y"},
                   .attributes = {{"scale", 0.5f}, {"causal", int64_t{0}}},
                   .domain = "qforge"});
    b.g->opset = 17;
    b.g->mark_output(b.g->find_value("y"));
    return std::move(b.g);
  };
  auto r = testing::run_pass_test(make, [](Graph& g) { convert(g); });
  EXPECT_EQ(r.after, r.before);
  EXPECT_EQ(refusals(*r.transformed),
            std::vector<std::string>{
                "PackParallelQKV at node 'sdpa' (SDPA): K node 'k_transpose' (Transpose) has "
                "perm [0, 2, 3, 1], expected (0, 2, 1, 3): the packed projection gives K as "
                "[N, H, S, D]"});
}

}  // namespace
}  // namespace qforge
