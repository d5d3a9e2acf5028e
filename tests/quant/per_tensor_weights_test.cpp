// Per-tensor weight quantizers (`qforge calibrate --per-tensor-weights`): one scale per weight
// tensor, amax = max |w| over the whole batch-norm folded weight. Placement marks the points,
// the export writes scalar scales of that value (float weights behind Q→DQ, or int8 weights
// behind DQ), and the written model runs in ONNX Runtime as in `qforge run`.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "graph/onnx_import.h"
#include "quant/int8.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/ort_runner.h"
#include "tests/support/test_support.h"
#include "tools/io/image_folder.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using kernels::Tensor;
using testing::data_path;
using testing::run_cli;
using testing::TempDir;

const std::string kResnet = data_path("models/resnet_bn.onnx");

std::unique_ptr<graph::Graph> fused_resnet(int64_t batch) {
  runtime::TransformOptions options;
  options.batch = batch;
  return std::move(runtime::transform_model(*graph::load_onnx(kResnet), nullptr, options).graph);
}

float max_abs(const Tensor& t) {
  float m = 0;
  for (float x : t.span<float>()) m = std::max(m, std::fabs(x));
  return m;
}

// The scale of every weight quantizer `plan` would get per tensor on `fused`, sorted.
std::vector<float> expected_scales(const graph::Graph& fused, const quant::QuantPlan& plan) {
  std::vector<float> out;
  for (const quant::WeightPoint& w : plan.weights) {
    out.push_back(quant::scale_from_amax(max_abs(quant::quantized_weight(fused, w))));
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The scale inputs of the weight quantizers of an exported model: the QuantizeLinear of a
// constant float weight, or the DequantizeLinear of a constant int8 weight. Sorted values; every
// scale must be a scalar without an axis attribute.
std::vector<float> weight_scales(const graph::Graph& qdq) {
  std::vector<float> out;
  for (const graph::Node* n : qdq.nodes()) {
    const bool weight_q = n->op_type() == "QuantizeLinear" && n->input(0)->is_constant();
    const bool weight_dq = n->op_type() == "DequantizeLinear" && n->input(0)->is_constant();
    if (!weight_q && !weight_dq) continue;
    const Tensor& scale = n->input(1)->constant();
    EXPECT_EQ(scale.rank(), 0) << n->name();
    EXPECT_FALSE(n->has_attr("axis")) << n->name();
    out.push_back(scale.data<float>()[0]);
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(PerTensorWeights, PlacementAndExportGiveOneScaleOfTheWholeFoldedWeight) {
  const auto fused = fused_resnet(2);
  const quant::QuantPlan per_channel = quant::place_qdq(*fused);
  const quant::QuantPlan plan = quant::place_qdq(*fused, {.per_tensor_weights = true});
  ASSERT_FALSE(plan.weights.empty());
  ASSERT_EQ(plan.weights.size(), per_channel.weights.size());
  bool some_folded = false;
  for (size_t i = 0; i < plan.weights.size(); ++i) {
    const quant::WeightPoint& w = plan.weights[i];
    EXPECT_FALSE(w.per_channel) << w.node;
    EXPECT_TRUE(per_channel.weights[i].per_channel);
    EXPECT_EQ(w.node, per_channel.weights[i].node);
    some_folded |= w.folds_batch_norm;
    // The whole folded weight's max |w|: the largest of the per-channel ranges.
    const std::vector<float> channels = quant::weight_channel_amax(*fused, per_channel.weights[i]);
    EXPECT_EQ(quant::weight_channel_amax(*fused, w),
              std::vector<float>{*std::max_element(channels.begin(), channels.end())});
  }
  EXPECT_TRUE(some_folded);  // resnet_bn keeps its batch norms until the export folds them

  quant::ActivationAmax amax;
  for (const quant::ActivationPoint& p : plan.activations) amax[p.tensor] = 2.0f;
  const std::vector<float> expected = expected_scales(*fused, plan);
  for (bool int8_weights : {false, true}) {
    SCOPED_TRACE(int8_weights ? "int8 weights" : "float weights");
    quant::QdqCounts counts;
    const auto qdq =
        quant::build_qdq_graph(*fused, plan, amax, {.int8_weights = int8_weights}, &counts);
    EXPECT_EQ(counts.weight_quantizers, plan.weights.size());
    EXPECT_EQ(weight_scales(*qdq), expected);
  }
  // Int8 weights are w / s rounded to nearest even with the one scale.
  const auto qdq = quant::build_qdq_graph(*fused, plan, amax, {.int8_weights = true});
  const quant::WeightPoint& w = plan.weights[0];
  const Tensor folded = quant::quantized_weight(*fused, w);
  const float s = quant::scale_from_amax(max_abs(folded));
  bool found = false;
  for (const graph::Node* n : qdq->nodes()) {
    if (n->op_type() != "DequantizeLinear" || !n->input(0)->is_constant()) continue;
    const Tensor& q = n->input(0)->constant();
    if (q.shape() != folded.shape() || n->input(1)->constant().data<float>()[0] != s) continue;
    bool same = true;
    for (int64_t i = 0; same && i < q.numel(); ++i) {
      same =
          q.data<int8_t>()[i] == static_cast<int8_t>(std::clamp(
                                     std::nearbyint(folded.data<float>()[i] / s), -127.0f, 127.0f));
    }
    found |= same;
  }
  EXPECT_TRUE(found) << "no int8 weight equal to round(w / s) for " << w.node;
}

// `qforge calibrate --per-tensor-weights` prints and reports the choice, writes scalar weight
// scales of the expected value, and ONNX Runtime runs the written model as `qforge run` does:
// teacher-forced, every Q/DQ point lands on ORT's integers (`qforge verify`), and the outputs
// agree to float noise.
TEST(PerTensorWeights, CliModelHasScalarWeightScalesAndRunsInOrtAsInQforge) {
  constexpr int64_t kBatch = 8;
  TempDir dir;
  const std::string out = dir.file("m.qdq.onnx");
  const std::string report = dir.file("report.json");
  const auto r =
      run_cli("calibrate " + kResnet + " --data " + data_path("datasets/digits/train") +
              " --limit 32 --batch " + std::to_string(kBatch) +
              " --per-tensor-weights --flip-injections 0 -o " + out + " --report " + report);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("per tensor, amax = max |w| over the whole weight"), std::string::npos)
      << r.out;
  const auto j = nlohmann::json::parse(testing::read_text(report));
  EXPECT_EQ(j["per_tensor_weights"], true);
  ASSERT_FALSE(j["weight_points"].empty());
  for (const auto& w : j["weight_points"]) EXPECT_EQ(w["amax"].size(), 1u) << w.dump();

  const auto qdq = graph::load_onnx(out);
  const auto fused = fused_resnet(kBatch);
  const std::vector<float> expected =
      expected_scales(*fused, quant::place_qdq(*fused, {.per_tensor_weights = true}));
  EXPECT_EQ(weight_scales(*qdq), expected);
  EXPECT_EQ(expected.size(), j["weight_points"].size());

  // ONNX Runtime against `qforge run` on kBatch validation images.
  const auto model = graph::load_onnx(kResnet);
  io::ImageFolder val(data_path("datasets/digits/val"),
                      io::preprocess_from_metadata(model->metadata, *model->inputs()[0]->shape()));
  const Tensor x = val.load_batch(0, kBatch);
  io::write_npy(dir.file("x.npy"), x);
  const auto run =
      run_cli("run " + out + " --data " + dir.file("x.npy") + " -o " + dir.file("y.npy"));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const Tensor ours = io::read_npy(dir.file("y.npy"));
  const std::vector<Tensor> ort = testing::run_ort(out, {x});
  ASSERT_EQ(ort.size(), 1u);
  ASSERT_EQ(ours.shape(), ort[0].shape());
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < ours.numel(); ++i) {
    const double a = ort[0].data<float>()[i], b = ours.data<float>()[i];
    diff += (a - b) * (a - b);
    norm += a * a;
  }
  // A rounding flip (summation order) moves a sample's output by about 1e-3 relative L2 on these
  // models; a wrong scale moves it by far more.
  EXPECT_LE(std::sqrt(diff / norm), 1e-2);
  const int64_t classes = ours.dim(1);
  for (int64_t row = 0; row < ours.dim(0); ++row) {
    const float* a = ort[0].data<float>() + row * classes;
    const float* b = ours.data<float>() + row * classes;
    EXPECT_EQ(std::max_element(a, a + classes) - a, std::max_element(b, b + classes) - b) << row;
  }
  // Teacher-forced, point by point: no integer differs beyond a rounding flip.
  testing::ort_dump(out, dir.file("x.npy"), dir.file("ort.npz"), "disabled");
  const auto verify = run_cli("verify " + out + " --reference " + dir.file("ort.npz") + " --data " +
                              dir.file("x.npy"));
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
}

}  // namespace
}  // namespace qforge
