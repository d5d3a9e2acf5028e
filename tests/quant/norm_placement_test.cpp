// InstanceNormalization and GroupNormalization in the quantization contract: each fuses into an
// InstanceNorm / GroupNorm module that, like LayerNorm, takes a float input (TensorRT runs
// normalisation layers in float), lowers back to the same values, and gets no Q/DQ pair; the
// convolutions around it keep theirs. The placement is checked point by point, and the Q/DQ
// export for which node reads which dequantized tensor; the training graph lowers the modules to
// the ops (whose backward QAT uses) and computes what the export computes.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "graph/fusions.h"
#include "graph/onnx_import.h"
#include "graph/plan.h"
#include "quant/calibration.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "runtime/fuse_qdq.h"
#include "runtime/resolve.h"
#include "runtime/session.h"
#include "runtime/training.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/float_checks.h"
#include "tests/support/graph_builders.h"
#include "tests/support/pass_tester.h"
#include "tests/support/test_support.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Node;
using graph::Shape;
using graph::Value;

// The one node of `op` whose first input is produced by a `producer` node (a graph input when
// `producer` is empty).
const Node* reading(const graph::Graph& g, const std::string& op, const std::string& producer) {
  const Node* found = nullptr;
  for (const Node* n : g.nodes()) {
    if (n->op_type() != op) continue;
    const Node* p = n->input(0)->producer();
    if ((producer.empty() && !p) || (p && p->op_type() == producer)) {
      EXPECT_EQ(found, nullptr) << "two " << op << " nodes after " << producer;
      found = n;
    }
  }
  EXPECT_NE(found, nullptr) << op << " after " << (producer.empty() ? "the input" : producer);
  return found;
}

// Exactly two activation points: the graph input, read by the first convolution module, and
// the Relu's output, read by the second; two weights; nothing left float.
void expect_conv_points_only(const graph::Graph& fused, const quant::QuantPlan& plan) {
  const Node* first = reading(fused, "ConvBN", "");
  const Node* second = reading(fused, "ConvBN", "Relu");
  ASSERT_TRUE(first && second);
  ASSERT_EQ(plan.activations.size(), 2u);
  EXPECT_EQ(plan.activations[0].tensor, first->input(0)->name());
  ASSERT_EQ(plan.activations[0].consumers.size(), 1u);
  EXPECT_EQ(plan.activations[0].consumers[0].node, first->name());
  EXPECT_EQ(plan.activations[0].consumers[0].input, 0);
  EXPECT_EQ(plan.activations[1].tensor, second->input(0)->name());
  ASSERT_EQ(plan.activations[1].consumers.size(), 1u);
  EXPECT_EQ(plan.activations[1].consumers[0].node, second->name());
  EXPECT_EQ(plan.activations[1].consumers[0].input, 0);
  EXPECT_TRUE(plan.activations[0].scale_group.empty());
  EXPECT_TRUE(plan.activations[1].scale_group.empty());
  ASSERT_EQ(plan.weights.size(), 2u);
  EXPECT_EQ(plan.weights[0].node, first->name());
  EXPECT_EQ(plan.weights[1].node, second->name());
  EXPECT_TRUE(plan.softmax.empty());
  EXPECT_TRUE(plan.float_modules.empty());
}

// In the Q/DQ graph: the Q/DQ pairs quantize exactly the two activation points and the two
// convolution weights, only Conv nodes read dequantized tensors, and every normalisation reads a
// float tensor that no DequantizeLinear produced.
void expect_export_keeps_norms_float(const graph::Graph& fused, const quant::QuantPlan& plan,
                                     size_t norms) {
  quant::ActivationAmax amax;
  for (const quant::ActivationPoint& p : plan.activations) amax[p.tensor] = 2.0f;
  const auto qdq = quant::build_qdq_graph(fused, plan, amax);
  std::set<std::string> quantized;
  size_t norm_nodes = 0;
  for (const Node* n : qdq->nodes()) {
    if (n->op_type() == "QuantizeLinear") quantized.insert(n->input(0)->name());
    if (n->op_type() == "InstanceNormalization" || n->op_type() == "GroupNormalization") {
      ++norm_nodes;
      const Node* p = n->input(0)->producer();
      EXPECT_TRUE(!p || p->op_type() != "DequantizeLinear") << n->name();
    }
    if (n->op_type() == "DequantizeLinear") {
      for (const Node* reader : n->output(0)->consumers()) {
        EXPECT_EQ(reader->op_type(), "Conv") << reader->name() << " reads " << n->name();
      }
    }
  }
  EXPECT_EQ(norm_nodes, norms);
  std::set<std::string> want = {plan.activations[0].tensor, plan.activations[1].tensor};
  for (const quant::WeightPoint& w : plan.weights) {
    want.insert(fused.find_node(w.node)->input(static_cast<size_t>(w.input))->name());
  }
  EXPECT_EQ(want.size(), 4u);
  EXPECT_EQ(quantized, want);
}

// torch.onnx's Conv -> nn.GroupNorm (Reshape -> InstanceNormalization -> Reshape -> Mul -> Add)
// -> nn.InstanceNorm2d(affine) -> Relu -> Conv -> nn.InstanceNorm2d.
TEST(NormPlacement, TorchExportedNormsTakeFloatInputs) {
  auto model = graph::load_onnx(testing::data_path("models/ops/instance_group_norm.onnx"));
  runtime::TransformOptions options;
  options.batch = 2;
  auto fused = std::move(runtime::transform_model(*model, nullptr, options).graph);
  const testing::OpCounts counts = testing::count_ops(*fused);
  EXPECT_EQ(counts.at("ConvBN"), 2u);
  EXPECT_EQ(counts.at("InstanceNorm"), 3u);
  EXPECT_EQ(counts.count("InstanceNormalization"), 0u);
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  expect_conv_points_only(*fused, plan);
  expect_export_keeps_norms_float(*fused, plan, 3);
}

// x -> Conv -> GroupNormalization (opset 21, per-channel parameters) -> Relu -> Conv.
std::unique_ptr<graph::Graph> conv_group_norm_conv() {
  testing::GraphBuilder b(5);
  Value* x = b.g->add_input("x", DType::kFloat32, Shape{2, 8, 5, 6});
  Value* c1 = b.node("Conv", {x, b.constant({8, 8, 3, 3}), b.constant({8})},
                     {.attributes = {{"pads", std::vector<int64_t>{1, 1, 1, 1}}}});
  Value* gn = b.node("GroupNormalization", {c1, b.constant({8}, 0.5f, 1.5f), b.constant({8})},
                     {.attributes = {{"num_groups", int64_t{4}}, {"epsilon", 1e-4f}}});
  Value* y = b.node("Conv", {b.node("Relu", {gn}), b.constant({4, 8, 1, 1}), b.constant({4})});
  b.g->opset = 21;
  b.g->mark_output(y);
  return std::move(b.g);
}

TEST(NormPlacement, GroupNormModuleLowersBackAndTakesAFloatInput) {
  auto r = testing::run_pass_test(conv_group_norm_conv, [](graph::Graph& g) {
    const std::vector<graph::Pattern> patterns = graph::fusion_patterns();
    const graph::PlanReport report = graph::run_fusions(g, patterns);
    EXPECT_EQ(report.find("GroupNorm")->applied, 1u);
  });
  EXPECT_EQ(r.after, (testing::OpCounts{{"ConvBN", 2}, {"GroupNorm", 1}, {"Relu", 1}}));
  testing::expect_lowering_equivalent(*r.transformed, 3, 7);
  const quant::QuantPlan plan = quant::place_qdq(*r.transformed);
  expect_conv_points_only(*r.transformed, plan);
  expect_export_keeps_norms_float(*r.transformed, plan, 1);
}

// The training graph of the torch export, calibrated on the golden input: the norms' affine
// parameters are among what it trains, and its forward (the modules lowered back to the ops whose
// backward training uses) computes what the exported Q/DQ model computes.
TEST(NormPlacement, TrainingGraphIsTheExportedModel) {
  const auto golden = io::read_npz(testing::data_path("models/ops/instance_group_norm.npz"));
  const kernels::Tensor& x = golden.at("x");
  runtime::TransformOptions options;
  options.batch = x.dim(0);
  auto fused =
      std::move(runtime::transform_model(
                    *graph::load_onnx(testing::data_path("models/ops/instance_group_norm.onnx")),
                    nullptr, options)
                    .graph);
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  quant::CalibrationStats stats(*fused, plan);
  stats.observe_batch(x);
  const quant::ActivationAmax amax = stats.activation_amax(quant::Calibrator::kMax);
  quant::TrainingGraph t = quant::build_training_graph(*fused, plan, amax, {});
  for (const char* name : {"instance.weight", "instance.bias"}) {
    EXPECT_NE(std::find(t.parameters.begin(), t.parameters.end(), name), t.parameters.end())
        << name;
  }
  size_t norms = 0;
  for (const Node* n : t.graph->nodes()) norms += n->op_type() == "InstanceNormalization";
  EXPECT_EQ(norms, 3u);
  runtime::ResolveOptions resolve_options;
  resolve_options.parameters.insert(t.parameters.begin(), t.parameters.end());
  runtime::resolve(*t.graph, resolve_options);
  runtime::fuse_qdq(*t.graph);
  runtime::TrainingExecutor training(*t.graph, {.parameters = t.parameters});
  const kernels::Tensor got = training.forward({&x, 1})[0].clone();
  runtime::Session exported(quant::build_qdq_graph(*fused, plan, amax));
  const kernels::Tensor want = exported.run(x)[0];
  ASSERT_EQ(got.shape(), want.shape());
  EXPECT_LE(testing::relative_l2(got, want), 1e-6);
}

}  // namespace
}  // namespace qforge
