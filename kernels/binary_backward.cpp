// Binary op backward: per gradient element (or block of elements along the innermost axis), a
// walk over the output axes that input broadcasts along, in row-major order.
#include "kernels/binary_backward.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>

#include "kernels/error.h"
#include "kernels/norm.h"
#include "kernels/parallel.h"
#include "kernels/strided_index.h"

namespace qforge::kernels {
namespace {

constexpr int64_t kTaskElements = int64_t{1} << 14;
// Gradient elements along the innermost axis summed side by side (case B below).
constexpr int64_t kColumnBlock = 256;

// The term one output element adds to the gradient, from dy and the operands at that element.
enum class Term {
  kDy,
  kNegDy,
  kDyTimesOther,
  kDyOverB,
  kDivOther,     // Div's divisor b: dy·a summed, then finish() divides by b twice
  kDivQuotient,  // Div's divisor b from the output q = a/b (in a's place): dy·q summed, / b once
  kPReluInput,   // a the input, b the slope
  kPReluSlope,   // a the input
  kUnlessBelow,  // a an input of Max, b the output, dy its share
  kUnlessAbove,  // a an input of Min, b the output, dy its share
  kPowBase,      // a the base, b the exponent: dy·(b·a^(b-1)), 0 where b = 0
  kPowExponent,  // a the base, b the exponent: dy·(a^b·ln a), 0 where a = 0 and b >= 0
};

inline float term(Term t, float dy, float a, float b) {
  switch (t) {
    case Term::kPowBase:
      return b == 0.0f ? 0.0f : dy * (b * pow_f32(a, b - 1.0f));
    case Term::kPowExponent:
      return a == 0.0f && b >= 0.0f ? 0.0f : dy * (pow_f32(a, b) * std::log(a));
    case Term::kPReluInput:
      return a > 0.0f ? dy : b * dy;
    case Term::kPReluSlope:
      return a > 0.0f ? 0.0f : a * dy;
    case Term::kUnlessBelow:
      return a < b ? 0.0f : dy;
    case Term::kUnlessAbove:
      return a > b ? 0.0f : dy;
    case Term::kDy:
      return dy;
    case Term::kNegDy:
      return -dy;
    case Term::kDyTimesOther:
      return dy * b;  // the caller passes the other operand as b
    case Term::kDyOverB:
      return dy / b;
    case Term::kDivOther:
    case Term::kDivQuotient:
      return dy * a;
  }
  return 0.0f;
}

// The axes of one gradient: the output dims with the output's, a's and b's strides, split into
// those the gradient keeps (its input's stride is not 0) and those it sums.
struct Walk {
  int rank = 0;
  std::array<int64_t, kMaxStridedRank> dims{};
  std::array<int64_t, kMaxStridedRank> out_stride{};
  std::array<int64_t, kMaxStridedRank> a_stride{};
  std::array<int64_t, kMaxStridedRank> b_stride{};
  std::array<bool, kMaxStridedRank> kept{};
};

Walk walk_of(const BroadcastPlan& plan, int target) {
  Walk w;
  w.rank = static_cast<int>(plan.dims.size());
  int64_t stride = 1;
  for (int d = w.rank - 1; d >= 0; --d) {
    w.dims[d] = plan.dims[d];
    w.out_stride[d] = stride;
    stride *= plan.dims[d];
    w.a_stride[d] = plan.strides[0][d];
    w.b_stride[d] = plan.strides[1][d];
    w.kept[d] = plan.strides[target][d] != 0;
  }
  return w;
}

// One gradient to compute: the walk, the term, the operands the term reads (through the
// walk's a and b strides; null when it reads none) and where the sums go.
struct Gradient {
  const Walk& w;
  Term t;
  const float* a;
  const float* b;
  const float* dy;
  float* out;
  bool add;
  int64_t grad_numel;
};

// The gradient element e from the sum of its terms. Div's divisor is the same at every output
// element the sum runs over (the gradient sums exactly the axes it is broadcast along), so
// d/db Σ dy·a/b = −(Σ dy·a)/b², divided once per gradient element instead of once per term.
template <Term T>
float finish(const Gradient& g, float sum, int64_t e) {
  if constexpr (T == Term::kDivOther) {
    return -((sum / g.b[e]) / g.b[e]);
  } else if constexpr (T == Term::kDivQuotient) {
    return -(sum / g.b[e]);
  } else {
    (void)g;
    (void)e;
    return sum;
  }
}

// Offsets of the output, a and b at the first output element of gradient element e.
void base_offsets(const Walk& w, int64_t e, int64_t& o, int64_t& oa, int64_t& ob) {
  o = oa = ob = 0;
  for (int d = w.rank - 1; d >= 0; --d) {
    if (!w.kept[d]) continue;
    const int64_t idx = e % w.dims[d];
    e /= w.dims[d];
    o += idx * w.out_stride[d];
    oa += idx * w.a_stride[d];
    ob += idx * w.b_stride[d];
  }
}

// Calls fn(o, oa, ob) for every combination of the summed axes before the innermost one, in
// row-major order, offsets relative to the base.
template <class Fn>
void for_each_summed(const Walk& w, int last, Fn&& fn) {
  std::array<int64_t, kMaxStridedRank> idx{};
  int64_t o = 0, oa = 0, ob = 0;
  while (true) {
    fn(o, oa, ob);
    int d = last - 1;
    for (; d >= 0; --d) {
      if (w.kept[d]) continue;
      ++idx[d];
      o += w.out_stride[d];
      oa += w.a_stride[d];
      ob += w.b_stride[d];
      if (idx[d] < w.dims[d]) break;
      o -= idx[d] * w.out_stride[d];
      oa -= idx[d] * w.a_stride[d];
      ob -= idx[d] * w.b_stride[d];
      idx[d] = 0;
    }
    if (d < 0) return;
  }
}

// Whether the innermost axis reads a (when the term reads it) in place and b (when read) as one
// value: the common layouts (a per-channel scale or divisor against an NCHW activation, the
// output's own quotient). The loops then index a and b without strides, so that the compiler
// vectorises them; the arithmetic, and so every bit, is the strided loops'.
bool contiguous_inner(const Gradient& g) {
  const int inner = g.w.rank - 1;
  return (!g.a || g.w.a_stride[inner] == 1) && (!g.b || g.w.b_stride[inner] == 0);
}

// Case A, the innermost axis summed: one gradient element per call, the innermost runs summed
// lane-interleaved, the runs added in order. The term is a template argument, so that the inner
// loops hold no switch.
template <Term T, bool kContiguous>
float sum_element(const Gradient& g, int64_t e) {
  const Walk& w = g.w;
  int64_t o0, oa0, ob0;
  base_offsets(w, e, o0, oa0, ob0);
  const int inner = w.rank - 1;
  const int64_t n = w.dims[inner];
  const int64_t sa = kContiguous ? 1 : w.a_stride[inner];
  const int64_t sb = kContiguous ? 0 : w.b_stride[inner];
  float total = 0.0f;
  for_each_summed(w, inner, [&](int64_t o, int64_t oa, int64_t ob) {
    const float* dy = g.dy + o0 + o;
    const float* a = g.a ? g.a + oa0 + oa : nullptr;
    const float* b = g.b ? g.b + ob0 + ob : nullptr;
    float acc[kSumLanes] = {};
    int64_t i = 0;
    auto lane_term = [&](int64_t k) {
      return term(T, dy[k], a ? a[k * sa] : 0.0f, b ? b[k * sb] : 0.0f);
    };
    if constexpr (kContiguous) {
      // The same sums as below, a read in place and b once.
      const float bv = b ? b[0] : 0.0f;
      if (a) {
        for (; i + kSumLanes <= n; i += kSumLanes) {
          for (int j = 0; j < kSumLanes; ++j) acc[j] += term(T, dy[i + j], a[i + j], bv);
        }
      } else {
        for (; i + kSumLanes <= n; i += kSumLanes) {
          for (int j = 0; j < kSumLanes; ++j) acc[j] += term(T, dy[i + j], 0.0f, bv);
        }
      }
    }
    for (; i + kSumLanes <= n; i += kSumLanes) {
      for (int j = 0; j < kSumLanes; ++j) acc[j] += lane_term(i + j);
    }
    for (int j = 0; i + j < n; ++j) acc[j] += lane_term(i + j);
    for (int width = kSumLanes / 2; width > 0; width /= 2) {
      for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
    }
    total += acc[0];
  });
  return total;
}

// Case B, the innermost axis kept (or nothing summed): `count` neighbouring gradient elements
// from e0 along it, each summing its output elements in row-major order, side by side.
template <Term T, bool kContiguous>
void sum_block(const Gradient& g, int64_t e0, int64_t count, float* sums) {
  const Walk& w = g.w;
  int64_t o0, oa0, ob0;
  base_offsets(w, e0, o0, oa0, ob0);
  const int inner = w.rank - 1;
  const int64_t sa = kContiguous ? 1 : w.a_stride[inner];
  const int64_t sb = kContiguous ? 0 : w.b_stride[inner];
  std::fill_n(sums, count, 0.0f);
  for_each_summed(w, w.rank, [&](int64_t o, int64_t oa, int64_t ob) {
    const float* dy = g.dy + o0 + o;
    const float* a = g.a ? g.a + oa0 + oa : nullptr;
    const float* b = g.b ? g.b + ob0 + ob : nullptr;
    if constexpr (kContiguous) {
      const float bv = b ? b[0] : 0.0f;
      if (a) {
        for (int64_t j = 0; j < count; ++j) sums[j] += term(T, dy[j], a[j], bv);
      } else {
        for (int64_t j = 0; j < count; ++j) sums[j] += term(T, dy[j], 0.0f, bv);
      }
      return;
    }
    for (int64_t j = 0; j < count; ++j) {
      sums[j] += term(T, dy[j], a ? a[j * sa] : 0.0f, b ? b[j * sb] : 0.0f);
    }
  });
}

template <Term T, bool kContiguous>
void compute_gradient_with(const Gradient& g) {
  const Walk& w = g.w;
  int64_t summed = 1;
  for (int d = 0; d < w.rank; ++d) {
    if (!w.kept[d]) summed *= w.dims[d];
  }
  const int inner = w.rank - 1;
  if (!w.kept[inner]) {
    const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, summed));
    parallel_for(g.grad_numel, grain, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const float s = finish<T>(g, sum_element<T, kContiguous>(g, e), e);
        g.out[e] = g.add ? g.out[e] + s : s;
      }
    });
    return;
  }
  const int64_t row = w.dims[inner];
  const int64_t blocks_per_row = (row + kColumnBlock - 1) / kColumnBlock;
  const int64_t rows = g.grad_numel / row;
  const int64_t task_work = std::min(row, kColumnBlock) * std::max<int64_t>(1, summed);
  const int64_t grain = std::max<int64_t>(1, kTaskElements / task_work);
  parallel_for(rows * blocks_per_row, grain, [&](int64_t begin, int64_t end) {
    float sums[kColumnBlock];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c0 = task % blocks_per_row * kColumnBlock;
      const int64_t e0 = task / blocks_per_row * row + c0;
      const int64_t count = std::min(kColumnBlock, row - c0);
      sum_block<T, kContiguous>(g, e0, count, sums);
      float* out = g.out + e0;
      for (int64_t j = 0; j < count; ++j) {
        const float s = finish<T>(g, sums[j], e0 + j);
        out[j] = g.add ? out[j] + s : s;
      }
    }
  });
}

template <Term T>
void compute_gradient_of(const Gradient& g) {
  if (contiguous_inner(g)) {
    compute_gradient_with<T, true>(g);
  } else {
    compute_gradient_with<T, false>(g);
  }
}

void compute_gradient(const Gradient& g) {
  switch (g.t) {
    case Term::kDy:
      return compute_gradient_of<Term::kDy>(g);
    case Term::kNegDy:
      return compute_gradient_of<Term::kNegDy>(g);
    case Term::kDyTimesOther:
      return compute_gradient_of<Term::kDyTimesOther>(g);
    case Term::kDyOverB:
      return compute_gradient_of<Term::kDyOverB>(g);
    case Term::kDivOther:
      return compute_gradient_of<Term::kDivOther>(g);
    case Term::kDivQuotient:
      return compute_gradient_of<Term::kDivQuotient>(g);
    case Term::kPReluInput:
      return compute_gradient_of<Term::kPReluInput>(g);
    case Term::kPReluSlope:
      return compute_gradient_of<Term::kPReluSlope>(g);
    case Term::kUnlessBelow:
      return compute_gradient_of<Term::kUnlessBelow>(g);
    case Term::kUnlessAbove:
      return compute_gradient_of<Term::kUnlessAbove>(g);
    case Term::kPowBase:
      return compute_gradient_of<Term::kPowBase>(g);
    case Term::kPowExponent:
      return compute_gradient_of<Term::kPowExponent>(g);
  }
}

const char* op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::kMod:
      return "Mod";
    case BinaryOp::kFmod:
      return "Fmod";
    case BinaryOp::kEqual:
      return "Equal";
    default:
      return "a differentiable op";
  }
}

}  // namespace

bool binary_backward_supports(BinaryOp op) {
  return op == BinaryOp::kAdd || op == BinaryOp::kSub || op == BinaryOp::kMul ||
         op == BinaryOp::kDiv || op == BinaryOp::kPRelu || op == BinaryOp::kPow;
}

void binary_backward(BinaryOp op, const BroadcastPlan& plan, const float* a, const float* b,
                     const float* dy, const BinaryGradients& grads, GradMode write,
                     const float* quotient) {
  if (!binary_backward_supports(op)) {
    throw_unsupported(
        std::string("binary_backward: expected Add, Sub, Mul, Div, PRelu or Pow, got ") +
        op_name(op));
  }
  if (plan.strides.size() != 2) throw_internal("binary_backward: expected a plan of two inputs");
  const bool add = write == GradMode::kAccumulate;
  for (int target = 0; target < 2; ++target) {
    float* out = target == 0 ? grads.da : grads.db;
    if (!out) continue;
    const Walk w = walk_of(plan, target);
    int64_t numel = 1;
    for (int d = 0; d < w.rank; ++d) {
      if (w.kept[d]) numel *= w.dims[d];
    }
    if (plan.numel == 0) {  // an empty output: every gradient element sums nothing
      if (!add) std::fill_n(out, numel, 0.0f);
      continue;
    }
    Term t = Term::kDy;
    const float* ta = nullptr;
    const float* tb = nullptr;
    switch (op) {
      case BinaryOp::kAdd:
        break;
      case BinaryOp::kSub:
        t = target == 0 ? Term::kDy : Term::kNegDy;
        break;
      case BinaryOp::kMul:
        t = Term::kDyTimesOther;
        tb = target == 0 ? b : a;  // dy times the other operand
        break;
      case BinaryOp::kDiv:
        t = target == 0 ? Term::kDyOverB : quotient ? Term::kDivQuotient : Term::kDivOther;
        ta = target == 0 ? nullptr : quotient ? quotient : a;
        tb = b;
        break;
      case BinaryOp::kPRelu:
        t = target == 0 ? Term::kPReluInput : Term::kPReluSlope;
        ta = a;
        tb = target == 0 ? b : nullptr;
        break;
      case BinaryOp::kPow:
        t = target == 0 ? Term::kPowBase : Term::kPowExponent;
        ta = a;
        tb = b;
        break;
      default:
        break;
    }
    // The term reads its operands through the walk's a and b strides: for Mul the other
    // operand stands in b's place, so its strides move there too.
    Walk tw = w;
    if (op == BinaryOp::kMul && target == 1) tw.b_stride = w.a_stride;
    // The quotient has the output's shape: it is read through the output's strides.
    if (t == Term::kDivQuotient) tw.a_stride = w.out_stride;
    compute_gradient({tw, t, ta, tb, dy, out, add, numel});
  }
}

void extremum_backward(const ExtremumBackwardArgs& args, GradMode write) {
  if (args.plans.empty()) return;
  const int64_t numel = args.plans[0].numel;
  const bool add = write == GradMode::kAccumulate;
  float* share = args.workspace;
  // How many inputs equal y at each output element, counted input by input in order (exact in
  // float), then turned into each equal input's share of dy.
  std::fill_n(share, numel, 0.0f);
  for (size_t i = 0; i < args.plans.size() && numel > 0; ++i) {
    const BroadcastPlan& plan = args.plans[i];
    const float* x = args.x[i];
    const int64_t row = plan.dims.back();
    const std::array<const int64_t*, 1> strides = {plan.strides[0].data()};
    parallel_for(numel / row, std::max<int64_t>(1, kTaskElements / row),
                 [&](int64_t begin, int64_t end) {
                   StridedIndex<1> at(plan.dims, strides, begin * row);
                   const int64_t step = plan.strides[0].back();
                   for (int64_t r = begin; r < end; ++r, at.next_row()) {
                     const float* xr = x + at.offset(0);
                     const float* yr = args.y + r * row;
                     float* count = share + r * row;
                     for (int64_t j = 0; j < row; ++j) {
                       count[j] += xr[j * step] == yr[j] ? 1.0f : 0.0f;
                     }
                   }
                 });
  }
  parallel_for(numel, kTaskElements, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      share[o] = share[o] > 0.0f ? args.dy[o] / share[o] : args.dy[o];
    }
  });
  const Term t = args.is_max ? Term::kUnlessBelow : Term::kUnlessAbove;
  for (size_t i = 0; i < args.plans.size(); ++i) {
    float* out = args.dx[i];
    if (!out) continue;
    const Walk w = walk_of(args.plans[i], 0);
    int64_t grad_numel = 1;
    for (int d = 0; d < w.rank; ++d) {
      if (w.kept[d]) grad_numel *= w.dims[d];
    }
    if (numel == 0) {
      if (!add) std::fill_n(out, grad_numel, 0.0f);
      continue;
    }
    compute_gradient({w, t, args.x[i], args.y, share, out, add, grad_numel});
  }
}

}  // namespace qforge::kernels
