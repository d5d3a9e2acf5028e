// Element-wise kernels. Every element's result is computed by the same scalar expression whether
// the compiler vectorises its loop or not, and chunks are fixed-size, so results never depend on
// chunking, thread count or batch size.
#include "kernels/elementwise.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "kernels/parallel.h"
#include "kernels/strided_index.h"
#include "kernels/vector_math.h"

namespace qforge::kernels {
namespace {

// Elements per parallel task: big enough to amortise scheduling, a multiple of every SIMD width.
constexpr int64_t kChunk = int64_t{1} << 14;

template <class Fn>
void for_each_chunk(int64_t n, Fn&& fn) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) fn(c * kChunk, std::min(n, (c + 1) * kChunk));
  });
}

// Runs of `run` elements processed in parallel blocks of about kChunk elements.
template <class Fn>
void for_each_run_block(int64_t runs, int64_t run, Fn&& fn) {
  const int64_t per_block = std::max<int64_t>(1, kChunk / std::max<int64_t>(run, 1));
  const int64_t blocks = (runs + per_block - 1) / per_block;
  parallel_for(blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t blk = first; blk < last; ++blk) {
      fn(blk * per_block, std::min(runs, (blk + 1) * per_block));
    }
  });
}

inline float clamp01(float v) {
  v = v < 0.0f ? 0.0f : v;
  return v > 1.0f ? 1.0f : v;
}

// Unary ------------------------------------------------------------------------------------------

template <class F>
void map_f32(const float* x, float* y, int64_t n, F f) {
  for_each_chunk(n, [x, y, &f](int64_t begin, int64_t end) {
    // Local copies: stores to y could otherwise alias the captured parameters and block SIMD.
    const F fn = f;
    const float* xs = x + begin;
    float* ys = y + begin;
    const int64_t len = end - begin;
    for (int64_t i = 0; i < len; ++i) ys[i] = fn(xs[i]);
  });
}

template <class T>
void unary_integer(UnaryOp op, const UnaryParams& p, const T* x, T* y, int64_t n) {
  using U = std::make_unsigned_t<T>;
  const T lo = static_cast<T>(
      std::clamp<int64_t>(p.int_min, std::numeric_limits<T>::min(), std::numeric_limits<T>::max()));
  const T hi = static_cast<T>(
      std::clamp<int64_t>(p.int_max, std::numeric_limits<T>::min(), std::numeric_limits<T>::max()));
  for_each_chunk(n, [&](int64_t begin, int64_t end) {
    switch (op) {
      case UnaryOp::kRelu:
        for (int64_t i = begin; i < end; ++i) y[i] = x[i] < 0 ? T{0} : x[i];
        break;
      case UnaryOp::kNeg:  // wraps at the minimum, as two's complement does
        for (int64_t i = begin; i < end; ++i) y[i] = static_cast<T>(U{0} - static_cast<U>(x[i]));
        break;
      case UnaryOp::kClip:
        for (int64_t i = begin; i < end; ++i) y[i] = std::min(std::max(x[i], lo), hi);
        break;
      case UnaryOp::kAbs:  // the minimum stays itself, as two's complement wraps
        for (int64_t i = begin; i < end; ++i) {
          y[i] = x[i] < 0 ? static_cast<T>(U{0} - static_cast<U>(x[i])) : x[i];
        }
        break;
      case UnaryOp::kSign:
        for (int64_t i = begin; i < end; ++i) y[i] = static_cast<T>((x[i] > 0) - (x[i] < 0));
        break;
      default:
        throw_internal("unary: integer op not supported");
    }
  });
}

// Broadcast loops ------------------------------------------------------------------------------

template <class TA, class TB, class R, class Op>
inline void loop_vv(const TA* a, const TB* b, R* y, int64_t n, Op op) {
  for (int64_t i = 0; i < n; ++i) y[i] = op(a[i], b[i]);
}
template <class TA, class TB, class R, class Op>
inline void loop_vs(const TA* a, TB b, R* y, int64_t n, Op op) {
  for (int64_t i = 0; i < n; ++i) y[i] = op(a[i], b);
}
template <class TA, class TB, class R, class Op>
inline void loop_sv(TA a, const TB* b, R* y, int64_t n, Op op) {
  for (int64_t i = 0; i < n; ++i) y[i] = op(a, b[i]);
}
template <class TA, class TB, class R, class Op>
inline void loop_row(const TA* a, int64_t sa, const TB* b, int64_t sb, R* y, int64_t n, Op op) {
  if (sa == 1 && sb == 1) {
    loop_vv(a, b, y, n, op);
  } else if (sa == 1) {
    loop_vs(a, *b, y, n, op);
  } else if (sb == 1) {
    loop_sv(*a, b, y, n, op);
  } else {
    std::fill_n(y, n, op(*a, *b));
  }
}

// Calls row(index, out_pos, len) for the pieces of [begin, end) that lie in one innermost row;
// index.offset(k) is input k's element offset at out_pos.
template <int kInputs, class RowFn>
void for_each_row_piece(const BroadcastPlan& plan, int64_t begin, int64_t end, RowFn&& row) {
  std::array<const int64_t*, kInputs> strides{};
  for (int k = 0; k < kInputs; ++k) strides[k] = plan.strides[static_cast<size_t>(k)].data();
  StridedIndex<kInputs> index(plan.dims, strides, begin);
  const int64_t inner = plan.dims.back();
  int64_t pos = begin;
  while (pos < end) {
    const int64_t len = std::min(inner - index.inner_index(), end - pos);
    row(index, pos, len);
    pos += len;
    if (pos < end) index.next_row();
  }
}

template <class TA, class TB, class R, class Op>
void run_binary(const BroadcastPlan& plan, const TA* a, const TB* b, R* y, Op op) {
  const int64_t n = plan.numel;
  if (n == 0) return;
  switch (plan.kind) {
    case BroadcastKind::kSame:
      for_each_chunk(n, [&](int64_t s, int64_t e) { loop_vv(a + s, b + s, y + s, e - s, op); });
      return;
    case BroadcastKind::kScalar:
      if (plan.full_input == 0) {
        const TB bs = b[0];
        for_each_chunk(n, [&](int64_t s, int64_t e) { loop_vs(a + s, bs, y + s, e - s, op); });
      } else {
        const TA as = a[0];
        for_each_chunk(n, [&](int64_t s, int64_t e) { loop_sv(as, b + s, y + s, e - s, op); });
      }
      return;
    case BroadcastKind::kRow: {
      const int64_t d = plan.channels;
      for_each_run_block(n / d, d, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          if (plan.full_input == 0) {
            loop_vv(a + r * d, b, y + r * d, d, op);
          } else {
            loop_vv(a, b + r * d, y + r * d, d, op);
          }
        }
      });
      return;
    }
    case BroadcastKind::kChannel: {
      const int64_t c = plan.channels;
      const int64_t inner = plan.inner;
      for_each_run_block(n / inner, inner, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t ch = r % c;
          if (plan.full_input == 0) {
            loop_vs(a + r * inner, b[ch], y + r * inner, inner, op);
          } else {
            loop_sv(a[ch], b + r * inner, y + r * inner, inner, op);
          }
        }
      });
      return;
    }
    case BroadcastKind::kGeneral: {
      const int axis = static_cast<int>(plan.dims.size()) - 1;
      const int64_t sa = plan.strides[0][axis];
      const int64_t sb = plan.strides[1][axis];
      for_each_chunk(n, [&](int64_t s, int64_t e) {
        for_each_row_piece<2>(plan, s, e, [&](const auto& at, int64_t pos, int64_t len) {
          loop_row(a + at.offset(0), sa, b + at.offset(1), sb, y + pos, len, op);
        });
      });
      return;
    }
  }
}

// Binary functors ------------------------------------------------------------------------------

struct AddOp {
  template <class T>
  T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      using U = std::make_unsigned_t<T>;  // overflow wraps instead of being undefined
      return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
    } else {
      return a + b;
    }
  }
};
struct SubOp {
  template <class T>
  T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      using U = std::make_unsigned_t<T>;
      return static_cast<T>(static_cast<U>(a) - static_cast<U>(b));
    } else {
      return a - b;
    }
  }
};
struct MulOp {
  template <class T>
  T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      using U = std::make_unsigned_t<T>;
      return static_cast<T>(static_cast<U>(a) * static_cast<U>(b));
    } else {
      return a * b;
    }
  }
};
// Integer Div/Mod/Fmod run after a check that no divisor is zero.
struct DivOp {
  template <class T>
  T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      using U = std::make_unsigned_t<T>;
      if (b == -1) return static_cast<T>(U{0} - static_cast<U>(a));  // min / -1 wraps
      return static_cast<T>(a / b);
    } else {
      return a / b;
    }
  }
};
struct FmodOp {
  template <class T>
  T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      return b == -1 ? T{0} : static_cast<T>(a % b);
    } else {
      return std::fmod(a, b);
    }
  }
};
struct ModOp {
  template <class T>
  T operator()(T a, T b) const {
    T r = FmodOp{}(a, b);
    if (r != 0 && ((r < 0) != (b < 0))) r = static_cast<T>(r + b);
    return r;
  }
};
struct EqualOp {
  template <class T>
  uint8_t operator()(T a, T b) const {
    return a == b ? 1 : 0;
  }
};
struct GreaterOp {
  template <class T>
  uint8_t operator()(T a, T b) const {
    return a > b ? 1 : 0;
  }
};
struct LessOp {
  template <class T>
  uint8_t operator()(T a, T b) const {
    return a < b ? 1 : 0;
  }
};
struct GreaterOrEqualOp {
  template <class T>
  uint8_t operator()(T a, T b) const {
    return a >= b ? 1 : 0;
  }
};
struct LessOrEqualOp {
  template <class T>
  uint8_t operator()(T a, T b) const {
    return a <= b ? 1 : 0;
  }
};
struct AndOp {
  template <class T>
  uint8_t operator()(T a, T b) const {
    return a != T{0} && b != T{0} ? 1 : 0;
  }
};
struct OrOp {
  template <class T>
  uint8_t operator()(T a, T b) const {
    return a != T{0} || b != T{0} ? 1 : 0;
  }
};

struct XorOp {
  template <class T>
  uint8_t operator()(T a, T b) const {
    return (a != T{0}) != (b != T{0}) ? 1 : 0;
  }
};
struct PReluOp {
  float operator()(float x, float slope) const { return x < 0.0f ? slope * x : x; }
};
// NaN wins, as in ONNX Runtime and torch.maximum / torch.minimum.
struct MaxOp {
  template <class T>
  T operator()(T a, T b) const {
    if (a != a || b != b) return a + b;  // NaN (never taken for integers)
    return a < b ? b : a;
  }
};
struct MinOp {
  template <class T>
  T operator()(T a, T b) const {
    if (a != a || b != b) return a + b;
    return b < a ? b : a;
  }
};

struct PowOp {
  template <class TB>
  float operator()(float a, TB b) const {
    return pow_f32(a, static_cast<float>(b));
  }
  template <class T>
  T operator()(T base, T exp) const requires std::is_integral_v<T> {
    using U = std::make_unsigned_t<T>;
    if (exp < 0) {  // the integer part of base^exp
      if (base == 1) return 1;
      if (base == -1) return (exp % 2 == 0) ? T{1} : T{-1};
      return 0;
    }
    U result = 1;
    U factor = static_cast<U>(base);
    for (auto e = static_cast<U>(exp); e != 0; e >>= 1) {
      if (e & 1U) result *= factor;
      factor *= factor;
    }
    return static_cast<T>(result);
  }
};

template <class T>
void check_nonzero_divisor(const Tensor& b) {
  for (T v : b.span<T>()) {
    if (v == 0) throw_invalid("expected nonzero integer divisors, got 0");
  }
}

template <class Fn>
void visit_numeric(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      fn(float{});
      return;
    case DType::kInt64:
      fn(int64_t{});
      return;
    case DType::kInt32:
      fn(int32_t{});
      return;
    case DType::kInt8:
      fn(int8_t{});
      return;
    case DType::kUInt8:
    case DType::kBool:
      fn(uint8_t{});
      return;
  }
}

template <class T>
const T* typed(const Tensor& t) {
  return static_cast<const T*>(t.raw());
}
template <class T>
T* typed(Tensor& t) {
  return static_cast<T*>(t.raw());
}

template <class T>
void binary_typed(BinaryOp op, const BroadcastPlan& plan, const Tensor& a, const Tensor& b,
                  Tensor& y) {
  const T* pa = typed<T>(a);
  const T* pb = typed<T>(b);
  switch (op) {
    case BinaryOp::kEqual:
      run_binary(plan, pa, pb, typed<uint8_t>(y), EqualOp{});
      return;
    case BinaryOp::kGreater:
      run_binary(plan, pa, pb, typed<uint8_t>(y), GreaterOp{});
      return;
    case BinaryOp::kLess:
      run_binary(plan, pa, pb, typed<uint8_t>(y), LessOp{});
      return;
    case BinaryOp::kGreaterOrEqual:
      run_binary(plan, pa, pb, typed<uint8_t>(y), GreaterOrEqualOp{});
      return;
    case BinaryOp::kLessOrEqual:
      run_binary(plan, pa, pb, typed<uint8_t>(y), LessOrEqualOp{});
      return;
    case BinaryOp::kAnd:
      run_binary(plan, pa, pb, typed<uint8_t>(y), AndOp{});
      return;
    case BinaryOp::kOr:
      run_binary(plan, pa, pb, typed<uint8_t>(y), OrOp{});
      return;
    case BinaryOp::kXor:
      run_binary(plan, pa, pb, typed<uint8_t>(y), XorOp{});
      return;
    default:
      break;
  }
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, int64_t> ||
                std::is_same_v<T, int32_t>) {
    T* py = typed<T>(y);
    switch (op) {
      case BinaryOp::kAdd:
        run_binary(plan, pa, pb, py, AddOp{});
        return;
      case BinaryOp::kSub:
        run_binary(plan, pa, pb, py, SubOp{});
        return;
      case BinaryOp::kMul:
        run_binary(plan, pa, pb, py, MulOp{});
        return;
      case BinaryOp::kDiv:
        if constexpr (std::is_integral_v<T>) check_nonzero_divisor<T>(b);
        run_binary(plan, pa, pb, py, DivOp{});
        return;
      case BinaryOp::kMod:
        if constexpr (std::is_integral_v<T>) check_nonzero_divisor<T>(b);
        run_binary(plan, pa, pb, py, ModOp{});
        return;
      case BinaryOp::kFmod:
        if constexpr (std::is_integral_v<T>) check_nonzero_divisor<T>(b);
        run_binary(plan, pa, pb, py, FmodOp{});
        return;
      case BinaryOp::kPow:
        if constexpr (std::is_same_v<T, float>) {
          // A constant exponent of 2 or 1 is the common case: keep its loop vectorisable.
          if (plan.kind == BroadcastKind::kScalar && plan.full_input == 0 && pb[0] == 2.0f) {
            run_binary(plan, pa, pb, py, [](float u, float) { return u * u; });
            return;
          }
        }
        run_binary(plan, pa, pb, py, PowOp{});
        return;
      case BinaryOp::kMax:
        run_binary(plan, pa, pb, py, MaxOp{});
        return;
      case BinaryOp::kMin:
        run_binary(plan, pa, pb, py, MinOp{});
        return;
      case BinaryOp::kPRelu:
        if constexpr (std::is_same_v<T, float>) {
          run_binary(plan, pa, pb, py, PReluOp{});
          return;
        }
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
  }
  throw_internal("binary: op not supported for " + a.describe());
}

template <class T>
void where_typed(const BroadcastPlan& plan, const uint8_t* c, const T* x, const T* y, T* out) {
  const int64_t n = plan.numel;
  if (n == 0) return;
  if (plan.kind == BroadcastKind::kSame) {
    for_each_chunk(n, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) out[i] = c[i] ? x[i] : y[i];
    });
    return;
  }
  const int axis = static_cast<int>(plan.dims.size()) - 1;
  const int64_t sc = plan.strides[0][axis];
  const int64_t sx = plan.strides[1][axis];
  const int64_t sy = plan.strides[2][axis];
  for_each_chunk(n, [&](int64_t s, int64_t e) {
    for_each_row_piece<3>(plan, s, e, [&](const auto& at, int64_t pos, int64_t len) {
      const uint8_t* cr = c + at.offset(0);
      const T* xr = x + at.offset(1);
      const T* yr = y + at.offset(2);
      T* o = out + pos;
      for (int64_t i = 0; i < len; ++i) o[i] = cr[i * sc] ? xr[i * sx] : yr[i * sy];
    });
  });
}

template <class S, class D>
D convert(S v) {
  if constexpr (std::is_floating_point_v<S> && std::is_integral_v<D>) {
    const double d = static_cast<double>(v);
    if (d != d) return D{0};
    // max() of int64 rounds up to 2^63 as a double, which is still the first value out of range.
    if (d >= static_cast<double>(std::numeric_limits<D>::max())) {
      return std::numeric_limits<D>::max();
    }
    if (d <= static_cast<double>(std::numeric_limits<D>::min())) {
      return std::numeric_limits<D>::min();
    }
    return static_cast<D>(v);
  } else {
    return static_cast<D>(v);
  }
}

// The float32 activation table: each op's forward y = f(x) and, beside it, its backward
// dx = dy · f'(x), both written as branch-free selects so that loops over them vectorise. Kinks
// follow PyTorch's autograd (see elementwise.h). unary_f32 and unary_backward_f32 both read it.
template <class Forward, class Backward>
struct UnaryRule {
  Forward forward;    // float(float x)
  Backward backward;  // float(float x, float dy)
};
template <class Forward, class Backward>
UnaryRule(Forward, Backward) -> UnaryRule<Forward, Backward>;

inline float sigmoid_f32(float v) {
  return 1.0f / (1.0f + exp_approx(-v));
}

template <class Fn>
void with_unary_rule(UnaryOp op, const UnaryParams& p, Fn&& fn) {
  const float alpha = p.alpha;
  const float beta = p.beta;
  constexpr float kSqrt2 = 1.41421356237309504880f;  // GELU's Div node constant, √2 in float
  constexpr float kInvSqrt2Pi = 0.398942280401432677940f;
  constexpr float kTwoOverSqrtPi = 1.12837916709551257390f;
  constexpr float kSqrtTwoOverPi = 0.797884560802865355880f;
  constexpr float kGeluCubic = 0.044715f;
  switch (op) {
    case UnaryOp::kRelu:
      fn(UnaryRule{[](float v) { return v < 0.0f ? 0.0f : v; },
                   [](float v, float g) { return v > 0.0f ? g : 0.0f; }});
      return;
    case UnaryOp::kLeakyRelu:
      fn(UnaryRule{[alpha](float v) { return v < 0.0f ? alpha * v : v; },
                   [alpha](float v, float g) { return v > 0.0f ? g : alpha * g; }});
      return;
    case UnaryOp::kElu:
      fn(UnaryRule{[alpha](float v) { return v < 0.0f ? alpha * expm1_approx(v) : v; },
                   [alpha](float v, float g) {
                     const float below = g * (alpha * exp_approx(v));
                     return v > 0.0f ? g : below;
                   }});
      return;
    case UnaryOp::kSigmoid:
      fn(UnaryRule{[](float v) { return 1.0f / (1.0f + exp_approx(-v)); },
                   [](float v, float g) {
                     const float s = sigmoid_f32(v);
                     return g * (1.0f - s) * s;
                   }});
      return;
    case UnaryOp::kHardSigmoid:
      fn(UnaryRule{[alpha, beta](float v) { return clamp01(alpha * v + beta); },
                   [alpha, beta](float v, float g) {
                     const float u = alpha * v + beta;
                     return (u > 0.0f && u < 1.0f) ? g * alpha : 0.0f;
                   }});
      return;
    case UnaryOp::kHardSwish:
      fn(UnaryRule{[](float v) { return v * clamp01(v * (1.0f / 6.0f) + 0.5f); },
                   [](float v, float g) {
                     const float mid = g * (v / 3.0f + 0.5f);
                     const float upper = v < 3.0f ? mid : g;
                     return v < -3.0f ? 0.0f : upper;
                   }});
      return;
    case UnaryOp::kErf:
      fn(UnaryRule{[](float v) { return erf_approx(v); },
                   [](float v, float g) { return g * (kTwoOverSqrtPi * exp_approx(-(v * v))); }});
      return;
    case UnaryOp::kGeluErf:
      fn(UnaryRule{[](float v) { return (v * (erf_approx(v / kSqrt2) + 1.0f)) * 0.5f; },
                   [](float v, float g) {
                     const float cdf = 0.5f * (1.0f + erf_approx(v / kSqrt2));
                     const float pdf = kInvSqrt2Pi * exp_approx(-0.5f * (v * v));
                     return g * (cdf + v * pdf);
                   }});
      return;
    case UnaryOp::kGeluTanh:
      fn(UnaryRule{[](float v) {
                     const float t = tanh_approx(kSqrtTwoOverPi * (v + kGeluCubic * (v * v * v)));
                     return (0.5f * v) * (1.0f + t);
                   },
                   [](float v, float g) {
                     const float t = tanh_approx(kSqrtTwoOverPi * (v + kGeluCubic * (v * v * v)));
                     const float inner = kSqrtTwoOverPi * (1.0f + 3.0f * kGeluCubic * (v * v));
                     return g * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * inner);
                   }});
      return;
    case UnaryOp::kSilu:
      fn(UnaryRule{[](float v) { return v * (1.0f / (1.0f + exp_approx(-v))); },
                   [](float v, float g) {
                     const float s = sigmoid_f32(v);
                     return g * (s * (1.0f + v * (1.0f - s)));
                   }});
      return;
    case UnaryOp::kTanh:
      fn(UnaryRule{[](float v) { return tanh_approx(v); },
                   [](float v, float g) {
                     const float t = tanh_approx(v);
                     return g * (1.0f - t * t);
                   }});
      return;
    case UnaryOp::kSqrt:
      // Correctly rounded, so identical in any loop. It stays scalar while sqrt may set errno
      // (GCC vectorises it only under -fno-math-errno); Eigen's packet sqrt is an approximation.
      fn(UnaryRule{[](float v) { return std::sqrt(v); },
                   [](float v, float g) { return g / (2.0f * std::sqrt(v)); }});
      return;
    case UnaryOp::kNeg:
      fn(UnaryRule{[](float v) { return -v; }, [](float, float g) { return -g; }});
      return;
    case UnaryOp::kExp:
      fn(UnaryRule{[](float v) { return exp_approx(v); },
                   [](float v, float g) { return g * exp_approx(v); }});
      return;
    case UnaryOp::kLog:
      // std::log, scalar like std::sqrt above: the same bits in any loop.
      fn(UnaryRule{[](float v) { return std::log(v); }, [](float v, float g) { return g / v; }});
      return;
    case UnaryOp::kSin:
      // std::sin and std::cos, scalar like std::log: the same bits in any loop. Modern decoder
      // exports compute their rotary tables from the position ids at run time.
      fn(UnaryRule{[](float v) { return std::sin(v); },
                   [](float v, float g) { return g * std::cos(v); }});
      return;
    case UnaryOp::kCos:
      fn(UnaryRule{[](float v) { return std::cos(v); },
                   [](float v, float g) { return -g * std::sin(v); }});
      return;
    case UnaryOp::kFloor:
      fn(UnaryRule{[](float v) { return std::floor(v); }, [](float, float) { return 0.0f; }});
      return;
    case UnaryOp::kCeil:
      fn(UnaryRule{[](float v) { return std::ceil(v); }, [](float, float) { return 0.0f; }});
      return;
    case UnaryOp::kRound:
      fn(UnaryRule{[](float v) { return std::nearbyint(v); }, [](float, float) { return 0.0f; }});
      return;
    case UnaryOp::kSign:
      fn(UnaryRule{[](float v) { return v > 0.0f   ? 1.0f
                                        : v < 0.0f ? -1.0f
                                                   : v; },
                   [](float, float) { return 0.0f; }});
      return;
    case UnaryOp::kAbs:
      // The gradient sign(x)·dy, 0 at 0 (PyTorch's).
      fn(UnaryRule{[](float v) { return std::fabs(v); },
                   [](float v, float g) { return v > 0.0f   ? g
                                                 : v < 0.0f ? -g
                                                            : 0.0f; }});
      return;
    case UnaryOp::kReciprocal:
      // A division, correctly rounded; the gradient as PyTorch's, -dy · y² with y = 1 / x.
      fn(UnaryRule{[](float v) { return 1.0f / v; },
                   [](float v, float g) {
                     const float y = 1.0f / v;
                     return -g * (y * y);
                   }});
      return;
    case UnaryOp::kSoftplus:
      // max(x, 0) + ln(1 + e^-|x|): no overflow for large x, exact log1p for small terms.
      fn(UnaryRule{[](float v) {
                     const float a = v < 0.0f ? -v : v;
                     return (v > 0.0f ? v : 0.0f) + std::log1p(exp_approx(-a));
                   },
                   [](float v, float g) { return g * sigmoid_f32(v); }});
      return;
    case UnaryOp::kClip: {
      const float lo = p.min;
      const float hi = p.max;
      fn(UnaryRule{[lo, hi](float v) {
                     v = v < lo ? lo : v;
                     return hi < v ? hi : v;
                   },
                   [lo, hi](float v, float g) { return (v > lo && v < hi) ? g : 0.0f; }});
      return;
    }
  }
}

// y[i] = f(a[i], b[i]), or y[i] += f(a[i], b[i]) when accumulating, in fixed chunks; y may equal
// a or b.
template <bool kAccumulate, class F>
void map2_f32(const float* a, const float* b, float* y, int64_t n, F f) {
  for_each_chunk(n, [a, b, y, &f](int64_t begin, int64_t end) {
    const F fn = f;
    const float* as = a + begin;
    const float* bs = b + begin;
    float* ys = y + begin;
    const int64_t len = end - begin;
    if constexpr (kAccumulate) {
      for (int64_t i = 0; i < len; ++i) ys[i] += fn(as[i], bs[i]);
    } else {
      for (int64_t i = 0; i < len; ++i) ys[i] = fn(as[i], bs[i]);
    }
  });
}

}  // namespace

bool unary_supports(UnaryOp op, DType dtype) {
  if (dtype == DType::kFloat32) return true;
  const bool signed_int = dtype == DType::kInt64 || dtype == DType::kInt32 || dtype == DType::kInt8;
  return signed_int && (op == UnaryOp::kRelu || op == UnaryOp::kNeg || op == UnaryOp::kClip ||
                        op == UnaryOp::kAbs || op == UnaryOp::kSign);
}

void unary_f32(UnaryOp op, const UnaryParams& p, const float* x, float* y, int64_t n) {
  with_unary_rule(op, p, [&](const auto& rule) { map_f32(x, y, n, rule.forward); });
}

void unary_rows_f32(UnaryOp op, const UnaryParams& p, float* y, int64_t rows, int64_t count,
                    int64_t ld) {
  with_unary_rule(op, p, [&](const auto& rule) {
    const auto fn = rule.forward;
    for (int64_t r = 0; r < rows; ++r) {
      float* yr = y + r * ld;
      for (int64_t i = 0; i < count; ++i) yr[i] = fn(yr[i]);
    }
  });
}

void unary_backward_f32(UnaryOp op, const UnaryParams& p, const float* x, const float* dy,
                        float* dx, int64_t n, GradMode mode) {
  with_unary_rule(op, p, [&](const auto& rule) {
    if (mode == GradMode::kAccumulate) {
      map2_f32<true>(x, dy, dx, n, rule.backward);
    } else {
      map2_f32<false>(x, dy, dx, n, rule.backward);
    }
  });
}

void unary(UnaryOp op, const UnaryParams& params, const Tensor& x, Tensor& y) {
  if (x.dtype() != y.dtype() || x.numel() != y.numel() || !unary_supports(op, x.dtype())) {
    throw_internal("unary: " + x.describe() + " into " + y.describe());
  }
  switch (x.dtype()) {
    case DType::kFloat32:
      unary_f32(op, params, x.data<float>(), y.data<float>(), x.numel());
      return;
    case DType::kInt64:
      unary_integer(op, params, x.data<int64_t>(), y.data<int64_t>(), x.numel());
      return;
    case DType::kInt32:
      unary_integer(op, params, x.data<int32_t>(), y.data<int32_t>(), x.numel());
      return;
    case DType::kInt8:
      unary_integer(op, params, x.data<int8_t>(), y.data<int8_t>(), x.numel());
      return;
    default:
      break;
  }
  throw_internal("unary: unsupported dtype " + x.describe());
}

std::optional<Shape> broadcast_shape(std::span<const Shape> shapes) {
  size_t rank = 0;
  for (const Shape& s : shapes) rank = std::max(rank, s.size());
  Shape out(rank, 1);
  for (const Shape& s : shapes) {
    const size_t offset = rank - s.size();
    for (size_t i = 0; i < s.size(); ++i) {
      int64_t& o = out[offset + i];
      const int64_t d = s[i];
      if (d == o || d == 1) continue;
      if (o != 1) return std::nullopt;
      o = d;
    }
  }
  return out;
}

BroadcastPlan plan_broadcast(std::span<const Shape> input_shapes) {
  if (input_shapes.empty() || input_shapes.size() > kMaxBroadcastInputs) {
    throw_internal("plan_broadcast: expected 1 to 3 inputs");
  }
  std::optional<Shape> out = broadcast_shape(input_shapes);
  if (!out) throw_internal("plan_broadcast: shapes do not broadcast");
  BroadcastPlan plan;
  plan.out_shape = *out;
  plan.numel = shape_numel(plan.out_shape);
  const size_t inputs = input_shapes.size();
  const size_t rank = plan.out_shape.size();

  // Element strides of each input over the output's axes (0 where it broadcasts).
  std::vector<std::vector<int64_t>> full(inputs, std::vector<int64_t>(rank, 0));
  for (size_t k = 0; k < inputs; ++k) {
    const Shape& s = input_shapes[k];
    const size_t offset = rank - s.size();
    int64_t stride = 1;
    for (size_t d = rank; d-- > offset;) {
      const int64_t size = s[d - offset];
      full[k][d] = size == 1 ? 0 : stride;
      stride *= size;
    }
  }
  // Merge neighbouring axes that every input steps through as one.
  plan.strides.assign(inputs, {});
  for (size_t d = 0; d < rank; ++d) {
    const int64_t size = plan.out_shape[d];
    if (size == 1) continue;
    bool merge = !plan.dims.empty();
    for (size_t k = 0; merge && k < inputs; ++k) {
      merge = plan.strides[k].back() == full[k][d] * size;
    }
    if (merge) {
      plan.dims.back() *= size;
      for (size_t k = 0; k < inputs; ++k) plan.strides[k].back() = full[k][d];
    } else {
      plan.dims.push_back(size);
      for (size_t k = 0; k < inputs; ++k) plan.strides[k].push_back(full[k][d]);
    }
  }
  if (plan.dims.empty()) {
    plan.dims = {1};
    for (auto& s : plan.strides) s = {0};
  }
  if (plan.dims.size() > static_cast<size_t>(kMaxStridedRank)) {
    throw_unsupported("broadcast: expected at most " + std::to_string(kMaxStridedRank) +
                      " independent axes, got " + std::to_string(plan.dims.size()));
  }

  const Shape dense = contiguous_strides(plan.dims);
  auto is_full = [&](size_t k) { return plan.strides[k] == dense; };
  bool all_full = true;
  for (size_t k = 0; k < inputs; ++k) all_full = all_full && is_full(k);
  plan.kind = BroadcastKind::kGeneral;
  if (all_full) {
    plan.kind = BroadcastKind::kSame;
    return plan;
  }
  if (inputs != 2) return plan;
  for (int f = 0; f < 2; ++f) {
    if (!is_full(static_cast<size_t>(f))) continue;
    const std::vector<int64_t>& other = plan.strides[static_cast<size_t>(1 - f)];
    plan.full_input = f;
    if (std::all_of(other.begin(), other.end(), [](int64_t s) { return s == 0; })) {
      plan.kind = BroadcastKind::kScalar;
    } else if (plan.dims.size() == 2 && other == std::vector<int64_t>{0, 1}) {
      plan.kind = BroadcastKind::kRow;
      plan.channels = plan.dims[1];
    } else if (plan.dims.size() == 2 && other == std::vector<int64_t>{1, 0}) {
      plan.kind = BroadcastKind::kChannel;
      plan.channels = plan.dims[0];
      plan.inner = plan.dims[1];
    } else if (plan.dims.size() == 3 && other == std::vector<int64_t>{0, 1, 0}) {
      plan.kind = BroadcastKind::kChannel;
      plan.channels = plan.dims[1];
      plan.inner = plan.dims[2];
    } else {
      continue;
    }
    return plan;
  }
  plan.full_input = 0;
  return plan;
}

bool binary_outputs_bool(BinaryOp op) {
  return op == BinaryOp::kEqual || op == BinaryOp::kGreater || op == BinaryOp::kLess ||
         op == BinaryOp::kGreaterOrEqual || op == BinaryOp::kLessOrEqual || binary_is_logical(op);
}

bool binary_is_logical(BinaryOp op) {
  return op == BinaryOp::kAnd || op == BinaryOp::kOr || op == BinaryOp::kXor;
}

bool binary_supports(BinaryOp op, DType a, DType b) {
  if (binary_is_logical(op)) return a == DType::kBool && b == DType::kBool;
  if (binary_outputs_bool(op)) return a == b;
  if (op == BinaryOp::kPRelu) return a == DType::kFloat32 && b == DType::kFloat32;
  if (op == BinaryOp::kPow && a == DType::kFloat32) {
    return b == DType::kFloat32 || b == DType::kInt64 || b == DType::kInt32;
  }
  return a == b && (a == DType::kFloat32 || a == DType::kInt64 || a == DType::kInt32);
}

void binary(BinaryOp op, const BroadcastPlan& plan, const Tensor& a, const Tensor& b, Tensor& y) {
  if (!binary_supports(op, a.dtype(), b.dtype()) || plan.strides.size() != 2 ||
      y.numel() != plan.numel) {
    throw_internal("binary: " + a.describe() + " and " + b.describe() + " into " + y.describe());
  }
  if (op == BinaryOp::kPow && a.dtype() != b.dtype()) {
    // Float base, integer exponent.
    const float* pa = a.data<float>();
    float* py = y.data<float>();
    if (b.dtype() == DType::kInt64) {
      run_binary(plan, pa, b.data<int64_t>(), py, PowOp{});
    } else {
      run_binary(plan, pa, b.data<int32_t>(), py, PowOp{});
    }
    return;
  }
  visit_numeric(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    binary_typed<T>(op, plan, a, b, y);
  });
}

void where(const BroadcastPlan& plan, const Tensor& cond, const Tensor& x, const Tensor& y,
           Tensor& out) {
  if (cond.dtype() != DType::kBool || x.dtype() != y.dtype() || x.dtype() != out.dtype() ||
      plan.strides.size() != 3 || out.numel() != plan.numel) {
    throw_internal("where: " + cond.describe() + ", " + x.describe() + ", " + y.describe());
  }
  const auto* c = static_cast<const uint8_t*>(cond.raw());
  switch (dtype_size(x.dtype())) {
    case 1:
      where_typed(plan, c, typed<uint8_t>(x), typed<uint8_t>(y), typed<uint8_t>(out));
      return;
    case 4:
      where_typed(plan, c, typed<uint32_t>(x), typed<uint32_t>(y), typed<uint32_t>(out));
      return;
    case 8:
      where_typed(plan, c, typed<uint64_t>(x), typed<uint64_t>(y), typed<uint64_t>(out));
      return;
    default:
      throw_internal("where: unexpected element size");
  }
}

void logical_not(const Tensor& x, Tensor& y) {
  if (x.dtype() != DType::kBool || y.dtype() != DType::kBool || x.numel() != y.numel()) {
    throw_internal("logical_not: " + x.describe() + " into " + y.describe());
  }
  const uint8_t* px = typed<uint8_t>(x);
  uint8_t* py = typed<uint8_t>(y);
  for_each_chunk(x.numel(), [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) py[i] = px[i] == 0 ? 1 : 0;
  });
}

void is_nan(const Tensor& x, Tensor& y) {
  if (x.dtype() != DType::kFloat32 || y.dtype() != DType::kBool || x.numel() != y.numel()) {
    throw_internal("is_nan: " + x.describe() + " into " + y.describe());
  }
  const float* px = typed<float>(x);
  uint8_t* py = typed<uint8_t>(y);
  for_each_chunk(x.numel(), [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) py[i] = px[i] != px[i] ? 1 : 0;
  });
}

void is_inf(const Tensor& x, Tensor& y, bool negative, bool positive) {
  if (x.dtype() != DType::kFloat32 || y.dtype() != DType::kBool || x.numel() != y.numel()) {
    throw_internal("is_inf: " + x.describe() + " into " + y.describe());
  }
  const float* px = typed<float>(x);
  uint8_t* py = typed<uint8_t>(y);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const float low = negative ? -kInf : std::numeric_limits<float>::quiet_NaN();
  const float high = positive ? kInf : std::numeric_limits<float>::quiet_NaN();
  for_each_chunk(x.numel(), [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) py[i] = px[i] == low || px[i] == high ? 1 : 0;
  });
}

void cast(const Tensor& x, Tensor& y) {
  if (x.numel() != y.numel()) throw_internal("cast: " + x.describe() + " into " + y.describe());
  const int64_t n = x.numel();
  if (x.dtype() == y.dtype()) {
    if (n) std::memcpy(y.raw(), x.raw(), x.nbytes());
    return;
  }
  visit_numeric(x.dtype(), [&](auto src_tag) {
    using S = decltype(src_tag);
    const S* px = typed<S>(x);
    if (y.dtype() == DType::kBool) {
      uint8_t* py = typed<uint8_t>(y);
      for_each_chunk(n, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) py[i] = px[i] != S{0} ? 1 : 0;
      });
      return;
    }
    visit_numeric(y.dtype(), [&](auto dst_tag) {
      using D = decltype(dst_tag);
      D* py = typed<D>(y);
      for_each_chunk(n, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) py[i] = convert<S, D>(px[i]);
      });
    });
  });
}

}  // namespace qforge::kernels
