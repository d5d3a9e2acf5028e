// GEMM and batched MatMul on OpenBLAS, split into fixed-shape BLAS calls run in parallel.
#include "kernels/gemm.h"

#include <cblas.h>

#include <algorithm>

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

// Scratch for the zero-padded last block: its rows of A and of the output.
size_t gemm_workspace_bytes(const GemmDims& dims) {
  const int64_t rows = row_blocks_of(dims).short_rows;
  if (dims.m % rows == 0) return 0;
  return aligned_bytes(static_cast<size_t>(rows * dims.k) * sizeof(float)) +
         aligned_bytes(static_cast<size_t>(rows * dims.n) * sizeof(float));
}

void gemm(const GemmDims& d, const float* a, const float* b, const float* bias, float* y,
          std::byte* workspace) {
  if (d.m <= 0 || d.n <= 0) return;
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

namespace {

GemmDims folded_gemm(const MatMulDims& d) {
  GemmDims g;
  g.m = shape_numel(d.batch_shape) * d.m;
  g.n = d.n;
  g.k = d.k;
  return g;
}

}  // namespace

size_t matmul_workspace_bytes(const MatMulDims& dims) {
  return dims.shared_b ? gemm_workspace_bytes(folded_gemm(dims)) : 0;
}

void matmul(const MatMulDims& d, const float* a, const float* b, float* y, std::byte* workspace) {
  if (d.shared_b) {
    gemm(folded_gemm(d), a, b, nullptr, y, workspace);
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
