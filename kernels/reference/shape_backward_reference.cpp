// Reference shape op backward: coordinates mapped one element at a time.
#include "kernels/reference/shape_backward_reference.h"

#include <algorithm>

#include "kernels/reference/reference_util.h"

namespace qforge::kernels::reference {

void transpose_backward(const Shape& x_shape, std::span<const int64_t> perm, const double* dy,
                        double* dx) {
  Shape y_shape(perm.size());
  for (size_t d = 0; d < perm.size(); ++d) y_shape[d] = x_shape[static_cast<size_t>(perm[d])];
  const int64_t count = shape_numel(x_shape);
  std::fill_n(dx, count, 0.0);
  for (int64_t i = 0; i < count; ++i) {
    const Shape yc = unravel(i, y_shape);
    Shape xc(x_shape.size());
    for (size_t d = 0; d < perm.size(); ++d) xc[static_cast<size_t>(perm[d])] = yc[d];
    dx[ravel(xc, x_shape)] += dy[i];
  }
}

void slice_backward(const Shape& x_shape, std::span<const SliceRange> ranges, const double* dy,
                    double* dx) {
  Shape y_shape(x_shape.size());
  for (size_t d = 0; d < x_shape.size(); ++d) y_shape[d] = ranges[d].count;
  std::fill_n(dx, shape_numel(x_shape), 0.0);
  const int64_t count = shape_numel(y_shape);
  for (int64_t i = 0; i < count; ++i) {
    const Shape yc = unravel(i, y_shape);
    Shape xc(x_shape.size());
    for (size_t d = 0; d < x_shape.size(); ++d) xc[d] = ranges[d].start + yc[d] * ranges[d].step;
    dx[ravel(xc, x_shape)] += dy[i];
  }
}

void concat_backward(std::span<const Shape> x_shapes, int axis, const double* dy,
                     std::span<double* const> dxs) {
  Shape y_shape = x_shapes[0];
  const size_t ax = static_cast<size_t>(axis);
  y_shape[ax] = 0;
  for (const Shape& s : x_shapes) y_shape[ax] += s[ax];
  for (size_t k = 0; k < x_shapes.size(); ++k) std::fill_n(dxs[k], shape_numel(x_shapes[k]), 0.0);
  const int64_t count = shape_numel(y_shape);
  for (int64_t i = 0; i < count; ++i) {
    Shape c = unravel(i, y_shape);
    size_t k = 0;
    while (c[ax] >= x_shapes[k][ax]) c[ax] -= x_shapes[k++][ax];
    dxs[k][ravel(c, x_shapes[k])] += dy[i];
  }
}

void gather_backward(const Shape& data_shape, int axis, std::span<const int64_t> indices,
                     const double* dy, double* dx) {
  const size_t ax = static_cast<size_t>(axis);
  Shape y_shape = data_shape;
  y_shape[ax] = static_cast<int64_t>(indices.size());
  std::fill_n(dx, shape_numel(data_shape), 0.0);
  const int64_t count = shape_numel(y_shape);
  for (int64_t i = 0; i < count; ++i) {
    Shape c = unravel(i, y_shape);
    c[ax] = indices[static_cast<size_t>(c[ax])];
    dx[ravel(c, data_shape)] += dy[i];
  }
}

void gather_elements_backward(const Shape& data_shape, const Shape& index_shape, int axis,
                              std::span<const int64_t> indices, const double* dy, double* dx) {
  std::fill_n(dx, shape_numel(data_shape), 0.0);
  for (int64_t i = 0; i < shape_numel(index_shape); ++i) {
    Shape c = unravel(i, index_shape);
    c[static_cast<size_t>(axis)] = indices[static_cast<size_t>(i)];
    dx[ravel(c, data_shape)] += dy[i];
  }
}

}  // namespace qforge::kernels::reference
