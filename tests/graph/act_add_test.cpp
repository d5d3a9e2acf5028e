// ActAdd: an activation whose output only feeds an Add with a computed tensor of the same shape
// becomes one module (both addends quantized) with unchanged outputs and exact op counts; it
// lowers back to the activation's nodes and an Add (also through an ONNX round trip); earlier
// fusions keep the activations they claim; and the whole pipeline's ActAdd count per bundled
// model is pinned.
#include "graph/fusions_extra.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "graph/catalog.h"
#include "graph/fusions.h"
#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "graph/plan.h"
#include "graph/transform.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/graph_builders.h"
#include "tests/support/pass_tester.h"
#include "tests/support/test_support.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Shape;
using graph::Value;
using kernels::Tensor;
using testing::OpCounts;

graph::PlanReport fuse(graph::Graph& g) {
  const std::vector<graph::Pattern> patterns = graph::fusion_patterns();
  return graph::run_fusions(g, patterns);
}

std::vector<std::string> act_add_reasons(const graph::Graph& g) {
  const std::vector<graph::Pattern> patterns = graph::fusion_patterns();
  std::vector<std::string> out;
  for (const auto& e : graph::make_plan(g, patterns).entries) {
    if (e.match.pattern == "ActAdd" && !e.apply) out.push_back(e.reason);
  }
  return out;
}

struct Builder : testing::GraphBuilder {
  Builder() : GraphBuilder(11) {}

  Value* act(const std::string& kind, Value* x) {
    if (kind == "Gelu") {
      Value* d = node("Div", {x, scalar(std::sqrt(2.0f))});
      Value* a = node("Add", {node("Erf", {d}), scalar(1.0f)});
      return node("Mul", {node("Mul", {x, a}), scalar(0.5f)});
    }
    if (kind == "Silu") return node("Mul", {x, node("Sigmoid", {x})});
    if (kind == "Clip") return node("Clip", {x, scalar(-0.5f), scalar(0.5f)});
    if (kind == "LeakyRelu") return node("LeakyRelu", {x}, {.attributes = {{"alpha", 0.2f}}});
    if (kind == "Elu") return node("Elu", {x}, {.attributes = {{"alpha", 0.7f}}});
    if (kind == "HardSigmoid") {
      return node("HardSigmoid", {x}, {.attributes = {{"alpha", 0.25f}, {"beta", 0.4f}}});
    }
    return node(kind.c_str(), {x});
  }
  std::unique_ptr<graph::Graph> done(Value* y) {
    g->opset = 17;  // HardSwish in the exported lowering
    g->mark_output(y);
    return std::move(g);
  }
};

void expect_lowering_equivalent(const graph::Graph& fused, size_t modules) {
  testing::expect_lowering_equivalent(fused, modules, 5);
}

const graph::Node* find_op(const graph::Graph& g, const std::string& op) {
  for (const graph::Node* n : g.nodes()) {
    if (n->op_type() == op) return n;
  }
  return nullptr;
}

class ActAddFusion : public ::testing::TestWithParam<std::string> {};

// x, r [2, 3, 5, 7] -> Act(x) -> Add(·, r) -> y: the Act nodes and the Add become one ActAdd.
TEST_P(ActAddFusion, FusesEachActivation) {
  const std::string kind = GetParam();
  auto make = [&] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{2, 3, 5, 7});
    Value* r = b.g->add_input("r", DType::kFloat32, Shape{2, 3, 5, 7});
    return b.done(b.node("Add", {b.act(kind, x), r}));
  };
  auto result = testing::run_pass_test(
      make, [](graph::Graph& g) { EXPECT_EQ(fuse(g).find("ActAdd")->applied, 1u); });
  EXPECT_EQ(result.after, (OpCounts{{"ActAdd", 1}}));
  const graph::Node* m = find_op(*result.transformed, "ActAdd");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->attr_string("activation"), kind);
  EXPECT_EQ(m->domain(), "qforge");
  EXPECT_EQ(m->input(0)->name(), "x");
  EXPECT_EQ(m->input(1)->name(), "r");
  if (kind == "Clip") {
    EXPECT_EQ(m->attr_float("clip_min"), -0.5f);
    EXPECT_EQ(m->attr_float("clip_max"), 0.5f);
  }
  if (kind == "HardSigmoid") {
    EXPECT_EQ(m->attr_float("beta"), 0.4f);
  }
  expect_lowering_equivalent(*result.transformed, 1);
}

INSTANTIATE_TEST_SUITE_P(ActAdd, ActAddFusion,
                         ::testing::Values("Relu", "Clip", "LeakyRelu", "Elu", "Gelu", "Silu",
                                           "HardSwish", "HardSigmoid", "Sigmoid"));

// Add(r, Act(x)) with the activation second, and a block's own input as the other addend:
// x -> Relu -> Add(x) -> Gelu -> Add(r, ·) -> y.
TEST(ActAddFusionForms, EitherAddInputAndTheActivationsOwnInput) {
  auto make = [] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{2, 4, 3});
    Value* r = b.g->add_input("r", DType::kFloat32, Shape{2, 4, 3});
    Value* h = b.node("Add", {b.act("Relu", x), x});
    return b.done(b.node("Add", {r, b.act("Gelu", h)}));
  };
  auto result = testing::run_pass_test(make, [](graph::Graph& g) { fuse(g); });
  EXPECT_EQ(result.before, (OpCounts{{"Add", 3}, {"Div", 1}, {"Erf", 1}, {"Mul", 2}, {"Relu", 1}}));
  EXPECT_EQ(result.after, (OpCounts{{"ActAdd", 2}}));
  const auto& nodes = result.transformed->nodes();
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[0]->input(0)->name(), "x");
  EXPECT_EQ(nodes[0]->input(1)->name(), "x");
  EXPECT_EQ(nodes[1]->input(0), nodes[0]->output(0));
  EXPECT_EQ(nodes[1]->input(1)->name(), "r");
  expect_lowering_equivalent(*result.transformed, 2);
}

// Relu -> Add(constant bias) and Sigmoid -> Add(broadcast [4, 1]) stay, each refused with its
// reason; a Relu read by the Add and by a graph output is no match at all.
TEST(ActAddFusionForms, RefusesConstantBroadcastAndSharedOutputs) {
  auto make = [] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{2, 4, 3});
    Value* col = b.g->add_input("col", DType::kFloat32, Shape{4, 1});
    Value* biased = b.node("Add", {b.act("Relu", x), b.constant({3})});
    Value* broadcast = b.node("Add", {b.act("Sigmoid", biased), col});
    Value* shared = b.act("Relu", broadcast);
    b.g->mark_output(shared);
    return b.done(b.node("Add", {shared, x}));
  };
  auto result = testing::run_pass_test(make, [](graph::Graph& g) {
    EXPECT_EQ(act_add_reasons(g),
              (std::vector<std::string>{
                  "node 'Add3' (Add): expected a computed second addend, got the constant 'c2'",
                  "node 'Add7' (Add): expected addends of one shape, got [2, 4, 3] and [4, 1]"}));
    EXPECT_EQ(fuse(g).applied(), 0u);
  });
  EXPECT_EQ(result.after, result.before);
}

// Conv -> BN -> Relu -> Add(r): ConvBNAct, listed first, keeps the Relu; ActAdd is skipped.
TEST(ActAddFusionForms, EarlierFusionKeepsItsActivation) {
  auto make = [] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{1, 4, 5, 5});
    Value* r = b.g->add_input("r", DType::kFloat32, Shape{1, 4, 5, 5});
    Value* c = b.node("Conv", {x, b.constant({4, 4, 3, 3})},
                      {.attributes = {{"kernel_shape", std::vector<int64_t>{3, 3}},
                                      {"pads", std::vector<int64_t>{1, 1, 1, 1}}}});
    Value* n = b.node("BatchNormalization", {c, b.constant({4}, 0.5f, 1.5f), b.constant({4}),
                                             b.constant({4}), b.constant({4}, 0.5f, 1.5f)});
    return b.done(b.node("Add", {b.act("Relu", n), r}));
  };
  auto result = testing::run_pass_test(make, [](graph::Graph& g) {
    const auto report = fuse(g);
    EXPECT_EQ(report.find("ActAdd")->applied, 0u);
    EXPECT_EQ(report.find("ActAdd")->skipped, 1u);
  });
  EXPECT_EQ(result.after, (OpCounts{{"Add", 1}, {"ConvBNAct", 1}}));
  EXPECT_EQ(act_add_reasons(*make()),
            std::vector<std::string>{"node 'Relu9' claimed by ConvBNAct match #0"});
}

TEST(ActAddSchema, DeclaresBothAddendsQuantized) {
  const graph::OpSchema* s = graph::find_schema("ActAdd");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->kind, graph::SchemaKind::kModule);
  EXPECT_EQ(graph::quantized_inputs(*s), (std::vector<int>{0, 1}));
  EXPECT_EQ(graph::weight_input(*s), -1);
  EXPECT_NE(s->lower, nullptr);
  EXPECT_EQ(graph::all_fusion_patterns().back().name, "ActAdd");
}

// The full pipeline (conversions, then the fusion plan) on each bundled BN model: how many
// ActAdds it applies and skips. Every bundled residual Add follows a BN, a LayerScale Mul, a
// Linear or a projection, never an activation whose output is read once, so none gains one.
class ActAddBundledModel : public ::testing::TestWithParam<std::string> {};

TEST_P(ActAddBundledModel, FullPipelineCount) {
  auto model = graph::load_onnx(testing::data_path("models/" + GetParam() + "_bn.onnx"));
  const runtime::TransformResult r = runtime::transform_model(*model, nullptr, {.batch = 2});
  const graph::PatternCount* act_add = r.fusions.find("ActAdd");
  ASSERT_NE(act_add, nullptr);
  const graph::PatternCount* qkv = r.conversions.find("PackParallelQKV");
  ASSERT_NE(qkv, nullptr);
  std::printf("%s_bn: ActAdd applied %zu skipped %zu, PackParallelQKV applied %zu skipped %zu\n",
              GetParam().c_str(), act_add->applied, act_add->skipped, qkv->applied, qkv->skipped);
  EXPECT_EQ(act_add->applied, 0u) << r.fusions.to_text();
  EXPECT_EQ(runtime::count_modules(*r.graph).count("ActAdd"), 0u);
  EXPECT_EQ(act_add->skipped, 0u) << r.fusions.to_text();
  EXPECT_EQ(qkv->applied, 0u) << r.conversions.to_text();
  EXPECT_EQ(qkv->skipped, 0u) << r.conversions.to_text();
}

INSTANTIATE_TEST_SUITE_P(ActAdd, ActAddBundledModel,
                         ::testing::Values("resnet", "mobilenet_v3", "efficientnet", "convnext",
                                           "vit", "swin"),
                         [](const auto& p) { return p.param; });

}  // namespace
}  // namespace qforge
