// Gemm and MatMul backward: fixed blocks of each gradient, one single-threaded OpenBLAS call per
// block and summed batch matrix, blocks in parallel.
#include "kernels/gemm_backward.h"

#include <algorithm>

#include "kernels/norm.h"
#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

// Gradient blocks per BLAS call: fixed by the gradient's shape, never by the thread count.
constexpr int64_t kRowBlock = 64;
constexpr int64_t kColBlock = 256;
// Output values per parallel chunk of the bias reductions.
constexpr int64_t kTaskElements = int64_t{1} << 14;

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// One product c[m×n] (leading dimension ldc) = alpha·op(a)·op(b), a and b as for sgemm.
struct Product {
  Transpose trans_a = Transpose::kNo;
  Transpose trans_b = Transpose::kNo;
  int64_t m = 0, n = 0, k = 0;
  float alpha = 1.0f;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  int64_t ldb = 0;
  int64_t ldc = 0;
};

struct Blocks {
  int64_t rows = 0, cols = 0;  // blocks along m and n
  int64_t count() const { return rows * cols; }
};

Blocks blocks_of(int64_t m, int64_t n) {
  return {std::max<int64_t>(1, ceil_div(m, kRowBlock)),
          std::max<int64_t>(1, ceil_div(n, kColBlock))};
}

// Block `block` of p into c with the given beta (0 overwrites, 1 adds).
void run_block(const Product& p, const Blocks& blocks, int64_t block, float beta, float* c) {
  const int64_t r0 = block / blocks.cols * kRowBlock;
  const int64_t c0 = block % blocks.cols * kColBlock;
  const int64_t rows = std::min(kRowBlock, p.m - r0);
  const int64_t cols = std::min(kColBlock, p.n - c0);
  if (rows <= 0 || cols <= 0) return;
  const float* a = p.trans_a == Transpose::kNo ? p.a + r0 * p.lda : p.a + r0;
  const float* b = p.trans_b == Transpose::kNo ? p.b + c0 : p.b + c0 * p.ldb;
  sgemm(p.trans_a, p.trans_b, rows, cols, p.k, p.alpha, a, p.lda, b, p.ldb, beta,
        c + r0 * p.ldc + c0, p.ldc);
}

void blocked_product(const Product& p, float* c, GradMode write) {
  const Blocks blocks = blocks_of(p.m, p.n);
  const float beta = write == GradMode::kAccumulate ? 1.0f : 0.0f;
  parallel_for(blocks.count(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) run_block(p, blocks, block, beta, c);
  });
}

// dc for Gemm's bias: beta·dy summed over the broadcast axes.
void bias_gradient(const GemmDims& d, const float* dy, float* dc, GradMode write) {
  const bool add = write == GradMode::kAccumulate;
  const float beta = d.beta;
  switch (d.bias) {
    case GemmBias::kNone:
      return;
    case GemmBias::kScalar: {
      float sum = 0.0f;
      for (int64_t i = 0; i < d.m; ++i) sum += lane_sum(dy + i * d.n, d.n);
      dc[0] = add ? dc[0] + beta * sum : beta * sum;
      return;
    }
    case GemmBias::kColumn: {
      const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, d.n));
      parallel_for(d.m, grain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const float sum = lane_sum(dy + i * d.n, d.n);
          dc[i] = add ? dc[i] + beta * sum : beta * sum;
        }
      });
      return;
    }
    case GemmBias::kRow: {
      const int64_t col_blocks = ceil_div(d.n, kColBlock);
      parallel_for(col_blocks, 1, [&](int64_t begin, int64_t end) {
        float sum[kColBlock];
        for (int64_t block = begin; block < end; ++block) {
          const int64_t c0 = block * kColBlock;
          const int64_t cols = std::min(kColBlock, d.n - c0);
          std::fill_n(sum, cols, 0.0f);
          for (int64_t i = 0; i < d.m; ++i) {
            const float* row = dy + i * d.n + c0;
            for (int64_t j = 0; j < cols; ++j) sum[j] += row[j];
          }
          float* out = dc + c0;
          for (int64_t j = 0; j < cols; ++j) out[j] = add ? out[j] + beta * sum[j] : beta * sum[j];
        }
      });
      return;
    }
    case GemmBias::kFull: {
      const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, d.n));
      parallel_for(d.m, grain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const float* row = dy + i * d.n;
          float* out = dc + i * d.n;
          for (int64_t j = 0; j < d.n; ++j) out[j] = add ? out[j] + beta * row[j] : beta * row[j];
        }
      });
      return;
    }
  }
}

// Offsets of the a and b matrices that batch index t of a MatMul multiplies.
void batch_offsets(const MatMulDims& d, int64_t t, int64_t& a_off, int64_t& b_off) {
  a_off = 0;
  b_off = 0;
  for (int axis = static_cast<int>(d.batch_shape.size()) - 1; axis >= 0; --axis) {
    const int64_t idx = t % d.batch_shape[axis];
    t /= d.batch_shape[axis];
    a_off += idx * d.a_batch_strides[axis];
    b_off += idx * d.b_batch_strides[axis];
  }
}

// Matrices an operand holds: the batch dimensions it does not broadcast along.
int64_t operand_matrices(const MatMulDims& d, const Shape& strides, int64_t matrix_size) {
  if (matrix_size == 0) return 0;
  int64_t count = 1;
  for (size_t axis = 0; axis < strides.size(); ++axis) {
    if (strides[axis] != 0) count *= d.batch_shape[axis];
  }
  return count;
}

// grad[i] = Σ over batch indices t (in order) whose operand matrix is i of the product `p` of
// batch index t, given by make(t); `matrix_of(t)` names the matrix t contributes to.
template <class MatrixOf, class MakeProduct>
void batched_gradient(int64_t matrices, int64_t batch, int64_t rows, int64_t cols, float* grad,
                      GradMode write, MatrixOf&& matrix_of, MakeProduct&& make) {
  const Blocks blocks = blocks_of(rows, cols);
  const int64_t matrix_size = rows * cols;
  parallel_for(matrices * blocks.count(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t matrix = task / blocks.count();
      const int64_t block = task % blocks.count();
      float* out = grad + matrix * matrix_size;
      bool first = write == GradMode::kOverwrite;
      for (int64_t t = 0; t < batch; ++t) {
        if (matrix_of(t) != matrix) continue;
        run_block(make(t), blocks, block, first ? 0.0f : 1.0f, out);
        first = false;
      }
      if (first) {  // no batch index reads this matrix (an empty batch): its gradient is zero
        Product zero;
        zero.m = rows;
        zero.n = cols;
        zero.ldc = cols;
        run_block(zero, blocks, block, 0.0f, out);
      }
    }
  });
}

}  // namespace

void gemm_backward(const GemmDims& d, const float* a, const float* b, const float* dy,
                   const GemmGradients& grads, GradMode write) {
  const bool ta = d.trans_a == Transpose::kYes;
  const bool tb = d.trans_b == Transpose::kYes;
  if (grads.da) {
    Product p;
    p.alpha = d.alpha;
    p.k = d.n;
    if (!ta) {  // da [m×k] = alpha·dy·op(b)ᵀ
      p.m = d.m;
      p.n = d.k;
      p.a = dy;
      p.lda = d.n;
      p.b = b;
      p.trans_b = tb ? Transpose::kNo : Transpose::kYes;
      p.ldb = tb ? d.k : d.n;
      p.ldc = d.k;
    } else {  // da [k×m] = alpha·op(b)·dyᵀ
      p.m = d.k;
      p.n = d.m;
      p.a = b;
      p.trans_a = tb ? Transpose::kYes : Transpose::kNo;
      p.lda = tb ? d.k : d.n;
      p.b = dy;
      p.trans_b = Transpose::kYes;
      p.ldb = d.n;
      p.ldc = d.m;
    }
    blocked_product(p, grads.da, write);
  }
  if (grads.db) {
    Product p;
    p.alpha = d.alpha;
    p.k = d.m;
    if (!tb) {  // db [k×n] = alpha·op(a)ᵀ·dy
      p.m = d.k;
      p.n = d.n;
      p.a = a;
      p.trans_a = ta ? Transpose::kNo : Transpose::kYes;
      p.lda = ta ? d.m : d.k;
      p.b = dy;
      p.ldb = d.n;
      p.ldc = d.n;
    } else {  // db [n×k] = alpha·dyᵀ·op(a)
      p.m = d.n;
      p.n = d.k;
      p.a = dy;
      p.trans_a = Transpose::kYes;
      p.lda = d.n;
      p.b = a;
      p.trans_b = ta ? Transpose::kYes : Transpose::kNo;
      p.ldb = ta ? d.m : d.k;
      p.ldc = d.k;
    }
    blocked_product(p, grads.db, write);
  }
  if (grads.dc) bias_gradient(d, dy, grads.dc, write);
}

void matmul_backward(const MatMulDims& d, const float* a, const float* b, const float* dy,
                     const MatMulGradients& grads, GradMode write) {
  const int64_t batch = shape_numel(d.batch_shape);
  const int64_t a_size = d.m * d.k;
  const int64_t b_size = d.k * d.n;
  const int64_t y_size = d.m * d.n;
  const int64_t a_matrices = operand_matrices(d, d.a_batch_strides, a_size);
  const int64_t b_matrices = operand_matrices(d, d.b_batch_strides, b_size);
  if (grads.da) {
    if (a_matrices == batch) {  // a is not broadcast: every batch matrix of da is one product
      Product p;
      p.m = batch * d.m;  // dy and da stacked: one product per block of rows
      p.n = d.k;
      p.k = d.n;
      p.a = dy;
      p.lda = d.n;
      p.trans_b = Transpose::kYes;
      p.ldb = d.n;
      p.ldc = d.k;
      if (b_matrices == 1) {
        p.b = b;
        blocked_product(p, grads.da, write);
      } else {
        p.m = d.m;
        batched_gradient(
            batch, batch, d.m, d.k, grads.da, write, [](int64_t t) { return t; },
            [&](int64_t t) {
              int64_t a_off, b_off;
              batch_offsets(d, t, a_off, b_off);
              Product q = p;
              q.a = dy + t * y_size;
              q.b = b + b_off;
              return q;
            });
      }
    } else {
      batched_gradient(
          a_matrices, batch, d.m, d.k, grads.da, write,
          [&](int64_t t) {
            int64_t a_off, b_off;
            batch_offsets(d, t, a_off, b_off);
            return a_size == 0 ? int64_t{0} : a_off / a_size;
          },
          [&](int64_t t) {
            int64_t a_off, b_off;
            batch_offsets(d, t, a_off, b_off);
            Product q;
            q.m = d.m;
            q.n = d.k;
            q.k = d.n;
            q.a = dy + t * y_size;
            q.lda = d.n;
            q.b = b + b_off;
            q.trans_b = Transpose::kYes;
            q.ldb = d.n;
            q.ldc = d.k;
            return q;
          });
    }
  }
  if (grads.db) {
    if (b_matrices == 1 && a_matrices == batch) {
      // db [k×n] = (stacked a)ᵀ·(stacked dy): one reduction over every row of the batch.
      Product p;
      p.m = d.k;
      p.n = d.n;
      p.k = batch * d.m;
      p.a = a;
      p.trans_a = Transpose::kYes;
      p.lda = d.k;
      p.b = dy;
      p.ldb = d.n;
      p.ldc = d.n;
      blocked_product(p, grads.db, write);
    } else {
      batched_gradient(
          b_matrices, batch, d.k, d.n, grads.db, write,
          [&](int64_t t) {
            int64_t a_off, b_off;
            batch_offsets(d, t, a_off, b_off);
            return b_size == 0 ? int64_t{0} : b_off / b_size;
          },
          [&](int64_t t) {
            int64_t a_off, b_off;
            batch_offsets(d, t, a_off, b_off);
            Product q;
            q.m = d.k;
            q.n = d.n;
            q.k = d.m;
            q.a = a + a_off;
            q.trans_a = Transpose::kYes;
            q.lda = d.k;
            q.b = dy + t * y_size;
            q.ldb = d.n;
            q.ldc = d.n;
            return q;
          });
    }
  }
}

}  // namespace qforge::kernels
