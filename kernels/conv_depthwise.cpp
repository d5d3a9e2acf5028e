// Depthwise convolution: the common K×K kernels run on a zero-padded, stride-phased copy of each
// plane, or, on planes at most 16 outputs wide, sixteen channels at a time with one channel per
// vector lane; any other depthwise shape runs along output rows. Planes (or blocks of sixteen
// channels) are tasks in parallel.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

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

// One output plane of a depthwise convolution.
void depthwise_plane(const ConvGeometry& g, const float* x, const float* w, float bias, float* y) {
  int64_t lo_of[kMaxHoistedTaps];
  int64_t hi_of[kMaxHoistedTaps];
  const bool hoisted = g.kernel_w <= kMaxHoistedTaps;
  // Columns where every kernel column lands inside the input.
  int64_t inner_lo = 0;
  int64_t inner_hi = g.out_w;
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
  const InteriorRowFn interior = inner_lo < inner_hi ? interior_row_fn(g) : nullptr;
  const int64_t extent_h = (g.kernel_h - 1) * g.dilation_h + 1;

  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    float* yr = y + oh * g.out_w;
    const int64_t top = oh * g.stride_h - g.pad_top;
    if (interior && top >= 0 && top + extent_h <= g.in_h) {
      for (int64_t ow = 0; ow < inner_lo; ++ow) yr[ow] = depthwise_point(g, x, w, bias, oh, ow);
      interior(g, x, w, bias, oh, inner_lo, inner_hi, yr);
      for (int64_t ow = inner_hi; ow < g.out_w; ++ow) {
        yr[ow] = depthwise_point(g, x, w, bias, oh, ow);
      }
      continue;
    }
    // Rows touching the padding: one pass along the row per tap.
    std::fill(yr, yr + g.out_w, bias);
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t ih = top + kh * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
      const float* row = x + ih * g.in_w;
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const float wv = w[kh * g.kernel_w + kw];
        const int64_t offset = kw * g.dilation_w - g.pad_left;
        int64_t lo, hi;
        if (hoisted) {
          lo = lo_of[kw];
          hi = hi_of[kw];
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

// out[j] = bias + taps in (kh, kw) order for V flat outputs from the phases at `at` (see
// depthwise_plane_padded), each a fused multiply-add chain; the same expression for any V.
template <int K, int S, int64_t V>
inline void depthwise_block(const float* at, int64_t pitch, int64_t phase_size, const float* wk,
                            float bias, float* out) {
  static_assert(V % kLanes == 0);
  constexpr int64_t kVectors = V / kLanes;
  Lanes16 acc[kVectors];
  for (int64_t v = 0; v < kVectors; ++v) acc[v] = Lanes16{} + bias;
  for (int kh = 0; kh < K; ++kh) {
    for (int kw = 0; kw < K; ++kw) {
      const float wv = wk[kh * K + kw];
      const float* src = at + ((kh % S) * S + kw % S) * phase_size + (kh / S) * pitch + kw / S;
      for (int64_t v = 0; v < kVectors; ++v) {
        acc[v] += wv * load_lanes(src + v * kLanes);
      }
    }
  }
  for (int64_t v = 0; v < kVectors; ++v) store_lanes(out + v * kLanes, acc[v]);
}

// Per-thread scratch of the padded-plane depthwise path. Its zeros (the padding, the rows and
// columns no input reaches) are the same for every plane of a layout, so they are written when
// the layout changes and each plane then writes only where its input goes.
struct DepthwiseScratch {
  std::vector<float> input;
  std::vector<float> output;
  // K, S, input height and width, top and left padding, output height and width.
  std::array<int64_t, 8> layout{};
};

// One output plane of a depthwise convolution with a K×K kernel, stride S and no dilation, on a
// zero-padded copy of the input plane, so that no output needs the scalar edge paths of
// depthwise_plane. The sum is still bias + taps in (kh, kw) order; a padding tap adds w·0,
// which leaves the sum unchanged (up to the sign of a zero sum). The padded plane is split into
// S×S phases (phase (a, b) holds padded rows a, a + S, ... and columns b, b + S, ...), so that
// tap (kh, kw) of output (oh, ow) reads phase (kh % S, kw % S) at row oh + kh / S, column
// ow + kw / S: contiguous loads for every stride. With the phase pitch p, output (oh, ow) is
// flat index f = oh·p + ow and the whole plane is one flat run over f (small planes fill whole
// vectors); the p - out_w outputs past each row's end are computed into scratch and dropped.
template <int K, int S>
void depthwise_plane_padded(const ConvGeometry& g, const float* x, const float* w, float bias,
                            float* y, DepthwiseScratch& scratch) {
  const int64_t out_h = g.out_h;
  const int64_t out_w = g.out_w;
  constexpr int64_t kReach = (K - 1) / S;  // rows and columns a tap reaches past its output
  const int64_t pitch = out_w + kReach;
  const int64_t count = round_up(out_h * pitch, kDepthwiseTail);
  // Rows per phase, with slack for the reads of the dropped outputs past the last row.
  const int64_t rows = out_h + kReach + ceil_div(kDepthwiseTail + kReach, pitch) + 1;
  const int64_t phase_size = rows * pitch;
  const std::array<int64_t, 8> layout{K, S, g.in_h, g.in_w, g.pad_top, g.pad_left, out_h, out_w};
  if (scratch.layout != layout) {
    scratch.input.assign(static_cast<size_t>(S * S * phase_size), 0.0f);
    scratch.layout = layout;
  }
  scratch.output.resize(static_cast<size_t>(count));
  float* __restrict buf = scratch.input.data();
  float* __restrict out = scratch.output.data();
  if constexpr (S == 2) {
    // Input rows in order, one pass over the plane: padded row p = ih + pad_top is row p / 2 of
    // the two phases of row phase p % 2.
    for (int64_t ih = 0; ih < g.in_h; ++ih) {
      const int64_t p = ih + g.pad_top;
      if (p < 0 || p / 2 >= rows) continue;
      float* even = buf + (p % 2) * 2 * phase_size + (p / 2) * pitch;
      prefetch_row(x, ih + kPrefetchInputRows, g);
      deinterleave_row(x + ih * g.in_w, g.in_w, g.pad_left, pitch, even, even + phase_size);
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
      const float* src = x + ih * g.in_w;
      prefetch_row(x, ih + kPrefetchInputRows, g);
      copy_floats(src + (lo - g.pad_left), hi - lo, buf + r * pitch + lo);
    }
  }
  float wk[K * K];
  for (int t = 0; t < K * K; ++t) wk[t] = w[t];
  int64_t f0 = 0;
  for (; f0 + kDepthwiseVector <= count; f0 += kDepthwiseVector) {
    depthwise_block<K, S, kDepthwiseVector>(buf + f0, pitch, phase_size, wk, bias, out + f0);
  }
  for (; f0 < count; f0 += kDepthwiseTail) {
    depthwise_block<K, S, kDepthwiseTail>(buf + f0, pitch, phase_size, wk, bias, out + f0);
  }
  for (int64_t oh = 0; oh < out_h; ++oh) copy_floats(out + oh * pitch, out_w, y + oh * out_w);
}

using PaddedPlaneFn = void (*)(const ConvGeometry&, const float*, const float*, float, float*,
                               DepthwiseScratch&);

// The padded path covers the square kernels and strides of common networks, undilated.
PaddedPlaneFn padded_plane_fn(const ConvGeometry& g) {
  if (g.dilation_h != 1 || g.dilation_w != 1) return nullptr;
  return square_kernel_fn(
      g, [](auto k, auto s) -> PaddedPlaneFn { return depthwise_plane_padded<k(), s()>; });
}

#ifdef __AVX512F__
// Small planes (at most kMaxChannelVectorWidth output columns) run sixteen channels at a time,
// one channel per vector lane: the padded path computes a whole vector block per 16 outputs,
// which on a 7×7 plane (pitch 11) is 80 sums for 49 outputs, and pays its per-plane setup once
// for every 49. Here each output pixel is one vector of 16 channels and every tap one fused
// multiply-add on it: the same chain per output, from the bias over the taps in (kh, kw) order
// on the zero-padded input, so the same bits as the padded path. The input rows go into a
// zero-padded pixel-major copy ([row][column][16 channels]) by 16×16 transposes in registers,
// and each output row comes back the same way.
// 28-wide outputs measured no faster than the padded path (BM_Depthwise 88/28/3/1 and 72/56/3/2
// 12-16% slower, 240/28/5/1 equal); 14- and 7-wide 1.5-2.9x faster.
constexpr int64_t kMaxChannelVectorWidth = 16;
// Output pixels accumulated together along a row.
constexpr int kChannelVectorPixels = 8;

// Per-thread scratch of the channel-vector path: the padded pixel-major input, whose zeros (the
// padding) are written when the layout changes.
struct ChannelVectorScratch {
  std::vector<float> input;
  std::array<int64_t, 8> layout{};
};

// P output pixels (ow0 .. ow0+P-1) of row oh into out[p·16]: bias, then the taps in (kh, kw)
// order, each a fused multiply-add of the tap's 16 weights with the pixel's 16 inputs.
template <int K, int S, int P>
inline void channel_vector_pixels(const float* in, int64_t wp, const __m512* wt, __m512 bias,
                                  int64_t oh, int64_t ow0, float* out) {
  __m512 acc[P];
  for (int p = 0; p < P; ++p) acc[p] = bias;
  for (int kh = 0; kh < K; ++kh) {
    const float* row = in + ((oh * S + kh) * wp + ow0 * S) * kLanes;
    for (int kw = 0; kw < K; ++kw) {
      const __m512 wv = wt[kh * K + kw];
      for (int p = 0; p < P; ++p) {
        acc[p] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(row + (p * S + kw) * kLanes), acc[p]);
      }
    }
  }
  for (int p = 0; p < P; ++p) _mm512_storeu_ps(out + p * kLanes, acc[p]);
}

template <int K, int S>
void channel_vector_run(const float* in, int64_t wp, const __m512* wt, __m512 bias, int64_t oh,
                        int64_t ow0, int64_t count, float* out) {
  switch (count) {
    case 8:
      return channel_vector_pixels<K, S, 8>(in, wp, wt, bias, oh, ow0, out);
    case 7:
      return channel_vector_pixels<K, S, 7>(in, wp, wt, bias, oh, ow0, out);
    case 6:
      return channel_vector_pixels<K, S, 6>(in, wp, wt, bias, oh, ow0, out);
    case 5:
      return channel_vector_pixels<K, S, 5>(in, wp, wt, bias, oh, ow0, out);
    case 4:
      return channel_vector_pixels<K, S, 4>(in, wp, wt, bias, oh, ow0, out);
    case 3:
      return channel_vector_pixels<K, S, 3>(in, wp, wt, bias, oh, ow0, out);
    case 2:
      return channel_vector_pixels<K, S, 2>(in, wp, wt, bias, oh, ow0, out);
    default:
      return channel_vector_pixels<K, S, 1>(in, wp, wt, bias, oh, ow0, out);
  }
}

// Channels [0, channels) (at most 16) of one image: x, w, bias and y at the first of them.
template <int K, int S>
void depthwise_channel_vectors(const ConvGeometry& g, const float* x, int64_t channels,
                               const float* w, const float* bias, float* y,
                               ChannelVectorScratch& scratch) {
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t hp = (g.out_h - 1) * S + K;  // padded rows and columns the taps reach
  const int64_t wp = (g.out_w - 1) * S + K;
  const std::array<int64_t, 8> layout{K,         S,          g.in_h,  g.in_w,
                                      g.pad_top, g.pad_left, g.out_h, g.out_w};
  if (scratch.layout != layout) {
    scratch.input.assign(static_cast<size_t>(hp * wp * kLanes), 0.0f);
    scratch.layout = layout;
  }
  float* in = scratch.input.data();
  // Input columns that land inside the padded window.
  const int64_t cols = std::min(g.in_w, wp - g.pad_left);
  __m512 r[16];
  for (int64_t ih = 0; ih < g.in_h; ++ih) {
    const int64_t p = ih + g.pad_top;
    if (p < 0 || p >= hp) continue;
    for (int64_t c0 = 0; c0 < cols; c0 += kLanes) {
      const int64_t n = std::min<int64_t>(kLanes, cols - c0);
      const __mmask16 m = lane_mask(n);
      for (int64_t l = 0; l < kLanes; ++l) {
        r[l] = l < channels ? _mm512_maskz_loadu_ps(m, x + l * in_plane + ih * g.in_w + c0)
                            : _mm512_setzero_ps();
      }
      transpose16(r);
      float* dst = in + (p * wp + g.pad_left + c0) * kLanes;
      for (int64_t j = 0; j < n; ++j) _mm512_storeu_ps(dst + j * kLanes, r[j]);
    }
  }
  __m512 wt[K * K];
  for (int t = 0; t < K * K; ++t) {
    alignas(64) float lanes[kLanes] = {};
    for (int64_t l = 0; l < channels; ++l) lanes[l] = w[l * K * K + t];
    wt[t] = _mm512_load_ps(lanes);
  }
  alignas(64) float lanes[kLanes] = {};
  for (int64_t l = 0; bias && l < channels; ++l) lanes[l] = bias[l];
  const __m512 b = _mm512_load_ps(lanes);
  alignas(64) float row_out[kMaxChannelVectorWidth * kLanes];
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t ow0 = 0; ow0 < g.out_w; ow0 += kChannelVectorPixels) {
      const int64_t count = std::min<int64_t>(kChannelVectorPixels, g.out_w - ow0);
      channel_vector_run<K, S>(in, wp, wt, b, oh, ow0, count, row_out + ow0 * kLanes);
    }
    for (int64_t c0 = 0; c0 < g.out_w; c0 += kLanes) {  // 16 output columns at a time
      const int64_t n = std::min<int64_t>(kLanes, g.out_w - c0);
      for (int64_t j = 0; j < kLanes; ++j) {
        r[j] = j < n ? _mm512_load_ps(row_out + (c0 + j) * kLanes) : _mm512_setzero_ps();
      }
      transpose16(r);
      const __mmask16 columns = lane_mask(n);
      for (int64_t l = 0; l < channels; ++l) {
        _mm512_mask_storeu_ps(y + l * out_plane + oh * g.out_w + c0, columns, r[l]);
      }
    }
  }
}

using ChannelVectorFn = void (*)(const ConvGeometry&, const float*, int64_t, const float*,
                                 const float*, float*, ChannelVectorScratch&);

// The channel-vector path: the padded path's kernels and strides, one input channel per output
// channel, outputs at most kMaxChannelVectorWidth wide.
ChannelVectorFn channel_vector_fn(const ConvGeometry& g) {
  if (!padded_plane_fn(g) || g.out_channels != g.in_channels || g.group != g.in_channels ||
      g.out_w > kMaxChannelVectorWidth) {
    return nullptr;
  }
  return square_kernel_fn(
      g, [](auto k, auto s) -> ChannelVectorFn { return depthwise_channel_vectors<k(), s()>; });
}
#endif

}  // namespace

void conv_depthwise(const ConvPlan& plan, const float* x, const float* w, const float* bias,
                    float* y, const ConvEpilogue& e) {
  const bool finish = !is_identity(e);
  const ConvGeometry& g = plan.geometry;
  const int64_t multiplier = g.out_channels / g.group;
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t planes = g.batch * g.out_channels;
  const int64_t grain =
      std::max<int64_t>(1, kDepthwiseTaskWork / std::max<int64_t>(1, out_plane * taps));
#ifdef __AVX512F__
  if (const ChannelVectorFn vectors = channel_vector_fn(g)) {
    const int64_t blocks = ceil_div(g.out_channels, kLanes);
    const int64_t block_grain =
        std::max<int64_t>(1, kDepthwiseTaskWork / std::max<int64_t>(1, kLanes * out_plane * taps));
    parallel_for(g.batch * blocks, block_grain, [&](int64_t begin, int64_t end) {
      thread_local ChannelVectorScratch scratch;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / blocks;
        const int64_t c0 = (t % blocks) * kLanes;
        const int64_t channels = std::min(kLanes, g.out_channels - c0);
        const int64_t first = n * g.out_channels + c0;  // plane index of channel c0
        vectors(g, x + first * in_plane, channels, w + c0 * taps, bias ? bias + c0 : nullptr,
                y + first * out_plane, scratch);
        for (int64_t c = 0; finish && c < channels; ++c) {
          finish_run(channel_finish(e, c0 + c), y + (first + c) * out_plane,
                     e.residual ? e.residual + (first + c) * out_plane : nullptr, out_plane);
        }
        activate_runs(e, y + first * out_plane, channels, out_plane, out_plane);
      }
    });
    return;
  }
#endif
  const PaddedPlaneFn padded = padded_plane_fn(g);
  parallel_for(planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / g.out_channels;
      const int64_t oc = idx % g.out_channels;
      const int64_t ic = oc / multiplier;
      const float* xp = x + (n * g.in_channels + ic) * in_plane;
      if (padded) {
        thread_local DepthwiseScratch scratch;
        padded(g, xp, w + oc * taps, bias ? bias[oc] : 0.0f, y + idx * out_plane, scratch);
      } else {
        depthwise_plane(g, xp, w + oc * taps, bias ? bias[oc] : 0.0f, y + idx * out_plane);
      }
      if (finish) {
        finish_run(channel_finish(e, oc), y + idx * out_plane,
                   e.residual ? e.residual + idx * out_plane : nullptr, out_plane);
      }
      activate_runs(e, y + idx * out_plane, 1, out_plane, out_plane);
    }
  });
}

}  // namespace qforge::kernels::conv_detail
