// What the backward kernels (conv_backward.h, gemm_backward.h, pool_backward.h) share: how they
// write their gradient outputs, and the fixed-order dot product their weight gradients use.
#pragma once

#include <cstdint>

#include "kernels/norm.h"

namespace qforge::kernels {

// Whether a backward kernel overwrites its gradient outputs or adds to what they hold (a tensor
// read by several nodes receives the sum of its readers' gradients). Either way every output is
// a fixed sequence of float operations, the same for any thread count; with kAccumulate the old
// value is where that sequence starts instead of zero.
enum class GradientWrite : uint8_t { kOverwrite, kAccumulate };

// Σ a[i]·b[i·b_stride] for i in [0, n) in lane_sum's order: kSumLanes partial sums, combined
// pairwise, so the loop vectorises and the bits depend only on the values.
inline float lane_dot(const float* a, const float* b, int64_t b_stride, int64_t n) {
  float acc[kSumLanes] = {};
  int64_t i = 0;
  if (b_stride == 1) {
    for (; i + kSumLanes <= n; i += kSumLanes) {
      for (int j = 0; j < kSumLanes; ++j) acc[j] += a[i + j] * b[i + j];
    }
  } else {
    for (; i + kSumLanes <= n; i += kSumLanes) {
      for (int j = 0; j < kSumLanes; ++j) acc[j] += a[i + j] * b[(i + j) * b_stride];
    }
  }
  for (int j = 0; i + j < n; ++j) acc[j] += a[i + j] * b[(i + j) * b_stride];
  for (int width = kSumLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

}  // namespace qforge::kernels
