#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "kernels/conv_internal.h"
#include "kernels/gemm.h"
#include "kernels/packed_gemm.h"
#include "kernels/parallel.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace qforge::kernels::conv_detail {
namespace {

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

// G g G^T of 16 filters at a time, f + i·9 for i in [0, 16) (consecutive filters of a row of
// w), in double as winograd_filter<2> computes it, the same operations in the same order (each
// lane is that function's scalar arithmetic), so the bits are its bits; point p of filter i goes
// to u[p·16 + i].
void winograd2_filters_16(const float* f, float* u) {
  const __m256i taps = _mm256_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63);
  const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  const __m512d half = _mm512_set1_pd(0.5);
  // Per half of the 16 lanes (8 doubles each). The masked forms with zero sources: GCC 12 warns
  // that the plain ones' undefined sources may be used.
  __m512d g[2][9];
  for (int h = 0; h < 2; ++h) {
    for (int t = 0; t < 9; ++t) {
      const __m256 v = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), f + 72 * h + t, taps, all, 4);
      g[h][t] = _mm512_maskz_cvtps_pd(0xFF, v);
    }
  }
  // Winograd<2>::filter of (a, b, c): a, ½(a + b + c), ½(a − b + c), c.
  auto filter = [&](__m512d a, __m512d b, __m512d c, __m512d(&out)[4]) {
    out[0] = a;
    out[1] = _mm512_mul_pd(half, _mm512_add_pd(_mm512_add_pd(a, b), c));
    out[2] = _mm512_mul_pd(half, _mm512_add_pd(_mm512_sub_pd(a, b), c));
    out[3] = c;
  };
  for (int h = 0; h < 2; ++h) {
    __m512d gg[4][3];  // G g
    for (int j = 0; j < 3; ++j) {
      __m512d col[4];
      filter(g[h][j], g[h][3 + j], g[h][6 + j], col);
      for (int i = 0; i < 4; ++i) gg[i][j] = col[i];
    }
    for (int i = 0; i < 4; ++i) {
      __m512d row[4];
      filter(gg[i][0], gg[i][1], gg[i][2], row);
      for (int j = 0; j < 4; ++j) {
        _mm256_storeu_ps(u + (i * 4 + j) * 16 + 8 * h, _mm512_maskz_cvtpd_ps(0xFF, row[j]));
      }
    }
  }
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
      const int64_t col0 = kTile * tw0;
      activate_runs(e, ym + oh * g.out_w + col0, rows, std::min(g.out_w, kTile * tw1) - col0,
                    g.out_w);
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

// The transformed filters straight into the packed GEMM's panels, point p's U_p [out_c × in_c]
// at packed + p·packed_rows_floats(out_c, in_c) as pack_rows lays it out: a task per panel of
// output channels, in channel by in channel, so each point's writes run contiguously.
void pack_winograd_weights(const ConvGeometry& g, const float* w, float* packed) {
  constexpr int64_t kPoints = winograd_points(kWinogradTile);
  const int64_t out_c = g.out_channels;
  const int64_t in_c = g.in_channels;
  const size_t point_floats = packed_rows_floats(out_c, in_c);
  const int64_t panels = ceil_div(out_c, kPackedRows);
  parallel_for(panels, 1, [&](int64_t begin, int64_t end) {
    float u[kPoints * 16];
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t rows = std::min(kPackedRows, out_c - panel * kPackedRows);
      float* dst = packed + panel * in_c * kPackedRows;
      for (int64_t r = 0; r < kPackedRows; ++r) {
        const float* filters = w + (panel * kPackedRows + r) * in_c * 9;
        int64_t c = 0;
        if (r >= rows) {  // past out_c: zero rows
          for (; c < in_c; ++c) {
            for (int64_t p = 0; p < kPoints; ++p) dst[p * point_floats + c * kPackedRows + r] = 0;
          }
        }
#ifdef __AVX512F__
        for (; c + 16 <= in_c; c += 16) {
          winograd2_filters_16(filters + c * 9, u);
          for (int64_t p = 0; p < kPoints; ++p) {
            float* d = dst + p * point_floats + c * kPackedRows + r;
            for (int64_t i = 0; i < 16; ++i) d[i * kPackedRows] = u[p * 16 + i];
          }
        }
#endif
        for (; c < in_c; ++c) {
          winograd_filter<kWinogradTile>(filters + c * 9, u, 1);
          for (int64_t p = 0; p < kPoints; ++p) dst[p * point_floats + c * kPackedRows + r] = u[p];
        }
      }
    }
  });
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
void winograd_run(const ConvPlan& plan, const float* x, const float* w, const float* prepared,
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
    if (plan.packed) {
      pack_winograd_weights(g, w, transformed);
      workspace += aligned_bytes(winograd_packed_floats(g) * sizeof(float));
    } else {
      winograd_weights<kTile>(w, out_c, in_c, transformed);
      workspace += aligned_bytes(winograd_weight_floats(g, kTile) * sizeof(float));
    }
    u = transformed;
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

}  // namespace

bool winograd_applies(const ConvGeometry& g) {
  const bool shape = g.group == 1 && g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 1 &&
                     g.stride_w == 1 && g.dilation_h == 1 && g.dilation_w == 1 &&
                     g.in_channels >= kWinogradMinChannels &&
                     g.out_channels >= kWinogradMinChannels;
  if (!shape) return false;
  const bool wide =
      g.in_channels >= kWinogradWideChannels && g.out_channels >= kWinogradWideChannels;
  const int64_t min_tiles = wide ? kWinogradWideMinTiles : kWinogradMinTiles;
  return winograd_tiles_h(g, kWinogradTile) * winograd_tiles_w(g, kWinogradTile) >= min_tiles;
}

void plan_winograd(ConvPlan& plan, const ConvPlanOptions& options) {
  const ConvGeometry& g = plan.geometry;
  plan.algorithm = ConvAlgorithm::kWinograd;
  const int64_t tiles = winograd_tiles_h(g, kWinogradTile) * winograd_tiles_w(g, kWinogradTile);
  const int64_t per_tile =
      winograd_points(kWinogradTile) * (g.in_channels + g.out_channels) * int64_t{sizeof(float)};
  const int64_t max_block =
      std::clamp<int64_t>(kWinogradBlockBytes / per_tile, 16, kWinogradBlockTiles);
  std::tie(plan.tile_pixels, plan.pixel_tiles) = split_evenly(tiles, max_block, 16);
  plan.channel_block = g.out_channels;
  plan.channel_blocks = 1;
  plan.packed = options.gemm != ConvGemm::kBlas && packed_gemm_available();
  if (plan.packed && plan.pixel_tiles == 1) plan.image_group = winograd_image_group(plan);
}

size_t winograd_prepared_floats(const ConvPlan& plan) {
  return plan.packed ? winograd_packed_floats(plan.geometry)
                     : winograd_weight_floats(plan.geometry, kWinogradTile);
}

void prepare_winograd_weights(const ConvPlan& plan, const float* w, float* prepared) {
  const ConvGeometry& g = plan.geometry;
  if (plan.packed) {
    pack_winograd_weights(g, w, prepared);
    return;
  }
  winograd_weights<kWinogradTile>(w, g.out_channels, g.in_channels, prepared);
}

size_t winograd_workspace_bytes(const ConvPlan& plan, ConvWeightForm form) {
  size_t transformed = 0;
  if (form == ConvWeightForm::kRaw) {
    transformed =
        aligned_bytes((plan.packed ? winograd_packed_floats(plan.geometry)
                                   : winograd_weight_floats(plan.geometry, kWinogradTile)) *
                      sizeof(float));
  }
  return transformed + static_cast<size_t>(plan.slots) * winograd_slot_bytes(plan);
}

void conv_winograd(const ConvPlan& plan, const float* x, const float* w, const float* prepared,
                   const float* bias, float* y, std::byte* workspace, const ConvEpilogue& e) {
  winograd_run<kWinogradTile>(plan, x, w, prepared, bias, y, workspace, e);
}

}  // namespace qforge::kernels::conv_detail
