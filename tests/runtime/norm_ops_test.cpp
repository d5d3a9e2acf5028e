// InstanceNormalization and GroupNormalization as ops of the runtime: shape inference and its
// errors, torch.onnx's nn.GroupNorm / nn.InstanceNorm2d export (opsets 17 and 11) and
// hand-built GroupNormalization nodes (opsets 18 and 21) against PyTorch's outputs and
// gradients (data/generate/norm_models.py) and against ONNX Runtime.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "runtime/resolve.h"
#include "runtime/session.h"
#include "runtime/training.h"
#include "tests/support/errors.h"
#include "tests/support/op_runner.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"
#include "tests/support/training_golden.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Shape;
using kernels::Tensor;
using testing::data_path;
using testing::expect_close_scaled;
using testing::OneNodeGraph;
using testing::OpInput;

Tensor f32(const Shape& shape) {
  return Tensor(DType::kFloat32, shape);
}

std::string infer_error(ErrorKind kind, const std::string& op,
                        const std::map<std::string, graph::AttributeValue, std::less<>>& attributes,
                        const std::vector<OpInput>& inputs) {
  return testing::error_of(kind, [&] { OneNodeGraph(op, attributes, inputs, 1).infer(); });
}

TEST(InstanceNormOp, ShapesAndErrorsNameTheNode) {
  const Tensor x = f32({2, 3, 5, 7});
  const Tensor c3 = f32({3});
  EXPECT_EQ(
      OneNodeGraph("InstanceNormalization", {}, {{x}, {c3, true}, {c3, true}}, 1).infer()[0].shape,
      x.shape());
  const std::string prefix = "shape inference: node 'node' (InstanceNormalization): expected ";
  EXPECT_EQ(infer_error(ErrorKind::kInvalid, "InstanceNormalization", {},
                        {{f32({2, 3})}, {c3, true}, {c3, true}}),
            prefix + "input of rank >= 3 (N, C, D1, …), got [2, 3]");
  EXPECT_EQ(infer_error(ErrorKind::kInvalid, "InstanceNormalization", {},
                        {{x}, {f32({3, 1}), true}, {c3, true}}),
            prefix + "scale of shape [3], got [3, 1]");
  EXPECT_EQ(
      infer_error(ErrorKind::kInvalid, "InstanceNormalization", {}, {{x}, {c3, true}, {f32({4})}}),
      prefix + "B of shape [3], got [4]");
  EXPECT_EQ(infer_error(ErrorKind::kInvalid, "InstanceNormalization", {{"epsilon", -1e-5f}},
                        {{x}, {c3, true}, {c3, true}}),
            prefix + "attribute 'epsilon' finite and >= 0, got -0.000010");
  EXPECT_EQ(infer_error(ErrorKind::kInvalid, "InstanceNormalization", {{"epsilon", NAN}},
                        {{x}, {c3, true}, {c3, true}}),
            prefix + "attribute 'epsilon' finite and >= 0, got nan");
  EXPECT_EQ(infer_error(ErrorKind::kInvalid, "InstanceNormalization", {}, {{x}, {c3, true}}),
            prefix + "input 2 (B), got none");
  EXPECT_EQ(infer_error(ErrorKind::kUnsupported, "InstanceNormalization", {},
                        {{Tensor(DType::kInt64, {2, 3, 5})}, {c3, true}, {c3, true}}),
            prefix + "float32 input, got int64");
}

TEST(GroupNormOp, ShapesAndErrorsNameTheNode) {
  const Tensor x = f32({2, 6, 5});
  const Tensor g3 = f32({3});
  const Tensor c6 = f32({6});
  const std::map<std::string, graph::AttributeValue, std::less<>> three = {
      {"num_groups", int64_t{3}}};
  for (const Tensor& p : {g3, c6}) {
    EXPECT_EQ(
        OneNodeGraph("GroupNormalization", three, {{x}, {p, true}, {p, true}}, 1).infer()[0].shape,
        x.shape());
  }
  const std::string prefix = "shape inference: node 'node' (GroupNormalization): expected ";
  EXPECT_EQ(infer_error(ErrorKind::kInvalid, "GroupNormalization", {{"num_groups", int64_t{4}}},
                        {{x}, {c6, true}, {c6, true}}),
            prefix + "num_groups dividing the 6 channels of X [2, 6, 5], got 4");
  EXPECT_EQ(infer_error(ErrorKind::kInvalid, "GroupNormalization", {{"num_groups", int64_t{0}}},
                        {{x}, {c6, true}, {c6, true}}),
            prefix + "attribute 'num_groups' >= 1, got 0");
  const std::string missing =
      infer_error(ErrorKind::kInvalid, "GroupNormalization", {}, {{x}, {c6, true}, {c6, true}});
  EXPECT_NE(missing.find("node 'node' (GroupNormalization)"), std::string::npos) << missing;
  EXPECT_NE(missing.find("num_groups"), std::string::npos) << missing;
  EXPECT_EQ(
      infer_error(ErrorKind::kInvalid, "GroupNormalization", three, {{x}, {g3, true}, {c6, true}}),
      prefix + "scale and bias both of shape [3] (opset 18) or [6] (opset 21), got [3] and [6]");
  EXPECT_EQ(infer_error(ErrorKind::kInvalid, "GroupNormalization", three,
                        {{x}, {f32({2}), true}, {f32({2}), true}}),
            prefix +
                "scale and bias both of shape [3] (opset 18) or [6] (opset 21), got [2] and "
                "[2]");
  EXPECT_EQ(infer_error(ErrorKind::kInvalid, "GroupNormalization", three,
                        {{f32({6})}, {g3, true}, {g3, true}}),
            prefix + "input X of rank >= 2 (N, C, …), got [6]");
  EXPECT_EQ(infer_error(ErrorKind::kInvalid, "GroupNormalization",
                        {{"num_groups", int64_t{3}}, {"epsilon", INFINITY}},
                        {{x}, {g3, true}, {g3, true}}),
            prefix + "attribute 'epsilon' finite and >= 0, got inf");
  EXPECT_EQ(infer_error(ErrorKind::kUnsupported, "GroupNormalization",
                        {{"num_groups", int64_t{3}}, {"stash_type", int64_t{0}}},
                        {{x}, {c6, true}, {c6, true}}),
            prefix + "stash_type 1 (float32 statistics), got 0");
}

const char* const kNormModels[] = {"instance_group_norm", "instance_group_norm_opset11",
                                   "group_norm_opset18", "group_norm_opset21"};

// The golden of each model: instance_group_norm_opset11 is the same module and input as
// instance_group_norm.
std::string golden_of(const std::string& model) {
  return model == "instance_group_norm_opset11" ? "instance_group_norm" : model;
}

TEST(NormOps, ModelsMatchPyTorch) {
  for (const char* name : kNormModels) {
    SCOPED_TRACE(name);
    const auto golden = io::read_npz(data_path("models/ops/" + golden_of(name) + ".npz"));
    runtime::Session session(
        graph::load_onnx(data_path(std::string("models/ops/") + name + ".onnx")));
    const std::span<const Tensor> y = session.run(golden.at("x"));
    ASSERT_EQ(y.size(), 1u);
    expect_close_scaled(y[0], golden.at("y0"), 1e-5, "y0");
  }
}

// The exports fix the batch at 2; at batch 3 (the two golden samples and the first again) each
// sample still gets PyTorch's output, through nn.GroupNorm's Reshape to [0, groups, -1].
TEST(NormOps, ModelsRunAtAnotherBatch) {
  for (const char* name : kNormModels) {
    SCOPED_TRACE(name);
    const auto golden = io::read_npz(data_path("models/ops/" + golden_of(name) + ".npz"));
    const Tensor& x = golden.at("x");
    const Tensor& want = golden.at("y0");
    Shape shape = x.shape();
    shape[0] = 3;
    Tensor x3(DType::kFloat32, shape);
    const int64_t sample = x.numel() / 2;
    std::copy_n(x.data<float>(), 2 * sample, x3.data<float>());
    std::copy_n(x.data<float>(), sample, x3.data<float>() + 2 * sample);
    runtime::Session session(
        graph::load_onnx(data_path(std::string("models/ops/") + name + ".onnx")));
    const std::span<const Tensor> y = session.run(x3);
    ASSERT_EQ(y.size(), 1u);
    Shape out_shape = want.shape();
    out_shape[0] = 3;
    ASSERT_EQ(y[0].shape(), out_shape);
    const int64_t out_sample = want.numel() / 2;
    Tensor want3(DType::kFloat32, out_shape);
    std::copy_n(want.data<float>(), 2 * out_sample, want3.data<float>());
    std::copy_n(want.data<float>(), out_sample, want3.data<float>() + 2 * out_sample);
    expect_close_scaled(y[0], want3, 1e-5, "y0 at batch 3");
  }
}

TEST(NormOps, ModelsMatchOnnxRuntime) {
  for (const char* name : kNormModels) {
    SCOPED_TRACE(name);
    const std::string path = data_path(std::string("models/ops/") + name + ".onnx");
    runtime::Session session(graph::load_onnx(path));
    const graph::Value* input = session.graph().inputs().at(0);
    ASSERT_TRUE(input->has_shape());
    const Tensor x = testing::random_f32(*input->shape(), 5, -2.0f, 2.0f);
    const std::vector<Tensor> want = testing::run_ort(path, {x});
    const std::span<const Tensor> got = session.run(x);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      expect_close_scaled(got[i], want[i], 1e-5, "output " + std::to_string(i));
    }
  }
}

// One training step: the output and every parameter's gradient against PyTorch's. The first
// parameter (a Conv or a Mul weight) sits before the normalisations, so its gradient carries
// theirs with respect to their input.
TEST(NormOps, TrainingGradientsMatchPyTorch) {
  const std::map<std::string, size_t> parameter_count = {
      {"instance_group_norm", 8}, {"group_norm_opset18", 3}, {"group_norm_opset21", 3}};
  for (const auto& [name, count] : parameter_count) {
    SCOPED_TRACE(name);
    auto graph = graph::load_onnx(data_path("models/ops/" + name + ".onnx"));
    const auto golden = io::read_npz(data_path("models/ops/" + name + ".npz"));
    // PyTorch's parameters: the initializers with a golden gradient. The constant scale and
    // bias torch.onnx writes for nn.GroupNorm's inner InstanceNormalization and for the
    // affine-free InstanceNorm2d are not parameters in PyTorch and stay constants here.
    const std::vector<std::string> initializers = runtime::trainable_initializers(*graph);
    std::vector<std::string> parameters;
    for (const auto& [key, value] : golden) {
      if (key.rfind("grad/", 0) != 0) continue;
      parameters.push_back(key.substr(5));
      EXPECT_NE(std::find(initializers.begin(), initializers.end(), parameters.back()),
                initializers.end())
          << parameters.back();
    }
    testing::expect_training_step_matches(*graph, golden, parameters, 1e-5, count);
  }
}

}  // namespace
}  // namespace qforge
