#include "kernels/resize.h"

#include <algorithm>
#include <cmath>

#include "kernels/error.h"
#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

// Outputs per parallel chunk: enough work to pay for a task.
constexpr int64_t kChunkOutputs = 1 << 14;

int64_t nearest_index(NearestRounding rounding, float source) {
  const float below = std::floor(source);
  switch (rounding) {
    case NearestRounding::kRoundPreferFloor:
      return static_cast<int64_t>(source - below == 0.5f ? below : std::round(source));
    case NearestRounding::kRoundPreferCeil:
      return static_cast<int64_t>(source - below == 0.5f ? below + 1.0f : std::round(source));
    case NearestRounding::kFloor:
      return static_cast<int64_t>(below);
    case NearestRounding::kCeil:
      return static_cast<int64_t>(std::ceil(source));
  }
  return 0;
}

ResizeAxis plan_axis(const ResizeGeometry& g, int64_t in, int64_t out, float scale) {
  ResizeAxis axis;
  axis.lo.resize(static_cast<size_t>(out));
  axis.hi.resize(static_cast<size_t>(out));
  axis.weight_hi.assign(static_cast<size_t>(out), 0.0f);
  for (int64_t x = 0; x < out; ++x) {
    const auto i = static_cast<size_t>(x);
    const float source = resize_source_coordinate(g.coordinates, x, scale, in, out);
    if (g.mode == ResizeMode::kNearest) {
      axis.lo[i] = axis.hi[i] = std::clamp<int64_t>(nearest_index(g.rounding, source), 0, in - 1);
      continue;
    }
    const float clamped = std::clamp(source, 0.0f, static_cast<float>(in - 1));
    const auto lo = std::min(static_cast<int64_t>(clamped), in - 1);
    axis.lo[i] = lo;
    axis.hi[i] = std::min(lo + 1, in - 1);
    axis.weight_hi[i] = axis.hi[i] == lo ? 0.0f : clamped - static_cast<float>(lo);
  }
  return axis;
}

}  // namespace

float resize_source_coordinate(ResizeCoordinates coordinates, int64_t x, float scale, int64_t in,
                               int64_t out) {
  const auto xf = static_cast<float>(x);
  switch (coordinates) {
    case ResizeCoordinates::kHalfPixel:
      return (xf + 0.5f) / scale - 0.5f;
    case ResizeCoordinates::kPytorchHalfPixel:
      return out > 1 ? (xf + 0.5f) / scale - 0.5f : 0.0f;
    case ResizeCoordinates::kAlignCorners:
      return out == 1 ? 0.0f : xf * static_cast<float>(in - 1) / static_cast<float>(out - 1);
    case ResizeCoordinates::kAsymmetric:
      return xf / scale;
  }
  return 0.0f;
}

ResizePlan plan_resize(const ResizeGeometry& geometry) {
  const ResizeGeometry& g = geometry;
  if (g.in_h < 1 || g.in_w < 1 || g.out_h < 1 || g.out_w < 1 || g.planes < 0) {
    throw_internal("plan_resize: empty spatial axes");
  }
  ResizePlan plan;
  plan.geometry = g;
  plan.h = plan_axis(g, g.in_h, g.out_h, g.scale_h);
  plan.w = plan_axis(g, g.in_w, g.out_w, g.scale_w);
  return plan;
}

void resize(const ResizePlan& plan, const float* x, float* y) {
  const ResizeGeometry& g = plan.geometry;
  const int64_t rows = g.planes * g.out_h;
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t* lo_w = plan.w.lo.data();
  const int64_t* hi_w = plan.w.hi.data();
  const float* weight_w = plan.w.weight_hi.data();
  const bool linear = g.mode == ResizeMode::kLinear;
  parallel_for(rows, std::max<int64_t>(1, kChunkOutputs / g.out_w), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t plane = r / g.out_h;
      const auto oh = static_cast<size_t>(r % g.out_h);
      const float* src = x + plane * in_plane;
      const float* top = src + plan.h.lo[oh] * g.in_w;
      float* out = y + r * g.out_w;
      if (!linear) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) out[ow] = top[lo_w[ow]];
        continue;
      }
      const float* bottom = src + plan.h.hi[oh] * g.in_w;
      const float wh = plan.h.weight_hi[oh];
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const float ww = weight_w[ow];
        const float upper = top[lo_w[ow]] * (1.0f - ww) + top[hi_w[ow]] * ww;
        const float lower = bottom[lo_w[ow]] * (1.0f - ww) + bottom[hi_w[ow]] * ww;
        out[ow] = upper * (1.0f - wh) + lower * wh;
      }
    }
  });
}

void resize_backward(const ResizePlan& plan, const float* dy, float* dx, GradMode write) {
  const ResizeGeometry& g = plan.geometry;
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t* lo_w = plan.w.lo.data();
  const int64_t* hi_w = plan.w.hi.data();
  const float* weight_w = plan.w.weight_hi.data();
  const bool linear = g.mode == ResizeMode::kLinear;
  // One plane per task: every dx element adds its contributions in output order.
  const int64_t grain = std::max<int64_t>(1, kChunkOutputs / std::max<int64_t>(1, out_plane));
  parallel_for(g.planes, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* d = dx + p * in_plane;
      if (write == GradMode::kOverwrite) std::fill_n(d, in_plane, 0.0f);
      const float* grad = dy + p * out_plane;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        const auto h = static_cast<size_t>(oh);
        float* top = d + plan.h.lo[h] * g.in_w;
        const float* row = grad + oh * g.out_w;
        if (!linear) {
          for (int64_t ow = 0; ow < g.out_w; ++ow) top[lo_w[ow]] += row[ow];
          continue;
        }
        float* bottom = d + plan.h.hi[h] * g.in_w;
        const float wh = plan.h.weight_hi[h];
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const float ww = weight_w[ow];
          const float upper = row[ow] * (1.0f - wh);
          const float lower = row[ow] * wh;
          top[lo_w[ow]] += upper * (1.0f - ww);
          top[hi_w[ow]] += upper * ww;
          bottom[lo_w[ow]] += lower * (1.0f - ww);
          bottom[hi_w[ow]] += lower * ww;
        }
      }
    }
  });
}

}  // namespace qforge::kernels
