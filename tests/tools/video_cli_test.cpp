// Video models: 3-D convolutions and pools (kernels/conv_depth.h, runtime/ops/pool_ops.cpp) in a
// small classifier built as torchvision's r3d_18 and r2plus1d_18 are
// (data/generate/video_models.py): qforge runs it as ONNX Runtime does, fuses its Conv3d-BN-ReLU
// chains into the 2-D models' modules, and its calibrated and QAT models compute in ONNX Runtime
// what qforge's fake quant computes at every Q/DQ point.
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

// Clips [n, 3, 8, 32, 32], uniform in [-2, 2), seeded, written to `path`.
Tensor write_clips(const std::string& path, int64_t n, uint32_t seed) {
  Tensor clips = testing::random_f32({n, 3, 8, 32, 32}, seed, -2.0f, 2.0f);
  io::write_npy(path, clips);
  return clips;
}

TEST(VideoCli, RunComputesWhatOnnxRuntimeComputes) {
  TempDir dir;
  const Tensor clips = write_clips(dir.file("x.npy"), 3, 1);
  const auto r = run_cli("run " + kVideo + " --data " + dir.file("x.npy") + " --batch 2 -o " +
                         dir.file("y.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<Tensor> want = testing::run_ort(kVideo, {clips});
  testing::expect_close_scaled(io::read_npy(dir.file("y.npy")), want[0], 1e-5, "logits");

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
  std::string bytes[2];
  for (int threads : {1, 2}) {
    const std::string out =
        dir.file(std::string("q").append(std::to_string(threads)).append(".onnx"));
    const auto r = run_cli("qat " + kVideo + " --data " + dir.file("x.npy") +
                           " --distill --steps 3 --batch 2 --lr 1e-2 --threads " +
                           std::to_string(threads) + " -o " + out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("training     3 steps of 2 "), std::string::npos) << r.out;
    bytes[threads - 1] = testing::read_text(out);
  }
  EXPECT_EQ(bytes[0], bytes[1]);
  write_clips(dir.file("v.npy"), 2, 5);
  testing::expect_verified_by_ort(dir.file("q1.onnx"), dir.file("v.npy"), dir.file("ort.npz"));
}

}  // namespace
}  // namespace qforge
