// Models whose file takes one sample without a batch axis, as torchvision's detectors take one
// image [3, H, W] (data/generate/nms_models.py): fed images, or .npy rows of the input's shape,
// qforge gives them a batch axis at import (graph/sample_axis.h), runs, calibrates and trains
// them one sample at a time, and writes them with the file's interface.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include <optional>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "graph/onnx_import.h"
#include "kernels/error.h"
#include "kernels/tensor.h"
#include "tests/support/float_checks.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using kernels::Tensor;
using testing::data_path;
using testing::run_cli;
using testing::TempDir;

const std::string kImageDetector = data_path("models/ops/tiny_det_image_opset11.onnx");
const std::string kDigits = data_path("datasets/digits/val");
// The detector takes pixels in [0, 1], as torchvision's do.
const std::string kPixels = " --pixel-scale 255";

onnx::ModelProto read_model(const std::string& path) {
  onnx::ModelProto proto;
  EXPECT_TRUE(proto.ParseFromString(testing::read_text(path))) << path;
  return proto;
}

std::vector<int64_t> declared_dims(const onnx::ValueInfoProto& v) {
  std::vector<int64_t> dims;
  for (const auto& d : v.type().tensor_type().shape().dim()) dims.push_back(d.dim_value());
  return dims;
}

size_t count_ops(const onnx::ModelProto& m, const std::string& op) {
  size_t n = 0;
  for (const auto& node : m.graph().node()) n += node.op_type() == op;
  return n;
}

// The written model has the file's interface (inputs, outputs and their shapes), as many
// Squeezes and Unsqueezes as the file (the ones added at import are gone), and runs in ONNX
// Runtime; given a tolerance, it detects there what the file detects.
void expect_file_interface(const std::string& written, std::optional<double> tolerance) {
  const onnx::ModelProto file = read_model(kImageDetector);
  const onnx::ModelProto got = read_model(written);
  ASSERT_EQ(got.graph().input_size(), 1);
  EXPECT_EQ(got.graph().input(0).name(), "image");
  EXPECT_EQ(declared_dims(got.graph().input(0)), (std::vector<int64_t>{3, 32, 32}));
  ASSERT_EQ(got.graph().output_size(), file.graph().output_size());
  for (int i = 0; i < file.graph().output_size(); ++i) {
    EXPECT_EQ(got.graph().output(i).name(), file.graph().output(i).name());
  }
  for (const std::string op : {"Squeeze", "Unsqueeze"}) {
    EXPECT_EQ(count_ops(got, op), count_ops(file, op)) << op;
  }
  const std::vector<Tensor> image = {testing::random_f32({3, 32, 32}, 5, 0.0f, 1.0f)};
  const std::vector<Tensor> want = testing::run_ort(kImageDetector, image);
  const std::vector<Tensor> detections = testing::run_ort(written, image);
  ASSERT_EQ(detections.size(), want.size());
  if (!tolerance) return;
  ASSERT_GT(want[0].dim(0), 0) << "no detection to compare";
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(detections[i].shape(), want[i].shape()) << "output " << i;
    if (want[i].dtype() == kernels::DType::kFloat32) {
      testing::expect_close_scaled(detections[i], want[i], *tolerance,
                                   "output " + std::to_string(i));
    }
  }
}

TEST(SampleAxisImport, ImagesGiveAModelOfOneImageABatchAxis) {
  graph::ImportOptions options;
  options.data_sample_rank = 3;
  const auto g = graph::load_onnx(kImageDetector, options);
  ASSERT_EQ(g->inputs().size(), 1u);
  EXPECT_EQ(g->inputs()[0]->name(), "image");
  EXPECT_EQ(g->inputs()[0]->known_shape(), (kernels::Shape{1, 3, 32, 32}));
  EXPECT_EQ(g->added_batch_axis.inputs, (std::vector<std::string>{"image"}));
  // Every output of the network (what the post-processing reads) gets the axis too.
  std::vector<std::string> outputs;
  for (const graph::Value* out : g->outputs()) {
    outputs.push_back(out->name());
    ASSERT_TRUE(out->has_shape()) << out->name();
    EXPECT_EQ(out->shape()->front(), 1) << out->name();
  }
  EXPECT_EQ(outputs.size(), 3u);
  EXPECT_EQ(g->added_batch_axis.outputs, outputs);
  EXPECT_EQ(g->clone()->added_batch_axis.outputs, outputs);
  EXPECT_EQ(graph::sample_rank_of(*g), 3u);

  // Data whose samples have another rank (an .npy of one image [3, 32, 32] has rows of two
  // dims), or none: the file's shapes, its first axis read as the batch, as before.
  options.data_sample_rank = 2;
  for (const auto& plain :
       {graph::load_onnx(kImageDetector), graph::load_onnx(kImageDetector, options)}) {
    EXPECT_EQ(plain->inputs()[0]->known_shape(), (kernels::Shape{3, 32, 32}));
    EXPECT_FALSE(plain->added_batch_axis.any());
    EXPECT_EQ(graph::sample_rank_of(*plain), std::nullopt);
  }
}

// Without data to tell it, the caller says so (ImportOptions::no_batch_axis, the CLI's
// --no-batch-axis): the same import as an image folder gives. A model of two inputs is refused
// naming them.
TEST(SampleAxisImport, TheCallerSaysTheInputHasNoBatchAxis) {
  graph::ImportOptions said;
  said.no_batch_axis = true;
  graph::ImportOptions images;
  images.data_sample_rank = 3;
  const auto g = graph::load_onnx(kImageDetector, said);
  const auto want = graph::load_onnx(kImageDetector, images);
  EXPECT_EQ(g->inputs()[0]->known_shape(), (kernels::Shape{1, 3, 32, 32}));
  EXPECT_EQ(g->added_batch_axis.inputs, want->added_batch_axis.inputs);
  EXPECT_EQ(g->added_batch_axis.outputs, want->added_batch_axis.outputs);
  ASSERT_EQ(g->nodes().size(), want->nodes().size());
  for (size_t i = 0; i < g->nodes().size(); ++i) {
    EXPECT_EQ(g->nodes()[i]->op_type(), want->nodes()[i]->op_type()) << i;
  }

  try {
    graph::load_onnx(data_path("models/text/bert_style_opset14.onnx"), said);
    ADD_FAILURE() << "a model of several inputs was taken as one sample";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    const std::string what = e.what();
    EXPECT_NE(what.find("': taking its input as one sample without a batch axis needs a model of "
                        "one input; it has "),
              std::string::npos)
        << what;
  }
}

// `inspect`, `transform` and `calibrate` without an image folder: --no-batch-axis takes the
// file's input as one image, as an image folder would; without it the file's first axis is read
// as the batch (3 images of [32, 32]).
TEST(SampleAxisCli, NoBatchAxisFlagWithoutData) {
  TempDir dir;
  const auto inspect = run_cli("inspect " + kImageDetector + " --no-batch-axis");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  EXPECT_NE(inspect.out.find("input    image  float32[1, 3, 32, 32]"), std::string::npos)
      << inspect.out;
  EXPECT_NE(inspect.out.find("batch    none in the file: its input is one sample"),
            std::string::npos)
      << inspect.out;
  const auto plain = run_cli("inspect " + kImageDetector);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_NE(plain.out.find("input    image  float32[3, 32, 32]"), std::string::npos) << plain.out;
  EXPECT_EQ(plain.out.find("batch    none"), std::string::npos) << plain.out;

  const auto r =
      run_cli("transform " + kImageDetector + " --no-batch-axis -o " + dir.file("t.onnx"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("verdict      equivalent"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(no batch axis, as the file,"), std::string::npos) << r.out;
  expect_file_interface(dir.file("t.onnx"), 1e-5);
  const auto dynamic = run_cli("transform " + kImageDetector +
                               " --no-batch-axis --dynamic-batch -o " + dir.file("d.onnx"));
  EXPECT_NE(dynamic.exit_code, 0);
  EXPECT_NE(dynamic.err.find("qforge: error: --dynamic-batch: input 'image' has no batch axis"),
            std::string::npos)
      << dynamic.err;

  // The data's rows are the file's input: [N, 3, 32, 32] with the flag, as without it.
  const std::string images = dir.file("x.npy");
  io::write_npy(images, testing::random_f32({4, 3, 32, 32}, 21, 0.0f, 1.0f));
  std::string written[2];
  for (int flag = 0; flag < 2; ++flag) {
    const std::string out = dir.file(std::string("q").append(std::to_string(flag)).append(".onnx"));
    const auto c = run_cli("calibrate " + kImageDetector + " --data " + images +
                           " --flip-injections 0 -o " + out + (flag ? " --no-batch-axis" : ""));
    ASSERT_EQ(c.exit_code, 0) << c.err;
    written[flag] = testing::read_text(out);
  }
  EXPECT_EQ(written[0], written[1]);
  EXPECT_TRUE(testing::leftover_files(dir, {"t.onnx", "x.npy", "q0.onnx", "q1.onnx"}).empty());
}

// `run` stacks the samples' outputs along the added axis: each row is what the file computes for
// that image alone (run with its first axis as the batch, as before).
TEST(SampleAxisCli, RunStacksEachImagesOutputs) {
  TempDir dir;
  const Tensor images = testing::random_f32({3, 3, 32, 32}, 9, 0.0f, 1.0f);
  io::write_npy(dir.file("x.npy"), images);
  const auto r = run_cli("run " + kImageDetector + " --data " + dir.file("x.npy") + " -o " +
                         dir.file("y.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("note: '" + kImageDetector +
                       "': input 'image' [3, 32, 32] has no batch axis: the model takes one "
                       "sample, and qforge runs it one sample at a time (batch 1)"),
            std::string::npos)
      << r.err;
  // `run -o a.npy` writes output k > 0 to a.<k>.npy.
  auto output_file = [](const std::string& stem, size_t k) {
    std::string name = stem;
    if (k > 0) name.append(".").append(std::to_string(k));
    return name.append(".npy");
  };
  for (int64_t i = 0; i < 3; ++i) {
    const std::string index = std::to_string(i);
    const std::string one = dir.file(std::string("x").append(index).append(".npy"));
    io::write_npy(one, images.slice_rows(i, i + 1).reshaped({3, 32, 32}));
    const std::string alone_stem = dir.file(std::string("a").append(index));
    const auto alone =
        run_cli("run " + kImageDetector + " --data " + one + " -o " + output_file(alone_stem, 0));
    ASSERT_EQ(alone.exit_code, 0) << alone.err;
    for (size_t k = 0; k < 3; ++k) {
      const Tensor stacked = io::read_npy(output_file(dir.file("y"), k));
      ASSERT_EQ(stacked.dim(0), 3) << "output " << k;
      const Tensor want = io::read_npy(output_file(alone_stem, k));
      const Tensor row = stacked.slice_rows(i, i + 1).reshaped(want.shape());
      testing::expect_close_scaled(row, want, 1e-6, "output " + std::to_string(k));
    }
  }
}

TEST(SampleAxisCli, TransformOfAnImageFolderWritesTheFilesInterface) {
  TempDir dir;
  const auto r = run_cli("transform " + kImageDetector + " --data " + kDigits + kPixels + " -o " +
                         dir.file("t.onnx"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("verdict      equivalent"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(no batch axis, as the file,"), std::string::npos) << r.out;
  expect_file_interface(dir.file("t.onnx"), 1e-5);

  // The file has no batch to make dynamic.
  const auto dynamic = run_cli("transform " + kImageDetector + " --data " + kDigits + kPixels +
                               " --dynamic-batch -o " + dir.file("d.onnx"));
  EXPECT_NE(dynamic.exit_code, 0);
  EXPECT_NE(dynamic.err.find("qforge: error: --dynamic-batch: input 'image' has no batch axis in "
                             "the file (the model takes one sample)"),
            std::string::npos)
      << dynamic.err;
  EXPECT_TRUE(testing::leftover_files(dir, {"t.onnx"}).empty());
}

// Calibrated on an image folder one image at a time (whatever --batch says), the model is
// compared output by output, is written with the file's interface, and computes in ONNX Runtime
// what qforge's fake quant computes at every Q/DQ point.
TEST(SampleAxisCli, CalibrateOnAnImageFolderOneImageAtATime) {
  TempDir dir;
  const std::string qdq = dir.file("q.onnx");
  const auto r = run_cli("calibrate " + kImageDetector + " --data " + kDigits + kPixels +
                         " --limit 8 --batch 4 --flip-injections 0 -o " + qdq + " --report " +
                         dir.file("r.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("(8 samples of 360, spread evenly in 8 batches of up to 1,"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("(Q/DQ model vs float model: the lowest of its 3 outputs)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("  /Concat_1_output_0 "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("accuracy"), std::string::npos) << r.out;  // labels, but no logits
  // The report has each output's figures; the model's are the lowest SQNR's.
  const nlohmann::json evaluation =
      nlohmann::json::parse(testing::read_text(dir.file("r.json")))["evaluation"];
  ASSERT_EQ(evaluation["outputs"].size(), 3u);
  double lowest = INFINITY;
  for (const auto& out : evaluation["outputs"]) {
    EXPECT_EQ(out["elements"].get<size_t>() % 8, 0u) << out;  // whole outputs of 8 images
    lowest = std::min(lowest, out["sqnr_db"].get<double>());
  }
  EXPECT_EQ(evaluation["outputs"][0]["name"], "/Sigmoid_output_0");
  EXPECT_EQ(evaluation["sqnr_db"].get<double>(), lowest);
  expect_file_interface(qdq, std::nullopt);
  EXPECT_GT(count_ops(read_model(qdq), "QuantizeLinear"), 2u);

  const std::string image = dir.file("x.npy");
  io::write_npy(image, testing::random_f32({3, 32, 32}, 13, 0.0f, 1.0f));
  testing::expect_verified_by_ort(qdq, image, dir.file("ort.npz"));

  // --dynamic-batch is refused before calibration.
  const auto dynamic = run_cli("calibrate " + kImageDetector + " --data " + kDigits + kPixels +
                               " --dynamic-batch -o " + dir.file("d.onnx"));
  EXPECT_NE(dynamic.exit_code, 0);
  EXPECT_NE(dynamic.err.find("qforge: error: --dynamic-batch: input 'image' has no batch axis"),
            std::string::npos)
      << dynamic.err;
  EXPECT_EQ(dynamic.out.find("calibration"), std::string::npos) << dynamic.out;
}

// `qat --distill` runs it one image at a time, a step of --batch images being as many shards of
// one (their gradients added in order): the same bytes at 1 and 2 threads, and not those of a
// step of one image. It reports each output's SQNR for PTQ and QAT; labels are refused before
// calibration (no logits), and shards of more than one image.
TEST(SampleAxisCli, QatDistillsItOneImageAStep) {
  TempDir dir;
  std::string bytes[2];
  for (int threads : {1, 2}) {
    const std::string out =
        dir.file(std::string("q").append(std::to_string(threads)).append(".onnx"));
    const auto r = run_cli("qat " + kImageDetector + " --data " + kDigits + kPixels +
                           " --distill --distill-weight 1 --steps 3 --batch 4 --lr 1e-3 "
                           "--threads " +
                           std::to_string(threads) + " --val " + kDigits + " -o " + out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("training     3 steps of 4 in 4 shards of 1 "), std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("  output SQNR (dB)"), std::string::npos) << r.out;
    bytes[threads - 1] = testing::read_text(out);
  }
  EXPECT_EQ(bytes[0], bytes[1]);
  expect_file_interface(dir.file("q1.onnx"), std::nullopt);
  const auto single = run_cli("qat " + kImageDetector + " --data " + kDigits + kPixels +
                              " --distill --distill-weight 1 --steps 3 --batch 1 --lr 1e-3 -o " +
                              dir.file("s.onnx"));
  ASSERT_EQ(single.exit_code, 0) << single.err;
  EXPECT_NE(single.out.find("training     3 steps of 1 "), std::string::npos) << single.out;
  EXPECT_NE(testing::read_text(dir.file("s.onnx")), bytes[0]);

  const auto shards = run_cli("qat " + kImageDetector + " --data " + kDigits + kPixels +
                              " --distill --distill-weight 1 --batch 4 --shards 2 --steps 1 -o " +
                              dir.file("h.onnx"));
  EXPECT_NE(shards.exit_code, 0);
  EXPECT_NE(shards.err.find("qforge: error: qat: the model takes one sample at a time: a step of "
                            "--batch 4 is 4 shards of one, got --shards 2"),
            std::string::npos)
      << shards.err;

  const auto labelled = run_cli("qat " + kImageDetector + " --data " + kDigits + kPixels +
                                " --steps 1 -o " + dir.file("l.onnx"));
  EXPECT_NE(labelled.exit_code, 0);
  EXPECT_NE(labelled.err.find("qforge: error: qat: the model has 3 float outputs"),
            std::string::npos)
      << labelled.err;
}

}  // namespace
}  // namespace qforge
