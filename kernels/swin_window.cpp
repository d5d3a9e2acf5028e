// Swin window partition/reverse: per output line, the source rows by index arithmetic, copied as
// contiguous runs of C-float rows (or zeros for padding).
#include "kernels/swin_window.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/error.h"
#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

// Rows per task: about 16K floats moved each.
int64_t row_grain(int64_t channels) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, channels));
}

int64_t wrap(int64_t i, int64_t n) {
  return i >= n ? i - n : i;
}

}  // namespace

void check_swin_window_geometry(const SwinWindowGeometry& g) {
  auto fail = [](const std::string& rule, int64_t got) {
    std::string message = "swin window: expected ";
    message.append(rule).append(", got ").append(std::to_string(got));
    throw_invalid(message);
  };
  if (g.batch < 1) fail("batch >= 1", g.batch);
  if (g.height < 1) fail("height >= 1", g.height);
  if (g.width < 1) fail("width >= 1", g.width);
  if (g.channels < 1) fail("channels >= 1", g.channels);
  if (g.window_h < 1) fail("window height >= 1", g.window_h);
  if (g.window_w < 1) fail("window width >= 1", g.window_w);
  if (g.pad_h < 0) fail("bottom padding >= 0", g.pad_h);
  if (g.pad_w < 0) fail("right padding >= 0", g.pad_w);
  if (g.padded_h() % g.window_h != 0) {
    fail("padded height a multiple of window height " + std::to_string(g.window_h), g.padded_h());
  }
  if (g.padded_w() % g.window_w != 0) {
    fail("padded width a multiple of window width " + std::to_string(g.window_w), g.padded_w());
  }
  if (g.shift_h < 0 || g.shift_h >= g.padded_h()) {
    fail("vertical shift in [0, " + std::to_string(g.padded_h()) + ")", g.shift_h);
  }
  if (g.shift_w < 0 || g.shift_w >= g.padded_w()) {
    fail("horizontal shift in [0, " + std::to_string(g.padded_w()) + ")", g.shift_w);
  }
}

int64_t swin_partition_source_row(const SwinWindowGeometry& g, int64_t row) {
  const int64_t area = g.window_h * g.window_w;
  const int64_t windows_w = g.padded_w() / g.window_w;
  const int64_t image_windows = g.windows_per_image();
  const int64_t window = row / area, inside = row % area;
  const int64_t b = window / image_windows, w = window % image_windows;
  const int64_t yp = (w / windows_w) * g.window_h + inside / g.window_w;
  const int64_t xp = (w % windows_w) * g.window_w + inside % g.window_w;
  const int64_t y = wrap(yp + g.shift_h, g.padded_h());
  const int64_t x = wrap(xp + g.shift_w, g.padded_w());
  if (y >= g.height || x >= g.width) return -1;
  return (b * g.height + y) * g.width + x;
}

int64_t swin_reverse_source_row(const SwinWindowGeometry& g, int64_t row) {
  const int64_t image = g.height * g.width;
  const int64_t b = row / image, pixel = row % image;
  const int64_t y = pixel / g.width, x = pixel % g.width;
  // Where the partition put padded pixel (y, x): at (y - shift) mod padded.
  const int64_t yp = wrap(y - g.shift_h + g.padded_h(), g.padded_h());
  const int64_t xp = wrap(x - g.shift_w + g.padded_w(), g.padded_w());
  const int64_t windows_w = g.padded_w() / g.window_w;
  const int64_t window =
      b * g.windows_per_image() + (yp / g.window_h) * windows_w + xp / g.window_w;
  return window * g.window_h * g.window_w + (yp % g.window_h) * g.window_w + xp % g.window_w;
}

// Parallel over window lines (one row of one window: ww pixels); each line is copied as the few
// runs of pixels that are contiguous in the image (split where the roll wraps or padding starts).
void swin_window_partition(const SwinWindowGeometry& g, const float* image, float* windows) {
  const int64_t c = g.channels, wh = g.window_h, ww = g.window_w;
  const int64_t hp = g.padded_h(), wp = g.padded_w();
  const int64_t windows_w = wp / ww, image_windows = g.windows_per_image();
  const int64_t lines = g.batch * image_windows * wh;
  parallel_for(lines, row_grain(ww * c), [&](int64_t begin, int64_t end) {
    for (int64_t line = begin; line < end; ++line) {
      const int64_t window = line / wh, r = line % wh;
      const int64_t b = window / image_windows, w = window % image_windows;
      const int64_t y = wrap((w / windows_w) * wh + r + g.shift_h, hp);
      const int64_t x0 = (w % windows_w) * ww + g.shift_w;
      float* dst = windows + line * ww * c;
      if (y >= g.height) {
        std::memset(dst, 0, static_cast<size_t>(ww * c) * sizeof(float));
        continue;
      }
      const float* src = image + (b * g.height + y) * g.width * c;
      for (int64_t q = 0; q < ww;) {
        const int64_t x = wrap(x0 + q, wp);
        const int64_t n = std::min(ww - q, x < g.width ? g.width - x : wp - x);
        const size_t bytes = static_cast<size_t>(n * c) * sizeof(float);
        if (x < g.width) {
          std::memcpy(dst + q * c, src + x * c, bytes);
        } else {
          std::memset(dst + q * c, 0, bytes);
        }
        q += n;
      }
    }
  });
}

// Parallel over image lines (one row of one image: W pixels), copied as runs that stay inside
// one window row and do not wrap.
void swin_window_reverse(const SwinWindowGeometry& g, const float* windows, float* image) {
  const int64_t c = g.channels, wh = g.window_h, ww = g.window_w;
  const int64_t hp = g.padded_h(), wp = g.padded_w();
  const int64_t windows_w = wp / ww, image_windows = g.windows_per_image();
  const int64_t lines = g.batch * g.height;
  parallel_for(lines, row_grain(g.width * c), [&](int64_t begin, int64_t end) {
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / g.height, y = line % g.height;
      const int64_t yp = wrap(y - g.shift_h + hp, hp);
      const float* window_rows =
          windows + ((b * image_windows + (yp / wh) * windows_w) * wh + yp % wh) * ww * c;
      float* dst = image + line * g.width * c;
      for (int64_t x = 0; x < g.width;) {
        const int64_t xp = wrap(x - g.shift_w + wp, wp);
        const int64_t q = xp % ww;
        const int64_t n = std::min({g.width - x, ww - q, wp - xp});
        std::memcpy(dst + x * c, window_rows + ((xp / ww) * wh * ww + q) * c,
                    static_cast<size_t>(n * c) * sizeof(float));
        x += n;
      }
    }
  });
}

}  // namespace qforge::kernels
