// Grid sampling: the location of each output point computed once, then every channel read there.
#include "kernels/grid_sample.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

constexpr int64_t kTaskElements = 1 << 14;

// Reflects `v` into [low2 / 2, high2 / 2] (bounds given doubled, so that -0.5 is exact), with the
// sign the reflection gives its derivative; NaN for a NaN or infinite `v`.
GridCoordinate reflect(float v, float low2, float high2) {
  if (low2 == high2) return {0.0f, 0.0f};
  const float low = low2 / 2.0f;
  const float span = (high2 - low2) / 2.0f;
  float d = v - low;
  float sign = 1.0f;
  if (d < 0.0f) {
    d = -d;
    sign = -1.0f;
  }
  if (!std::isfinite(d)) return {std::numeric_limits<float>::quiet_NaN(), 0.0f};
  const float extra = std::fmod(d, span);
  // The parity of the number of folds, in float: an integer count may not fit an int64.
  const bool even = std::fmod(std::floor(d / span), 2.0f) == 0.0f;
  if (even) return {extra + low, sign};
  return {span - extra + low, -sign};
}

// Clips into [0, limit]; the derivative is 0 on and past the ends.
GridCoordinate clip(GridCoordinate c, float limit) {
  if (c.at <= 0.0f) return {0.0f, 0.0f};
  if (c.at >= limit) return {limit, 0.0f};
  return c;
}

// The bilinear taps of one output point: corner (row y0 or y0 + 1, column x0 or x0 + 1) and the
// weights along each axis.
struct Taps {
  int64_t x0 = 0, y0 = 0;
  float wx1 = 0.0f, wy1 = 0.0f;  // the weights of x0 + 1 and y0 + 1
  GridCoordinate cx, cy;
  bool nan = false;  // a location that is not a number: the sample is NaN
};

// A location as its pixels' indices can hold it: NaN stays NaN (the sample is NaN, as
// PyTorch's), and a location farther out than 10^9 pixels (an infinite or huge grid value with
// zeros padding) moves to -2, outside every pixel, where it samples 0 with no gradient.
GridCoordinate indexable(GridCoordinate c) {
  if (std::isnan(c.at) || std::abs(c.at) <= 1e9f) return c;
  return {-2.0f, 0.0f};
}

Taps taps_of(const GridSampleDims& d, const float* g) {
  Taps t;
  t.cx = indexable(grid_coordinate(g[0], d.in_w, d.padding, d.align_corners));
  t.cy = indexable(grid_coordinate(g[1], d.in_h, d.padding, d.align_corners));
  t.nan = std::isnan(t.cx.at) || std::isnan(t.cy.at);
  if (t.nan) return t;
  const float fx = std::floor(t.cx.at), fy = std::floor(t.cy.at);
  t.x0 = static_cast<int64_t>(fx);
  t.y0 = static_cast<int64_t>(fy);
  t.wx1 = t.cx.at - fx;
  t.wy1 = t.cy.at - fy;
  return t;
}

// x[iy, ix] of one plane, 0 outside it.
float pixel(const float* plane, const GridSampleDims& d, int64_t iy, int64_t ix) {
  return iy >= 0 && iy < d.in_h && ix >= 0 && ix < d.in_w ? plane[iy * d.in_w + ix] : 0.0f;
}

constexpr int64_t kOutside = -1;
constexpr int64_t kNotANumber = -2;

// The nearest pixel's offset in a plane, kOutside outside it, kNotANumber for a NaN location
// (ties to even, as PyTorch rounds).
int64_t nearest_offset(const GridSampleDims& d, const float* g) {
  const GridCoordinate cx = indexable(grid_coordinate(g[0], d.in_w, d.padding, d.align_corners));
  const GridCoordinate cy = indexable(grid_coordinate(g[1], d.in_h, d.padding, d.align_corners));
  if (std::isnan(cx.at) || std::isnan(cy.at)) return kNotANumber;
  const auto ix = static_cast<int64_t>(std::nearbyint(cx.at));
  const auto iy = static_cast<int64_t>(std::nearbyint(cy.at));
  if (ix < 0 || ix >= d.in_w || iy < 0 || iy >= d.in_h) return kOutside;
  return iy * d.in_w + ix;
}

}  // namespace

GridCoordinate grid_coordinate(float g, int64_t size, GridPadding padding, bool align_corners) {
  const auto n = static_cast<float>(size);
  GridCoordinate c = align_corners
                         ? GridCoordinate{(g + 1.0f) / 2.0f * (n - 1.0f), (n - 1.0f) / 2.0f}
                         : GridCoordinate{((g + 1.0f) * n - 1.0f) / 2.0f, n / 2.0f};
  switch (padding) {
    case GridPadding::kZeros:
      return c;
    case GridPadding::kBorder:
      return clip(c, n - 1.0f);
    case GridPadding::kReflection: {
      const GridCoordinate r = align_corners ? reflect(c.at, 0.0f, 2.0f * (n - 1.0f))
                                             : reflect(c.at, -1.0f, 2.0f * n - 1.0f);
      c = {r.at, c.slope * r.slope};
      return align_corners ? c : clip(c, n - 1.0f);
    }
  }
  return c;
}

void grid_sample(const GridSampleDims& d, const float* x, const float* grid, float* y) {
  const int64_t points = d.out_h * d.out_w;
  const int64_t plane = d.in_h * d.in_w;
  const int64_t grain =
      std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, d.out_w * d.channels));
  parallel_for(d.batch * d.out_h, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / d.out_h;
      const int64_t first = (r % d.out_h) * d.out_w;
      const float* xn = x + n * d.channels * plane;
      float* yn = y + n * d.channels * points;
      for (int64_t p = first; p < first + d.out_w; ++p) {
        const float* g = grid + (n * points + p) * 2;
        if (d.mode == GridMode::kNearest) {
          const int64_t at = nearest_offset(d, g);
          const float fill = at == kNotANumber ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
          for (int64_t c = 0; c < d.channels; ++c) {
            yn[c * points + p] = at < 0 ? fill : xn[c * plane + at];
          }
          continue;
        }
        const Taps t = taps_of(d, g);
        if (t.nan) {
          for (int64_t c = 0; c < d.channels; ++c) {
            yn[c * points + p] = std::numeric_limits<float>::quiet_NaN();
          }
          continue;
        }
        const float wx0 = 1.0f - t.wx1, wy0 = 1.0f - t.wy1;
        for (int64_t c = 0; c < d.channels; ++c) {
          const float* xc = xn + c * plane;
          const float top = pixel(xc, d, t.y0, t.x0) * wx0 + pixel(xc, d, t.y0, t.x0 + 1) * t.wx1;
          const float bottom =
              pixel(xc, d, t.y0 + 1, t.x0) * wx0 + pixel(xc, d, t.y0 + 1, t.x0 + 1) * t.wx1;
          yn[c * points + p] = top * wy0 + bottom * t.wy1;
        }
      }
    }
  });
}

void grid_sample_backward(const GridSampleDims& d, const float* x, const float* grid,
                          const float* dy, float* dx, float* dgrid) {
  const int64_t points = d.out_h * d.out_w;
  const int64_t plane = d.in_h * d.in_w;
  if (dx) {
    // One task per (image, channel) plane: it alone writes that plane, the outputs in order.
    const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, points));
    parallel_for(d.batch * d.channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / d.channels;
        float* dxc = dx + nc * plane;
        const float* dyc = dy + nc * points;
        std::fill_n(dxc, plane, 0.0f);
        auto add = [&](int64_t iy, int64_t ix, float v) {
          if (iy >= 0 && iy < d.in_h && ix >= 0 && ix < d.in_w) dxc[iy * d.in_w + ix] += v;
        };
        for (int64_t p = 0; p < points; ++p) {
          const float* g = grid + (n * points + p) * 2;
          if (d.mode == GridMode::kNearest) {
            const int64_t at = nearest_offset(d, g);
            if (at >= 0) dxc[at] += dyc[p];
            continue;
          }
          const Taps t = taps_of(d, g);
          if (t.nan) continue;  // read no pixel
          const float wx0 = 1.0f - t.wx1, wy0 = 1.0f - t.wy1;
          add(t.y0, t.x0, dyc[p] * wy0 * wx0);
          add(t.y0, t.x0 + 1, dyc[p] * wy0 * t.wx1);
          add(t.y0 + 1, t.x0, dyc[p] * t.wy1 * wx0);
          add(t.y0 + 1, t.x0 + 1, dyc[p] * t.wy1 * t.wx1);
        }
      }
    });
  }
  if (!dgrid || d.mode != GridMode::kBilinear) return;
  // One task per block of output points: each sums its channels in order.
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, d.channels));
  parallel_for(d.batch * points, grain, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t n = q / points, p = q % points;
      const Taps t = taps_of(d, grid + q * 2);
      if (t.nan) {
        dgrid[q * 2] = dgrid[q * 2 + 1] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      const float wx0 = 1.0f - t.wx1, wy0 = 1.0f - t.wy1;
      float gx = 0.0f, gy = 0.0f;
      for (int64_t c = 0; c < d.channels; ++c) {
        const float* xc = x + (n * d.channels + c) * plane;
        const float v00 = pixel(xc, d, t.y0, t.x0), v01 = pixel(xc, d, t.y0, t.x0 + 1);
        const float v10 = pixel(xc, d, t.y0 + 1, t.x0), v11 = pixel(xc, d, t.y0 + 1, t.x0 + 1);
        const float g = dy[(n * d.channels + c) * points + p];
        gx += g * ((v01 - v00) * wy0 + (v11 - v10) * t.wy1);
        gy += g * ((v10 - v00) * wx0 + (v11 - v01) * t.wx1);
      }
      dgrid[q * 2] = gx * t.cx.slope;
      dgrid[q * 2 + 1] = gy * t.cy.slope;
    }
  });
}

}  // namespace qforge::kernels
