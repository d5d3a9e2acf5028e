// Fusion patterns: each turns its chain into one module with unchanged outputs and exact op
// counts; modules lower back to standard ONNX ops (and survive an ONNX round trip); grouped
// convs TensorRT cannot run in INT8 are marked; every bundled model keeps its outputs and gets
// the module counts its architecture implies.
#include "graph/fusions.h"

#include <gtest/gtest.h>

#include <random>

#include "graph/catalog.h"
#include "graph/conversions.h"
#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "graph/plan.h"
#include "graph/transform.h"
#include "tests/support/bundled_models.h"
#include "tests/support/graph_builders.h"
#include "tests/support/pass_tester.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Shape;
using graph::Value;
using kernels::Tensor;
using testing::OpCounts;

using testing::modules_in;
using testing::random_tensor;

graph::PlanReport fuse(graph::Graph& g) {
  const std::vector<graph::Pattern> patterns = graph::fusion_patterns();
  return graph::run_fusions(g, patterns);
}

// Builds small graphs with seeded constants.
struct Builder : testing::GraphBuilder {
  Builder() : GraphBuilder(7) {}

  Value* conv(Value* x, int64_t in, int64_t out, int64_t k, int64_t group = 1, bool bias = true) {
    std::vector<Value*> inputs = {x, constant({out, in / group, k, k})};
    if (bias) inputs.push_back(constant({out}));
    return node("Conv", inputs,
                {.attributes = {{"kernel_shape", std::vector<int64_t>{k, k}},
                                {"pads", std::vector<int64_t>{k / 2, k / 2, k / 2, k / 2}},
                                {"group", group}}});
  }
  Value* bn(Value* x, int64_t c) {
    return node(
        "BatchNormalization",
        {x, constant({c}, 0.5f, 1.5f), constant({c}), constant({c}), constant({c}, 0.5f, 1.5f)},
        {.attributes = {{"epsilon", 1e-3f}}});
  }
  Value* act(const std::string& kind, Value* x) {
    if (kind == "Gelu") {
      Value* d = node("Div", {x, scalar(std::sqrt(2.0f))});
      Value* e = node("Erf", {d});
      Value* a = node("Add", {scalar(1.0f), e});
      Value* m = node("Mul", {x, a});
      return node("Mul", {m, scalar(0.5f)});
    }
    if (kind == "Silu") return node("Mul", {node("Sigmoid", {x}), x});
    if (kind == "Clip") return node("Clip", {x, scalar(0.0f), scalar(6.0f)});
    if (kind == "LeakyRelu") return node("LeakyRelu", {x}, {.attributes = {{"alpha", 0.1f}}});
    if (kind == "HardSigmoid") {
      return node("HardSigmoid", {x}, {.attributes = {{"alpha", 0.25f}, {"beta", 0.4f}}});
    }
    return node(kind.c_str(), {x});
  }
  std::unique_ptr<graph::Graph> done(Value* y) {
    g->opset = 17;  // LayerNormalization, HardSwish in the exported lowering
    g->mark_output(y);
    return std::move(g);
  }
};

void expect_lowering_equivalent(const graph::Graph& fused, size_t expected_modules) {
  testing::expect_lowering_equivalent(fused, expected_modules, 3);
}

const graph::Node* only_module(const graph::Graph& g, const std::string& op) {
  const graph::Node* found = nullptr;
  for (const graph::Node* n : g.nodes()) {
    if (n->op_type() == op) found = n;
  }
  return found;
}

class FusionConvBNAct : public ::testing::TestWithParam<std::string> {};

// x [2, 3, 7, 5] -> Conv 3×3 -> BN -> Act -> y.
TEST_P(FusionConvBNAct, FusesEachActivation) {
  const std::string kind = GetParam();
  auto make = [&] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{2, 3, 7, 5});
    return b.done(b.act(kind, b.bn(b.conv(x, 3, 6, 3), 6)));
  };
  auto r = testing::run_pass_test(
      make, [](graph::Graph& g) { EXPECT_EQ(fuse(g).find("ConvBNAct")->applied, 1u); });
  EXPECT_EQ(r.after, (OpCounts{{"ConvBNAct", 1}}));
  const graph::Node* m = only_module(*r.transformed, "ConvBNAct");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->attr_string("activation"), kind);
  EXPECT_EQ(m->domain(), "qforge");
  EXPECT_EQ(m->name(), "Conv2/ConvBNAct");
  EXPECT_EQ(m->num_inputs(), 7u);
  EXPECT_EQ(m->attr_float("epsilon"), 1e-3f);
  expect_lowering_equivalent(*r.transformed, 1);
}

INSTANTIATE_TEST_SUITE_P(Fusion, FusionConvBNAct,
                         ::testing::Values("Relu", "Clip", "LeakyRelu", "Elu", "Gelu", "Silu",
                                           "HardSwish", "HardSigmoid", "Sigmoid"));

// x -> Conv(no bias) -> BN -> y, and a BN in training mode that stays.
TEST(FusionConvBN, FusesInferenceBatchNorm) {
  auto make = [] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{2, 4, 6, 6});
    return b.done(b.bn(b.conv(x, 4, 8, 1, 1, false), 8));
  };
  auto r = testing::run_pass_test(make, [](graph::Graph& g) { fuse(g); });
  EXPECT_EQ(r.before, (OpCounts{{"BatchNormalization", 1}, {"Conv", 1}}));
  EXPECT_EQ(r.after, (OpCounts{{"ConvBN", 1}}));
  const graph::Node* m = only_module(*r.transformed, "ConvBN");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->input(2), nullptr);  // the conv had no bias
  expect_lowering_equivalent(*r.transformed, 1);
}

// Two residual blocks: the BN output is the Add's first input in one, its second in the other.
TEST(FusionConvBNAddAct, ResidualOnEitherAddInput) {
  auto make = [] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{2, 8, 5, 5});
    Value* y1 = b.act("Relu", b.node("Add", {b.bn(b.conv(x, 8, 8, 3), 8), x}));
    Value* y2 = b.act("Silu", b.node("Add", {y1, b.bn(b.conv(y1, 8, 8, 3), 8)}));
    return b.done(y2);
  };
  auto r = testing::run_pass_test(
      make, [](graph::Graph& g) { EXPECT_EQ(fuse(g).find("ConvBNAddAct")->applied, 2u); });
  EXPECT_EQ(r.after, (OpCounts{{"ConvBNAddAct", 2}}));
  const auto& nodes = r.transformed->nodes();
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[0]->input(1)->name(), "x");
  EXPECT_EQ(nodes[1]->input(1), nodes[0]->output(0));
  expect_lowering_equivalent(*r.transformed, 2);
}

// x (graph input) -> Conv 7×7/2 -> BN -> Relu -> MaxPool 3×3/2 -> Conv -> BN -> Relu -> y.
TEST(FusionStemConvBNActMaxPool, FusesTheStemOnly) {
  auto make = [] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{2, 3, 17, 15});
    Value* c = b.node("Conv", {x, b.constant({8, 3, 7, 7})},
                      {.attributes = {{"kernel_shape", std::vector<int64_t>{7, 7}},
                                      {"strides", std::vector<int64_t>{2, 2}},
                                      {"pads", std::vector<int64_t>{3, 3, 3, 3}}}});
    Value* p = b.node("MaxPool", {b.act("Relu", b.bn(c, 8))},
                      {.attributes = {{"kernel_shape", std::vector<int64_t>{3, 3}},
                                      {"strides", std::vector<int64_t>{2, 2}},
                                      {"pads", std::vector<int64_t>{1, 1, 1, 1}}}});
    return b.done(b.act("Relu", b.bn(b.conv(p, 8, 8, 3), 8)));
  };
  auto r = testing::run_pass_test(make, [](graph::Graph& g) { fuse(g); });
  EXPECT_EQ(r.after, (OpCounts{{"ConvBNAct", 1}, {"StemConvBNActMaxPool", 1}}));
  const graph::Node* m = only_module(*r.transformed, "StemConvBNActMaxPool");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->attr_ints("pool_kernel_shape"), (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(m->attr_ints("strides"), (std::vector<int64_t>{2, 2}));
  expect_lowering_equivalent(*r.transformed, 2);
}

// Gemm(transB=1, bias) -> Relu; MatMul [in, out] + Add(bias) on a 3-D input -> GELU; MatMul
// without bias; Gemm(transB=0) alone.
TEST(FusionLinear, GemmAndMatMulWithAndWithoutActivation) {
  auto make = [] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{3, 5, 6});
    Value* h = b.node("Add", {b.node("MatMul", {x, b.constant({6, 7})}), b.constant({7})});
    Value* g = b.act("Gelu", h);
    Value* m = b.node("MatMul", {g, b.constant({7, 4})});
    Value* flat = b.node(
        "Reshape", {m, b.g->add_constant("shape", Tensor::from_vector<int64_t>({2}, {15, 4}))});
    Value* fc = b.node("Gemm", {flat, b.constant({9, 4}), b.constant({9})},
                       {.attributes = {{"transB", int64_t{1}}, {"alpha", 0.5f}}});
    Value* r = b.act("Relu", fc);
    return b.done(b.node("Gemm", {r, b.constant({9, 3})}));
  };
  auto r = testing::run_pass_test(make, [](graph::Graph& g) {
    auto report = fuse(g);
    EXPECT_EQ(report.find("LinearAct")->applied, 2u);
    EXPECT_EQ(report.find("Linear")->applied, 2u);
  });
  EXPECT_EQ(r.after, (OpCounts{{"Linear", 2}, {"LinearAct", 2}, {"Reshape", 1}}));
  for (const graph::Node* n : r.transformed->nodes()) {
    if (n->op_type() == "Reshape") continue;
    const bool transposed = n->attr_string("source") == "Gemm" && n->input(1)->shape()->at(1) == 4;
    EXPECT_EQ(n->attr_string("weight_layout"), transposed ? "gemm" : "matmul") << n->name();
  }
  expect_lowering_equivalent(*r.transformed, 4);
}

// LayerNormalization -> LayerNorm; GlobalAveragePool -> AdaptiveAvgPool.
TEST(FusionLayerNormAdaptiveAvgPool, SingleOpModules) {
  auto make = [] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{2, 6, 3, 5});
    Value* p = b.node("GlobalAveragePool", {x});
    Value* n = b.node("LayerNormalization", {x, b.constant({5}), b.constant({5})},
                      {.attributes = {{"axis", int64_t{-1}}, {"epsilon", 1e-6f}}});
    b.g->mark_output(p);
    return b.done(n);
  };
  auto r = testing::run_pass_test(make, [](graph::Graph& g) { fuse(g); });
  EXPECT_EQ(r.after, (OpCounts{{"AdaptiveAvgPool", 1}, {"LayerNorm", 1}}));
  expect_lowering_equivalent(*r.transformed, 2);
}

// Grouped convs: 3 channels per group (marked), 4 per group (not), depthwise (not).
TEST(FusionInt8Compatibility, MarksGroupedConvsWithoutMultiplesOfFour) {
  auto make = [] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{1, 12, 5, 5});
    Value* a = b.act("Relu", b.bn(b.conv(x, 12, 12, 3, 4), 12));
    Value* c = b.act("Relu", b.bn(b.conv(a, 12, 12, 3, 3), 12));
    return b.done(b.act("Relu", b.bn(b.conv(c, 12, 12, 3, 12), 12)));
  };
  auto r = testing::run_pass_test(make, [](graph::Graph& g) { fuse(g); });
  ASSERT_EQ(r.after, (OpCounts{{"ConvBNAct", 3}}));
  const auto& nodes = r.transformed->nodes();
  EXPECT_EQ(nodes[0]->attr_int("int8_unsupported", 0), 1);  // 3 channels per group
  EXPECT_EQ(nodes[1]->attr_int("int8_unsupported", 0), 0);  // 4 per group
  EXPECT_EQ(nodes[2]->attr_int("int8_unsupported", 0), 0);  // depthwise
}

// Folded exports: Conv -> Relu without BN is a ConvBNAct with no BN parameters (the module
// guide's Conv -> [BN] -> Act), and a lone Conv a ConvBN; outputs stay equal.
TEST(FusionConvBNAct, FusesConvActWithoutBatchNorm) {
  auto make = [] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{1, 4, 5, 5});
    return b.done(b.conv(b.act("Relu", b.conv(x, 4, 4, 3)), 4, 4, 1));
  };
  auto r = testing::run_pass_test(make, [](graph::Graph& g) { EXPECT_EQ(fuse(g).applied(), 2u); });
  ASSERT_EQ(r.after, (OpCounts{{"ConvBNAct", 1}, {"ConvBN", 1}}));
  for (const graph::Node* n : r.transformed->nodes()) {
    EXPECT_EQ(n->num_inputs(), 3u) << n->label();  // X, W, B: no BN parameters
    EXPECT_FALSE(n->has_attr("epsilon")) << n->label();
  }
}

TEST(FusionModuleSchemas, DeclareTheQuantizationContract) {
  auto schema = [](const char* op) {
    const graph::OpSchema* s = graph::find_schema(op);
    EXPECT_NE(s, nullptr) << op;
    EXPECT_EQ(s->kind, graph::SchemaKind::kModule) << op;
    EXPECT_NE(s->lower, nullptr) << op;
    return s;
  };
  using V = std::vector<int>;
  for (const char* op : {"ConvBN", "ConvBNAct", "StemConvBNActMaxPool"}) {
    EXPECT_EQ(graph::quantized_inputs(*schema(op)), V{0}) << op;
    EXPECT_EQ(graph::weight_input(*schema(op)), 1);
    EXPECT_EQ(schema(op)->weight_axis, 0);
    EXPECT_TRUE(schema(op)->folds_batch_norm) << op;
    EXPECT_EQ(graph::input_index(*schema(op), graph::Role::kBnGamma), 3) << op;
    EXPECT_EQ(graph::input_index(*schema(op), graph::Role::kBnVar), 6) << op;
  }
  EXPECT_EQ(graph::quantized_inputs(*schema("ConvBNAddAct")), (V{0, 1}));
  EXPECT_EQ(graph::weight_input(*schema("ConvBNAddAct")), 2);
  EXPECT_EQ(graph::input_index(*schema("ConvBNAddAct"), graph::Role::kResidual), 1);
  EXPECT_EQ(graph::input_index(*schema("ConvBNAddAct"), graph::Role::kBnGamma), 4);
  for (const char* op : {"Linear", "LinearAct"}) {
    EXPECT_EQ(graph::quantized_inputs(*schema(op)), V{0}) << op;
    EXPECT_EQ(graph::weight_input(*schema(op)), 1);
    EXPECT_TRUE(schema(op)->weight_layout_per_node) << op;
    EXPECT_FALSE(schema(op)->folds_batch_norm) << op;
  }
  for (const char* op : {"LayerNorm", "AdaptiveAvgPool"}) {
    EXPECT_TRUE(graph::quantized_inputs(*schema(op)).empty()) << op;
    EXPECT_EQ(graph::weight_input(*schema(op)), -1);
  }
}

// Module counts per bundled model (data/generate/models.py; op histograms from
// `qforge inspect data/models/<model>.onnx`), after the conversions turned every
// Flatten -> Linear head into a 1×1 Conv and removed GlobalAveragePools over 1×1 maps. BN is
// optional in every conv module, so both forms of a family fuse into the same modules.
const std::map<std::string, std::map<std::string, size_t>>& expected_counts() {
  static const std::map<std::string, std::map<std::string, size_t>> counts = {
      // ResNet, BasicBlock [2, 1, 1, 1]: stem conv-bn-relu-maxpool; 5 blocks each
      // conv-bn-relu (ConvBNAct) and conv-bn-add-relu (ConvBNAddAct); layer2..4 downsample
      // conv-bn + the fc as a 1×1 Conv => 4 ConvBN. The GAP runs on 1×1 and goes.
      {"resnet",
       {{"StemConvBNActMaxPool", 1}, {"ConvBNAct", 5}, {"ConvBNAddAct", 5}, {"ConvBN", 4}}},
      // MobileNetV3-small, 6 blocks: stem conv-bn-hardswish 1; expand+depthwise conv-bn-act
      // 1 (block 1 has no expand) + 2×5; last conv 1; 4 SE × (fc1-ReLU, fc2-Hardsigmoid) 8; the
      // first head Linear-Hardswish as a Conv 1 => 22 ConvBNAct; 6 projections conv-bn (the
      // residual Adds have no activation) + the classifier Conv => 7 ConvBN; 4 SE + final pool
      // over 8×8/2×2 maps => 5 AdaptiveAvgPool.
      {"mobilenet_v3", {{"ConvBNAct", 22}, {"ConvBN", 7}, {"AdaptiveAvgPool", 5}}},
      // EfficientNet, 6 MBConv blocks: stem 1 + depthwise 6 + expand 5 + last 1 + 6 SE ×
      // (fc1-SiLU, fc2-Sigmoid) 12 = 25 ConvBNAct; 6 projections conv-bn + the classifier Conv
      // = 7 ConvBN; 6 SE pools + final pool over 2×2 = 7.
      {"efficientnet", {{"ConvBNAct", 25}, {"ConvBN", 7}, {"AdaptiveAvgPool", 7}}},
      // ConvNeXt, 4 CNBlocks: fc1 -> GELU (LinearAct) and fc2 (Linear) each; convs without BN:
      // stem patchify 1 + depthwise 7×7 4 + downsampling 2 + classifier 1 = 8 ConvBN;
      // LayerNorms: stem 1 + blocks 4 + downsampling 2 + head 1 = 8; final pool over 2×2.
      {"convnext",
       {{"ConvBN", 8}, {"LinearAct", 4}, {"Linear", 4}, {"LayerNorm", 8}, {"AdaptiveAvgPool", 1}}},
      // ViT, 4 layers: in-projection, out-projection and fc2 Linear each (12) + the head = 13;
      // fc1 -> GELU 4; LayerNorms 2 per layer + final = 9; the patch embedding conv 1 ConvBN.
      {"vit", {{"ConvBN", 1}, {"LinearAct", 4}, {"Linear", 13}, {"LayerNorm", 9}}},
      // Swin, 6 blocks: qkv, proj, fc2 Linear each (18) + 2 patch-merging reductions = 20;
      // fc1 -> GELU 6; LayerNorms: patch embedding 1 + 2 per block + 2 merging + final = 16;
      // final pool over 2×2; patch embedding conv + the head as a Conv = 2 ConvBN.
      {"swin",
       {{"ConvBN", 2},
        {"LinearAct", 6},
        {"Linear", 20},
        {"LayerNorm", 16},
        {"AdaptiveAvgPool", 1}}},
  };
  return counts;
}

class FusionBundledModel : public ::testing::TestWithParam<std::string> {};

TEST_P(FusionBundledModel, OutputsUnchangedAndModulesCounted) {
  const std::string name = GetParam();
  testing::BundledModel model;
  ASSERT_NO_FATAL_FAILURE(testing::load_bundled_model(name, 4, model));
  const std::string& family = model.family;
  auto& plain = model.plain;
  auto fused = plain->clone();
  const std::vector<graph::Pattern> conversions = graph::conversion_patterns();
  graph::run_conversions(*fused, conversions);
  auto report = fuse(*fused);

  std::map<std::string, size_t> modules;
  for (const graph::Node* n : fused->nodes()) {
    const graph::OpSchema* s = graph::find_schema(n->op_type());
    if (s && s->kind == graph::SchemaKind::kModule) ++modules[n->op_type()];
  }
  EXPECT_EQ(modules, expected_counts().at(family)) << report.to_text();

  testing::expect_same_outputs(*plain, *fused, model.input, report.to_text());
}

INSTANTIATE_TEST_SUITE_P(Fusion, FusionBundledModel,
                         ::testing::ValuesIn(testing::kBundledModelNames),
                         [](const auto& p) { return p.param; });

}  // namespace
}  // namespace qforge
