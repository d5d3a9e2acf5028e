// Seeded random float32 tensors for tests.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "kernels/tensor.h"

namespace qforge::testing {

// A float32 tensor of `shape` drawn uniformly from [lo, hi) with `rng`.
inline kernels::Tensor random_tensor(kernels::Shape shape, std::mt19937& rng, float lo = -1.f,
                                     float hi = 1.f) {
  kernels::Tensor t(kernels::DType::kFloat32, std::move(shape));
  std::uniform_real_distribution<float> dist(lo, hi);
  for (float& f : t.span<float>()) f = dist(rng);
  return t;
}

// A float32 tensor of `shape` drawn uniformly from [lo, hi) with a generator seeded by `seed`.
inline kernels::Tensor random_f32(const kernels::Shape& shape, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  return random_tensor(shape, rng, lo, hi);
}

// `count` floats drawn uniformly from [lo, hi) with a generator seeded by `seed`.
inline std::vector<float> random_values(size_t count, uint32_t seed, float lo = -1.f,
                                        float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(count);
  for (float& x : v) x = dist(rng);
  return v;
}

}  // namespace qforge::testing
