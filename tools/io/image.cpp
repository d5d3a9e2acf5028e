// The pixel limit shared by the image decoders.
#include "tools/io/image.h"

#include "kernels/error.h"

namespace qforge::io {

void check_image_pixels(int64_t width, int64_t height, const std::string& name) {
  if (width > 0 && height > 0 && width * height <= kMaxImagePixels) return;
  if (width <= 0 || height <= 0) {
    throw_invalid(name + ": image header gives an empty size " + std::to_string(width) + "×" +
                  std::to_string(height));
  }
  throw_invalid(name + ": image header claims " + std::to_string(width) + "×" +
                std::to_string(height) + " = " + std::to_string(width * height) +
                " pixels, over qforge's limit of " + std::to_string(kMaxImagePixels) +
                " (PIL's default MAX_IMAGE_PIXELS); refusing a likely decompression bomb");
}

}  // namespace qforge::io
