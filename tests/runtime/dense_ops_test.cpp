// The dense OpDefs through the registry: ONNX attribute semantics (auto_pad, ceil_mode, Gemm
// broadcast, MatMul vectors, axes), agreement with the reference kernels, and the validation
// errors shape inference reports.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "kernels/reference/dense_reference.h"
#include "runtime/op_registry.h"
#include "runtime/threads.h"
#include "tests/support/op_runner.h"

namespace qforge::runtime {
namespace {

using graph::AttributeValue;
using Attributes = std::map<std::string, AttributeValue, std::less<>>;

Tensor random_tensor(Shape shape, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  Tensor t(DType::kFloat32, std::move(shape));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (float& v : t.span<float>()) v = dist(rng);
  return t;
}

using testing::OpInput;

// One node in a graph of its own, inferred, created and run.
class OneNode : public testing::OneNodeGraph {
 public:
  OneNode(const std::string& op_type, const Attributes& attributes,
          const std::vector<OpInput>& inputs, size_t outputs, std::vector<size_t> used = {0})
      : OneNodeGraph(op_type, attributes, inputs, outputs) {
    for (size_t i : used) graph_.mark_output(node_->output(i));
  }

  // Runs the node; outputs not in `used` are left undefined.
  std::vector<Tensor> run(const std::vector<size_t>& used = {0}) {
    const std::vector<TensorInfo> out_infos = infer();
    std::unique_ptr<OpKernel> kernel = def_->create(*node_, infos_, out_infos);
    std::vector<Tensor> outputs(out_infos.size());
    for (size_t i : used) outputs[i] = Tensor(out_infos[i].dtype, out_infos[i].shape);
    std::vector<Tensor> inputs;
    for (const OpInput& in : inputs_) inputs.push_back(in.value);
    std::vector<std::byte> workspace(kernel->workspace_bytes() + 64);
    kernel->forward(inputs, outputs, workspace.data());
    return outputs;
  }
};

void expect_close(const Tensor& actual, const std::vector<float>& expected, double tol,
                  const std::string& what) {
  ASSERT_EQ(actual.numel(), static_cast<int64_t>(expected.size())) << what;
  const float* a = actual.data<float>();
  int failures = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (!(std::abs(a[i] - expected[i]) <= tol * (1.0 + std::abs(expected[i])))) {
      if (++failures <= 5)
        ADD_FAILURE() << what << ": element " << i << " is " << a[i] << ", expected "
                      << expected[i];
    }
  }
  EXPECT_EQ(failures, 0) << what;
}

// Runs fn, expecting an Error of `kind` whose message holds every one of `parts`.
template <class Fn>
void expect_error(Fn&& fn, ErrorKind kind, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind)) << e.what();
    for (const std::string& p : parts) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\nlacks: " << p;
    }
  }
}

class DenseOps : public ::testing::Test {
 protected:
  void SetUp() override {
    previous_threads_ = runtime::num_threads();
    runtime::set_num_threads(2);
  }
  void TearDown() override { runtime::set_num_threads(previous_threads_); }

 private:
  int previous_threads_ = 1;
};

TEST_F(DenseOps, RegistersTheDenseFamily) {
  for (const char* op : {"Conv", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization",
                         "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Softmax"}) {
    EXPECT_NE(builtin_ops().find(op), nullptr) << op;
  }
}

// ---------------------------------------------------------------------------------------------
// Conv

std::vector<float> reference_conv(const kernels::ConvGeometry& g, const Tensor& x, const Tensor& w,
                                  const Tensor* b) {
  std::vector<float> y(static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w));
  kernels::reference::conv2d(g, x.data<float>(), w.data<float>(), b ? b->data<float>() : nullptr,
                             y.data());
  return y;
}

TEST_F(DenseOps, ConvAutoPadSameSplitsOddPaddingAsOnnxSays) {
  const Tensor x = random_tensor({2, 3, 7, 7}, 1);
  const Tensor w = random_tensor({4, 3, 3, 4}, 2);
  const Tensor b = random_tensor({4}, 3);
  for (const char* mode : {"SAME_UPPER", "SAME_LOWER"}) {
    OneNode node("Conv", {{"auto_pad", std::string(mode)}, {"strides", std::vector<int64_t>{1, 2}}},
                 {{x}, {w, true}, {b, true}}, 1);
    const auto infos = node.infer();
    // Height: stride 1, kernel 3 -> pads 1/1. Width: out 4, total pad 3*2 + 4 - 7 = 3.
    EXPECT_EQ(infos[0].shape, (Shape{2, 4, 7, 4})) << mode;
    kernels::ConvGeometry g;
    g.batch = 2;
    g.in_channels = 3;
    g.in_h = g.in_w = 7;
    g.out_channels = 4;
    g.out_h = 7;
    g.out_w = 4;
    g.kernel_h = 3;
    g.kernel_w = 4;
    g.stride_w = 2;
    g.pad_top = 1;
    g.pad_left = std::string(mode) == "SAME_UPPER" ? 1 : 2;
    expect_close(node.run()[0], reference_conv(g, x, w, &b), 1e-5, mode);
  }
}

TEST_F(DenseOps, ConvExplicitPadsDilationsGroupsAndValid) {
  const Tensor x = random_tensor({1, 6, 11, 9}, 4);
  const Tensor w = random_tensor({4, 3, 3, 3}, 5);
  OneNode node("Conv",
               {{"group", int64_t{2}},
                {"dilations", std::vector<int64_t>{2, 1}},
                {"pads", std::vector<int64_t>{0, 2, 1, 0}},
                {"strides", std::vector<int64_t>{2, 2}},
                {"kernel_shape", std::vector<int64_t>{3, 3}}},
               {{x}, {w}}, 1);
  // H: (11 + 0 + 1 - 5) / 2 + 1 = 4; W: (9 + 2 + 0 - 3) / 2 + 1 = 5.
  EXPECT_EQ(node.infer()[0].shape, (Shape{1, 4, 4, 5}));
  kernels::ConvGeometry g;
  g.in_channels = 6;
  g.in_h = 11;
  g.in_w = 9;
  g.out_channels = 4;
  g.out_h = 4;
  g.out_w = 5;
  g.kernel_h = g.kernel_w = 3;
  g.stride_h = g.stride_w = 2;
  g.dilation_h = 2;
  g.pad_left = 2;
  g.group = 2;
  expect_close(node.run()[0], reference_conv(g, x, w, nullptr), 1e-5, "conv");

  OneNode valid("Conv", {{"auto_pad", std::string("VALID")}},
                {{x}, {random_tensor({2, 6, 3, 3}, 6)}}, 1);
  EXPECT_EQ(valid.infer()[0].shape, (Shape{1, 2, 9, 7}));
}

TEST_F(DenseOps, Conv1dRunsOnTheWidthAxis) {
  const Tensor x = random_tensor({3, 4, 13}, 7);
  const Tensor w = random_tensor({5, 4, 3}, 8);
  OneNode node("Conv", {{"pads", std::vector<int64_t>{1, 2}}, {"strides", std::vector<int64_t>{2}}},
               {{x}, {w}}, 1);
  EXPECT_EQ(node.infer()[0].shape, (Shape{3, 5, 7}));
  kernels::ConvGeometry g;
  g.batch = 3;
  g.in_channels = 4;
  g.in_w = 13;
  g.out_channels = 5;
  g.out_w = 7;
  g.kernel_w = 3;
  g.stride_w = 2;
  g.pad_left = 1;
  expect_close(node.run()[0], reference_conv(g, x, w, nullptr), 1e-5, "conv1d");
}

TEST_F(DenseOps, ConvConstantAndLiveWeightsAgree) {
  // Large enough for the Winograd path, which transforms constant weights at create time.
  const Tensor x = random_tensor({2, 16, 20, 18}, 11);
  const Tensor w = random_tensor({24, 16, 3, 3}, 12);
  const Tensor b = random_tensor({24}, 13);
  const Attributes pads{{"pads", std::vector<int64_t>{1, 1, 1, 1}}};
  OneNode constant("Conv", pads, {{x}, {w, true}, {b, true}}, 1);
  OneNode live("Conv", pads, {{x}, {w}, {b}}, 1);
  const Tensor yc = constant.run()[0];
  const Tensor yl = live.run()[0];
  ASSERT_EQ(yc.shape(), (Shape{2, 24, 20, 18}));
  EXPECT_EQ(std::memcmp(yc.raw(), yl.raw(), yc.nbytes()), 0);
  kernels::ConvGeometry g;
  g.batch = 2;
  g.in_channels = 16;
  g.in_h = g.out_h = 20;
  g.in_w = g.out_w = 18;
  g.out_channels = 24;
  g.kernel_h = g.kernel_w = 3;
  g.pad_top = g.pad_left = 1;
  expect_close(yc, reference_conv(g, x, w, &b), 1e-4, "winograd conv");
}

TEST_F(DenseOps, ConvRejectsInconsistentShapes) {
  const Tensor x = random_tensor({1, 4, 5, 5}, 9);
  expect_error(
      [&] {
        OneNode("Conv", {}, {{x}, {random_tensor({2, 3, 3, 3}, 1)}}, 1).infer();
      },
      ErrorKind::kInvalid,
      {"shape inference: node 'node' (Conv): expected weight input channels",
       "got W [2, 3, 3, 3] for input [1, 4, 5, 5]"});
  expect_error(
      [&] {
        OneNode("Conv", {{"group", int64_t{2}}}, {{x}, {random_tensor({3, 2, 3, 3}, 1)}}, 1)
            .infer();
      },
      ErrorKind::kInvalid, {"divisible by group 2"});
  expect_error(
      [&] {
        OneNode("Conv", {}, {{x}, {random_tensor({2, 4, 7, 7}, 1)}}, 1).infer();
      },
      ErrorKind::kInvalid, {"expected a window that fits the input [5, 5]"});
  expect_error(
      [&] {
        OneNode("Conv", {}, {{x}, {random_tensor({2, 4, 3, 3}, 1)}, {random_tensor({3}, 1)}}, 1)
            .infer();
      },
      ErrorKind::kInvalid, {"expected bias B of shape [2], got [3]"});
  expect_error(
      [&] {
        OneNode("Conv", {},
                {{random_tensor({1, 2, 3, 3, 3, 3}, 1)}, {random_tensor({2, 2, 1, 1, 1, 1}, 1)}}, 1)
            .infer();
      },
      ErrorKind::kUnsupported, {"expected 1-D, 2-D or 3-D convolution"});
  expect_error(
      [&] {
        OneNode("Conv", {{"auto_pad", std::string("SAME")}},
                {{x}, {random_tensor({2, 4, 3, 3}, 1)}}, 1)
            .infer();
      },
      ErrorKind::kInvalid, {"got 'SAME'"});
}

// ---------------------------------------------------------------------------------------------
// Gemm, MatMul

TEST_F(DenseOps, GemmTransposesAndBroadcastsC) {
  const int64_t m = 5, n = 7, k = 3;
  const Tensor a = random_tensor({k, m}, 10);  // transA
  const Tensor b = random_tensor({n, k}, 11);  // transB
  struct CCase {
    Shape shape;
    kernels::GemmBias bias;
  };
  for (const CCase& c :
       {CCase{{}, kernels::GemmBias::kScalar}, CCase{{n}, kernels::GemmBias::kRow},
        CCase{{1, n}, kernels::GemmBias::kRow}, CCase{{m, 1}, kernels::GemmBias::kColumn},
        CCase{{m, n}, kernels::GemmBias::kFull}}) {
    const Tensor bias = random_tensor(c.shape, 12);
    OneNode node("Gemm",
                 {{"transA", int64_t{1}}, {"transB", int64_t{1}}, {"alpha", 0.5f}, {"beta", 2.0f}},
                 {{a}, {b, true}, {bias, true}}, 1);
    EXPECT_EQ(node.infer()[0].shape, (Shape{m, n}));
    kernels::GemmDims d;
    d.m = m;
    d.n = n;
    d.k = k;
    d.trans_a = d.trans_b = kernels::Transpose::kYes;
    d.alpha = 0.5f;
    d.beta = 2.0f;
    d.bias = c.bias;
    std::vector<float> expected(static_cast<size_t>(m * n));
    kernels::reference::gemm(d, a.data<float>(), b.data<float>(), bias.data<float>(),
                             expected.data());
    expect_close(node.run()[0], expected, 1e-5, "gemm C " + kernels::shape_str(c.shape));
  }
  expect_error(
      [&] {
        OneNode("Gemm", {}, {{a}, {b}}, 1).infer();
      },
      ErrorKind::kInvalid,
      {"node 'node' (Gemm): expected op(A) [M, K] and op(B) [K, N] with equal K",
       "got A [3, 5] and B [7, 3]"});
  expect_error(
      [&] {
        OneNode("Gemm", {{"transA", int64_t{1}}, {"transB", int64_t{1}}},
                {{a}, {b}, {random_tensor({2, 7}, 1)}}, 1)
            .infer();
      },
      ErrorKind::kInvalid, {"expected C broadcastable to [5, 7], got [2, 7]"});
}

TEST_F(DenseOps, MatMulFollowsNumpyShapes) {
  struct Case {
    Shape a, b, out;
  };
  for (const Case& c :
       {Case{{4}, {4, 3}, {3}}, Case{{2, 5, 4}, {4}, {2, 5}},
        Case{{2, 1, 5, 4}, {3, 4, 6}, {2, 3, 5, 6}}, Case{{5, 4}, {4, 6}, {5, 6}}}) {
    const Tensor a = random_tensor(c.a, 20);
    const Tensor b = random_tensor(c.b, 21);
    OneNode node("MatMul", {}, {{a}, {b}}, 1);
    EXPECT_EQ(node.infer()[0].shape, c.out);
    std::vector<float> expected;
    kernels::reference::matmul(c.a, a.data<float>(), c.b, b.data<float>(), expected);
    expect_close(node.run()[0], expected, 1e-5, "matmul " + kernels::shape_str(c.a));
  }
  expect_error(
      [&] {
        OneNode("MatMul", {}, {{random_tensor({2, 3}, 1)}, {random_tensor({4, 3}, 1)}}, 1).infer();
      },
      ErrorKind::kInvalid,
      {"(MatMul): expected A [..., M, K] and B [..., K, N]", "got A [2, 3] and B [4, 3]"});
}

// ---------------------------------------------------------------------------------------------
// Normalisation

TEST_F(DenseOps, BatchNormConstantAndLiveParametersAgree) {
  const Tensor x = random_tensor({3, 5, 4, 3}, 30, -2, 2);
  const Tensor gamma = random_tensor({5}, 31);
  const Tensor beta = random_tensor({5}, 32);
  const Tensor mean = random_tensor({5}, 33);
  const Tensor var = random_tensor({5}, 34, 0.1f, 2.0f);
  std::vector<float> expected(static_cast<size_t>(x.numel()));
  kernels::reference::batch_norm(x.data<float>(), 3, 5, 12, gamma.data<float>(), beta.data<float>(),
                                 mean.data<float>(), var.data<float>(), 1e-3f, expected.data());
  for (bool constant : {true, false}) {
    OneNode node("BatchNormalization", {{"epsilon", 1e-3f}},
                 {{x}, {gamma, constant}, {beta, constant}, {mean, constant}, {var, constant}}, 1);
    expect_close(node.run()[0], expected, 1e-5, constant ? "constant" : "live");
  }
  expect_error(
      [&] {
        OneNode("BatchNormalization", {{"training_mode", int64_t{1}}},
                {{x}, {gamma}, {beta}, {mean}, {var}}, 1)
            .infer();
      },
      ErrorKind::kUnsupported, {"(BatchNormalization): expected training_mode 0", "got 1"});
  expect_error(
      [&] {
        OneNode("BatchNormalization", {}, {{x}, {gamma}, {beta}, {mean}, {random_tensor({4}, 1)}},
                1)
            .infer();
      },
      ErrorKind::kInvalid, {"expected input_var of shape [5], got [4]"});
  expect_error(
      [&] {
        OneNode("BatchNormalization", {}, {{x}, {gamma}, {beta}, {mean}, {var}}, 3, {0, 1}).infer();
      },
      ErrorKind::kInvalid, {"expected only output Y in use when training_mode is 0"});
}

TEST_F(DenseOps, LayerNormOverTrailingAxesWithBroadcastScaleAndStatistics) {
  const Tensor x = random_tensor({2, 3, 4}, 40, -3, 3);
  const Tensor scale_full = random_tensor({3, 4}, 41);
  const Tensor bias_full = random_tensor({3, 4}, 42);
  // Expected: normalise each of the 2 rows of 12 values.
  std::vector<float> y(24), mean(2), inv(2);
  kernels::reference::layer_norm(x.data<float>(), 2, 12, scale_full.data<float>(),
                                 bias_full.data<float>(), 1e-5f, y.data(), mean.data(), inv.data());
  OneNode node("LayerNormalization", {{"axis", int64_t{1}}}, {{x}, {scale_full, true}, {bias_full}},
               3, {0, 1, 2});
  const auto infos = node.infer();
  EXPECT_EQ(infos[1].shape, (Shape{2, 1, 1}));
  EXPECT_EQ(infos[2].shape, (Shape{2, 1, 1}));
  const auto out = node.run({0, 1, 2});
  expect_close(out[0], y, 1e-5, "layer norm");
  expect_close(out[1], mean, 1e-5, "mean");
  expect_close(out[2], inv, 1e-5, "inv std dev");

  // A [4] scale broadcast over the [3, 4] normalised shape, constant or live.
  const Tensor scale4 = random_tensor({4}, 43);
  std::vector<float> scale_expanded(12);
  for (int i = 0; i < 12; ++i) scale_expanded[static_cast<size_t>(i)] = scale4.data<float>()[i % 4];
  kernels::reference::layer_norm(x.data<float>(), 2, 12, scale_expanded.data(), nullptr, 1e-5f,
                                 y.data(), nullptr, nullptr);
  for (bool constant : {true, false}) {
    OneNode bcast("LayerNormalization", {{"axis", int64_t{-2}}}, {{x}, {scale4, constant}}, 1);
    expect_close(bcast.run()[0], y, 1e-5, constant ? "constant broadcast" : "live broadcast");
  }
  expect_error(
      [&] {
        OneNode("LayerNormalization", {}, {{x}, {random_tensor({3}, 1)}}, 1).infer();
      },
      ErrorKind::kInvalid, {"expected Scale broadcastable to the normalized shape [4], got [3]"});
  expect_error(
      [&] {
        OneNode("LayerNormalization", {{"axis", int64_t{3}}}, {{x}, {scale4}}, 1).infer();
      },
      ErrorKind::kInvalid, {"expected axis in [-3, 3), got 3"});
}

TEST_F(DenseOps, SoftmaxDefaultsToTheLastAxis) {
  const Tensor x = random_tensor({2, 3, 4}, 50, -5, 5);
  for (int64_t axis : {-1, 1, 0}) {
    const int64_t a = axis < 0 ? axis + 3 : axis;
    kernels::SoftmaxDims d;
    d.outer = a == 0 ? 1 : (a == 1 ? 2 : 6);
    d.axis_size = x.shape()[static_cast<size_t>(a)];
    d.inner = a == 2 ? 1 : (a == 1 ? 4 : 12);
    std::vector<float> expected(24);
    kernels::reference::softmax(d, x.data<float>(), expected.data());
    Attributes attrs;
    if (axis != -1) attrs["axis"] = axis;
    OneNode node("Softmax", attrs, {{x}}, 1);
    expect_close(node.run()[0], expected, 1e-6, "softmax axis " + std::to_string(axis));
  }
  expect_error(
      [&] {
        OneNode("Softmax", {{"axis", int64_t{-4}}}, {{x}}, 1).infer();
      },
      ErrorKind::kInvalid, {"(Softmax): expected axis in [-3, 3), got -4"});
}

// ---------------------------------------------------------------------------------------------
// Pools and reductions

TEST_F(DenseOps, MaxPoolCeilModeDropsWindowsStartingInPadding) {
  const Tensor x = random_tensor({1, 2, 5, 5}, 60);
  OneNode node("MaxPool",
               {{"kernel_shape", std::vector<int64_t>{2, 2}},
                {"strides", std::vector<int64_t>{2, 2}},
                {"pads", std::vector<int64_t>{1, 1, 1, 1}},
                {"ceil_mode", int64_t{1}}},
               {{x}}, 2, {0, 1});
  // ceil((5 + 2 - 2) / 2) + 1 = 4, but the 4th window would start in the end padding.
  const auto infos = node.infer();
  EXPECT_EQ(infos[0].shape, (Shape{1, 2, 3, 3}));
  EXPECT_EQ(infos[1].dtype, DType::kInt64);
  kernels::PoolGeometry g;
  g.channels = 2;
  g.in_h = g.in_w = 5;
  g.out_h = g.out_w = 3;
  g.kernel_h = g.kernel_w = 2;
  g.stride_h = g.stride_w = 2;
  g.pad_top = g.pad_left = g.pad_bottom = g.pad_right = 1;
  std::vector<float> y(18);
  std::vector<int64_t> idx(18);
  kernels::reference::max_pool2d(g, x.data<float>(), y.data(), idx.data(),
                                 kernels::IndexOrder::kRowMajor);
  const auto out = node.run({0, 1});
  expect_close(out[0], y, 0, "max pool");
  EXPECT_EQ(out[1].to_int64_vector(), idx);

  OneNode plain("MaxPool",
                {{"kernel_shape", std::vector<int64_t>{3, 3}},
                 {"ceil_mode", int64_t{1}},
                 {"strides", std::vector<int64_t>{2, 2}}},
                {{x}}, 1);
  EXPECT_EQ(plain.infer()[0].shape, (Shape{1, 2, 2, 2}));
  expect_error(
      [&] {
        OneNode("MaxPool",
                {{"kernel_shape", std::vector<int64_t>{2, 2}},
                 {"pads", std::vector<int64_t>{2, 0, 0, 0}}},
                {{x}}, 1)
            .infer();
      },
      ErrorKind::kInvalid, {"(MaxPool): expected pads smaller than kernel_shape [2, 2]"});
  expect_error([&] { OneNode("MaxPool", {}, {{x}}, 1).infer(); }, ErrorKind::kInvalid,
               {"expected attribute 'kernel_shape'"});
}

TEST_F(DenseOps, AveragePoolCountsPaddingOnRequest) {
  const Tensor x = random_tensor({2, 3, 6, 7}, 70);
  for (int64_t include : {0, 1}) {
    OneNode node("AveragePool",
                 {{"kernel_shape", std::vector<int64_t>{3, 3}},
                  {"strides", std::vector<int64_t>{2, 2}},
                  {"pads", std::vector<int64_t>{1, 1, 1, 1}},
                  {"count_include_pad", include},
                  {"ceil_mode", int64_t{1}}},
                 {{x}}, 1);
    EXPECT_EQ(node.infer()[0].shape, (Shape{2, 3, 4, 4}));
    kernels::PoolGeometry g;
    g.batch = 2;
    g.channels = 3;
    g.in_h = 6;
    g.in_w = 7;
    g.out_h = g.out_w = 4;
    g.kernel_h = g.kernel_w = 3;
    g.stride_h = g.stride_w = 2;
    g.pad_top = g.pad_left = g.pad_bottom = g.pad_right = 1;
    std::vector<float> expected(2 * 3 * 16);
    kernels::reference::average_pool2d(
        g, include ? kernels::PadCounting::kIncludePad : kernels::PadCounting::kExcludePad,
        x.data<float>(), expected.data());
    expect_close(node.run()[0], expected, 1e-6, "average pool include " + std::to_string(include));
  }
}

TEST_F(DenseOps, GlobalAveragePoolKeepsUnitSpatialAxes) {
  const Tensor x = random_tensor({2, 3, 5, 7}, 80);
  OneNode node("GlobalAveragePool", {}, {{x}}, 1);
  EXPECT_EQ(node.infer()[0].shape, (Shape{2, 3, 1, 1}));
  std::vector<float> expected(6);
  const Shape shape{6, 35};
  const std::vector<int64_t> axes{1};
  kernels::reference::reduce_mean(shape, axes, x.data<float>(), expected.data());
  expect_close(node.run()[0], expected, 1e-6, "global average pool");
}

TEST_F(DenseOps, ReduceMeanAxesAndKeepdims) {
  const Tensor x = random_tensor({2, 3, 4, 5}, 90);
  struct Case {
    std::vector<int64_t> axes;  // empty: attribute absent
    int64_t keepdims;
    Shape out;
    std::vector<int64_t> normalized;
  };
  for (const Case& c : {Case{{-1}, 1, {2, 3, 4, 1}, {3}}, Case{{1, -1}, 0, {2, 4}, {1, 3}},
                        Case{{}, 1, {1, 1, 1, 1}, {0, 1, 2, 3}}, Case{{}, 0, {}, {0, 1, 2, 3}},
                        Case{{2, 3}, 1, {2, 3, 1, 1}, {2, 3}}}) {
    Attributes attrs{{"keepdims", c.keepdims}};
    if (!c.axes.empty()) attrs["axes"] = c.axes;
    OneNode node("ReduceMean", attrs, {{x}}, 1);
    EXPECT_EQ(node.infer()[0].shape, c.out);
    std::vector<float> expected(static_cast<size_t>(kernels::shape_numel(c.out)));
    kernels::reference::reduce_mean(x.shape(), c.normalized, x.data<float>(), expected.data());
    expect_close(node.run()[0], expected, 1e-6, "reduce mean " + kernels::shape_str(c.axes));
  }
  expect_error(
      [&] {
        OneNode("ReduceMean", {{"axes", std::vector<int64_t>{1, -3}}}, {{x}}, 1).infer();
      },
      ErrorKind::kInvalid, {"(ReduceMean): expected distinct axes, got [1, -3]"});
  expect_error(
      [&] {
        OneNode("ReduceMean", {{"axes", std::vector<int64_t>{4}}}, {{x}}, 1).infer();
      },
      ErrorKind::kInvalid, {"expected axes in [-4, 4), got 4"});
}

TEST_F(DenseOps, NonFloatInputIsUnsupported) {
  Tensor x(DType::kInt64, {2, 3});
  expect_error([&] { OneNode("Softmax", {}, {{x}}, 1).infer(); }, ErrorKind::kUnsupported,
               {"(Softmax): expected float32 input, got int64"});
}

}  // namespace
}  // namespace qforge::runtime
