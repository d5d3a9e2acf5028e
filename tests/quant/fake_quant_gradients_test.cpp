// `qforge grad --fake-quant`'s gradients (quant::fake_quant_gradients) are keyed by the model's
// initializers: on every bundled family the same names and shapes as the float gradients. With
// fake quant made inactive (a plan with no Q/DQ point) the fused graph's gradients, pulled back
// through the Linear head's 1×1 convolution and ViT's expanded class token, are the float
// gradients; and the pulled-back gradients are the same bits on 1 and 2 threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>

#include "graph/onnx_import.h"
#include "quant/fake_quant_training.h"
#include "quant/placement.h"
#include "runtime/training.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/float_checks.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_count.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using kernels::Tensor;
using testing::data_path;

struct Batch {
  Tensor input = io::read_npy(data_path("golden/grad/batch_input.npy"));
  Tensor labels = io::read_npy(data_path("golden/grad/batch_labels.npy"));
};

std::unique_ptr<graph::Graph> model_of(const std::string& family) {
  return graph::load_onnx(data_path("models/" + family + "_bn.onnx"));
}

std::map<std::string, kernels::Shape> shapes_of(
    const std::vector<std::pair<std::string, Tensor>>& gradients) {
  std::map<std::string, kernels::Shape> shapes;
  for (const auto& [name, grad] : gradients) shapes[name] = grad.shape();
  return shapes;
}

class FakeQuantGradients : public ::testing::TestWithParam<std::string> {};

TEST_P(FakeQuantGradients, KeyedByTheModelsInitializersInTheirShapes) {
  const Batch b;
  auto model = model_of(GetParam());
  const auto float_grads = runtime::cross_entropy_gradients(*model, b.input, b.labels);
  auto training = quant::max_calibrated_fake_quant_training(*model, b.input);
  training->forward_backward(b.input, b.labels);
  const quant::InitializerGradients got = quant::initializer_gradients(*training, *model);
  EXPECT_EQ(shapes_of(got.gradients), shapes_of(float_grads.gradients));
  EXPECT_TRUE(got.unmapped.empty()) << got.unmapped.front();
  EXPECT_FALSE(got.pulled_back.empty()) << "every bundled family has a derived constant";
  for (const auto& [name, grad] : got.gradients) {
    bool finite = true;
    for (float v : grad.span<float>()) finite = finite && std::isfinite(v);
    EXPECT_TRUE(finite) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Bundled, FakeQuantGradients,
                         ::testing::Values("resnet", "mobilenet_v3", "efficientnet", "convnext",
                                           "vit", "swin"),
                         [](const auto& p) { return p.param; });

// The fused graph trained with no Q/DQ point computes what the model computes, so its pulled-back
// gradients are the float gradients, up to the different order of the fused kernels' sums.
void expect_inactive_fake_quant_matches_float(const std::string& family,
                                              const std::vector<std::string>& derived_sources) {
  const Batch b;
  auto model = model_of(family);
  const auto float_grads = runtime::cross_entropy_gradients(*model, b.input, b.labels);
  runtime::TransformOptions options;
  options.batch = b.input.dim(0);
  const runtime::TransformResult fused = runtime::transform_model(*model, nullptr, options);
  auto training = quant::fake_quant_training(*fused.graph, quant::QuantPlan{}, {});
  const float loss = training->forward_backward(b.input, b.labels);
  EXPECT_LE(std::abs(loss - float_grads.loss), 1e-5 * std::abs(float_grads.loss));
  const quant::InitializerGradients got = quant::initializer_gradients(*training, *model);
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, grad] : got.gradients) by_name[name] = &grad;
  ASSERT_EQ(by_name.size(), float_grads.gradients.size());
  for (const auto& [name, want] : float_grads.gradients) {
    ASSERT_TRUE(by_name.count(name)) << name;
    ASSERT_EQ(by_name[name]->shape(), want.shape()) << name;
    EXPECT_LE(testing::relative_l2(*by_name[name], want), 1e-4) << name;
  }
  for (const std::string& name : derived_sources) {
    ASSERT_TRUE(by_name.count(name)) << name;
  }
}

TEST(FakeQuantGradientsPullBack, ResnetHeadMatchesFloatWithFakeQuantInactive) {
  expect_inactive_fake_quant_matches_float("resnet", {"fc.weight", "fc.bias"});
}

TEST(FakeQuantGradientsPullBack, VitClassTokenMatchesFloatWithFakeQuantInactive) {
  expect_inactive_fake_quant_matches_float("vit", {"class_token"});
}

TEST(FakeQuantGradientsPullBack, SameBitsOnOneAndTwoThreads) {
  const Batch b;
  auto model = model_of("vit");
  runtime::GradientResult one, two;
  {
    testing::ThreadCount threads(1);
    one = quant::fake_quant_gradients(*model, b.input, b.labels);
  }
  {
    testing::ThreadCount threads(2);
    two = quant::fake_quant_gradients(*model, b.input, b.labels);
  }
  EXPECT_EQ(one.loss, two.loss);
  ASSERT_EQ(one.gradients.size(), two.gradients.size());
  for (size_t i = 0; i < one.gradients.size(); ++i) {
    const Tensor& x = one.gradients[i].second;
    const Tensor& y = two.gradients[i].second;
    ASSERT_EQ(x.shape(), y.shape());
    EXPECT_EQ(std::memcmp(x.raw(), y.raw(), x.nbytes()), 0) << one.gradients[i].first;
  }
}

// The kernels' compact records (ReLU's masks, the fake quants' integers and masks) in place of
// the tensors their backward reads: on every bundled family the same loss and gradients, bit
// for bit, and on the CNNs, whose ReLUs and fake quants keep those tensors, a smaller arena.
TEST_P(FakeQuantGradients, CompactRecordsKeepTheBitsInASmallerArena) {
  const Batch b;
  auto model = model_of(GetParam());
  auto compact = quant::max_calibrated_fake_quant_training(*model, b.input);
  auto full = quant::max_calibrated_fake_quant_training(*model, b.input);
  full->set_compact_records(false);
  EXPECT_EQ(compact->forward_backward(b.input, b.labels),
            full->forward_backward(b.input, b.labels));
  const quant::InitializerGradients a = quant::initializer_gradients(*compact, *model);
  const quant::InitializerGradients c = quant::initializer_gradients(*full, *model);
  ASSERT_EQ(a.gradients.size(), c.gradients.size());
  for (size_t i = 0; i < a.gradients.size(); ++i) {
    const Tensor& x = a.gradients[i].second;
    const Tensor& y = c.gradients[i].second;
    ASSERT_EQ(x.shape(), y.shape());
    EXPECT_EQ(std::memcmp(x.raw(), y.raw(), x.nbytes()), 0) << a.gradients[i].first;
  }
  EXPECT_LE(compact->executor().arena_bytes(), full->executor().arena_bytes());
  if (GetParam() == "resnet") {
    EXPECT_LT(compact->executor().arena_bytes(), full->executor().arena_bytes());
  }
}

}  // namespace
}  // namespace qforge
