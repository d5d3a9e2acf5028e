// The batch of the written models: a Q/DQ file from a symbolic-batch model runs in ONNX Runtime
// at batch 1 and at batch 5 with the same per-sample outputs (a CNN, and ViT and Swin, whose
// attention and window Reshapes carry the batch); a fixed-batch model calibrated at another
// batch keeps its own batch, or writes a symbolic one with --dynamic-batch; `transform` keeps a
// symbolic batch under its name; ONNX's shape inference, strict, agrees with every declared
// output shape. A Resize to sizes computed from a tensor's shape (torch's F.interpolate(size=...),
// as in torchvision's segmentation models) follows the batch in `run` and in the written files.
#include <gtest/gtest.h>

#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "tests/support/batch_models.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"
#include "tools/io/image_folder.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using kernels::Tensor;
using testing::data_path;
using testing::run_cli;
using testing::TempDir;

constexpr int64_t kSamples = 5;

// The first kSamples validation images, preprocessed as `model` says.
Tensor val_images(const std::string& model) {
  const auto graph = graph::load_onnx(model);
  io::ImageFolder val(data_path("datasets/digits/val"),
                      io::preprocess_from_metadata(graph->metadata, *graph->inputs()[0]->shape()));
  return val.load_batch(0, kSamples);
}

// `model` calibrated at --batch 8 on 16 training images into `out`, with `flags`.
void calibrate(const std::string& model, const std::string& out, const std::string& flags = "") {
  const auto r = run_cli("calibrate " + model + " --data " + data_path("datasets/digits/train") +
                         " --limit 16 --batch 8 --flip-injections 0 " + flags + " -o " + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

std::pair<std::string, std::string> batch_of(const std::string& symbolic) {
  return {symbolic, symbolic};
}

// ONNX's shape inference in strict mode (a conflict with a declared shape throws), with data
// propagation through the Shape → Gather → Concat arithmetic; returns the inferred output dims.
std::vector<std::string> strict_output_dims(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  onnx::ModelProto model;
  EXPECT_TRUE(in && model.ParseFromIstream(&in)) << path;
  onnx::ShapeInferenceOptions options{};
  options.check_type = true;
  options.error_mode = 1;
  options.enable_data_propagation = true;
  onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(), options);
  std::vector<std::string> dims;
  for (const auto& d : model.graph().output(0).type().tensor_type().shape().dim()) {
    dims.push_back(d.has_dim_value() ? std::to_string(d.dim_value()) : d.dim_param());
  }
  return dims;
}

std::vector<Tensor> ort_per_sample(const std::string& model, const Tensor& images) {
  std::vector<Tensor> outputs;
  for (int64_t i = 0; i < images.dim(0); ++i) {
    outputs.push_back(testing::run_ort(model, {images.slice_rows(i, i + 1).clone()}).at(0));
  }
  return outputs;
}

// Sample i of `batched` against `single[i]`: the number of elements whose bits differ and the
// largest difference.
struct SampleDifference {
  int64_t differing = 0;
  float max_abs = 0;
};
SampleDifference compare_samples(const Tensor& batched, const std::vector<Tensor>& single) {
  SampleDifference d;
  EXPECT_EQ(batched.dim(0), static_cast<int64_t>(single.size()));
  for (size_t i = 0; i < single.size(); ++i) {
    const Tensor row = batched.slice_rows(static_cast<int64_t>(i), static_cast<int64_t>(i) + 1);
    EXPECT_EQ(row.shape(), single[i].shape());
    for (int64_t e = 0; e < row.numel(); ++e) {
      const float a = row.data<float>()[e];
      const float b = single[i].data<float>()[e];
      if (std::memcmp(&a, &b, sizeof a) != 0) ++d.differing;
      d.max_abs = std::max(d.max_abs, std::abs(a - b));
    }
  }
  return d;
}

class SymbolicBatchOrt : public ::testing::TestWithParam<std::string> {};

// Every per-sample output of the batch-5 run equals the batch-1 run of that sample, bit for bit,
// except ViT's: its classifier head is a Gemm on the class token alone ([batch, 64] × [64, 10]),
// and at batch 1 that Gemm has a single row, which ONNX Runtime (MLAS) computes with another
// kernel than a multi-row one, summing the 64 products in another order. Measured on these 5
// images: 37 of the 50 logits differ, by at most 7.2e-7 (3 ulps of logits in [2, 4), whose
// ulp is 2^-22); the same file run as batches of 2 and 3 equals the batch-5 run bit for bit,
// so nothing else in the graph depends on the batch. The bound is 8 such ulps: float
// reassociation of one 64-term dot product, not a loosened comparison of the graph.
TEST_P(SymbolicBatchOrt, BatchOneAndBatchFiveGiveTheSamePerSampleOutputs) {
  TempDir dir;
  const std::string model = data_path("models/" + GetParam() + ".onnx");
  const std::string qdq = dir.file("m.qdq.onnx");
  ASSERT_NO_FATAL_FAILURE(calibrate(model, qdq));
  EXPECT_EQ(testing::declared_batch_text(qdq), batch_of("batch"));
  EXPECT_EQ(strict_output_dims(qdq), (std::vector<std::string>{"batch", "10"}));

  const Tensor images = val_images(model);
  const Tensor batched = testing::run_ort(qdq, {images}).at(0);
  ASSERT_EQ(batched.shape(), (kernels::Shape{kSamples, 10}));
  const SampleDifference d = compare_samples(batched, ort_per_sample(qdq, images));
  if (GetParam() == "vit_bn") {
    EXPECT_LE(d.max_abs, 8 * 0x1.0p-22f);
    const Tensor two = testing::run_ort(qdq, {images.slice_rows(0, 2).clone()}).at(0);
    const Tensor three = testing::run_ort(qdq, {images.slice_rows(2, kSamples).clone()}).at(0);
    EXPECT_EQ(compare_samples(batched,
                              {two.slice_rows(0, 1), two.slice_rows(1, 2), three.slice_rows(0, 1),
                               three.slice_rows(1, 2), three.slice_rows(2, 3)})
                  .differing,
              0);
  } else {
    EXPECT_EQ(d.differing, 0) << "max |Δ| " << d.max_abs;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, SymbolicBatchOrt,
                         ::testing::Values("resnet_bn", "vit_bn", "swin_bn"));

// ViT with its batch fixed at 1 (the case where a Reshape's batch axis is ambiguous): calibrated
// at --batch 8, the file keeps batch 1 and computes, in ONNX Runtime, what the symbolic-batch
// model's export computes at batch 1; with --dynamic-batch the batch is symbolic and batch 5
// runs, sample for sample as the symbolic-batch export.
TEST(FixedBatchOrt, CalibratedAtAnotherBatchKeepsItsBatch) {
  TempDir dir;
  const std::string symbolic = data_path("models/vit_bn.onnx");
  const std::string fixed = dir.file("vit_fixed1.onnx");
  testing::write_with_batch(symbolic, fixed, {.size = 1, .param = {}});
  ASSERT_NO_FATAL_FAILURE(calibrate(symbolic, dir.file("symbolic.qdq.onnx")));
  ASSERT_NO_FATAL_FAILURE(calibrate(fixed, dir.file("fixed.qdq.onnx")));
  ASSERT_NO_FATAL_FAILURE(calibrate(fixed, dir.file("dynamic.qdq.onnx"), "--dynamic-batch"));
  EXPECT_EQ(testing::declared_batch_text(dir.file("fixed.qdq.onnx")), batch_of("1"));
  EXPECT_EQ(strict_output_dims(dir.file("fixed.qdq.onnx")), (std::vector<std::string>{"1", "10"}));
  EXPECT_EQ(testing::declared_batch_text(dir.file("dynamic.qdq.onnx")), batch_of("batch"));

  const Tensor images = val_images(symbolic);
  const Tensor one = images.slice_rows(0, 1).clone();
  const Tensor from_fixed = testing::run_ort(dir.file("fixed.qdq.onnx"), {one}).at(0);
  const Tensor from_symbolic = testing::run_ort(dir.file("symbolic.qdq.onnx"), {one}).at(0);
  EXPECT_EQ(compare_samples(from_fixed, {from_symbolic}).differing, 0);
  const Tensor five = testing::run_ort(dir.file("dynamic.qdq.onnx"), {images}).at(0);
  const Tensor five_symbolic = testing::run_ort(dir.file("symbolic.qdq.onnx"), {images}).at(0);
  ASSERT_EQ(five.shape(), five_symbolic.shape());
  EXPECT_EQ(std::memcmp(five.raw(), five_symbolic.raw(), five.nbytes()), 0);
}

// Swin fixed at batch 2 and ResNet at 3, calibrated at 8: each file keeps its own batch.
TEST(FixedBatchOrt, SwinAndResnetKeepTheirFixedBatch) {
  TempDir dir;
  for (const auto& [name, batch] :
       {std::pair<std::string, int64_t>{"swin_bn", 2}, {"resnet_bn", 3}}) {
    SCOPED_TRACE(name);
    const std::string fixed = dir.file(name + "_fixed.onnx");
    testing::write_with_batch(data_path("models/" + name + ".onnx"), fixed,
                              {.size = batch, .param = {}});
    const std::string qdq = dir.file(name + ".qdq.onnx");
    ASSERT_NO_FATAL_FAILURE(calibrate(fixed, qdq));
    EXPECT_EQ(testing::declared_batch_text(qdq), batch_of(std::to_string(batch)));
    EXPECT_EQ(strict_output_dims(qdq), (std::vector<std::string>{std::to_string(batch), "10"}));
  }
}

// A model fixed at batch 1 runs, compares and trains at other batches: `run --batch 4` writes
// the bytes the symbolic-batch model's run writes, `compare --batch 4` of the model with itself
// finds them identical, and `qat --batch 8` writes a file that keeps batch 1.
TEST(FixedBatchCli, RunCompareAndQatTakeAnyBatch) {
  TempDir dir;
  const std::string symbolic = data_path("models/vit_bn.onnx");
  const std::string fixed = dir.file("vit_fixed1.onnx");
  testing::write_with_batch(symbolic, fixed, {.size = 1, .param = {}});
  const std::string val = " --data " + data_path("datasets/digits/val") + " --limit 10";
  const auto a = run_cli("run " + fixed + val + " --batch 4 -o " + dir.file("fixed.npy"));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const auto b = run_cli("run " + symbolic + val + " --batch 4 -o " + dir.file("symbolic.npy"));
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(testing::read_text(dir.file("fixed.npy")),
            testing::read_text(dir.file("symbolic.npy")));
  const auto c = run_cli("compare " + fixed + " " + fixed + val + " --batch 4");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.out.find("verdict    identical"), std::string::npos) << c.out;
  const auto q = run_cli("qat " + fixed + " --data " + data_path("datasets/digits/train") +
                         " --steps 2 --batch 8 --calib-limit 16 -o " + dir.file("qat.onnx"));
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_EQ(testing::declared_batch_text(dir.file("qat.onnx")), batch_of("1"));
  EXPECT_EQ(strict_output_dims(dir.file("qat.onnx")), (std::vector<std::string>{"1", "10"}));
}

// A convolution upsampled bilinearly to its input's size, exported at batch 1 with the Resize's
// sizes computed by Shape → Slice → Concat (data/generate/op_models.py): `run --batch 3` computes
// for each sample what ONNX Runtime computes on the file at batch 1 (within float rounding of
// a 27-term convolution sum, as tests/runtime/decoder_ops_test.cpp); calibrated at --batch 4,
// the Q/DQ file keeps batch 1, and with --dynamic-batch runs in ONNX Runtime at batch 3 with
// each sample's output equal, bit for bit, to its batch-1 run and to the fixed file's.
TEST(FixedBatchOrt, ResizeToComputedSizesFollowsTheBatch) {
  TempDir dir;
  const std::string model = data_path("models/ops/conv_resize_to_input.onnx");
  const Tensor x = testing::random_f32({3, 3, 9, 13}, 11, -2.0f, 2.0f);
  io::write_npy(dir.file("x.npy"), x);
  const auto r = run_cli("run " + model + " --data " + dir.file("x.npy") + " --batch 3 -o " +
                         dir.file("out.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Tensor got = io::read_npy(dir.file("out.npy"));
  const std::vector<Tensor> want = ort_per_sample(model, x);
  ASSERT_EQ(got.shape(), (kernels::Shape{3, 4, 9, 13}));
  for (int64_t i = 0; i < 3; ++i) {
    const Tensor row = got.slice_rows(i, i + 1);
    const Tensor& w = want[static_cast<size_t>(i)];
    ASSERT_EQ(row.shape(), w.shape());
    double scale = 1.0, worst = 0.0;
    for (int64_t e = 0; e < w.numel(); ++e) {
      scale = std::max(scale, std::abs(double(w.data<float>()[e])));
      worst = std::max(worst, std::abs(double(row.data<float>()[e]) - w.data<float>()[e]));
    }
    EXPECT_LE(worst, 1e-6 * scale) << "sample " << i;
  }

  io::write_npy(dir.file("calib.npy"), testing::random_f32({8, 3, 9, 13}, 12, -2.0f, 2.0f));
  for (const std::string flags : {"", "--dynamic-batch"}) {
    const auto c = run_cli("calibrate " + model + " --data " + dir.file("calib.npy") +
                           " --batch 4 --flip-injections 0 " + flags + " -o " +
                           dir.file(flags.empty() ? "fixed.qdq.onnx" : "dynamic.qdq.onnx"));
    ASSERT_EQ(c.exit_code, 0) << flags << ": " << c.err;
  }
  EXPECT_EQ(testing::declared_batch_text(dir.file("fixed.qdq.onnx")), batch_of("1"));
  EXPECT_EQ(strict_output_dims(dir.file("fixed.qdq.onnx")),
            (std::vector<std::string>{"1", "4", "9", "13"}));
  EXPECT_EQ(testing::declared_batch_text(dir.file("dynamic.qdq.onnx")), batch_of("batch"));
  EXPECT_EQ(strict_output_dims(dir.file("dynamic.qdq.onnx")),
            (std::vector<std::string>{"batch", "4", "9", "13"}));
  const Tensor batched = testing::run_ort(dir.file("dynamic.qdq.onnx"), {x}).at(0);
  ASSERT_EQ(batched.shape(), (kernels::Shape{3, 4, 9, 13}));
  EXPECT_EQ(compare_samples(batched, ort_per_sample(dir.file("dynamic.qdq.onnx"), x)).differing, 0);
  EXPECT_EQ(compare_samples(
                batched.slice_rows(0, 1).clone(),
                {testing::run_ort(dir.file("fixed.qdq.onnx"), {x.slice_rows(0, 1).clone()}).at(0)})
                .differing,
            0);
}

// `transform` keeps a symbolic batch under the model's own name, an unnamed one unnamed, and
// a fixed one at its size whatever --batch; --dynamic-batch makes the fixed one symbolic.
TEST(TransformBatch, WrittenModelKeepsTheDeclaredBatch) {
  TempDir dir;
  const std::string vit = data_path("models/vit_bn.onnx");
  testing::write_with_batch(vit, dir.file("named.onnx"), {.size = {}, .param = "batch_size"});
  testing::write_with_batch(vit, dir.file("unnamed.onnx"), {.size = {}, .param = {}});
  testing::write_with_batch(vit, dir.file("fixed.onnx"), {.size = 4, .param = {}});
  struct Case {
    std::string model;
    std::string flags;
    std::string expected;
  };
  const Case cases[] = {{"named.onnx", "", "batch_size"},
                        {"unnamed.onnx", "", "?"},
                        {"fixed.onnx", "", "4"},
                        {"fixed.onnx", "--dynamic-batch", "batch"}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.model + " " + c.flags);
    const std::string out = dir.file("out.onnx");
    const auto r =
        run_cli("transform " + dir.file(c.model) + " --batch 2 " + c.flags + " -o " + out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(testing::declared_batch_text(out), batch_of(c.expected));
    const std::vector<std::string> dims = strict_output_dims(out);
    ASSERT_EQ(dims.size(), 2u);
    if (c.expected == "?") {
      // Inference names an unknown dim itself; it must not have found a number.
      EXPECT_EQ(dims[0].find_first_not_of("0123456789"), 0u) << dims[0];
    } else {
      EXPECT_EQ(dims[0], c.expected);
    }
  }
}

}  // namespace
}  // namespace qforge
