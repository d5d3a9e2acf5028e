// GEMM and batched MatMul: on OpenBLAS, split into fixed-shape BLAS calls run in parallel, or,
// for weights prepared once, on the packed micro-kernel (AVX-512, or AVX2 with FMA).
#include "kernels/gemm.h"

#include <cblas.h>

#include <algorithm>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "kernels/packed_gemm.h"

namespace qforge::kernels {
namespace {

CBLAS_TRANSPOSE to_cblas(Transpose t) {
  return t == Transpose::kYes ? CblasTrans : CblasNoTrans;
}

// Writes beta·bias for output rows r0 .. r0+rows and columns c0 .. c0+cols into y (leading dim
// ldy, y at (r0, c0)).
void fill_bias(const GemmDims& d, const float* bias, int64_t r0, int64_t rows, int64_t c0,
               int64_t cols, float* y, int64_t ldy) {
  const float beta = d.beta;
  for (int64_t i = 0; i < rows; ++i) {
    float* yr = y + i * ldy;
    const int64_t r = r0 + i;
    switch (d.bias) {
      case GemmBias::kNone:
        std::fill_n(yr, cols, 0.0f);
        break;
      case GemmBias::kScalar:
        std::fill_n(yr, cols, beta * bias[0]);
        break;
      case GemmBias::kColumn:
        std::fill_n(yr, cols, beta * bias[r]);
        break;
      case GemmBias::kRow:
        for (int64_t j = 0; j < cols; ++j) yr[j] = beta * bias[c0 + j];
        break;
      case GemmBias::kFull: {
        const float* br = bias + r * d.n + c0;
        for (int64_t j = 0; j < cols; ++j) yr[j] = beta * br[j];
        break;
      }
    }
  }
}

// Output columns per BLAS call: wide outputs split so that a single block of rows (a small
// batch through a Linear layer) still spreads over threads. Fixed by n alone.
constexpr int64_t kGemmColBlock = 512;

int64_t column_block(int64_t n) {
  if (n <= kGemmColBlock) return n;
  const int64_t count = (n + kGemmColBlock - 1) / kGemmColBlock;
  const int64_t part = ((n + count - 1) / count + 15) / 16 * 16;
  return std::min(n, part);
}

}  // namespace

void sgemm(Transpose trans_a, Transpose trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m; ++i) {
      float* row = c + i * ldc;
      if (beta == 0.0f) {
        std::fill_n(row, n, 0.0f);
      } else {
        for (int64_t j = 0; j < n; ++j) row[j] *= beta;
      }
    }
    return;
  }
  // OpenBLAS starts with a thread per core, and a threaded call splits the product in ways that
  // change its rounding: pinned to one thread before the first call, whoever called first (a
  // library user need not have called runtime::set_num_threads).
  static const bool kBlasPinned = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)kBlasPinned;
  cblas_sgemm(CblasRowMajor, to_cblas(trans_a), to_cblas(trans_b), static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), alpha, a, static_cast<blasint>(lda),
              b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

namespace {

// Row blocks of one gemm() call. OpenBLAS packs op(b) once per call, so 64-row calls repack the
// weights every 64 rows (over a tenth of ConvNeXt's and ViT's Linear time), while a batch of 8
// through a classifier pays for 56 zero rows. OpenBLAS's blocked path gives a row the same bits
// in a call of any multiple of 8 rows (the rows only pick micro-kernel columns; the k loop and
// its blocking depend on k alone; checked for the ViT, ConvNeXt and classifier shapes, all
// transposes and both betas). Its small-matrix and direct (no-copy) paths round differently and
// are taken below about 28·512² multiply-adds per call, so each size of call is used only where
// even the smallest block is well above that: the choice depends on n and k, never on m.
constexpr int64_t kGemmBigRowBlock = 256;
constexpr int64_t kBigBlockMinWeights = int64_t{1} << 17;  // 64·n·k above 28·512²
constexpr int64_t kGemmShortRowBlock = 16;
constexpr int64_t kShortBlockMinWeights = int64_t{1} << 19;  // 16·n·k above 28·512²

struct RowBlocks {
  int64_t big = 0;         // leading blocks of kGemmBigRowBlock rows
  int64_t mid = 0;         // then blocks of kGemmRowBlock rows
  int64_t short_rows = 0;  // rows of each last block: kGemmRowBlock or kGemmShortRowBlock
  int64_t last = 0;        // and this many of those, the final one zero-padded if short
  int64_t count() const { return big + mid + last; }
  int64_t first_of_last() const { return big * kGemmBigRowBlock + mid * kGemmRowBlock; }
};

RowBlocks row_blocks_of(const GemmDims& d) {
  RowBlocks rb;
  const int64_t weights = d.n * d.k;
  if (weights >= kBigBlockMinWeights) rb.big = d.m / kGemmBigRowBlock;
  int64_t rest = d.m - rb.big * kGemmBigRowBlock;
  if (weights >= kShortBlockMinWeights) {
    rb.mid = rest / kGemmRowBlock;
    rest -= rb.mid * kGemmRowBlock;
    rb.short_rows = kGemmShortRowBlock;
  } else {
    rb.short_rows = kGemmRowBlock;
  }
  rb.last = (rest + rb.short_rows - 1) / rb.short_rows;
  return rb;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The packed path: y = a · w (+ bias per column) with w packed once into column panels.

namespace {

bool packed_linear_applies(const GemmDims& d) {
  return packed_gemm_available() && d.alpha == 1.0f && d.trans_a == Transpose::kNo &&
         (d.bias == GemmBias::kNone || d.bias == GemmBias::kRow) && d.k > 0 && d.n > 0;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Depth (k) of one pass over a tile: passes of equal size up to kLinearDepth, fixed by k alone
// (each pass's sum is rounded on its own, so the depth is part of every output's bits).
// A row panel's pass (kPackedRows × depth, 14 KiB) stays in L1 while it meets every column
// panel of the task.
constexpr int64_t kLinearDepth = 256;
// Bytes of prepared weights one task sweeps per pass (its column panels × depth): kept in L2
// (2 MiB per core) beside the task's block of outputs, so that every row panel after the first
// reads them from there.
constexpr int64_t kLinearWeightBlockBytes = int64_t{1} << 20;
// Row panels per task: more reuse of each pass's weight block per trip from L3, fewer tasks.
constexpr int64_t kLinearRowPanels = 6;

int64_t linear_depth(int64_t k) {
  return ceil_div(k, ceil_div(k, kLinearDepth));
}

// How one packed gemm() call splits into tasks of row panels × column panels: block b of
// `blocks` over `panels` panels holds panels [b·panels / blocks, (b+1)·panels / blocks), so the
// blocks differ by at most one panel. Only the order in which outputs are computed depends on
// the split (and on the thread count), never an output's bits: each output's chain over k is
// the same in any task.
struct LinearSplit {
  int64_t depth = 0;
  int64_t row_panels = 0;
  int64_t col_panels = 0;
  int64_t row_blocks = 0;
  int64_t col_blocks = 0;
};

LinearSplit linear_split(const GemmDims& d, int threads) {
  LinearSplit s;
  s.depth = linear_depth(d.k);
  s.row_panels = ceil_div(d.m, kPackedRows);
  s.col_panels = ceil_div(d.n, kPackedCols);
  const int64_t workers = std::max(threads, 1);
  const int64_t panel_bytes = s.depth * kPackedCols * static_cast<int64_t>(sizeof(float));
  const int64_t block_panels = std::max<int64_t>(1, kLinearWeightBlockBytes / panel_bytes);
  s.col_blocks = ceil_div(s.col_panels, block_panels);
  // A whole number of row blocks per thread: with ~20 tasks, one left over would idle a core
  // for 5% of the call.
  s.row_blocks = ceil_div(ceil_div(s.row_panels, kLinearRowPanels), workers) * workers;
  s.row_blocks = std::min(s.row_blocks, s.row_panels);
  // A small batch has few row blocks: split the columns further so that every thread has work
  // and the dynamic hand-out can even the load.
  const int64_t wanted = 4 * workers;
  if (s.row_blocks * s.col_blocks < wanted) {
    s.col_blocks = std::min(s.col_panels, std::max(s.col_blocks, ceil_div(wanted, s.row_blocks)));
  }
  return s;
}

#ifdef __AVX512F__
// dst[c·kPackedRows + r] = a[r·lda + c] for 14 rows and 16 columns: a 16 × 16 transpose of the
// rows (two of them zero) in registers, four rounds of shuffles.
inline void pack_panel_16(const float* a, int64_t lda, float* dst) {
  static_assert(kPackedRows == 14);
  // The merge-masked forms avoid GCC 12's false uninitialised warnings on the plain ones.
  constexpr __mmask16 kAll = 0xFFFF;
  constexpr __mmask8 kAllPd = 0xFF;
  __m512 r[16];
#pragma GCC unroll 16
  for (int i = 0; i < 14; ++i) r[i] = _mm512_loadu_ps(a + i * lda);
  r[14] = _mm512_setzero_ps();
  r[15] = _mm512_setzero_ps();
  // Per 128-bit lane j: t[2i] = a[2i][4j], a[2i+1][4j], a[2i][4j+1], a[2i+1][4j+1] and
  // t[2i+1] the same for columns 4j+2, 4j+3.
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_mask_unpacklo_ps(r[i], kAll, r[i], r[i + 1]);
    t[i + 1] = _mm512_mask_unpackhi_ps(r[i], kAll, r[i], r[i + 1]);
  }
  // u[4g + c], lane j: column 4j + c of rows 4g .. 4g+3.
  __m512 u[16];
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {
    const __m512d t0 = _mm512_castps_pd(t[4 * g]), t1 = _mm512_castps_pd(t[4 * g + 1]);
    const __m512d t2 = _mm512_castps_pd(t[4 * g + 2]), t3 = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g] = _mm512_castpd_ps(_mm512_mask_unpacklo_pd(t0, kAllPd, t0, t2));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_mask_unpackhi_pd(t0, kAllPd, t0, t2));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_mask_unpacklo_pd(t1, kAllPd, t1, t3));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_mask_unpackhi_pd(t1, kAllPd, t1, t3));
  }
  // Gather lane j of u[c], u[4+c], u[8+c], u[12+c] into column 4j + c.
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    const __m512 x_even =
        _mm512_mask_shuffle_f32x4(u[c], kAll, u[c], u[4 + c], 0x88);  // cols c, 8+c; rows 0-7
    const __m512 x_odd =
        _mm512_mask_shuffle_f32x4(u[c], kAll, u[c], u[4 + c], 0xDD);  // cols 4+c, 12+c
    const __m512 y_even =
        _mm512_mask_shuffle_f32x4(u[8 + c], kAll, u[8 + c], u[12 + c], 0x88);  // rows 8-15
    const __m512 y_odd = _mm512_mask_shuffle_f32x4(u[8 + c], kAll, u[8 + c], u[12 + c], 0xDD);
    constexpr __mmask16 kRows = (1u << kPackedRows) - 1u;
    _mm512_mask_storeu_ps(dst + c * kPackedRows, kRows,
                          _mm512_mask_shuffle_f32x4(x_even, kAll, x_even, y_even, 0x88));
    _mm512_mask_storeu_ps(dst + (8 + c) * kPackedRows, kRows,
                          _mm512_mask_shuffle_f32x4(x_even, kAll, x_even, y_even, 0xDD));
    _mm512_mask_storeu_ps(dst + (4 + c) * kPackedRows, kRows,
                          _mm512_mask_shuffle_f32x4(x_odd, kAll, x_odd, y_odd, 0x88));
    _mm512_mask_storeu_ps(dst + (12 + c) * kPackedRows, kRows,
                          _mm512_mask_shuffle_f32x4(x_odd, kAll, x_odd, y_odd, 0xDD));
  }
}
#endif

// pack_rows for one panel of `rows` rows and kc columns: full panels go through registers 16
// columns at a time (the scalar form costs several percent of a Linear layer's time).
void pack_row_panel(const float* a, int64_t lda, int64_t rows, int64_t kc, float* dst) {
  int64_t done = 0;
#ifdef __AVX512F__
  if (rows == kPackedRows) {
    for (; done + 16 <= kc; done += 16) pack_panel_16(a + done, lda, dst + done * kPackedRows);
  }
#endif
  if (done < kc) pack_rows(a + done, lda, rows, kc - done, dst + done * kPackedRows);
}

// y[r][j] += row[j] for rows [0, rows) and columns [0, cols), rows ld apart.
void add_row(const float* __restrict row, int64_t rows, int64_t cols, float* __restrict y,
             int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    float* __restrict yr = y + r * ld;
    for (int64_t j = 0; j < cols; ++j) yr[j] += row[j];
  }
}

// row_after (n floats, or null): added to every output row once its product is complete, as
// a separate Add of that row would add it (bias: before the product, as Gemm's C). With one
// pass over k the two orders are one sum (addition commutes), and the row goes in as the bias
// does, at no cost; otherwise each block gets it after its last pass. `activation` then acts
// on each block after its last pass, while the block is in cache.
void packed_linear(const GemmDims& d, const float* a, const float* bias, float* y,
                   const float* prepared, const float* row_after = nullptr,
                   std::optional<UnaryOp> activation = std::nullopt,
                   const UnaryParams& activation_params = {}) {
  const LinearSplit s = linear_split(d, max_threads());
  const int64_t k = d.k;
  const int64_t n = d.n;
  const float* row_bias = d.bias == GemmBias::kRow ? bias : nullptr;
  const bool scale_bias = row_bias && d.beta != 1.0f;
  const bool row_first = row_after && s.depth >= k;
  parallel_tasks_with_scratch(
      s.row_blocks * s.col_blocks, max_threads(), 0, nullptr, [&](int64_t t, std::byte*) {
        // Consecutive tasks share their column block, so its weights are still in L3 (or L2).
        const int64_t rb = t % s.row_blocks, cb = t / s.row_blocks;
        const int64_t r_begin = rb * s.row_panels / s.row_blocks * kPackedRows;
        const int64_t r_end = std::min(d.m, (rb + 1) * s.row_panels / s.row_blocks * kPackedRows);
        const int64_t c_begin = cb * s.col_panels / s.col_blocks * kPackedCols;
        const int64_t c_end = std::min(n, (cb + 1) * s.col_panels / s.col_blocks * kPackedCols);
        alignas(64) float a_panel[kPackedRows * kLinearDepth];
        alignas(64) float scaled_bias[kPackedCols];
        for (int64_t k0 = 0; k0 < k; k0 += s.depth) {
          const int64_t kc = std::min(s.depth, k - k0);
          for (int64_t r0 = r_begin; r0 < r_end; r0 += kPackedRows) {
            const int64_t rows = std::min(kPackedRows, r_end - r0);
            pack_row_panel(a + r0 * k + k0, k, rows, kc, a_panel);
            for (int64_t c0 = c_begin; c0 < c_end; c0 += kPackedCols) {
              const int64_t cols = std::min(kPackedCols, c_end - c0);
              const float* w = prepared + (c0 / kPackedCols * k + k0) * kPackedCols;
              float* out = y + r0 * n + c0;
              // Each pass sums its kc products from zero and adds them to what the previous
              // passes stored; the first adds them to the bias (one row broadcast down the tile:
              // leading dimension 0), or stores them. The rounding of OpenBLAS and ONNX
              // Runtime, whose results quantized models are compared with: a single chain over
              // all of k drifted measurably further from theirs on the bundled ViT.
              const float* c_in = out;
              int64_t ldc_in = n;
              if (k0 == 0) {
                ldc_in = 0;
                c_in = row_bias ? row_bias + c0 : row_first ? row_after + c0 : nullptr;
                if (scale_bias) {
                  for (int64_t j = 0; j < cols; ++j) scaled_bias[j] = d.beta * row_bias[c0 + j];
                  c_in = scaled_bias;
                }
              }
              packed_gemm_tile_add(kc, a_panel, w, kPackedCols, rows, cols, c_in, ldc_in, out, n);
              if (k0 + kc == k) {
                if (row_after && !row_first) add_row(row_after + c0, rows, cols, out, n);
                if (activation) unary_rows_f32(*activation, activation_params, out, rows, cols, n);
              }
            }
          }
        }
      });
}

}  // namespace

size_t gemm_prepared_weight_floats(const GemmDims& dims) {
  if (!packed_linear_applies(dims)) return 0;
  return static_cast<size_t>(ceil_div(dims.n, kPackedCols) * kPackedCols * dims.k);
}

void prepare_gemm_weights(const GemmDims& d, const float* b, float* prepared) {
  const int64_t panels = ceil_div(d.n, kPackedCols);
  const bool trans_b = d.trans_b == Transpose::kYes;
  parallel_for(panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float* dst = prepared + p * d.k * kPackedCols;
      const int64_t c0 = p * kPackedCols;
      const int64_t cols = std::min(kPackedCols, d.n - c0);
      for (int64_t kk = 0; kk < d.k; ++kk) {
        float* row = dst + kk * kPackedCols;
        for (int64_t j = 0; j < cols; ++j) {
          row[j] = trans_b ? b[(c0 + j) * d.k + kk] : b[kk * d.n + c0 + j];
        }
        std::fill(row + cols, row + kPackedCols, 0.0f);
      }
    }
  });
}

// Scratch for the zero-padded last block: its rows of A and of the output. The packed path
// needs none: its row panels are packed on the stack.
size_t gemm_workspace_bytes(const GemmDims& dims, GemmWeightForm form) {
  if (form == GemmWeightForm::kPrepared && packed_linear_applies(dims)) return 0;
  const int64_t rows = row_blocks_of(dims).short_rows;
  if (dims.m % rows == 0) return 0;
  return aligned_bytes(static_cast<size_t>(rows * dims.k) * sizeof(float)) +
         aligned_bytes(static_cast<size_t>(rows * dims.n) * sizeof(float));
}

void gemm(const GemmDims& d, const float* a, const float* b, const float* bias, float* y,
          std::byte* workspace, const float* prepared_weights) {
  if (d.m <= 0 || d.n <= 0) return;
  if (prepared_weights && packed_linear_applies(d)) {
    packed_linear(d, a, bias, y, prepared_weights);
    return;
  }
  static_assert(kGemmBigRowBlock % kGemmRowBlock == 0 && kGemmRowBlock % kGemmShortRowBlock == 0);
  const RowBlocks rb = row_blocks_of(d);
  const int64_t row_blocks = rb.count();
  const int64_t cols = column_block(d.n);
  const int64_t col_blocks = (d.n + cols - 1) / cols;
  const bool trans_a = d.trans_a == Transpose::kYes;
  const bool trans_b = d.trans_b == Transpose::kYes;
  const int64_t ldb = trans_b ? d.k : d.n;
  // With no bias BLAS overwrites the block (beta 0); otherwise the block is prefilled and
  // accumulated into. Either choice holds for every block of one call, so rows stay comparable.
  const float beta_call = d.bias == GemmBias::kNone ? 0.0f : 1.0f;

  // The short last row block runs at full height in scratch: its rows of A, zero-padded, are
  // staged once here; each column block then fills and copies back its own columns of the
  // scratch output.
  const int64_t kRows = rb.short_rows;
  const int64_t tail_r0 = rb.first_of_last() + (rb.last - 1) * kRows;
  const int64_t tail_rows = d.m - tail_r0;
  float* sa = reinterpret_cast<float*>(workspace);
  float* sy = rb.last > 0 && tail_rows < kRows
                  ? reinterpret_cast<float*>(
                        workspace + aligned_bytes(static_cast<size_t>(kRows * d.k) * sizeof(float)))
                  : nullptr;
  if (sy) {
    if (trans_a) {
      for (int64_t kk = 0; kk < d.k; ++kk) {
        float* dst = sa + kk * kRows;
        std::copy_n(a + kk * d.m + tail_r0, tail_rows, dst);
        std::fill(dst + tail_rows, dst + kRows, 0.0f);
      }
    } else {
      std::copy_n(a + tail_r0 * d.k, tail_rows * d.k, sa);
      std::fill(sa + tail_rows * d.k, sa + kRows * d.k, 0.0f);
    }
  }

  parallel_for(row_blocks * col_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t block = task / col_blocks;
      int64_t r0, block_rows;
      if (block < rb.big) {
        r0 = block * kGemmBigRowBlock;
        block_rows = kGemmBigRowBlock;
      } else if (block < rb.big + rb.mid) {
        r0 = rb.big * kGemmBigRowBlock + (block - rb.big) * kGemmRowBlock;
        block_rows = kGemmRowBlock;
      } else {
        r0 = rb.first_of_last() + (block - rb.big - rb.mid) * kRows;
        block_rows = kRows;
      }
      const int64_t c0 = task % col_blocks * cols;
      const int64_t nc = std::min(cols, d.n - c0);
      const float* bb = trans_b ? b + c0 * d.k : b + c0;
      const bool staged = sy && r0 == tail_r0;
      const float* ab = staged ? sa : (trans_a ? a + r0 : a + r0 * d.k);
      const int64_t lda = staged ? (trans_a ? kRows : d.k) : (trans_a ? d.m : d.k);
      float* yb = staged ? sy + c0 : y + r0 * d.n + c0;
      if (d.bias != GemmBias::kNone) {
        fill_bias(d, bias, r0, staged ? tail_rows : block_rows, c0, nc, yb, d.n);
      }
      if (staged) {
        for (int64_t i = tail_rows; i < kRows; ++i) std::fill_n(yb + i * d.n, nc, 0.0f);
      }
      sgemm(d.trans_a, d.trans_b, block_rows, nc, d.k, d.alpha, ab, lda, bb, ldb, beta_call, yb,
            d.n);
      if (staged) {
        for (int64_t i = 0; i < tail_rows; ++i) {
          std::copy_n(yb + i * d.n, nc, y + (r0 + i) * d.n + c0);
        }
      }
    }
  });
}

std::optional<MatMulDims> matmul_dims(std::span<const int64_t> a_shape,
                                      std::span<const int64_t> b_shape) {
  if (a_shape.empty() || b_shape.empty()) return std::nullopt;
  const bool a_vector = a_shape.size() == 1;
  const bool b_vector = b_shape.size() == 1;
  const Shape a = a_vector ? Shape{1, a_shape[0]} : Shape(a_shape.begin(), a_shape.end());
  const Shape b = b_vector ? Shape{b_shape[0], 1} : Shape(b_shape.begin(), b_shape.end());

  MatMulDims d;
  d.m = a[a.size() - 2];
  d.k = a[a.size() - 1];
  d.n = b[b.size() - 1];
  if (b[b.size() - 2] != d.k) return std::nullopt;

  const size_t a_batch = a.size() - 2;
  const size_t b_batch = b.size() - 2;
  const size_t rank = std::max(a_batch, b_batch);
  d.batch_shape.assign(rank, 1);
  d.a_batch_strides.assign(rank, 0);
  d.b_batch_strides.assign(rank, 0);
  int64_t a_stride = d.m * d.k;
  int64_t b_stride = d.k * d.n;
  int64_t b_count = 1;
  for (size_t i = 0; i < rank; ++i) {
    const size_t axis = rank - 1 - i;  // walk batch axes right to left
    const int64_t da = i < a_batch ? a[a_batch - 1 - i] : 1;
    const int64_t db = i < b_batch ? b[b_batch - 1 - i] : 1;
    if (da != db && da != 1 && db != 1) return std::nullopt;
    d.batch_shape[axis] = da == 1 ? db : da;
    d.a_batch_strides[axis] = da == 1 ? 0 : a_stride;
    d.b_batch_strides[axis] = db == 1 ? 0 : b_stride;
    a_stride *= da;
    b_stride *= db;
    b_count *= db;
  }
  d.shared_b = b_count == 1;
  // Sized up front: GCC 12 reports a false array-bounds error for push_back here.
  d.out_shape.assign(rank + (a_vector ? 0 : 1) + (b_vector ? 0 : 1), 0);
  std::copy(d.batch_shape.begin(), d.batch_shape.end(), d.out_shape.begin());
  size_t at = rank;
  if (!a_vector) d.out_shape[at++] = d.m;
  if (!b_vector) d.out_shape[at] = d.n;
  return d;
}

GemmDims matmul_folded_gemm(const MatMulDims& d) {
  GemmDims g;
  g.m = shape_numel(d.batch_shape) * d.m;
  g.n = d.n;
  g.k = d.k;
  return g;
}

size_t matmul_prepared_weight_floats(const MatMulDims& dims) {
  return dims.shared_b ? gemm_prepared_weight_floats(matmul_folded_gemm(dims)) : 0;
}

void prepare_matmul_weights(const MatMulDims& dims, const float* b, float* prepared) {
  prepare_gemm_weights(matmul_folded_gemm(dims), b, prepared);
}

size_t matmul_workspace_bytes(const MatMulDims& dims, GemmWeightForm form) {
  return dims.shared_b ? gemm_workspace_bytes(matmul_folded_gemm(dims), form) : 0;
}

void matmul_add_row(const MatMulDims& d, const float* a, const float* b, const float* row, float* y,
                    std::byte* workspace, const float* prepared_weights,
                    std::optional<UnaryOp> activation, const UnaryParams& activation_params) {
  if (d.shared_b && prepared_weights && packed_linear_applies(matmul_folded_gemm(d))) {
    packed_linear(matmul_folded_gemm(d), a, nullptr, y, prepared_weights, row, activation,
                  activation_params);
    return;
  }
  matmul(d, a, b, y, workspace, prepared_weights);
  if (d.n <= 0) return;
  const int64_t rows = shape_numel(d.out_shape) / d.n;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / d.n);
  parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
    add_row(row, end - begin, d.n, y + begin * d.n, d.n);
    if (activation) {
      unary_rows_f32(*activation, activation_params, y + begin * d.n, end - begin, d.n, d.n);
    }
  });
}

void matmul(const MatMulDims& d, const float* a, const float* b, float* y, std::byte* workspace,
            const float* prepared_weights) {
  if (d.shared_b) {
    gemm(matmul_folded_gemm(d), a, b, nullptr, y, workspace, prepared_weights);
    return;
  }
  const int64_t batch = shape_numel(d.batch_shape);
  const int rank = static_cast<int>(d.batch_shape.size());
  parallel_for(batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t a_off = 0;
      int64_t b_off = 0;
      int64_t rest = i;
      for (int axis = rank - 1; axis >= 0; --axis) {
        const int64_t idx = rest % d.batch_shape[axis];
        rest /= d.batch_shape[axis];
        a_off += idx * d.a_batch_strides[axis];
        b_off += idx * d.b_batch_strides[axis];
      }
      sgemm(Transpose::kNo, Transpose::kNo, d.m, d.n, d.k, 1.0f, a + a_off, d.k, b + b_off, d.n,
            0.0f, y + i * d.m * d.n, d.n);
    }
  });
}

}  // namespace qforge::kernels
