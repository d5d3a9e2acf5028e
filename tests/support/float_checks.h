// Checks of float results against a reference: element-wise, bit for bit, relative L2.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "kernels/tensor.h"

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

// ‖got − want‖ / ‖want‖ over float32 tensors of one size, in double (‖want‖ floored at 1e-30).
inline double relative_l2(const kernels::Tensor& got, const kernels::Tensor& want) {
  double diff = 0, norm = 0;
  const float* g = got.data<float>();
  const float* w = want.data<float>();
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double d = static_cast<double>(g[i]) - w[i];
    diff += d * d;
    norm += static_cast<double>(w[i]) * w[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

// max |got − want| <= tolerance · max(1, max |want|) over float32 tensors of one shape; int64
// tensors exactly.
inline void expect_close_scaled(const kernels::Tensor& got, const kernels::Tensor& want,
                                double tolerance, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  if (got.dtype() == kernels::DType::kInt64) {
    EXPECT_EQ(got.to_int64_vector(), want.to_int64_vector()) << what;
    return;
  }
  double scale = 1.0, worst = 0.0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    scale = std::max(scale, std::abs(double(want.data<float>()[i])));
    worst = std::max(worst, std::abs(double(got.data<float>()[i]) - want.data<float>()[i]));
  }
  EXPECT_LE(worst, tolerance * scale) << what;
}

// qforge's `grad` output against PyTorch's (keyed alike, "loss" and one gradient per
// parameter): the loss within 1e-5 relative, each gradient within 1e-4 relative L2. A gradient
// that is zero by construction (attention's key bias: softmax ignores a constant added to a row)
// is rounding noise on both sides, held below 1e-6 of the whole gradient's norm.
inline void expect_gradients_match(const std::map<std::string, kernels::Tensor>& got,
                                   const std::map<std::string, kernels::Tensor>& want) {
  auto norm = [](const kernels::Tensor& t) {
    double sum = 0;
    for (float v : t.to_float_vector()) sum += static_cast<double>(v) * v;
    return std::sqrt(sum);
  };
  double total = 0;
  for (const auto& [name, reference] : want) {
    if (name != "loss") total += norm(reference) * norm(reference);
  }
  const double zero_level = 1e-6 * std::sqrt(total);
  for (const auto& [name, reference] : want) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.count(name));
    const kernels::Tensor& g = got.at(name);
    ASSERT_EQ(g.shape(), reference.shape());
    if (name == "loss") {
      const float l = reference.data<float>()[0];
      EXPECT_LE(std::abs(g.data<float>()[0] - l), 1e-5f * std::abs(l));
      continue;
    }
    if (norm(reference) <= zero_level) {
      EXPECT_LE(norm(g), zero_level) << "zero by construction";
      continue;
    }
    EXPECT_LE(relative_l2(g, reference), 1e-4);
  }
}

inline void expect_same_bits(const float* a, const float* b, size_t count,
                             const std::string& what) {
  if (count == 0) return;  // memcmp's pointers must not be null, even for no bytes
  EXPECT_EQ(std::memcmp(a, b, count * sizeof(float)), 0) << what;
}

}  // namespace qforge::testing
