// Reference element-wise kernels: every output element computed on its own, floats in double.
#include "kernels/reference/elementwise_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

#include "kernels/reference/reference_util.h"

namespace qforge::kernels::reference {
namespace {

int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

}  // namespace

Tensor unary(UnaryOp op, const UnaryParams& params, const Tensor& x) {
  Tensor y(x.dtype(), x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (x.dtype() == DType::kFloat32) {
      set_double(y, i, unary_value(op, params, get_double(x, i)));
      continue;
    }
    const int64_t v = get_int(x, i);
    switch (op) {
      case UnaryOp::kRelu:
        set_int(y, i, std::max<int64_t>(v, 0));
        break;
      case UnaryOp::kNeg:
        set_int(y, i, -v);
        break;
      case UnaryOp::kClip:
        set_int(y, i, std::min(std::max(v, params.int_min), params.int_max));
        break;
      case UnaryOp::kAbs:
        set_int(y, i, v < 0 ? -v : v);
        break;
      case UnaryOp::kSign:
        set_int(y, i, v > 0 ? 1 : v < 0 ? -1 : 0);
        break;
      default:
        throw_internal("reference::unary: op not defined for integers");
    }
  }
  return y;
}

double unary_value(UnaryOp op, const UnaryParams& p, double x) {
  switch (op) {
    case UnaryOp::kRelu:
      return x > 0 ? x : 0;
    case UnaryOp::kLeakyRelu:
      return x >= 0 ? x : static_cast<double>(p.alpha) * x;
    case UnaryOp::kElu:
      return x >= 0 ? x : static_cast<double>(p.alpha) * std::expm1(x);
    case UnaryOp::kSigmoid:
      return 1.0 / (1.0 + std::exp(-x));
    case UnaryOp::kHardSigmoid:
      return std::clamp(p.alpha * x + p.beta, 0.0, 1.0);
    case UnaryOp::kHardSwish:
      return x * std::clamp(x / 6.0 + 0.5, 0.0, 1.0);
    case UnaryOp::kErf:
      return std::erf(x);
    case UnaryOp::kGeluErf:
      return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case UnaryOp::kSilu:
      return x / (1.0 + std::exp(-x));
    case UnaryOp::kGeluTanh:
      return 0.5 * x *
             (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
    case UnaryOp::kTanh:
      return std::tanh(x);
    case UnaryOp::kSqrt:
      return std::sqrt(x);
    case UnaryOp::kNeg:
      return -x;
    case UnaryOp::kClip:
      return std::min<double>(std::max<double>(x, p.min), p.max);
    case UnaryOp::kExp:
      return std::exp(x);
    case UnaryOp::kLog:
      return std::log(x);
    case UnaryOp::kReciprocal:
      return 1.0 / x;
    case UnaryOp::kAbs:
      return std::abs(x);
    case UnaryOp::kSin:
      return std::sin(x);
    case UnaryOp::kCos:
      return std::cos(x);
    case UnaryOp::kFloor:
      return std::floor(x);
    case UnaryOp::kCeil:
      return std::ceil(x);
    case UnaryOp::kRound:
      return std::nearbyint(x);
    case UnaryOp::kSign:
      return x > 0 ? 1.0 : x < 0 ? -1.0 : x;
    case UnaryOp::kSoftplus:
      return std::log(1.0 + std::exp(x));
  }
  return 0;
}

double unary_derivative(UnaryOp op, const UnaryParams& p, double x) {
  const double alpha = p.alpha;
  switch (op) {
    case UnaryOp::kRelu:
      return x > 0 ? 1 : 0;
    case UnaryOp::kLeakyRelu:
      return x > 0 ? 1 : alpha;
    case UnaryOp::kElu:
      return x > 0 ? 1 : alpha * std::exp(x);
    case UnaryOp::kSigmoid: {
      const double s = 1.0 / (1.0 + std::exp(-x));
      return s * (1 - s);
    }
    case UnaryOp::kHardSigmoid: {
      const double u = alpha * x + static_cast<double>(p.beta);
      return (u > 0 && u < 1) ? alpha : 0;
    }
    case UnaryOp::kHardSwish:
      if (x < -3) return 0;
      return x < 3 ? x / 3 + 0.5 : 1;
    case UnaryOp::kErf:
      return 2 / std::sqrt(std::numbers::pi) * std::exp(-x * x);
    case UnaryOp::kGeluErf:
      return 0.5 * (1 + std::erf(x / std::sqrt(2.0))) +
             x * std::exp(-0.5 * x * x) / std::sqrt(2 * std::numbers::pi);
    case UnaryOp::kSilu: {
      const double s = 1.0 / (1.0 + std::exp(-x));
      return s * (1 + x * (1 - s));
    }
    case UnaryOp::kGeluTanh: {
      const double c = std::sqrt(2.0 / std::numbers::pi);
      const double t = std::tanh(c * (x + 0.044715 * x * x * x));
      return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x);
    }
    case UnaryOp::kTanh: {
      const double t = std::tanh(x);
      return 1 - t * t;
    }
    case UnaryOp::kSqrt:
      return 0.5 / std::sqrt(x);
    case UnaryOp::kNeg:
      return -1;
    case UnaryOp::kClip:
      return (x > p.min && x < p.max) ? 1 : 0;
    case UnaryOp::kExp:
      return std::exp(x);
    case UnaryOp::kLog:
      return 1 / x;
    case UnaryOp::kReciprocal:
      return -1 / (x * x);
    case UnaryOp::kAbs:
      return x > 0 ? 1 : x < 0 ? -1 : 0;
    case UnaryOp::kSin:
      return std::cos(x);
    case UnaryOp::kCos:
      return -std::sin(x);
    case UnaryOp::kFloor:
    case UnaryOp::kCeil:
    case UnaryOp::kRound:
    case UnaryOp::kSign:
      return 0;
    case UnaryOp::kSoftplus:
      return 1.0 / (1.0 + std::exp(-x));
  }
  return 0;
}

Tensor unary_backward(UnaryOp op, const UnaryParams& params, const Tensor& x, const Tensor& dy) {
  Tensor dx(DType::kFloat32, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    set_double(dx, i, get_double(dy, i) * unary_derivative(op, params, get_double(x, i)));
  }
  return dx;
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  const Shape out_shape = numpy_broadcast({a.shape(), b.shape()});
  Tensor y(binary_outputs_bool(op) ? DType::kBool : a.dtype(), out_shape);
  const bool floating = a.dtype() == DType::kFloat32;
  for (int64_t i = 0; i < y.numel(); ++i) {
    const Shape index = unravel(i, out_shape);
    const int64_t ia = broadcast_source(index, a.shape());
    const int64_t ib = broadcast_source(index, b.shape());
    if (binary_outputs_bool(op)) {
      const double u = get_double(a, ia);
      const double v = get_double(b, ib);
      bool r = false;
      switch (op) {
        case BinaryOp::kEqual:
          r = u == v;
          break;
        case BinaryOp::kGreater:
          r = u > v;
          break;
        case BinaryOp::kLess:
          r = u < v;
          break;
        case BinaryOp::kGreaterOrEqual:
          r = u >= v;
          break;
        case BinaryOp::kLessOrEqual:
          r = u <= v;
          break;
        case BinaryOp::kAnd:
          r = u != 0 && v != 0;
          break;
        case BinaryOp::kXor:
          r = (u != 0) != (v != 0);
          break;
        default:  // Or
          r = u != 0 || v != 0;
          break;
      }
      set_double(y, i, r ? 1 : 0);
      continue;
    }
    if (floating) {
      const double u = get_double(a, ia);
      const double v = get_double(b, ib);
      double r = 0;
      switch (op) {
        case BinaryOp::kAdd:
          r = u + v;
          break;
        case BinaryOp::kSub:
          r = u - v;
          break;
        case BinaryOp::kMul:
          r = u * v;
          break;
        case BinaryOp::kDiv:
          r = u / v;
          break;
        case BinaryOp::kPow:
          r = std::pow(u, v);
          break;
        case BinaryOp::kFmod:
          r = std::fmod(u, v);
          break;
        case BinaryOp::kMod:
          r = u - v * std::floor(u / v);
          break;
        case BinaryOp::kMax:
          r = std::isnan(u) || std::isnan(v) ? std::nan("") : std::max(u, v);
          break;
        case BinaryOp::kMin:
          r = std::isnan(u) || std::isnan(v) ? std::nan("") : std::min(u, v);
          break;
        case BinaryOp::kPRelu:
          r = u < 0 ? v * u : u;
          break;
        case BinaryOp::kEqual:
        case BinaryOp::kGreater:
        case BinaryOp::kLess:
        case BinaryOp::kGreaterOrEqual:
        case BinaryOp::kLessOrEqual:
        case BinaryOp::kAnd:
        case BinaryOp::kOr:
        case BinaryOp::kXor:
          break;
      }
      set_double(y, i, r);
      continue;
    }
    const int64_t u = get_int(a, ia);
    const int64_t v = get_int(b, ib);
    int64_t r = 0;
    switch (op) {
      case BinaryOp::kAdd:
        r = u + v;
        break;
      case BinaryOp::kSub:
        r = u - v;
        break;
      case BinaryOp::kMul:
        r = u * v;
        break;
      case BinaryOp::kDiv:
        r = u / v;
        break;
      case BinaryOp::kFmod:
        r = u % v;
        break;
      case BinaryOp::kMod:
        r = u - v * floor_div(u, v);
        break;
      case BinaryOp::kPow: {
        r = 1;
        if (v < 0) {
          r = (u == 1 || u == -1) ? (v % 2 == 0 ? 1 : u) : 0;
        } else {
          for (int64_t k = 0; k < v; ++k) r *= u;
        }
        break;
      }
      case BinaryOp::kMax:
        r = std::max(u, v);
        break;
      case BinaryOp::kMin:
        r = std::min(u, v);
        break;
      case BinaryOp::kPRelu:
      case BinaryOp::kEqual:
      case BinaryOp::kGreater:
      case BinaryOp::kLess:
      case BinaryOp::kGreaterOrEqual:
      case BinaryOp::kLessOrEqual:
      case BinaryOp::kAnd:
      case BinaryOp::kOr:
      case BinaryOp::kXor:
        break;
    }
    set_int(y, i, r);
  }
  return y;
}

Tensor where(const Tensor& cond, const Tensor& x, const Tensor& y) {
  const Shape out_shape = numpy_broadcast({cond.shape(), x.shape(), y.shape()});
  Tensor out(x.dtype(), out_shape);
  for (int64_t i = 0; i < out.numel(); ++i) {
    const Shape index = unravel(i, out_shape);
    const bool c = get_double(cond, broadcast_source(index, cond.shape())) != 0;
    if (c) {
      copy_element(x, broadcast_source(index, x.shape()), out, i);
    } else {
      copy_element(y, broadcast_source(index, y.shape()), out, i);
    }
  }
  return out;
}

Tensor logical_not(const Tensor& x) {
  Tensor y(DType::kBool, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) set_double(y, i, get_double(x, i) == 0 ? 1 : 0);
  return y;
}

Tensor cast(const Tensor& x, DType to) {
  Tensor y(to, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (x.dtype() != DType::kFloat32 || to == DType::kFloat32 || to == DType::kBool) {
      if (x.dtype() != DType::kFloat32 && to != DType::kFloat32 && to != DType::kBool) {
        set_int(y, i, get_int(x, i));
      } else {
        set_double(y, i, get_double(x, i));
      }
      continue;
    }
    // Float to integer: truncate, saturate, NaN to 0.
    double v = std::trunc(get_double(x, i));
    double lo = 0;
    double hi = 0;
    switch (to) {
      case DType::kInt64:
        lo = -9223372036854775808.0;
        hi = 9223372036854775807.0;
        break;
      case DType::kInt32:
        lo = std::numeric_limits<int32_t>::min();
        hi = std::numeric_limits<int32_t>::max();
        break;
      case DType::kInt8:
        lo = -128;
        hi = 127;
        break;
      default:
        lo = 0;
        hi = 255;
        break;
    }
    if (std::isnan(v)) {
      set_int(y, i, 0);
    } else if (v >= hi) {
      set_int(y, i,
              to == DType::kInt64 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(hi));
    } else if (v <= lo) {
      set_int(y, i, static_cast<int64_t>(lo));
    } else {
      set_int(y, i, static_cast<int64_t>(v));
    }
  }
  return y;
}

}  // namespace qforge::kernels::reference
