// Naive reference implementations of the data-movement kernels: every output element located
// from its coordinates. They are the specification the fast kernels are tested against.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/shape_ops.h"
#include "kernels/tensor.h"

namespace qforge::kernels::reference {

Tensor transpose(const Tensor& x, std::span<const int64_t> perm);
// ONNX Slice: starts/ends/axes/steps as the op's inputs (axes and steps may be empty).
Tensor slice(const Tensor& x, std::span<const int64_t> starts, std::span<const int64_t> ends,
             std::span<const int64_t> axes, std::span<const int64_t> steps);
Tensor concat(std::span<const Tensor> inputs, int64_t axis);
// ONNX Split: consecutive parts of `sizes` elements along axis.
std::vector<Tensor> split(const Tensor& x, std::span<const int64_t> sizes, int64_t axis);
Tensor gather(const Tensor& data, const Tensor& indices, int64_t axis);
// ONNX GatherElements: y of the indices' shape, y[c] = data[c with c[axis] = indices[c]].
Tensor gather_elements(const Tensor& data, const Tensor& indices, int64_t axis);
// ONNX GatherND: y[j..., s...] = data[batch(j)..., indices[j..., :]..., s...] over the indices'
// positions j (their first batch_dims dims the data's).
Tensor gather_nd(const Tensor& data, const Tensor& indices, int64_t batch_dims);
// ONNX ScatterElements, its index positions in row-major order: y = data, then y[c with c[axis]
// = indices[c]] = updates[c] (or += with `add`, float32).
Tensor scatter_elements(const Tensor& data, const Tensor& indices, const Tensor& updates,
                        int64_t axis, bool add);
// pads in ONNX layout: all begins, then all ends; constant_value in the tensor's dtype.
Tensor pad(const Tensor& x, std::span<const int64_t> pads, PadMode mode, double constant_value);
Tensor expand(const Tensor& x, std::span<const int64_t> shape);
Tensor scatter_nd(const Tensor& data, const Tensor& indices, const Tensor& updates);
// ONNX Trilu over the last two axes: element (…, i, j) kept where j - i >= k (upper) or
// j - i <= k (lower), zero elsewhere.
Tensor trilu(const Tensor& x, int64_t k, bool upper);

}  // namespace qforge::kernels::reference
