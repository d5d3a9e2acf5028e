// Pooling backward: per plane in parallel; max pooling finds each window's first maximum again,
// average pooling scatters each output row's shares one kernel tap at a time along the row.
#include "kernels/pool_backward.h"

#include <algorithm>
#include <array>
#include <limits>

#include "kernels/error.h"
#include "kernels/parallel.h"
#include "kernels/pool_window.h"

namespace qforge::kernels {
namespace {

// Output columns whose shares average pooling holds on the stack at a time.
constexpr int64_t kShareBlock = 256;

using pool_window::kTaskElements;
using pool_window::plane_grain;
using pool_window::taps_inside;
using pool_window::valid_range;

// The first maximum of one window (row-major over the taps inside the input, a later tap only
// when strictly greater) receives the output's gradient: visit(o, at, tap) for each output o of
// the plane in row-major order, `at` the chosen input's offset in the plane (−1 when no tap
// lies inside the input) and `tap` its kh · kernel_w + kw. Windows wholly inside the input
// (most of them) are searched without bounds checks and with selects instead of branches.
template <class Visit>
void for_each_window_maximum(const PoolGeometry& g, const float* x, Visit&& visit) {
  constexpr float kLowest = -std::numeric_limits<float>::infinity();
  // Output columns whose every tap lies inside a row.
  int64_t inner_lo, inner_hi, last_lo, last_hi;
  valid_range(g.out_w, g.stride_w, -g.pad_left, g.in_w, inner_lo, inner_hi);
  valid_range(g.out_w, g.stride_w, (g.kernel_w - 1) * g.dilation_w - g.pad_left, g.in_w, last_lo,
              last_hi);
  inner_lo = std::min(std::max(inner_lo, last_lo), g.out_w);
  inner_hi = std::max(inner_lo, std::min(inner_hi, last_hi));
  const int64_t row_step = g.dilation_h * g.in_w;
  auto search_checked = [&](int64_t o, int64_t h0, int64_t ow) {
    const int64_t w0 = ow * g.stride_w - g.pad_left;
    float best = kLowest;
    int64_t at = -1;
    int64_t tap = -1;
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t ih = h0 + kh * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
      const float* row = x + ih * g.in_w;
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const int64_t iw = w0 + kw * g.dilation_w;
        if (iw < 0 || iw >= g.in_w) continue;
        if (at < 0 || row[iw] > best) {
          best = row[iw];
          at = ih * g.in_w + iw;
          tap = kh * g.kernel_w + kw;
        }
      }
    }
    visit(o, at, tap);
  };
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    const int64_t h0 = oh * g.stride_h - g.pad_top;
    const int64_t kh_first = std::max<int64_t>(0, pool_window::ceil_div(-h0, g.dilation_h));
    const int64_t kh_end = std::min(g.kernel_h, pool_window::ceil_div(g.in_h - h0, g.dilation_h));
    const int64_t row = oh * g.out_w;
    for (int64_t ow = 0; ow < inner_lo; ++ow) search_checked(row + ow, h0, ow);
    if (kh_first < kh_end) {
      for (int64_t ow = inner_lo; ow < inner_hi; ++ow) {
        const int64_t w0 = ow * g.stride_w - g.pad_left;
        int64_t at = (h0 + kh_first * g.dilation_h) * g.in_w + w0;
        float best = x[at];
        for (int64_t kh = kh_first; kh < kh_end; ++kh) {
          const int64_t start = (h0 + kh * g.dilation_h) * g.in_w + w0;
          for (int64_t kw = kh == kh_first ? 1 : 0; kw < g.kernel_w; ++kw) {
            const int64_t i = start + kw * g.dilation_w;
            const float v = x[i];
            const bool greater = v > best;
            best = greater ? v : best;
            at = greater ? i : at;
          }
        }
        // The tap, from the offset in the window: every tap of these windows lies inside its
        // row, so (kernel_w − 1) · dilation_w < in_w and whole rows count kh. (Tracking it in
        // the loop above costs three times the search; unused, this is dropped.)
        const int64_t offset = at - (h0 * g.in_w + w0);
        int64_t kh = 0;
        for (int64_t k = 1; k < g.kernel_h; ++k) kh += offset >= k * row_step ? 1 : 0;
        const int64_t in_row = offset - kh * row_step;
        visit(row + ow, at, kh * g.kernel_w + (g.dilation_w == 1 ? in_row : in_row / g.dilation_w));
      }
    }
    for (int64_t ow = std::max(inner_lo, inner_hi); ow < g.out_w; ++ow) {
      search_checked(row + ow, h0, ow);
    }
  }
}

void max_pool_plane_backward(const PoolGeometry& g, const float* x, const float* dy, float* dx) {
  for_each_window_maximum(g, x, [&](int64_t o, int64_t at, int64_t /*tap*/) {
    if (at >= 0) dx[at] += dy[o];
  });
}

void average_pool_plane_backward(const PoolGeometry& g, PadCounting counting, const float* dy,
                                 float* dx) {
  const bool include_pad = counting == PadCounting::kIncludePad;
  float share[kShareBlock];
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    const float* dyr = dy + oh * g.out_w;
    const int64_t h0 = oh * g.stride_h - g.pad_top;
    const int64_t count_h =
        include_pad ? taps_inside(h0, g.kernel_h, g.dilation_h, -g.pad_top, g.in_h + g.pad_bottom)
                    : taps_inside(h0, g.kernel_h, g.dilation_h, 0, g.in_h);
    for (int64_t b0 = 0; b0 < g.out_w; b0 += kShareBlock) {
      const int64_t b1 = std::min(g.out_w, b0 + kShareBlock);
      for (int64_t ow = b0; ow < b1; ++ow) {
        const int64_t w0 = ow * g.stride_w - g.pad_left;
        const int64_t count_w = include_pad ? taps_inside(w0, g.kernel_w, g.dilation_w, -g.pad_left,
                                                          g.in_w + g.pad_right)
                                            : taps_inside(w0, g.kernel_w, g.dilation_w, 0, g.in_w);
        share[ow - b0] = dyr[ow] / static_cast<float>(count_h * count_w);
      }
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        const int64_t ih = h0 + kh * g.dilation_h;
        if (ih < 0 || ih >= g.in_h) continue;
        for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
          const int64_t offset = kw * g.dilation_w - g.pad_left;
          int64_t lo, hi;
          valid_range(g.out_w, g.stride_w, offset, g.in_w, lo, hi);
          lo = std::clamp(lo, b0, b1);
          hi = std::clamp(hi, lo, b1);
          float* dst = dx + ih * g.in_w + offset;
          const int64_t s = g.stride_w;
          if (s == 1) {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += share[ow - b0];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow * s] += share[ow - b0];
          }
        }
      }
    }
  }
}

// plane(p, dx_p) for each (image, channel) plane p, one task per run of planes, dx's plane
// cleared first when the gradient overwrites it: the frame of every pooling backward.
template <class Plane>
void for_each_dx_plane(const PoolGeometry& g, float* dx, GradMode write, Plane&& plane) {
  const int64_t in_plane = g.in_h * g.in_w;
  parallel_for(g.batch * g.channels, plane_grain(g), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float* dxp = dx + p * in_plane;
      if (write == GradMode::kOverwrite) std::fill_n(dxp, in_plane, 0.0f);
      plane(p, dxp);
    }
  });
}

}  // namespace

void max_pool2d_backward(const PoolGeometry& g, const float* x, const float* dy, float* dx,
                         GradMode write) {
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t out_plane = g.out_h * g.out_w;
  for_each_dx_plane(g, dx, write, [&](int64_t p, float* dxp) {
    max_pool_plane_backward(g, x + p * in_plane, dy + p * out_plane, dxp);
  });
}

bool max_pool2d_has_taps(const PoolGeometry& g) {
  return g.kernel_h * g.kernel_w <= kNoTap;
}

void max_pool2d_taps(const PoolGeometry& g, const float* x, uint8_t* taps) {
  if (!max_pool2d_has_taps(g)) throw_internal("max_pool2d_taps: a window of more than 255 taps");
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t out_plane = g.out_h * g.out_w;
  parallel_for(g.batch * g.channels, plane_grain(g), [&](int64_t begin, int64_t end) {
    // A copy of its own: a byte store may alias anything the compiler cannot see is local, and
    // would have the geometry read again from memory after every tap written.
    const PoolGeometry local = g;
    for (int64_t p = begin; p < end; ++p) {
      uint8_t* t = taps + p * out_plane;
      // Windows with no row inside the input are not visited.
      std::fill_n(t, out_plane, kNoTap);
      for_each_window_maximum(local, x + p * in_plane, [&](int64_t o, int64_t at, int64_t tap) {
        t[o] = at < 0 ? kNoTap : static_cast<uint8_t>(tap);
      });
    }
  });
}

void max_pool2d_backward_from_taps(const PoolGeometry& g, const uint8_t* taps, const float* dy,
                                   float* dx, GradMode write) {
  if (!max_pool2d_has_taps(g)) {
    throw_internal("max_pool2d_backward_from_taps: a window of more than 255 taps");
  }
  // Each tap's offset from its window's origin in the input plane.
  std::array<int64_t, kNoTap> offset{};
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      offset[static_cast<size_t>(kh * g.kernel_w + kw)] =
          kh * g.dilation_h * g.in_w + kw * g.dilation_w;
    }
  }
  const int64_t out_plane = g.out_h * g.out_w;
  for_each_dx_plane(g, dx, write, [&](int64_t p, float* dxp) {
    const uint8_t* t = taps + p * out_plane;
    const float* dyp = dy + p * out_plane;
    // The outputs in max_pool_plane_backward's order, so the sums into dx are the same.
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const int64_t origin_row = (oh * g.stride_h - g.pad_top) * g.in_w - g.pad_left;
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t o = oh * g.out_w + ow;
        if (t[o] == kNoTap) continue;
        dxp[origin_row + ow * g.stride_w + offset[t[o]]] += dyp[o];
      }
    }
  });
}

void average_pool2d_backward(const PoolGeometry& g, PadCounting counting, const float* dy,
                             float* dx, GradMode write) {
  const int64_t out_plane = g.out_h * g.out_w;
  for_each_dx_plane(g, dx, write, [&](int64_t p, float* dxp) {
    average_pool_plane_backward(g, counting, dy + p * out_plane, dxp);
  });
}

void global_average_pool_backward(const float* dy, int64_t planes, int64_t plane_size, float* dx,
                                  GradMode write) {
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, plane_size));
  const float count = static_cast<float>(plane_size);
  parallel_for(planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float share = dy[p] / count;
      float* dxp = dx + p * plane_size;
      if (write == GradMode::kOverwrite) {
        std::fill_n(dxp, plane_size, share);
      } else {
        for (int64_t i = 0; i < plane_size; ++i) dxp[i] += share;
      }
    }
  });
}

void reduce_mean_backward(const ReducePlan& plan, const float* dy, float* dx, GradMode write) {
  const float count = static_cast<float>(plan.count);
  int64_t total = 1;
  for (int a = 0; a < plan.rank; ++a) total *= plan.dims[a];
  // Each merged axis's stride in dy (0 where it is reduced), innermost last.
  std::array<int64_t, kMaxReduceRank> out_stride{};
  int64_t outputs = 1;
  for (int a = plan.rank - 1; a >= 0; --a) {
    out_stride[a] = plan.reduced[a] ? 0 : outputs;
    if (!plan.reduced[a]) outputs *= plan.dims[a];
  }
  parallel_for(total, kTaskElements, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t rest = i;
      int64_t at = 0;
      for (int a = plan.rank - 1; a >= 0; --a) {
        at += (rest % plan.dims[a]) * out_stride[a];
        rest /= plan.dims[a];
      }
      store_gradient(dx[i], dy[at] / count, write);
    }
  });
}

}  // namespace qforge::kernels
