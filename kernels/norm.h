// Normalisation kernels: BatchNormalization inference (folded to a per-channel affine map) and
// LayerNormalization, plus the fixed-order vectorised row sums they and the pooling and softmax
// kernels share.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qforge::kernels {

// Partial sums per lane; a row is summed lane-interleaved and the lanes are combined pairwise,
// so the loop vectorises and the result depends only on the values, never on alignment or on
// how rows are spread over threads.
inline constexpr int kSumLanes = 16;

inline float lane_sum(const float* x, int64_t n) {
  float acc[kSumLanes] = {};
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes) {
    for (int j = 0; j < kSumLanes; ++j) acc[j] += x[i + j];
  }
  for (int j = 0; i + j < n; ++j) acc[j] += x[i + j];
  for (int width = kSumLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

// Sum of (x - center)² in the same lane order.
inline float lane_sum_squared_deviation(const float* x, int64_t n, float center) {
  float acc[kSumLanes] = {};
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes) {
    for (int j = 0; j < kSumLanes; ++j) {
      const float d = x[i + j] - center;
      acc[j] += d * d;
    }
  }
  for (int j = 0; i + j < n; ++j) {
    const float d = x[i + j] - center;
    acc[j] += d * d;
  }
  for (int width = kSumLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

// BatchNormalization inference as y = x·scale + shift per channel:
// scale = gamma / sqrt(var + epsilon), shift = beta - mean·scale (computed in double).
void batch_norm_fold(const float* gamma, const float* beta, const float* mean, const float* var,
                     float epsilon, int64_t channels, float* scale, float* shift);

// y[n, c, i] = x[n, c, i]·scale[c] + shift[c] over x [batch, channels, inner].
void channel_affine(const float* x, const float* scale, const float* shift, int64_t batch,
                    int64_t channels, int64_t inner, float* y);

struct LayerNormDims {
  int64_t rows = 0;  // product of the dimensions before the normalised axis
  int64_t size = 0;  // product of the normalised dimensions
  float epsilon = 1e-5f;
};

// Per row: y = (x - mean) / sqrt(var + epsilon) · scale + bias, with scale and bias of `size`
// values (bias may be null). mean and inv_std_dev, when not null, receive one value per row.
void layer_norm(const LayerNormDims& dims, const float* x, const float* scale, const float* bias,
                float* y, float* mean, float* inv_std_dev);

}  // namespace qforge::kernels
