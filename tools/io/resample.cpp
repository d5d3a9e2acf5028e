// PIL's bilinear resampling arithmetic and torchvision's Resize and CenterCrop geometry.
#include "tools/io/resample.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kernels/error.h"

namespace qforge::io {

namespace {

// Fractional bits of the fixed-point weights: a sum of 8-bit pixels times weights that add up
// to 1 stays inside 32 bits.
constexpr int kWeightBits = 32 - 8 - 2;

double triangle(double x) {
  x = std::abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Where each output pixel reads along one axis: `first[i]`, `count[i]` input pixels, with
// weights[i * taps + k].
struct AxisWeights {
  int taps = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<int32_t> weights;
};

AxisWeights axis_weights(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 1.0 * filter_scale;  // the triangle's support is 1 at scale 1
  AxisWeights w;
  w.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  w.first.resize(out_size);
  w.count.resize(out_size);
  w.weights.assign(static_cast<size_t>(out_size) * w.taps, 0);
  std::vector<double> real(w.taps);
  const double inverse_scale = 1.0 / filter_scale;  // PIL multiplies by the reciprocal
  for (int out = 0; out < out_size; ++out) {
    const double center = (out + 0.5) * scale;
    // Truncation toward zero of the rounded ends, then clamped to the image.
    int lo = static_cast<int>(center - support + 0.5);
    int hi = static_cast<int>(center + support + 0.5);
    lo = std::max(lo, 0);
    hi = std::min(hi, in_size);
    const int n = hi - lo;
    double total = 0.0;
    for (int k = 0; k < n; ++k) {
      real[k] = triangle((k + lo - center + 0.5) * inverse_scale);
      total += real[k];
    }
    for (int k = 0; k < n; ++k) {
      double v = total != 0.0 ? real[k] / total : real[k];
      double fixed = v * (1 << kWeightBits);
      w.weights[static_cast<size_t>(out) * w.taps + k] =
          static_cast<int32_t>(v < 0 ? fixed - 0.5 : fixed + 0.5);
    }
    w.first[out] = lo;
    w.count[out] = n;
  }
  return w;
}

uint8_t round_to_pixel(int32_t sum) {
  int32_t v = sum >> kWeightBits;
  return static_cast<uint8_t>(std::clamp<int32_t>(v, 0, 255));
}

// Every row of `in` along x into `out` (width pixels, C channels interleaved): for each output
// pixel, every channel's sum over its taps at once, so that each tap's weight and pixels are
// read once.
template <int C>
void resample_rows(const Image& in, const AxisWeights& w, Image& out) {
  const int width = out.width;
  for (int y = 0; y < in.height; ++y) {
    const uint8_t* row = in.pixels.data() + static_cast<size_t>(y) * in.width * C;
    uint8_t* dst = out.pixels.data() + static_cast<size_t>(y) * width * C;
    for (int x = 0; x < width; ++x) {
      const int32_t* k = w.weights.data() + static_cast<size_t>(x) * w.taps;
      const uint8_t* p = row + static_cast<size_t>(w.first[x]) * C;
      int32_t sum[C];
      for (int c = 0; c < C; ++c) sum[c] = 1 << (kWeightBits - 1);
      for (int t = 0; t < w.count[x]; ++t) {
        for (int c = 0; c < C; ++c) sum[c] += p[t * C + c] * k[t];
      }
      for (int c = 0; c < C; ++c) dst[x * C + c] = round_to_pixel(sum[c]);
    }
  }
}

// One pass along x: every row of `in` resampled to `width` pixels, into `storage`'s memory. The
// sums are of integers, so their order leaves them as they are.
Image resample_width(const Image& in, int width, std::vector<uint8_t> storage = {}) {
  const AxisWeights w = axis_weights(in.width, width);
  const int ch = in.channels;
  storage.resize(static_cast<size_t>(width) * in.height * ch);
  Image out{width, in.height, ch, std::move(storage)};
  switch (ch) {
    case 1:
      resample_rows<1>(in, w, out);
      break;
    case 2:
      resample_rows<2>(in, w, out);
      break;
    case 3:
      resample_rows<3>(in, w, out);
      break;
    case 4:
      resample_rows<4>(in, w, out);
      break;
    default:
      throw_internal("resize: " + std::to_string(ch) + " channels");
  }
  return out;
}

// One pass along y: every column of `in` resampled to `height` pixels, a whole row of sums at a
// time (tap by tap, each a loop along the row that vectorises).
Image resample_height(const Image& in, int height) {
  const AxisWeights w = axis_weights(in.height, height);
  const int ch = in.channels;
  const size_t row_bytes = static_cast<size_t>(in.width) * ch;
  Image out{in.width, height, ch, std::vector<uint8_t>(row_bytes * height)};
  std::vector<int32_t> sums(row_bytes);
  for (int y = 0; y < height; ++y) {
    const int32_t* k = w.weights.data() + static_cast<size_t>(y) * w.taps;
    std::fill(sums.begin(), sums.end(), 1 << (kWeightBits - 1));
    for (int t = 0; t < w.count[y]; ++t) {
      const uint8_t* src = in.pixels.data() + row_bytes * (w.first[y] + t);
      const int32_t weight = k[t];
      int32_t* __restrict acc = sums.data();
      for (size_t i = 0; i < row_bytes; ++i) acc[i] += src[i] * weight;
    }
    uint8_t* dst = out.pixels.data() + row_bytes * y;
    for (size_t i = 0; i < row_bytes; ++i) dst[i] = round_to_pixel(sums[i]);
  }
  return out;
}

// Python's round() of an integer divided by 2: halves go to the even neighbour.
int half_to_even(int twice) {
  int q = twice / 2;
  if (twice % 2 == 0) return q;
  return q % 2 == 0 ? q : q + 1;
}

}  // namespace

std::pair<int, int> resized_size(int width, int height, std::span<const int> size) {
  if (size.size() == 2) return {size[1], size[0]};
  if (size.size() != 1) throw_internal("resized_size: expected 1 or 2 sizes");
  const int shorter = std::min(width, height);
  const int longer = std::max(width, height);
  const int64_t product = static_cast<int64_t>(size[0]) * longer;
  // Python's int(N * long / short): a correctly rounded double quotient, truncated. Sizes past
  // INT_MAX are clamped; the pixel limit refuses them.
  const double quotient = static_cast<double>(product) / shorter;
  const int new_long = quotient >= INT_MAX ? INT_MAX : static_cast<int>(quotient);
  return width <= height ? std::pair{size[0], new_long} : std::pair{new_long, size[0]};
}

Image resize_bilinear(const Image& image, int width, int height) {
  if (width <= 0 || height <= 0) {
    throw_invalid("resize: expected a positive size, got " + std::to_string(width) + "×" +
                  std::to_string(height));
  }
  if (width == image.width) return height == image.height ? image : resample_height(image, height);
  if (height == image.height) return resample_width(image, width);
  // The pass along x feeds the pass along y only: its memory (1.5 MB for a 2000×1500 photo)
  // serves the next resize on this thread.
  thread_local std::vector<uint8_t> between;
  Image wide = resample_width(image, width, std::move(between));
  Image out = resample_height(wide, height);
  between = std::move(wide.pixels);
  return out;
}

Image center_crop(const Image& image, int height, int width) {
  const int pad_left = width > image.width ? (width - image.width) / 2 : 0;
  const int pad_top = height > image.height ? (height - image.height) / 2 : 0;
  const int padded_width = std::max(width, image.width);
  const int padded_height = std::max(height, image.height);
  // Offsets of the crop inside the padded image; the source pixel of output (x, y) is
  // (x + left - pad_left, y + top - pad_top) where that lies inside the image.
  const int left = half_to_even(padded_width - width);
  const int top = half_to_even(padded_height - height);
  const int ch = image.channels;
  Image out{width, height, ch, std::vector<uint8_t>(static_cast<size_t>(width) * height * ch, 0)};
  for (int y = 0; y < height; ++y) {
    const int sy = y + top - pad_top;
    if (sy < 0 || sy >= image.height) continue;
    for (int x = 0; x < width; ++x) {
      const int sx = x + left - pad_left;
      if (sx < 0 || sx >= image.width) continue;
      std::copy_n(image.pixels.data() + (static_cast<size_t>(sy) * image.width + sx) * ch, ch,
                  out.pixels.data() + (static_cast<size_t>(y) * width + x) * ch);
    }
  }
  return out;
}

}  // namespace qforge::io
