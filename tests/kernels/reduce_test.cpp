// The Reduce, CumSum and ArgMax kernels and their backward against the naive references of
// kernels/reference/reduce_reference.h on awkward shapes and axis sets (one reduced block,
// alternating blocks, size-1 axes, all axes), at 1 and 2 threads bit for bit; the backward also
// against float64 central differences, ReduceMax's and ReduceMin's ties splitting the gradient
// evenly, ReduceProd's gradient at zeros, ReduceLogSumExp at infinities and far from 0.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/reduce.h"
#include "kernels/reference/reduce_reference.h"
#include "tests/support/gradient_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::random_f32;
using testing::ThreadCount;

struct ReduceCase {
  Shape shape;
  std::vector<int64_t> axes;
};

const ReduceCase kCases[] = {
    {{13}, {0}},
    {{3, 17}, {1}},
    {{3, 17}, {0}},
    {{2, 5, 7, 1}, {1, 2}},
    {{4, 3, 5, 7}, {0, 2}},
    {{2, 3, 1, 5, 6}, {1, 3, 4}},
    {{127, 9}, {0, 1}},
    {{1, 1, 1}, {1}},
    {{2, 13, 127}, {2}},
};

Shape kept_shape(const Shape& shape, const std::vector<int64_t>& axes) {
  Shape out = shape;
  for (int64_t a : axes) out[static_cast<size_t>(a)] = 1;
  return out;
}

std::vector<float> values(const Tensor& t) {
  return {t.data<float>(), t.data<float>() + t.numel()};
}

TEST(ReduceKernels, SumAndMaxMatchTheReferenceAtAnyThreadCount) {
  uint32_t seed = 11;
  for (const ReduceCase& c : kCases) {
    SCOPED_TRACE(shape_str(c.shape));
    const Tensor x = random_f32(c.shape, seed++, -3.0f, 3.0f);
    const ReducePlan plan = plan_reduce(c.shape, c.axes);
    const Tensor want_sum = reference::reduce_sum(x, c.axes);
    const Tensor want_max = reference::reduce_max(x, c.axes);
    std::vector<float> first_sum;
    for (int threads : {1, 2}) {
      ThreadCount tc(threads);
      Tensor sum(DType::kFloat32, kept_shape(c.shape, c.axes));
      Tensor max(DType::kFloat32, kept_shape(c.shape, c.axes));
      reduce_sum(plan, x.data<float>(), sum.data<float>());
      reduce_max(plan, x.data<float>(), max.data<float>());
      EXPECT_EQ(values(max), values(want_max));  // max is exact
      // Σ|x| bounds the float32 rounding of the sum.
      const Tensor magnitude = reference::reduce_sum(
          [&] {
            Tensor a(DType::kFloat32, c.shape);
            for (int64_t i = 0; i < x.numel(); ++i)
              a.data<float>()[i] = std::abs(x.data<float>()[i]);
            return a;
          }(),
          c.axes);
      testing::expect_matches_reference(values(sum), testing::to_double(values(want_sum)),
                                        testing::to_double(values(magnitude)), "sum");
      if (threads == 1) {
        first_sum = values(sum);
      } else {
        EXPECT_EQ(values(sum), first_sum) << "the sum depends on the thread count";
      }
    }
  }
}

TEST(ReduceKernels, MaxPropagatesNaN) {
  Tensor x = Tensor::from_vector<float>({2, 3}, {1, NAN, 3, -1, -2, -3});
  const int64_t axes[] = {1};
  const ReducePlan plan = plan_reduce(x.shape(), axes);
  float y[2];
  reduce_max(plan, x.data<float>(), y);
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(y[1], -1.0f);
}

TEST(ReduceKernels, BackwardMatchesReferenceAndCentralDifferences) {
  uint32_t seed = 41;
  for (const ReduceCase& c : kCases) {
    SCOPED_TRACE(shape_str(c.shape));
    const Tensor x = random_f32(c.shape, seed++, -3.0f, 3.0f);
    const Shape out_shape = kept_shape(c.shape, c.axes);
    const Tensor dy = random_f32(out_shape, seed++, -1.0f, 1.0f);
    const ReducePlan plan = plan_reduce(c.shape, c.axes);
    Tensor y(DType::kFloat32, out_shape);
    reduce_max(plan, x.data<float>(), y.data<float>());
    for (int threads : {1, 2}) {
      ThreadCount tc(threads);
      Tensor dx_sum(DType::kFloat32, c.shape), dx_max(DType::kFloat32, c.shape);
      reduce_sum_backward(plan, dy.data<float>(), dx_sum.data<float>());
      reduce_max_backward(plan, x.data<float>(), y.data<float>(), dy.data<float>(),
                          dx_max.data<float>());
      EXPECT_EQ(values(dx_sum), values(reference::reduce_sum_backward(dy, c.shape)));
      EXPECT_EQ(values(dx_max), values(reference::reduce_max_backward(x, c.axes, dy)));
      if (threads == 2) continue;
      // Central differences of Σ dy · reduce(x) in float64 (no ties: random values).
      std::vector<double> xd = testing::to_double(values(x));
      const std::vector<double> r = testing::to_double(values(dy));
      auto loss = [&](bool max) {
        std::vector<double> out(static_cast<size_t>(dy.numel()), max ? -INFINITY : 0.0);
        for (int64_t i = 0; i < x.numel(); ++i) {
          Shape index(c.shape.size());
          int64_t rest = i;
          for (size_t d = c.shape.size(); d-- > 0;) {
            index[d] = rest % c.shape[d];
            rest /= c.shape[d];
          }
          int64_t o = 0;
          for (size_t d = 0; d < c.shape.size(); ++d) {
            o = o * out_shape[d] + (out_shape[d] == 1 ? 0 : index[d]);
          }
          double& slot = out[static_cast<size_t>(o)];
          slot =
              max ? std::max(slot, xd[static_cast<size_t>(i)]) : slot + xd[static_cast<size_t>(i)];
        }
        return testing::dot(out, r);
      };
      testing::expect_matches_differences(
          testing::to_double(values(dx_sum)),
          testing::central_differences(xd, [&] { return loss(false); }), 1e-5, "sum");
      testing::expect_matches_differences(
          testing::to_double(values(dx_max)),
          testing::central_differences(xd, [&] { return loss(true); }), 1e-5, "max");
    }
  }
}

// ReduceL2 against the float64 reference (the float32 sum of squares within its rounding bound),
// bit-identical at 1 and 2 threads; its backward against the reference and against float64
// central differences of Σ dy · ‖x‖, and 0 where the norm is 0 (PyTorch's masked division).
TEST(ReduceKernels, L2NormAndItsBackward) {
  uint32_t seed = 91;
  for (const ReduceCase& c : kCases) {
    SCOPED_TRACE(shape_str(c.shape));
    const Tensor x = random_f32(c.shape, seed++, -3.0f, 3.0f);
    const Shape out_shape = kept_shape(c.shape, c.axes);
    const Tensor dy = random_f32(out_shape, seed++, -1.0f, 1.0f);
    const ReducePlan plan = plan_reduce(c.shape, c.axes);
    const Tensor want = reference::reduce_l2(x, c.axes);
    const Tensor want_dx = reference::reduce_l2_backward(x, c.axes, dy);
    std::vector<float> first_y, first_dx;
    for (int threads : {1, 2}) {
      ThreadCount tc(threads);
      Tensor y(DType::kFloat32, out_shape), dx(DType::kFloat32, c.shape);
      reduce_l2(plan, x.data<float>(), y.data<float>());
      reduce_l2_backward(plan, x.data<float>(), y.data<float>(), dy.data<float>(),
                         dx.data<float>());
      // The float sum of n squares is within about n·2^-24 of itself (the root halves that), and
      // dy · x / y carries it with a few more roundings.
      const double bound = static_cast<double>(x.numel() / y.numel() + 4) * 0x1p-24;
      for (int64_t o = 0; o < y.numel(); ++o) {
        const double ref = want.data<float>()[o];
        EXPECT_NEAR(y.data<float>()[o], ref, bound * ref) << o;
      }
      for (int64_t i = 0; i < dx.numel(); ++i) {
        const double ref = want_dx.data<float>()[i];
        EXPECT_NEAR(dx.data<float>()[i], ref, bound * std::abs(ref) + 1e-12) << i;
      }
      if (threads == 1) {
        first_y = values(y);
        first_dx = values(dx);
      } else {
        EXPECT_EQ(values(y), first_y) << "the norm depends on the thread count";
        EXPECT_EQ(values(dx), first_dx) << "the gradient depends on the thread count";
      }
    }
    std::vector<double> xd = testing::to_double(values(x));
    const std::vector<double> r = testing::to_double(values(dy));
    auto loss = [&] {
      std::vector<double> sums(static_cast<size_t>(dy.numel()), 0.0);
      for (int64_t i = 0; i < x.numel(); ++i) {
        int64_t rest = i, o = 0, scale = 1;
        for (size_t d = c.shape.size(); d-- > 0;) {
          const int64_t index = rest % c.shape[d];
          rest /= c.shape[d];
          if (out_shape[d] != 1) o += index * scale;
          scale *= out_shape[d];
        }
        sums[static_cast<size_t>(o)] += xd[static_cast<size_t>(i)] * xd[static_cast<size_t>(i)];
      }
      for (double& v : sums) v = std::sqrt(v);
      return testing::dot(sums, r);
    };
    testing::expect_matches_differences(testing::to_double(values(want_dx)),
                                        testing::central_differences(xd, loss), 1e-5, "l2");
  }
  // A zero row: norm 0, gradient 0 (not NaN).
  const Tensor zeros = Tensor::from_vector<float>({2, 3}, {0, 0, 0, 3, 4, 0});
  const int64_t axes[] = {1};
  const ReducePlan plan = plan_reduce(zeros.shape(), axes);
  float y[2], dx[6];
  const float dy[2] = {1.5f, 2.0f};
  reduce_l2(plan, zeros.data<float>(), y);
  reduce_l2_backward(plan, zeros.data<float>(), y, dy, dx);
  EXPECT_EQ(std::vector<float>(y, y + 2), (std::vector<float>{0.0f, 5.0f}));
  EXPECT_EQ(std::vector<float>(dx, dx + 6),
            (std::vector<float>{0, 0, 0, 2.0f * 3 / 5, 2.0f * 4 / 5, 0}));
}

// ReduceMin, ReduceL1, ReduceSumSquare, ReduceProd, ReduceLogSum and ReduceLogSumExp and their
// backward against the float64 references within float32's rounding of n terms, bit-identical at
// 1 and 2 threads; the references' gradients against float64 central differences of
// Σ dy · reduce(x).
TEST(ReduceKernels, TheOtherReductionsAndTheirBackward) {
  using reference::ReduceOp;
  struct Op {
    ReduceOp op;
    const char* name;
    void (*forward)(const ReducePlan&, const float*, float*);
    float lo, hi;
    bool relative;  // the result's float error is relative to it (positive terms, products)
  };
  const Op ops[] = {
      {ReduceOp::kMin, "min", reduce_min, -3.0f, 3.0f, true},
      {ReduceOp::kL1, "l1", reduce_l1, -3.0f, 3.0f, true},
      {ReduceOp::kSumSquare, "sum_square", reduce_sum_square, -3.0f, 3.0f, true},
      {ReduceOp::kProd, "prod", reduce_prod, 0.5f, 1.5f, true},
      {ReduceOp::kLogSum, "log_sum", reduce_log_sum, 0.5f, 2.0f, false},
      {ReduceOp::kLogSumExp, "log_sum_exp", reduce_log_sum_exp, -20.0f, 20.0f, false},
  };
  auto backward = [](ReduceOp op, const ReducePlan& plan, const Tensor& x, const Tensor& y,
                     const Tensor& dy, Tensor& dx) {
    const float* xp = x.data<float>();
    const float* yp = y.data<float>();
    const float* g = dy.data<float>();
    float* d = dx.data<float>();
    switch (op) {
      case ReduceOp::kMin:
        return reduce_max_backward(plan, xp, yp, g, d);
      case ReduceOp::kL1:
        return reduce_l1_backward(plan, xp, g, d);
      case ReduceOp::kSumSquare:
        return reduce_sum_square_backward(plan, xp, g, d);
      case ReduceOp::kProd:
        return reduce_prod_backward(plan, xp, yp, g, d);
      case ReduceOp::kLogSum:
        return reduce_log_sum_backward(plan, xp, g, d);
      case ReduceOp::kLogSumExp:
        return reduce_log_sum_exp_backward(plan, xp, yp, g, d);
    }
  };
  uint32_t seed = 131;
  for (const Op& op : ops) {
    for (const ReduceCase& c : kCases) {
      SCOPED_TRACE(std::string(op.name) + " " + shape_str(c.shape));
      Tensor x = random_f32(c.shape, seed++, op.lo, op.hi);
      if (op.op == ReduceOp::kProd) {  // both signs, magnitudes in [0.5, 1.5)
        for (int64_t i = 0; i < x.numel(); i += 3) x.data<float>()[i] = -x.data<float>()[i];
      }
      const Shape out_shape = kept_shape(c.shape, c.axes);
      const Tensor dy = random_f32(out_shape, seed++, -1.0f, 1.0f);
      const ReducePlan plan = plan_reduce(c.shape, c.axes);
      const Tensor want = reference::reduce(x, c.axes, op.op);
      const Tensor want_dx = reference::reduce_backward(x, c.axes, op.op, dy);
      // n float roundings of the accumulation, a few more for the finish and the backward.
      const double bound = static_cast<double>(x.numel() / want.numel() + 8) * 0x1p-24;
      std::vector<float> first_y, first_dx;
      for (int threads : {1, 2}) {
        ThreadCount tc(threads);
        Tensor y(DType::kFloat32, out_shape), dx(DType::kFloat32, c.shape);
        op.forward(plan, x.data<float>(), y.data<float>());
        backward(op.op, plan, x, y, dy, dx);
        for (int64_t o = 0; o < y.numel(); ++o) {
          const double ref = want.data<float>()[o];
          const double scale = op.relative ? std::abs(ref) : std::abs(ref) + 1.0;
          if (op.op == ReduceOp::kMin) {
            EXPECT_EQ(y.data<float>()[o], want.data<float>()[o]) << o;  // exact
          } else {
            EXPECT_NEAR(y.data<float>()[o], ref, bound * scale) << o;
          }
        }
        // exp(x − y) carries y's absolute error as a relative one.
        double carried = 1.0;
        if (op.op == ReduceOp::kLogSumExp) {
          for (int64_t o = 0; o < want.numel(); ++o) {
            carried = std::max(carried, 2.0 + std::abs(double{want.data<float>()[o]}));
          }
        }
        for (int64_t i = 0; i < dx.numel(); ++i) {
          const double ref = want_dx.data<float>()[i];
          EXPECT_NEAR(dx.data<float>()[i], ref, carried * bound * (std::abs(ref) + 1e-6)) << i;
        }
        if (threads == 1) {
          first_y = values(y);
          first_dx = values(dx);
        } else {
          EXPECT_EQ(values(y), first_y) << "the result depends on the thread count";
          EXPECT_EQ(values(dx), first_dx) << "the gradient depends on the thread count";
        }
      }
      if (x.numel() > 400) continue;  // central differences: two forwards per element
      std::vector<double> xd = testing::to_double(values(x));
      const std::vector<double> r = testing::to_double(values(dy));
      auto loss = [&] {
        return testing::dot(reference::reduce_values(xd, c.shape, c.axes, op.op), r);
      };
      testing::expect_matches_differences(testing::to_double(values(want_dx)),
                                          testing::central_differences(xd, loss), 1e-5, op.name);
    }
  }
}

// ReduceProd's gradient where values are 0: with one zero, the product of the others at it and 0
// elsewhere; with two, 0 everywhere; ReduceLogSumExp at ±inf and NaN, and far from 0 (no overflow).
TEST(ReduceKernels, ProductGradientAtZerosAndLogSumExpAtTheEdges) {
  const Tensor x = Tensor::from_vector<float>({3, 3}, {2, 0, -3, 0, 4, 0, 1.5f, 2, -1});
  const int64_t axes[] = {1};
  const ReducePlan plan = plan_reduce(x.shape(), axes);
  float y[3], dx[9];
  const float dy[3] = {0.5f, 7.0f, 2.0f};
  reduce_prod(plan, x.data<float>(), y);
  reduce_prod_backward(plan, x.data<float>(), y, dy, dx);
  EXPECT_EQ(std::vector<float>(y, y + 3), (std::vector<float>{0.0f, 0.0f, -3.0f}));
  EXPECT_EQ(std::vector<float>(dx, dx + 9),
            (std::vector<float>{0, 0.5f * -6.0f, 0, 0, 0, 0, -4.0f, -3.0f, 6.0f}));

  const float inf = INFINITY;
  const Tensor edges = Tensor::from_vector<float>(
      {4, 3}, {-inf, -inf, -inf, 1, inf, 2, 1, NAN, 2, 1000.0f, 1000.0f, -1000.0f});
  const ReducePlan edge_plan = plan_reduce(edges.shape(), axes);
  float lse[4];
  reduce_log_sum_exp(edge_plan, edges.data<float>(), lse);
  EXPECT_EQ(lse[0], -inf);
  EXPECT_EQ(lse[1], inf);
  EXPECT_TRUE(std::isnan(lse[2]));
  EXPECT_FLOAT_EQ(lse[3], 1000.0f + std::log(2.0f));
}

// TopK against the reference's repeated scans: every axis of awkward shapes, k from 0 to the
// whole axis, largest and smallest, with ties (values on a coarse grid) and NaN; the same bits at
// 1 and 2 threads; the gradient each selected position's dy and 0 elsewhere.
TEST(TopKKernel, MatchesTheReferenceWithTiesAndNaN) {
  const Shape shapes[] = {{13}, {3, 17}, {2, 5, 7}, {4, 1, 33}};
  uint32_t seed = 151;
  for (const Shape& shape : shapes) {
    for (int64_t axis = 0; axis < static_cast<int64_t>(shape.size()); ++axis) {
      Tensor x = random_f32(shape, seed++, -3.0f, 3.0f);
      for (int64_t i = 0; i < x.numel(); ++i) {
        float& v = x.data<float>()[i];
        v = std::round(v * 2.0f) / 2.0f;  // ties
        if (i % 11 == 5) v = NAN;
      }
      int64_t outer = 1, inner = 1;
      for (int64_t d = 0; d < axis; ++d) outer *= shape[static_cast<size_t>(d)];
      for (size_t d = static_cast<size_t>(axis) + 1; d < shape.size(); ++d) inner *= shape[d];
      const int64_t n = shape[static_cast<size_t>(axis)];
      for (int64_t k : {int64_t{0}, int64_t{1}, n / 2, n}) {
        for (bool largest : {true, false}) {
          SCOPED_TRACE(shape_str(shape) + " axis " + std::to_string(axis) + " k " +
                       std::to_string(k) + (largest ? " largest" : " smallest"));
          Tensor want_v, want_i;
          reference::top_k(x, axis, k, largest, want_v, want_i);
          std::vector<float> first_v;
          for (int threads : {1, 2}) {
            ThreadCount tc(threads);
            Tensor v(DType::kFloat32, want_v.shape()), idx(DType::kInt64, want_v.shape());
            top_k(x.data<float>(), outer, n, inner, k, largest, v.data<float>(),
                  idx.data<int64_t>());
            EXPECT_EQ(idx.to_int64_vector(), want_i.to_int64_vector());
            for (int64_t e = 0; e < v.numel(); ++e) {
              const float got = v.data<float>()[e], want = want_v.data<float>()[e];
              EXPECT_TRUE(got == want || (std::isnan(got) && std::isnan(want))) << e;
            }
            if (threads == 2) continue;
            // The gradient: dy at each selected position, 0 elsewhere.
            const Tensor dy = random_f32(want_v.shape(), seed++, -1.0f, 1.0f);
            Tensor dx(DType::kFloat32, shape);
            top_k_backward(idx.data<int64_t>(), dy.data<float>(), outer, n, inner, k,
                           dx.data<float>());
            std::vector<float> want_dx(static_cast<size_t>(x.numel()), 0.0f);
            for (int64_t e = 0; e < dy.numel(); ++e) {
              const int64_t o = e / (k * inner), i = e % inner;
              want_dx[static_cast<size_t>((o * n + idx.data<int64_t>()[e]) * inner + i)] =
                  dy.data<float>()[e];
            }
            EXPECT_EQ(values(dx), want_dx);
          }
        }
      }
    }
  }
}

// PyTorch's amax backward: the maxima of a row share its gradient evenly.
TEST(ReduceKernels, MaxBackwardSplitsTheGradientAmongTies) {
  const Tensor x = Tensor::from_vector<float>({2, 4}, {3, 1, 3, 3, -2, 5, 5, 0});
  const int64_t axes[] = {1};
  const ReducePlan plan = plan_reduce(x.shape(), axes);
  const float y[2] = {3, 5};
  const float dy[2] = {0.9f, -2.0f};
  float dx[8];
  reduce_max_backward(plan, x.data<float>(), y, dy, dx);
  const float third = 0.9f / 3.0f;
  EXPECT_EQ(std::vector<float>(dx, dx + 8),
            (std::vector<float>{third, 0, third, third, 0, -1.0f, -1.0f, 0}));
}

// CumSum: the running sums along each axis of awkward shapes, inclusive or exclusive, forwards
// or reversed, bit for bit the reference's (each sum made afresh in the same order) at 1 and 2
// threads; int32 and int64 exact, wrapping as two's complement; the gradient the running sums
// of dy the other way, against float64 central differences of Σ dy · cumsum(x).
TEST(CumSumKernel, MatchesTheReferenceAndItsGradientTheDifferences) {
  const Shape shapes[] = {{13}, {3, 17}, {2, 5, 7}, {4, 1, 33}, {1, 1}};
  uint32_t seed = 71;
  for (const Shape& shape : shapes) {
    for (int64_t axis = 0; axis < static_cast<int64_t>(shape.size()); ++axis) {
      int64_t outer = 1, inner = 1;
      for (int64_t d = 0; d < axis; ++d) outer *= shape[static_cast<size_t>(d)];
      for (size_t d = static_cast<size_t>(axis) + 1; d < shape.size(); ++d) inner *= shape[d];
      const int64_t n = shape[static_cast<size_t>(axis)];
      const Tensor x = random_f32(shape, seed++, -3.0f, 3.0f);
      Tensor xi(DType::kInt32, shape), xl(DType::kInt64, shape);
      for (int64_t i = 0; i < x.numel(); ++i) {
        xi.data<int32_t>()[i] = static_cast<int32_t>(x.data<float>()[i] * 7e8f);  // sums wrap
        xl.data<int64_t>()[i] = static_cast<int64_t>(x.data<float>()[i] * 3e18f);
      }
      for (int flags = 0; flags < 4; ++flags) {
        const bool exclusive = (flags & 1) != 0, reverse = (flags & 2) != 0;
        SCOPED_TRACE(shape_str(shape) + " axis " + std::to_string(axis) +
                     (exclusive ? " exclusive" : "") + (reverse ? " reverse" : ""));
        const Tensor want = reference::cumulative_sum(x, axis, exclusive, reverse);
        const Tensor want_i = reference::cumulative_sum(xi, axis, exclusive, reverse);
        const Tensor want_l = reference::cumulative_sum(xl, axis, exclusive, reverse);
        for (int threads : {1, 2}) {
          ThreadCount tc(threads);
          Tensor y(DType::kFloat32, shape), yi(DType::kInt32, shape), yl(DType::kInt64, shape);
          cumulative_sum(x.data<float>(), outer, n, inner, exclusive, reverse, y.data<float>());
          cumulative_sum(xi.data<int32_t>(), outer, n, inner, exclusive, reverse,
                         yi.data<int32_t>());
          cumulative_sum(xl.data<int64_t>(), outer, n, inner, exclusive, reverse,
                         yl.data<int64_t>());
          EXPECT_EQ(values(y), values(want));
          EXPECT_EQ(yi.to_int64_vector(), want_i.to_int64_vector());
          EXPECT_EQ(yl.to_int64_vector(), want_l.to_int64_vector());
        }
        const Tensor dy = random_f32(shape, seed++, -1.0f, 1.0f);
        Tensor dx(DType::kFloat32, shape);
        cumulative_sum_backward(dy.data<float>(), outer, n, inner, exclusive, reverse,
                                dx.data<float>());
        std::vector<double> xd = testing::to_double(values(x));
        const std::vector<double> r = testing::to_double(values(dy));
        auto loss = [&] {
          std::vector<double> out(xd.size(), 0.0);
          for (int64_t e = 0; e < x.numel(); ++e) {
            const int64_t i = (e / inner) % n;
            const int64_t base = e - i * inner;
            for (int64_t j = 0; j < n; ++j) {
              const bool covered =
                  reverse ? (exclusive ? j > i : j >= i) : (exclusive ? j < i : j <= i);
              if (covered) out[static_cast<size_t>(e)] += xd[static_cast<size_t>(base + j * inner)];
            }
          }
          return testing::dot(out, r);
        };
        testing::expect_matches_differences(testing::to_double(values(dx)),
                                            testing::central_differences(xd, loss), 1e-5, "cumsum");
      }
    }
  }
}

// arg_max of x (float32, int32 or int64) along `axis` against the reference, ties first and last,
// at 1 and 2 threads.
void expect_arg_max_matches_reference(const Tensor& x, int64_t axis) {
  const Shape& shape = x.shape();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= shape[static_cast<size_t>(d)];
  for (size_t d = static_cast<size_t>(axis) + 1; d < shape.size(); ++d) inner *= shape[d];
  const int64_t n = shape[static_cast<size_t>(axis)];
  for (bool last : {false, true}) {
    const Tensor want = reference::arg_max(x, axis, last);
    for (int threads : {1, 2}) {
      ThreadCount tc(threads);
      std::vector<int64_t> got(static_cast<size_t>(want.numel()), -1);
      switch (x.dtype()) {
        case DType::kFloat32:
          arg_max(x.data<float>(), outer, n, inner, last, got.data());
          break;
        case DType::kInt32:
          arg_max(x.data<int32_t>(), outer, n, inner, last, got.data());
          break;
        default:
          arg_max(x.data<int64_t>(), outer, n, inner, last, got.data());
          break;
      }
      EXPECT_EQ(got,
                std::vector<int64_t>(want.data<int64_t>(), want.data<int64_t>() + want.numel()))
          << dtype_name(x.dtype()) << " axis " << axis << (last ? " last" : " first");
    }
  }
}

TEST(ArgMaxKernel, MatchesTheReferenceWithTiesFirstOrLast) {
  uint32_t seed = 71;
  const Shape shapes[] = {{13}, {3, 17}, {2, 5, 7}, {4, 1, 127}, {2, 3, 4, 5}};
  for (const Shape& shape : shapes) {
    for (int64_t axis = 0; axis < static_cast<int64_t>(shape.size()); ++axis) {
      SCOPED_TRACE(shape_str(shape));
      // Values on a coarse grid, so that rows have ties.
      Tensor x = random_f32(shape, seed++, -2.0f, 2.0f);
      for (int64_t i = 0; i < x.numel(); ++i) {
        x.data<float>()[i] = std::round(x.data<float>()[i] * 2.0f) / 2.0f;
      }
      expect_arg_max_matches_reference(x, axis);
    }
  }
}

// Integer ids (CLIP takes the argmax of its int32 token ids): the same ties rule.
TEST(ArgMaxKernel, IntegersMatchTheReference) {
  for (DType dtype : {DType::kInt32, DType::kInt64}) {
    Tensor x(dtype, {3, 4, 9});
    for (int64_t i = 0; i < x.numel(); ++i) {
      const int64_t v = (i * 7919) % 13 - 6;  // repeats: ties in every row
      if (dtype == DType::kInt32) {
        x.data<int32_t>()[i] = static_cast<int32_t>(v);
      } else {
        x.data<int64_t>()[i] = v * (int64_t{1} << 40);
      }
    }
    for (int64_t axis = 0; axis < 3; ++axis) expect_arg_max_matches_reference(x, axis);
  }
}

// ArgMin is ArgMax of the negated values, ties (first or last) and NaN (the first or last NaN)
// included, for float32, int32 and int64.
TEST(ArgMaxKernel, ArgMinIsArgMaxOfTheNegatedValues) {
  const int64_t outer = 3, n = 11, inner = 4;
  std::vector<float> f(static_cast<size_t>(outer * n * inner));
  for (size_t i = 0; i < f.size(); ++i)
    f[i] = static_cast<float>(static_cast<int>(i * 7919 % 9) - 4);
  f[5] = std::numeric_limits<float>::quiet_NaN();
  f[5 + 2 * inner] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> nf(f.size());
  std::vector<int64_t> l(f.size()), nl(f.size());
  std::vector<int32_t> i32(f.size()), ni32(f.size());
  for (size_t i = 0; i < f.size(); ++i) {
    nf[i] = -f[i];
    l[i] = std::isnan(f[i]) ? 0 : static_cast<int64_t>(f[i]) << 40;
    nl[i] = -l[i];
    i32[i] = static_cast<int32_t>(l[i] >> 40);
    ni32[i] = -i32[i];
  }
  const size_t outputs = static_cast<size_t>(outer * inner);
  for (bool last : {false, true}) {
    for (int threads : {1, 2}) {
      ThreadCount tc(threads);
      std::vector<int64_t> got(outputs), want(outputs);
      arg_min(f.data(), outer, n, inner, last, got.data());
      arg_max(nf.data(), outer, n, inner, last, want.data());
      EXPECT_EQ(got, want) << "float32" << (last ? " last" : " first");
      EXPECT_EQ(got[1], last ? 3 : 1);  // column 1 of slice 0 holds NaN at positions 1 and 3
      arg_min(l.data(), outer, n, inner, last, got.data());
      arg_max(nl.data(), outer, n, inner, last, want.data());
      EXPECT_EQ(got, want) << "int64" << (last ? " last" : " first");
      arg_min(i32.data(), outer, n, inner, last, got.data());
      arg_max(ni32.data(), outer, n, inner, last, want.data());
      EXPECT_EQ(got, want) << "int32" << (last ? " last" : " first");
    }
  }
}

}  // namespace
}  // namespace qforge::kernels
