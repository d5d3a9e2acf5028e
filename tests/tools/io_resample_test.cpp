// torchvision's Resize size rule, CenterCrop's offsets and padding, and PIL's bilinear
// arithmetic on cases worked out by hand (the golden test compares whole images with PIL).
#include "tools/io/resample.h"

#include <gtest/gtest.h>

#include <utility>
#include <vector>

namespace qforge::io {
namespace {

Image row(std::vector<uint8_t> values) {
  const int width = static_cast<int>(values.size());
  return Image{width, 1, 1, std::move(values)};
}

TEST(IoResample, ResizedSizeFollowsTorchvision) {
  const int twenty[] = {20};
  EXPECT_EQ(resized_size(37, 23, twenty), (std::pair{32, 20}));  // int(20 * 37 / 23) = 32
  EXPECT_EQ(resized_size(23, 37, twenty), (std::pair{20, 32}));
  EXPECT_EQ(resized_size(20, 20, twenty), (std::pair{20, 20}));
  const int n256[] = {256};
  EXPECT_EQ(resized_size(500, 333, n256), (std::pair{384, 256}));  // 384.38 truncated
  EXPECT_EQ(resized_size(333, 500, n256), (std::pair{256, 384}));
  EXPECT_EQ(resized_size(640, 480, n256), (std::pair{341, 256}));  // 341.33
  const int both[] = {7, 9};                                       // (H, W)
  EXPECT_EQ(resized_size(100, 50, both), (std::pair{9, 7}));
}

TEST(IoResample, CenterCropRoundsHalvesToEven) {
  const Image ten = row({0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  // (10 - 7) / 2 = 1.5 rounds to 2; (10 - 5) / 2 = 2.5 to 2; (10 - 9) / 2 = 0.5 to 0.
  EXPECT_EQ(center_crop(ten, 1, 7).pixels, (std::vector<uint8_t>{2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(center_crop(ten, 1, 5).pixels, (std::vector<uint8_t>{2, 3, 4, 5, 6}));
  EXPECT_EQ(center_crop(ten, 1, 9).pixels, (std::vector<uint8_t>{0, 1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(center_crop(ten, 1, 4).pixels, (std::vector<uint8_t>{3, 4, 5, 6}));
}

TEST(IoResample, CenterCropPadsWithZerosWhenLarger) {
  // Width 3 to 6: one zero column on the left, two on the right.
  EXPECT_EQ(center_crop(row({7, 8, 9}), 1, 6).pixels, (std::vector<uint8_t>{0, 7, 8, 9, 0, 0}));
  // A 3x2 RGB-less image to 2 wide and 4 high: rows padded above (1) and below (1), the width
  // cropped at round(0.5) = 0.
  Image image{3, 2, 1, {1, 2, 3, 4, 5, 6}};
  Image out = center_crop(image, 4, 2);
  EXPECT_EQ(out.width, 2);
  EXPECT_EQ(out.height, 4);
  EXPECT_EQ(out.pixels, (std::vector<uint8_t>{0, 0, 1, 2, 4, 5, 0, 0}));
}

TEST(IoResample, BilinearWeightsWidenWhenShrinking) {
  // 4 -> 2: support 2; output 0 reads pixels 0..2 with weights 3/7, 3/7, 1/7 (50.5 in exact
  // arithmetic, 50 in PIL's fixed point), output 1 pixels 1..3 with 1/7, 3/7, 3/7 (160).
  Image out = resize_bilinear(row({0, 70, 140, 210}), 2, 1);
  EXPECT_EQ(out.pixels, (std::vector<uint8_t>{50, 160}));
  // 2 -> 4 (enlarging keeps support 1): centres 0.25, 0.75, 1.25, 1.75 give 0, 25, 75, 100.
  out = resize_bilinear(row({0, 100}), 4, 1);
  EXPECT_EQ(out.pixels, (std::vector<uint8_t>{0, 25, 75, 100}));
  // A constant image stays constant, in both directions and with several channels.
  Image flat{5, 3, 3, std::vector<uint8_t>(5 * 3 * 3, 77)};
  out = resize_bilinear(flat, 2, 7);
  EXPECT_EQ(out.pixels, std::vector<uint8_t>(2 * 7 * 3, 77));
}

}  // namespace
}  // namespace qforge::io
