// Gradients through fake quant, module by module, against PyTorch 1.13 with
// torch.fake_quantize_per_tensor_affine / _per_channel_affine on the same inputs and scales
// (data/generate/fake_quant_goldens.py): a Conv → BN → ReLU module with its batch norm folding
// simulated in training mode, and a Linear.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "graph/onnx_import.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "runtime/fuse_qdq.h"
#include "runtime/resolve.h"
#include "runtime/training.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/float_checks.h"
#include "tests/support/test_support.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using kernels::Tensor;

double norm(const Tensor& t) {
  double s = 0;
  for (float v : t.span<float>()) s += static_cast<double>(v) * v;
  return std::sqrt(s);
}

class FakeQuantModuleGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(FakeQuantModuleGolden, GradientsEqualPyTorchs) {
  const std::string stem = testing::data_path("golden/fake_quant/" + GetParam());
  const auto golden = io::read_npz(stem + ".npz");
  const Tensor& x = golden.at("x");
  runtime::TransformOptions options;
  options.batch = x.dim(0);
  auto fused = std::move(
      runtime::transform_model(*graph::load_onnx(stem + ".onnx"), nullptr, options).graph);
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  ASSERT_EQ(plan.activations.size(), 1u);
  ASSERT_EQ(plan.weights.size(), 1u);
  const quant::ActivationAmax amax = {
      {plan.activations[0].tensor, golden.at("amax").data<float>()[0]}};

  quant::TrainingGraph t = quant::build_training_graph(*fused, plan, amax);
  runtime::ResolveOptions resolve;
  resolve.parameters.insert(t.parameters.begin(), t.parameters.end());
  resolve.parameters.insert(t.state.begin(), t.state.end());
  runtime::resolve(*t.graph, resolve);
  runtime::fuse_qdq(*t.graph);
  runtime::TrainingExecutor training(*t.graph, {t.parameters, t.state});
  const Tensor y = training.forward({&x, 1})[0];
  const Tensor& y_ref = golden.at("y");
  ASSERT_EQ(y.shape(), y_ref.shape());
  EXPECT_LE(testing::relative_l2(y, y_ref), 1e-5);
  const Tensor& dy = golden.at("dy");
  training.backward({&dy, 1});

  double total = 0;
  size_t compared = 0;
  for (const auto& [key, g] : golden) {
    if (key.rfind("grad/", 0) == 0) total += norm(g) * norm(g);
  }
  total = std::sqrt(total);
  for (const auto& [key, g_ref] : golden) {
    if (key.rfind("grad/", 0) != 0) continue;
    const std::string name = key.substr(5);
    const runtime::Parameter* p = nullptr;
    for (const runtime::Parameter& q : std::as_const(training).parameters()) {
      if (q.name == name) p = &q;
    }
    ASSERT_NE(p, nullptr) << name << " is not a parameter of the training graph";
    ASSERT_TRUE(p->trainable()) << name;
    ASSERT_EQ(p->grad.shape(), g_ref.shape()) << name;
    ++compared;
    if (norm(g_ref) < 1e-6 * total) {
      // A conv bias before a training-mode BN: the batch mean removes it, so its gradient is
      // zero by construction and PyTorch's is rounding noise.
      EXPECT_LT(norm(p->grad), 1e-6 * total) << name;
      continue;
    }
    EXPECT_LE(testing::relative_l2(p->grad, g_ref), 1e-5) << name;
  }
  EXPECT_GE(compared, 2u);
}

INSTANTIATE_TEST_SUITE_P(Modules, FakeQuantModuleGolden,
                         ::testing::Values("conv_bn_relu", "linear"),
                         [](const auto& module) { return module.param; });

}  // namespace
}  // namespace qforge
