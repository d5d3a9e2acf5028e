// The distillation loss of outputs that are no logits (kernels/output_distillation.h): against a
// float64 evaluation of its definition, its gradient against central differences of that
// definition, and the same bits at 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/output_distillation.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::random_values;
using testing::ThreadCount;

// 1/B · Σ_b mean_i (s − t)² / (mean_i t² + ε), in float64.
double reference_loss(int64_t batch, int64_t n, const std::vector<double>& s,
                      const std::vector<double>& t) {
  double total = 0;
  for (int64_t b = 0; b < batch; ++b) {
    double error = 0, power = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = s[b * n + i] - t[b * n + i];
      error += d * d;
      power += t[b * n + i] * t[b * n + i];
    }
    total += (error / n) / (power / n + kRelativeErrorEpsilon);
  }
  return total / batch;
}

std::vector<double> widened(const std::vector<float>& v) {
  return {v.begin(), v.end()};
}

struct Case {
  int64_t batch;
  int64_t n;
  float teacher_scale;  // outputs of different units: pixels, probabilities
};

TEST(OutputDistillation, LossAndGradientFollowTheDefinition) {
  for (const Case c :
       {Case{1, 1, 1.0f}, Case{3, 17, 30.0f}, Case{4, 640, 0.05f}, Case{2, 4099, 2.0f}}) {
    const size_t count = static_cast<size_t>(c.batch * c.n);
    std::vector<float> t = random_values(count, 3, -c.teacher_scale, c.teacher_scale);
    std::vector<float> s = random_values(count, 4, -0.3f, 0.3f);
    for (size_t i = 0; i < count; ++i) s[i] = t[i] + s[i] * c.teacher_scale;
    std::vector<float> rows(static_cast<size_t>(c.batch));
    const float loss = relative_squared_error(c.batch, c.n, s.data(), t.data(), rows.data());
    const double want = reference_loss(c.batch, c.n, widened(s), widened(t));
    EXPECT_NEAR(loss, want, 1e-5 * want) << c.batch << "x" << c.n;

    // dloss 0.7, written then added to.
    std::vector<float> grad(count, 0.5f);
    relative_squared_error_backward(c.batch, c.n, s.data(), t.data(), 0.7f, grad.data(),
                                    GradMode::kAccumulate);
    std::vector<double> sd = widened(s);
    const std::vector<double> td = widened(t);
    for (size_t i = 0; i < count; i += std::max<size_t>(1, count / 23)) {
      const double h = 1e-4 * c.teacher_scale;
      const double keep = sd[i];
      sd[i] = keep + h;
      const double up = reference_loss(c.batch, c.n, sd, td);
      sd[i] = keep - h;
      const double down = reference_loss(c.batch, c.n, sd, td);
      sd[i] = keep;
      const double numeric = 0.7 * (up - down) / (2 * h);
      EXPECT_NEAR(grad[i] - 0.5f, numeric, 1e-3 * std::abs(numeric) + 1e-7)
          << c.batch << "x" << c.n << " element " << i;
    }
  }
}

TEST(OutputDistillation, SameBitsAtOneAndTwoThreads) {
  const int64_t batch = 8, n = 5000;
  const std::vector<float> t = random_values(static_cast<size_t>(batch * n), 5, -3.0f, 3.0f);
  const std::vector<float> s = random_values(static_cast<size_t>(batch * n), 6, -3.0f, 3.0f);
  std::vector<float> rows(batch), grad1(t.size()), grad2(t.size());
  float loss1 = 0, loss2 = 0;
  {
    ThreadCount one(1);
    loss1 = relative_squared_error(batch, n, s.data(), t.data(), rows.data());
    relative_squared_error_backward(batch, n, s.data(), t.data(), 1.0f, grad1.data());
  }
  {
    ThreadCount two(2);
    loss2 = relative_squared_error(batch, n, s.data(), t.data(), rows.data());
    relative_squared_error_backward(batch, n, s.data(), t.data(), 1.0f, grad2.data());
  }
  EXPECT_EQ(std::memcmp(&loss1, &loss2, sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(grad1.data(), grad2.data(), grad1.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace qforge::kernels
