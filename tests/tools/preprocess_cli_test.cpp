// The preprocessing flags end to end: a one-node Relu model (its output is its input, pixels
// being >= 0 before normalisation) shows what qforge feeds a model, compared with torchvision's
// tensors from data/generate/preprocess_goldens.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/tensor.h"
#include "tests/support/onnx_models.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;

using testing::data_path;
using testing::expect_one_line_error;
using testing::one_node_model;
using testing::run_cli;
using testing::TempDir;

// Sorted by name, as the folder lists them.
const char* const kImages[] = {"gray_31x29.jpg", "la_19x24.png", "palette_33x22.png",
                               "rgb420_37x23.jpg"};
const std::string kTorchvisionFlags = " --resize 20 --crop 15,17 --pixel-scale 255";

// A folder of loose images (an unlabelled set) copied from the goldens.
std::string image_folder(const TempDir& dir) {
  fs::create_directories(dir.file("images"));
  for (const char* name : kImages) {
    fs::copy_file(data_path("golden/preprocess/") + name, dir.file("images/") + name);
  }
  return dir.file("images");
}

std::string relu_model(const TempDir& dir, const std::vector<int64_t>& shape) {
  std::string path = dir.file("relu.onnx");
  testing::write_bytes(path, one_node_model("Relu", "relu", shape));
  return path;
}

kernels::Tensor golden(const char* name) {
  return io::read_npy(data_path("golden/preprocess/") + name + ".npy");
}

TEST(PreprocessCli, ModelWithoutMetadataNeedsFlags) {
  TempDir dir;
  std::string model = relu_model(dir, {-1, 3, 15, 17});
  auto r = run_cli("run " + model + " --data " + image_folder(dir));
  expect_one_line_error(r, "the model has no qforge.* preprocessing metadata");
  EXPECT_NE(r.err.find("--preset imagenet"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--mean and --std"), std::string::npos) << r.err;
}

TEST(PreprocessCli, FlagsGiveTorchvisionPixels) {
  TempDir dir;
  std::string model = relu_model(dir, {-1, 3, 15, 17});
  auto r = run_cli("run " + model + " --data " + image_folder(dir) + kTorchvisionFlags + " -o " +
                   dir.file("out.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  kernels::Tensor out = io::read_npy(dir.file("out.npy"));
  ASSERT_EQ(out.describe(), "float32[4, 3, 15, 17]");
  const size_t n = 3 * 15 * 17;
  for (size_t i = 0; i < std::size(kImages); ++i) {
    kernels::Tensor expected = golden(kImages[i]);
    EXPECT_EQ(std::vector<float>(out.data<float>() + n * i, out.data<float>() + n * (i + 1)),
              std::vector<float>(expected.data<float>(), expected.data<float>() + n))
        << kImages[i];
  }
}

TEST(PreprocessCli, LayoutChannelOrderMeanAndStd) {
  TempDir dir;
  std::string model = relu_model(dir, {-1, 15, 17, 3});
  auto r = run_cli("run " + model + " --data " + image_folder(dir) + kTorchvisionFlags +
                   " --layout nhwc --channel-order BGR --mean 0.5,0.25,0 --std 0.5,2,0.25 -o " +
                   dir.file("out.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  kernels::Tensor out = io::read_npy(dir.file("out.npy"));
  ASSERT_EQ(out.describe(), "float32[4, 15, 17, 3]");
  const float mean[] = {0.5f, 0.25f, 0.0f};
  const float stdev[] = {0.5f, 2.0f, 0.25f};
  for (size_t i = 0; i < std::size(kImages); ++i) {
    kernels::Tensor rgb = golden(kImages[i]);  // 3 x 15 x 17, RGB
    std::vector<float> expected;
    for (int pixel = 0; pixel < 15 * 17; ++pixel) {
      for (int c = 0; c < 3; ++c) {
        float x = rgb.data<float>()[(2 - c) * 15 * 17 + pixel];  // BGR
        expected.push_back(std::max((x - mean[c]) / stdev[c], 0.0f));
      }
    }
    const float* got = out.data<float>() + expected.size() * i;
    EXPECT_EQ(std::vector<float>(got, got + expected.size()), expected) << kImages[i];
  }
}

TEST(PreprocessCli, PresetImagenetIsItsFlags) {
  TempDir dir;
  std::string model = relu_model(dir, {-1, 3, 224, 224});
  std::string data = image_folder(dir);
  auto preset = run_cli("run " + model + " --data " + data + " --preset imagenet -o " +
                        dir.file("preset.npy"));
  ASSERT_EQ(preset.exit_code, 0) << preset.err;
  auto flags = run_cli("run " + model + " --data " + data +
                       " --resize 256 --crop 224 --pixel-scale 255 --mean 0.485,0.456,0.406 "
                       "--std 0.229,0.224,0.225 --channel-order RGB --layout NCHW -o " +
                       dir.file("flags.npy"));
  ASSERT_EQ(flags.exit_code, 0) << flags.err;
  EXPECT_EQ(testing::read_text(dir.file("preset.npy")), testing::read_text(dir.file("flags.npy")));
  // A flag overrides the preset's value.
  auto other = run_cli("run " + model + " --data " + data + " --preset imagenet --std 1 -o " +
                       dir.file("other.npy"));
  ASSERT_EQ(other.exit_code, 0) << other.err;
  EXPECT_NE(testing::read_text(dir.file("preset.npy")), testing::read_text(dir.file("other.npy")));
}

TEST(PreprocessCli, WrongSizeSuggestsResizeAndCrop) {
  TempDir dir;
  std::string model = relu_model(dir, {-1, 3, 15, 17});
  auto r = run_cli("run " + model + " --data " + image_folder(dir) + " --pixel-scale 255");
  expect_one_line_error(r, "gray_31x29.jpg: image is 31×29, the model expects 17×15");
  EXPECT_NE(r.err.find("--resize and --crop"), std::string::npos) << r.err;
  r = run_cli("run " + model + " --data " + dir.file("images") + " --pixel-scale 255 --crop 15");
  expect_one_line_error(r, "gray_31x29.jpg: image is 31×29 and 15×15 after resize and crop");
}

TEST(PreprocessCli, SkippedFilesAreCountedOnce) {
  TempDir dir;
  std::string model = relu_model(dir, {-1, 3, 15, 17});
  std::string data = image_folder(dir);
  std::ofstream(data + "/notes.txt") << "not an image";
  std::ofstream(data + "/photo.webp") << "not read by qforge";
  auto r = run_cli("run " + model + " --data " + data + kTorchvisionFlags);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "data: '" + data + "': skipped 2 files that are not .jpg, .jpeg or .png\n");
}

TEST(PreprocessCli, FlagsWithNpyDataAreAnError) {
  TempDir dir;
  std::string model = relu_model(dir, {-1, 3, 15, 17});
  io::write_npy(dir.file("x.npy"), kernels::Tensor(kernels::DType::kFloat32, {2, 3, 15, 17}));
  auto r = run_cli("run " + model + " --data " + dir.file("x.npy") + " --resize 20");
  expect_one_line_error(r, "preprocessing flags");
  EXPECT_NE(r.err.find("apply to image folders"), std::string::npos) << r.err;
}

TEST(PreprocessCli, EveryCommandReadingDataTakesTheFlags) {
  for (const char* command : {"run", "compare", "transform", "calibrate", "qat", "verify"}) {
    auto r = run_cli(std::string(command) + " --help");
    EXPECT_EQ(r.exit_code, 0) << command;
    for (const char* flag : {"--preset", "--resize", "--crop", "--pixel-scale", "--mean", "--std",
                             "--channel-order", "--layout", ".jpg/.jpeg/.png"}) {
      EXPECT_NE(r.out.find(flag), std::string::npos) << command << " --help lacks " << flag;
    }
  }
}

}  // namespace
}  // namespace qforge
