// Naive float64 references for kernels/shape_backward.h: each dy element added into the x
// element the forward copied it from, found from the op's definition. dx is overwritten.
#pragma once

#include <span>
#include <vector>

#include "kernels/shape_ops.h"
#include "kernels/tensor.h"

namespace qforge::kernels::reference {

void transpose_backward(const Shape& x_shape, std::span<const int64_t> perm, const double* dy,
                        double* dx);
// ranges: one per axis of x, as slice_range gives them.
void slice_backward(const Shape& x_shape, std::span<const SliceRange> ranges, const double* dy,
                    double* dx);
void concat_backward(std::span<const Shape> x_shapes, int axis, const double* dy,
                     std::span<double* const> dxs);
// indices: already in [0, axis_dim).
void gather_backward(const Shape& data_shape, int axis, std::span<const int64_t> indices,
                     const double* dy, double* dx);

// GatherElements: dx[c with c[axis] = indices[c]] += dy[c] over the indices' positions c;
// indices already in [0, axis_dim), of index_shape.
void gather_elements_backward(const Shape& data_shape, const Shape& index_shape, int axis,
                              std::span<const int64_t> indices, const double* dy, double* dx);

}  // namespace qforge::kernels::reference
