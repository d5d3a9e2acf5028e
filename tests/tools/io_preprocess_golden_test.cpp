// qforge's image pipeline against torchvision's on the images data/generate/preprocess_goldens.py
// wrote: PIL open, convert("RGB"), Resize(20), CenterCrop((15, 17)), ToTensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/tensor.h"
#include "tools/io/image_folder.h"
#include "tools/io/npy.h"

namespace qforge::io {
namespace {

const char* const kImages[] = {
    "rgb420_37x23.jpg",   "rgb444_23x37.jpg", "rgb422_progressive_41x30.jpg",
    "gray_31x29.jpg",     "cmyk_26x21.jpg",   "rgb_37x23.png",
    "upscale_13x9.png",   "rgba_29x33.png",   "la_19x24.png",
    "gray_25x19.png",     "gray16_21x27.png", "palette_33x22.png",
    "rgb420_311x205.jpg", "gray_227x251.png",
};

std::string golden_dir() {
  return std::string(QFORGE_DATA_DIR) + "/golden/preprocess/";
}

// torchvision's ToTensor output before normalisation: pixel / 255, 3 x 15 x 17.
Preprocess torchvision_pipeline() {
  Preprocess p;
  p.channels = 3;
  p.height = 15;
  p.width = 17;
  p.resize = {20};
  p.crop = {15, 17};
  return p;
}

TEST(IoPreprocessGolden, PixelsEqualTorchvision) {
  const Preprocess p = torchvision_pipeline();
  float worst = 0;
  for (const char* name : kImages) {
    kernels::Tensor golden = read_npy(golden_dir() + name + ".npy");
    ASSERT_EQ(golden.describe(), "float32[3, 15, 17]") << name;
    std::vector<float> pixels(3 * 15 * 17);
    load_image(golden_dir() + name, p, pixels.data());
    float max_diff = 0;
    for (size_t i = 0; i < pixels.size(); ++i) {
      max_diff = std::max(max_diff, std::abs(pixels[i] - golden.data<float>()[i]));
    }
    worst = std::max(worst, max_diff);
    EXPECT_EQ(max_diff, 0.0f) << name << ": max |qforge - torchvision| = " << max_diff * 255
                              << "/255";
  }
  std::printf("max |qforge - torchvision| over %zu images: %g/255\n", std::size(kImages),
              worst * 255);
}

}  // namespace
}  // namespace qforge::io
