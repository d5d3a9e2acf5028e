// Fuzz target: PNG bytes through the decoder the image datasets use (libpng behind qforge's
// error handling: signature, header, expansion of palette, gray and 16-bit images, rows).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "kernels/error.h"
#include "tools/io/image_folder.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qforge;
  try {
    io::Image image = io::parse_png(std::span(data, size), "fuzz.png");
    // A decoded image holds exactly its pixels, 8 bits per sample.
    if (image.channels < 1 || image.channels > 4 ||
        image.pixels.size() != static_cast<size_t>(image.width) * image.height * image.channels) {
      std::abort();
    }
  } catch (const Error&) {
  }
  return 0;
}
