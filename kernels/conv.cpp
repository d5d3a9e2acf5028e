// Convolution: GEMMs per (image, group, channel block, pixel tile) on the input itself or on an
// im2col tile in per-thread scratch (OpenBLAS), or per (tile of the batch's pixels, channel
// block) on the packed AVX-512 GEMM with the input gathered into its panels; Winograd
// F(2×2, 3×3) per (image or group of images, block of tiles); and a depthwise kernel that runs
// the common K×K kernels on a zero-padded, stride-phased copy of each plane (any other depthwise
// shape along output rows).
#include "kernels/conv.h"

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/packed_gemm.h"
#include "kernels/parallel.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace qforge::kernels {
namespace {

// An im2col tile stays near this size so that the GEMM reads it from L2 (ResNet-50 at batch 8
// ran a few percent faster with 1 MiB than with 256-512 KiB tiles, and no faster beyond).
constexpr int64_t kIm2colTileBytes = 1024 * 1024;
// Tiles never go below this many pixels: narrower GEMMs waste the BLAS micro-kernel.
constexpr int64_t kMinTilePixels = 64;
// Output channels per GEMM call; wider layers are split so that batch 1 still has parallel work
// and the weight block stays cache-sized.
constexpr int64_t kChannelBlock = 256;
// im2col GEMMs with at least this many output channels take blocks this wide: every block
// gathers its own tile and OpenBLAS re-packs it (ResNet-50's downsample and 3×3 stride-2 layers
// ran 5-20% faster than with kChannelBlock).
constexpr int64_t kIm2colChannelBlock = 512;
// Depthwise planes are grouped into tasks of at least this many multiply-adds.
constexpr int64_t kDepthwiseTaskWork = 1 << 15;

int64_t ceil_div(int64_t a, int64_t b) {
  return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}
int64_t round_up(int64_t a, int64_t b) {
  return (a + b - 1) / b * b;
}

// Splits `total` into equal parts of at most `limit` (rounded up to `align`): {part, count}.
std::pair<int64_t, int64_t> split_evenly(int64_t total, int64_t limit, int64_t align) {
  if (total <= limit) return {total, 1};
  int64_t count = ceil_div(total, limit);
  int64_t part = std::min(total, round_up(ceil_div(total, count), align));
  return {part, ceil_div(total, part)};
}

// Output positions [lo, hi) within [begin, end) whose input index pos·stride + offset lies in
// [0, extent).
void valid_range(int64_t begin, int64_t end, int64_t stride, int64_t offset, int64_t extent,
                 int64_t& lo, int64_t& hi) {
  lo = std::max(begin, ceil_div(-offset, stride));
  hi = std::min(end, ceil_div(extent - offset, stride));
  if (hi < lo) hi = lo;
}

// Rows (c, kh, kw) by columns (output pixels p0 .. p0+np) of the unrolled input of one group.
// The valid column range of a tap depends only on kw, so it is computed once per tap, and rows
// are walked without divisions.
void im2col_tile(const ConvGeometry& g, const float* x, int64_t channels, int64_t p0, int64_t np,
                 float* col) {
  const int64_t plane = g.in_h * g.in_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t oh_first = p0 / g.out_w;
  const int64_t ow_first = p0 % g.out_w;
  const int64_t s = g.stride_w;
  if (taps == 1 && g.pad_top == 0 && g.pad_left == 0 && (g.out_h - 1) * g.stride_h < g.in_h &&
      (g.out_w - 1) * s < g.in_w) {
    // 1×1 unpadded (strided) kernel: every tap lies inside the input, a plain strided gather.
    for (int64_t c = 0; c < channels; ++c) {
      const float* xc = x + c * plane;
      float* dst = col + c * np;
      int64_t oh = oh_first;
      int64_t ow0 = ow_first;
      int64_t remaining = np;
      while (remaining > 0) {
        const int64_t n = std::min(g.out_w - ow0, remaining);
        const float* row = xc + oh * g.stride_h * g.in_w + ow0 * s;
        if (s == 2) {
          for (int64_t j = 0; j < n; ++j) dst[j] = row[2 * j];
        } else {
          for (int64_t j = 0; j < n; ++j) dst[j] = row[j * s];
        }
        dst += n;
        remaining -= n;
        ow0 = 0;
        ++oh;
      }
    }
    return;
  }
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t offset = kw * g.dilation_w - g.pad_left;
      int64_t lo_all, hi_all;
      valid_range(0, g.out_w, s, offset, g.in_w, lo_all, hi_all);
      for (int64_t c = 0; c < channels; ++c) {
        const float* xc = x + c * plane;
        float* dst = col + (c * taps + kh * g.kernel_w + kw) * np;
        int64_t oh = oh_first;
        int64_t ow0 = ow_first;
        int64_t remaining = np;
        while (remaining > 0) {
          const int64_t ow1 = std::min(g.out_w, ow0 + remaining);
          const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
          // dst[ow - ow0] is this row's column for output column ow.
          if (ih < 0 || ih >= g.in_h) {
            std::fill(dst, dst + (ow1 - ow0), 0.0f);
          } else {
            const int64_t lo = std::clamp(lo_all, ow0, ow1);
            const int64_t hi = std::clamp(hi_all, lo, ow1);
            const float* row = xc + ih * g.in_w;
            std::fill(dst, dst + (lo - ow0), 0.0f);
            if (s == 1) {
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow - ow0] = row[ow + offset];
            } else if (s == 2) {
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow - ow0] = row[2 * ow + offset];
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow - ow0] = row[ow * s + offset];
            }
            std::fill(dst + (hi - ow0), dst + (ow1 - ow0), 0.0f);
          }
          dst += ow1 - ow0;
          remaining -= ow1 - ow0;
          ow0 = 0;
          ++oh;
        }
      }
    }
  }
}

// Taps per kernel row whose valid output range is computed once per plane; wider kernels
// recompute it per output row.
constexpr int64_t kMaxHoistedTaps = 32;

// Every depthwise output is bias + its valid taps added in (kh, kw) order; the paths below
// differ only in how they schedule that same sum.

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

// The unrolled interior path exists for the common square kernels and strides.
InteriorRowFn interior_row_fn(const ConvGeometry& g) {
  if (g.kernel_h != g.kernel_w || g.stride_h != g.stride_w) return nullptr;
  const int64_t k = g.kernel_h;
  const int64_t st = g.stride_w;
  if (k == 3 && st == 1) return depthwise_row_interior<3, 1>;
  if (k == 3 && st == 2) return depthwise_row_interior<3, 2>;
  if (k == 5 && st == 1) return depthwise_row_interior<5, 1>;
  if (k == 5 && st == 2) return depthwise_row_interior<5, 2>;
  if (k == 7 && st == 1) return depthwise_row_interior<7, 1>;
  if (k == 7 && st == 2) return depthwise_row_interior<7, 2>;
  return nullptr;
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

// out[j] = bias + taps in (kh, kw) order for V flat outputs from the phases at `at` (see
// depthwise_plane_padded); the same expression for any V.
template <int K, int S, int64_t V>
inline void depthwise_block(const float* at, int64_t pitch, int64_t phase_size, const float* wk,
                            float bias, float* out) {
  float acc[V];
  for (int64_t j = 0; j < V; ++j) acc[j] = bias;
  for (int kh = 0; kh < K; ++kh) {
    for (int kw = 0; kw < K; ++kw) {
      const float wv = wk[kh * K + kw];
      const float* src = at + ((kh % S) * S + kw % S) * phase_size + (kh / S) * pitch + kw / S;
      for (int64_t j = 0; j < V; ++j) acc[j] += wv * src[j];
    }
  }
  for (int64_t j = 0; j < V; ++j) out[j] = acc[j];
}

// Per-thread scratch of the padded-plane depthwise path.
struct DepthwiseScratch {
  std::vector<float> input;
  std::vector<float> output;
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
  scratch.input.resize(static_cast<size_t>(S * S * phase_size));
  scratch.output.resize(static_cast<size_t>(count));
  float* __restrict buf = scratch.input.data();
  float* __restrict out = scratch.output.data();
  for (int a = 0; a < S; ++a) {
    for (int b = 0; b < S; ++b) {
      float* phase = buf + (a * S + b) * phase_size;
      // Phase column j is input column S·j + b - pad_left: [lo, hi) of them lie in the input.
      const int64_t offset = b - g.pad_left;
      const int64_t lo = std::clamp<int64_t>(ceil_div(-offset, S), 0, pitch);
      const int64_t hi = std::clamp<int64_t>(ceil_div(g.in_w - offset, S), lo, pitch);
      for (int64_t r = 0; r < rows; ++r) {
        float* dst = phase + r * pitch;
        const int64_t ih = S * r + a - g.pad_top;
        if (ih < 0 || ih >= g.in_h) {
          std::fill_n(dst, pitch, 0.0f);
          continue;
        }
        const float* src = x + ih * g.in_w;
        std::fill_n(dst, lo, 0.0f);
        if constexpr (S == 1) {
          std::copy(src + lo + offset, src + hi + offset, dst + lo);
        } else {
          for (int64_t j = lo; j < hi; ++j) dst[j] = src[S * j + offset];
        }
        std::fill(dst + hi, dst + pitch, 0.0f);
      }
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
  for (int64_t oh = 0; oh < out_h; ++oh) std::copy_n(out + oh * pitch, out_w, y + oh * out_w);
}

using PaddedPlaneFn = void (*)(const ConvGeometry&, const float*, const float*, float, float*,
                               DepthwiseScratch&);

// The padded path covers the square kernels and strides of common networks, undilated.
PaddedPlaneFn padded_plane_fn(const ConvGeometry& g) {
  if (g.kernel_h != g.kernel_w || g.stride_h != g.stride_w || g.dilation_h != 1 ||
      g.dilation_w != 1) {
    return nullptr;
  }
  const int64_t k = g.kernel_h;
  const int64_t st = g.stride_w;
  if (k == 3 && st == 1) return depthwise_plane_padded<3, 1>;
  if (k == 3 && st == 2) return depthwise_plane_padded<3, 2>;
  if (k == 5 && st == 1) return depthwise_plane_padded<5, 1>;
  if (k == 5 && st == 2) return depthwise_plane_padded<5, 2>;
  if (k == 7 && st == 1) return depthwise_plane_padded<7, 1>;
  if (k == 7 && st == 2) return depthwise_plane_padded<7, 2>;
  return nullptr;
}

// The epilogue of one output channel, resolved once per run of outputs.
struct ChannelFinish {
  float scale = 1.0f;
  float shift = 0.0f;
  float lo = 0.0f;
  float hi = 0.0f;
};

bool is_identity(const ConvEpilogue& e) {
  return !e.scale && !e.shift && !e.residual &&
         e.clamp_min == -std::numeric_limits<float>::infinity() &&
         e.clamp_max == std::numeric_limits<float>::infinity();
}

ChannelFinish channel_finish(const ConvEpilogue& e, int64_t channel) {
  return {e.scale ? e.scale[channel] : 1.0f, e.shift ? e.shift[channel] : 0.0f, e.clamp_min,
          e.clamp_max};
}

// NaN passes through the clamp unchanged.
inline float clamp_value(float v, float lo, float hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Applies the epilogue to `count` outputs of one channel (residual: the same positions, or null).
void finish_run(const ChannelFinish& f, float* y, const float* residual, int64_t count) {
  if (residual) {
    for (int64_t i = 0; i < count; ++i)
      y[i] = clamp_value(y[i] * f.scale + f.shift + residual[i], f.lo, f.hi);
  } else {
    for (int64_t i = 0; i < count; ++i) y[i] = clamp_value(y[i] * f.scale + f.shift, f.lo, f.hi);
  }
}

// ---------------------------------------------------------------------------------------------
// Winograd F(2×2, 3×3): a 2×2 output tile comes from a 4×4 input patch d and a filter g as
// A^T [(G g G^T) ⊙ (B^T d B)] A with (interpolation points 0, ±1, ∞)
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// Summed over input channels, the 16 elementwise products are 16 GEMMs:
// M_p[out × tiles] = U_p[out × in] · V_p[in × tiles]. The code below is written for any tile
// size m (patch a = m + 2) given the three 1-D transforms; F(4×4, 3×3) ran about twice as fast
// on 28×28 planes but with 10-20× the rounding error of direct convolution (about 1e-5
// relative), too much for qforge's 1e-5 equivalence checks, so only m = 2 is defined.

template <int kTile>
struct Winograd;

template <>
struct Winograd<2> {
  static constexpr int kAlpha = 4;
  static void input(const float (&d)[4], float (&v)[4]) {  // B^T d
    v[0] = d[0] - d[2];
    v[1] = d[1] + d[2];
    v[2] = d[2] - d[1];
    v[3] = d[1] - d[3];
  }
  static void filter(const double (&g)[3], double (&u)[4]) {  // G g
    u[0] = g[0];
    u[1] = 0.5 * (g[0] + g[1] + g[2]);
    u[2] = 0.5 * (g[0] - g[1] + g[2]);
    u[3] = g[2];
  }
  static void output(const float (&m)[4], float (&y)[2]) {  // A^T m
    y[0] = m[0] + m[1] + m[2];
    y[1] = m[1] - m[2] - m[3];
  }
};

constexpr int kWinogradTile = 2;

// V = B^T d B for one a×a patch.
template <int kTile, int kA = Winograd<kTile>::kAlpha>
inline void winograd_patch(const float (&d)[kA][kA], float (&v)[kA][kA]) {
  float t[kA][kA];
  for (int j = 0; j < kA; ++j) {
    float col[kA], out[kA];
    for (int i = 0; i < kA; ++i) col[i] = d[i][j];
    Winograd<kTile>::input(col, out);
    for (int i = 0; i < kA; ++i) t[i][j] = out[i];
  }
  for (int i = 0; i < kA; ++i) Winograd<kTile>::input(t[i], v[i]);
}

// Y = A^T X A for one tile.
template <int kTile, int kA = Winograd<kTile>::kAlpha>
inline void winograd_tile_out(const float (&x)[kA][kA], float (&y)[kTile][kTile]) {
  float s[kTile][kA];
  for (int j = 0; j < kA; ++j) {
    float col[kA], out[kTile];
    for (int i = 0; i < kA; ++i) col[i] = x[i][j];
    Winograd<kTile>::output(col, out);
    for (int i = 0; i < kTile; ++i) s[i][j] = out[i];
  }
  for (int i = 0; i < kTile; ++i) Winograd<kTile>::output(s[i], y[i]);
}

constexpr int64_t winograd_points(int tile) {
  return (tile + 2) * (tile + 2);
}
int64_t winograd_tiles_h(const ConvGeometry& g, int tile) {
  return (g.out_h + tile - 1) / tile;
}
int64_t winograd_tiles_w(const ConvGeometry& g, int tile) {
  return (g.out_w + tile - 1) / tile;
}

// Tiles per block of GEMMs (their N), unless V and M of a block would pass kWinogradBlockBytes.
// On ResNet-50, blocks of about 200 tiles ran fastest.
constexpr int64_t kWinogradBlockTiles = 256;
constexpr int64_t kWinogradBlockBytes = 8 * 1024 * 1024;

size_t winograd_weight_floats(const ConvGeometry& g, int tile) {
  return static_cast<size_t>(winograd_points(tile) * g.out_channels * g.in_channels);
}

// Floats of scratch for the zero-padded copy of one tile row's input rows.
int64_t winograd_row_buffer_floats(const ConvGeometry& g, int tile) {
  return (tile + 2) * (tile * winograd_tiles_w(g, tile) + 2);
}

size_t winograd_slot_bytes(const ConvPlan& plan) {
  const ConvGeometry& g = plan.geometry;
  const int tile = kWinogradTile;
  return aligned_bytes(static_cast<size_t>(winograd_points(tile) *
                                               (g.in_channels + g.out_channels) * plan.tile_pixels *
                                               plan.image_group +
                                           winograd_row_buffer_floats(g, tile)) *
                       sizeof(float));
}

// U_p = (G g G^T)_p for one 3×3 filter f, computed in double, written to u[p · stride].
template <int kTile>
void winograd_filter(const float* f, float* u, int64_t stride) {
  constexpr int kA = Winograd<kTile>::kAlpha;
  double gg[kA][3];  // G g
  for (int j = 0; j < 3; ++j) {
    const double col[3] = {f[j], f[3 + j], f[6 + j]};
    double out[kA];
    Winograd<kTile>::filter(col, out);
    for (int i = 0; i < kA; ++i) gg[i][j] = out[i];
  }
  for (int i = 0; i < kA; ++i) {
    double row[kA];
    Winograd<kTile>::filter(gg[i], row);
    for (int j = 0; j < kA; ++j) u[(i * kA + j) * stride] = static_cast<float>(row[j]);
  }
}

// U_p[m][c] for every filter of w [out_c, in_c, 3, 3].
template <int kTile>
void winograd_weights(const float* w, int64_t out_c, int64_t in_c, float* u) {
  const int64_t stride = out_c * in_c;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, in_c));
  parallel_for(out_c, grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t c = 0; c < in_c; ++c) {
        winograd_filter<kTile>(w + (m * in_c + c) * 9, u + m * in_c + c, stride);
      }
    }
  });
}

#ifdef __AVX512F__
// F(2×2, 3×3) transforms of 16 tiles at a time (the tiles of a run side by side in the lanes,
// the last group masked), with the same additions in the same order as Winograd<2> and
// winograd_patch / winograd_tile_out, so a tile gets the same bits as in the scalar loops (builds
// without AVX-512, and the edge tiles outside runs). Each returns how many tiles it did.

// The first n lanes (n may be out of [0, 16]).
inline __mmask16 lane_mask(int64_t n) {
  return static_cast<__mmask16>(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1u);
}

// B^T d B for the tiles [0, count) of a run: row i of tile tw's patch is rows[i][2·tw ..
// 2·tw + 3].
int64_t winograd2_input_vectors(const float* const* rows, int64_t count, float* v, int64_t stride) {
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  for (int64_t tw = 0; tw < count; tw += 16) {
    const int64_t n = std::min<int64_t>(16, count - tw);  // tiles in the lanes
    const __mmask16 lanes = lane_mask(n);
    const __mmask16 first_half = lane_mask(2 * n);
    const __mmask16 second_half = lane_mask(2 * n - 16);
    __m512 d[4][4];
    for (int i = 0; i < 4; ++i) {
      const float* r = rows[i] + 2 * tw;  // reads r[0 .. 2n + 1]
      const __m512 a0 = _mm512_maskz_loadu_ps(first_half, r);
      const __m512 a1 = _mm512_maskz_loadu_ps(second_half, r + 16);
      const __m512 b0 = _mm512_maskz_loadu_ps(first_half, r + 2);
      const __m512 b1 = _mm512_maskz_loadu_ps(second_half, r + 18);
      d[i][0] = _mm512_permutex2var_ps(a0, even, a1);
      d[i][1] = _mm512_permutex2var_ps(a0, odd, a1);
      d[i][2] = _mm512_permutex2var_ps(b0, even, b1);
      d[i][3] = _mm512_permutex2var_ps(b0, odd, b1);
    }
    __m512 t[4][4];  // B^T d, column by column
    for (int j = 0; j < 4; ++j) {
      t[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
      t[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
      t[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
      t[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
    }
    for (int i = 0; i < 4; ++i) {  // (B^T d) B, row by row
      float* vi = v + i * 4 * stride + tw;
      _mm512_mask_storeu_ps(vi, lanes, _mm512_sub_ps(t[i][0], t[i][2]));
      _mm512_mask_storeu_ps(vi + stride, lanes, _mm512_add_ps(t[i][1], t[i][2]));
      _mm512_mask_storeu_ps(vi + 2 * stride, lanes, _mm512_sub_ps(t[i][2], t[i][1]));
      _mm512_mask_storeu_ps(vi + 3 * stride, lanes, _mm512_sub_ps(t[i][1], t[i][3]));
    }
  }
  return count;
}

// finish_run on 16 outputs in registers: finish_run's y·scale + shift compiles to one fused
// multiply-add (qforge builds with the compiler's default FP contraction), written out here.
inline __m512 finish_vector16(const ChannelFinish& f, __m512 y, const float* residual,
                              __mmask16 lanes) {
  y = _mm512_fmadd_ps(y, _mm512_set1_ps(f.scale), _mm512_set1_ps(f.shift));
  if (residual) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(lanes, residual));
  // max(lo, y) then min(hi, y): NaN passes through, as in clamp_value (merge-masked forms: GCC
  // 12 warns falsely on the plain ones).
  y = _mm512_mask_max_ps(y, 0xFFFF, _mm512_set1_ps(f.lo), y);
  return _mm512_mask_min_ps(y, 0xFFFF, _mm512_set1_ps(f.hi), y);
}

// A^T M A + bias, then the epilogue f when not null, for the tiles [0, count) of a run (see
// winograd_output_run).
int64_t winograd2_output_vectors(const float* m, int64_t stride, int64_t count, float bias,
                                 float* const* out, const ChannelFinish* f,
                                 const float* const* res) {
  const __m512i low = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i high =
      _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  const __m512 b = _mm512_set1_ps(bias);
  for (int64_t tw = 0; tw < count; tw += 16) {
    const int64_t n = std::min<int64_t>(16, count - tw);  // tiles in the lanes
    const __mmask16 lanes = lane_mask(n);
    const __mmask16 first_half = lane_mask(2 * n);
    const __mmask16 second_half = lane_mask(2 * n - 16);
    __m512 s[2][4];  // A^T M, column by column
    for (int j = 0; j < 4; ++j) {
      const __m512 x0 = _mm512_maskz_loadu_ps(lanes, m + j * stride + tw);
      const __m512 x1 = _mm512_maskz_loadu_ps(lanes, m + (4 + j) * stride + tw);
      const __m512 x2 = _mm512_maskz_loadu_ps(lanes, m + (8 + j) * stride + tw);
      const __m512 x3 = _mm512_maskz_loadu_ps(lanes, m + (12 + j) * stride + tw);
      s[0][j] = _mm512_add_ps(_mm512_add_ps(x0, x1), x2);
      s[1][j] = _mm512_sub_ps(_mm512_sub_ps(x1, x2), x3);
    }
    for (int i = 0; i < 2; ++i) {  // (A^T M) A + bias, interleaved into output columns
      const __m512 y0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]), b);
      const __m512 y1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3]), b);
      __m512 lo_half = _mm512_permutex2var_ps(y0, low, y1);
      __m512 hi_half = _mm512_permutex2var_ps(y0, high, y1);
      if (f) {
        lo_half = finish_vector16(*f, lo_half, res ? res[i] + 2 * tw : nullptr, first_half);
        hi_half = finish_vector16(*f, hi_half, res ? res[i] + 2 * tw + 16 : nullptr, second_half);
      }
      _mm512_mask_storeu_ps(out[i] + 2 * tw, first_half, lo_half);
      _mm512_mask_storeu_ps(out[i] + 2 * tw + 16, second_half, hi_half);
    }
  }
  return count;
}
#endif

// The input transform for tile columns [0, count) of one tile row whose patches lie inside
// rows[] (a rows, column 0 of tile column 0); v at tile column 0 of plane 0. next[i] is
// rows[i] + kTile, passed separately so that each stream reads a non-overlapping group per
// tile and the loop vectorises across tiles.
template <int kTile>
void winograd_input_run(const float* const* rows, const float* const* next, int64_t count, float* v,
                        int64_t stride) {
  constexpr int kA = Winograd<kTile>::kAlpha;
  // The a² output streams are stride apart and never overlap within one run.
  int64_t first = 0;
#ifdef __AVX512F__
  if constexpr (kTile == 2) first = winograd2_input_vectors(rows, count, v, stride);
#endif
#pragma GCC ivdep
  for (int64_t tw = first; tw < count; ++tw) {
    const int64_t c = kTile * tw;
    float d[kA][kA];
    for (int i = 0; i < kA; ++i) {
      for (int j = 0; j < kTile; ++j) d[i][j] = rows[i][c + j];
      for (int j = kTile; j < kA; ++j) d[i][j] = next[i][c + j - kTile];
    }
    float out[kA][kA];
    winograd_patch<kTile>(d, out);
    for (int i = 0; i < kA; ++i) {
      for (int j = 0; j < kA; ++j) v[(i * kA + j) * stride + tw] = out[i][j];
    }
  }
}

// V_p[c][ti] for the tiles t0 .. t0+nt of one image (x: its first channel plane). Tile rows
// whose input rows all lie inside the input read them in place (their first and last tile
// columns may still need padding); other tile rows go through a zero-padded copy.
// V's rows are ld floats apart (ld >= nt: several images' tiles side by side).
template <int kTile>
void winograd_input(const ConvGeometry& g, const float* x, int64_t t0, int64_t nt, float* v,
                    float* row_buffer, int64_t ld) {
  constexpr int kA = Winograd<kTile>::kAlpha;
  const int64_t plane = g.in_h * g.in_w;
  const int64_t tiles_w = winograd_tiles_w(g, kTile);
  const int64_t stride = g.in_channels * ld;  // between the a² V planes
  // Tile columns whose a input columns all lie inside the input: [first_inside, last_inside).
  const int64_t first_inside = ceil_div(g.pad_left, kTile);
  const int64_t last_inside =
      g.in_w - kA + g.pad_left >= 0 ? (g.in_w - kA + g.pad_left) / kTile + 1 : 0;
  const float* rows[kA];
  const float* next[kA];
  for (int64_t c = 0; c < g.in_channels; ++c) {
    const float* xc = x + c * plane;
    float* vc = v + c * ld;
    int64_t t = t0;
    while (t < t0 + nt) {
      const int64_t th = t / tiles_w;
      const int64_t tw0 = t % tiles_w;
      const int64_t tw1 = std::min(tiles_w, tw0 + (t0 + nt - t));
      float* vrow = vc + (t - t0) - tw0;  // vrow[tw]: this tile row's V column for tile column tw
      const int64_t ih0 = kTile * th - g.pad_top;
      t += tw1 - tw0;
      if (ih0 < 0 || ih0 + kA > g.in_h) {
        // Copy input columns [kTile·tw0 - pad_left, kTile·tw1 + 2 - pad_left) of the a rows,
        // zeros outside the input, and transform the whole run from the copy.
        const int64_t width = kTile * (tw1 - tw0) + 2;
        const int64_t col0 = kTile * tw0 - g.pad_left;
        for (int i = 0; i < kA; ++i) {
          float* dst = row_buffer + i * width;
          const int64_t ih = ih0 + i;
          if (ih < 0 || ih >= g.in_h) {
            std::fill(dst, dst + width, 0.0f);
          } else {
            const float* src = xc + ih * g.in_w;
            for (int64_t j = 0; j < width; ++j) {
              const int64_t iw = col0 + j;
              dst[j] = iw >= 0 && iw < g.in_w ? src[iw] : 0.0f;
            }
          }
          rows[i] = dst;
          next[i] = dst + kTile;
        }
        winograd_input_run<kTile>(rows, next, tw1 - tw0, vrow + tw0, stride);
        continue;
      }
      const int64_t a = std::clamp(first_inside, tw0, tw1);
      const int64_t b = std::clamp(last_inside, a, tw1);
      auto bounded = [&](int64_t tw) {
        float d[kA][kA];
        const int64_t iw0 = kTile * tw - g.pad_left;
        for (int i = 0; i < kA; ++i) {
          const float* src = xc + (ih0 + i) * g.in_w;
          for (int j = 0; j < kA; ++j) {
            const int64_t iw = iw0 + j;
            d[i][j] = iw >= 0 && iw < g.in_w ? src[iw] : 0.0f;
          }
        }
        float out[kA][kA];
        winograd_patch<kTile>(d, out);
        for (int i = 0; i < kA; ++i) {
          for (int j = 0; j < kA; ++j) vrow[(i * kA + j) * stride + tw] = out[i][j];
        }
      };
      for (int64_t tw = tw0; tw < a; ++tw) bounded(tw);
      if (a < b) {
        // Tile column a starts at input column kTile·a - pad_left >= 0.
        for (int i = 0; i < kA; ++i) {
          rows[i] = xc + (ih0 + i) * g.in_w + (kTile * a - g.pad_left);
          next[i] = rows[i] + kTile;
        }
        winograd_input_run<kTile>(rows, next, b - a, vrow + a, stride);
      }
      for (int64_t tw = b; tw < tw1; ++tw) bounded(tw);
    }
  }
}

// Y = A^T M A + bias for `count` whole tiles of one tile row: m at the first tile of plane 0,
// out[i] at the first output column of output row i; then the epilogue f, when not null (res:
// the residual's rows like out, or null).
template <int kTile>
void winograd_output_run(const float* m, int64_t stride, int64_t count, float bias,
                         float* const* out, const ChannelFinish* f, const float* const* res) {
  constexpr int kA = Winograd<kTile>::kAlpha;
  int64_t first = 0;
#ifdef __AVX512F__
  if constexpr (kTile == 2) first = winograd2_output_vectors(m, stride, count, bias, out, f, res);
#endif
#pragma GCC ivdep
  for (int64_t tw = first; tw < count; ++tw) {
    float xt[kA][kA];
    for (int i = 0; i < kA; ++i) {
      for (int j = 0; j < kA; ++j) xt[i][j] = m[(i * kA + j) * stride + tw];
    }
    float yt[kTile][kTile];
    winograd_tile_out<kTile>(xt, yt);
    for (int i = 0; i < kTile; ++i) {
      for (int j = 0; j < kTile; ++j) out[i][kTile * tw + j] = yt[i][j] + bias;
    }
  }
  if (f && first < count) {
    for (int i = 0; i < kTile; ++i) {
      finish_run(*f, out[i] + kTile * first, res ? res[i] + kTile * first : nullptr,
                 kTile * (count - first));
    }
  }
}

// Y = A^T M A + bias for the tiles t0 .. t0+nt of one image, then the epilogue.
// M's rows are ld floats apart.
template <int kTile>
void winograd_output(const ConvGeometry& g, const float* mx, int64_t t0, int64_t nt, int64_t ld,
                     const float* bias, const ConvEpilogue& e, float* y, const float* residual) {
  constexpr int kA = Winograd<kTile>::kAlpha;
  const int64_t plane = g.out_h * g.out_w;
  const int64_t tiles_w = winograd_tiles_w(g, kTile);
  const int64_t stride = g.out_channels * ld;
  const bool finish = !is_identity(e);
  const int64_t full_w = g.out_w / kTile;  // tile columns lying wholly inside the output
  float* out[kTile];
  for (int64_t m = 0; m < g.out_channels; ++m) {
    const float* mm = mx + m * ld;
    float* ym = y + m * plane;
    const float* rm = residual ? residual + m * plane : nullptr;
    const float b = bias ? bias[m] : 0.0f;
    const ChannelFinish f = channel_finish(e, m);
    int64_t t = t0;
    while (t < t0 + nt) {
      const int64_t th = t / tiles_w;
      const int64_t tw0 = t % tiles_w;
      const int64_t tw1 = std::min(tiles_w, tw0 + (t0 + nt - t));
      const float* mrow = mm + (t - t0) - tw0;  // mrow[p·stride + tw]
      const int64_t oh = kTile * th;
      const int64_t rows = std::min<int64_t>(kTile, g.out_h - oh);
      const int64_t run_end = rows == kTile ? std::max(tw0, std::min(tw1, full_w)) : tw0;
      if (tw0 < run_end) {
        const float* res[kTile];
        for (int i = 0; i < kTile; ++i) {
          out[i] = ym + (oh + i) * g.out_w + kTile * tw0;
          res[i] = rm ? rm + (oh + i) * g.out_w + kTile * tw0 : nullptr;
        }
        winograd_output_run<kTile>(mrow + tw0, stride, run_end - tw0, b, out, finish ? &f : nullptr,
                                   rm ? res : nullptr);
      }
      for (int64_t tw = run_end; tw < tw1; ++tw) {
        float xt[kA][kA];
        for (int i = 0; i < kA; ++i) {
          for (int j = 0; j < kA; ++j) xt[i][j] = mrow[(i * kA + j) * stride + tw];
        }
        float yt[kTile][kTile];
        winograd_tile_out<kTile>(xt, yt);
        for (int64_t i = 0; i < rows; ++i) {
          float* yr = ym + (oh + i) * g.out_w;
          for (int64_t j = 0; j < kTile && kTile * tw + j < g.out_w; ++j) {
            yr[kTile * tw + j] = yt[i][j] + b;
          }
        }
      }
      if (finish && run_end < tw1) {  // the run finished its own tiles
        const int64_t col0 = kTile * run_end;
        const int64_t count = std::min(g.out_w, kTile * tw1) - col0;
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t at = (oh + i) * g.out_w + col0;
          finish_run(f, ym + at, rm ? rm + at : nullptr, count);
        }
      }
      t += tw1 - tw0;
    }
  }
}

// The transformed filters of the packed-GEMM Winograd path: U_p packed into row panels, one
// packed matrix per point.
size_t winograd_packed_floats(const ConvGeometry& g) {
  return static_cast<size_t>(winograd_points(kWinogradTile)) *
         packed_rows_floats(g.out_channels, g.in_channels);
}

void pack_winograd_weights(const ConvGeometry& g, const float* transformed, float* packed) {
  const int64_t out_c = g.out_channels;
  const int64_t in_c = g.in_channels;
  const size_t point_floats = packed_rows_floats(out_c, in_c);
  for (int64_t p = 0; p < winograd_points(kWinogradTile); ++p) {
    pack_rows(transformed + p * out_c * in_c, in_c, out_c, in_c, packed + p * point_floats);
  }
}

// Images per task for a packed Winograd plan whose block holds all of an image's tiles: small
// planes (ResNet-50's 7×7 layers have 16 tiles) leave the micro-kernel's columns half empty,
// so the tiles of several images go side by side. Picks the group that keeps the most columns
// busy times the share of threads kept busy, the smallest group on ties.
int64_t winograd_image_group(const ConvPlan& plan) {
  const ConvGeometry& g = plan.geometry;
  const int64_t tiles = plan.tile_pixels;
  const int64_t slots = std::max(plan.slots, 1);
  int64_t best = 1;
  double best_score = 0.0;
  for (int64_t group = 1; group <= g.batch && group * tiles <= kWinogradBlockTiles; ++group) {
    const int64_t cols = group * tiles;
    const int64_t tasks = ceil_div(g.batch, group);
    const double columns =
        static_cast<double>(cols) / static_cast<double>(round_up(cols, kPackedCols));
    const double threads = static_cast<double>(tasks) / static_cast<double>(round_up(tasks, slots));
    const double score = columns * threads;
    if (score > best_score + 1e-9) {
      best_score = score;
      best = group;
    }
  }
  return best;
}

// prepared: the transformed filters (packed when plan.packed), or null to transform them into
// the workspace first.
template <int kTile>
void conv_winograd(const ConvPlan& plan, const float* x, const float* w, const float* prepared,
                   const float* bias, float* y, std::byte* workspace, const ConvEpilogue& e) {
  const ConvGeometry& g = plan.geometry;
  constexpr int64_t kPoints = winograd_points(kTile);
  const int64_t in_c = g.in_channels;
  const int64_t out_c = g.out_channels;
  const int64_t tiles = winograd_tiles_h(g, kTile) * winograd_tiles_w(g, kTile);
  const int64_t block = plan.tile_pixels;
  const int64_t blocks = plan.pixel_tiles;
  const float* u = prepared;
  if (!u) {
    float* transformed = reinterpret_cast<float*>(workspace);
    winograd_weights<kTile>(w, out_c, in_c, transformed);
    u = transformed;
    workspace += aligned_bytes(winograd_weight_floats(g, kTile) * sizeof(float));
    if (plan.packed) {
      float* packed = reinterpret_cast<float*>(workspace);
      pack_winograd_weights(g, transformed, packed);
      u = packed;
      workspace += aligned_bytes(winograd_packed_floats(g) * sizeof(float));
    }
  }
  const size_t point_floats = packed_rows_floats(out_c, in_c);  // packed U_p
  const int64_t in_image = in_c * g.in_h * g.in_w;
  const int64_t out_image = out_c * g.out_h * g.out_w;
  // A task: the tiles t0 .. t0+nt of images n0 .. n0+images, side by side in V and M (several
  // images only where one block holds all of an image's tiles).
  const int64_t group = plan.image_group;
  const int64_t groups = ceil_div(g.batch, group);
  parallel_tasks_with_scratch(
      groups * blocks, plan.slots, winograd_slot_bytes(plan), workspace,
      [&](int64_t task, std::byte* scratch) {
        const int64_t n0 = task / blocks * group;
        const int64_t images = std::min(group, g.batch - n0);
        const int64_t t0 = (task % blocks) * block;
        const int64_t per_image = std::min(block, tiles - t0);
        const int64_t nt = per_image * images;  // GEMM columns
        float* v = reinterpret_cast<float*>(scratch);
        float* mx = v + kPoints * in_c * nt;
        float* row_buffer = mx + kPoints * out_c * nt;
        for (int64_t i = 0; i < images; ++i) {
          winograd_input<kTile>(g, x + (n0 + i) * in_image, t0, per_image, v + i * per_image,
                                row_buffer, nt);
        }
        for (int64_t p = 0; p < kPoints; ++p) {
          if (!plan.packed) {
            sgemm(Transpose::kNo, Transpose::kNo, out_c, nt, in_c, 1.0f, u + p * out_c * in_c, in_c,
                  v + p * in_c * nt, nt, 0.0f, mx + p * out_c * nt, nt);
            continue;
          }
          // M_p = U_p · V_p on the packed GEMM, V_p read in place (rows nt apart).
          const float* up = u + p * point_floats;
          const float* vp = v + p * in_c * nt;
          float* mp = mx + p * out_c * nt;
          for (int64_t r0 = 0; r0 < out_c; r0 += kPackedRows) {
            const int64_t rows = std::min(kPackedRows, out_c - r0);
            for (int64_t c0 = 0; c0 < nt; c0 += kPackedCols) {
              packed_gemm_tile(in_c, up + r0 * in_c, vp + c0, nt, rows,
                               std::min(kPackedCols, nt - c0), nullptr, 0, mp + r0 * nt + c0, nt,
                               nullptr);
            }
          }
        }
        for (int64_t i = 0; i < images; ++i) {
          const int64_t n = n0 + i;
          winograd_output<kTile>(g, mx + i * per_image, t0, per_image, nt, bias, e,
                                 y + n * out_image,
                                 e.residual ? e.residual + n * out_image : nullptr);
        }
      });
}

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
    }
  });
}

void conv_gemm(const ConvPlan& plan, const float* x, const float* w, const float* bias, float* y,
               std::byte* workspace, const ConvEpilogue& e) {
  const ConvGeometry& g = plan.geometry;
  const bool finish = !is_identity(e);
  const bool direct = plan.algorithm == ConvAlgorithm::kDirectGemm;
  const int64_t in_per_group = g.in_channels / g.group;
  const int64_t out_per_group = g.out_channels / g.group;
  const int64_t k = in_per_group * g.kernel_h * g.kernel_w;
  const int64_t pixels = g.out_h * g.out_w;
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t tiles = plan.pixel_tiles;
  const int64_t blocks = plan.channel_blocks;
  const int64_t tasks = g.batch * g.group * blocks * tiles;
  const size_t slot_bytes =
      direct ? 0 : aligned_bytes(static_cast<size_t>(k * plan.tile_pixels) * sizeof(float));

  parallel_tasks_with_scratch(
      tasks, plan.slots, slot_bytes, workspace, [&](int64_t t, std::byte* scratch) {
        const int64_t tile = t % tiles;
        t /= tiles;
        const int64_t block = t % blocks;
        t /= blocks;
        const int64_t grp = t % g.group;
        const int64_t n = t / g.group;

        const int64_t p0 = tile * plan.tile_pixels;
        const int64_t np = std::min(plan.tile_pixels, pixels - p0);
        const int64_t m0 = block * plan.channel_block;
        const int64_t rows = std::min(plan.channel_block, out_per_group - m0);
        const int64_t oc0 = grp * out_per_group + m0;

        const float* xg = x + (n * g.in_channels + grp * in_per_group) * in_plane;
        const float* right;
        int64_t ldb;
        if (direct) {
          right = xg + p0;
          ldb = pixels;
        } else {
          float* col = reinterpret_cast<float*>(scratch);
          im2col_tile(g, xg, in_per_group, p0, np, col);
          right = col;
          ldb = np;
        }
        float* yb = y + (n * g.out_channels + oc0) * pixels + p0;
        float beta = 0.0f;
        if (bias) {
          for (int64_t r = 0; r < rows; ++r) std::fill_n(yb + r * pixels, np, bias[oc0 + r]);
          beta = 1.0f;
        }
        sgemm(Transpose::kNo, Transpose::kNo, rows, np, k, 1.0f, w + oc0 * k, k, right, ldb, beta,
              yb, pixels);
        if (finish) {
          const int64_t offset = (n * g.out_channels + oc0) * pixels + p0;
          for (int64_t r = 0; r < rows; ++r) {
            finish_run(channel_finish(e, oc0 + r), yb + r * pixels,
                       e.residual ? e.residual + offset + r * pixels : nullptr, np);
          }
        }
      });
}

// ---------------------------------------------------------------------------------------------
// Packed GEMM path (ConvPlan::packed): C[out_channels × batch·pixels] = W · X. Tap (c, kh, kw) of
// output (n, oh, ow) reads a "source plane" at a fixed offset from (oh, ow): the input itself for
// 1×1 stride-1 unpadded kernels; otherwise a zero-padded copy of each input plane split into
// stride phases (phase (a, b) holds padded rows a, a + s, ... and columns b, b + s, ...), made
// once per call, so that every tap reads a contiguous run along ow. Dilated kernels (and unequal
// strides) gather from the input directly. Each task gathers its columns straight into
// kPackedCols-wide panels.

// Rows of k per pass over a packed B block: a row panel of A (kc × 14 floats) stays in L1 while
// the B block (kc × tile_pixels) and the running sums stay in L2.
constexpr int64_t kPackedDepthBlock = 256;
// Output columns (pixels of the batch) per task: kPackedTileColumns, fewer where that would
// leave too few tasks, but not below kPackedMinTileColumns.
constexpr int64_t kPackedTileColumns = 256;
constexpr int64_t kPackedMinTileColumns = 64;
// Row panels per task at most (252 output channels): the running sums stay in L2.
constexpr int64_t kPackedMaxPanels = 18;
// Tasks per thread the planner aims for (fewer leave threads idle at the end of a layer; 4 and
// 8 ran alike on ResNet-50).
constexpr int64_t kPackedTasksPerThread = 8;
// Channels are not split into blocks of fewer row panels than this (84 channels): each block
// packs its own B, which narrow blocks do not repay (EfficientNet-B0's 80-channel projection
// ran 20-40% slower in blocks of 28 channels than OpenBLAS).
constexpr int64_t kPackedMinPanels = 6;
// Smaller convolutions stay on OpenBLAS: with 16 output channels the packed GEMM ran 25% slower
// (EfficientNet-B0's 32→16 projection), with 24 about 15% faster. So do narrow layers on small
// planes and very shallow ones: EfficientNet-B0's 80-192-channel projections on 14×14 and 7×7
// planes and its 16- and 24-deep expansions each ran as fast or faster on their own, yet at 2
// threads the network as a whole ran about 3.5% slower with them packed (ResNets' narrow layers
// sit on planes of 28×28 and up).
constexpr int64_t kPackedMinChannels = 24;
constexpr int64_t kPackedMinDepth = 32;
constexpr int64_t kPackedNarrowChannels = 256;
constexpr int64_t kPackedSmallPlanePixels = 28 * 28;

int64_t packed_depth(const ConvGeometry& g) {
  return g.in_channels * g.kernel_h * g.kernel_w;
}

// Where the packed path reads tap (c, kh, kw) of output (n, oh, ow):
// base + n·image + c·channel + ((kh % s)·phases_w + kw % s)·phase + (oh + kh / s)·pitch + ow
// + kw / s, with s the stride (the same along both axes).
struct SourcePlanes {
  const float* base = nullptr;
  int64_t image = 0, channel = 0, phase = 0;
  int64_t phases_w = 1, rows = 0, pitch = 0;
  int64_t stride = 1;
};

enum class PackedSource : uint8_t {
  kInput,   // 1×1, stride 1, unpadded: the input planes themselves
  kPhases,  // stride phases of the zero-padded input, built per call
  kGather,  // dilated kernels, unequal strides: gathered from the input per tap
};

PackedSource packed_source(const ConvGeometry& g) {
  if (g.dilation_h != 1 || g.dilation_w != 1 || g.stride_h != g.stride_w) {
    return PackedSource::kGather;
  }
  const bool pointwise = g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.pad_top == 0 &&
                         g.pad_left == 0 && g.out_h == g.in_h && g.out_w == g.in_w;
  return pointwise ? PackedSource::kInput : PackedSource::kPhases;
}

SourcePlanes phase_planes_of(const ConvGeometry& g) {
  SourcePlanes sp;
  const int64_t s = g.stride_w;
  sp.stride = s;
  sp.phases_w = std::min(s, g.kernel_w);
  const int64_t phases_h = std::min(s, g.kernel_h);
  sp.rows = g.out_h + (g.kernel_h - 1) / s;
  sp.pitch = g.out_w + (g.kernel_w - 1) / s;
  sp.phase = sp.rows * sp.pitch;
  sp.channel = phases_h * sp.phases_w * sp.phase;
  sp.image = g.in_channels * sp.channel;
  return sp;
}

size_t phase_plane_bytes(const ConvPlan& plan) {
  if (packed_source(plan.geometry) != PackedSource::kPhases) return 0;
  return aligned_bytes(
      static_cast<size_t>(plan.geometry.batch * phase_planes_of(plan.geometry).image) *
      sizeof(float));
}

// dst[0, len) = src[0, len) for len <= kPackedCols.
inline void copy_run(const float* src, int64_t len, float* dst) {
#ifdef __AVX512F__
  if (len == kPackedCols) {
    _mm512_storeu_ps(dst, _mm512_loadu_ps(src));
    _mm512_storeu_ps(dst + 16, _mm512_loadu_ps(src + 16));
    return;
  }
  const __mmask16 m0 = static_cast<__mmask16>(len >= 16 ? 0xFFFF : (1u << len) - 1u);
  _mm512_mask_storeu_ps(dst, m0, _mm512_maskz_loadu_ps(m0, src));
  if (len > 16) {
    const __mmask16 m1 = static_cast<__mmask16>((1u << (len - 16)) - 1u);
    _mm512_mask_storeu_ps(dst + 16, m1, _mm512_maskz_loadu_ps(m1, src + 16));
  }
#else
  std::copy_n(src, len, dst);
#endif
}

// Runs of every panel of a task: at most one per column plus one per panel.
constexpr int64_t kMaxTaskRuns = kPackedTileColumns + kPackedTileColumns / kPackedCols;

// dst[i] = src[stride·i] for i < n <= kPackedCols, reading no further than src[stride·(n-1)].
inline void strided_run(const float* src, int64_t stride, int64_t n, float* dst) {
#ifdef __AVX512F__
  if (stride == 1) {
    copy_run(src, n, dst);
    return;
  }
  if (stride == 2) {
    const __m512i even =
        _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    for (int64_t h = 0; h < n; h += 16) {
      const int64_t count = std::min<int64_t>(16, n - h);
      const int64_t inputs = 2 * count - 1;
      const auto bits = [](int64_t c) {
        return static_cast<__mmask16>(c >= 16 ? 0xFFFF : c <= 0 ? 0 : (1u << c) - 1u);
      };
      const __m512 a = _mm512_maskz_loadu_ps(bits(inputs), src + 2 * h);
      const __m512 b = _mm512_maskz_loadu_ps(bits(inputs - 16), src + 2 * h + 16);
      _mm512_mask_storeu_ps(dst + h, bits(count), _mm512_permutex2var_ps(a, even, b));
    }
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i * stride];
}

// The phase planes of input channel c of image n (x at that plane) into out.
void build_phase_planes(const ConvGeometry& g, const SourcePlanes& sp, const float* x, float* out) {
  const int64_t s = sp.stride;
  const int64_t phases_h = sp.channel / (sp.phases_w * sp.phase);
  for (int64_t a = 0; a < phases_h; ++a) {
    for (int64_t b = 0; b < sp.phases_w; ++b) {
      float* phase = out + (a * sp.phases_w + b) * sp.phase;
      // Phase column j is input column s·j + b - pad_left: [lo, hi) of them lie in the input.
      const int64_t offset = b - g.pad_left;
      int64_t lo, hi;
      valid_range(0, sp.pitch, s, offset, g.in_w, lo, hi);
      for (int64_t r = 0; r < sp.rows; ++r) {
        float* dst = phase + r * sp.pitch;
        const int64_t ih = s * r + a - g.pad_top;
        if (ih < 0 || ih >= g.in_h) {
          std::fill_n(dst, sp.pitch, 0.0f);
          continue;
        }
        const float* src = x + ih * g.in_w + offset;  // src[s·j]
        std::fill(dst, dst + lo, 0.0f);
        if (s == 1) {
          std::copy(src + lo, src + hi, dst + lo);
        } else {
          for (int64_t j = lo; j < hi; j += kPackedCols) {
            strided_run(src + s * j, s, std::min(kPackedCols, hi - j), dst + j);
          }
        }
        std::fill(dst + hi, dst + sp.pitch, 0.0f);
      }
    }
  }
}

// A run of one packed panel's columns that reads consecutive source columns: columns
// dst .. dst+len of the panel are image n's output pixels from (oh, ow0) on (a run crosses
// output rows only where the source pitch equals the output width).
struct PanelRun {
  int64_t dst, len, n, oh, ow0;
};

int64_t panel_runs(const ConvGeometry& g, bool flat, int64_t j0, int64_t count, PanelRun* runs) {
  const int64_t pixels = g.out_h * g.out_w;
  int64_t used = 0;
  int64_t j = j0;
  const int64_t end = j0 + count;
  while (j < end) {
    const int64_t n = j / pixels;
    const int64_t p = j % pixels;
    PanelRun run;
    run.dst = j - j0;
    run.n = n;
    run.oh = p / g.out_w;
    run.ow0 = p % g.out_w;
    run.len = flat ? std::min(end - j, pixels - p) : std::min(end - j, g.out_w - run.ow0);
    runs[used++] = run;
    j += run.len;
  }
  return used;
}

// Packs rows k0 .. k0+kc of the unrolled input for flat output columns [j0, j0+nt) into
// ceil(nt / kPackedCols) panels of kc × kPackedCols at b (columns past nt zero), reading the
// source planes one row of k at a time, so that the reads stream along the source rows.
void pack_from_planes(const ConvGeometry& g, const SourcePlanes& sp, int64_t k0, int64_t kc,
                      int64_t j0, int64_t nt, float* b) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t s = sp.stride;
  const bool flat = sp.pitch == g.out_w && sp.rows == g.out_h;
  const int64_t panels = ceil_div(nt, kPackedCols);
  PanelRun runs[kMaxTaskRuns];
  int64_t offset[kMaxTaskRuns];  // of each run's first source element for tap (0, 0, 0)
  int64_t used = 0;
  for (int64_t pnl = 0; pnl < panels; ++pnl) {
    const int64_t count = std::min(kPackedCols, nt - pnl * kPackedCols);
    const int64_t added = panel_runs(g, flat, j0 + pnl * kPackedCols, count, runs + used);
    for (int64_t i = used; i < used + added; ++i) {
      runs[i].dst += pnl * kc * kPackedCols;  // into the packed block
      offset[i] = runs[i].n * sp.image + runs[i].oh * sp.pitch + runs[i].ow0;
    }
    used += added;
  }
  const int64_t tail = nt - (panels - 1) * kPackedCols;  // columns of the last panel
  int64_t c = k0 / taps;
  int64_t kh = k0 % taps / g.kernel_w;
  int64_t kw = k0 % g.kernel_w;
  for (int64_t kk = 0; kk < kc; ++kk) {
    float* row = b + kk * kPackedCols;
    const float* src = sp.base + c * sp.channel + ((kh % s) * sp.phases_w + kw % s) * sp.phase +
                       (kh / s) * sp.pitch + kw / s;
    for (int64_t i = 0; i < used; ++i) copy_run(src + offset[i], runs[i].len, row + runs[i].dst);
    if (tail < kPackedCols) {
      float* last = row + (panels - 1) * kc * kPackedCols;
      std::fill(last + tail, last + kPackedCols, 0.0f);
    }
    if (++kw == g.kernel_w) {
      kw = 0;
      if (++kh == g.kernel_h) {
        kh = 0;
        ++c;
      }
    }
  }
}

// The same panels gathered from the input per tap, zeros where a tap falls in the padding (any
// stride and dilation), one row of k at a time.
void pack_gathered(const ConvGeometry& g, const float* x, int64_t k0, int64_t kc, int64_t j0,
                   int64_t nt, float* b) {
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t in_image = g.in_channels * in_plane;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t panels = ceil_div(nt, kPackedCols);
  PanelRun runs[kMaxTaskRuns];
  int64_t used = 0;
  for (int64_t pnl = 0; pnl < panels; ++pnl) {
    const int64_t count = std::min(kPackedCols, nt - pnl * kPackedCols);
    const int64_t added = panel_runs(g, false, j0 + pnl * kPackedCols, count, runs + used);
    for (int64_t i = used; i < used + added; ++i) runs[i].dst += pnl * kc * kPackedCols;
    used += added;
  }
  const int64_t tail = nt - (panels - 1) * kPackedCols;  // columns of the last panel
  int64_t c = k0 / taps;
  int64_t kh = k0 % taps / g.kernel_w;
  int64_t kw = k0 % g.kernel_w;
  for (int64_t kk = 0; kk < kc; ++kk) {
    float* row = b + kk * kPackedCols;
    const int64_t offset = kw * g.dilation_w - g.pad_left;
    int64_t lo_all, hi_all;
    valid_range(0, g.out_w, g.stride_w, offset, g.in_w, lo_all, hi_all);
    const float* xc = x + c * in_plane;
    const int64_t row_offset = kh * g.dilation_h - g.pad_top;
    for (int64_t i = 0; i < used; ++i) {
      const PanelRun& r = runs[i];
      float* out = row + r.dst - r.ow0;  // out[ow]
      const int64_t ow1 = r.ow0 + r.len;
      const int64_t ih = r.oh * g.stride_h + row_offset;
      const bool inside = ih >= 0 && ih < g.in_h;
      const int64_t lo = inside ? std::clamp(lo_all, r.ow0, ow1) : ow1;
      const int64_t hi = inside ? std::clamp(hi_all, lo, ow1) : ow1;
      if (lo > r.ow0 || hi < ow1) std::fill(out + r.ow0, out + ow1, 0.0f);
      if (lo < hi) {
        const float* src = xc + r.n * in_image + ih * g.in_w + offset;  // src[ow·stride]
        strided_run(src + lo * g.stride_w, g.stride_w, hi - lo, out + lo);
      }
    }
    if (tail < kPackedCols) {
      float* last = row + (panels - 1) * kc * kPackedCols;
      std::fill(last + tail, last + kPackedCols, 0.0f);
    }
    if (++kw == g.kernel_w) {
      kw = 0;
      if (++kh == g.kernel_h) {
        kh = 0;
        ++c;
      }
    }
  }
}

// Scratch of one task: the packed B block and, when k takes several passes, the running sums.
size_t packed_slot_bytes(const ConvPlan& plan) {
  const int64_t k = packed_depth(plan.geometry);
  const int64_t cols = round_up(plan.tile_pixels, kPackedCols);
  size_t bytes = aligned_bytes(static_cast<size_t>(plan.depth_block * cols) * sizeof(float));
  if (k > plan.depth_block) {
    bytes += aligned_bytes(static_cast<size_t>(plan.channel_block * cols) * sizeof(float));
  }
  return bytes;
}

void conv_packed(const ConvPlan& plan, const float* x, const float* w, const float* prepared,
                 const float* bias, float* y, std::byte* workspace, const ConvEpilogue& e) {
  const ConvGeometry& g = plan.geometry;
  const int64_t k = packed_depth(g);
  const int64_t m = g.out_channels;
  const int64_t pixels = g.out_h * g.out_w;
  const int64_t out_image = m * pixels;
  const int64_t total = g.batch * pixels;
  const float* a = prepared;
  if (!a) {
    float* packed = reinterpret_cast<float*>(workspace);
    pack_rows(w, k, m, k, packed);
    a = packed;
    workspace += aligned_bytes(packed_rows_floats(m, k) * sizeof(float));
  }
  const PackedSource source = packed_source(g);
  SourcePlanes sp;
  if (source == PackedSource::kInput) {
    sp.base = x;
    sp.channel = g.in_h * g.in_w;
    sp.image = g.in_channels * sp.channel;
    sp.rows = g.in_h;
    sp.pitch = g.in_w;
  } else if (source == PackedSource::kPhases) {
    sp = phase_planes_of(g);
    float* planes = reinterpret_cast<float*>(workspace);
    sp.base = planes;
    workspace += phase_plane_bytes(plan);
    const int64_t in_plane = g.in_h * g.in_w;
    parallel_for(g.batch * g.in_channels, 4, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        build_phase_planes(g, sp, x + i * in_plane, planes + i * sp.channel);
      }
    });
  }
  const bool finish = !is_identity(e);
  const int64_t ldp = round_up(plan.tile_pixels, kPackedCols);  // running sums' row pitch
  const int64_t tasks = plan.pixel_tiles * plan.channel_blocks;
  parallel_tasks_with_scratch(
      tasks, plan.slots, packed_slot_bytes(plan), workspace, [&](int64_t t, std::byte* scratch) {
        const int64_t tile = t / plan.channel_blocks;
        const int64_t block = t % plan.channel_blocks;
        const int64_t j0 = tile * plan.tile_pixels;
        const int64_t nt = std::min(plan.tile_pixels, total - j0);
        const int64_t m0 = block * plan.channel_block;
        const int64_t mrows = std::min(plan.channel_block, m - m0);
        const int64_t col_panels = ceil_div(nt, kPackedCols);
        const int64_t row_panels = ceil_div(mrows, kPackedRows);
        float* b = reinterpret_cast<float*>(scratch);
        float* sums = reinterpret_cast<float*>(
            scratch + aligned_bytes(static_cast<size_t>(plan.depth_block * ldp) * sizeof(float)));
        for (int64_t k0 = 0; k0 < k; k0 += plan.depth_block) {
          const int64_t kc = std::min(plan.depth_block, k - k0);
          const bool first = k0 == 0;
          const bool last = k0 + kc == k;
          if (source == PackedSource::kGather) {
            pack_gathered(g, x, k0, kc, j0, nt, b);
          } else {
            pack_from_planes(g, sp, k0, kc, j0, nt, b);
          }
          for (int64_t rp = 0; rp < row_panels; ++rp) {
            const int64_t r0 = m0 + rp * kPackedRows;  // first output channel of the panel
            const int64_t rows = std::min(kPackedRows, m0 + mrows - r0);
            const float* ap = a + (r0 / kPackedRows) * k * kPackedRows + k0 * kPackedRows;
            for (int64_t cp = 0; cp < col_panels; ++cp) {
              const int64_t cols = std::min(kPackedCols, nt - cp * kPackedCols);
              const float* bp = b + cp * kc * kPackedCols;
              float* sp_tile = sums + (rp * kPackedRows) * ldp + cp * kPackedCols;
              const float* c_in = first ? nullptr : sp_tile;
              if (!last) {
                packed_gemm_tile(kc, ap, bp, kPackedCols, rows, cols, c_in, ldp, sp_tile, ldp,
                                 nullptr);
                continue;
              }
              const int64_t jj = j0 + cp * kPackedCols;
              const int64_t n = jj / pixels;
              const int64_t p = jj % pixels;
              TileEpilogue te;
              te.bias = bias ? bias + r0 : nullptr;
              te.finish = finish;
              te.scale = e.scale ? e.scale + r0 : nullptr;
              te.shift = e.shift ? e.shift + r0 : nullptr;
              te.ld_residual = pixels;
              te.lo = e.clamp_min;
              te.hi = e.clamp_max;
              if (p + cols <= pixels) {
                const int64_t at = n * out_image + r0 * pixels + p;
                te.residual = e.residual ? e.residual + at : nullptr;
                packed_gemm_tile(kc, ap, bp, kPackedCols, rows, cols, c_in, ldp, y + at, pixels,
                                 &te);
                continue;
              }
              // The tile spans images: sums to a local tile, then scattered per image.
              alignas(64) float tile_out[kPackedRows * kPackedCols];
              packed_gemm_tile(kc, ap, bp, kPackedCols, rows, cols, c_in, ldp, tile_out,
                               kPackedCols, nullptr);
              for (int64_t j = 0; j < cols;) {
                const int64_t nj = (jj + j) / pixels;
                const int64_t pj = (jj + j) % pixels;
                const int64_t len = std::min(cols - j, pixels - pj);
                const int64_t at = nj * out_image + r0 * pixels + pj;
                te.residual = e.residual ? e.residual + at : nullptr;
                store_tile_with_epilogue(tile_out + j, kPackedCols, rows, len, y + at, pixels, te);
                j += len;
              }
            }
          }
        }
      });
}

}  // namespace

ConvPlan plan_conv(const ConvGeometry& geometry, int threads, const ConvPlanOptions& options) {
  ConvPlan plan;
  const ConvGeometry& g = geometry;
  plan.geometry = g;
  plan.slots = std::max(threads, 1);
  const int64_t in_per_group = g.in_channels / g.group;
  if (in_per_group == 1 && g.group > 1) {
    plan.algorithm = ConvAlgorithm::kDepthwise;
    return plan;
  }
  const bool pointwise = g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 &&
                         g.pad_top == 0 && g.pad_left == 0 && g.out_h == g.in_h &&
                         g.out_w == g.in_w;
  const bool winograd_shape = g.group == 1 && g.kernel_h == 3 && g.kernel_w == 3 &&
                              g.stride_h == 1 && g.stride_w == 1 && g.dilation_h == 1 &&
                              g.dilation_w == 1 && g.in_channels >= kWinogradMinChannels &&
                              g.out_channels >= kWinogradMinChannels;
  const auto tiles_for = [&](int tile) {
    return winograd_tiles_h(g, tile) * winograd_tiles_w(g, tile);
  };
  const bool wide =
      g.in_channels >= kWinogradWideChannels && g.out_channels >= kWinogradWideChannels;
  const int64_t min_tiles = wide ? kWinogradWideMinTiles : kWinogradMinTiles;
  if (winograd_shape && tiles_for(kWinogradTile) >= min_tiles) {
    plan.algorithm = ConvAlgorithm::kWinograd;
    const int64_t per_tile =
        winograd_points(kWinogradTile) * (g.in_channels + g.out_channels) * int64_t{sizeof(float)};
    const int64_t max_block =
        std::clamp<int64_t>(kWinogradBlockBytes / per_tile, 16, kWinogradBlockTiles);
    std::tie(plan.tile_pixels, plan.pixel_tiles) =
        split_evenly(tiles_for(kWinogradTile), max_block, 16);
    plan.channel_block = g.out_channels;
    plan.channel_blocks = 1;
    plan.packed = options.gemm != ConvGemm::kBlas && packed_gemm_available();
    if (plan.packed && plan.pixel_tiles == 1) plan.image_group = winograd_image_group(plan);
    return plan;
  }
  plan.algorithm = pointwise ? ConvAlgorithm::kDirectGemm : ConvAlgorithm::kIm2colGemm;
  const int64_t k = in_per_group * g.kernel_h * g.kernel_w;
  const int64_t pixels = g.out_h * g.out_w;
  const bool pays = g.out_channels >= kPackedMinChannels && k >= kPackedMinDepth &&
                    !(g.out_channels < kPackedNarrowChannels && pixels < kPackedSmallPlanePixels);
  const bool packed =
      options.gemm == ConvGemm::kPacked || (options.gemm == ConvGemm::kAuto && pays);
  if (packed && packed_gemm_available() && g.group == 1) {
    plan.packed = true;
    plan.depth_block = split_evenly(k, kPackedDepthBlock, 1).first;
    // Narrower tiles (down to kPackedMinTileColumns) before channel blocks: every channel block
    // packs its own copy of the input columns, so channels are split only as far as it takes
    // to give each thread several tasks.
    const int64_t total = g.batch * pixels;
    const int64_t tasks_wanted = kPackedTasksPerThread * plan.slots;
    const int64_t tile_limit = std::clamp(round_up(ceil_div(total, tasks_wanted), kPackedCols),
                                          kPackedMinTileColumns, kPackedTileColumns);
    std::tie(plan.tile_pixels, plan.pixel_tiles) = split_evenly(total, tile_limit, kPackedCols);
    const int64_t panels = ceil_div(g.out_channels, kPackedRows);
    const int64_t wanted = ceil_div(tasks_wanted, plan.pixel_tiles);
    const int64_t blocks = std::clamp<int64_t>(std::max(wanted, ceil_div(panels, kPackedMaxPanels)),
                                               1, std::max<int64_t>(1, panels / kPackedMinPanels));
    int64_t per_block;
    std::tie(per_block, plan.channel_blocks) = split_evenly(panels, ceil_div(panels, blocks), 1);
    plan.channel_block = per_block * kPackedRows;
    return plan;
  }
  const int64_t max_tile =
      std::max(kMinTilePixels, kIm2colTileBytes / std::max<int64_t>(1, k * int64_t{sizeof(float)}));
  std::tie(plan.tile_pixels, plan.pixel_tiles) = split_evenly(pixels, max_tile, 16);
  std::tie(plan.channel_block, plan.channel_blocks) =
      split_evenly(g.out_channels / g.group,
                   plan.algorithm == ConvAlgorithm::kIm2colGemm &&
                           g.out_channels / g.group >= kIm2colChannelBlock
                       ? kIm2colChannelBlock
                       : kChannelBlock,
                   16);
  return plan;
}

size_t conv_prepared_weight_floats(const ConvPlan& plan) {
  if (plan.algorithm == ConvAlgorithm::kWinograd && plan.packed) {
    return winograd_packed_floats(plan.geometry);
  }
  if (plan.packed)
    return packed_rows_floats(plan.geometry.out_channels, packed_depth(plan.geometry));
  return plan.algorithm == ConvAlgorithm::kWinograd
             ? winograd_weight_floats(plan.geometry, kWinogradTile)
             : 0;
}

void prepare_conv_weights(const ConvPlan& plan, const float* w, float* prepared) {
  const ConvGeometry& g = plan.geometry;
  if (plan.algorithm == ConvAlgorithm::kWinograd && plan.packed) {
    std::vector<float> transformed(winograd_weight_floats(g, kWinogradTile));
    winograd_weights<kWinogradTile>(w, g.out_channels, g.in_channels, transformed.data());
    pack_winograd_weights(g, transformed.data(), prepared);
    return;
  }
  if (plan.packed) {
    const int64_t k = packed_depth(g);
    pack_rows(w, k, g.out_channels, k, prepared);
    return;
  }
  if (plan.algorithm == ConvAlgorithm::kWinograd) {
    winograd_weights<kWinogradTile>(w, g.out_channels, g.in_channels, prepared);
  }
}

size_t conv_workspace_bytes(const ConvPlan& plan, ConvWeightForm form) {
  if (plan.packed && plan.algorithm != ConvAlgorithm::kWinograd) {
    const size_t packed = form == ConvWeightForm::kRaw
                              ? aligned_bytes(conv_prepared_weight_floats(plan) * sizeof(float))
                              : 0;
    return packed + phase_plane_bytes(plan) +
           static_cast<size_t>(plan.slots) * packed_slot_bytes(plan);
  }
  if (plan.algorithm == ConvAlgorithm::kWinograd) {
    size_t transformed =
        form == ConvWeightForm::kRaw
            ? aligned_bytes(winograd_weight_floats(plan.geometry, kWinogradTile) * sizeof(float))
            : 0;
    if (form == ConvWeightForm::kRaw && plan.packed) {
      transformed += aligned_bytes(winograd_packed_floats(plan.geometry) * sizeof(float));
    }
    return transformed + static_cast<size_t>(plan.slots) * winograd_slot_bytes(plan);
  }
  if (plan.algorithm != ConvAlgorithm::kIm2colGemm) return 0;
  const ConvGeometry& g = plan.geometry;
  const int64_t k = g.in_channels / g.group * g.kernel_h * g.kernel_w;
  return static_cast<size_t>(plan.slots) *
         aligned_bytes(static_cast<size_t>(k * plan.tile_pixels) * sizeof(float));
}

void conv2d(const ConvPlan& plan, const float* x, const float* w, const float* bias, float* y,
            std::byte* workspace, const ConvEpilogue& epilogue, const float* prepared_weights) {
  const ConvGeometry& g = plan.geometry;
  if (g.batch * g.out_channels * g.out_h * g.out_w == 0) return;
  switch (plan.algorithm) {
    case ConvAlgorithm::kDepthwise:
      conv_depthwise(plan, x, w, bias, y, epilogue);
      break;
    case ConvAlgorithm::kWinograd:
      conv_winograd<kWinogradTile>(plan, x, w, prepared_weights, bias, y, workspace, epilogue);
      break;
    case ConvAlgorithm::kDirectGemm:
    case ConvAlgorithm::kIm2colGemm:
      if (plan.packed) {
        conv_packed(plan, x, w, prepared_weights, bias, y, workspace, epilogue);
        break;
      }
      conv_gemm(plan, x, w, bias, y, workspace, epilogue);
      break;
  }
}

}  // namespace qforge::kernels
