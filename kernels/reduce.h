// Reductions over a set of axes other than the mean (kernels/pool.h): every ONNX Reduce op (sum,
// max, min, product, the L1 and L2 norms, the sum of squares, log-sum and log-sum-exp), the index
// of the max and the top k along one axis, with the backward of each reduction and of top k. Each
// output walks its reduced elements in row-major order on one task, so results do not depend on the
// thread count.
#pragma once

#include <cstdint>

#include "kernels/grad_mode.h"
#include "kernels/pool.h"

namespace qforge::kernels {

// plan: plan_reduce(shape, axes); y holds one value per kept position (row-major).
void reduce_sum(const ReducePlan& plan, const float* x, float* y);
// The largest value; NaN where any reduced value is NaN (as PyTorch's amax).
void reduce_max(const ReducePlan& plan, const float* x, float* y);
// The Euclidean norm √(Σ x²), the squares summed in float in row-major order (ONNX ReduceL2,
// what torch.onnx writes for torch.linalg.vector_norm and F.normalize).
void reduce_l2(const ReducePlan& plan, const float* x, float* y);
// The smallest value; NaN where any reduced value is NaN (as PyTorch's amin).
void reduce_min(const ReducePlan& plan, const float* x, float* y);
// The largest and smallest of integers (sizes and counts that resolution folds: torchvision's
// detectors take the shorter side of the image).
void reduce_max(const ReducePlan& plan, const int64_t* x, int64_t* y);
void reduce_min(const ReducePlan& plan, const int64_t* x, int64_t* y);
void reduce_max(const ReducePlan& plan, const int32_t* x, int32_t* y);
void reduce_min(const ReducePlan& plan, const int32_t* x, int32_t* y);
// Σ x, Π x, Σ |x| and Σ x² of integers (counts of a mask's tokens), exact and then saturated to
// the type's range, as ONNX Runtime gives them.
void reduce_sum(const ReducePlan& plan, const int64_t* x, int64_t* y);
void reduce_sum(const ReducePlan& plan, const int32_t* x, int32_t* y);
void reduce_prod(const ReducePlan& plan, const int64_t* x, int64_t* y);
void reduce_prod(const ReducePlan& plan, const int32_t* x, int32_t* y);
void reduce_l1(const ReducePlan& plan, const int64_t* x, int64_t* y);
void reduce_l1(const ReducePlan& plan, const int32_t* x, int32_t* y);
void reduce_sum_square(const ReducePlan& plan, const int64_t* x, int64_t* y);
void reduce_sum_square(const ReducePlan& plan, const int32_t* x, int32_t* y);
// Σ |x| (ONNX ReduceL1), Σ x² (ReduceSumSquare), Π x (ReduceProd) and log Σ x (ReduceLogSum),
// each accumulated in float in row-major order.
void reduce_l1(const ReducePlan& plan, const float* x, float* y);
void reduce_sum_square(const ReducePlan& plan, const float* x, float* y);
void reduce_prod(const ReducePlan& plan, const float* x, float* y);
void reduce_log_sum(const ReducePlan& plan, const float* x, float* y);
// log Σ exp(x) (ReduceLogSumExp, what torch.onnx writes for torch.logsumexp), as m + log Σ exp(x −
// m) with m the largest value, so that no exp overflows; m itself where m is ±inf, NaN where a
// value is NaN.
void reduce_log_sum_exp(const ReducePlan& plan, const float* x, float* y);

// dx = dy broadcast back over the reduced axes.
void reduce_sum_backward(const ReducePlan& plan, const float* dy, float* dx,
                         GradMode write = GradMode::kOverwrite);
// dx = dy / (number of elements equal to the max) where x equals the max, 0 elsewhere (PyTorch's
// amax backward: ties share the gradient evenly). x and y are the forward's input and output. With
// reduce_min's y, the same for the minima (amin's backward).
void reduce_max_backward(const ReducePlan& plan, const float* x, const float* y, const float* dy,
                         float* dx, GradMode write = GradMode::kOverwrite);

// dx = dy · x / y, 0 where the norm y is 0 (PyTorch's norm backward, which masks the division
// there). x and y are the forward's input and output.
void reduce_l2_backward(const ReducePlan& plan, const float* x, const float* y, const float* dy,
                        float* dx, GradMode write = GradMode::kOverwrite);
// dx = dy · sign(x), 0 where x is 0 (PyTorch's abs backward).
void reduce_l1_backward(const ReducePlan& plan, const float* x, const float* dy, float* dx,
                        GradMode write = GradMode::kOverwrite);
// dx = 2 · x · dy.
void reduce_sum_square_backward(const ReducePlan& plan, const float* x, const float* dy, float* dx,
                                GradMode write = GradMode::kOverwrite);
// dx = dy · (the product of the other reduced values): dy · y / x where no reduced value is 0;
// where one is, the product of the others at that one and 0 elsewhere; 0 everywhere where two or
// more are (PyTorch's prod backward). x and y are the forward's input and output.
void reduce_prod_backward(const ReducePlan& plan, const float* x, const float* y, const float* dy,
                          float* dx, GradMode write = GradMode::kOverwrite);
// dx = dy / Σ x, the sum added again in the forward's order.
void reduce_log_sum_backward(const ReducePlan& plan, const float* x, const float* dy, float* dx,
                             GradMode write = GradMode::kOverwrite);
// dx = dy · exp(x − y): the softmax of the reduced values. x and y are the forward's input and
// output.
void reduce_log_sum_exp_backward(const ReducePlan& plan, const float* x, const float* y,
                                 const float* dy, float* dx, GradMode write = GradMode::kOverwrite);

// x viewed as [outer, n, inner]: the running sums along the middle axis (ONNX CumSum),
// y[o, i, k] = Σ x[o, j, k] over j <= i; over j < i with `exclusive` (0 first), and over j >= i
// (j > i) with `reverse`. Each sum is added up in the order of the axis' walk, so the bits do not
// depend on the thread count. For float32, int32 and int64 (integers wrap as two's complement).
template <typename T>
void cumulative_sum(const T* x, int64_t outer, int64_t n, int64_t inner, bool exclusive,
                    bool reverse, T* y);
// Its gradient: dx = the running sums of dy the other way (reverse flipped, exclusive kept).
void cumulative_sum_backward(const float* dy, int64_t outer, int64_t n, int64_t inner,
                             bool exclusive, bool reverse, float* dx);

// x viewed as [outer, axis_dim, inner]: y[o, i] = the index along the axis of the largest
// x[o, ·, i], the first one among equal values, or the last with `select_last`. A NaN counts as
// the largest value (its first or last occurrence).
// For float32, int32 and int64 (CLIP pools the token of the largest id: argmax of int32 ids).
template <typename T>
void arg_max(const T* x, int64_t outer, int64_t axis_dim, int64_t inner, bool select_last,
             int64_t* y);
// The same for the smallest value (a vector quantizer's nearest code); a NaN counts as the
// smallest (PyTorch's argmin).
template <typename T>
void arg_min(const T* x, int64_t outer, int64_t axis_dim, int64_t inner, bool select_last,
             int64_t* y);

// x viewed as [outer, n, inner]: the k largest values along the middle axis (the k smallest with
// !largest) and their indices, into values and indices [outer, k, inner], best first; equal values
// in index order, NaN counting as larger than any number (ONNX TopK with sorted = 1, as
// torch.topk). 0 <= k <= n.
void top_k(const float* x, int64_t outer, int64_t n, int64_t inner, int64_t k, bool largest,
           float* values, int64_t* indices);
// Its gradient: dx = 0 but at the selected positions, dx[o, indices[o, j, i], i] = dy[o, j, i].
void top_k_backward(const int64_t* indices, const float* dy, int64_t outer, int64_t n,
                    int64_t inner, int64_t k, float* dx, GradMode write = GradMode::kOverwrite);

}  // namespace qforge::kernels
