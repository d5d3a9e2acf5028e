// What the convolution files share: integer helpers, the im2col tile, the per-channel
// epilogue, and each algorithm's planning, weight preparation, workspace and run, so that
// kernels/conv.cpp chooses among them and each algorithm lives in one file:
//   conv.cpp            the planner, the OpenBLAS GEMM path (direct and im2col), im2col
//   conv_winograd.cpp   Winograd F(2×2, 3×3)
//   conv_packed.cpp     the packed GEMM path
//   conv_shallow.cpp    shallow ungrouped convolutions, straight from the input
//   conv_depthwise.cpp  depthwise convolutions
//   conv_backward.cpp   the backward (dx, dw, dbias)
// Internal to kernels/: include it from .cpp files only.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>

#include "kernels/conv.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace qforge::kernels::conv_detail {

inline int64_t ceil_div(int64_t a, int64_t b) {
  return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}
inline int64_t round_up(int64_t a, int64_t b) {
  return (a + b - 1) / b * b;
}

// Splits `total` into equal parts of at most `limit` (rounded up to `align`): {part, count}.
inline std::pair<int64_t, int64_t> split_evenly(int64_t total, int64_t limit, int64_t align) {
  if (total <= limit) return {total, 1};
  int64_t count = ceil_div(total, limit);
  int64_t part = std::min(total, round_up(ceil_div(total, count), align));
  return {part, ceil_div(total, part)};
}

// Output positions [lo, hi) within [begin, end) whose input index pos·stride + offset lies in
// [0, extent).
inline void valid_range(int64_t begin, int64_t end, int64_t stride, int64_t offset, int64_t extent,
                        int64_t& lo, int64_t& hi) {
  lo = std::max(begin, ceil_div(-offset, stride));
  hi = std::min(end, ceil_div(extent - offset, stride));
  if (hi < lo) hi = lo;
}

// Rows (c, kh, kw) by columns (output pixels p0 .. p0+np) of the unrolled input of one group:
// col[(c·taps + kh·kernel_w + kw)·np + j] (zero where the tap falls in the padding).
void im2col_tile(const ConvGeometry& g, const float* x, int64_t channels, int64_t p0, int64_t np,
                 float* col);

// The epilogue of one output channel, resolved once per run of outputs.
struct ChannelFinish {
  float scale = 1.0f;
  float shift = 0.0f;
  float lo = 0.0f;
  float hi = 0.0f;
};

inline bool is_identity(const ConvEpilogue& e) {
  return !e.scale && !e.shift && !e.residual &&
         e.clamp_min == -std::numeric_limits<float>::infinity() &&
         e.clamp_max == std::numeric_limits<float>::infinity();
}

inline ChannelFinish channel_finish(const ConvEpilogue& e, int64_t channel) {
  return {e.scale ? e.scale[channel] : 1.0f, e.shift ? e.shift[channel] : 0.0f, e.clamp_min,
          e.clamp_max};
}

// NaN passes through the clamp unchanged.
inline float clamp_value(float v, float lo, float hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Applies the epilogue to `count` outputs of one channel (residual: the same positions, or null).
inline void finish_run(const ChannelFinish& f, float* y, const float* residual, int64_t count) {
  if (residual) {
    for (int64_t i = 0; i < count; ++i)
      y[i] = clamp_value(y[i] * f.scale + f.shift + residual[i], f.lo, f.hi);
  } else {
    for (int64_t i = 0; i < count; ++i) y[i] = clamp_value(y[i] * f.scale + f.shift, f.lo, f.hi);
  }
}

// The epilogue's activation and then its fake quant, where it has them, over `rows` runs of
// `count` outputs `ld` apart that the rest of the epilogue has finished.
inline void activate_runs(const ConvEpilogue& e, float* y, int64_t rows, int64_t count,
                          int64_t ld) {
  if (e.activation) unary_rows_f32(*e.activation, e.activation_params, y, rows, count, ld);
  if (e.quant) fake_quant_linear_rows(*e.quant, y, rows, count, ld);
}

// Winograd F(2×2, 3×3) (conv_winograd.cpp).
// Whether the geometry takes it: 3×3, stride 1, dilation 1, group 1, enough channels and tiles.
bool winograd_applies(const ConvGeometry& g);
// Fills the tile blocks (and, with the packed GEMM, the images per task) of a Winograd plan.
void plan_winograd(ConvPlan& plan, const ConvPlanOptions& options);
size_t winograd_prepared_floats(const ConvPlan& plan);
void prepare_winograd_weights(const ConvPlan& plan, const float* w, float* prepared);
size_t winograd_workspace_bytes(const ConvPlan& plan, ConvWeightForm form);
void conv_winograd(const ConvPlan& plan, const float* x, const float* w, const float* prepared,
                   const float* bias, float* y, std::byte* workspace, const ConvEpilogue& e);

// Where the packed GEMM and the shallow direct path read the input (conv_packed.cpp): tap
// (c, kh, kw) of output (n, oh, ow) at
// base + n·image + c·channel + ((kh % s)·phases_w + kw % s)·phase + (oh + kh / s)·pitch + ow
// + kw / s, with s the stride (the same along both axes).
struct SourcePlanes {
  const float* base = nullptr;
  int64_t image = 0, channel = 0, phase = 0;
  int64_t phases_w = 1, rows = 0, pitch = 0;
  int64_t stride = 1;
};

enum class PlaneSource : uint8_t {
  kInput,   // 1×1, stride 1, unpadded: the input planes themselves
  kPhases,  // stride phases of the zero-padded input, built per call
  kGather,  // dilated kernels, unequal strides: gathered from the input per tap
};
PlaneSource plane_source(const ConvGeometry& g);
// Bytes of the phase planes of the whole batch (0 unless the source is kPhases).
size_t phase_plane_bytes(const ConvGeometry& g);
// The source planes of x: x itself (kInput), or its phase planes built into `phases` (kPhases,
// phase_plane_bytes(g) of them), in parallel over images and channels. Not for kGather.
SourcePlanes source_planes(const ConvGeometry& g, const float* x, float* phases);

// The packed GEMM path (conv_packed.cpp).
// Plans it when the options ask for it or it pays on this geometry and it can run (a build
// with AVX-512 or AVX2 and FMA, group 1): returns false, the plan unchanged, otherwise.
bool plan_packed(ConvPlan& plan, const ConvPlanOptions& options);
size_t packed_prepared_floats(const ConvPlan& plan);
void prepare_packed_weights(const ConvPlan& plan, const float* w, float* prepared);
size_t packed_workspace_bytes(const ConvPlan& plan, ConvWeightForm form);
void conv_packed(const ConvPlan& plan, const float* x, const float* w, const float* prepared,
                 const float* bias, float* y, std::byte* workspace, const ConvEpilogue& e);

// Shallow convolutions (conv_shallow.cpp). They fit (shallow_fits) with group 1, k =
// in_channels · kernel_h · kernel_w at most kShallowMaxDepth and a source other than kGather,
// and pay (shallow_pays, what kAuto plans) where they also do not lose to the packed GEMM: up to
// kShallowSmallPlaneDepth deep on any plane, deeper only on planes of at least one run of
// outputs (kShallowRunOutputs), since a run stays within one image's plane and the packed GEMM's
// tiles span images. Both depend on the geometry alone; a build without the path
// (shallow_conv_available(), AVX-512) plans the packed GEMM instead, which gives the same bits.
// Measured with BM_Conv against the packed GEMM (2 threads, batch 8, fastest of three rounds):
// ResNet's 7×7 stem (k 147) 8.5 → 5.5 ms, 1×1 layers 64-128 deep on 28×28 to 56×56 planes 7-18%
// faster, 24-40 deep 1.4-1.8x; on 7×7 planes 96 deep equal, 160 deep 11% slower; deeper than 160,
// 3-14% slower but for 256 → 64 on 56×56. Against OpenBLAS (k below the packed GEMM's thresholds):
// the 3×3 stride-2 stems of MobileNetV3 and EfficientNet-B0 0.95 → 0.60 and 1.93 → 0.98 ms, 16-deep
// expansions 2.2-2.7x.
inline constexpr int64_t kShallowMaxDepth = 160;
inline constexpr int64_t kShallowSmallPlaneDepth = 96;
inline constexpr int64_t kShallowRunOutputs = 64;
bool shallow_fits(const ConvGeometry& g);
bool shallow_pays(const ConvGeometry& g);
size_t shallow_workspace_bytes(const ConvPlan& plan);
void conv_shallow(const ConvPlan& plan, const float* x, const float* w, const float* bias, float* y,
                  std::byte* workspace, const ConvEpilogue& e);

// Depthwise convolutions (conv_depthwise.cpp).
void conv_depthwise(const ConvPlan& plan, const float* x, const float* w, const float* bias,
                    float* y, const ConvEpilogue& e);

#ifdef __AVX512F__
// The first n lanes of a 16-float vector (n may be out of [0, 16]).
inline __mmask16 lane_mask(int64_t n) {
  return static_cast<__mmask16>(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1u);
}
#endif

// Row copies shared by the paths that build zero-padded copies of input planes (the depthwise
// padded path, the source planes of the packed GEMM and the shallow path).
#ifdef __AVX512F__
// Lanes l of a 16-float vector whose column first + l lies in [0, width).
inline __mmask16 columns_inside(int64_t first, int64_t width) {
  return static_cast<__mmask16>(lane_mask(width - first) & ~lane_mask(-first));
}

// dst[0, n) = src[0, n): whole vectors and one masked tail, no library call (the runs here are
// rows of small planes and runs of packed panels, where a call and its length dispatch cost
// more than the move).
inline void copy_floats(const float* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_loadu_ps(src + i));
  if (i < n) {
    const __mmask16 m = lane_mask(n - i);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_loadu_ps(m, src + i));
  }
}

// Stride 2: the two column phases of one input row zero-padded by `pad_left` on the left and
// zeros past its end, even[j] = padded[2j] and odd[j] = padded[2j + 1] for j < n, read straight
// from the input row by masked loads (the lanes outside the row are zeros and are not read).
inline void deinterleave_row(const float* row, int64_t width, int64_t pad_left, int64_t n,
                             float* even, float* odd) {
  const __m512i even_lanes =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd_lanes =
      _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t j = 0; j < n; j += 16) {
    const int64_t first = 2 * j - pad_left;  // input column of the first lane
    const __m512 a = _mm512_maskz_loadu_ps(columns_inside(first, width), row + first);
    const __m512 b = _mm512_maskz_loadu_ps(columns_inside(first + 16, width), row + first + 16);
    const __mmask16 m = lane_mask(n - j);
    _mm512_mask_storeu_ps(even + j, m, _mm512_permutex2var_ps(a, even_lanes, b));
    _mm512_mask_storeu_ps(odd + j, m, _mm512_permutex2var_ps(a, odd_lanes, b));
  }
}
#else
inline void copy_floats(const float* src, int64_t n, float* dst) {
  std::copy_n(src, n, dst);
}

inline void deinterleave_row(const float* row, int64_t width, int64_t pad_left, int64_t n,
                             float* even, float* odd) {
  for (int64_t j = 0; j < n; ++j) {
    const int64_t c = 2 * j - pad_left;
    even[j] = c >= 0 && c < width ? row[c] : 0.0f;
    odd[j] = c + 1 >= 0 && c + 1 < width ? row[c + 1] : 0.0f;
  }
}
#endif

// Input rows are read this far ahead of their copy into the phases: each plane is read once, in
// order, and without the hint the copy waits on the cache hierarchy (EfficientNet-B0's 112×112
// stride-2 planes 1.3x slower in BM_Depthwise).
inline constexpr int64_t kPrefetchInputRows = 4;

// Hints row ih of the input plane x into the cache, if it exists. Always inlined: GCC 12 takes a
// function whose only effect is a prefetch for one without effects and drops its calls.
[[gnu::always_inline]] inline void prefetch_row(const float* x, int64_t ih, const ConvGeometry& g) {
  if (ih >= g.in_h) return;
  const char* row = reinterpret_cast<const char*>(x + ih * g.in_w);
  for (int64_t b = 0; b < g.in_w * static_cast<int64_t>(sizeof(float)); b += 64) {
    __builtin_prefetch(row + b);
  }
}

}  // namespace qforge::kernels::conv_detail
