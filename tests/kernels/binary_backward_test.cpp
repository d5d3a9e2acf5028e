// Binary op backward under broadcasting (Add, Sub, Mul, Div, PRelu, Pow) and Max / Min of any
// number of inputs: the float64 references against central finite differences, the float32 kernels
// against the references for every broadcast form, ties and NaN against PyTorch's values, and
// the same bits on 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "kernels/binary_backward.h"
#include "kernels/error.h"
#include "kernels/reference/binary_backward_reference.h"
#include "tests/support/float_checks.h"
#include "tests/support/gradient_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::absolute;
using testing::expect_matches_reference;
using testing::expect_same_bits;
using testing::random_values;
using testing::ThreadCount;
using testing::to_double;

struct BinaryCase {
  const char* name;
  Shape a, b;
};

const BinaryCase kCases[] = {
    {"same", {3, 13}, {3, 13}},
    {"scalar_b", {3, 17}, {}},
    {"scalar_a", {1}, {13, 5}},
    {"channel", {3, 5, 4, 3}, {5, 1, 1}},
    {"row", {13, 17}, {17}},
    {"wide_row", {3, 300}, {300}},
    {"wide_column", {3, 300}, {3, 1}},
    {"outer_product", {3, 1, 5}, {1, 4, 1}},
    {"mixed", {2, 3, 4, 5}, {3, 1, 5}},
    {"b_larger", {5}, {3, 4, 5}},
    {"long_summed_run", {2, 127}, {2, 1}},
    {"single", {1}, {1}},
};

const BinaryOp kOps[] = {BinaryOp::kAdd, BinaryOp::kSub,   BinaryOp::kMul,
                         BinaryOp::kDiv, BinaryOp::kPRelu, BinaryOp::kPow};

std::string op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::kAdd:
      return "Add";
    case BinaryOp::kSub:
      return "Sub";
    case BinaryOp::kMul:
      return "Mul";
    case BinaryOp::kDiv:
      return "Div";
    case BinaryOp::kPRelu:
      return "PRelu";
    case BinaryOp::kPow:
      return "Pow";
    default:
      return "other";
  }
}

struct BinaryData {
  BroadcastPlan plan;
  std::vector<float> a, b, dy;
};

// b stays in ±[0.5, 1.5] so that Div is smooth around every value; for Pow the base a is in
// [0.5, 2], where every real power is defined and smooth.
BinaryData binary_data(const BinaryCase& c, uint32_t seed, BinaryOp op = BinaryOp::kAdd) {
  BinaryData d;
  const Shape shapes[] = {c.a, c.b};
  d.plan = plan_broadcast(shapes);
  d.a = op == BinaryOp::kPow
            ? random_values(static_cast<size_t>(shape_numel(c.a)), seed, 0.5f, 2.0f)
            : random_values(static_cast<size_t>(shape_numel(c.a)), seed);
  d.b = random_values(static_cast<size_t>(shape_numel(c.b)), seed + 1, 0.5f, 1.5f);
  for (size_t i = 0; i < d.b.size(); i += 2) d.b[i] = -d.b[i];
  d.dy = random_values(static_cast<size_t>(d.plan.numel), seed + 2);
  return d;
}

struct BinaryResult {
  std::vector<float> da, db;
};

BinaryResult run_backward(BinaryOp op, const BinaryData& d, int threads,
                          GradMode write = GradMode::kOverwrite,
                          const BinaryResult* start = nullptr) {
  ThreadCount scope(threads);
  BinaryResult r = start ? *start
                         : BinaryResult{std::vector<float>(d.a.size(), NAN),
                                        std::vector<float>(d.b.size(), NAN)};
  binary_backward(op, d.plan, d.a.data(), d.b.data(), d.dy.data(), {r.da.data(), r.db.data()},
                  write);
  return r;
}

struct Reference {
  std::vector<double> da, db;
};

Reference run_reference(BinaryOp op, const BinaryCase& c, const std::vector<double>& a,
                        const std::vector<double>& b, const std::vector<double>& dy) {
  Reference r{std::vector<double>(a.size()), std::vector<double>(b.size())};
  reference::binary_backward(op, c.a, a.data(), c.b, b.data(), dy.data(), r.da.data(), r.db.data());
  return r;
}

TEST(BinaryBackwardReference, MatchesFiniteDifferences) {
  for (BinaryOp op : kOps) {
    for (const BinaryCase& c : kCases) {
      SCOPED_TRACE(op_name(op) + " " + c.name);
      const BinaryData d = binary_data(c, 1, op);
      std::vector<double> a = to_double(d.a), b = to_double(d.b);
      const std::vector<double> dy = to_double(d.dy);
      std::vector<double> y;
      auto loss = [&] {
        reference::binary_f64(op, c.a, a.data(), c.b, b.data(), y);
        return testing::dot(y, dy);
      };
      const Reference ref = run_reference(op, c, a, b, dy);
      // Div and Pow are not linear: the differences carry an O(step²) error.
      const double tolerance = op == BinaryOp::kDiv || op == BinaryOp::kPow ? 1e-6 : 1e-8;
      testing::expect_matches_differences(ref.da, testing::central_differences(a, loss), tolerance,
                                          "da");
      testing::expect_matches_differences(ref.db, testing::central_differences(b, loss), tolerance,
                                          "db");
    }
  }
}

TEST(BinaryBackward, MatchesReference) {
  for (BinaryOp op : kOps) {
    for (const BinaryCase& c : kCases) {
      SCOPED_TRACE(op_name(op) + " " + c.name);
      const BinaryData d = binary_data(c, 2, op);
      const BinaryResult r = run_backward(op, d, 2);
      const std::vector<double> a = to_double(d.a), b = to_double(d.b), dy = to_double(d.dy);
      const Reference ref = run_reference(op, c, a, b, dy);
      // Every term of the absolute values' gradient has one sign: its magnitude is Σ|terms|.
      // PRelu's terms keep their branch with a itself: ±|dy|·|b| for da, a·|dy| (a <= 0) for db.
      // Pow's terms (a > 0) take the sign of dy·b for da and of dy·ln a for db: dy signed so at
      // each output element makes every term positive.
      Reference mag;
      if (op == BinaryOp::kPow) {
        std::vector<double> a_out, b_out;
        const std::vector<double> zero_a(a.size(), 0.0), zero_b(b.size(), 0.0);
        reference::binary_f64(BinaryOp::kAdd, c.a, a.data(), c.b, zero_b.data(), a_out);
        reference::binary_f64(BinaryOp::kAdd, c.a, zero_a.data(), c.b, b.data(), b_out);
        std::vector<double> dy_a(dy.size()), dy_b(dy.size());
        for (size_t i = 0; i < dy.size(); ++i) {
          dy_a[i] = std::abs(dy[i]) * (b_out[i] < 0 ? -1.0 : 1.0);
          dy_b[i] = std::abs(dy[i]) * (a_out[i] < 1 ? -1.0 : 1.0);
        }
        mag.da = run_reference(op, c, a, b, dy_a).da;
        mag.db = run_reference(op, c, a, b, dy_b).db;
      } else {
        mag = op == BinaryOp::kPRelu ? run_reference(op, c, a, absolute(b), absolute(dy))
                                     : run_reference(op, c, absolute(a), absolute(b), absolute(dy));
      }
      expect_matches_reference(r.da, ref.da, absolute(mag.da), "da");
      expect_matches_reference(r.db, ref.db, absolute(mag.db), "db");

      const BinaryResult start{random_values(d.a.size(), 3), random_values(d.b.size(), 4)};
      const BinaryResult added = run_backward(op, d, 2, GradMode::kAccumulate, &start);
      Reference ref_added = ref;
      Reference mag_added{absolute(mag.da), absolute(mag.db)};
      for (size_t i = 0; i < ref.da.size(); ++i) {
        ref_added.da[i] += start.da[i];
        mag_added.da[i] += std::abs(start.da[i]);
      }
      for (size_t i = 0; i < ref.db.size(); ++i) {
        ref_added.db[i] += start.db[i];
        mag_added.db[i] += std::abs(start.db[i]);
      }
      expect_matches_reference(added.da, ref_added.da, mag_added.da, "da accumulated");
      expect_matches_reference(added.db, ref_added.db, mag_added.db, "db accumulated");
    }
  }
}

// Div's divisor gradient from the forward's quotient, what a training executor keeps instead of
// the dividend: the reference's gradients for every broadcast form, with NaN in the dividend's
// place to show that it is never read.
TEST(BinaryBackward, DivFromTheQuotientNeedsNoDividend) {
  for (const BinaryCase& c : kCases) {
    SCOPED_TRACE(c.name);
    BinaryData d = binary_data(c, 5);
    std::vector<float> q(static_cast<size_t>(d.plan.numel));
    const Tensor ta = Tensor::wrap(DType::kFloat32, c.a, d.a.data());
    const Tensor tb = Tensor::wrap(DType::kFloat32, c.b, d.b.data());
    Tensor tq = Tensor::wrap(DType::kFloat32, d.plan.out_shape, q.data());
    binary(BinaryOp::kDiv, d.plan, ta, tb, tq);
    const Reference ref =
        run_reference(BinaryOp::kDiv, c, to_double(d.a), to_double(d.b), to_double(d.dy));
    const Reference mag = run_reference(BinaryOp::kDiv, c, absolute(to_double(d.a)),
                                        absolute(to_double(d.b)), absolute(to_double(d.dy)));
    std::vector<float> no_dividend(d.a.size(), NAN);
    BinaryResult r{std::vector<float>(d.a.size(), NAN), std::vector<float>(d.b.size(), NAN)};
    binary_backward(BinaryOp::kDiv, d.plan, no_dividend.data(), d.b.data(), d.dy.data(),
                    {r.da.data(), r.db.data()}, GradMode::kOverwrite, q.data());
    expect_matches_reference(r.da, ref.da, absolute(mag.da), "da");
    expect_matches_reference(r.db, ref.db, absolute(mag.db), "db");
  }
}

TEST(BinaryBackward, SameBitsForAnyThreadCount) {
  // Large enough to split over threads.
  const BinaryCase cases[] = {{"channel", {8, 64, 33, 17}, {64, 1, 1}},
                              {"row", {700, 300}, {300}},
                              {"mixed", {4, 33, 20, 37}, {33, 1, 37}}};
  for (BinaryOp op : kOps) {
    for (const BinaryCase& c : cases) {
      SCOPED_TRACE(op_name(op) + " " + c.name);
      const BinaryData d = binary_data(c, 5);
      const BinaryResult one = run_backward(op, d, 1);
      const BinaryResult two = run_backward(op, d, 2);
      expect_same_bits(one.da.data(), two.da.data(), one.da.size(), "da");
      expect_same_bits(one.db.data(), two.db.data(), one.db.size(), "db");
    }
  }
}

TEST(BinaryBackward, EmptyOutputGivesZeroGradients) {
  const Shape shapes[] = {{1, 3}, {0, 3}};
  const BroadcastPlan plan = plan_broadcast(shapes);
  std::vector<float> a = {1, 2, 3}, da(3, NAN);
  binary_backward(BinaryOp::kMul, plan, a.data(), nullptr, nullptr, {da.data(), nullptr});
  EXPECT_EQ(da, std::vector<float>(3, 0.0f));
}

TEST(BinaryBackward, RejectsOpsWithoutGradient) {
  const Shape shapes[] = {{3}, {3}};
  const BroadcastPlan plan = plan_broadcast(shapes);
  std::vector<float> x(3, 1.0f), g(3);
  try {
    binary_backward(BinaryOp::kMod, plan, x.data(), x.data(), x.data(), {g.data(), nullptr});
    FAIL() << "expected an Unsupported error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_STREQ(e.what(), "binary_backward: expected Add, Sub, Mul, Div, PRelu or Pow, got Mod");
  }
}

// PRelu at its kink and Max / Min ties and NaN, against the values torch.nn.functional.prelu,
// torch.maximum, torch.minimum and torch.amax give (checked in PyTorch 1.13).
TEST(BinaryBackward, PReluAtZeroTakesTheSlopeSide) {
  const Shape shapes[] = {{3}, {1}};
  const BroadcastPlan plan = plan_broadcast(shapes);
  const std::vector<float> x = {-1.0f, 0.0f, 2.0f}, slope = {0.25f}, dy = {1.0f, 1.0f, 1.0f};
  std::vector<float> dx(3), dslope(1);
  binary_backward(BinaryOp::kPRelu, plan, x.data(), slope.data(), dy.data(),
                  {dx.data(), dslope.data()});
  EXPECT_EQ(dx, (std::vector<float>{0.25f, 0.25f, 1.0f}));
  EXPECT_EQ(dslope, (std::vector<float>{-1.0f}));
}

struct ExtremumRun {
  std::vector<std::vector<float>> dx;
};

// Max or Min of `values` (shapes[i]) forward in float, then extremum_backward.
ExtremumRun run_extremum(bool is_max, const std::vector<Shape>& shapes,
                         const std::vector<std::vector<float>>& values,
                         const std::vector<float>& dy, int threads = 2,
                         GradMode write = GradMode::kOverwrite,
                         const ExtremumRun* start = nullptr) {
  ThreadCount scope(threads);
  const std::optional<Shape> out = broadcast_shape(shapes);
  std::vector<BroadcastPlan> plans;
  std::vector<const float*> x;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const Shape pair[] = {shapes[i], *out};
    plans.push_back(plan_broadcast(pair));
    x.push_back(values[i].data());
  }
  // y by the forward kernel, input by input.
  Tensor y = Tensor::from_vector<float>(
      *out,
      std::vector<float>(static_cast<size_t>(shape_numel(*out)), is_max ? -INFINITY : INFINITY));
  for (size_t i = 0; i < shapes.size(); ++i) {
    const Shape pair[] = {*out, shapes[i]};
    const Tensor xi = Tensor::from_vector<float>(shapes[i], values[i]);
    binary(is_max ? BinaryOp::kMax : BinaryOp::kMin, plan_broadcast(pair), y, xi, y);
  }
  ExtremumRun r;
  for (size_t i = 0; i < shapes.size(); ++i) {
    r.dx.push_back(start ? start->dx[i] : std::vector<float>(values[i].size(), NAN));
  }
  std::vector<float*> dx;
  for (auto& g : r.dx) dx.push_back(g.data());
  std::vector<float> workspace(static_cast<size_t>(y.numel()));
  extremum_backward({.is_max = is_max,
                     .plans = plans,
                     .x = x,
                     .y = y.data<float>(),
                     .dy = dy.data(),
                     .dx = dx,
                     .workspace = workspace.data()},
                    write);
  return r;
}

TEST(ExtremumBackward, TiesAndNaNFollowPyTorch) {
  const std::vector<Shape> two = {{4}, {4}};
  const std::vector<std::vector<float>> ab = {{1.0f, 2.0f, 3.0f, NAN}, {1.0f, 1.0f, 4.0f, 1.0f}};
  const std::vector<float> ones(4, 1.0f);
  const ExtremumRun max = run_extremum(true, two, ab, ones);
  EXPECT_EQ(max.dx[0], (std::vector<float>{0.5f, 1.0f, 0.0f, 1.0f}));
  EXPECT_EQ(max.dx[1], (std::vector<float>{0.5f, 0.0f, 1.0f, 1.0f}));
  const ExtremumRun min = run_extremum(false, two, ab, ones);
  EXPECT_EQ(min.dx[0], (std::vector<float>{0.5f, 0.0f, 1.0f, 1.0f}));
  EXPECT_EQ(min.dx[1], (std::vector<float>{0.5f, 1.0f, 0.0f, 1.0f}));
  // torch.stack([1, 2], [1, 2], [1, 0]).amax(0): a three-way tie gives each a third.
  const ExtremumRun three =
      run_extremum(true, {{2}, {2}, {2}}, {{1.0f, 2.0f}, {1.0f, 2.0f}, {1.0f, 0.0f}}, {3.0f, 1.0f});
  EXPECT_EQ(three.dx[0], (std::vector<float>{1.0f, 0.5f}));
  EXPECT_EQ(three.dx[1], (std::vector<float>{1.0f, 0.5f}));
  EXPECT_EQ(three.dx[2], (std::vector<float>{1.0f, 0.0f}));
  // One input: y is x, and its gradient dy.
  const ExtremumRun one = run_extremum(false, {{3}}, {{-1.0f, 0.0f, 5.0f}}, {1.0f, -2.0f, 3.0f});
  EXPECT_EQ(one.dx[0], (std::vector<float>{1.0f, -2.0f, 3.0f}));
}

struct ExtremumCase {
  const char* name;
  std::vector<Shape> shapes;
};

const ExtremumCase kExtremumCases[] = {
    {"same", {{3, 13}, {3, 13}}},
    {"channel", {{3, 5, 4, 3}, {5, 1, 1}}},
    {"three_broadcasts", {{2, 3, 4, 5}, {3, 1, 5}, {1, 4, 1}}},
    {"four_inputs", {{13, 17}, {17}, {13, 1}, {1}}},
    {"output_larger_than_each", {{3, 1, 5}, {1, 4, 1}}},
    {"one_input", {{7, 3}}},
    {"wide_row", {{3, 300}, {300}, {3, 1}}},
};

// Inputs drawn from a few values, so that ties are frequent.
std::vector<std::vector<float>> tied_values(const std::vector<Shape>& shapes, uint32_t seed) {
  std::vector<std::vector<float>> values;
  for (const Shape& s : shapes) {
    std::vector<float> v = random_values(static_cast<size_t>(shape_numel(s)), seed++, 0.0f, 4.0f);
    for (float& f : v) f = std::floor(f) * 0.5f;
    values.push_back(std::move(v));
  }
  return values;
}

std::vector<std::vector<double>> run_extremum_reference(
    bool is_max, const std::vector<Shape>& shapes, const std::vector<std::vector<double>>& values,
    const std::vector<double>& dy) {
  std::vector<const double*> x;
  for (const auto& v : values) x.push_back(v.data());
  std::vector<std::vector<double>> dx;
  for (const auto& v : values) dx.emplace_back(v.size());
  std::vector<double*> out;
  for (auto& g : dx) out.push_back(g.data());
  reference::extremum_backward(is_max, shapes, x, dy.data(), out);
  return dx;
}

TEST(ExtremumBackwardReference, MatchesFiniteDifferencesAwayFromTies) {
  for (const ExtremumCase& c : kExtremumCases) {
    for (bool is_max : {true, false}) {
      SCOPED_TRACE(std::string(is_max ? "Max " : "Min ") + c.name);
      std::vector<std::vector<double>> values;
      uint32_t seed = 20;
      for (const Shape& s : c.shapes) {
        values.push_back(to_double(random_values(static_cast<size_t>(shape_numel(s)), seed++)));
      }
      const Shape out = *broadcast_shape(c.shapes);
      const std::vector<double> dy =
          to_double(random_values(static_cast<size_t>(shape_numel(out)), 30));
      auto loss = [&] {
        std::vector<const double*> x;
        for (const auto& v : values) x.push_back(v.data());
        return testing::dot(reference::extremum_f64(is_max, c.shapes, x), dy);
      };
      const auto ref = run_extremum_reference(is_max, c.shapes, values, dy);
      for (size_t i = 0; i < values.size(); ++i) {
        // A small step, so that no perturbation crosses a tie; Max is linear between them.
        testing::expect_matches_differences(ref[i],
                                            testing::central_differences(values[i], loss, 1e-6),
                                            1e-6, "dx" + std::to_string(i));
      }
    }
  }
}

TEST(ExtremumBackward, MatchesReferenceWithTiesAndAccumulates) {
  for (const ExtremumCase& c : kExtremumCases) {
    for (bool is_max : {true, false}) {
      SCOPED_TRACE(std::string(is_max ? "Max " : "Min ") + c.name);
      const auto values = tied_values(c.shapes, 40);
      const Shape out = *broadcast_shape(c.shapes);
      const std::vector<float> dy = random_values(static_cast<size_t>(shape_numel(out)), 50);
      const ExtremumRun got = run_extremum(is_max, c.shapes, values, dy);
      std::vector<std::vector<double>> vd;
      for (const auto& v : values) vd.push_back(to_double(v));
      const auto ref = run_extremum_reference(is_max, c.shapes, vd, to_double(dy));
      const auto mag = run_extremum_reference(is_max, c.shapes, vd, absolute(to_double(dy)));
      ExtremumRun start;
      for (size_t i = 0; i < values.size(); ++i) {
        expect_matches_reference(got.dx[i], ref[i], mag[i], "dx" + std::to_string(i));
        start.dx.push_back(random_values(values[i].size(), 60 + static_cast<uint32_t>(i)));
      }
      const ExtremumRun added =
          run_extremum(is_max, c.shapes, values, dy, 2, GradMode::kAccumulate, &start);
      for (size_t i = 0; i < values.size(); ++i) {
        std::vector<double> want = ref[i], bound = mag[i];
        for (size_t k = 0; k < want.size(); ++k) {
          want[k] += start.dx[i][k];
          bound[k] += std::abs(start.dx[i][k]);
        }
        expect_matches_reference(added.dx[i], want, bound, "dx accumulated " + std::to_string(i));
      }
    }
  }
}

TEST(ExtremumBackward, SameBitsForAnyThreadCount) {
  const std::vector<Shape> shapes = {{4, 33, 20, 37}, {33, 1, 37}, {4, 1, 20, 1}};
  const auto values = tied_values(shapes, 70);
  const std::vector<float> dy = random_values(4 * 33 * 20 * 37, 80);
  for (bool is_max : {true, false}) {
    const ExtremumRun one = run_extremum(is_max, shapes, values, dy, 1);
    const ExtremumRun two = run_extremum(is_max, shapes, values, dy, 2);
    for (size_t i = 0; i < shapes.size(); ++i) {
      expect_same_bits(one.dx[i].data(), two.dx[i].data(), one.dx[i].size(),
                       "dx" + std::to_string(i));
    }
  }
}

}  // namespace
}  // namespace qforge::kernels
