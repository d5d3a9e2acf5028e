// ReduceMean's backward: every input element receives its output's gradient divided by the
// count averaged, on awkward shapes and axis sets (one reduced block, alternating blocks,
// keepdims-free and size-1 axes), checked element by element against a naive index walk, by
// float64 central differences of Σ dy · mean(x), accumulated, and for any thread count.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/pool.h"
#include "kernels/pool_backward.h"
#include "tests/support/float_checks.h"
#include "tests/support/gradient_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::random_values;
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
};

// For each element of x (row-major), the row-major index of its output.
std::vector<int64_t> output_index(const Shape& shape, const std::vector<int64_t>& axes) {
  int64_t total = 1;
  for (int64_t d : shape) total *= d;
  std::vector<int64_t> out(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) {
    int64_t rest = i;
    int64_t at = 0;
    int64_t stride = 1;
    for (int64_t a = static_cast<int64_t>(shape.size()) - 1; a >= 0; --a) {
      const int64_t d = shape[static_cast<size_t>(a)];
      const bool reduced = std::find(axes.begin(), axes.end(), a) != axes.end();
      if (!reduced) {
        at += (rest % d) * stride;
        stride *= d;
      }
      rest /= d;
    }
    out[static_cast<size_t>(i)] = at;
  }
  return out;
}

TEST(ReduceMeanBackward, SpreadsEachOutputsGradientOverItsElements) {
  uint32_t seed = 3;
  for (const ReduceCase& c : kCases) {
    SCOPED_TRACE(shape_str(c.shape));
    const ReducePlan plan = plan_reduce(c.shape, c.axes);
    const std::vector<int64_t> at = output_index(c.shape, c.axes);
    int64_t outputs = 1;
    for (int64_t o : at) outputs = std::max(outputs, o + 1);
    const std::vector<float> dy = random_values(static_cast<size_t>(outputs), seed++);
    std::vector<float> dx(at.size(), NAN);
    reduce_mean_backward(plan, dy.data(), dx.data());
    for (size_t i = 0; i < at.size(); ++i) {
      ASSERT_EQ(dx[i], dy[static_cast<size_t>(at[i])] / static_cast<float>(plan.count)) << i;
    }
    // Central differences of Σ dy · mean(x) in float64.
    std::vector<double> x = testing::to_double(random_values(at.size(), seed++));
    auto loss = [&] {
      std::vector<double> sums(static_cast<size_t>(outputs), 0.0);
      for (size_t i = 0; i < x.size(); ++i) sums[static_cast<size_t>(at[i])] += x[i];
      double l = 0;
      for (size_t o = 0; o < sums.size(); ++o) {
        l += sums[o] / static_cast<double>(plan.count) * dy[o];
      }
      return l;
    };
    const std::vector<double> numeric = testing::central_differences(x, loss);
    testing::expect_matches_differences(testing::to_double(dx), numeric, 1e-7, "ReduceMean dx");
    std::vector<float> added(dx.size(), 1.0f);
    reduce_mean_backward(plan, dy.data(), added.data(), GradMode::kAccumulate);
    for (size_t i = 0; i < dx.size(); ++i) ASSERT_EQ(added[i], 1.0f + dx[i]);
  }
}

TEST(ReduceMeanBackward, SameBitsForAnyThreadCount) {
  const Shape shape = {6, 5, 301, 7};
  const std::vector<int64_t> axes = {1, 3};
  const ReducePlan plan = plan_reduce(shape, axes);
  const std::vector<float> dy = random_values(6 * 301, 21);
  std::vector<float> one(6 * 5 * 301 * 7);
  std::vector<float> many(one.size());
  {
    ThreadCount threads(1);
    reduce_mean_backward(plan, dy.data(), one.data());
  }
  reduce_mean_backward(plan, dy.data(), many.data());
  testing::expect_same_bits(one.data(), many.data(), one.size(), "ReduceMean dx threads");
}

}  // namespace
}  // namespace qforge::kernels
