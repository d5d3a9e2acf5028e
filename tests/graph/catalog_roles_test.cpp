// Input roles in the catalog: every module names each of its inputs with a role, a module with a
// weight quantizer has the weight role, a module that folds a batch norm has all four BN roles
// after its weight, and the accessors quant/ and runtime/ use read them.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "graph/catalog.h"
#include "graph/ir.h"

namespace qforge {
namespace {

using graph::OpSchema;
using graph::Role;

constexpr Role kBatchNormRoles[] = {Role::kBnGamma, Role::kBnBeta, Role::kBnMean, Role::kBnVar};

size_t listed_inputs(const OpSchema& s) {
  size_t n = 0;
  while (n < s.inputs.size() && s.inputs[n].role != Role::kNone) ++n;
  return n;
}

TEST(CatalogRoles, EveryModuleNamesEachInputWithARole) {
  for (const OpSchema* s : graph::all_schemas()) {
    if (s->kind != graph::SchemaKind::kModule) continue;
    SCOPED_TRACE(std::string(s->op_type));
    const size_t n = listed_inputs(*s);
    EXPECT_EQ(n, static_cast<size_t>(s->max_inputs));
    std::set<std::string_view> names;
    for (size_t i = 0; i < s->inputs.size(); ++i) {
      const graph::InputRole& r = s->inputs[i];
      if (i >= n) {
        EXPECT_EQ(r.role, Role::kNone) << "input " << i << " after the end of the list";
        continue;
      }
      EXPECT_FALSE(r.name.empty()) << "input " << i;
      EXPECT_TRUE(names.insert(r.name).second) << "input name '" << r.name << "' twice";
      // Inputs past min_inputs may be left out; those before it are optional only when the
      // module takes an empty name there (a conv's bias).
      if (i >= static_cast<size_t>(s->min_inputs)) {
        EXPECT_TRUE(r.optional) << r.name;
      }
    }
    EXPECT_EQ(s->inputs[0].role, Role::kData) << "the first input is the data";
    for (int q : graph::quantized_inputs(*s)) {
      ASSERT_LT(static_cast<size_t>(q), n);
      const Role r = s->inputs[static_cast<size_t>(q)].role;
      EXPECT_TRUE(r == Role::kData || r == Role::kResidual)
          << "quantized input " << q << " is an activation, not '" << s->inputs[q].name << "'";
    }
  }
}

TEST(CatalogRoles, WeightQuantizersHaveTheWeightRole) {
  size_t weighted = 0;
  for (const OpSchema* s : graph::all_schemas()) {
    if (s->kind != graph::SchemaKind::kModule) continue;
    SCOPED_TRACE(std::string(s->op_type));
    const bool quantizes_weight = s->weight_axis != 0 || s->transposed_weight ||
                                  s->weight_layout_per_node || s->folds_batch_norm;
    const int w = graph::weight_input(*s);
    if (quantizes_weight) {
      EXPECT_GE(w, 0) << "a weight quantizer without the weight role";
    }
    if (w < 0) continue;
    ++weighted;
    EXPECT_FALSE(s->inputs[static_cast<size_t>(w)].optional);
    for (int q : graph::quantized_inputs(*s)) EXPECT_NE(q, w) << "the weight has its own quantizer";
    EXPECT_EQ(s->weight_axis, s->transposed_weight ? 1 : 0);
  }
  // The conv family (6), Linear, LinearAct, MHAInProjection.
  EXPECT_EQ(weighted, 9u);
}

TEST(CatalogRoles, BatchNormModulesHaveAllFourRolesAfterTheWeight) {
  size_t folding = 0;
  for (const OpSchema* s : graph::all_schemas()) {
    if (s->kind != graph::SchemaKind::kModule) continue;
    SCOPED_TRACE(std::string(s->op_type));
    bool any = false;
    for (Role r : kBatchNormRoles) any = any || graph::has_role(*s, r);
    EXPECT_EQ(any, s->folds_batch_norm) << "BN roles and BN folding go together";
    if (!any) continue;
    ++folding;
    const int w = graph::weight_input(*s);
    ASSERT_GE(w, 0) << "a BN module without the weight role";
    ASSERT_TRUE(graph::has_role(*s, Role::kBias));
    int expected = graph::input_index(*s, Role::kBias) + 1;
    for (Role r : kBatchNormRoles) {
      ASSERT_TRUE(graph::has_role(*s, r)) << "a BN module lacks a BN role";
      EXPECT_EQ(graph::input_index(*s, r), expected++);
      EXPECT_TRUE(s->inputs[static_cast<size_t>(graph::input_index(*s, r))].optional);
    }
  }
  EXPECT_EQ(folding, 6u);
  // The ONNX op's inputs, as the epilogue fusion and the conv fusions read them.
  const OpSchema& bn = *graph::find_schema("BatchNormalization");
  EXPECT_EQ(graph::input_index(bn, Role::kData), 0);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(graph::input_index(bn, kBatchNormRoles[i]), i + 1);
}

TEST(CatalogRoles, OnlyTheAttentionModulesHaveTheSoftmaxQuantizer) {
  std::set<std::string_view> with;
  for (const OpSchema* s : graph::all_schemas()) {
    if (s->internal_quantizer.scale == 0) continue;
    with.insert(s->op_type);
    EXPECT_EQ(s->internal_quantizer.name, "softmax");
    EXPECT_EQ(s->internal_quantizer.scale, 1.0f / 127.0f);
    EXPECT_TRUE(graph::has_role(*s, Role::kMask)) << s->op_type;
  }
  EXPECT_EQ(with, (std::set<std::string_view>{"SDPA", "SwinAttention"}));
}

TEST(CatalogRoles, AccessorsReadTheNode) {
  graph::Graph g;
  auto* x = g.add_input("x", kernels::DType::kFloat32, graph::Shape{1, 2, 3, 3});
  auto* w = g.add_constant("w", kernels::Tensor(kernels::DType::kFloat32, {2, 2, 1, 1}));
  std::vector<graph::Value*> bn;
  for (const char* name : {"gamma", "beta", "mean", "var"}) {
    bn.push_back(g.add_constant(name, kernels::Tensor(kernels::DType::kFloat32, {2})));
  }
  const OpSchema& conv_bn = *graph::find_schema("ConvBN");
  graph::Node* plain =
      g.add_node({.name = "plain", .op_type = "ConvBN", .inputs = {x, w}, .output_names = {"p"}});
  graph::Node* folded = g.add_node({.name = "folded",
                                    .op_type = "ConvBN",
                                    .inputs = {x, w, nullptr, bn[0], bn[1], bn[2], bn[3]},
                                    .output_names = {"f"}});
  EXPECT_EQ(graph::role_input(conv_bn, *plain, Role::kWeight), w);
  EXPECT_EQ(graph::role_input(conv_bn, *plain, Role::kBias), nullptr);
  EXPECT_EQ(graph::role_input(conv_bn, *plain, Role::kBnGamma), nullptr);
  EXPECT_FALSE(graph::has_batch_norm(conv_bn, *plain));
  EXPECT_EQ(graph::role_input(conv_bn, *folded, Role::kBnMean), bn[2]);
  EXPECT_TRUE(graph::has_batch_norm(conv_bn, *folded));
  EXPECT_EQ(graph::role_input(conv_bn, *folded, Role::kMask), nullptr);

  const OpSchema& linear = *graph::find_schema("Linear");
  graph::Node* gemm = g.add_node({.name = "gemm",
                                  .op_type = "Linear",
                                  .inputs = {x, w},
                                  .output_names = {"l"},
                                  .attributes = {{"weight_layout", std::string("gemm")}}});
  graph::Node* matmul =
      g.add_node({.name = "matmul", .op_type = "Linear", .inputs = {x, w}, .output_names = {"m"}});
  EXPECT_EQ(graph::weight_axis(linear, *gemm), 0);
  EXPECT_EQ(graph::weight_axis(linear, *matmul), 1);  // "matmul" is the default
  EXPECT_EQ(graph::weight_axis(conv_bn, *folded), 0);
  EXPECT_EQ(graph::weight_axis(*graph::find_schema("ConvTransposeBN"), *folded), 1);
}

// What quant/ finds again after lowering comes from the lowering's report, not from op types.
TEST(CatalogRoles, LoweringsReportTheWeightOpTheBatchNormAndTheSoftmax) {
  for (bool with_bn : {true, false}) {
    SCOPED_TRACE(with_bn ? "ConvBN with its BN" : "ConvBN without BN");
    graph::Graph g;
    std::vector<graph::Value*> inputs = {
        g.add_input("x", kernels::DType::kFloat32, graph::Shape{1, 2, 3, 3}),
        g.add_constant("w", kernels::Tensor(kernels::DType::kFloat32, {2, 2, 1, 1})), nullptr};
    for (const char* name : {"gamma", "beta", "mean", "var"}) {
      if (with_bn)
        inputs.push_back(g.add_constant(name, kernels::Tensor(kernels::DType::kFloat32, {2})));
    }
    graph::Node* n = g.add_node({.name = "block",
                                 .op_type = "ConvBN",
                                 .inputs = inputs,
                                 .output_names = {"y"},
                                 .attributes = {{"epsilon", 1e-5f}}});
    n->output(0)->set_type(kernels::DType::kFloat32, {1, 2, 3, 3});
    g.mark_output(n->output(0));
    graph::Lowered lowered;
    graph::find_schema("ConvBN")->lower(g, *n, lowered);
    ASSERT_NE(lowered.weight_op, nullptr);
    EXPECT_EQ(lowered.weight_op->op_type(), "Conv");
    EXPECT_EQ(lowered.weight_op->input(1)->name(), "w");
    EXPECT_EQ(lowered.internal_quantizer_input, nullptr);
    if (!with_bn) {
      EXPECT_EQ(lowered.batch_norm, nullptr);
      continue;
    }
    ASSERT_NE(lowered.batch_norm, nullptr);
    EXPECT_EQ(lowered.batch_norm->op_type(), "BatchNormalization");
    EXPECT_EQ(lowered.batch_norm->input(0), lowered.weight_op->output(0));
  }
  graph::Graph g;
  std::vector<graph::Value*> qkv;
  for (const char* name : {"q", "k", "v"}) {
    qkv.push_back(g.add_input(name, kernels::DType::kFloat32, graph::Shape{1, 2, 4, 8}));
  }
  graph::Node* sdpa = g.add_node({.name = "attention",
                                  .op_type = "SDPA",
                                  .inputs = qkv,
                                  .output_names = {"o"},
                                  .attributes = {{"scale", 0.5f}, {"causal", int64_t{0}}}});
  sdpa->output(0)->set_type(kernels::DType::kFloat32, {1, 2, 4, 8});
  g.mark_output(sdpa->output(0));
  graph::Lowered lowered;
  graph::find_schema("SDPA")->lower(g, *sdpa, lowered);
  ASSERT_NE(lowered.internal_quantizer_input, nullptr);
  EXPECT_EQ(lowered.internal_quantizer_input->producer()->op_type(), "Softmax");
}

}  // namespace
}  // namespace qforge
