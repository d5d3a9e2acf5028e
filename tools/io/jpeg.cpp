// JPEG decoding through TurboJPEG with PIL's decoder settings.
#include "tools/io/jpeg.h"

#include <turbojpeg.h>

#include <cstring>

#include "kernels/error.h"

namespace qforge::io {

namespace {

// PIL's convert("RGB") from CMYK: each of C, M, Y scaled by (255 - K), with its rounded
// division by 255.
uint8_t cmyk_channel(int ink, int not_black) {
  int product = ink * not_black + 128;
  int scaled = ((product >> 8) + product) >> 8;
  int value = not_black - scaled;
  return static_cast<uint8_t>(value < 0 ? 0 : (value > 255 ? 255 : value));
}

}  // namespace

bool is_jpeg(std::span<const uint8_t> bytes) {
  return bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF;
}

JpegReader::JpegReader(std::span<const uint8_t> bytes, const std::string& name)
    : bytes_(bytes), name_(name) {
  if (!is_jpeg(bytes)) {
    throw_invalid(name + ": not a JPEG file (expected the start-of-image marker FF D8 FF)");
  }
  handle_.reset(tjInitDecompress());
  if (!handle_) throw_internal(name + ": TurboJPEG could not allocate a decoder");
  int subsampling = 0, colorspace = 0;
  if (tjDecompressHeader3(handle_.get(), bytes_.data(), static_cast<unsigned long>(bytes_.size()),
                          &width_, &height_, &subsampling, &colorspace) != 0) {
    fail("header");
  }
  // A file cut before its frame header can leave TurboJPEG with a size of 0.
  if (width_ <= 0 || height_ <= 0) fail("header");
  check_image_pixels(width_, height_, name_);
  cmyk_ = colorspace == TJCS_CMYK || colorspace == TJCS_YCCK;
  channels_ = colorspace == TJCS_GRAY ? 1 : 3;
}

void JpegReader::HandleDeleter::operator()(void* handle) const {
  tjDestroy(handle);
}

void JpegReader::fail(const char* stage) const {
  throw_invalid(name_ + ": invalid JPEG file (" + stage + ": " + tjGetErrorStr2(handle_.get()) +
                ")");
}

Image JpegReader::read_image(std::vector<uint8_t> storage) {
  const int stored_channels = cmyk_ ? 4 : channels_;
  const int format = cmyk_ ? TJPF_CMYK : (channels_ == 1 ? TJPF_GRAY : TJPF_RGB);
  std::vector<uint8_t> stored = std::move(storage);
  stored.resize(static_cast<size_t>(width_) * height_ * stored_channels);
  // PIL's settings: the accurate islow IDCT and fancy upsampling (TurboJPEG's default; the
  // flag TJFLAG_FASTUPSAMPLE would turn it off). Progressive files with an absurd number of
  // scans are refused rather than decoded for minutes.
  const int flags = TJFLAG_ACCURATEDCT | TJFLAG_LIMITSCANS;
  if (tjDecompress2(handle_.get(), bytes_.data(), static_cast<unsigned long>(bytes_.size()),
                    stored.data(), width_, 0, height_, format, flags) != 0) {
    // Warnings (such as extraneous bytes between markers) leave a complete image, which PIL
    // accepts; a file that ends early is refused, as PIL refuses truncated images.
    const char* message = tjGetErrorStr2(handle_.get());
    if (tjGetErrorCode(handle_.get()) == TJERR_FATAL ||
        std::strstr(message, "Premature end of JPEG file") != nullptr) {
      fail("data");
    }
  }
  if (!cmyk_) return Image{width_, height_, channels_, std::move(stored)};
  // PIL reads CMYK JPEGs as Adobe writes them, inverted, then converts to RGB.
  Image rgb{width_, height_, 3, std::vector<uint8_t>(static_cast<size_t>(width_) * height_ * 3)};
  for (size_t i = 0, n = static_cast<size_t>(width_) * height_; i < n; ++i) {
    const uint8_t* s = stored.data() + 4 * i;
    int not_black = s[3];  // 255 - K, K being 255 - the stored value
    for (int c = 0; c < 3; ++c) rgb.pixels[3 * i + c] = cmyk_channel(255 - s[c], not_black);
  }
  return rgb;
}

Image parse_jpeg(std::span<const uint8_t> bytes, const std::string& name) {
  JpegReader reader(bytes, name);
  return reader.read_image();
}

}  // namespace qforge::io
