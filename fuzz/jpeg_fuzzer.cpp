// Fuzz target: JPEG bytes through the decoder the image datasets use (TurboJPEG behind qforge's
// error handling: header, pixel limit, gray/RGB/CMYK decoding, truncation), then the decoded
// image through the resize and center crop of the preprocessing.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "kernels/error.h"
#include "tools/io/jpeg.h"
#include "tools/io/resample.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qforge;
  try {
    io::JpegReader reader(std::span(data, size), "fuzz.jpg");
    // Large but allowed sizes decode correctly and slowly; they teach the fuzzer nothing.
    if (static_cast<int64_t>(reader.width()) * reader.height() > (1 << 22)) return 0;
    io::Image image = reader.read_image();
    // A decoded image holds exactly its pixels: gray or RGB, 8 bits per sample.
    if ((image.channels != 1 && image.channels != 3) || image.width != reader.width() ||
        image.height != reader.height() ||
        image.pixels.size() != static_cast<size_t>(image.width) * image.height * image.channels) {
      std::abort();
    }
    io::Image small =
        io::resize_bilinear(image, std::max(1, image.width / 3), std::max(1, image.height / 2));
    io::Image crop = io::center_crop(small, 5, 7);
    if (crop.pixels.size() != static_cast<size_t>(5 * 7 * image.channels)) std::abort();
  } catch (const Error&) {
  }
  return 0;
}
