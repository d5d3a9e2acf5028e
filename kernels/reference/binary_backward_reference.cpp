// Reference binary op backward: per output element, the partial derivatives by definition.
#include "kernels/reference/binary_backward_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/reference/reference_util.h"

namespace qforge::kernels::reference {
namespace {

// Calls fn(output, a_index, b_index) for every output element.
template <class Fn>
void for_each_pair(const Shape& a_shape, const Shape& b_shape, Fn&& fn) {
  const Shape out = numpy_broadcast({a_shape, b_shape});
  const int64_t count = shape_numel(out);
  for (int64_t i = 0; i < count; ++i) {
    const Shape index = unravel(i, out);
    fn(i, broadcast_source(index, a_shape), broadcast_source(index, b_shape));
  }
}

}  // namespace

void binary_f64(BinaryOp op, const Shape& a_shape, const double* a, const Shape& b_shape,
                const double* b, std::vector<double>& y) {
  y.assign(static_cast<size_t>(shape_numel(numpy_broadcast({a_shape, b_shape}))), 0.0);
  for_each_pair(a_shape, b_shape, [&](int64_t i, int64_t ai, int64_t bi) {
    const double x = a[ai], z = b[bi];
    double v = 0.0;
    switch (op) {
      case BinaryOp::kAdd:
        v = x + z;
        break;
      case BinaryOp::kSub:
        v = x - z;
        break;
      case BinaryOp::kMul:
        v = x * z;
        break;
      case BinaryOp::kDiv:
        v = x / z;
        break;
      case BinaryOp::kPRelu:
        v = x < 0.0 ? z * x : x;
        break;
      case BinaryOp::kPow:
        v = std::pow(x, z);
        break;
      default:
        throw_internal("reference::binary_f64: op without a gradient");
    }
    y[static_cast<size_t>(i)] = v;
  });
}

void binary_backward(BinaryOp op, const Shape& a_shape, const double* a, const Shape& b_shape,
                     const double* b, const double* dy, double* da, double* db) {
  if (da) std::fill_n(da, shape_numel(a_shape), 0.0);
  if (db) std::fill_n(db, shape_numel(b_shape), 0.0);
  for_each_pair(a_shape, b_shape, [&](int64_t i, int64_t ai, int64_t bi) {
    const double g = dy[i], x = a[ai], z = b[bi];
    double ga = 0.0, gb = 0.0;  // ∂y/∂a, ∂y/∂b
    switch (op) {
      case BinaryOp::kAdd:
        ga = 1.0;
        gb = 1.0;
        break;
      case BinaryOp::kSub:
        ga = 1.0;
        gb = -1.0;
        break;
      case BinaryOp::kMul:
        ga = z;
        gb = x;
        break;
      case BinaryOp::kDiv:
        ga = 1.0 / z;
        gb = -x / (z * z);
        break;
      case BinaryOp::kPRelu:  // the slope's side at x = 0, as PyTorch
        ga = x > 0.0 ? 1.0 : z;
        gb = x > 0.0 ? 0.0 : x;
        break;
      case BinaryOp::kPow:  // PyTorch's masks: 0 for a zero exponent, and at a zero base
        ga = z == 0.0 ? 0.0 : z * std::pow(x, z - 1.0);
        gb = x == 0.0 && z >= 0.0 ? 0.0 : std::pow(x, z) * std::log(x);
        break;
      default:
        throw_internal("reference::binary_backward: op without a gradient");
    }
    if (da) da[ai] += g * ga;
    if (db) db[bi] += g * gb;
  });
}

namespace {

// Calls fn(output, sources) for every output element, sources[i] the element of input i read.
template <class Fn>
void for_each_source(const std::vector<Shape>& shapes, Fn&& fn) {
  const Shape out = numpy_broadcast(shapes);
  std::vector<int64_t> sources(shapes.size());
  for (int64_t o = 0; o < shape_numel(out); ++o) {
    const Shape index = unravel(o, out);
    for (size_t i = 0; i < shapes.size(); ++i) sources[i] = broadcast_source(index, shapes[i]);
    fn(o, sources);
  }
}

double extremum_at(bool is_max, const std::vector<const double*>& inputs,
                   const std::vector<int64_t>& sources) {
  double y =
      is_max ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < inputs.size(); ++i) {
    const double v = inputs[i][sources[i]];
    if (std::isnan(v)) return v;
    y = is_max ? std::max(y, v) : std::min(y, v);
  }
  return y;
}

}  // namespace

std::vector<double> extremum_f64(bool is_max, const std::vector<Shape>& shapes,
                                 const std::vector<const double*>& inputs) {
  std::vector<double> y(static_cast<size_t>(shape_numel(numpy_broadcast(shapes))));
  for_each_source(shapes, [&](int64_t o, const std::vector<int64_t>& sources) {
    y[static_cast<size_t>(o)] = extremum_at(is_max, inputs, sources);
  });
  return y;
}

void extremum_backward(bool is_max, const std::vector<Shape>& shapes,
                       const std::vector<const double*>& inputs, const double* dy,
                       const std::vector<double*>& dx) {
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (dx[i]) std::fill_n(dx[i], shape_numel(shapes[i]), 0.0);
  }
  for_each_source(shapes, [&](int64_t o, const std::vector<int64_t>& sources) {
    const double y = extremum_at(is_max, inputs, sources);
    int equal = 0;
    for (size_t i = 0; i < inputs.size(); ++i) equal += inputs[i][sources[i]] == y ? 1 : 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!dx[i]) continue;
      const double v = inputs[i][sources[i]];
      if (std::isnan(y)) {
        dx[i][sources[i]] += dy[o];
      } else if (v == y) {
        dx[i][sources[i]] += dy[o] / equal;
      }
    }
  });
}

}  // namespace qforge::kernels::reference
