// Window arithmetic that the pooling kernels and their backward share: which output positions
// and kernel taps land inside the input, and how many planes a task takes. Internal to
// kernels/: include it from .cpp files only.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/pool.h"

namespace qforge::kernels::pool_window {

// Elements of work a task gets at least (planes are grouped until they reach it).
inline constexpr int64_t kTaskElements = 1 << 14;

inline int64_t ceil_div(int64_t a, int64_t b) {
  return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

// Output positions [lo, hi) within [0, out) whose tap pos·stride + offset lies in [0, extent).
inline void valid_range(int64_t out, int64_t stride, int64_t offset, int64_t extent, int64_t& lo,
                        int64_t& hi) {
  lo = std::max<int64_t>(0, ceil_div(-offset, stride));
  hi = std::min(out, ceil_div(extent - offset, stride));
  if (hi < lo) hi = lo;
}

// Taps j in [0, kernel) of a window starting at `start` (step `dilation`) that land in
// [lower, upper).
inline int64_t taps_inside(int64_t start, int64_t kernel, int64_t dilation, int64_t lower,
                           int64_t upper) {
  const int64_t first = std::max<int64_t>(0, ceil_div(lower - start, dilation));
  const int64_t last = std::min(kernel, ceil_div(upper - start, dilation));
  return std::max<int64_t>(0, last - first);
}

// Planes per task: enough that a task holds about kTaskElements of window work.
inline int64_t plane_grain(const PoolGeometry& g) {
  const int64_t work = g.out_h * g.out_w * g.kernel_h * g.kernel_w;
  return std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, work));
}

}  // namespace qforge::kernels::pool_window
