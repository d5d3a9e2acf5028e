// Binary op backward under broadcasting: the float64 reference against central finite
// differences, the float32 kernel against the reference for every broadcast form, and the same
// bits on 1 and 2 threads.
#include <gtest/gtest.h>

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

const BinaryOp kOps[] = {BinaryOp::kAdd, BinaryOp::kSub, BinaryOp::kMul, BinaryOp::kDiv};

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
    default:
      return "other";
  }
}

struct BinaryData {
  BroadcastPlan plan;
  std::vector<float> a, b, dy;
};

// b stays in ±[0.5, 1.5] so that Div is smooth around every value.
BinaryData binary_data(const BinaryCase& c, uint32_t seed) {
  BinaryData d;
  const Shape shapes[] = {c.a, c.b};
  d.plan = plan_broadcast(shapes);
  d.a = random_values(static_cast<size_t>(shape_numel(c.a)), seed);
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
      const BinaryData d = binary_data(c, 1);
      std::vector<double> a = to_double(d.a), b = to_double(d.b);
      const std::vector<double> dy = to_double(d.dy);
      std::vector<double> y;
      auto loss = [&] {
        reference::binary_f64(op, c.a, a.data(), c.b, b.data(), y);
        return testing::dot(y, dy);
      };
      const Reference ref = run_reference(op, c, a, b, dy);
      // Div is not linear: the differences carry an O(step²) error.
      const double tolerance = op == BinaryOp::kDiv ? 1e-6 : 1e-8;
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
      const BinaryData d = binary_data(c, 2);
      const BinaryResult r = run_backward(op, d, 2);
      const std::vector<double> a = to_double(d.a), b = to_double(d.b), dy = to_double(d.dy);
      const Reference ref = run_reference(op, c, a, b, dy);
      // Every term of the absolute values' gradient has one sign: its magnitude is Σ|terms|.
      const Reference mag = run_reference(op, c, absolute(a), absolute(b), absolute(dy));
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
    EXPECT_STREQ(e.what(), "binary_backward: expected Add, Sub, Mul or Div, got Mod");
  }
}

}  // namespace
}  // namespace qforge::kernels
