// Q/DQ placement follows the catalog contract: every quantized module input gets a point, a
// tensor read by several quantized inputs gets one shared point, weights are per channel along
// the module's axis, attention carries the fixed softmax quantizer, skips and INT8-unsupported
// modules stay float.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "graph/catalog.h"
#include "kernels/error.h"
#include "quant/placement.h"
#include "tests/quant/quant_test_models.h"

namespace qforge {
namespace {

using graph::Node;
using quant::place_qdq;
using quant::PlacementOptions;
using quant::QuantPlan;

size_t count_quantized_inputs(const graph::Graph& g, const std::set<std::string>& skipped = {}) {
  size_t n = 0;
  for (const Node* node : g.nodes()) {
    const graph::OpSchema* s = graph::find_schema(node->op_type());
    if (!s || s->kind != graph::SchemaKind::kModule || skipped.count(node->name())) continue;
    n += graph::quantized_inputs(*s).size();
  }
  return n;
}

TEST(Placement, GlobMatchesWildcards) {
  EXPECT_TRUE(quant::glob_match("ConvBNAct", "ConvBNAct"));
  EXPECT_FALSE(quant::glob_match("ConvBN", "ConvBNAct"));
  EXPECT_TRUE(quant::glob_match("Conv*", "ConvBNAddAct"));
  EXPECT_TRUE(quant::glob_match("*layer1*", "/layer1/conv1/ConvBNAct"));
  EXPECT_TRUE(quant::glob_match("*", ""));
  EXPECT_FALSE(quant::glob_match("*a*b", "xaxc"));
  EXPECT_TRUE(quant::glob_match("*a*b", "xaxcb"));
}

TEST(Placement, ResnetPointsFollowTheCatalogContract) {
  auto g = testing::fused_model("resnet_bn");
  const QuantPlan plan = place_qdq(*g);
  ASSERT_FALSE(plan.activations.empty());
  size_t consumers = 0;
  std::set<std::string> tensors;
  for (const quant::ActivationPoint& p : plan.activations) {
    EXPECT_TRUE(tensors.insert(p.tensor).second) << "two points on '" << p.tensor << "'";
    for (const quant::QuantConsumer& c : p.consumers) {
      const Node* n = g->find_node(c.node);
      ASSERT_NE(n, nullptr);
      const auto q = graph::quantized_inputs(*graph::find_schema(n->op_type()));
      EXPECT_NE(std::find(q.begin(), q.end(), c.input), q.end()) << c.node << " input " << c.input;
      EXPECT_EQ(n->input(c.input)->name(), p.tensor);
      ++consumers;
    }
  }
  // Every quantized module input is covered exactly once.
  EXPECT_EQ(consumers, count_quantized_inputs(*g));
  // A residual tensor feeds the next block and the Add: shared, so fewer points than inputs.
  EXPECT_LT(plan.activations.size(), consumers);
  size_t residual_inputs = 0;
  for (const auto& p : plan.activations) {
    for (const auto& c : p.consumers) residual_inputs += c.input == 1;
  }
  EXPECT_GT(residual_inputs, 0u);
  // One weight per conv / linear module, per output channel.
  size_t weighted = 0;
  for (const Node* n : g->nodes()) {
    const graph::OpSchema* s = graph::find_schema(n->op_type());
    weighted += s && s->kind == graph::SchemaKind::kModule && graph::weight_input(*s) >= 0;
  }
  EXPECT_EQ(plan.weights.size(), weighted);
  for (const quant::WeightPoint& w : plan.weights) {
    const Node* n = g->find_node(w.node);
    EXPECT_TRUE(w.per_channel);
    EXPECT_EQ(w.input, graph::weight_input(*graph::find_schema(n->op_type())));
    if (n->has_attr("weight_layout")) {
      EXPECT_EQ(w.axis, n->attr_string("weight_layout") == "gemm" ? 0 : 1) << w.node;
    } else {
      EXPECT_EQ(w.axis, 0) << w.node;
      // Conv modules fold their BN; the fc, a 1×1 conv without BN, has none to fold.
      EXPECT_EQ(w.folds_batch_norm, n->has_attr("epsilon")) << w.node;
    }
  }
  EXPECT_TRUE(plan.softmax.empty());
  EXPECT_TRUE(plan.float_modules.empty());
}

TEST(Placement, SkippedKindsAndNamesStayFloat) {
  auto g = testing::fused_model("resnet_bn");
  std::string one_name;
  std::set<std::string> skipped;
  for (const Node* n : g->nodes()) {
    if (n->op_type() == "ConvBNAddAct") skipped.insert(n->name());
    if (one_name.empty() && n->op_type() == "ConvBNAct") one_name = n->name();
  }
  ASSERT_FALSE(skipped.empty());
  ASSERT_FALSE(one_name.empty());
  skipped.insert(one_name);
  const QuantPlan plan = place_qdq(*g, PlacementOptions{.skip = {"ConvBNAdd*", one_name}});
  EXPECT_EQ(plan.float_modules.size(), skipped.size());
  for (const auto& f : plan.float_modules) EXPECT_TRUE(skipped.count(f.node)) << f.node;
  size_t consumers = 0;
  for (const auto& p : plan.activations) {
    for (const auto& c : p.consumers) {
      EXPECT_FALSE(skipped.count(c.node)) << c.node;
      ++consumers;
    }
  }
  EXPECT_EQ(consumers, count_quantized_inputs(*g, skipped));
  for (const auto& w : plan.weights) EXPECT_FALSE(skipped.count(w.node)) << w.node;
}

TEST(Placement, SkipEntryMatchingNothingIsInvalid) {
  auto g = testing::fused_model("resnet_bn");
  try {
    place_qdq(*g, PlacementOptions{.skip = {"ConvBNAct", "NoSuchModule*"}});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_NE(std::string(e.what()).find("'NoSuchModule*'"), std::string::npos) << e.what();
  }
}

TEST(Placement, Int8UnsupportedGroupedConvStaysFloat) {
  // x -> ConvBNAct(grouped, int8_unsupported) -> ConvBNAct: only the second is quantized.
  graph::Graph g;
  graph::Value* x = g.add_input("x", kernels::DType::kFloat32, kernels::Shape{1, 6, 4, 4});
  auto params = [&](const std::string& stem, int64_t out, int64_t in) {
    std::vector<graph::Value*> v = {
        g.add_constant(stem + "_w", kernels::Tensor(kernels::DType::kFloat32, {out, in, 1, 1})),
        nullptr};
    for (const char* p : {"_gamma", "_beta", "_mean", "_var"}) {
      v.push_back(g.add_constant(stem + p, kernels::Tensor(kernels::DType::kFloat32, {out})));
    }
    return v;
  };
  graph::NodeSpec grouped{.name = "grouped", .op_type = "ConvBNAct", .output_names = {"y"}};
  grouped.inputs = {x};
  for (auto* v : params("g", 6, 3)) grouped.inputs.push_back(v);
  grouped.attributes = {{"group", int64_t{2}},
                        {"epsilon", 1e-5f},
                        {"activation", std::string("Relu")},
                        {"int8_unsupported", int64_t{1}}};
  grouped.domain = "qforge";
  Node* first = g.add_node(std::move(grouped));
  graph::NodeSpec plain{.name = "plain", .op_type = "ConvBNAct", .output_names = {"z"}};
  plain.inputs = {first->output(0)};
  for (auto* v : params("p", 4, 6)) plain.inputs.push_back(v);
  plain.attributes = {{"epsilon", 1e-5f}, {"activation", std::string("Relu")}};
  plain.domain = "qforge";
  g.mark_output(g.add_node(std::move(plain))->output(0));

  const QuantPlan plan = place_qdq(g);
  ASSERT_EQ(plan.float_modules.size(), 1u);
  EXPECT_EQ(plan.float_modules[0].node, "grouped");
  EXPECT_NE(plan.float_modules[0].reason.find("int8 unsupported"), std::string::npos);
  ASSERT_EQ(plan.activations.size(), 1u);
  EXPECT_EQ(plan.activations[0].tensor, "y");
  ASSERT_EQ(plan.weights.size(), 1u);
  EXPECT_EQ(plan.weights[0].node, "plain");
  EXPECT_TRUE(plan.weights[0].folds_batch_norm);
}

TEST(Placement, AttentionQuantizesQKVAndCarriesTheSoftmaxScale) {
  auto g = testing::fused_model("vit_bn");
  const QuantPlan plan = place_qdq(*g);
  size_t sdpa = 0;
  for (const Node* n : g->nodes()) {
    const graph::OpSchema* s = graph::find_schema(n->op_type());
    sdpa += s && s->internal_quantizer.scale > 0;
  }
  ASSERT_GT(sdpa, 0u);
  ASSERT_EQ(plan.softmax.size(), sdpa);
  for (const auto& s : plan.softmax) EXPECT_FLOAT_EQ(s.scale, 1.0f / 127.0f);
  for (const auto& s : plan.softmax) {
    std::set<int> inputs;
    for (const auto& p : plan.activations) {
      for (const auto& c : p.consumers) {
        if (c.node == s.node) inputs.insert(c.input);
      }
    }
    EXPECT_EQ(inputs, (std::set<int>{0, 1, 2})) << s.node;
  }
}

}  // namespace
}  // namespace qforge
