// The packed GEMM's row packing and its AVX-512 micro-kernel: a tile of up to 14 rows by two
// 16-float vectors of columns, 28 accumulators kept in registers over the whole pass over k.
#include "kernels/packed_gemm.h"

#include <algorithm>
#include <cmath>

#include "kernels/parallel.h"

#ifdef __AVX512F__
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

#ifdef __AVX512F__
namespace {

constexpr __mmask16 kAll = 0xFFFF;

__mmask16 column_mask(int64_t cols, int v) {
  const int64_t left = cols - 16 * v;
  if (left >= 16) return static_cast<__mmask16>(0xFFFF);
  if (left <= 0) return 0;
  return static_cast<__mmask16>((1u << left) - 1u);
}

// TileEpilogue on 16 sums of row r from column j (lanes outside `mask` unused).
inline __m512 finish_vector(const TileEpilogue& e, int64_t r, int64_t j, __mmask16 mask, __m512 x) {
  if (e.bias) x = _mm512_add_ps(x, _mm512_set1_ps(e.bias[r]));
  if (!e.finish) return x;
  const __m512 scale = _mm512_set1_ps(e.scale ? e.scale[r] : 1.0f);
  const __m512 shift = _mm512_set1_ps(e.shift ? e.shift[r] : 0.0f);
  x = _mm512_fmadd_ps(x, scale, shift);
  if (e.residual) {
    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, e.residual + r * e.ld_residual + j));
  }
  // max(lo, x) then min(hi, x): NaN passes through (the second operand wins). The merge-masked
  // forms avoid GCC 12's false uninitialised warning on the plain ones.
  x = _mm512_mask_max_ps(x, kAll, _mm512_set1_ps(e.lo), x);
  return _mm512_mask_min_ps(x, kAll, _mm512_set1_ps(e.hi), x);
}

// R rows computed (of which `rows` are stored), NV vectors of columns. kAddAfter: the sums
// start from zero and c_in is added to them at the store (packed_gemm_tile_add).
template <int R, int NV, bool kAddAfter, int64_t kAStep>
void micro_tile(int64_t kc, const float* a, const float* b, int64_t ldb, int64_t rows, int64_t cols,
                const float* c_in, int64_t ldc_in, float* c_out, int64_t ldc_out,
                const TileEpilogue* e) {
  __mmask16 mask[NV];
  for (int v = 0; v < NV; ++v) mask[v] = column_mask(cols, v);
  __m512 acc[R][NV];
  if (c_in && !kAddAfter) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        acc[r][v] = r < rows ? _mm512_maskz_loadu_ps(mask[v], c_in + r * ldc_in + 16 * v)
                             : _mm512_setzero_ps();
      }
    }
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
    }
  }
#pragma GCC unroll 4
  for (int64_t kk = 0; kk < kc; ++kk) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_maskz_loadu_ps(mask[v], b + kk * ldb + 16 * v);
    const float* ak = a + kk * kAStep;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(ak[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  if (!e) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      if (r >= rows) break;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        __m512 x = acc[r][v];
        if (kAddAfter && c_in) {
          x = _mm512_add_ps(_mm512_maskz_loadu_ps(mask[v], c_in + r * ldc_in + 16 * v), x);
        }
        _mm512_mask_storeu_ps(c_out + r * ldc_out + 16 * v, mask[v], x);
      }
    }
    return;
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    if (r >= rows) break;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      _mm512_mask_storeu_ps(c_out + r * ldc_out + 16 * v, mask[v],
                            finish_vector(*e, r, 16 * v, mask[v], acc[r][v]));
    }
  }
}

}  // namespace

void store_tile_with_epilogue(const float* sums, int64_t ld_sums, int64_t rows, int64_t cols,
                              float* out, int64_t ld_out, const TileEpilogue& epilogue) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; j += 16) {
      const __mmask16 mask = column_mask(cols - j, 0);
      const __m512 x = _mm512_maskz_loadu_ps(mask, sums + r * ld_sums + j);
      _mm512_mask_storeu_ps(out + r * ld_out + j, mask, finish_vector(epilogue, r, j, mask, x));
    }
  }
}

namespace {

template <bool kAddAfter, int64_t kAStep = kPackedRows>
void dispatch_tile(int64_t kc, const float* a_panel, const float* b_panel, int64_t ldb,
                   int64_t rows, int64_t cols, const float* c_in, int64_t ldc_in, float* c_out,
                   int64_t ldc_out, const TileEpilogue* epilogue) {
  if (cols > 16) {
    if (rows > 8) {
      micro_tile<14, 2, kAddAfter, kAStep>(kc, a_panel, b_panel, ldb, rows, cols, c_in, ldc_in,
                                           c_out, ldc_out, epilogue);
    } else if (rows > 4) {
      micro_tile<8, 2, kAddAfter, kAStep>(kc, a_panel, b_panel, ldb, rows, cols, c_in, ldc_in,
                                          c_out, ldc_out, epilogue);
    } else {
      micro_tile<4, 2, kAddAfter, kAStep>(kc, a_panel, b_panel, ldb, rows, cols, c_in, ldc_in,
                                          c_out, ldc_out, epilogue);
    }
  } else {
    if (rows > 8) {
      micro_tile<14, 1, kAddAfter, kAStep>(kc, a_panel, b_panel, ldb, rows, cols, c_in, ldc_in,
                                           c_out, ldc_out, epilogue);
    } else if (rows > 4) {
      micro_tile<8, 1, kAddAfter, kAStep>(kc, a_panel, b_panel, ldb, rows, cols, c_in, ldc_in,
                                          c_out, ldc_out, epilogue);
    } else {
      micro_tile<4, 1, kAddAfter, kAStep>(kc, a_panel, b_panel, ldb, rows, cols, c_in, ldc_in,
                                          c_out, ldc_out, epilogue);
    }
  }
}

}  // namespace

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

// Scalar form for builds without AVX-512 (callers normally keep OpenBLAS there): the same
// chain of fused multiply-adds per output.
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
