// Max and Min of one, two and three broadcast inputs and PRelu with a per-channel and a scalar
// slope as ops of the runtime: shape inference and its errors, and one graph of all of them
// (data/generate/max_min_prelu_models.py, exact ties included) against PyTorch's output and
// gradients and against ONNX Runtime.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "runtime/resolve.h"
#include "runtime/session.h"
#include "runtime/training.h"
#include "tests/support/errors.h"
#include "tests/support/op_runner.h"
#include "tests/support/ort_runner.h"
#include "tests/support/test_support.h"
#include "tests/support/training_golden.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::data_path;
using testing::expect_close_scaled;
using testing::OneNodeGraph;

TEST(MaxMinOps, AnyNumberOfInputsBroadcastTogether) {
  const Tensor a(DType::kFloat32, {2, 3, 1});
  const Tensor b(DType::kFloat32, {4});
  const Tensor c(DType::kFloat32, {3, 1});
  for (const char* op : {"Max", "Min"}) {
    EXPECT_EQ(OneNodeGraph(op, {}, {{a}}, 1).infer()[0].shape, a.shape()) << op;
    EXPECT_EQ(OneNodeGraph(op, {}, {{a}, {b}, {c}}, 1).infer()[0].shape, (kernels::Shape{2, 3, 4}))
        << op;
    const std::string prefix = std::string("shape inference: node 'node' (") + op + "): expected ";
    EXPECT_EQ(testing::error_of(
                  ErrorKind::kInvalid,
                  [&] {
                    OneNodeGraph(op, {}, {{a}, {b}, {Tensor(DType::kFloat32, {5})}}, 1).infer();
                  }),
              prefix + "shapes that broadcast, got float32[2, 3, 1], float32[4], float32[5]");
    EXPECT_EQ(
        testing::error_of(ErrorKind::kInvalid,
                          [&] {
                            OneNodeGraph(op, {}, {{a}, {Tensor(DType::kInt64, {4})}}, 1).infer();
                          }),
        prefix + "float32, int64 or int32 inputs of one dtype, got float32[2, 3, 1], int64[4]");
  }
}

TEST(MaxMinPRelu, ModelMatchesPyTorchAndOnnxRuntime) {
  const std::string path = data_path("models/ops/max_min_prelu.onnx");
  const auto golden = io::read_npz(data_path("models/ops/max_min_prelu.npz"));
  runtime::Session session(graph::load_onnx(path));
  const Tensor& x = golden.at("x");
  const std::vector<Tensor> ort = testing::run_ort(path, {x});
  const std::span<const Tensor> y = session.run(x);
  ASSERT_EQ(y.size(), 1u);
  ASSERT_EQ(ort.size(), 1u);
  expect_close_scaled(y[0], golden.at("y0"), 1e-6, "against PyTorch");
  expect_close_scaled(y[0], ort[0], 1e-6, "against ONNX Runtime");
}

// One training step: every parameter's gradient against PyTorch's. s is a zero shift of the
// input, so its gradient is the input's: ties between the input and p, q or both, and zeros at
// PRelu's kink, check the tie rules end to end.
TEST(MaxMinPRelu, TrainingGradientsMatchPyTorch) {
  auto graph = graph::load_onnx(data_path("models/ops/max_min_prelu.onnx"));
  const auto golden = io::read_npz(data_path("models/ops/max_min_prelu.npz"));
  testing::expect_training_step_matches(*graph, golden, runtime::trainable_initializers(*graph),
                                        1e-6, 5);
}

}  // namespace
}  // namespace qforge
