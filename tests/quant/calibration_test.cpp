// Calibration statistics on the fused resnet_bn: amax per method is bit-identical whatever the
// batch size and thread count, points no data reached and non-finite activations are Invalid
// errors naming the point, weight ranges are per channel of the folded weight.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/error.h"
#include "quant/calibration.h"
#include "runtime/threads.h"
#include "tests/quant/quant_test_models.h"
#include "tools/io/image_folder.h"

namespace qforge {
namespace {

using kernels::Tensor;
using quant::CalibrationStats;
using quant::Calibrator;

constexpr int64_t kImages = 32;

Tensor digit_images(const graph::Graph& model) {
  const auto& shape = *model.inputs()[0]->shape();
  io::ImageFolder folder(testing::data_path("datasets/digits/train"),
                         io::preprocess_from_metadata(model.metadata, shape));
  // Every class contributes: stride through the sorted paths.
  const int64_t stride = static_cast<int64_t>(folder.size()) / kImages;
  Tensor out(kernels::DType::kFloat32, {kImages, shape[1], shape[2], shape[3]});
  const int64_t per = static_cast<int64_t>(folder.sample_numel());
  for (int64_t i = 0; i < kImages; ++i) {
    folder.load_batch(static_cast<size_t>(i * stride), 1, out.data<float>() + i * per);
  }
  return out;
}

struct Amax {
  std::map<std::string, float> by_method[4];
  bool operator==(const Amax&) const = default;
};

Amax calibrate(const graph::Graph& fused, const quant::QuantPlan& plan, const Tensor& data,
               int64_t batch) {
  CalibrationStats stats(fused, plan);
  for (int64_t b = 0; b < data.dim(0); b += batch) {
    stats.observe_batch(data.slice_rows(b, std::min(b + batch, data.dim(0))).clone());
  }
  Amax out;
  for (Calibrator m :
       {Calibrator::kMax, Calibrator::kPercentile, Calibrator::kEntropy, Calibrator::kMse}) {
    out.by_method[static_cast<int>(m)] = stats.activation_amax(m);
  }
  return out;
}

bool bit_identical(const Amax& a, const Amax& b) {
  for (int m = 0; m < 4; ++m) {
    if (a.by_method[m].size() != b.by_method[m].size()) return false;
    for (const auto& [name, v] : a.by_method[m]) {
      auto it = b.by_method[m].find(name);
      if (it == b.by_method[m].end() || std::memcmp(&v, &it->second, sizeof v) != 0) return false;
    }
  }
  return true;
}

TEST(Calibration, AmaxIsBitIdenticalAcrossBatchSizesAndThreads) {
  auto model = graph::load_onnx(testing::data_path("models/resnet_bn.onnx"));
  auto fused = testing::fused_model("resnet_bn");
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  const Tensor data = digit_images(*model);
  const int saved_threads = runtime::num_threads();
  runtime::set_num_threads(1);
  const Amax reference = calibrate(*fused, plan, data, 1);
  const Amax by8 = calibrate(*fused, plan, data, 8);
  runtime::set_num_threads(2);
  const Amax by32 = calibrate(*fused, plan, data, 32);
  const Amax by8_two_threads = calibrate(*fused, plan, data, 8);
  runtime::set_num_threads(saved_threads);
  EXPECT_TRUE(bit_identical(reference, by8));
  EXPECT_TRUE(bit_identical(reference, by32));
  EXPECT_TRUE(bit_identical(reference, by8_two_threads));
  // Every point got a positive range, and clipping methods never exceed the max.
  for (const auto& [name, max] : reference.by_method[0]) {
    EXPECT_GT(max, 0.0f) << name;
    for (int m = 1; m < 4; ++m) {
      // Histogram edges are powers-of-two fractions; the top edge may sit above the exact max
      // by one bin at most.
      EXPECT_LE(reference.by_method[m].at(name), 2.0f * max) << name << " method " << m;
      EXPECT_GT(reference.by_method[m].at(name), 0.0f) << name << " method " << m;
    }
  }
}

TEST(Calibration, MaxAmaxIsTheRunningMaxOfTheInput) {
  auto fused = testing::fused_model("resnet_bn");
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  ASSERT_TRUE(fused->find_value(plan.activations[0].tensor)->is_graph_input());
  Tensor x(kernels::DType::kFloat32, *fused->inputs()[0]->shape());
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = std::sin(0.37f * i) * 2.5f;
  x.data<float>()[17] = -3.75f;
  CalibrationStats stats(*fused, plan);
  stats.observe_batch(x);
  EXPECT_EQ(stats.amax_for(plan.activations[0], Calibrator::kMax), 3.75);
  EXPECT_EQ(stats.batches(), 1);
}

TEST(Calibration, PointWithoutDataIsInvalid) {
  auto fused = testing::fused_model("resnet_bn");
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  CalibrationStats stats(*fused, plan);
  try {
    stats.amax_for(plan.activations[1], Calibrator::kEntropy);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_NE(std::string(e.what()).find("'" + plan.activations[1].tensor + "'"), std::string::npos)
        << e.what();
  }
}

TEST(Calibration, NonFiniteActivationIsInvalidNamingThePoint) {
  auto fused = testing::fused_model("resnet_bn");
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  CalibrationStats stats(*fused, plan);
  Tensor x(kernels::DType::kFloat32, *fused->inputs()[0]->shape());
  x.data<float>()[5] = std::numeric_limits<float>::quiet_NaN();
  try {
    stats.observe_batch(x);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_NE(std::string(e.what()).find("'" + plan.activations[0].tensor + "'"), std::string::npos)
        << e.what();
  }
}

TEST(Calibration, WeightAmaxIsPerChannelOfTheFoldedWeight) {
  auto fused = testing::fused_model("resnet_bn");
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  CalibrationStats stats(*fused, plan);
  const auto amax = stats.weight_amax();
  ASSERT_EQ(amax.size(), plan.weights.size());
  for (const quant::WeightPoint& w : plan.weights) {
    const Tensor folded = quant::quantized_weight(*fused, w);
    const auto& a = amax.at(w.node);
    ASSERT_EQ(static_cast<int64_t>(a.size()), folded.dim(w.axis)) << w.node;
    if (w.axis != 0) continue;
    const int64_t inner = folded.numel() / folded.dim(0);
    for (int64_t c = 0; c < folded.dim(0); ++c) {
      float m = 0;
      for (int64_t k = 0; k < inner; ++k)
        m = std::max(m, std::fabs(folded.data<float>()[c * inner + k]));
      EXPECT_EQ(a[static_cast<size_t>(c)], m) << w.node << " channel " << c;
    }
  }
}

}  // namespace
}  // namespace qforge
