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

// Shallow convolutions (conv_shallow.cpp). They run (shallow_applies) with group 1, k =
// in_channels · kernel_h · kernel_w at most kShallowMaxDepth, a source other than kGather and
// AVX-512, and pay (shallow_pays, what kAuto plans) where they also do not lose to the packed
// GEMM: up to kShallowSmallPlaneDepth deep on any plane, deeper only on planes of at least one
// run of outputs (64), since a run stays within one image's plane and the packed GEMM's tiles
// span images. Measured with BM_Conv against the packed GEMM (2 threads, batch 8, fastest of
// three rounds): ResNet's 7×7 stem (k 147) 8.5 → 5.5 ms, 1×1 layers 64-128 deep on 28×28 to
// 56×56 planes 12-18% faster, 24-40 deep 1.4-1.8x; on 7×7 planes 96 deep equal, 160 deep 11%
// slower. Against OpenBLAS (k below the packed GEMM's thresholds): the 3×3 stride-2 stems of
// MobileNetV3 and EfficientNet-B0 0.95 → 0.60 and 1.93 → 0.98 ms, 16-deep expansions 2.2-2.7x.
inline constexpr int64_t kShallowMaxDepth = 160;
inline constexpr int64_t kShallowSmallPlaneDepth = 96;
bool shallow_applies(const ConvGeometry& g);
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

}  // namespace qforge::kernels::conv_detail
