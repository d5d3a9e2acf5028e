#include "kernels/reference/reduce_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/reference/reference_util.h"

namespace qforge::kernels::reference {
namespace {

Shape kept_shape(const Shape& shape, std::span<const int64_t> axes) {
  Shape out = shape;
  for (int64_t a : axes) out[static_cast<size_t>(a)] = 1;
  return out;
}

// The flat index in the reduced tensor of x's element `flat`.
int64_t reduced_index(int64_t flat, const Shape& shape, const Shape& out_shape) {
  Shape index = unravel(flat, shape);
  for (size_t d = 0; d < shape.size(); ++d) {
    if (out_shape[d] == 1) index[d] = 0;
  }
  return ravel(index, out_shape);
}

}  // namespace

Tensor reduce_sum(const Tensor& x, std::span<const int64_t> axes) {
  const Shape out_shape = kept_shape(x.shape(), axes);
  std::vector<double> sum(static_cast<size_t>(shape_numel(out_shape)), 0.0);
  for (int64_t i = 0; i < x.numel(); ++i) {
    sum[static_cast<size_t>(reduced_index(i, x.shape(), out_shape))] += x.data<float>()[i];
  }
  Tensor y(DType::kFloat32, out_shape);
  for (size_t o = 0; o < sum.size(); ++o) y.data<float>()[o] = static_cast<float>(sum[o]);
  return y;
}

Tensor reduce_max(const Tensor& x, std::span<const int64_t> axes) {
  const Shape out_shape = kept_shape(x.shape(), axes);
  Tensor y(DType::kFloat32, out_shape);
  float* m = y.data<float>();
  std::fill(m, m + y.numel(), -std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < x.numel(); ++i) {
    float& slot = m[reduced_index(i, x.shape(), out_shape)];
    const float v = x.data<float>()[i];
    if (std::isnan(v) || v > slot) slot = std::isnan(slot) ? slot : v;
  }
  return y;
}

namespace {

std::vector<double> squares_summed(const Tensor& x, const Shape& out_shape) {
  std::vector<double> sum(static_cast<size_t>(shape_numel(out_shape)), 0.0);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double v = x.data<float>()[i];
    sum[static_cast<size_t>(reduced_index(i, x.shape(), out_shape))] += v * v;
  }
  return sum;
}

}  // namespace

Tensor reduce_l2(const Tensor& x, std::span<const int64_t> axes) {
  const Shape out_shape = kept_shape(x.shape(), axes);
  const std::vector<double> sum = squares_summed(x, out_shape);
  Tensor y(DType::kFloat32, out_shape);
  for (size_t o = 0; o < sum.size(); ++o)
    y.data<float>()[o] = static_cast<float>(std::sqrt(sum[o]));
  return y;
}

Tensor reduce_l2_backward(const Tensor& x, std::span<const int64_t> axes, const Tensor& dy) {
  const Shape out_shape = kept_shape(x.shape(), axes);
  const std::vector<double> sum = squares_summed(x, out_shape);
  Tensor dx(DType::kFloat32, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const auto o = static_cast<size_t>(reduced_index(i, x.shape(), out_shape));
    const double norm = std::sqrt(sum[o]);
    dx.data<float>()[i] =
        norm == 0 ? 0.0f
                  : static_cast<float>(double{dy.data<float>()[o]} * x.data<float>()[i] / norm);
  }
  return dx;
}

namespace {

template <typename T>
void cumulative_sum_into(const Tensor& x, int64_t axis, bool exclusive, bool reverse, Tensor& y) {
  const Shape& s = x.shape();
  int64_t inner = 1;
  for (size_t d = static_cast<size_t>(axis) + 1; d < s.size(); ++d) inner *= s[d];
  const int64_t n = s[static_cast<size_t>(axis)];
  for (int64_t e = 0; e < x.numel(); ++e) {
    const int64_t i = (e / inner) % n;
    const int64_t base = e - i * inner;  // position 0 of this element's line
    // Positions j the sum covers, walked from the axis' start (or end with reverse).
    const int64_t first = reverse ? n - 1 : 0;
    const int64_t step = reverse ? -1 : 1;
    T sum{0};
    for (int64_t j = first; j >= 0 && j < n; j += step) {
      const bool covered = reverse ? (exclusive ? j > i : j >= i) : (exclusive ? j < i : j <= i);
      if (!covered) break;
      if constexpr (std::is_integral_v<T>) {
        using U = std::make_unsigned_t<T>;
        sum = static_cast<T>(static_cast<U>(sum) + static_cast<U>(x.data<T>()[base + j * inner]));
      } else {
        sum += x.data<T>()[base + j * inner];
      }
    }
    y.data<T>()[e] = sum;
  }
}

}  // namespace

Tensor cumulative_sum(const Tensor& x, int64_t axis, bool exclusive, bool reverse) {
  Tensor y(x.dtype(), x.shape());
  switch (x.dtype()) {
    case DType::kFloat32:
      cumulative_sum_into<float>(x, axis, exclusive, reverse, y);
      break;
    case DType::kInt32:
      cumulative_sum_into<int32_t>(x, axis, exclusive, reverse, y);
      break;
    case DType::kInt64:
      cumulative_sum_into<int64_t>(x, axis, exclusive, reverse, y);
      break;
    default:
      throw_internal("reference cumulative_sum: unsupported dtype");
  }
  return y;
}

Tensor reduce_sum_backward(const Tensor& dy, const Shape& x_shape) {
  Tensor dx(DType::kFloat32, x_shape);
  for (int64_t i = 0; i < dx.numel(); ++i) {
    dx.data<float>()[i] = dy.data<float>()[reduced_index(i, x_shape, dy.shape())];
  }
  return dx;
}

Tensor reduce_max_backward(const Tensor& x, std::span<const int64_t> axes, const Tensor& dy) {
  const Tensor m = reduce_max(x, axes);
  std::vector<int64_t> ties(static_cast<size_t>(m.numel()), 0);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t o = reduced_index(i, x.shape(), m.shape());
    if (x.data<float>()[i] == m.data<float>()[o]) ++ties[static_cast<size_t>(o)];
  }
  Tensor dx(DType::kFloat32, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t o = reduced_index(i, x.shape(), m.shape());
    dx.data<float>()[i] =
        x.data<float>()[i] == m.data<float>()[o]
            ? dy.data<float>()[o] / static_cast<float>(ties[static_cast<size_t>(o)])
            : 0.0f;
  }
  return dx;
}

std::vector<double> reduce_values(const std::vector<double>& x, const Shape& shape,
                                  std::span<const int64_t> axes, ReduceOp op) {
  const Shape out_shape = kept_shape(shape, axes);
  const double start = op == ReduceOp::kMin ? INFINITY : op == ReduceOp::kProd ? 1.0 : 0.0;
  std::vector<double> acc(static_cast<size_t>(shape_numel(out_shape)), start);
  for (size_t i = 0; i < x.size(); ++i) {
    double& a = acc[static_cast<size_t>(reduced_index(static_cast<int64_t>(i), shape, out_shape))];
    const double v = x[i];
    switch (op) {
      case ReduceOp::kMin:
        a = std::min(a, v);
        break;
      case ReduceOp::kL1:
        a += std::abs(v);
        break;
      case ReduceOp::kSumSquare:
        a += v * v;
        break;
      case ReduceOp::kProd:
        a *= v;
        break;
      case ReduceOp::kLogSum:
        a += v;
        break;
      case ReduceOp::kLogSumExp:
        a += std::exp(v);
        break;
    }
  }
  if (op == ReduceOp::kLogSum || op == ReduceOp::kLogSumExp) {
    for (double& a : acc) a = std::log(a);
  }
  return acc;
}

Tensor reduce(const Tensor& x, std::span<const int64_t> axes, ReduceOp op) {
  const std::vector<double> xd(x.data<float>(), x.data<float>() + x.numel());
  const std::vector<double> y = reduce_values(xd, x.shape(), axes, op);
  Tensor out(DType::kFloat32, kept_shape(x.shape(), axes));
  for (size_t o = 0; o < y.size(); ++o) out.data<float>()[o] = static_cast<float>(y[o]);
  return out;
}

Tensor reduce_backward(const Tensor& x, std::span<const int64_t> axes, ReduceOp op,
                       const Tensor& dy) {
  const Shape out_shape = kept_shape(x.shape(), axes);
  const std::vector<double> xd(x.data<float>(), x.data<float>() + x.numel());
  const std::vector<double> y = reduce_values(xd, x.shape(), axes, op);
  auto out_of = [&](int64_t i) {
    return static_cast<size_t>(reduced_index(i, x.shape(), out_shape));
  };
  std::vector<double> ties(y.size(), 0.0);
  if (op == ReduceOp::kMin) {
    for (int64_t i = 0; i < x.numel(); ++i)
      ties[out_of(i)] += xd[static_cast<size_t>(i)] == y[out_of(i)];
  }
  Tensor dx(DType::kFloat32, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const size_t o = out_of(i);
    const double v = xd[static_cast<size_t>(i)];
    const double g = dy.data<float>()[o];
    double d = 0.0;
    switch (op) {
      case ReduceOp::kMin:
        d = v == y[o] ? g / ties[o] : 0.0;
        break;
      case ReduceOp::kL1:
        d = v > 0 ? g : v < 0 ? -g : 0.0;
        break;
      case ReduceOp::kSumSquare:
        d = 2.0 * v * g;
        break;
      case ReduceOp::kProd: {
        double others = 1.0;  // the product of every other value of this output
        for (int64_t j = 0; j < x.numel(); ++j) {
          if (j != i && out_of(j) == o) others *= xd[static_cast<size_t>(j)];
        }
        d = g * others;
        break;
      }
      case ReduceOp::kLogSum:
        d = g / std::exp(y[o]);
        break;
      case ReduceOp::kLogSumExp:
        d = g * std::exp(v - y[o]);
        break;
    }
    dx.data<float>()[i] = static_cast<float>(d);
  }
  return dx;
}

void top_k(const Tensor& x, int64_t axis, int64_t k, bool largest, Tensor& values,
           Tensor& indices) {
  Shape out_shape = x.shape();
  const auto a = static_cast<size_t>(axis);
  const int64_t n = out_shape[a];
  out_shape[a] = k;
  values = Tensor(DType::kFloat32, out_shape);
  indices = Tensor(DType::kInt64, out_shape);
  // How a value ranks: NaN beyond every number, on the side of the best values.
  auto better = [&](float v, float w) {
    if (std::isnan(v) || std::isnan(w)) return std::isnan(v) && !std::isnan(w) && largest;
    return largest ? v > w : v < w;
  };
  auto worse_nan = [&](float v, float w) {  // smallest first: a number beats NaN
    return !largest && !std::isnan(v) && std::isnan(w);
  };
  for (int64_t o = 0; o < values.numel(); ++o) {
    Shape at = unravel(o, out_shape);
    if (at[a] != 0) continue;  // each line once, from its first output
    std::vector<bool> taken(static_cast<size_t>(n), false);
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      float best_value = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (taken[static_cast<size_t>(i)]) continue;
        at[a] = i;
        const float v = x.data<float>()[ravel(at, x.shape())];
        if (best < 0 || better(v, best_value) || worse_nan(v, best_value)) {
          best = i;
          best_value = v;
        }
      }
      taken[static_cast<size_t>(best)] = true;
      at[a] = j;
      values.data<float>()[ravel(at, out_shape)] = best_value;
      indices.data<int64_t>()[ravel(at, out_shape)] = best;
    }
  }
}

Tensor arg_max(const Tensor& x, int64_t axis, bool select_last) {
  const int64_t axes[] = {axis};
  const Shape out_shape = kept_shape(x.shape(), axes);
  Tensor y(DType::kInt64, out_shape);
  std::vector<double> best(static_cast<size_t>(y.numel()), 0.0);
  std::vector<bool> seen(best.size(), false);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const Shape index = unravel(i, x.shape());
    const size_t o = static_cast<size_t>(reduced_index(i, x.shape(), out_shape));
    const double v =
        x.dtype() == DType::kFloat32 ? x.data<float>()[i] : static_cast<double>(get_int(x, i));
    const bool take = !seen[o] || (select_last ? v >= best[o] : v > best[o]);
    if (take) {
      best[o] = v;
      seen[o] = true;
      y.data<int64_t>()[o] = index[static_cast<size_t>(axis)];
    }
  }
  return y;
}

Tensor tile(const Tensor& x, std::span<const int64_t> repeats) {
  Shape out_shape = x.shape();
  for (size_t d = 0; d < out_shape.size(); ++d) out_shape[d] *= repeats[d];
  Tensor y(DType::kFloat32, out_shape);
  for (int64_t i = 0; i < y.numel(); ++i) {
    Shape index = unravel(i, out_shape);
    for (size_t d = 0; d < index.size(); ++d) index[d] %= x.shape()[d];
    y.data<float>()[i] = x.data<float>()[ravel(index, x.shape())];
  }
  return y;
}

Tensor tile_backward(const Tensor& dy, const Shape& x_shape) {
  std::vector<double> sum(static_cast<size_t>(shape_numel(x_shape)), 0.0);
  for (int64_t i = 0; i < dy.numel(); ++i) {
    Shape index = unravel(i, dy.shape());
    for (size_t d = 0; d < index.size(); ++d) index[d] %= x_shape[d];
    sum[static_cast<size_t>(ravel(index, x_shape))] += dy.data<float>()[i];
  }
  Tensor dx(DType::kFloat32, x_shape);
  for (size_t i = 0; i < sum.size(); ++i) dx.data<float>()[i] = static_cast<float>(sum[i]);
  return dx;
}

}  // namespace qforge::kernels::reference
