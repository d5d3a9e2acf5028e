// What the backward kernels (conv_backward.h, gemm_backward.h, pool_backward.h) share: how they
// write their gradient outputs (GradMode, grad_mode.h), and the fixed-order lane sums of
// products their weight gradients use.
#pragma once

#include <cstdint>

#include "kernels/grad_mode.h"
#include "kernels/norm.h"

namespace qforge::kernels {

// Adds a[i]·b[i·b_stride] for i in [0, n) into lane i mod kSumLanes of acc: many short rows
// then sum into one set of lanes, combined once at the end (lane_combine).
inline void lane_dot_add(float* acc, const float* a, const float* b, int64_t b_stride, int64_t n) {
  float lanes[kSumLanes];  // a local copy stays in registers; acc could alias a or b
  for (int j = 0; j < kSumLanes; ++j) lanes[j] = acc[j];
  int64_t i = 0;
  if (b_stride == 1) {
    for (; i + kSumLanes <= n; i += kSumLanes) {
      for (int j = 0; j < kSumLanes; ++j) lanes[j] += a[i + j] * b[i + j];
    }
  } else {
    for (; i + kSumLanes <= n; i += kSumLanes) {
      for (int j = 0; j < kSumLanes; ++j) lanes[j] += a[i + j] * b[(i + j) * b_stride];
    }
  }
  for (int j = 0; i + j < n; ++j) lanes[j] += a[i + j] * b[(i + j) * b_stride];
  for (int j = 0; j < kSumLanes; ++j) acc[j] = lanes[j];
}

// The pairwise combination of kSumLanes partial sums that lane_sum ends with.
inline float lane_combine(float* acc) {
  for (int width = kSumLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

}  // namespace qforge::kernels
