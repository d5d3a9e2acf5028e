// Checks for backward kernels: float64 central finite differences of a float64 forward, and
// float32 kernel results against a float64 reference within a bound scaled by the sum of the
// magnitudes of the terms each result adds up.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace qforge::testing {

inline std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

inline std::vector<float> to_float(const std::vector<double>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(v[i]);
  return out;
}

// |actual − expected| <= tolerance·(1 + |expected|) for every element, each failure reported.
inline void expect_near_all(const std::vector<double>& actual, const std::vector<double>& expected,
                            double tolerance, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t i = 0; i < actual.size(); ++i) {
    EXPECT_NEAR(actual[i], expected[i], tolerance * (1 + std::abs(expected[i])))
        << what << " element " << i;
  }
}

inline std::vector<double> absolute(const std::vector<double>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = std::abs(v[i]);
  return out;
}

// Σ y·r: a scalar loss whose gradient with respect to y is r.
inline double dot(const std::vector<double>& y, const std::vector<double>& r) {
  double sum = 0.0;
  for (size_t i = 0; i < y.size(); ++i) sum += y[i] * r[i];
  return sum;
}

// Central differences (L(p + h) − L(p − h)) / 2h of loss() with respect to every element of
// `param`, which loss() reads; `param` is restored.
inline std::vector<double> central_differences(std::vector<double>& param,
                                               const std::function<double()>& loss,
                                               double step = 1e-4) {
  std::vector<double> grad(param.size());
  for (size_t i = 0; i < param.size(); ++i) {
    const double saved = param[i];
    param[i] = saved + step;
    const double up = loss();
    param[i] = saved - step;
    const double down = loss();
    param[i] = saved;
    grad[i] = (up - down) / (2.0 * step);
  }
  return grad;
}

// |analytic − numeric| <= tolerance·(1 + |numeric|) everywhere.
inline void expect_matches_differences(const std::vector<double>& analytic,
                                       const std::vector<double>& numeric, double tolerance,
                                       const std::string& what) {
  ASSERT_EQ(analytic.size(), numeric.size()) << what;
  int failures = 0;
  for (size_t i = 0; i < analytic.size(); ++i) {
    if (!(std::abs(analytic[i] - numeric[i]) <= tolerance * (1.0 + std::abs(numeric[i])))) {
      if (++failures <= 5) {
        ADD_FAILURE() << what << ": element " << i << " is " << analytic[i]
                      << ", finite differences give " << numeric[i];
      }
    }
  }
  EXPECT_EQ(failures, 0) << what;
}

// |actual − expected| <= 64·ε_f32·magnitude + 1e-30 everywhere, where magnitude[i] is the sum
// of |terms| that expected[i] adds up (the reference run on absolute values): float32 rounding
// of a sum stays far below that bound, while one missing or extra term of ordinary size does
// not.
inline void expect_matches_reference(const std::vector<float>& actual,
                                     const std::vector<double>& expected,
                                     const std::vector<double>& magnitude,
                                     const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  ASSERT_EQ(magnitude.size(), expected.size()) << what;
  constexpr double kUlps = 64.0 * std::numeric_limits<float>::epsilon();
  int failures = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double bound = kUlps * magnitude[i] + 1e-30;
    if (!(std::abs(actual[i] - expected[i]) <= bound)) {
      if (++failures <= 5) {
        ADD_FAILURE() << what << ": element " << i << " is " << actual[i] << ", expected "
                      << expected[i] << " (bound " << bound << ")";
      }
    }
  }
  EXPECT_EQ(failures, 0) << what;
}

}  // namespace qforge::testing
