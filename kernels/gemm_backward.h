// Backward of the ONNX Gemm and of numpy-style batched MatMul (kernels/gemm.h).
//   Gemm, y = alpha·op(a)·op(b) + beta·c:
//     d op(a) = alpha·dy·op(b)ᵀ, d op(b) = alpha·op(a)ᵀ·dy, transposed back when trans_a/trans_b;
//     dc = beta·dy summed over the axes c broadcasts along (all of them for a scalar, the rows
//     for a [n] row, the columns for an [m, 1] column).
//   MatMul, y[t] = a[t_a]·b[t_b] over the broadcast batch t:
//     da[i] = Σ_{t: t_a = i} dy[t]·b[t_b]ᵀ, db[j] = Σ_{t: t_b = j} a[t_a]ᵀ·dy[t], the batch
//     indices t in increasing order; 1-D operands as matmul promotes them.
// Every product runs on OpenBLAS as single-threaded cblas_sgemm calls over fixed blocks of the
// gradient (rows and columns fixed by the shapes alone), in parallel; a block that sums several
// batch matrices adds them in batch order. Bias gradients sum rows in order with vectorised
// column blocks, or each row with lane_sum. Gradients are bit-identical for any thread count.
#pragma once

#include <cstdint>

#include "kernels/gemm.h"
#include "kernels/gradient.h"

namespace qforge::kernels {

// Gradients to compute; a null pointer skips that gradient. Each has its input's shape: da that
// of a ([m, k], or [k, m] with trans_a), db that of b, dc that of the bias as dims.bias says
// (1, n, m or m·n values).
struct GemmGradients {
  float* da = nullptr;
  float* db = nullptr;
  float* dc = nullptr;
};

// a is needed for db, b for da. No workspace.
void gemm_backward(const GemmDims& dims, const float* a, const float* b, const float* dy,
                   const GemmGradients& grads, GradMode write = GradMode::kOverwrite);

struct MatMulGradients {
  float* da = nullptr;  // a's shape
  float* db = nullptr;  // b's shape
};

// dims from matmul_dims(a_shape, b_shape); dy of dims.out_shape. No workspace.
void matmul_backward(const MatMulDims& dims, const float* a, const float* b, const float* dy,
                     const MatMulGradients& grads, GradMode write = GradMode::kOverwrite);

}  // namespace qforge::kernels
