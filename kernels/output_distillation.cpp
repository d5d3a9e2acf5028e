#include "kernels/output_distillation.h"

#include <algorithm>

#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

constexpr int kLanes = 16;

// Σ_i a_i·b_i over n elements, in kLanes lanes added pairwise at the end.
template <class Term>
double lane_sum(int64_t n, Term term) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += term(i + j);
  }
  for (int j = 0; i + j < n; ++j) acc[j] += term(i + j);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

// mean t² + ε of one sample.
float teacher_power(int64_t n, const float* t) {
  const double sum = lane_sum(n, [&](int64_t i) { return t[i] * t[i]; });
  return static_cast<float>(sum / static_cast<double>(n)) + kRelativeErrorEpsilon;
}

int64_t rows_per_task(int64_t n) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, n));
}

}  // namespace

float relative_squared_error(int64_t batch, int64_t n, const float* student, const float* teacher,
                             float* row_loss) {
  if (batch == 0) return 0.0f;
  parallel_for(batch, rows_per_task(n), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* s = student + b * n;
      const float* t = teacher + b * n;
      if (n == 0) {
        row_loss[b] = 0.0f;
        continue;
      }
      const double error = lane_sum(n, [&](int64_t i) {
        const float d = s[i] - t[i];
        return d * d;
      });
      row_loss[b] = static_cast<float>(error / static_cast<double>(n)) / teacher_power(n, t);
    }
  });
  double sum = 0;
  for (int64_t b = 0; b < batch; ++b) sum += row_loss[b];
  return static_cast<float>(sum / static_cast<double>(batch));
}

void relative_squared_error_backward(int64_t batch, int64_t n, const float* student,
                                     const float* teacher, float dloss, float* dstudent,
                                     GradMode mode) {
  if (batch == 0 || n == 0) return;
  parallel_for(batch, rows_per_task(n), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* s = student + b * n;
      const float* t = teacher + b * n;
      float* d = dstudent + b * n;
      const float scale =
          dloss / static_cast<float>(batch) * 2.0f / (static_cast<float>(n) * teacher_power(n, t));
      if (mode == GradMode::kAccumulate) {
        for (int64_t i = 0; i < n; ++i) d[i] += scale * (s[i] - t[i]);
      } else {
        for (int64_t i = 0; i < n; ++i) d[i] = scale * (s[i] - t[i]);
      }
    }
  });
}

}  // namespace qforge::kernels
