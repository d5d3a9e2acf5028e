// An 8-bit image in memory and the pixel limit every image decoder applies before allocating.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qforge::io {

// An 8-bit image, rows of width x channels interleaved bytes. channels: 1 gray, 2 gray+alpha,
// 3 RGB, 4 RGBA.
struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;
  std::vector<uint8_t> pixels;
};

// The most pixels a decoder accepts: PIL's default MAX_IMAGE_PIXELS (1024^3 / 4 / 3 bytes of
// RGB), above which a file is most likely a decompression bomb rather than a photo.
inline constexpr int64_t kMaxImagePixels = 89'478'485;

// Invalid error naming the file and both numbers when width x height exceeds kMaxImagePixels.
void check_image_pixels(int64_t width, int64_t height, const std::string& name);

}  // namespace qforge::io
