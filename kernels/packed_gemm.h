// A register-blocked GEMM (AVX-512, or AVX2 with FMA) for products whose left operand is constant
// (convolution weights): C[m × n] = A[m × k] · B[k × n], A packed once into panels of kPackedRows
// rows, B packed per call into panels of kPackedCols columns (or read in place, rows ldb apart).
// Every output is one chain of fused multiply-adds over k = 0 .. k-1 in order, however the work is
// split, so its bits depend on neither the batch nor the thread count, nor on which of the two
// instruction sets runs it. Without vector FMA (packed_gemm_available() false) the callers keep
// their OpenBLAS path.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qforge::kernels {

// Rows of A per packed panel (the micro-tile height) and columns of B per packed panel (the
// micro-tile width, two 16-float vectors).
inline constexpr int64_t kPackedRows = 14;
inline constexpr int64_t kPackedCols = 32;

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define QFORGE_PACKED_GEMM 1
#else
#define QFORGE_PACKED_GEMM 0
#endif

constexpr bool packed_gemm_available() {
  return QFORGE_PACKED_GEMM != 0;
}

// Floats of A[m × k] in packed form: ceil(m / kPackedRows) panels of k × kPackedRows, rows past
// m zero.
size_t packed_rows_floats(int64_t m, int64_t k);
// Packs rows of a (leading dimension lda) into panels: panel p holds a[p·R + r][kk] at
// packed[(p·k + kk)·R + r].
void pack_rows(const float* a, int64_t lda, int64_t m, int64_t k, float* packed);
// The same, panels in parallel (the same bits: a copy): weights packed on every call, as training
// passes them.
void pack_rows_parallel(const float* a, int64_t lda, int64_t m, int64_t k, float* packed);

// What the last pass over k does to a tile before it stores it, per output row r (pointers
// already at the tile's first row): v = acc + bias[r]; then, when `finish`,
// v = clamp(fma(v, scale[r], shift[r]) + residual[r][j], lo, hi) (scale 1 and shift 0 where
// null). The multiply-add is explicitly fused so that the vector and scalar forms agree
// whatever the compiler contracts.
struct TileEpilogue {
  const float* bias = nullptr;
  bool finish = false;
  const float* scale = nullptr;
  const float* shift = nullptr;
  const float* residual = nullptr;  // at the tile's first element, leading dimension ld_residual
  int64_t ld_residual = 0;
  float lo = 0.0f;
  float hi = 0.0f;
};

// One micro-tile: rows [0, rows) (rows <= kPackedRows) and columns [0, cols) (cols <=
// kPackedCols) of a_panel · b over kc steps of k. a_panel: kc × kPackedRows floats of a packed
// row panel (at the first k of this pass); b: kc rows ldb apart (kPackedCols for a packed
// panel, or rows of a plain row-major matrix), of which only the first cols floats are read.
// The sums start from c_in (leading dimension ldc_in) or from zero when c_in is null; they go
// to c_out (ldc_out), through `epilogue` when it is not null.
void packed_gemm_tile(int64_t kc, const float* a_panel, const float* b, int64_t ldb, int64_t rows,
                      int64_t cols, const float* c_in, int64_t ldc_in, float* c_out,
                      int64_t ldc_out, const TileEpilogue* epilogue);

// packed_gemm_tile without an epilogue, for A panels of kInterleavedPanels products laid side by
// side k step by k step: product i's panel at a_panel + i·kPackedRows, its k steps
// kInterleavedPanels·kPackedRows floats apart (the Winograd weight gradient's 16 transform points).
inline constexpr int64_t kInterleavedPanels = 16;
void packed_gemm_tile_interleaved(int64_t kc, const float* a_panel, const float* b, int64_t ldb,
                                  int64_t rows, int64_t cols, const float* c_in, int64_t ldc_in,
                                  float* c_out, int64_t ldc_out);
// As packed_gemm_tile without an epilogue, except that the sums over this pass start from zero
// and c_in (when not null) is added to them at the end: c_out = c_in + a_panel · b. A long
// product then accumulates as blocks added one after the other, the rounding OpenBLAS and ONNX
// Runtime's MLAS give a Linear layer, rather than as one chain of k multiply-adds.
void packed_gemm_tile_add(int64_t kc, const float* a_panel, const float* b, int64_t ldb,
                          int64_t rows, int64_t cols, const float* c_in, int64_t ldc_in,
                          float* c_out, int64_t ldc_out);

// out[r][j] = epilogue(sums[r][j]) for rows [0, rows) and columns [0, cols) (cols <=
// kPackedCols): the last pass of a tile whose sums were kept aside (a tile whose columns are
// scattered over several outputs). The same bits as packed_gemm_tile's own epilogue.
void store_tile_with_epilogue(const float* sums, int64_t ld_sums, int64_t rows, int64_t cols,
                              float* out, int64_t ld_out, const TileEpilogue& epilogue);

// Scalar form of TileEpilogue for one value of row r at column j.
float apply_tile_epilogue(const TileEpilogue& e, int64_t r, int64_t j, float acc);

}  // namespace qforge::kernels
