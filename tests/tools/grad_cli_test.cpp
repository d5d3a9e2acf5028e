// `qforge grad` end to end: the written .npz holds the loss and the gradients that the library
// computes, bit for bit, through fake quant keyed by the model's initializers too, and --points
// the values at the Q/DQ points; bad labels, a model without parameters, an unwritable output
// and --points without --fake-quant each give one clear line, a non-zero exit and no file.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "graph/onnx_import.h"
#include "quant/calibration.h"
#include "quant/fake_quant_training.h"
#include "quant/placement.h"
#include "runtime/training.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/onnx_models.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using testing::data_path;
using testing::expect_one_line_error;
using testing::run_cli;
using testing::TempDir;

const std::string kResnet = data_path("models/resnet_bn.onnx");
const std::string kInput = data_path("golden/grad/batch_input.npy");
const std::string kLabels = data_path("golden/grad/batch_labels.npy");

TEST(GradCli, WritesLossAndEveryGradient) {
  TempDir dir;
  const std::string out = dir.file("grads.npz");
  auto r = run_cli("grad " + kResnet + " --data " + kInput + " --labels " + kLabels + " -o " + out +
                   " --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("gradients  44 written"), std::string::npos) << r.out;
  const auto written = io::read_npz(out);
  const runtime::GradientResult want = runtime::cross_entropy_gradients(
      *graph::load_onnx(kResnet), io::read_npy(kInput), io::read_npy(kLabels));
  ASSERT_EQ(written.size(), want.gradients.size() + 1);
  EXPECT_EQ(written.at("loss").data<float>()[0], want.loss);
  for (const auto& [name, grad] : want.gradients) {
    const kernels::Tensor& got = written.at(name);
    ASSERT_EQ(got.shape(), grad.shape()) << name;
    EXPECT_EQ(std::memcmp(got.raw(), grad.raw(), grad.nbytes()), 0) << name;
  }
}

// Through fake quant the written gradients are the library's, keyed by the model's
// initializers: the Linear head's gradient under fc.weight in its ONNX shape, not the fused
// graph's 1×1 convolution weight.
TEST(GradCli, FakeQuantGradientsAreKeyedByTheInitializers) {
  TempDir dir;
  const std::string out = dir.file("grads.npz");
  auto r = run_cli("grad " + kResnet + " --data " + kInput + " --labels " + kLabels + " -o " + out +
                   " --fake-quant --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("gradients  44 written"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2 pulled back from the fused graph's derived tensors"), std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("with no initializer"), std::string::npos) << r.out;
  const auto written = io::read_npz(out);
  const runtime::GradientResult want = quant::fake_quant_gradients(
      *graph::load_onnx(kResnet), io::read_npy(kInput), io::read_npy(kLabels));
  ASSERT_EQ(written.size(), want.gradients.size() + 1);
  EXPECT_EQ(written.at("loss").data<float>()[0], want.loss);
  for (const auto& [name, grad] : want.gradients) {
    const kernels::Tensor& got = written.at(name);
    ASSERT_EQ(got.shape(), grad.shape()) << name;
    EXPECT_EQ(std::memcmp(got.raw(), grad.raw(), grad.nbytes()), 0) << name;
  }
  EXPECT_EQ(written.at("fc.weight").shape(), (kernels::Shape{10, 128}));
  EXPECT_EQ(written.count("/fc/Gemm_conv_weight"), 0u);
}

// --points writes what each activation quantizer read in the training forward and its amax,
// every point of the plan, without changing a bit of the gradients; the model input's point
// holds the batch itself.
TEST(GradCli, PointsHoldWhatEachQuantizerRead) {
  TempDir dir;
  const std::string out = dir.file("grads.npz");
  const std::string points = dir.file("points.npz");
  auto r = run_cli("grad " + kResnet + " --data " + kInput + " --labels " + kLabels + " -o " + out +
                   " --fake-quant --points " + points + " --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("points     15 activation points' values and amax written"),
            std::string::npos)
      << r.out;
  const kernels::Tensor input = io::read_npy(kInput);
  const auto model = graph::load_onnx(kResnet);
  const runtime::GradientResult want =
      quant::fake_quant_gradients(*model, input, io::read_npy(kLabels));
  const auto written = io::read_npz(out);
  EXPECT_EQ(written.at("loss").data<float>()[0], want.loss);
  for (const auto& [name, grad] : want.gradients) {
    EXPECT_EQ(std::memcmp(written.at(name).raw(), grad.raw(), grad.nbytes()), 0) << name;
  }

  runtime::TransformOptions transform;
  transform.batch = input.dim(0);
  auto fused = std::move(runtime::transform_model(*model, nullptr, transform).graph);
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  quant::CalibrationStats stats(*fused, plan);
  stats.observe_batch(input);
  const quant::ActivationAmax amax = stats.activation_amax(quant::Calibrator::kMax);
  const auto values = io::read_npz(points);
  ASSERT_EQ(values.size(), 2 * plan.activations.size());
  for (const quant::ActivationPoint& p : plan.activations) {
    ASSERT_TRUE(values.count(p.tensor)) << p.tensor;
    EXPECT_EQ(values.at("amax/" + p.tensor).data<float>()[0], amax.at(p.tensor)) << p.tensor;
    EXPECT_EQ(values.at(p.tensor).shape(), fused->find_value(p.tensor)->known_shape()) << p.tensor;
  }
  const kernels::Tensor& at_input = values.at("input");
  ASSERT_EQ(at_input.shape(), input.shape());
  EXPECT_EQ(std::memcmp(at_input.raw(), input.raw(), input.nbytes()), 0);
}

TEST(GradCli, PointsNeedFakeQuant) {
  TempDir dir;
  auto r = run_cli("grad " + kResnet + " --data " + kInput + " --labels " + kLabels + " -o " +
                   dir.file("g.npz") + " --points " + dir.file("p.npz"));
  expect_one_line_error(r, "--points needs --fake-quant");
  EXPECT_FALSE(std::filesystem::exists(dir.file("g.npz")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("p.npz")));
}

TEST(GradCli, HelpNamesTheInputs) {
  auto r = run_cli("grad --help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* flag : {"--data", "--labels", "--output", "--threads"}) {
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
  }
}

TEST(GradCli, LabelsOfTheWrongLengthAreRefused) {
  TempDir dir;
  io::write_npy(dir.file("labels.npy"), kernels::Tensor::from_vector<int64_t>({3}, {0, 1, 2}));
  auto r = run_cli("grad " + kResnet + " --data " + kInput + " --labels " + dir.file("labels.npy") +
                   " -o " + dir.file("g.npz"));
  expect_one_line_error(r, "must hold one label per sample of");
  EXPECT_FALSE(std::filesystem::exists(dir.file("g.npz")));
}

TEST(GradCli, LabelOutsideTheClassesIsRefused) {
  TempDir dir;
  kernels::Tensor labels = io::read_npy(kLabels);
  labels.data<int64_t>()[5] = 10;
  io::write_npy(dir.file("labels.npy"), labels);
  auto r = run_cli("grad " + kResnet + " --data " + kInput + " --labels " + dir.file("labels.npy") +
                   " -o " + dir.file("g.npz"));
  expect_one_line_error(r, "label 5 is 10, outside the model's 10 classes");
  EXPECT_FALSE(std::filesystem::exists(dir.file("g.npz")));
}

TEST(GradCli, FloatLabelsAreRefused) {
  TempDir dir;
  io::write_npy(dir.file("labels.npy"), kernels::Tensor(kernels::DType::kFloat32, {16}));
  auto r = run_cli("grad " + kResnet + " --data " + kInput + " --labels " + dir.file("labels.npy") +
                   " -o " + dir.file("g.npz"));
  expect_one_line_error(r, "must hold int64 labels");
}

TEST(GradCli, ModelWithoutParametersIsRefused) {
  TempDir dir;
  testing::write_bytes(dir.file("relu.onnx"), testing::one_node_model("Relu", "relu_0", {2, 10}));
  io::write_npy(dir.file("x.npy"), kernels::Tensor(kernels::DType::kFloat32, {2, 10}));
  io::write_npy(dir.file("labels.npy"), kernels::Tensor::from_vector<int64_t>({2}, {0, 1}));
  auto r = run_cli("grad " + dir.file("relu.onnx") + " --data " + dir.file("x.npy") + " --labels " +
                   dir.file("labels.npy") + " -o " + dir.file("g.npz"));
  expect_one_line_error(r, "no trainable float initializer");
  EXPECT_FALSE(std::filesystem::exists(dir.file("g.npz")));
}

TEST(GradCli, OutputThatIsAnInputIsRefused) {
  TempDir dir;
  io::write_npy(dir.file("labels.npy"), io::read_npy(kLabels));
  const std::string before = testing::read_text(dir.file("labels.npy"));
  auto r = run_cli("grad " + kResnet + " --data " + kInput + " --labels " + dir.file("labels.npy") +
                   " -o " + dir.file("labels.npy"));
  expect_one_line_error(r, "is the same file as");
  EXPECT_EQ(testing::read_text(dir.file("labels.npy")), before);
}

TEST(GradCli, UnwritableOutputIsRefused) {
  TempDir dir;
  auto r = run_cli("grad " + kResnet + " --data " + kInput + " --labels " + kLabels + " -o " +
                   dir.file("missing/dir/g.npz"));
  expect_one_line_error(r, "missing/dir/g.npz");
}

}  // namespace
}  // namespace qforge
