// The packed GEMM's row packing and its micro-kernel: with AVX-512 a tile of up to 14 rows by two
// 16-float vectors of columns, 28 accumulators kept in registers over the whole pass over k; with
// AVX2 and FMA the same tile in blocks of up to 6 rows by two 8-float vectors.
#include "kernels/packed_gemm.h"

#include <algorithm>
#include <cmath>

#include "kernels/parallel.h"

#if QFORGE_PACKED_GEMM
#include <immintrin.h>
#endif

namespace qforge::kernels {

size_t packed_rows_floats(int64_t m, int64_t k) {
  const int64_t panels = (m + kPackedRows - 1) / kPackedRows;
  return static_cast<size_t>(panels * k * kPackedRows);
}

namespace {

void pack_panels(const float* a, int64_t lda, int64_t m, int64_t k, float* packed, int64_t first,
                 int64_t last) {
  for (int64_t p = first; p < last; ++p) {
    float* dst = packed + p * k * kPackedRows;
    const int64_t rows = std::min(kPackedRows, m - p * kPackedRows);
    for (int64_t kk = 0; kk < k; ++kk) {
      for (int64_t r = 0; r < rows; ++r)
        dst[kk * kPackedRows + r] = a[(p * kPackedRows + r) * lda + kk];
      for (int64_t r = rows; r < kPackedRows; ++r) dst[kk * kPackedRows + r] = 0.0f;
    }
  }
}

}  // namespace

void pack_rows(const float* a, int64_t lda, int64_t m, int64_t k, float* packed) {
  pack_panels(a, lda, m, k, packed, 0, (m + kPackedRows - 1) / kPackedRows);
}

void pack_rows_parallel(const float* a, int64_t lda, int64_t m, int64_t k, float* packed) {
  const int64_t panels = (m + kPackedRows - 1) / kPackedRows;
  // About 64 KiB of packed floats per task.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k * kPackedRows));
  parallel_for(panels, grain,
               [&](int64_t begin, int64_t end) { pack_panels(a, lda, m, k, packed, begin, end); });
}

float apply_tile_epilogue(const TileEpilogue& e, int64_t r, int64_t j, float acc) {
  float v = e.bias ? acc + e.bias[r] : acc;
  if (!e.finish) return v;
  const float scale = e.scale ? e.scale[r] : 1.0f;
  const float shift = e.shift ? e.shift[r] : 0.0f;
  v = std::fma(v, scale, shift);
  if (e.residual) v = v + e.residual[r * e.ld_residual + j];
  return v < e.lo ? e.lo : (v > e.hi ? e.hi : v);
}

#if QFORGE_PACKED_GEMM
namespace {

// The vector operations the micro-kernel is written in. Both forms keep one fused multiply-add
// chain per output, so a tile has the same bits on either.
#ifdef __AVX512F__
struct Simd {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int64_t kLanes = 16;
  // The first n lanes (n may be out of [0, 16]).
  static Mask first(int64_t n) {
    return static_cast<Mask>(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1u);
  }
  static V zero() { return _mm512_setzero_ps(); }
  static V broadcast(float x) { return _mm512_set1_ps(x); }
  static V load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, Mask m, V x) { _mm512_mask_storeu_ps(p, m, x); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  // max(lo, x) and min(hi, x) with x second, so that NaN passes through. The merge-masked forms
  // avoid GCC 12's false uninitialised warning on the plain ones.
  static V max(V lo, V x) { return _mm512_mask_max_ps(x, 0xFFFF, lo, x); }
  static V min(V hi, V x) { return _mm512_mask_min_ps(x, 0xFFFF, hi, x); }
};
#else
struct Simd {
  using V = __m256;
  struct Mask {
    int64_t lanes;  // clamped to [0, 8]
    __m256i bits;
  };
  static constexpr int64_t kLanes = 8;
  static Mask first(int64_t n) {
    const int64_t lanes = std::clamp<int64_t>(n, 0, 8);
    const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return {lanes, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(lanes)), index)};
  }
  static V zero() { return _mm256_setzero_ps(); }
  static V broadcast(float x) { return _mm256_set1_ps(x); }
  // Lanes outside the mask are neither read nor written.
  static V load(const Mask& m, const float* p) {
    return m.lanes == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m.bits);
  }
  static void store(float* p, const Mask& m, V x) {
    if (m.lanes == 8) {
      _mm256_storeu_ps(p, x);
    } else {
      _mm256_maskstore_ps(p, m.bits, x);
    }
  }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V max(V lo, V x) { return _mm256_max_ps(lo, x); }
  static V min(V hi, V x) { return _mm256_min_ps(hi, x); }
};
#endif
using V = Simd::V;
using Mask = Simd::Mask;
constexpr int64_t kLanes = Simd::kLanes;

// TileEpilogue on kLanes sums of row r from column j (lanes outside `mask` unused).
inline V finish_vector(const TileEpilogue& e, int64_t r, int64_t j, const Mask& mask, V x) {
  if (e.bias) x = Simd::add(x, Simd::broadcast(e.bias[r]));
  if (!e.finish) return x;
  const V scale = Simd::broadcast(e.scale ? e.scale[r] : 1.0f);
  const V shift = Simd::broadcast(e.shift ? e.shift[r] : 0.0f);
  x = Simd::fma(x, scale, shift);
  if (e.residual) x = Simd::add(x, Simd::load(mask, e.residual + r * e.ld_residual + j));
  x = Simd::max(Simd::broadcast(e.lo), x);
  return Simd::min(Simd::broadcast(e.hi), x);
}

// The micro-tile asks for B's row this many steps of k ahead. Rows read in place (a
// convolution's input planes) lie a plane apart, one or two cache lines each, which the hardware
// does not fetch ahead of the loads; packed panels of weights streamed from memory (a Linear
// layer's, a classifier's at batch 8) it fetches too late. Where B is already in cache the
// request costs a load slot and measured neither faster nor slower.
constexpr int64_t kPrefetchRows = 16;

// R rows computed (of which `rows` are stored), NV vectors of columns. kAddAfter: the sums
// start from zero and c_in is added to them at the store (packed_gemm_tile_add).
template <int R, int NV, bool kAddAfter, int64_t kAStep>
void micro_tile(int64_t kc, const float* a, const float* b, int64_t ldb, int64_t rows, int64_t cols,
                const float* c_in, int64_t ldc_in, float* c_out, int64_t ldc_out,
                const TileEpilogue* e) {
  Mask mask[NV];
  for (int v = 0; v < NV; ++v) mask[v] = Simd::first(cols - kLanes * v);
  V acc[R][NV];
  if (c_in && !kAddAfter) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        acc[r][v] = r < rows ? Simd::load(mask[v], c_in + r * ldc_in + kLanes * v) : Simd::zero();
      }
    }
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = Simd::zero();
    }
  }
  if (e && e->residual) {
    // The residual and output rows are read and written once, after the loop over k: ask for
    // their lines now, so that they arrive while the tile is computed.
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      if (r >= rows) break;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        _mm_prefetch(reinterpret_cast<const char*>(e->residual + r * e->ld_residual + kLanes * v),
                     _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c_out + r * ldc_out + kLanes * v), _MM_HINT_T0);
      }
    }
  }
#pragma GCC unroll 4
  for (int64_t kk = 0; kk < kc; ++kk) {
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = Simd::load(mask[v], b + kk * ldb + kLanes * v);
    _mm_prefetch(reinterpret_cast<const char*>(b + (kk + kPrefetchRows) * ldb), _MM_HINT_T0);
    if (NV == 2) {
      _mm_prefetch(reinterpret_cast<const char*>(b + (kk + kPrefetchRows) * ldb + kLanes),
                   _MM_HINT_T0);
    }
    const float* ak = a + kk * kAStep;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V av = Simd::broadcast(ak[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = Simd::fma(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    if (r >= rows) break;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      V x = acc[r][v];
      if (e) {
        x = finish_vector(*e, r, kLanes * v, mask[v], x);
      } else if (kAddAfter && c_in) {
        x = Simd::add(Simd::load(mask[v], c_in + r * ldc_in + kLanes * v), x);
      }
      Simd::store(c_out + r * ldc_out + kLanes * v, mask[v], x);
    }
  }
}

// micro_tile with R rows computed and as many vectors of columns (one or two) as cols needs.
template <int R, bool kAddAfter, int64_t kAStep>
void row_block(int64_t kc, const float* a, const float* b, int64_t ldb, int64_t rows, int64_t cols,
               const float* c_in, int64_t ldc_in, float* c_out, int64_t ldc_out,
               const TileEpilogue* e) {
  if (cols > kLanes) {
    micro_tile<R, 2, kAddAfter, kAStep>(kc, a, b, ldb, rows, cols, c_in, ldc_in, c_out, ldc_out, e);
  } else {
    micro_tile<R, 1, kAddAfter, kAStep>(kc, a, b, ldb, rows, cols, c_in, ldc_in, c_out, ldc_out, e);
  }
}

#ifdef __AVX512F__
// The whole tile in registers: up to 14 rows by two vectors (28 accumulators of 32).
template <bool kAddAfter, int64_t kAStep = kPackedRows>
void dispatch_tile(int64_t kc, const float* a_panel, const float* b_panel, int64_t ldb,
                   int64_t rows, int64_t cols, const float* c_in, int64_t ldc_in, float* c_out,
                   int64_t ldc_out, const TileEpilogue* epilogue) {
  if (rows > 8) {
    row_block<14, kAddAfter, kAStep>(kc, a_panel, b_panel, ldb, rows, cols, c_in, ldc_in, c_out,
                                     ldc_out, epilogue);
  } else if (rows > 4) {
    row_block<8, kAddAfter, kAStep>(kc, a_panel, b_panel, ldb, rows, cols, c_in, ldc_in, c_out,
                                    ldc_out, epilogue);
  } else {
    row_block<4, kAddAfter, kAStep>(kc, a_panel, b_panel, ldb, rows, cols, c_in, ldc_in, c_out,
                                    ldc_out, epilogue);
  }
}
#else
// Sixteen 8-float registers hold a block of up to 6 rows by two vectors (12 accumulators), so
// the tile runs as such blocks: rows 6 + 4 + 4 of a full panel, columns 16 at a time. Every
// output is still one chain over k, so the bits are those of the whole-tile kernel.
template <bool kAddAfter, int64_t kAStep = kPackedRows>
void dispatch_tile(int64_t kc, const float* a_panel, const float* b_panel, int64_t ldb,
                   int64_t rows, int64_t cols, const float* c_in, int64_t ldc_in, float* c_out,
                   int64_t ldc_out, const TileEpilogue* epilogue) {
  for (int64_t j0 = 0; j0 < cols; j0 += 2 * kLanes) {
    const int64_t block_cols = std::min(2 * kLanes, cols - j0);
    // Taking 6 only while more than 8 rows are left keeps every block inside the 14-row panel.
    for (int64_t r0 = 0; r0 < rows;) {
      const int64_t block_rows = rows - r0 > 8 ? 6 : std::min<int64_t>(4, rows - r0);
      TileEpilogue shifted;
      if (epilogue) {
        shifted = *epilogue;
        if (shifted.bias) shifted.bias += r0;
        if (shifted.scale) shifted.scale += r0;
        if (shifted.shift) shifted.shift += r0;
        if (shifted.residual) shifted.residual += r0 * shifted.ld_residual + j0;
      }
      const TileEpilogue* e = epilogue ? &shifted : nullptr;
      const float* a = a_panel + r0;
      const float* b = b_panel + j0;
      const float* in = c_in ? c_in + r0 * ldc_in + j0 : nullptr;
      float* out = c_out + r0 * ldc_out + j0;
      if (block_rows == 6) {
        row_block<6, kAddAfter, kAStep>(kc, a, b, ldb, block_rows, block_cols, in, ldc_in, out,
                                        ldc_out, e);
      } else {
        row_block<4, kAddAfter, kAStep>(kc, a, b, ldb, block_rows, block_cols, in, ldc_in, out,
                                        ldc_out, e);
      }
      r0 += block_rows;
    }
  }
}
#endif

}  // namespace

void store_tile_with_epilogue(const float* sums, int64_t ld_sums, int64_t rows, int64_t cols,
                              float* out, int64_t ld_out, const TileEpilogue& epilogue) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; j += kLanes) {
      const Mask mask = Simd::first(cols - j);
      const V x = Simd::load(mask, sums + r * ld_sums + j);
      Simd::store(out + r * ld_out + j, mask, finish_vector(epilogue, r, j, mask, x));
    }
  }
}

void packed_gemm_tile(int64_t kc, const float* a_panel, const float* b_panel, int64_t ldb,
                      int64_t rows, int64_t cols, const float* c_in, int64_t ldc_in, float* c_out,
                      int64_t ldc_out, const TileEpilogue* epilogue) {
  dispatch_tile<false>(kc, a_panel, b_panel, ldb, rows, cols, c_in, ldc_in, c_out, ldc_out,
                       epilogue);
}

void packed_gemm_tile_interleaved(int64_t kc, const float* a_panel, const float* b_panel,
                                  int64_t ldb, int64_t rows, int64_t cols, const float* c_in,
                                  int64_t ldc_in, float* c_out, int64_t ldc_out) {
  dispatch_tile<false, kInterleavedPanels * kPackedRows>(kc, a_panel, b_panel, ldb, rows, cols,
                                                         c_in, ldc_in, c_out, ldc_out, nullptr);
}

void packed_gemm_tile_add(int64_t kc, const float* a_panel, const float* b_panel, int64_t ldb,
                          int64_t rows, int64_t cols, const float* c_in, int64_t ldc_in,
                          float* c_out, int64_t ldc_out) {
  dispatch_tile<true>(kc, a_panel, b_panel, ldb, rows, cols, c_in, ldc_in, c_out, ldc_out, nullptr);
}

#else

// Scalar form for builds without vector FMA (callers keep OpenBLAS there): the same chain of
// fused multiply-adds per output.
namespace {

void scalar_tile(int64_t kc, const float* a_panel, int64_t a_step, const float* b_panel,
                 int64_t ldb, int64_t rows, int64_t cols, const float* c_in, int64_t ldc_in,
                 float* c_out, int64_t ldc_out, const TileEpilogue* epilogue) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) {
      float acc = c_in ? c_in[r * ldc_in + j] : 0.0f;
      for (int64_t kk = 0; kk < kc; ++kk) {
        acc = std::fma(a_panel[kk * a_step + r], b_panel[kk * ldb + j], acc);
      }
      c_out[r * ldc_out + j] = epilogue ? apply_tile_epilogue(*epilogue, r, j, acc) : acc;
    }
  }
}

}  // namespace

void packed_gemm_tile(int64_t kc, const float* a_panel, const float* b_panel, int64_t ldb,
                      int64_t rows, int64_t cols, const float* c_in, int64_t ldc_in, float* c_out,
                      int64_t ldc_out, const TileEpilogue* epilogue) {
  scalar_tile(kc, a_panel, kPackedRows, b_panel, ldb, rows, cols, c_in, ldc_in, c_out, ldc_out,
              epilogue);
}

void packed_gemm_tile_interleaved(int64_t kc, const float* a_panel, const float* b_panel,
                                  int64_t ldb, int64_t rows, int64_t cols, const float* c_in,
                                  int64_t ldc_in, float* c_out, int64_t ldc_out) {
  scalar_tile(kc, a_panel, kInterleavedPanels * kPackedRows, b_panel, ldb, rows, cols, c_in, ldc_in,
              c_out, ldc_out, nullptr);
}

void packed_gemm_tile_add(int64_t kc, const float* a_panel, const float* b_panel, int64_t ldb,
                          int64_t rows, int64_t cols, const float* c_in, int64_t ldc_in,
                          float* c_out, int64_t ldc_out) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) {
      float acc = 0.0f;
      for (int64_t kk = 0; kk < kc; ++kk) {
        acc = std::fma(a_panel[kk * kPackedRows + r], b_panel[kk * ldb + j], acc);
      }
      c_out[r * ldc_out + j] = c_in ? c_in[r * ldc_in + j] + acc : acc;
    }
  }
}

void store_tile_with_epilogue(const float* sums, int64_t ld_sums, int64_t rows, int64_t cols,
                              float* out, int64_t ld_out, const TileEpilogue& epilogue) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) {
      out[r * ld_out + j] = apply_tile_epilogue(epilogue, r, j, sums[r * ld_sums + j]);
    }
  }
}

#endif

}  // namespace qforge::kernels
