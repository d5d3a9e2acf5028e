// Element-wise checks of float results against a reference, for kernel tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace qforge::testing {

// |actual - expected| <= atol + rtol·|expected| everywhere (NaN matches NaN); reports the first
// failures.
inline void expect_close(const std::vector<float>& actual, const std::vector<float>& expected,
                         double atol, double rtol, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int failures = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double a = actual[i];
    const double e = expected[i];
    const bool both_nan = std::isnan(a) && std::isnan(e);
    if (!both_nan && !(std::abs(a - e) <= atol + rtol * std::abs(e))) {
      if (++failures <= 5)
        ADD_FAILURE() << what << ": element " << i << " is " << a << ", expected " << e;
    }
  }
  EXPECT_EQ(failures, 0) << what;
}

inline void expect_same_bits(const float* a, const float* b, size_t count,
                             const std::string& what) {
  if (count == 0) return;  // memcmp's pointers must not be null, even for no bytes
  EXPECT_EQ(std::memcmp(a, b, count * sizeof(float)), 0) << what;
}

}  // namespace qforge::testing
