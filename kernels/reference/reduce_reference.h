// Naive references of the reductions of kernels/reduce.h and of Tile: every element located from
// its coordinates, sums in float64. They are the specification the fast kernels are tested
// against.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/tensor.h"

namespace qforge::kernels::reference {

// Reduced over `axes` (distinct, in [0, rank)), with the reduced axes kept as size 1.
Tensor reduce_sum(const Tensor& x, std::span<const int64_t> axes);
Tensor reduce_max(const Tensor& x, std::span<const int64_t> axes);
// √(Σ x²) in float64.
Tensor reduce_l2(const Tensor& x, std::span<const int64_t> axes);
// dy · x / ‖x‖ in float64, 0 where the norm is 0.
Tensor reduce_l2_backward(const Tensor& x, std::span<const int64_t> axes, const Tensor& dy);
// dx for dy of reduce_sum's shape (reduced axes kept as 1).
Tensor reduce_sum_backward(const Tensor& dy, const Shape& x_shape);
// PyTorch's amax backward: dy / (count of ties) at each maximum.
Tensor reduce_max_backward(const Tensor& x, std::span<const int64_t> axes, const Tensor& dy);
// ReduceMin, ReduceL1, ReduceSumSquare, ReduceProd, ReduceLogSum and ReduceLogSumExp from their
// definitions, in float64 (log Σ exp(x) summed directly, no shift).
enum class ReduceOp { kMin, kL1, kSumSquare, kProd, kLogSum, kLogSumExp };
// x given as float64 values of `shape`; one value per output, reduced axes kept as 1.
std::vector<double> reduce_values(const std::vector<double>& x, const Shape& shape,
                                  std::span<const int64_t> axes, ReduceOp op);
Tensor reduce(const Tensor& x, std::span<const int64_t> axes, ReduceOp op);
// PyTorch's gradient of each, in float64: the minima share dy evenly; dy · sign(x); 2 · x · dy;
// dy times the product of the other values; dy / Σ x; dy · exp(x) / Σ exp(x).
Tensor reduce_backward(const Tensor& x, std::span<const int64_t> axes, ReduceOp op,
                       const Tensor& dy);
// ONNX TopK along `axis`: the k best by repeated scans for the best value not yet taken (the
// largest, or the smallest; NaN beyond every number; the lower index among equals). values
// (float32) and indices (int64) of x's shape with k along the axis.
void top_k(const Tensor& x, int64_t axis, int64_t k, bool largest, Tensor& values, Tensor& indices);
// int64 indices along `axis`, kept as size 1.
Tensor arg_max(const Tensor& x, int64_t axis, bool select_last);
// ONNX CumSum along `axis` (float32, int32 or int64): each output summed afresh from its
// coordinates over the axis' positions it covers, in the order the running sum meets them (from
// the axis' start, or its end with `reverse`), float sums in float as PyTorch's cumsum adds them.
Tensor cumulative_sum(const Tensor& x, int64_t axis, bool exclusive, bool reverse);
// ONNX Tile and its gradient (the sum over the repeats).
Tensor tile(const Tensor& x, std::span<const int64_t> repeats);
Tensor tile_backward(const Tensor& dy, const Shape& x_shape);

}  // namespace qforge::kernels::reference
