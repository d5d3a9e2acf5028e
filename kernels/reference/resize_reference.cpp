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

namespace {

// A grid value's location in pixels along an axis of n pixels, padded as `padding` says.
double grid_location(double g, int64_t n, GridPadding padding, bool align) {
  const auto size = static_cast<double>(n);
  double at = align ? (g + 1) / 2 * (size - 1) : ((g + 1) * size - 1) / 2;
  if (padding == GridPadding::kReflection) {
    if (align) {
      const double period = 2 * (size - 1);
      if (period == 0) return 0;
      const double t = std::fmod(std::abs(at), period);
      at = t <= size - 1 ? t : period - t;
    } else {
      const double period = 2 * size;
      const double t = std::fmod(std::abs(at + 0.5), period);
      at = (t <= size ? t : period - t) - 0.5;
    }
  }
  if (padding != GridPadding::kZeros) at = std::min(std::max(at, 0.0), size - 1);
  return at;
}

// Calls visit(offset in the plane, weight) for each pixel output point p of image n reads.
template <class Visit>
void grid_taps(const GridSampleDims& d, const double* grid, int64_t n, int64_t p, Visit visit) {
  const double* g = grid + (n * d.out_h * d.out_w + p) * 2;
  const double ax = grid_location(g[0], d.in_w, d.padding, d.align_corners);
  const double ay = grid_location(g[1], d.in_h, d.padding, d.align_corners);
  auto inside = [&](int64_t iy, int64_t ix) {
    return iy >= 0 && iy < d.in_h && ix >= 0 && ix < d.in_w;
  };
  if (d.mode == GridMode::kNearest) {
    const auto ix = static_cast<int64_t>(std::nearbyint(ax));
    const auto iy = static_cast<int64_t>(std::nearbyint(ay));
    if (inside(iy, ix)) visit(iy * d.in_w + ix, 1.0);
    return;
  }
  const auto x0 = static_cast<int64_t>(std::floor(ax));
  const auto y0 = static_cast<int64_t>(std::floor(ay));
  for (int64_t iy = y0; iy <= y0 + 1; ++iy) {
    for (int64_t ix = x0; ix <= x0 + 1; ++ix) {
      const double w = (1 - std::abs(ay - static_cast<double>(iy))) *
                       (1 - std::abs(ax - static_cast<double>(ix)));
      if (inside(iy, ix)) visit(iy * d.in_w + ix, w);
    }
  }
}

}  // namespace

void grid_sample_f64(const GridSampleDims& d, const double* x, const double* grid, double* y) {
  const int64_t points = d.out_h * d.out_w, plane = d.in_h * d.in_w;
  for (int64_t n = 0; n < d.batch; ++n) {
    for (int64_t c = 0; c < d.channels; ++c) {
      for (int64_t p = 0; p < points; ++p) {
        double sum = 0;
        grid_taps(d, grid, n, p,
                  [&](int64_t at, double w) { sum += w * x[(n * d.channels + c) * plane + at]; });
        y[(n * d.channels + c) * points + p] = sum;
      }
    }
  }
}

void grid_sample_backward_dx(const GridSampleDims& d, const double* grid, const double* dy,
                             double* dx) {
  const int64_t points = d.out_h * d.out_w, plane = d.in_h * d.in_w;
  std::fill_n(dx, d.batch * d.channels * plane, 0.0);
  for (int64_t n = 0; n < d.batch; ++n) {
    for (int64_t c = 0; c < d.channels; ++c) {
      for (int64_t p = 0; p < points; ++p) {
        grid_taps(d, grid, n, p, [&](int64_t at, double w) {
          dx[(n * d.channels + c) * plane + at] += w * dy[(n * d.channels + c) * points + p];
        });
      }
    }
  }
}

}  // namespace qforge::kernels::reference
