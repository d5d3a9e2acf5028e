// BatchNormalization inference and LayerNormalization, parallel over planes and rows.
#include "kernels/norm.h"

#include <algorithm>
#include <cmath>

#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

// Rows or planes are grouped into tasks of at least this many elements.
constexpr int64_t kTaskElements = 1 << 14;

int64_t grain_for(int64_t elements_per_item) {
  return std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, elements_per_item));
}

}  // namespace

void batch_norm_fold(const float* gamma, const float* beta, const float* mean, const float* var,
                     float epsilon, int64_t channels, float* scale, float* shift) {
  for (int64_t c = 0; c < channels; ++c) {
    const double s = static_cast<double>(gamma[c]) /
                     std::sqrt(static_cast<double>(var[c]) + static_cast<double>(epsilon));
    scale[c] = static_cast<float>(s);
    shift[c] = static_cast<float>(static_cast<double>(beta[c]) - static_cast<double>(mean[c]) * s);
  }
}

void channel_affine(const float* x, const float* scale, const float* shift, int64_t batch,
                    int64_t channels, int64_t inner, float* y) {
  parallel_for(batch * channels, grain_for(inner), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % channels;
      const float s = scale[c];
      const float b = shift[c];
      const float* xp = x + plane * inner;
      float* yp = y + plane * inner;
      for (int64_t i = 0; i < inner; ++i) yp[i] = xp[i] * s + b;
    }
  });
}

void layer_norm(const LayerNormDims& dims, const float* x, const float* scale, const float* bias,
                float* y, float* mean, float* inv_std_dev) {
  const int64_t d = dims.size;
  if (d == 0) return;
  const float inv_d = 1.0f / static_cast<float>(d);
  parallel_for(dims.rows, grain_for(d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * d;
      float* yr = y + r * d;
      const float mu = lane_sum(xr, d) * inv_d;
      const float var = lane_sum_squared_deviation(xr, d, mu) * inv_d;
      const float inv = 1.0f / std::sqrt(var + dims.epsilon);
      if (bias) {
        for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - mu) * inv * scale[i] + bias[i];
      } else {
        for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - mu) * inv * scale[i];
      }
      if (mean) mean[r] = mu;
      if (inv_std_dev) inv_std_dev[r] = inv;
    }
  });
}

}  // namespace qforge::kernels
