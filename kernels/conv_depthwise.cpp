// Depthwise convolution, 2-D and 3-D: the common K×K kernels run on a zero-padded, stride-phased
// copy of each plane, or, on planes at most 16 outputs wide, sixteen channels at a time with one
// channel per vector lane; any other depthwise shape runs along output rows. Planes (or blocks of
// sixteen channels) are tasks in parallel. A 3-D convolution's task is a channel's volume: its
// input slices are copied once, and each output slice sums the kernel's depth taps that land in
// the input, slice after slice, in the accumulators of the 2-D paths (a 2-D convolution is the
// volume of one slice and one depth tap).
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/conv_depth.h"
#include "kernels/conv_internal.h"
#include "kernels/parallel.h"
#include "kernels/simd_transpose.h"

namespace qforge::kernels::conv_detail {
namespace {

// Depthwise planes are grouped into tasks of at least this many multiply-adds.
constexpr int64_t kDepthwiseTaskWork = 1 << 15;

// Taps per kernel row whose valid output range is computed once per plane; wider kernels
// recompute it per output row.
constexpr int64_t kMaxHoistedTaps = 32;

// Every depthwise output is one fused multiply-add chain from the bias over its valid taps in
// (kh, kw) order, which is PyTorch's arithmetic for it; the paths below differ only in how they
// schedule that same chain (each product is written added into its accumulator, and this file
// is compiled with contraction on: kernels/CMakeLists.txt).

// Output row oh when every kernel row lands inside the input, for the columns [lo, hi) where
// every kernel column does: the whole sum stays in a register and the loop over columns
// vectorises, with the K×K taps unrolled.
template <int K, int S>
void depthwise_row_interior(const ConvGeometry& g, const float* x, const float* w, float bias,
                            int64_t oh, int64_t lo, int64_t hi, float* yr) {
  const float* rows[K];
  for (int kh = 0; kh < K; ++kh) {
    rows[kh] = x + (oh * g.stride_h - g.pad_top + kh * g.dilation_h) * g.in_w;
  }
  float wk[K * K];
  for (int t = 0; t < K * K; ++t) wk[t] = w[t];
  const int64_t d = g.dilation_w;
  const int64_t p = g.pad_left;
  for (int64_t ow = lo; ow < hi; ++ow) {
    float acc = bias;
    for (int kh = 0; kh < K; ++kh) {
      for (int kw = 0; kw < K; ++kw) acc += wk[kh * K + kw] * rows[kh][ow * S + kw * d - p];
    }
    yr[ow] = acc;
  }
}

// One output column, any taps: the scalar form of the same sum.
float depthwise_point(const ConvGeometry& g, const float* x, const float* w, float bias, int64_t oh,
                      int64_t ow) {
  float acc = bias;
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
    if (ih < 0 || ih >= g.in_h) continue;
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t iw = ow * g.stride_w - g.pad_left + kw * g.dilation_w;
      if (iw < 0 || iw >= g.in_w) continue;
      acc += w[kh * g.kernel_w + kw] * x[ih * g.in_w + iw];
    }
  }
  return acc;
}

using InteriorRowFn = void (*)(const ConvGeometry&, const float*, const float*, float, int64_t,
                               int64_t, int64_t, float*);

template <int N>
using Int = std::integral_constant<int, N>;

// The common square kernels and strides the specialised paths are built for: pick(K, S), K and
// S as std::integral_constant, for K in {3, 5, 7} and S in {1, 2} (a square kernel and equal
// strides), else null. The caller checks anything else its path needs.
template <class Pick>
auto square_kernel_fn(const ConvGeometry& g, Pick pick) -> decltype(pick(Int<3>{}, Int<1>{})) {
  if (g.kernel_h != g.kernel_w || g.stride_h != g.stride_w) return nullptr;
  const auto by_stride = [&](auto k) -> decltype(pick(Int<3>{}, Int<1>{})) {
    if (g.stride_w == 1) return pick(k, Int<1>{});
    if (g.stride_w == 2) return pick(k, Int<2>{});
    return nullptr;
  };
  switch (g.kernel_h) {
    case 3:
      return by_stride(Int<3>{});
    case 5:
      return by_stride(Int<5>{});
    case 7:
      return by_stride(Int<7>{});
    default:
      return nullptr;
  }
}

// The unrolled interior path exists for the common square kernels and strides.
InteriorRowFn interior_row_fn(const ConvGeometry& g) {
  return square_kernel_fn(
      g, [](auto k, auto s) -> InteriorRowFn { return depthwise_row_interior<k(), s()>; });
}

// The valid output columns [lo_of[kw], hi_of[kw]) of each kernel column of a plane.
struct ColumnRanges {
  int64_t lo_of[kMaxHoistedTaps];
  int64_t hi_of[kMaxHoistedTaps];
  bool hoisted = false;  // kernels wider than kMaxHoistedTaps compute them per row instead
  // Columns where every kernel column lands inside the input.
  int64_t inner_lo = 0;
  int64_t inner_hi = 0;

  explicit ColumnRanges(const ConvGeometry& g) : hoisted(g.kernel_w <= kMaxHoistedTaps) {
    inner_hi = g.out_w;
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      int64_t lo, hi;
      valid_range(0, g.out_w, g.stride_w, kw * g.dilation_w - g.pad_left, g.in_w, lo, hi);
      inner_lo = std::max(inner_lo, lo);
      inner_hi = std::min(inner_hi, hi);
      if (hoisted) {
        lo_of[kw] = lo;
        hi_of[kw] = hi;
      }
    }
  }
};

// Adds the taps of one input plane x (weights w) that land inside it to output row oh, in
// (kh, kw) order: one pass along the row per tap.
void add_row_taps(const ConvGeometry& g, const ColumnRanges& columns, const float* x,
                  const float* w, int64_t oh, float* yr) {
  const int64_t top = oh * g.stride_h - g.pad_top;
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    const int64_t ih = top + kh * g.dilation_h;
    if (ih < 0 || ih >= g.in_h) continue;
    const float* row = x + ih * g.in_w;
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const float wv = w[kh * g.kernel_w + kw];
      const int64_t offset = kw * g.dilation_w - g.pad_left;
      int64_t lo, hi;
      if (columns.hoisted) {
        lo = columns.lo_of[kw];
        hi = columns.hi_of[kw];
      } else {
        valid_range(0, g.out_w, g.stride_w, offset, g.in_w, lo, hi);
      }
      if (g.stride_w == 1) {
        for (int64_t ow = lo; ow < hi; ++ow) yr[ow] += wv * row[ow + offset];
      } else if (g.stride_w == 2) {
        for (int64_t ow = lo; ow < hi; ++ow) yr[ow] += wv * row[2 * ow + offset];
      } else {
        const int64_t s = g.stride_w;
        for (int64_t ow = lo; ow < hi; ++ow) yr[ow] += wv * row[ow * s + offset];
      }
    }
  }
}

// One output plane of a depthwise convolution.
void depthwise_plane(const ConvGeometry& g, const float* x, const float* w, float bias, float* y) {
  const ColumnRanges columns(g);
  const InteriorRowFn interior = columns.inner_lo < columns.inner_hi ? interior_row_fn(g) : nullptr;
  const int64_t extent_h = (g.kernel_h - 1) * g.dilation_h + 1;

  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    float* yr = y + oh * g.out_w;
    const int64_t top = oh * g.stride_h - g.pad_top;
    if (interior && top >= 0 && top + extent_h <= g.in_h) {
      for (int64_t ow = 0; ow < columns.inner_lo; ++ow) {
        yr[ow] = depthwise_point(g, x, w, bias, oh, ow);
      }
      interior(g, x, w, bias, oh, columns.inner_lo, columns.inner_hi, yr);
      for (int64_t ow = columns.inner_hi; ow < g.out_w; ++ow) {
        yr[ow] = depthwise_point(g, x, w, bias, oh, ow);
      }
      continue;
    }
    // Rows touching the padding.
    std::fill(yr, yr + g.out_w, bias);
    add_row_taps(g, columns, x, w, oh, yr);
  }
}

// The depth taps of output slice d that land inside the input: a run of `count` taps from
// `first`, the first reading input slice `slice` and each next one `dilation` slices further.
struct DepthTapRun {
  int64_t first = 0;
  int64_t count = 0;
  int64_t slice = 0;
};

DepthTapRun depth_tap_run(const ConvDepth& depth, int64_t d) {
  DepthTapRun run;
  for (int64_t t = 0; t < depth.kernel; ++t) {
    const int64_t s = depth_source_slice(depth, d, t);
    if (s < 0) continue;
    if (run.count++ == 0) {
      run.first = t;
      run.slice = s;
    }
  }
  return run;
}

// One channel's output volume [D_out, out_h, out_w] of a 3-D depthwise convolution of any plane
// geometry, along output rows: each row from the bias over the valid taps in (kd, kh, kw) order.
void depthwise_volume_rows(const ConvGeometry& g, const ConvDepth& depth, const float* x,
                           const float* w, float bias, float* y) {
  const ColumnRanges columns(g);
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t plane_taps = g.kernel_h * g.kernel_w;
  for (int64_t d = 0; d < depth.out; ++d) {
    const DepthTapRun run = depth_tap_run(depth, d);
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      float* yr = y + (d * g.out_h + oh) * g.out_w;
      std::fill(yr, yr + g.out_w, bias);
      for (int64_t j = 0; j < run.count; ++j) {
        add_row_taps(g, columns, x + (run.slice + j * depth.dilation) * in_plane,
                     w + (run.first + j) * plane_taps, oh, yr);
      }
    }
  }
}

// Outputs accumulated together by the padded depthwise path: enough independent vector sums
// to keep the FMA units busy through each tap's latency.
constexpr int64_t kDepthwiseVector = 64;

// The last outputs of a plane go in blocks this small, so that small planes (7×7 outputs at a
// pitch of 11) do not compute up to twice their size.
constexpr int64_t kDepthwiseTail = 16;

// Sixteen floats in one vector register (GCC's and clang's vector extension), loaded and stored
// unaligned through memcpy. Written in these, every block is a chain of vector fused
// multiply-adds; as plain float loops GCC 12 compiled the 16-output blocks into rounded products
// and separate adds (other bits than PyTorch's, and slower).
using Lanes16 = float __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

inline Lanes16 load_lanes(const float* p) {
  Lanes16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store_lanes(float* p, Lanes16 v) {
  std::memcpy(p, &v, sizeof(v));
}

// out[j] = bias + taps in (kd, kh, kw) order for V flat outputs from the phases of `count` input
// slices `slice_step` floats apart (see depthwise_volume_padded; a 2-D convolution has one), at
// flat output f of each, with their K×K weights one after the other at wk: each a fused
// multiply-add chain, the same expression for any V. Taps > 0 fixes the count at compile time
// (2-D convolutions, whose weights the caller holds in a local array: then they stay in
// registers across blocks).
template <int K, int S, int64_t V, int Taps>
inline void depthwise_block(const float* at, int64_t slice_step, const float* wk, int64_t count,
                            int64_t pitch, int64_t phase_size, float bias, float* out) {
  static_assert(V % kLanes == 0);
  constexpr int64_t kVectors = V / kLanes;
  if constexpr (Taps > 0) count = Taps;
  Lanes16 acc[kVectors];
  for (int64_t v = 0; v < kVectors; ++v) acc[v] = Lanes16{} + bias;
  for (int64_t t = 0; t < count; ++t, at += slice_step, wk += K * K) {
    for (int kh = 0; kh < K; ++kh) {
      for (int kw = 0; kw < K; ++kw) {
        const float wv = wk[kh * K + kw];
        const float* src = at + ((kh % S) * S + kw % S) * phase_size + (kh / S) * pitch + kw / S;
        for (int64_t v = 0; v < kVectors; ++v) {
          acc[v] += wv * load_lanes(src + v * kLanes);
        }
      }
    }
  }
  for (int64_t v = 0; v < kVectors; ++v) store_lanes(out + v * kLanes, acc[v]);
}

// Per-thread scratch of the padded-plane depthwise path. Its zeros (the padding, the rows and
// columns no input reaches) are the same for every plane of a layout, so they are written when
// the layout changes and each plane then writes only where its input goes.
struct DepthwiseScratch {
  std::vector<float> input;  // the padded phases of each input slice
  std::vector<float> output;
  // K, S, input height and width, top and left padding, output height and width, input slices.
  std::array<int64_t, 9> layout{};
};

// One channel's output volume [D_out, out_h, out_w] of a depthwise convolution with a K×K plane
// kernel, stride S and no dilation in the plane (any depth geometry; a 2-D convolution is one
// slice), on zero-padded copies of the input slices, so that no output needs the scalar edge
// paths of depthwise_plane. Each output is the bias + taps in (kd, kh, kw) order over the depth
// taps inside the input; a padding tap of the plane adds w·0, which leaves the sum unchanged (up
// to the sign of a zero sum). Each padded slice is split into S×S phases (phase (a, b) holds
// padded rows a, a + S, ... and columns b, b + S, ...), so that tap (kh, kw) of output (oh, ow)
// reads phase (kh % S, kw % S) at row oh + kh / S, column ow + kw / S: contiguous loads for every
// stride. With the phase pitch p, output (oh, ow) is flat index f = oh·p + ow and the whole plane
// is one flat run over f (small planes fill whole vectors); the p - out_w outputs past each row's
// end are computed into scratch and dropped. Flat: a 2-D convolution (one slice, one tap).
template <int K, int S, bool Flat>
void depthwise_volume_padded(const ConvGeometry& g, const ConvDepth& depth, const float* x,
                             const float* w, float bias, float* y, DepthwiseScratch& scratch) {
  const int64_t out_h = g.out_h;
  const int64_t out_w = g.out_w;
  constexpr int64_t kReach = (K - 1) / S;  // rows and columns a tap reaches past its output
  const int64_t pitch = out_w + kReach;
  const int64_t count = round_up(out_h * pitch, kDepthwiseTail);
  // Rows per phase, with slack for the reads of the dropped outputs past the last row.
  const int64_t rows = out_h + kReach + ceil_div(kDepthwiseTail + kReach, pitch) + 1;
  const int64_t phase_size = rows * pitch;
  const int64_t slice_size = S * S * phase_size;
  const std::array<int64_t, 9> layout{K,          S,     g.in_h, g.in_w,  g.pad_top,
                                      g.pad_left, out_h, out_w,  depth.in};
  if (scratch.layout != layout) {
    scratch.input.assign(static_cast<size_t>(depth.in * slice_size), 0.0f);
    scratch.layout = layout;
  }
  scratch.output.resize(static_cast<size_t>(count));
  float* __restrict out = scratch.output.data();
  const int64_t in_plane = g.in_h * g.in_w;
  for (int64_t slice = 0; slice < depth.in; ++slice) {
    const float* xs = x + slice * in_plane;
    float* __restrict buf = scratch.input.data() + slice * slice_size;
    if constexpr (S == 2) {
      // Input rows in order, one pass over the plane: padded row p = ih + pad_top is row p / 2 of
      // the two phases of row phase p % 2.
      for (int64_t ih = 0; ih < g.in_h; ++ih) {
        const int64_t p = ih + g.pad_top;
        if (p < 0 || p / 2 >= rows) continue;
        float* even = buf + (p % 2) * 2 * phase_size + (p / 2) * pitch;
        prefetch_row(xs, ih + kPrefetchInputRows, g);
        deinterleave_row(xs + ih * g.in_w, g.in_w, g.pad_left, pitch, even, even + phase_size);
      }
    } else {
      static_assert(S == 1, "the padded path takes strides 1 and 2");
      // One phase, the padded plane itself: column j is input column j - pad_left, [lo, hi) of
      // them lie in the input.
      const int64_t lo = std::clamp<int64_t>(g.pad_left, 0, pitch);
      const int64_t hi = std::clamp<int64_t>(g.in_w + g.pad_left, lo, pitch);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t ih = r - g.pad_top;
        if (ih < 0 || ih >= g.in_h) continue;  // zero rows
        prefetch_row(xs, ih + kPrefetchInputRows, g);
        copy_floats(xs + ih * g.in_w + (lo - g.pad_left), hi - lo, buf + r * pitch + lo);
      }
    }
  }
  const float* buf = scratch.input.data();
  // A 2-D convolution's weights go into a local array, where they stay in registers across
  // blocks, and its one tap's count is fixed at compile time.
  float local[Flat ? K * K : 1];
  const float* weights = w;
  if constexpr (Flat) {
    for (int t = 0; t < K * K; ++t) local[t] = w[t];
    weights = local;
  }
  constexpr int kTaps = Flat ? 1 : 0;
  const int64_t slice_step = depth.dilation * slice_size;
  for (int64_t d = 0; d < depth.out; ++d) {
    const DepthTapRun run = Flat ? DepthTapRun{0, 1, 0} : depth_tap_run(depth, d);
    const float* at = buf + run.slice * slice_size;
    const float* wk = weights + run.first * K * K;
    int64_t f0 = 0;
    for (; f0 + kDepthwiseVector <= count; f0 += kDepthwiseVector) {
      depthwise_block<K, S, kDepthwiseVector, kTaps>(at + f0, slice_step, wk, run.count, pitch,
                                                     phase_size, bias, out + f0);
    }
    for (; f0 < count; f0 += kDepthwiseTail) {
      depthwise_block<K, S, kDepthwiseTail, kTaps>(at + f0, slice_step, wk, run.count, pitch,
                                                   phase_size, bias, out + f0);
    }
    float* yd = y + d * out_h * out_w;
    for (int64_t oh = 0; oh < out_h; ++oh) copy_floats(out + oh * pitch, out_w, yd + oh * out_w);
  }
}

using PaddedVolumeFn = void (*)(const ConvGeometry&, const ConvDepth&, const float*, const float*,
                                float, float*, DepthwiseScratch&);

// The padded path covers the square kernels and strides of common networks, undilated in the
// plane; `flat`: of a 2-D convolution.
PaddedVolumeFn padded_volume_fn(const ConvGeometry& g, bool flat) {
  if (g.dilation_h != 1 || g.dilation_w != 1) return nullptr;
  return square_kernel_fn(g, [flat](auto k, auto s) -> PaddedVolumeFn {
    return flat ? depthwise_volume_padded<k(), s(), true>
                : depthwise_volume_padded<k(), s(), false>;
  });
}

#ifdef __AVX512F__
// Small planes (at most kMaxChannelVectorWidth output columns) run sixteen channels at a time,
// one channel per vector lane: the padded path computes a whole vector block per 16 outputs,
// which on a 7×7 plane (pitch 11) is 80 sums for 49 outputs, and pays its per-plane setup once
// for every 49. Here each output pixel is one vector of 16 channels and every tap one fused
// multiply-add on it: the same chain per output, from the bias over the taps in (kd, kh, kw)
// order on the zero-padded input, so the same bits as the padded path. The input rows of every
// slice go into a zero-padded pixel-major copy ([slice][row][column][16 channels]) by 16×16
// transposes in registers, and each output row comes back the same way.
// 28-wide outputs measured no faster than the padded path (BM_Depthwise 88/28/3/1 and 72/56/3/2
// 12-16% slower, 240/28/5/1 equal); 14- and 7-wide 1.5-2.9x faster.
constexpr int64_t kMaxChannelVectorWidth = 16;
// Output pixels accumulated together along a row.
constexpr int kChannelVectorPixels = 8;

// Per-thread scratch of the channel-vector path: the padded pixel-major input slices, whose
// zeros (the padding) are written when the layout changes, and a 3-D convolution's weight
// vectors (tap-major, 16 channels each; a 2-D one keeps them in a local array).
struct ChannelVectorScratch {
  std::vector<float> input;
  std::vector<float> weights;
  std::array<int64_t, 9> layout{};
};

// P output pixels (ow0 .. ow0+P-1) of row oh into out[p·16]: bias, then the taps of `count`
// input slices `slice_step` floats apart in (kd, kh, kw) order, each a fused multiply-add of the
// tap's 16 weights (wt, K·K per slice) with the pixel's 16 inputs. Taps > 0 fixes the count.
template <int K, int S, int P, int Taps>
inline void channel_vector_pixels(const float* in, int64_t slice_step, const __m512* wt,
                                  int64_t count, int64_t wp, __m512 bias, int64_t oh, int64_t ow0,
                                  float* out) {
  if constexpr (Taps > 0) count = Taps;
  __m512 acc[P];
  for (int p = 0; p < P; ++p) acc[p] = bias;
  for (int64_t t = 0; t < count; ++t, in += slice_step, wt += K * K) {
    for (int kh = 0; kh < K; ++kh) {
      const float* row = in + ((oh * S + kh) * wp + ow0 * S) * kLanes;
      for (int kw = 0; kw < K; ++kw) {
        const __m512 wv = wt[kh * K + kw];
        for (int p = 0; p < P; ++p) {
          acc[p] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(row + (p * S + kw) * kLanes), acc[p]);
        }
      }
    }
  }
  for (int p = 0; p < P; ++p) _mm512_storeu_ps(out + p * kLanes, acc[p]);
}

template <int K, int S, int Taps>
void channel_vector_run(const float* in, int64_t slice_step, const __m512* wt, int64_t count,
                        int64_t wp, __m512 bias, int64_t oh, int64_t ow0, int64_t pixels,
                        float* out) {
  switch (pixels) {
    case 8:
      return channel_vector_pixels<K, S, 8, Taps>(in, slice_step, wt, count, wp, bias, oh, ow0,
                                                  out);
    case 7:
      return channel_vector_pixels<K, S, 7, Taps>(in, slice_step, wt, count, wp, bias, oh, ow0,
                                                  out);
    case 6:
      return channel_vector_pixels<K, S, 6, Taps>(in, slice_step, wt, count, wp, bias, oh, ow0,
                                                  out);
    case 5:
      return channel_vector_pixels<K, S, 5, Taps>(in, slice_step, wt, count, wp, bias, oh, ow0,
                                                  out);
    case 4:
      return channel_vector_pixels<K, S, 4, Taps>(in, slice_step, wt, count, wp, bias, oh, ow0,
                                                  out);
    case 3:
      return channel_vector_pixels<K, S, 3, Taps>(in, slice_step, wt, count, wp, bias, oh, ow0,
                                                  out);
    case 2:
      return channel_vector_pixels<K, S, 2, Taps>(in, slice_step, wt, count, wp, bias, oh, ow0,
                                                  out);
    default:
      return channel_vector_pixels<K, S, 1, Taps>(in, slice_step, wt, count, wp, bias, oh, ow0,
                                                  out);
  }
}

// Channels [0, channels) (at most 16) of one image: x, w, bias and y at the first of them, each
// channel's input volume [D_in, in_h, in_w] and output volume [D_out, out_h, out_w]. Flat: a 2-D
// convolution (one slice, one tap).
template <int K, int S, bool Flat>
void depthwise_channel_vectors(const ConvGeometry& g, const ConvDepth& depth, const float* x,
                               int64_t channels, const float* w, const float* bias, float* y,
                               ChannelVectorScratch& scratch) {
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t in_volume = depth.in * in_plane;
  const int64_t out_volume = depth.out * out_plane;
  const int64_t hp = (g.out_h - 1) * S + K;  // padded rows and columns the taps reach
  const int64_t wp = (g.out_w - 1) * S + K;
  const int64_t slice_size = hp * wp * kLanes;
  const std::array<int64_t, 9> layout{K,          S,       g.in_h,  g.in_w,  g.pad_top,
                                      g.pad_left, g.out_h, g.out_w, depth.in};
  if (scratch.layout != layout) {
    scratch.input.assign(static_cast<size_t>(depth.in * slice_size), 0.0f);
    scratch.layout = layout;
  }
  // Input columns that land inside the padded window.
  const int64_t cols = std::min(g.in_w, wp - g.pad_left);
  __m512 r[16];
  for (int64_t slice = 0; slice < depth.in; ++slice) {
    const float* xs = x + slice * in_plane;
    float* in = scratch.input.data() + slice * slice_size;
    for (int64_t ih = 0; ih < g.in_h; ++ih) {
      const int64_t p = ih + g.pad_top;
      if (p < 0 || p >= hp) continue;
      for (int64_t c0 = 0; c0 < cols; c0 += kLanes) {
        const int64_t n = std::min<int64_t>(kLanes, cols - c0);
        const __mmask16 m = lane_mask(n);
        for (int64_t l = 0; l < kLanes; ++l) {
          r[l] = l < channels ? _mm512_maskz_loadu_ps(m, xs + l * in_volume + ih * g.in_w + c0)
                              : _mm512_setzero_ps();
        }
        transpose16(r);
        float* dst = in + (p * wp + g.pad_left + c0) * kLanes;
        for (int64_t j = 0; j < n; ++j) _mm512_storeu_ps(dst + j * kLanes, r[j]);
      }
    }
  }
  // The weight vectors, tap-major: in a local array for one slice, else 64-byte aligned in
  // scratch.
  const int64_t taps = Flat ? K * K : depth.kernel * K * K;  // per channel
  __m512 local[Flat ? K * K : 1];
  __m512* wt = local;
  if constexpr (!Flat) {
    scratch.weights.resize(static_cast<size_t>((taps + 1) * kLanes));
    const auto address = reinterpret_cast<uintptr_t>(scratch.weights.data());
    wt = reinterpret_cast<__m512*>((address + 63) / 64 * 64);
  }
  for (int64_t t = 0; t < taps; ++t) {
    alignas(64) float lanes[kLanes] = {};
    for (int64_t l = 0; l < channels; ++l) lanes[l] = w[l * taps + t];
    wt[t] = _mm512_load_ps(lanes);
  }
  alignas(64) float lanes[kLanes] = {};
  for (int64_t l = 0; bias && l < channels; ++l) lanes[l] = bias[l];
  const __m512 b = _mm512_load_ps(lanes);
  const int64_t slice_step = depth.dilation * slice_size;
  alignas(64) float row_out[kMaxChannelVectorWidth * kLanes];
  for (int64_t d = 0; d < depth.out; ++d) {
    const DepthTapRun run = Flat ? DepthTapRun{0, 1, 0} : depth_tap_run(depth, d);
    const float* in = scratch.input.data() + run.slice * slice_size;
    const __m512* wd = wt + run.first * K * K;
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      for (int64_t ow0 = 0; ow0 < g.out_w; ow0 += kChannelVectorPixels) {
        const int64_t pixels = std::min<int64_t>(kChannelVectorPixels, g.out_w - ow0);
        channel_vector_run<K, S, Flat ? 1 : 0>(in, slice_step, wd, run.count, wp, b, oh, ow0,
                                               pixels, row_out + ow0 * kLanes);
      }
      for (int64_t c0 = 0; c0 < g.out_w; c0 += kLanes) {  // 16 output columns at a time
        const int64_t n = std::min<int64_t>(kLanes, g.out_w - c0);
        for (int64_t j = 0; j < kLanes; ++j) {
          r[j] = j < n ? _mm512_load_ps(row_out + (c0 + j) * kLanes) : _mm512_setzero_ps();
        }
        transpose16(r);
        const __mmask16 columns = lane_mask(n);
        float* yr = y + d * out_plane + oh * g.out_w + c0;
        for (int64_t l = 0; l < channels; ++l) {
          _mm512_mask_storeu_ps(yr + l * out_volume, columns, r[l]);
        }
      }
    }
  }
}

using ChannelVectorFn = void (*)(const ConvGeometry&, const ConvDepth&, const float*, int64_t,
                                 const float*, const float*, float*, ChannelVectorScratch&);

// The channel-vector path: the padded path's kernels and strides, one input channel per output
// channel, outputs at most kMaxChannelVectorWidth wide; `flat`: of a 2-D convolution.
ChannelVectorFn channel_vector_fn(const ConvGeometry& g, bool flat) {
  if (!padded_volume_fn(g, flat) || g.out_channels != g.in_channels || g.group != g.in_channels ||
      g.out_w > kMaxChannelVectorWidth) {
    return nullptr;
  }
  return square_kernel_fn(g, [flat](auto k, auto s) -> ChannelVectorFn {
    return flat ? depthwise_channel_vectors<k(), s(), true>
                : depthwise_channel_vectors<k(), s(), false>;
  });
}
#endif

// A depthwise convolution of any depth geometry (2-D: one slice, one depth tap): x
// [N, C, D_in, in_h, in_w], y [N, O, D_out, out_h, out_w].
void depthwise(const ConvGeometry& g, const ConvDepth& depth, const float* x, const float* w,
               const float* bias, float* y, const ConvEpilogue& e) {
  const bool finish = !is_identity(e);
  const int64_t multiplier = g.out_channels / g.group;
  const int64_t in_volume = depth.in * g.in_h * g.in_w;
  const int64_t out_volume = depth.out * g.out_h * g.out_w;
  const int64_t taps = depth.kernel * g.kernel_h * g.kernel_w;
  const int64_t volumes = g.batch * g.out_channels;
  const int64_t grain =
      std::max<int64_t>(1, kDepthwiseTaskWork / std::max<int64_t>(1, out_volume * taps));
  const bool flat = depth.in == 1 && depth.out == 1 && depth.kernel == 1;
#ifdef __AVX512F__
  if (const ChannelVectorFn vectors = channel_vector_fn(g, flat)) {
    const int64_t blocks = ceil_div(g.out_channels, kLanes);
    const int64_t block_grain =
        std::max<int64_t>(1, kDepthwiseTaskWork / std::max<int64_t>(1, kLanes * out_volume * taps));
    parallel_for(g.batch * blocks, block_grain, [&](int64_t begin, int64_t end) {
      thread_local ChannelVectorScratch scratch;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / blocks;
        const int64_t c0 = (t % blocks) * kLanes;
        const int64_t channels = std::min(kLanes, g.out_channels - c0);
        const int64_t first = n * g.out_channels + c0;  // volume index of channel c0
        vectors(g, depth, x + first * in_volume, channels, w + c0 * taps,
                bias ? bias + c0 : nullptr, y + first * out_volume, scratch);
        for (int64_t c = 0; finish && c < channels; ++c) {
          finish_run(channel_finish(e, c0 + c), y + (first + c) * out_volume,
                     e.residual ? e.residual + (first + c) * out_volume : nullptr, out_volume);
        }
        activate_runs(e, y + first * out_volume, channels, out_volume, out_volume);
      }
    });
    return;
  }
#endif
  const PaddedVolumeFn padded = padded_volume_fn(g, flat);
  parallel_for(volumes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / g.out_channels;
      const int64_t oc = idx % g.out_channels;
      const int64_t ic = oc / multiplier;
      const float* xv = x + (n * g.in_channels + ic) * in_volume;
      const float b = bias ? bias[oc] : 0.0f;
      float* yv = y + idx * out_volume;
      if (padded) {
        thread_local DepthwiseScratch scratch;
        padded(g, depth, xv, w + oc * taps, b, yv, scratch);
      } else if (flat) {
        depthwise_plane(g, xv, w + oc * taps, b, yv);
      } else {
        depthwise_volume_rows(g, depth, xv, w + oc * taps, b, yv);
      }
      if (finish) {
        finish_run(channel_finish(e, oc), yv, e.residual ? e.residual + idx * out_volume : nullptr,
                   out_volume);
      }
      activate_runs(e, yv, 1, out_volume, out_volume);
    }
  });
}

}  // namespace

void conv_depthwise(const ConvPlan& plan, const float* x, const float* w, const float* bias,
                    float* y, const ConvEpilogue& e) {
  depthwise(plan.geometry, ConvDepth{}, x, w, bias, y, e);
}

}  // namespace qforge::kernels::conv_detail

namespace qforge::kernels {

bool depthwise_3d_direct(const ConvGeometry& plane) {
  return plane.group == plane.in_channels;
}

void conv3d_depthwise(const ConvGeometry& plane, const ConvDepth& depth, const float* x,
                      const float* w, const float* bias, float* y, const ConvEpilogue& epilogue) {
  if (plane.batch * plane.out_channels * depth.out * plane.out_h * plane.out_w == 0) return;
  const DenormalsFlushed flushed;
  conv_detail::depthwise(plane, depth, x, w, bias, y, epilogue);
}

}  // namespace qforge::kernels
