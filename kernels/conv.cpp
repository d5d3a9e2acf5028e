// Convolution: GEMMs with OpenBLAS per (image, group, channel block, pixel tile) on the input
// itself or on an im2col tile in per-thread scratch, Winograd F(2×2, 3×3) per (image, block of
// tiles), and a depthwise kernel that runs the common K×K kernels on a zero-padded, stride-phased
// copy of each plane (any other depthwise shape along output rows).
#include "kernels/conv.h"

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/parallel.h"

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
                                               (g.in_channels + g.out_channels) * plan.tile_pixels +
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

// The input transform for tile columns [0, count) of one tile row whose patches lie inside
// rows[] (a rows, column 0 of tile column 0); v at tile column 0 of plane 0. next[i] is
// rows[i] + kTile, passed separately so that each stream reads a non-overlapping group per
// tile and the loop vectorises across tiles.
template <int kTile>
void winograd_input_run(const float* const* rows, const float* const* next, int64_t count, float* v,
                        int64_t stride) {
  constexpr int kA = Winograd<kTile>::kAlpha;
  // The a² output streams are stride apart and never overlap within one run.
#pragma GCC ivdep
  for (int64_t tw = 0; tw < count; ++tw) {
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
template <int kTile>
void winograd_input(const ConvGeometry& g, const float* x, int64_t t0, int64_t nt, float* v,
                    float* row_buffer) {
  constexpr int kA = Winograd<kTile>::kAlpha;
  const int64_t plane = g.in_h * g.in_w;
  const int64_t tiles_w = winograd_tiles_w(g, kTile);
  const int64_t stride = g.in_channels * nt;  // between the a² V planes
  // Tile columns whose a input columns all lie inside the input: [first_inside, last_inside).
  const int64_t first_inside = ceil_div(g.pad_left, kTile);
  const int64_t last_inside =
      g.in_w - kA + g.pad_left >= 0 ? (g.in_w - kA + g.pad_left) / kTile + 1 : 0;
  const float* rows[kA];
  const float* next[kA];
  for (int64_t c = 0; c < g.in_channels; ++c) {
    const float* xc = x + c * plane;
    float* vc = v + c * nt;
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
// out[i] at the first output column of output row i.
template <int kTile>
void winograd_output_run(const float* m, int64_t stride, int64_t count, float bias,
                         float* const* out) {
  constexpr int kA = Winograd<kTile>::kAlpha;
#pragma GCC ivdep
  for (int64_t tw = 0; tw < count; ++tw) {
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
}

// Y = A^T M A + bias for the tiles t0 .. t0+nt of one image, then the epilogue.
template <int kTile>
void winograd_output(const ConvGeometry& g, const float* mx, int64_t t0, int64_t nt,
                     const float* bias, const ConvEpilogue& e, float* y, const float* residual) {
  constexpr int kA = Winograd<kTile>::kAlpha;
  const int64_t plane = g.out_h * g.out_w;
  const int64_t tiles_w = winograd_tiles_w(g, kTile);
  const int64_t stride = g.out_channels * nt;
  const bool finish = !is_identity(e);
  const int64_t full_w = g.out_w / kTile;  // tile columns lying wholly inside the output
  float* out[kTile];
  for (int64_t m = 0; m < g.out_channels; ++m) {
    const float* mm = mx + m * nt;
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
        for (int i = 0; i < kTile; ++i) out[i] = ym + (oh + i) * g.out_w + kTile * tw0;
        winograd_output_run<kTile>(mrow + tw0, stride, run_end - tw0, b, out);
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
      if (finish) {
        const int64_t col0 = kTile * tw0;
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

// prepared: the transformed filters, or null to transform them into the workspace first.
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
  }
  const int64_t in_image = in_c * g.in_h * g.in_w;
  const int64_t out_image = out_c * g.out_h * g.out_w;
  parallel_tasks_with_scratch(
      g.batch * blocks, plan.slots, winograd_slot_bytes(plan), workspace,
      [&](int64_t task, std::byte* scratch) {
        const int64_t n = task / blocks;
        const int64_t t0 = (task % blocks) * block;
        const int64_t nt = std::min(block, tiles - t0);
        float* v = reinterpret_cast<float*>(scratch);
        float* mx = v + kPoints * in_c * nt;
        float* row_buffer = mx + kPoints * out_c * nt;
        winograd_input<kTile>(g, x + n * in_image, t0, nt, v, row_buffer);
        for (int64_t p = 0; p < kPoints; ++p) {
          sgemm(Transpose::kNo, Transpose::kNo, out_c, nt, in_c, 1.0f, u + p * out_c * in_c, in_c,
                v + p * in_c * nt, nt, 0.0f, mx + p * out_c * nt, nt);
        }
        winograd_output<kTile>(g, mx, t0, nt, bias, e, y + n * out_image,
                               e.residual ? e.residual + n * out_image : nullptr);
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

}  // namespace

ConvPlan plan_conv(const ConvGeometry& geometry, int threads) {
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
    return plan;
  }
  plan.algorithm = pointwise ? ConvAlgorithm::kDirectGemm : ConvAlgorithm::kIm2colGemm;
  const int64_t k = in_per_group * g.kernel_h * g.kernel_w;
  const int64_t pixels = g.out_h * g.out_w;
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
  return plan.algorithm == ConvAlgorithm::kWinograd
             ? winograd_weight_floats(plan.geometry, kWinogradTile)
             : 0;
}

void prepare_conv_weights(const ConvPlan& plan, const float* w, float* prepared) {
  const ConvGeometry& g = plan.geometry;
  if (plan.algorithm == ConvAlgorithm::kWinograd) {
    winograd_weights<kWinogradTile>(w, g.out_channels, g.in_channels, prepared);
  }
}

size_t conv_workspace_bytes(const ConvPlan& plan, ConvWeightForm form) {
  if (plan.algorithm == ConvAlgorithm::kWinograd) {
    const size_t transformed =
        form == ConvWeightForm::kRaw
            ? aligned_bytes(winograd_weight_floats(plan.geometry, kWinogradTile) * sizeof(float))
            : 0;
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
      conv_gemm(plan, x, w, bias, y, workspace, epilogue);
      break;
  }
}

}  // namespace qforge::kernels
