// Pooling: per (image, channel) plane in parallel, each output row built by one pass per
// kernel tap along the row so the inner loops vectorise. Mean reductions over axes.
#include "kernels/pool.h"

#include <algorithm>
#include <limits>
#include <string>

#include "kernels/error.h"
#include "kernels/norm.h"
#include "kernels/parallel.h"
#include "kernels/pool_window.h"

namespace qforge::kernels {
namespace {

constexpr int64_t kColumnBlock = 256;

using pool_window::kTaskElements;
using pool_window::plane_grain;
using pool_window::taps_inside;
using pool_window::valid_range;

// The walk over a plane that the max-pool forms share: each output row starts at -inf and every
// input row its windows reach (inside the input) is folded into it by fold_row(row, yr).
template <class FoldRow>
void max_pool_rows(const PoolGeometry& g, const float* x, float* y, FoldRow&& fold_row) {
  constexpr float kLowest = -std::numeric_limits<float>::infinity();
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    float* yr = y + oh * g.out_w;
    std::fill(yr, yr + g.out_w, kLowest);
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
      fold_row(x + ih * g.in_w, yr);
    }
  }
}

// Folds every tap of one input row into the output row: yr[ow] = combine(yr[ow], v) for each
// kernel column's input v that lies inside the row (the stride-1 loop apart, so it vectorises).
template <class Combine>
void fold_row_taps(const PoolGeometry& g, const float* row, float* yr, Combine combine) {
  for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
    const int64_t offset = kw * g.dilation_w - g.pad_left;
    int64_t lo, hi;
    valid_range(g.out_w, g.stride_w, offset, g.in_w, lo, hi);
    const int64_t s = g.stride_w;
    if (s == 1) {
      for (int64_t ow = lo; ow < hi; ++ow) yr[ow] = combine(yr[ow], row[ow + offset]);
    } else {
      for (int64_t ow = lo; ow < hi; ++ow) yr[ow] = combine(yr[ow], row[ow * s + offset]);
    }
  }
}

void max_pool_plane(const PoolGeometry& g, const float* x, float* y) {
  max_pool_rows(g, x, y, [&g](const float* row, float* yr) {
    fold_row_taps(g, row, yr, [](float acc, float v) { return v > acc ? v : acc; });
  });
}

// Rows up to this many phase columns take max_pool_plane_stride2 (its scratch is on the stack).
constexpr int64_t kMaxPhaseColumns = 2048;

// max_pool_plane for stride 2 along rows, dilation 1: each input row a window touches is first
// split into its even and odd columns (-inf outside the row), so that every tap reads a
// contiguous run (tap kw of output ow is column 2·(ow + kw/2) + kw%2 - pad_left) and the loops
// vectorise, where the strided reads did not. Same values: the taps outside the row compare as
// -inf, which the general loop skips.
void max_pool_plane_stride2(const PoolGeometry& g, const float* x, float* y) {
  constexpr float kLowest = -std::numeric_limits<float>::infinity();
  const int64_t width = g.out_w + (g.kernel_w - 1) / 2;
  alignas(64) float even[kMaxPhaseColumns];
  alignas(64) float odd[kMaxPhaseColumns];
  // Phase columns [lo, hi) of each phase lie in the row: 0 <= 2j + b - pad_left < in_w.
  int64_t lo[2], hi[2];
  for (int64_t b = 0; b < 2; ++b) {
    valid_range(width, 2, b - g.pad_left, g.in_w, lo[b], hi[b]);
    lo[b] = std::min(lo[b], width);
    hi[b] = std::max(lo[b], std::min(hi[b], width));
  }
  max_pool_rows(g, x, y, [&](const float* row, float* yr) {
    std::fill(even, even + lo[0], kLowest);
    for (int64_t j = lo[0]; j < hi[0]; ++j) even[j] = row[2 * j - g.pad_left];
    std::fill(even + hi[0], even + width, kLowest);
    std::fill(odd, odd + lo[1], kLowest);
    for (int64_t j = lo[1]; j < hi[1]; ++j) odd[j] = row[2 * j + 1 - g.pad_left];
    std::fill(odd + hi[1], odd + width, kLowest);
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const float* src = (kw % 2 == 0 ? even : odd) + kw / 2;
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        yr[ow] = src[ow] > yr[ow] ? src[ow] : yr[ow];
      }
    }
  });
}

void max_pool_plane_indexed(const PoolGeometry& g, const float* x, int64_t plane_base,
                            IndexOrder order, float* y, int64_t* indices) {
  constexpr float kLowest = -std::numeric_limits<float>::infinity();
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    float* yr = y + oh * g.out_w;
    int64_t* ir = indices + oh * g.out_w;
    std::fill(yr, yr + g.out_w, kLowest);
    std::fill(ir, ir + g.out_w, plane_base);
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
      const float* row = x + ih * g.in_w;
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const int64_t offset = kw * g.dilation_w - g.pad_left;
        int64_t lo, hi;
        valid_range(g.out_w, g.stride_w, offset, g.in_w, lo, hi);
        for (int64_t ow = lo; ow < hi; ++ow) {
          const int64_t iw = ow * g.stride_w + offset;
          const float v = row[iw];
          if (v > yr[ow]) {
            yr[ow] = v;
            ir[ow] =
                plane_base + (order == IndexOrder::kRowMajor ? ih * g.in_w + iw : ih + iw * g.in_h);
          }
        }
      }
    }
  }
}

void average_pool_plane(const PoolGeometry& g, PadCounting counting, const float* x, float* y) {
  const bool include_pad = counting == PadCounting::kIncludePad;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    float* yr = y + oh * g.out_w;
    std::fill(yr, yr + g.out_w, 0.0f);
    const int64_t h0 = oh * g.stride_h - g.pad_top;
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t ih = h0 + kh * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
      fold_row_taps(g, x + ih * g.in_w, yr, [](float acc, float v) { return acc + v; });
    }
    const int64_t count_h =
        include_pad ? taps_inside(h0, g.kernel_h, g.dilation_h, -g.pad_top, g.in_h + g.pad_bottom)
                    : taps_inside(h0, g.kernel_h, g.dilation_h, 0, g.in_h);
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      const int64_t w0 = ow * g.stride_w - g.pad_left;
      const int64_t count_w =
          include_pad ? taps_inside(w0, g.kernel_w, g.dilation_w, -g.pad_left, g.in_w + g.pad_right)
                      : taps_inside(w0, g.kernel_w, g.dilation_w, 0, g.in_w);
      yr[ow] = yr[ow] / static_cast<float>(count_h * count_w);
    }
  }
}

}  // namespace

void max_pool2d(const PoolGeometry& g, const float* x, float* y, int64_t* indices,
                IndexOrder order) {
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t out_plane = g.out_h * g.out_w;
  const bool stride2 =
      g.stride_w == 2 && g.dilation_w == 1 && g.out_w + (g.kernel_w - 1) / 2 <= kMaxPhaseColumns;
  parallel_for(g.batch * g.channels, plane_grain(g), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      if (indices) {
        max_pool_plane_indexed(g, x + p * in_plane, p * in_plane, order, y + p * out_plane,
                               indices + p * out_plane);
      } else if (stride2) {
        max_pool_plane_stride2(g, x + p * in_plane, y + p * out_plane);
      } else {
        max_pool_plane(g, x + p * in_plane, y + p * out_plane);
      }
    }
  });
}

void average_pool2d(const PoolGeometry& g, PadCounting counting, const float* x, float* y) {
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t out_plane = g.out_h * g.out_w;
  parallel_for(g.batch * g.channels, plane_grain(g), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      average_pool_plane(g, counting, x + p * in_plane, y + p * out_plane);
    }
  });
}

void global_average_pool(const float* x, int64_t planes, int64_t plane_size, float* y) {
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, plane_size));
  const float count = static_cast<float>(plane_size);
  parallel_for(planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) y[p] = lane_sum(x + p * plane_size, plane_size) / count;
  });
}

ReducePlan plan_reduce(std::span<const int64_t> shape, std::span<const int64_t> axes) {
  ReducePlan plan;
  std::array<bool, 64> is_reduced{};
  if (shape.size() > is_reduced.size()) {
    throw_unsupported("ReduceMean: rank " + std::to_string(shape.size()) + " exceeds 64");
  }
  for (int64_t a : axes) is_reduced[static_cast<size_t>(a)] = true;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (is_reduced[i]) plan.count *= shape[i];
    if (shape[i] == 1) continue;  // size-1 axes do not change the layout either way
    if (plan.rank > 0 && plan.reduced[plan.rank - 1] == is_reduced[i]) {
      plan.dims[plan.rank - 1] *= shape[i];
      continue;
    }
    if (plan.rank == kMaxReduceRank) {
      throw_unsupported("ReduceMean: more than " + std::to_string(kMaxReduceRank) +
                        " alternating reduced and kept axis groups");
    }
    plan.dims[plan.rank] = shape[i];
    plan.reduced[plan.rank] = is_reduced[i];
    ++plan.rank;
  }
  // Match [kept?, reduced?, kept?].
  int i = 0;
  if (i < plan.rank && !plan.reduced[i]) plan.outer = plan.dims[i++];
  if (i < plan.rank && plan.reduced[i]) plan.reduce = plan.dims[i++];
  if (i < plan.rank && !plan.reduced[i]) plan.inner = plan.dims[i++];
  plan.simple = i == plan.rank;
  return plan;
}

void reduce_mean(const ReducePlan& plan, const float* x, float* y) {
  const float count = static_cast<float>(plan.count);
  if (plan.simple) {
    const int64_t r = plan.reduce;
    if (plan.inner == 1) {
      const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, r));
      parallel_for(plan.outer, grain, [&](int64_t begin, int64_t end) {
        for (int64_t o = begin; o < end; ++o) y[o] = lane_sum(x + o * r, r) / count;
      });
      return;
    }
    const int64_t inner = plan.inner;
    const int64_t blocks = (inner + kColumnBlock - 1) / kColumnBlock;
    const int64_t grain =
        std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, r * kColumnBlock));
    parallel_for(plan.outer * blocks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t o = t / blocks;
        const int64_t c0 = (t % blocks) * kColumnBlock;
        const int64_t width = std::min(kColumnBlock, inner - c0);
        float* yb = y + o * inner + c0;
        std::fill(yb, yb + width, 0.0f);
        for (int64_t k = 0; k < r; ++k) {
          const float* xr = x + (o * r + k) * inner + c0;
          for (int64_t j = 0; j < width; ++j) yb[j] += xr[j];
        }
        for (int64_t j = 0; j < width; ++j) yb[j] = yb[j] / count;
      }
    });
    return;
  }
  // General case: one pass over x in memory order, each value added to its output.
  std::array<int64_t, kMaxReduceRank> out_stride{};
  int64_t outputs = 1;
  for (int a = plan.rank - 1; a >= 0; --a) {
    out_stride[a] = plan.reduced[a] ? 0 : outputs;
    if (!plan.reduced[a]) outputs *= plan.dims[a];
  }
  std::fill(y, y + outputs, 0.0f);
  std::array<int64_t, kMaxReduceRank> index{};
  const int last = plan.rank - 1;
  const int64_t run = plan.dims[last];
  const int64_t run_stride = out_stride[last];
  int64_t total = 1;
  for (int a = 0; a < plan.rank; ++a) total *= plan.dims[a];
  int64_t out_base = 0;
  for (int64_t offset = 0; offset < total; offset += run) {
    for (int64_t j = 0; j < run; ++j) y[out_base + j * run_stride] += x[offset + j];
    for (int a = last - 1; a >= 0; --a) {
      ++index[a];
      out_base += out_stride[a];
      if (index[a] < plan.dims[a]) break;
      out_base -= out_stride[a] * index[a];
      index[a] = 0;
    }
  }
  for (int64_t o = 0; o < outputs; ++o) y[o] = y[o] / count;
}

}  // namespace qforge::kernels
