// Shared by the QuantizeLinear / DequantizeLinear tests: data that sits on rounding ties and
// outside the integer range, and a step-by-step reference of the ONNX definition.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/tensor.h"

namespace qforge::testing {

// Index along `axis` of flat element i of a row-major tensor of `shape` (0 for axis < 0).
inline int64_t channel_of(const kernels::Shape& shape, int axis, int64_t i) {
  if (axis < 0) return 0;
  int64_t inner = 1;
  for (size_t d = static_cast<size_t>(axis) + 1; d < shape.size(); ++d) inner *= shape[d];
  return (i / inner) % shape[static_cast<size_t>(axis)];
}

// A float32 x with x / scale == target exactly in float32, when one lies near target · scale.
inline bool exact_quotient(float target, float scale, float& x) {
  float guess = target * scale;
  for (int step = 0; step < 8; ++step) {
    if (guess / scale == target) {
      x = guess;
      return true;
    }
    guess = std::nextafter(guess, guess / scale < target ? std::numeric_limits<float>::infinity()
                                                         : -std::numeric_limits<float>::infinity());
  }
  return false;
}

// Mostly exact ties (x / scale = k + 0.5, both signs, k well beyond the int8 range), plus
// values just off ties, huge and infinite values, zeros of both signs.
inline kernels::Tensor qdq_stress_data(const kernels::Shape& shape, int axis,
                                       const std::vector<float>& scales, bool finite_only,
                                       uint32_t seed, int64_t* ties = nullptr) {
  kernels::Tensor t(kernels::DType::kFloat32, shape);
  float* p = t.data<float>();
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> k_dist(-300, 300);
  std::uniform_int_distribution<int> kind_dist(0, 19);
  const float inf = std::numeric_limits<float>::infinity();
  const float specials[] = {1e30f, -1e30f, inf, -inf, 0.0f, -0.0f, 3.4e38f, -3.4e38f};
  int64_t tie_count = 0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float s = scales[static_cast<size_t>(channel_of(shape, axis, i))];
    const int kind = kind_dist(rng);
    const float target = static_cast<float>(k_dist(rng)) + 0.5f;
    float x = target * s;
    if (kind < 14) {
      tie_count += exact_quotient(target, s, x);
    } else if (kind < 16) {
      x = std::nextafter(x, kind == 14 ? inf : -inf);
    } else if (kind < 19) {
      size_t pick = static_cast<size_t>(k_dist(rng) + 300) % 8;
      if (finite_only) pick %= 2;
      x = specials[pick];
      if (finite_only && (pick == 4 || pick == 5)) x = 0.0f;
    } else {
      x = static_cast<float>(k_dist(rng)) * s * 0.37f;
    }
    p[i] = x;
  }
  if (ties) *ties = tie_count;
  return t;
}

// ONNX QuantizeLinear for one element: saturate(round_half_even(x / scale) + zero_point),
// written with nearbyint in double after the float32 division. NaN gives the zero point.
inline int32_t reference_quantize(float x, float scale, int32_t zero_point, int32_t lo,
                                  int32_t hi) {
  const float quotient = x / scale;
  if (std::isnan(quotient)) return zero_point;
  double r = std::nearbyint(static_cast<double>(quotient)) + zero_point;
  r = std::fmin(std::fmax(r, lo), hi);
  return static_cast<int32_t>(r);
}

inline bool same_bits(const kernels::Tensor& a, const kernels::Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace qforge::testing
