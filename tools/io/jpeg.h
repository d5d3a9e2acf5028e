// JPEG decoding with libjpeg-turbo's TurboJPEG API, set up as PIL decodes: accurate integer
// IDCT (islow) and fancy (smooth) chroma upsampling, so that pixels equal PIL's.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tools/io/image.h"

namespace qforge::io {

// True when bytes start with a JPEG start-of-image marker followed by another marker.
bool is_jpeg(std::span<const uint8_t> bytes);

// Reads the header of JPEG bytes (kept by reference: they must outlive the reader), then decodes
// on demand. Errors name the file: Invalid for a corrupt or truncated file ("Premature end of
// JPEG file": PIL refuses truncated images too) and for a header over kMaxImagePixels, checked
// before any pixel buffer is allocated.
class JpegReader {
 public:
  JpegReader(std::span<const uint8_t> bytes, const std::string& name);
  JpegReader(const JpegReader&) = delete;
  JpegReader& operator=(const JpegReader&) = delete;

  int width() const { return width_; }
  int height() const { return height_; }
  // 1 for a grayscale JPEG, 3 otherwise (CMYK and YCCK images decode to RGB).
  int channels() const { return channels_; }
  bool cmyk() const { return cmyk_; }

  // Gray images decode to 1 channel, color ones to RGB; CMYK and YCCK images are read as PIL
  // reads them (Adobe's inverted CMYK) and converted to RGB as PIL's convert("RGB") does. The
  // pixels go into `storage`, whose memory a caller decoding many images can pass back each
  // time (a photo's pixels are megabytes, fresh pages each time otherwise).
  Image read_image(std::vector<uint8_t> storage = {});

 private:
  [[noreturn]] void fail(const char* stage) const;

  struct HandleDeleter {
    void operator()(void* handle) const;
  };

  std::span<const uint8_t> bytes_;
  const std::string& name_;
  std::unique_ptr<void, HandleDeleter> handle_;
  int width_ = 0, height_ = 0, channels_ = 0;
  bool cmyk_ = false;
};

// Reads the header and decodes the whole image.
Image parse_jpeg(std::span<const uint8_t> bytes, const std::string& name);

}  // namespace qforge::io
