// Q/DQ export of resnet_bn and vit_bn: one Q/DQ pair per placed point, per-axis weights on the
// placement's axis, BN folded, the softmax pair inside attention, the ONNX checker passes, and
// the exported model runs close to the float model (SQNR on the golden batch).
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "graph/onnx_import.h"
#include "kernels/error.h"
#include "quant/calibration.h"
#include "quant/qdq_export.h"
#include "runtime/op_registry.h"
#include "runtime/session.h"
#include "tests/quant/quant_test_models.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using kernels::Tensor;

std::map<std::string, size_t> count_ops(const graph::Graph& g) {
  std::map<std::string, size_t> n;
  for (const graph::Node* node : g.nodes()) ++n[node->op_type()];
  return n;
}

quant::ActivationAmax unit_amax(const quant::QuantPlan& plan) {
  quant::ActivationAmax amax;
  for (const auto& p : plan.activations) amax[p.tensor] = 4.0f;
  return amax;
}

TEST(QdqExport, ResnetHasOnePairPerPointAndPerAxisFoldedWeights) {
  auto fused = testing::fused_model("resnet_bn");
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  quant::QdqCounts counts;
  auto g = quant::build_qdq_graph(*fused, plan, unit_amax(plan), {}, &counts);
  const auto ops = count_ops(*g);
  EXPECT_EQ(counts.activation_pairs, plan.activations.size());
  EXPECT_EQ(counts.weight_quantizers, plan.weights.size());
  EXPECT_EQ(ops.at("QuantizeLinear"), plan.activations.size() + plan.weights.size());
  EXPECT_EQ(ops.at("DequantizeLinear"), plan.activations.size() + plan.weights.size());
  EXPECT_EQ(ops.count("BatchNormalization"), 0u);
  size_t per_axis = 0;
  for (const graph::Node* n : g->nodes()) {
    if (n->op_type() != "QuantizeLinear") continue;
    const Tensor& scale = n->input(1)->constant();
    if (n->input(0)->is_constant()) {
      // A weight: per output channel along the placement's axis.
      ++per_axis;
      ASSERT_TRUE(n->has_attr("axis"));
      const int64_t axis = n->attr_int("axis");
      EXPECT_EQ(scale.numel(), n->input(0)->constant().dim(static_cast<int>(axis)));
      EXPECT_EQ(n->input(2)->constant().dtype(), kernels::DType::kInt8);
      ASSERT_EQ(n->output(0)->consumers().size(), 1u);
      const graph::Node* dq = n->output(0)->consumers()[0];
      EXPECT_EQ(dq->op_type(), "DequantizeLinear");
      EXPECT_EQ(dq->attr_int("axis"), axis);
    } else {
      EXPECT_EQ(scale.numel(), 1);
      EXPECT_FLOAT_EQ(scale.data<float>()[0], 4.0f / 127.0f);
    }
  }
  EXPECT_EQ(per_axis, plan.weights.size());
  // The checker runs inside serialize; the bytes import again.
  const std::string bytes = quant::export_qdq(*fused, plan, unit_amax(plan));
  auto back = graph::parse_onnx(bytes, "resnet_bn.qdq.onnx");
  EXPECT_EQ(count_ops(*back).at("QuantizeLinear"), ops.at("QuantizeLinear"));
}

TEST(QdqExport, Int8WeightsAreInitializersBehindDequantize) {
  auto fused = testing::fused_model("resnet_bn");
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  quant::QdqExportOptions options;
  options.int8_weights = true;
  auto g = quant::build_qdq_graph(*fused, plan, unit_amax(plan), options);
  const auto ops = count_ops(*g);
  EXPECT_EQ(ops.at("QuantizeLinear"), plan.activations.size());
  EXPECT_EQ(ops.at("DequantizeLinear"), plan.activations.size() + plan.weights.size());
  size_t int8 = 0;
  for (const graph::Node* n : g->nodes()) {
    if (n->op_type() == "DequantizeLinear" && n->input(0)->is_constant()) {
      EXPECT_EQ(n->input(0)->dtype(), kernels::DType::kInt8);
      ++int8;
    }
  }
  EXPECT_EQ(int8, plan.weights.size());
  EXPECT_FALSE(graph::serialize_onnx(*g).empty());
}

TEST(QdqExport, AttentionGetsTheFixedSoftmaxPair) {
  auto fused = testing::fused_model("vit_bn");
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  ASSERT_FALSE(plan.softmax.empty());
  quant::QdqCounts counts;
  auto g = quant::build_qdq_graph(*fused, plan, unit_amax(plan), {}, &counts);
  EXPECT_EQ(counts.softmax_pairs, plan.softmax.size());
  size_t after_softmax = 0;
  for (const graph::Node* n : g->nodes()) {
    if (n->op_type() != "QuantizeLinear" || !n->input(0)->producer() ||
        n->input(0)->producer()->op_type() != "Softmax") {
      continue;
    }
    ++after_softmax;
    EXPECT_FLOAT_EQ(n->input(1)->constant().data<float>()[0], 1.0f / 127.0f);
  }
  EXPECT_EQ(after_softmax, plan.softmax.size());
  EXPECT_EQ(count_ops(*g).at("QuantizeLinear"),
            plan.activations.size() + plan.weights.size() + plan.softmax.size());
  EXPECT_FALSE(graph::serialize_onnx(*g).empty());
}

TEST(QdqExport, MissingAmaxIsInvalidNamingThePoint) {
  auto fused = testing::fused_model("resnet_bn");
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  quant::ActivationAmax amax = unit_amax(plan);
  amax.erase(plan.activations.back().tensor);
  try {
    quant::build_qdq_graph(*fused, plan, amax);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_NE(std::string(e.what()).find(plan.activations.back().tensor), std::string::npos);
  }
}

double sqnr_db(const Tensor& reference, const Tensor& candidate) {
  double signal = 0, noise = 0;
  for (int64_t i = 0; i < reference.numel(); ++i) {
    const double r = reference.data<float>()[i], c = candidate.data<float>()[i];
    signal += r * r;
    noise += (r - c) * (r - c);
  }
  return 10.0 * std::log10(signal / std::max(noise, 1e-30));
}

TEST(QdqExport, ResnetMaxCalibratedModelStaysCloseToFloat) {
  if (!runtime::builtin_ops().find("QuantizeLinear")) {
    GTEST_SKIP() << "the runtime has no QuantizeLinear yet";
  }
  const Tensor input = io::read_npy(testing::data_path("golden/resnet_input.npy"));
  auto model = graph::load_onnx(testing::data_path("models/resnet_bn.onnx"));
  // The export keeps the batch the graph was transformed at: the golden batch's.
  auto fused = testing::fused_model("resnet_bn", input.dim(0));
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  quant::CalibrationStats stats(*fused, plan);
  stats.observe_batch(input);
  const std::string bytes =
      quant::export_qdq(*fused, plan, stats.activation_amax(quant::Calibrator::kMax));

  runtime::Session reference(graph::load_onnx(testing::data_path("models/resnet_bn.onnx")));
  const Tensor expected = reference.run(input)[0].clone();
  runtime::Session quantized(graph::parse_onnx(bytes, "resnet_bn.qdq.onnx"));
  const Tensor got = quantized.run(input)[0].clone();
  ASSERT_EQ(got.shape(), expected.shape());
  const double db = sqnr_db(expected, got);
  RecordProperty("sqnr_db", std::to_string(db));
  EXPECT_GT(db, 15.0);
  EXPECT_LT(db, 200.0);  // quantization changed something
}

}  // namespace
}  // namespace qforge
