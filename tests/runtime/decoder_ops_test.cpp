// Split, Resize and ConvTranspose as ops of the runtime: shape inference and its errors, every
// model of data/models/ops (torch.onnx exports and onnx.helper forms, data/generate/op_models.py,
// with Exp, Log, Softplus, Max, Min, Greater, Less and PRelu too) against ONNX Runtime, and a graph
// of Split, Resize and ConvTranspose trained against PyTorch's gradients.
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
using testing::error_of;
using testing::expect_close_scaled;
using testing::OneNodeGraph;
using testing::OpInput;

Tensor ints(const std::vector<int64_t>& v) {
  return Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v);
}

Tensor floats(const std::vector<float>& v) {
  return Tensor::from_vector<float>({static_cast<int64_t>(v.size())}, v);
}

TEST(SplitOp, SizesFromTheInputTheOpset18CountOrEqualParts) {
  const Tensor x(DType::kFloat32, {2, 7, 3});
  auto shapes = [](const std::vector<runtime::TensorInfo>& infos) {
    std::vector<Shape> out;
    for (const auto& i : infos) out.push_back(i.shape);
    return out;
  };
  EXPECT_EQ(
      shapes(
          OneNodeGraph("Split", {{"axis", int64_t{1}}}, {{x}, {ints({2, 0, 5}), true}}, 3).infer()),
      (std::vector<Shape>{{2, 2, 3}, {2, 0, 3}, {2, 5, 3}}));
  // num_outputs (opset 18): ceil(7 / 3) = 3 each, the last one smaller.
  EXPECT_EQ(
      shapes(OneNodeGraph("Split", {{"axis", int64_t{-2}}, {"num_outputs", int64_t{3}}}, {{x}}, 3)
                 .infer()),
      (std::vector<Shape>{{2, 3, 3}, {2, 3, 3}, {2, 1, 3}}));
  EXPECT_EQ(shapes(OneNodeGraph("Split", {{"axis", int64_t{0}}}, {{x}}, 2).infer()),
            (std::vector<Shape>{{1, 7, 3}, {1, 7, 3}}));

  const std::string bad_sum = error_of(ErrorKind::kInvalid, [&] {
    OneNodeGraph("Split", {{"axis", int64_t{1}}}, {{x}, {ints({3, 3}), true}}, 2).infer();
  });
  EXPECT_NE(bad_sum.find("node 'node' (Split): expected 2 split sizes summing to the axis size 7"),
            std::string::npos)
      << bad_sum;
  const std::string uneven = error_of(ErrorKind::kInvalid, [&] {
    OneNodeGraph("Split", {{"axis", int64_t{1}}}, {{x}}, 2).infer();
  });
  EXPECT_NE(uneven.find("divisible by the 2 outputs"), std::string::npos) << uneven;
}

TEST(ResizeOp, OutputShapesFromScalesOrSizes) {
  const Tensor x(DType::kFloat32, {2, 3, 5, 7});
  const Tensor none;
  EXPECT_EQ(OneNodeGraph("Resize", {}, {{x}, {none}, {floats({1, 1, 2, 1.5f}), true}}, 1)
                .infer()[0]
                .shape,
            (Shape{2, 3, 10, 10}));  // floor(7 · 1.5)
  EXPECT_EQ(OneNodeGraph("Resize", {{"mode", std::string("linear")}},
                         {{x}, {none}, {none}, {ints({2, 3, 13, 1}), true}}, 1)
                .infer()[0]
                .shape,
            (Shape{2, 3, 13, 1}));
}

TEST(ResizeOp, UnsupportedFormsNameTheNode) {
  const Tensor x(DType::kFloat32, {2, 3, 5, 7});
  const Tensor none;
  const Tensor scales = floats({1, 1, 2, 2});
  auto message = [&](std::map<std::string, graph::AttributeValue, std::less<>> attributes,
                     std::vector<OpInput> inputs) {
    return error_of(ErrorKind::kUnsupported,
                    [&] { OneNodeGraph("Resize", attributes, inputs, 1).infer(); });
  };
  EXPECT_NE(message({{"mode", std::string("cubic")}}, {{x}, {none}, {scales, true}})
                .find("node 'node' (Resize): expected mode nearest or linear, got cubic"),
            std::string::npos);
  EXPECT_NE(message({{"coordinate_transformation_mode", std::string("tf_crop_and_resize")}},
                    {{x}, {none}, {scales, true}})
                .find("got tf_crop_and_resize"),
            std::string::npos);
  EXPECT_NE(message({{"keep_aspect_ratio_policy", std::string("not_larger")}},
                    {{x}, {none}, {scales, true}})
                .find("expected keep_aspect_ratio_policy stretch, got not_larger"),
            std::string::npos);
  EXPECT_NE(message({}, {{Tensor(DType::kFloat32, {2, 3, 5, 7, 2, 2})},
                         {none},
                         {floats({1, 1, 2, 2, 2, 2}), true}})
                .find("expected a 4-D NCHW or 5-D NCDHW input"),
            std::string::npos);
  EXPECT_NE(message({}, {{x}, {none}, {floats({1, 2, 2, 2}), true}})
                .find("expected scales of 1 on the batch and channel axes"),
            std::string::npos);
  const std::string both = error_of(ErrorKind::kInvalid, [&] {
    OneNodeGraph("Resize", {}, {{x}, {none}, {scales, true}, {ints({2, 3, 10, 14}), true}}, 1)
        .infer();
  });
  EXPECT_NE(both.find("exactly one of scales (input 2) and sizes (input 3), got both"),
            std::string::npos)
      << both;
}

TEST(ConvTransposeOp, OutputShapeFromPadsOutputPaddingOrOutputShape) {
  const Tensor x(DType::kFloat32, {2, 6, 5, 7});
  const Tensor w(DType::kFloat32, {6, 4, 3, 3});  // C_in, C_out / group
  auto shape_of = [&](std::map<std::string, graph::AttributeValue, std::less<>> attributes) {
    return OneNodeGraph("ConvTranspose", attributes, {{x}, {w, true}}, 1).infer()[0].shape;
  };
  // 2·(5 − 1) + 1 + 3 − 2 = 10; 2·(7 − 1) + 1 + 3 − 2 = 14.
  EXPECT_EQ(shape_of({{"strides", std::vector<int64_t>{2, 2}},
                      {"pads", std::vector<int64_t>{1, 1, 1, 1}},
                      {"output_padding", std::vector<int64_t>{1, 1}}}),
            (Shape{2, 4, 10, 14}));
  EXPECT_EQ(shape_of({{"group", int64_t{2}}, {"strides", std::vector<int64_t>{2, 2}}}),
            (Shape{2, 8, 11, 15}));
  EXPECT_EQ(shape_of({{"strides", std::vector<int64_t>{2, 2}},
                      {"output_shape", std::vector<int64_t>{10, 13}}}),
            (Shape{2, 4, 10, 13}));
  const std::string bad = error_of(ErrorKind::kInvalid, [&] {
    OneNodeGraph("ConvTranspose", {{"output_padding", std::vector<int64_t>{1, 1}}},
                 {{x}, {w, true}}, 1)
        .infer();
  });
  EXPECT_NE(bad.find("node 'node' (ConvTranspose): expected output_padding below the stride"),
            std::string::npos)
      << bad;
}

// PRelu's slope broadcasts one way, onto the input's shape.
TEST(PReluOp, SlopeMustBroadcastToTheInput) {
  const Tensor x(DType::kFloat32, {2, 3, 5, 7});
  EXPECT_EQ(OneNodeGraph("PRelu", {}, {{x}, {Tensor(DType::kFloat32, {3, 1, 1}), true}}, 1)
                .infer()[0]
                .shape,
            x.shape());
  const std::string message = error_of(ErrorKind::kInvalid, [&] {
    OneNodeGraph("PRelu", {}, {{x}, {Tensor(DType::kFloat32, {2, 1, 1, 1, 1}), true}}, 1).infer();
  });
  EXPECT_NE(message.find("node 'node' (PRelu): expected a slope that broadcasts to the input's "
                         "shape [2, 3, 5, 7], got [2, 1, 1, 1, 1]"),
            std::string::npos)
      << message;
}

const char* const kOpModels[] = {
    "split_halves",
    "split_sizes",
    "exp_log_softplus",
    "max_min_compare",
    "prelu",
    "resize_nearest_scale2",
    "resize_nearest_sizes",
    "resize_bilinear_scale2",
    "resize_bilinear_align_corners",
    "resize_bilinear_down",
    "resize_nearest_half_pixel_prefer_ceil",
    "resize_nearest_align_corners",
    "resize_nearest_pytorch_half_pixel_ceil",
    "resize_linear_asymmetric",
    "resize_linear_pytorch_half_pixel",
    "conv_transpose_k2s2",
    "conv_transpose_k3s2_output_padding",
    "conv_transpose_grouped_dilated",
    "conv_transpose_depthwise_k4s2",
    "decoder_chain",
    "conv_resize_to_input",
};

// Each model in qforge and in ONNX Runtime on the same input: data movement exactly, arithmetic
// within float rounding of sums of a few dozen terms.
TEST(DecoderOps, ModelsMatchOnnxRuntime) {
  for (const char* name : kOpModels) {
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
      expect_close_scaled(got[i], want[i], 1e-6, "output " + std::to_string(i));
    }
  }
}

// ConvTranspose -> bilinear Resize -> Split -> Concat -> grouped ConvTranspose -> nearest Resize
// trained one step: the outputs and every parameter's gradient against PyTorch's.
TEST(DecoderOps, TrainingGradientsMatchPyTorch) {
  auto graph = graph::load_onnx(data_path("models/ops/decoder_chain.onnx"));
  const auto golden = io::read_npz(data_path("models/ops/decoder_chain.npz"));
  testing::expect_training_step_matches(*graph, golden, runtime::trainable_initializers(*graph),
                                        1e-5, 4);
}

// Resize's scales decide the output shape: never a parameter to train, even as an initializer.
TEST(DecoderOps, ResizeScalesAreNotTrainable) {
  auto graph = graph::load_onnx(data_path("models/ops/resize_linear_asymmetric.onnx"));
  ASSERT_NE(graph->find_value("scales"), nullptr);
  EXPECT_TRUE(runtime::trainable_initializers(*graph).empty());
}

}  // namespace
}  // namespace qforge
