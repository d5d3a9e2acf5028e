#include "kernels/reference/resize_reference.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace qforge::kernels::reference {
namespace {

// The taps of output index x along one axis: (source index, weight) pairs.
std::vector<std::pair<int64_t, double>> taps(const ResizeGeometry& g, int64_t x, int64_t in,
                                             int64_t out, float scale) {
  const float source = resize_source_coordinate(g.coordinates, x, scale, in, out);
  if (g.mode == ResizeMode::kNearest) {
    double index = 0;
    const double s = source;
    switch (g.rounding) {
      case NearestRounding::kRoundPreferFloor:
        index = s - std::floor(s) <= 0.5 ? std::floor(s) : std::ceil(s);
        break;
      case NearestRounding::kRoundPreferCeil:
        index = s - std::floor(s) < 0.5 ? std::floor(s) : std::ceil(s);
        break;
      case NearestRounding::kFloor:
        index = std::floor(s);
        break;
      case NearestRounding::kCeil:
        index = std::ceil(s);
        break;
    }
    return {{std::clamp<int64_t>(static_cast<int64_t>(index), 0, in - 1), 1.0}};
  }
  // Linear: the coordinate clamped into the input, then its two neighbours.
  const double s = std::clamp<double>(source, 0.0, static_cast<double>(in - 1));
  const auto lo = static_cast<int64_t>(std::floor(s));
  const double t = s - static_cast<double>(lo);
  if (lo + 1 >= in) return {{in - 1, 1.0}};
  return {{lo, 1.0 - t}, {lo + 1, t}};
}

}  // namespace

void resize_f64(const ResizeGeometry& g, const double* x, double* y) {
  for (int64_t p = 0; p < g.planes; ++p) {
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        double sum = 0.0;
        for (const auto& [ih, wh] : taps(g, oh, g.in_h, g.out_h, g.scale_h)) {
          for (const auto& [iw, ww] : taps(g, ow, g.in_w, g.out_w, g.scale_w)) {
            sum += wh * ww * x[(p * g.in_h + ih) * g.in_w + iw];
          }
        }
        y[(p * g.out_h + oh) * g.out_w + ow] = sum;
      }
    }
  }
}

void resize_backward(const ResizeGeometry& g, const double* dy, double* dx) {
  std::fill_n(dx, g.planes * g.in_h * g.in_w, 0.0);
  for (int64_t p = 0; p < g.planes; ++p) {
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const double grad = dy[(p * g.out_h + oh) * g.out_w + ow];
        for (const auto& [ih, wh] : taps(g, oh, g.in_h, g.out_h, g.scale_h)) {
          for (const auto& [iw, ww] : taps(g, ow, g.in_w, g.out_w, g.scale_w)) {
            dx[(p * g.in_h + ih) * g.in_w + iw] += wh * ww * grad;
          }
        }
      }
    }
  }
}

namespace {

// Calls fn(y index, x index, w index) for every product the transposed convolution adds.
template <class Fn>
void for_each_tap(const ConvTransposeGeometry& g, Fn&& fn) {
  const int64_t in_g = g.in_channels / g.group;
  const int64_t out_g = g.out_channels / g.group;
  for (int64_t n = 0; n < g.batch; ++n) {
    for (int64_t ci = 0; ci < g.in_channels; ++ci) {
      const int64_t group = ci / in_g;
      for (int64_t j = 0; j < out_g; ++j) {
        const int64_t co = group * out_g + j;
        for (int64_t ih = 0; ih < g.in_h; ++ih) {
          for (int64_t iw = 0; iw < g.in_w; ++iw) {
            for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
              const int64_t oh = ih * g.stride_h - g.pad_top + kh * g.dilation_h;
              if (oh < 0 || oh >= g.out_h) continue;
              for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
                const int64_t ow = iw * g.stride_w - g.pad_left + kw * g.dilation_w;
                if (ow < 0 || ow >= g.out_w) continue;
                fn(((n * g.out_channels + co) * g.out_h + oh) * g.out_w + ow,
                   ((n * g.in_channels + ci) * g.in_h + ih) * g.in_w + iw,
                   ((ci * out_g + j) * g.kernel_h + kh) * g.kernel_w + kw);
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace

void conv_transpose2d_f64(const ConvTransposeGeometry& g, const double* x, const double* w,
                          const double* bias, double* y) {
  const int64_t pixels = g.out_h * g.out_w;
  for (int64_t i = 0; i < g.batch * g.out_channels * pixels; ++i) {
    y[i] = bias ? bias[(i / pixels) % g.out_channels] : 0.0;
  }
  for_each_tap(g, [&](int64_t yi, int64_t xi, int64_t wi) { y[yi] += x[xi] * w[wi]; });
}

void conv_transpose2d_backward(const ConvTransposeGeometry& g, const double* x, const double* w,
                               const double* dy, double* dx, double* dw, double* dbias) {
  const int64_t pixels = g.out_h * g.out_w;
  if (dx) std::fill_n(dx, g.batch * g.in_channels * g.in_h * g.in_w, 0.0);
  if (dw) {
    std::fill_n(dw, g.in_channels * (g.out_channels / g.group) * g.kernel_h * g.kernel_w, 0.0);
  }
  for_each_tap(g, [&](int64_t yi, int64_t xi, int64_t wi) {
    if (dx) dx[xi] += w[wi] * dy[yi];
    if (dw) dw[wi] += x[xi] * dy[yi];
  });
  if (dbias) {
    std::fill_n(dbias, g.out_channels, 0.0);
    for (int64_t i = 0; i < g.batch * g.out_channels * pixels; ++i) {
      dbias[(i / pixels) % g.out_channels] += dy[i];
    }
  }
}

}  // namespace qforge::kernels::reference
