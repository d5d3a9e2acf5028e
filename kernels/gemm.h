// Matrix products: a cblas_sgemm wrapper, the ONNX Gemm (row-blocked OpenBLAS, or the packed
// micro-kernel when the weight was prepared once) and numpy-style batched MatMul, plus
// the task runner the BLAS-backed kernels share.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "kernels/elementwise.h"
#include "kernels/parallel.h"
#include "kernels/tensor.h"

namespace qforge::kernels {

enum class Transpose : uint8_t { kNo, kYes };

// Row-major c[m×n] = alpha·op(a)·op(b) + beta·c in one single-threaded cblas_sgemm call (the
// wrapper pins OpenBLAS to one thread before its first call; the threads are TBB's), plus the
// k == 0 case BLAS rejects.
void sgemm(Transpose trans_a, Transpose trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc);

// Rows of the output per BLAS call in gemm() and in row-folded matmul(). OpenBLAS takes
// different code paths (with different rounding) for different row counts, so every call gets
// a fixed number of rows and a short last block is zero-padded in scratch: a row's bits then
// depend neither on the total row count (the batch) nor on the thread count. Large weights also
// use 256- and 16-row calls, where OpenBLAS rounds every row as in a 64-row call (gemm.cpp).
inline constexpr int64_t kGemmRowBlock = 64;

// How Gemm's C input broadcasts over the [m, n] output.
enum class GemmBias : uint8_t {
  kNone,
  kScalar,  // one value
  kRow,     // [n] or [1, n]: one value per column, the same for every row
  kColumn,  // [m, 1]: one value per row
  kFull,    // [m, n]
};

struct GemmDims {
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  Transpose trans_a = Transpose::kNo;  // a is [k, m] when kYes, else [m, k]
  Transpose trans_b = Transpose::kNo;  // b is [n, k] when kYes, else [k, n]
  float alpha = 1.0f;
  float beta = 1.0f;  // factor on the bias
  GemmBias bias = GemmBias::kNone;
};

// Whether gemm() gets b as given or in the packed form of prepare_gemm_weights.
enum class GemmWeightForm : uint8_t { kRaw, kPrepared };

// Floats of b in the packed micro-kernel's form (kernels/packed_gemm.h): ceil(n / kPackedCols)
// panels of k × kPackedCols, columns past n zero. 0 when that path does not apply to these dims
// (neither AVX-512 nor AVX2 + FMA, alpha != 1, transposed a, a bias other than none or per
// column, k == 0): the caller then keeps b as it is and gemm() runs on OpenBLAS. Independent of m.
size_t gemm_prepared_weight_floats(const GemmDims& dims);
// Packs b (op(b) is [k, n]; b is [n, k] when trans_b) into prepared, of
// gemm_prepared_weight_floats(dims) floats. Meant for constant weights, once at plan time.
void prepare_gemm_weights(const GemmDims& dims, const float* b, float* prepared);

size_t gemm_workspace_bytes(const GemmDims& dims, GemmWeightForm form = GemmWeightForm::kRaw);
// y[m×n] = alpha·op(a)·op(b) + beta·bias. With prepared_weights (from prepare_gemm_weights for
// these dims; then b may be null) on the packed micro-kernel, parallel over blocks of rows and
// columns; each output is its bias plus, one after the other, chains of fused multiply-adds
// over fixed blocks of k (fixed by k alone). Otherwise on OpenBLAS, parallel over blocks of
// kGemmRowBlock rows and, for wide outputs, blocks of columns (fixed by n). Either way a row's bits
// depend neither on m nor on the thread count.
void gemm(const GemmDims& dims, const float* a, const float* b, const float* bias, float* y,
          std::byte* workspace, const float* prepared_weights = nullptr);

// A numpy matmul of two shapes: 1-D operands are promoted (and the promoted axis dropped from
// the output), batch dimensions broadcast.
struct MatMulDims {
  Shape out_shape;
  Shape batch_shape;      // broadcast batch dimensions (empty for plain 2-D)
  Shape a_batch_strides;  // element stride of a's matrices per batch dimension, 0 if broadcast
  Shape b_batch_strides;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  // b is one matrix shared by every matrix of a: a's batch folds into rows and the product runs
  // as one row-blocked GEMM. Otherwise every batch matrix is one BLAS call of its own shape.
  bool shared_b = false;
};

// nullopt when the shapes cannot be multiplied.
std::optional<MatMulDims> matmul_dims(std::span<const int64_t> a_shape,
                                      std::span<const int64_t> b_shape);
// The GEMM a shared-b matmul folds into (a's batch folded into rows).
GemmDims matmul_folded_gemm(const MatMulDims& dims);
// Prepared b for a shared-b matmul (b one constant [k, n] matrix): 0 floats when not shared or
// when the packed path does not apply; then matmul() uses b as it is.
size_t matmul_prepared_weight_floats(const MatMulDims& dims);
void prepare_matmul_weights(const MatMulDims& dims, const float* b, float* prepared);
size_t matmul_workspace_bytes(const MatMulDims& dims, GemmWeightForm form = GemmWeightForm::kRaw);
// prepared_weights: from prepare_matmul_weights, or null.
void matmul(const MatMulDims& dims, const float* a, const float* b, float* y, std::byte* workspace,
            const float* prepared_weights = nullptr);
// matmul(), then row (dims.n floats) added to every row of y: the bits of a MatMul followed by
// an Add of that row (a Linear layer's bias as torch.onnx writes it for inputs of rank 3), with
// the row added to each block of the packed product while the block is still in cache. With an
// activation, it follows the row on each block (unary_f32's bits: the node after the Add).
void matmul_add_row(const MatMulDims& dims, const float* a, const float* b, const float* row,
                    float* y, std::byte* workspace, const float* prepared_weights = nullptr,
                    std::optional<UnaryOp> activation = std::nullopt,
                    const UnaryParams& activation_params = {});

// Runs fn(task, scratch) for every task in [0, tasks) on up to `slots` threads, each thread
// holding one scratch region of slot_bytes from workspace (slots · slot_bytes in all). Tasks
// are handed out dynamically; results depend only on how each task computes, never on which
// thread runs it or how many there are.
template <class Fn>
void parallel_tasks_with_scratch(int64_t tasks, int slots, size_t slot_bytes, std::byte* workspace,
                                 Fn&& fn) {
  if (tasks <= 0) return;
  int64_t used = std::min<int64_t>(
      {static_cast<int64_t>(std::max(slots, 1)), static_cast<int64_t>(max_threads()), tasks});
  if (used <= 1) {
    for (int64_t t = 0; t < tasks; ++t) fn(t, workspace);
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_for(used, 1, [&](int64_t begin, int64_t end) {
    for (int64_t slot = begin; slot < end; ++slot) {
      std::byte* scratch = workspace ? workspace + static_cast<size_t>(slot) * slot_bytes : nullptr;
      for (int64_t t = next.fetch_add(1, std::memory_order_relaxed); t < tasks;
           t = next.fetch_add(1, std::memory_order_relaxed)) {
        fn(t, scratch);
      }
    }
  });
}

// Bytes rounded up so that consecutive scratch regions stay 64-byte aligned.
inline size_t aligned_bytes(size_t bytes) {
  return (bytes + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment;
}

}  // namespace qforge::kernels
