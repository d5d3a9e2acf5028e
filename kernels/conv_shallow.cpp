// Shallow convolutions: ungrouped convolutions whose unrolled depth k = in_channels · kernel_h ·
// kernel_w is small (a stem's 3 × 3 × 3, a 16-deep 1×1 expansion), computed straight from the
// source planes of the packed GEMM path (the input itself for 1×1 kernels, else its zero-padded
// stride phases), with no packing: a block of output channels by a run of up to 64 outputs
// along one output row, each tap one load of the run and one fused multiply-add per channel with
// the tap's weight broadcast from the filter as it is. At this depth the packed GEMM spends as
// long packing its input panels (or, read in place, starting and finishing its tiles) as
// multiplying them, and OpenBLAS writes each output three times (bias, GEMM, epilogue).
//
// Each output is the packed GEMM's arithmetic: one fused multiply-add chain from zero over the
// taps in k order, then the bias added, then its epilogue (TileEpilogue), so the two paths give
// the same bits, on any split and thread count.
#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "kernels/conv_internal.h"
#include "kernels/parallel.h"

namespace qforge::kernels::conv_detail {

#ifdef __AVX512F__
namespace {

constexpr int64_t kLanes = 16;
// Outputs per run: four vectors along the row.
constexpr int kRunVectors = 4;
// Output channels per block: six by four vectors of sums stay in registers with the loads.
constexpr int kBlockChannels = 6;
// A task is an image's output rows (or, read in place, its pixels) of about this many outputs
// per channel, all channels: its input rows are read from cache by every channel block.
constexpr int64_t kTaskOutputs = 1024;

// Where the outputs of one call go and how they finish.
struct ShallowOut {
  const float* w = nullptr;  // filters [out_channels][k]
  int64_t k = 0;
  const float* bias = nullptr;
  bool finish = false;
  const float* scale = nullptr;
  const float* shift = nullptr;
  float lo = 0.0f;
  float hi = 0.0f;
  const ConvEpilogue* epilogue = nullptr;  // for its activation, applied to each finished block
};

// Channels [c0, c0 + R) by V vectors of outputs from src (the run's first output at tap offset
// 0) into y (channel c0's first output, channels `plane` apart; residual likewise); the last
// vector only in the lanes of `last`. The loops over channels and vectors are unrolled by
// pragma: left to GCC 12, the sums stayed in an array in memory, stored after every multiply-add
// (MobileNetV3's stem 0.95 ms with them there, 0.60 in registers).
template <int R, int V>
inline void shallow_block(const float* src, const int64_t* taps, const ShallowOut& o, int64_t c0,
                          __mmask16 last, float* y, const float* residual, int64_t plane) {
  __m512 acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  const float* w = o.w + c0 * o.k;
  for (int64_t t = 0; t < o.k; ++t) {
    const float* s = src + taps[t];
    __m512 x[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      x[v] = v == V - 1 ? _mm512_maskz_loadu_ps(last, s + v * kLanes)
                        : _mm512_loadu_ps(s + v * kLanes);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 wv = _mm512_set1_ps(w[r * o.k + t]);
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(wv, x[v], acc[r][v]);
    }
  }
  constexpr __mmask16 kAll = 0xFFFF;
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const int64_t c = c0 + r;
    const __m512 bias = _mm512_set1_ps(o.bias ? o.bias[c] : 0.0f);
    const __m512 scale = _mm512_set1_ps(o.scale ? o.scale[c] : 1.0f);
    const __m512 shift = _mm512_set1_ps(o.shift ? o.shift[c] : 0.0f);
    const __m512 lo = _mm512_set1_ps(o.lo);
    const __m512 hi = _mm512_set1_ps(o.hi);
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      const __mmask16 m = v == V - 1 ? last : kAll;
      __m512 out = acc[r][v];
      if (o.bias) out = _mm512_add_ps(out, bias);
      if (o.finish) {
        out = _mm512_fmadd_ps(out, scale, shift);
        if (residual) {
          out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(m, residual + r * plane + v * kLanes));
        }
        // max(lo, x) then min(hi, x), x second: NaN passes through (as TileEpilogue).
        out = _mm512_mask_max_ps(out, kAll, lo, out);
        out = _mm512_mask_min_ps(out, kAll, hi, out);
      }
      _mm512_mask_storeu_ps(y + r * plane + v * kLanes, m, out);
    }
  }
}

using BlockFn = void (*)(const float*, const int64_t*, const ShallowOut&, int64_t, __mmask16,
                         float*, const float*, int64_t);

// shallow_block<R, V> at [(R - 1) · kRunVectors + V - 1], for every R up to kBlockChannels and V
// up to kRunVectors (one template per shape keeps the sums in registers).
template <size_t... I>
constexpr std::array<BlockFn, sizeof...(I)> block_table(std::index_sequence<I...>) {
  return {shallow_block<static_cast<int>(I) / kRunVectors + 1,
                        static_cast<int>(I) % kRunVectors + 1>...};
}
constexpr auto kBlockFns = block_table(std::make_index_sequence<kBlockChannels * kRunVectors>{});

// Every output channel of `count` outputs from src into y (channel 0's first output, channels
// `plane` apart; residual likewise or null).
void shallow_outputs(const float* src, int64_t count, const int64_t* taps, const ShallowOut& o,
                     int64_t channels, float* y, const float* residual, int64_t plane) {
  constexpr int64_t kRun = kRunVectors * kLanes;
  for (int64_t c0 = 0; c0 < channels; c0 += kBlockChannels) {
    const int64_t rows = std::min<int64_t>(kBlockChannels, channels - c0);
    float* yc = y + c0 * plane;
    const float* rc = residual ? residual + c0 * plane : nullptr;
    for (int64_t j = 0; j < count; j += kRun) {
      const int64_t n = std::min(kRun, count - j);
      const int64_t vectors = ceil_div(n, kLanes);
      const __mmask16 last = lane_mask(n - (vectors - 1) * kLanes);
      const float* r = rc ? rc + j : nullptr;
      kBlockFns[(rows - 1) * kRunVectors + vectors - 1](src + j, taps, o, c0, last, yc + j, r,
                                                        plane);
      activate_runs(*o.epilogue, yc + j, rows, n, plane);
    }
  }
}

}  // namespace

static_assert(kRunVectors * kLanes == kShallowRunOutputs);

size_t shallow_workspace_bytes(const ConvPlan& plan) {
  return phase_plane_bytes(plan.geometry);
}

void conv_shallow(const ConvPlan& plan, const float* x, const float* w, const float* bias, float* y,
                  std::byte* workspace, const ConvEpilogue& e) {
  const ConvGeometry& g = plan.geometry;
  const int64_t k = g.in_channels * g.kernel_h * g.kernel_w;
  const SourcePlanes sp = source_planes(g, x, reinterpret_cast<float*>(workspace));
  // Tap (c, kh, kw) relative to its output's source position (conv_internal.h).
  int64_t taps[kShallowMaxDepth];
  {
    const int64_t s = sp.stride;
    int64_t t = 0;
    for (int64_t c = 0; c < g.in_channels; ++c) {
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
          taps[t++] = c * sp.channel + ((kh % s) * sp.phases_w + kw % s) * sp.phase +
                      (kh / s) * sp.pitch + kw / s;
        }
      }
    }
  }
  ShallowOut o;
  o.w = w;
  o.k = k;
  o.bias = bias;
  o.finish = !is_identity(e);
  o.scale = e.scale;
  o.shift = e.shift;
  o.lo = e.clamp_min;
  o.hi = e.clamp_max;
  o.epilogue = &e;
  const int64_t plane = g.out_h * g.out_w;
  const int64_t out_image = g.out_channels * plane;
  // Input read in place: an image's pixels are one run (its planes are its rows of k). Phases:
  // output rows, each a run along its source row.
  const bool flat = plane_source(g) == PlaneSource::kInput;
  const int64_t units = flat ? ceil_div(plane, kRunVectors * kLanes) : g.out_h;
  const int64_t unit_outputs = flat ? kRunVectors * kLanes : g.out_w;
  const int64_t per_task = std::clamp<int64_t>(kTaskOutputs / unit_outputs, 1, units);
  const int64_t chunks = ceil_div(units, per_task);
  parallel_for(g.batch * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / chunks;
      const int64_t u0 = (t % chunks) * per_task;
      const int64_t u1 = std::min(units, u0 + per_task);
      const float* src = sp.base + n * sp.image;
      float* yn = y + n * out_image;
      const float* rn = e.residual ? e.residual + n * out_image : nullptr;
      if (flat) {
        const int64_t p0 = u0 * unit_outputs;
        const int64_t p1 = std::min(plane, u1 * unit_outputs);
        shallow_outputs(src + p0, p1 - p0, taps, o, g.out_channels, yn + p0, rn ? rn + p0 : nullptr,
                        plane);
        continue;
      }
      for (int64_t oh = u0; oh < u1; ++oh) {
        const int64_t at = oh * g.out_w;
        shallow_outputs(src + oh * sp.pitch, g.out_w, taps, o, g.out_channels, yn + at,
                        rn ? rn + at : nullptr, plane);
      }
    }
  });
}

#else

size_t shallow_workspace_bytes(const ConvPlan&) {
  return 0;
}

void conv_shallow(const ConvPlan&, const float*, const float*, const float*, float*, std::byte*,
                  const ConvEpilogue&) {}

#endif

bool shallow_fits(const ConvGeometry& g) {
  return g.group == 1 && plane_source(g) != PlaneSource::kGather &&
         g.in_channels * g.kernel_h * g.kernel_w <= kShallowMaxDepth;
}

bool shallow_pays(const ConvGeometry& g) {
  return shallow_fits(g) && (g.in_channels * g.kernel_h * g.kernel_w <= kShallowSmallPlaneDepth ||
                             g.out_h * g.out_w >= kShallowRunOutputs);
}

}  // namespace qforge::kernels::conv_detail

namespace qforge::kernels {

bool shallow_conv_available() {
#ifdef __AVX512F__
  return true;
#else
  return false;
#endif
}

}  // namespace qforge::kernels
