// Video and volume models: 3-D convolutions, transposed convolutions and pools
// (kernels/conv_depth.h, runtime/ops/conv_ops.cpp and pool_ops.cpp) in a small classifier built as
// torchvision's r3d_18 and r2plus1d_18 are and a small 3-D UNet (data/generate/video_models.py):
// qforge runs them as ONNX Runtime does, fuses their Conv3d-BN-ReLU chains into the 2-D models'
// modules, and their calibrated and QAT models compute in ONNX Runtime what qforge's fake quant
// computes at every Q/DQ point.
#include <gtest/gtest.h>

#include <string>
#include <vector>

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

const std::string kVideo = data_path("models/ops/tiny_video_opset17.onnx");
const std::string kUnet3d = data_path("models/ops/tiny_unet3d_opset17.onnx");
const std::string kX3d = data_path("models/ops/tiny_x3d_opset17.onnx");

// Clips [n, 3, 8, 32, 32], uniform in [-2, 2), seeded, written to `path`.
Tensor write_clips(const std::string& path, int64_t n, uint32_t seed) {
  Tensor clips = testing::random_f32({n, 3, 8, 32, 32}, seed, -2.0f, 2.0f);
  io::write_npy(path, clips);
  return clips;
}

// `run` of `model` over the clips (written at x.npy) at batch 2 equals ONNX Runtime's logits.
void expect_run_equals_ort(const std::string& model, const Tensor& clips, const TempDir& dir) {
  const auto r = run_cli("run " + model + " --data " + dir.file("x.npy") + " --batch 2 -o " +
                         dir.file("y.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<Tensor> want = testing::run_ort(model, {clips});
  testing::expect_close_scaled(io::read_npy(dir.file("y.npy")), want[0], 1e-5, "logits");
}

// QAT by distillation (3 steps of 2 clips from x.npy) writes the same bytes at 1 and 2 threads,
// q1.onnx and q2.onnx.
void expect_qat_same_bytes_on_1_and_2_threads(const std::string& model, const TempDir& dir) {
  std::string bytes[2];
  for (int threads : {1, 2}) {
    const std::string out =
        dir.file(std::string("q").append(std::to_string(threads)).append(".onnx"));
    const auto r = run_cli("qat " + model + " --data " + dir.file("x.npy") +
                           " --distill --steps 3 --batch 2 --lr 1e-2 --threads " +
                           std::to_string(threads) + " -o " + out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("training     3 steps of 2 "), std::string::npos) << r.out;
    bytes[threads - 1] = testing::read_text(out);
  }
  EXPECT_EQ(bytes[0], bytes[1]);
}

TEST(VideoCli, RunComputesWhatOnnxRuntimeComputes) {
  TempDir dir;
  const Tensor clips = write_clips(dir.file("x.npy"), 3, 1);
  expect_run_equals_ort(kVideo, clips, dir);

  const auto t = run_cli("transform " + kVideo + " -o " + dir.file("t.onnx"));
  ASSERT_EQ(t.exit_code, 0) << t.err;
  EXPECT_NE(t.out.find("modules      AdaptiveAvgPool 1, ConvBNAct 2, ConvBNAddAct 1, Linear 1, "
                       "StemConvBNActMaxPool 1"),
            std::string::npos)
      << t.out;
  EXPECT_NE(t.out.find("verdict      equivalent"), std::string::npos) << t.out;
}

TEST(VideoCli, CalibratedModelIsVerifiedByOnnxRuntime) {
  TempDir dir;
  write_clips(dir.file("x.npy"), 6, 2);
  const std::string qdq = dir.file("q.onnx");
  const auto r = run_cli("calibrate " + kVideo + " --data " + dir.file("x.npy") +
                         " --batch 3 --flip-injections 0 -o " + qdq);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("written      " + qdq + " (5 activation Q/DQ pairs, 5 weight quantizers"),
            std::string::npos)
      << r.out;
  write_clips(dir.file("v.npy"), 2, 3);
  testing::expect_verified_by_ort(qdq, dir.file("v.npy"), dir.file("ort.npz"));
}

// QAT trains through the 3-D kernels' backward: the same bytes at 1 and 2 threads, and what it
// writes ONNX Runtime computes as qforge does.
TEST(VideoCli, QatIsDeterministicAndVerifiedByOnnxRuntime) {
  TempDir dir;
  write_clips(dir.file("x.npy"), 6, 4);
  expect_qat_same_bytes_on_1_and_2_threads(kVideo, dir);
  write_clips(dir.file("v.npy"), 2, 5);
  testing::expect_verified_by_ort(dir.file("q1.onnx"), dir.file("v.npy"), dir.file("ort.npz"));
}

// Channel-separated blocks (X3D's, CSN's): their depthwise 3-D convolutions (3x3x3 strided and
// not, in ConvBNAct modules with SiLU; 5x3x3 strided along the depth, with a bias) run on the
// direct depthwise kernels forward and backward. `run` equals ONNX Runtime, the calibrated
// model verifies against it, and QAT writes the same bytes at 1 and 2 threads, which ONNX
// Runtime computes as qforge does.
TEST(VideoCli, DepthwiseBlocksRunCalibrateAndTrain) {
  TempDir dir;
  const Tensor clips = write_clips(dir.file("x.npy"), 6, 6);
  expect_run_equals_ort(kX3d, clips, dir);

  const auto c = run_cli("calibrate " + kX3d + " --data " + dir.file("x.npy") +
                         " --batch 3 --flip-injections 0 -o " + dir.file("c.onnx"));
  ASSERT_EQ(c.exit_code, 0) << c.err;
  write_clips(dir.file("v.npy"), 2, 7);
  testing::expect_verified_by_ort(dir.file("c.onnx"), dir.file("v.npy"), dir.file("ort_c.npz"));

  expect_qat_same_bytes_on_1_and_2_threads(kX3d, dir);
  testing::expect_verified_by_ort(dir.file("q1.onnx"), dir.file("v.npy"), dir.file("ort_q.npz"));
}

// The UNet's ConvTranspose3d-BN-ReLU is a ConvTransposeBNAct module, and its trilinear upsampling
// a 5-D Resize; a dense model, it trains by distillation of its per-voxel scores.
TEST(VideoCli, VolumeSegmenterRunsCalibratesAndTrains) {
  TempDir dir;
  const Tensor volumes = testing::random_f32({6, 1, 8, 16, 16}, 6, -2.0f, 2.0f);
  io::write_npy(dir.file("x.npy"), volumes);
  const auto r =
      run_cli("run " + kUnet3d + " --data " + dir.file("x.npy") + " -o " + dir.file("y.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  testing::expect_close_scaled(io::read_npy(dir.file("y.npy")),
                               testing::run_ort(kUnet3d, {volumes})[0], 1e-5, "scores");

  const auto t = run_cli("transform " + kUnet3d + " -o " + dir.file("t.onnx"));
  ASSERT_EQ(t.exit_code, 0) << t.err;
  EXPECT_NE(t.out.find("modules      ConvBN 2, ConvBNAct 2, ConvTransposeBNAct 1"),
            std::string::npos)
      << t.out;

  const std::string qdq = dir.file("q.onnx");
  const auto c = run_cli("calibrate " + kUnet3d + " --data " + dir.file("x.npy") +
                         " --flip-injections 0 -o " + qdq);
  ASSERT_EQ(c.exit_code, 0) << c.err;
  io::write_npy(dir.file("v.npy"), testing::random_f32({2, 1, 8, 16, 16}, 7, -2.0f, 2.0f));
  testing::expect_verified_by_ort(qdq, dir.file("v.npy"), dir.file("ort.npz"));

  std::string bytes[2];
  for (int threads : {1, 2}) {
    const std::string out =
        dir.file(std::string("a").append(std::to_string(threads)).append(".onnx"));
    const auto q =
        run_cli("qat " + kUnet3d + " --data " + dir.file("x.npy") +
                " --distill --distill-weight 1 --steps 3 --batch 2 --lr 1e-3 --threads " +
                std::to_string(threads) + " -o " + out);
    ASSERT_EQ(q.exit_code, 0) << q.err;
    bytes[threads - 1] = testing::read_text(out);
  }
  EXPECT_EQ(bytes[0], bytes[1]);
  EXPECT_NE(bytes[0], testing::read_text(qdq));  // trained
  testing::expect_verified_by_ort(dir.file("a1.onnx"), dir.file("v.npy"), dir.file("ort2.npz"));
}

}  // namespace
}  // namespace qforge
