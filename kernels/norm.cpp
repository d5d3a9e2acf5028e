// BatchNormalization inference and training, LayerNormalization, GroupNormalization and
// InstanceNormalization with their backwards, parallel over planes, channels, rows, groups or
// column blocks.
#include "kernels/norm.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/error.h"
#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

// Rows or planes are grouped into tasks of at least this many elements.
constexpr int64_t kTaskElements = 1 << 14;

int64_t grain_for(int64_t elements_per_item) {
  return std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, elements_per_item));
}

// Columns per task of the LayerNorm parameter gradients: one 64-byte vector of floats.
constexpr int64_t kColumnBlock = 16;

// Sum of dy[i]·(x[i] - center) in lane order.
inline float lane_sum_centered_product(const float* dy, const float* x, int64_t n, float center) {
  float acc[kSumLanes] = {};
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes) {
    for (int j = 0; j < kSumLanes; ++j) acc[j] += dy[i + j] * (x[i + j] - center);
  }
  for (int j = 0; i + j < n; ++j) acc[j] += dy[i + j] * (x[i + j] - center);
  for (int width = kSumLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

inline void store_grad(float* out, float value, GradMode mode) {
  *out = mode == GradMode::kAccumulate ? *out + value : value;
}

}  // namespace

void batch_norm_fold(const BatchNormParameters& bn, const float* conv_bias, FoldPrecision precision,
                     const BatchNormFold& out) {
  for (int64_t c = 0; c < bn.channels; ++c) {
    double factor = 0;
    if (precision == FoldPrecision::kFloat) {
      const float s = bn.gamma[c] / std::sqrt(bn.var[c] + bn.epsilon);
      factor = s;
      if (out.inv_std) out.inv_std[c] = 1.0f / std::sqrt(bn.var[c] + bn.epsilon);
      if (out.shift) {
        out.shift[c] =
            conv_bias ? (conv_bias[c] - bn.mean[c]) * s + bn.beta[c] : bn.beta[c] - bn.mean[c] * s;
      }
    } else {
      const double std_dev =
          std::sqrt(static_cast<double>(bn.var[c]) + static_cast<double>(bn.epsilon));
      factor = static_cast<double>(bn.gamma[c]) / std_dev;
      if (out.inv_std) out.inv_std[c] = 1.0 / std_dev;
      if (out.shift) {
        const double mean = bn.mean[c];
        const double beta = bn.beta[c];
        const double shift = conv_bias ? (static_cast<double>(conv_bias[c]) - mean) * factor + beta
                                       : beta - mean * factor;
        out.shift[c] = static_cast<float>(shift);
      }
    }
    if (out.factor) out.factor[c] = factor;
    if (out.scale) out.scale[c] = static_cast<float>(factor);
  }
}

void fold_weight(const float* w, const double* factor, int64_t channels, int64_t per_channel,
                 float* folded) {
  parallel_for(channels, grain_for(per_channel), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const double s = factor[c];
      for (int64_t k = c * per_channel; k < (c + 1) * per_channel; ++k) {
        folded[k] = static_cast<float>(w[k] * s);
      }
    }
  });
}

void fold_weight_transposed(const float* w, const double* factor, int64_t in_channels,
                            int64_t groups, int64_t out_per_group, int64_t per_channel,
                            float* folded) {
  const int64_t in_per_group = in_channels / groups;
  const int64_t row = out_per_group * per_channel;
  for (int64_t ci = 0; ci < in_channels; ++ci) {
    const int64_t first = ci / in_per_group * out_per_group;
    fold_weight(w + ci * row, factor + first, out_per_group, per_channel, folded + ci * row);
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

void rms_norm(const LayerNormDims& dims, const float* x, const float* scale, float* y) {
  const int64_t d = dims.size;
  if (d == 0) return;
  const float inv_d = 1.0f / static_cast<float>(d);
  parallel_for(dims.rows, grain_for(d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * d;
      float* yr = y + r * d;
      const float mean_square = lane_sum_squared_deviation(xr, d, 0.0f) * inv_d;
      const float inv = 1.0f / std::sqrt(mean_square + dims.epsilon);
      for (int64_t i = 0; i < d; ++i) yr[i] = xr[i] * inv * scale[i];
    }
  });
}

namespace {

// The per-channel pieces of BatchNormalization training, shared by the one-shard kernels and the
// shard steps: every sum runs plane by plane in lane order, then over the batch in double.
double channel_sum(const BatchNormDims& d, const float* x, int64_t c) {
  double sum = 0;
  for (int64_t n = 0; n < d.batch; ++n)
    sum += lane_sum(x + (n * d.channels + c) * d.inner, d.inner);
  return sum;
}

double channel_squares(const BatchNormDims& d, const float* x, int64_t c, float mu) {
  double squares = 0;
  for (int64_t n = 0; n < d.batch; ++n) {
    squares += lane_sum_squared_deviation(x + (n * d.channels + c) * d.inner, d.inner, mu);
  }
  return squares;
}

void check_count(int64_t count) {
  if (count <= 1) {
    throw_invalid("batch_norm_training: expected more than 1 value per channel, got " +
                  std::to_string(count));
  }
}

// y of channel c from the whole batch's mean and Σ(x - mean)² over `count` values; the saved
// inverse deviation and the running update where asked.
// y = (x - mu)·inv·g + b over channel c: the forward's normalisation and its recomputation.
void normalize_channel(const BatchNormDims& d, int64_t c, const float* x, float g, float b,
                       float mu, float inv, float* y) {
  for (int64_t n = 0; n < d.batch; ++n) {
    const float* xp = x + (n * d.channels + c) * d.inner;
    float* yp = y + (n * d.channels + c) * d.inner;
    for (int64_t i = 0; i < d.inner; ++i) yp[i] = (xp[i] - mu) * inv * g + b;
  }
}

void channel_apply(const BatchNormDims& d, const BatchNormTrainingOptions& options, int64_t count,
                   int64_t c, const float* x, const float* gamma, const float* beta, float mu,
                   double squares, float* y, float* saved_inv_std, float* running_mean,
                   float* running_var) {
  const double var = squares / static_cast<double>(count);
  const float inv = 1.0f / std::sqrt(static_cast<float>(var) + d.epsilon);
  normalize_channel(d, c, x, gamma[c], beta[c], mu, inv, y);
  if (saved_inv_std) saved_inv_std[c] = inv;
  const double m = options.momentum;
  if (running_mean) running_mean[c] = static_cast<float>((1 - m) * running_mean[c] + m * mu);
  if (running_var) {
    const double unbiased = var * static_cast<double>(count) / static_cast<double>(count - 1);
    running_var[c] = static_cast<float>((1 - m) * running_var[c] + m * unbiased);
  }
}

void channel_backward_sums(const BatchNormDims& d, const float* x, const float* dy, int64_t c,
                           float mu, double& sum_dy, double& sum_dy_centered) {
  sum_dy = 0;
  sum_dy_centered = 0;
  for (int64_t n = 0; n < d.batch; ++n) {
    const int64_t offset = (n * d.channels + c) * d.inner;
    sum_dy += lane_sum(dy + offset, d.inner);
    sum_dy_centered += lane_sum_centered_product(dy + offset, x + offset, d.inner, mu);
  }
}

// dx, dgamma and dbeta of channel c: dx from the whole batch's sums over `count` values, dgamma
// and dbeta from `own_dy`, `own_centered` (the sums over the values this call covers).
void channel_backward_apply(const BatchNormDims& d, int64_t count, int64_t c, const float* x,
                            const float* gamma, float mu, float inv, const float* dy, double sum_dy,
                            double sum_dy_centered, double own_dy, double own_centered, float* dx,
                            float* dgamma, float* dbeta, GradMode mode) {
  if (dbeta) store_grad(dbeta + c, static_cast<float>(own_dy), mode);
  if (dgamma)
    store_grad(dgamma + c, static_cast<float>(own_centered * static_cast<double>(inv)), mode);
  if (!dx) return;
  const float k = gamma[c] * inv;
  const float mean_db = static_cast<float>(sum_dy / static_cast<double>(count));
  // x̂·dgamma / M folded into one factor on (x - mean).
  const float centered_factor =
      static_cast<float>(sum_dy_centered * static_cast<double>(inv) * static_cast<double>(inv) /
                         static_cast<double>(count));
  for (int64_t n = 0; n < d.batch; ++n) {
    const int64_t offset = (n * d.channels + c) * d.inner;
    const float* xp = x + offset;
    const float* dyp = dy + offset;
    float* dxp = dx + offset;
    if (mode == GradMode::kAccumulate) {
      for (int64_t i = 0; i < d.inner; ++i) {
        dxp[i] += k * (dyp[i] - mean_db - (xp[i] - mu) * centered_factor);
      }
    } else {
      for (int64_t i = 0; i < d.inner; ++i) {
        dxp[i] = k * (dyp[i] - mean_db - (xp[i] - mu) * centered_factor);
      }
    }
  }
}

}  // namespace

void batch_norm_training(const BatchNormDims& dims, const BatchNormTrainingOptions& options,
                         const float* x, const float* gamma, const float* beta, float* y,
                         float* saved_mean, float* saved_inv_std, float* running_mean,
                         float* running_var) {
  const int64_t count = dims.batch * dims.inner;
  if (dims.channels == 0) return;
  check_count(count);
  parallel_for(dims.channels, grain_for(count), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const float mu = batch_norm_mean(channel_sum(dims, x, c), count);
      channel_apply(dims, options, count, c, x, gamma, beta, mu, channel_squares(dims, x, c, mu), y,
                    saved_inv_std, running_mean, running_var);
      if (saved_mean) saved_mean[c] = mu;
    }
  });
}

void batch_norm_normalize(const BatchNormDims& dims, const float* x, const float* gamma,
                          const float* beta, const float* mean, const float* inv_std, float* y) {
  parallel_for(dims.channels, grain_for(dims.batch * dims.inner), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      normalize_channel(dims, c, x, gamma[c], beta[c], mean[c], inv_std[c], y);
    }
  });
}

void batch_norm_shard_sums(const BatchNormDims& dims, const float* x, double* sums) {
  parallel_for(dims.channels, grain_for(dims.batch * dims.inner), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) sums[c] = channel_sum(dims, x, c);
  });
}

void batch_norm_shard_squares(const BatchNormDims& dims, const float* x, const float* mean,
                              double* squares) {
  parallel_for(dims.channels, grain_for(dims.batch * dims.inner), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) squares[c] = channel_squares(dims, x, c, mean[c]);
  });
}

void batch_norm_apply_statistics(const BatchNormDims& dims, const BatchNormTrainingOptions& options,
                                 int64_t count, const float* x, const float* gamma,
                                 const float* beta, const float* mean, const double* squares,
                                 float* y, float* saved_inv_std, float* running_mean,
                                 float* running_var) {
  check_count(count);
  parallel_for(dims.channels, grain_for(dims.batch * dims.inner), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      channel_apply(dims, options, count, c, x, gamma, beta, mean[c], squares[c], y, saved_inv_std,
                    running_mean, running_var);
    }
  });
}

void batch_norm_training_backward(const BatchNormDims& dims, const float* x, const float* gamma,
                                  const float* saved_mean, const float* saved_inv_std,
                                  const float* dy, float* dx, float* dgamma, float* dbeta,
                                  GradMode mode) {
  const int64_t count = dims.batch * dims.inner;
  if (dims.channels == 0 || count == 0) return;
  parallel_for(dims.channels, grain_for(count), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double sum_dy = 0;
      double sum_dy_centered = 0;
      channel_backward_sums(dims, x, dy, c, saved_mean[c], sum_dy, sum_dy_centered);
      channel_backward_apply(dims, count, c, x, gamma, saved_mean[c], saved_inv_std[c], dy, sum_dy,
                             sum_dy_centered, sum_dy, sum_dy_centered, dx, dgamma, dbeta, mode);
    }
  });
}

void batch_norm_backward_shard_sums(const BatchNormDims& dims, const float* x,
                                    const float* saved_mean, const float* dy, double* sums) {
  parallel_for(dims.channels, grain_for(dims.batch * dims.inner), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      channel_backward_sums(dims, x, dy, c, saved_mean[c], sums[2 * c], sums[2 * c + 1]);
    }
  });
}

void batch_norm_backward_apply(const BatchNormDims& dims, int64_t count, const float* x,
                               const float* gamma, const float* saved_mean,
                               const float* saved_inv_std, const float* dy, const double* totals,
                               const double* own, float* dx, float* dgamma, float* dbeta,
                               GradMode mode) {
  if (dims.channels == 0 || count == 0) return;
  parallel_for(dims.channels, grain_for(dims.batch * dims.inner), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      channel_backward_apply(dims, count, c, x, gamma, saved_mean[c], saved_inv_std[c], dy,
                             totals[2 * c], totals[2 * c + 1], own[2 * c], own[2 * c + 1], dx,
                             dgamma, dbeta, mode);
    }
  });
}

void batch_norm_inference_backward(const BatchNormDims& dims, const float* x, const float* gamma,
                                   const float* mean, const float* var, const float* dy, float* dx,
                                   float* dgamma, float* dbeta, GradMode mode) {
  const int64_t channels = dims.channels;
  const int64_t inner = dims.inner;
  const int64_t count = dims.batch * inner;
  if (channels == 0 || count == 0) return;
  parallel_for(channels, grain_for(count), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const float mu = mean[c];
      const float inv = 1.0f / std::sqrt(var[c] + dims.epsilon);
      if (dbeta || dgamma) {
        double sum_dy = 0;
        double sum_dy_centered = 0;
        for (int64_t n = 0; n < dims.batch; ++n) {
          const int64_t offset = (n * channels + c) * inner;
          sum_dy += lane_sum(dy + offset, inner);
          sum_dy_centered += lane_sum_centered_product(dy + offset, x + offset, inner, mu);
        }
        if (dbeta) store_grad(dbeta + c, static_cast<float>(sum_dy), mode);
        if (dgamma) {
          store_grad(dgamma + c, static_cast<float>(sum_dy_centered * static_cast<double>(inv)),
                     mode);
        }
      }
      if (!dx) continue;
      const float k = gamma[c] * inv;
      for (int64_t n = 0; n < dims.batch; ++n) {
        const int64_t offset = (n * channels + c) * inner;
        const float* dyp = dy + offset;
        float* dxp = dx + offset;
        if (mode == GradMode::kAccumulate) {
          for (int64_t i = 0; i < inner; ++i) dxp[i] += dyp[i] * k;
        } else {
          for (int64_t i = 0; i < inner; ++i) dxp[i] = dyp[i] * k;
        }
      }
    }
  });
}

void layer_norm_backward(const LayerNormDims& dims, const float* x, const float* scale,
                         const float* mean, const float* inv_std_dev, const float* dy, float* dx,
                         float* dscale, float* dbias, GradMode mode) {
  const int64_t d = dims.size;
  const int64_t rows = dims.rows;
  if (d == 0) return;
  if (dx) {
    const float inv_d = 1.0f / static_cast<float>(d);
    parallel_for(rows, grain_for(d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* xr = x + r * d;
        const float* dyr = dy + r * d;
        float* dxr = dx + r * d;
        const float mu = mean[r];
        const float inv = inv_std_dev[r];
        // Σg and Σg·x̂ with g = dy·scale, in lane order.
        float acc_g[kSumLanes] = {};
        float acc_gx[kSumLanes] = {};
        int64_t i = 0;
        for (; i + kSumLanes <= d; i += kSumLanes) {
          for (int j = 0; j < kSumLanes; ++j) {
            const float g = dyr[i + j] * scale[i + j];
            acc_g[j] += g;
            acc_gx[j] += g * ((xr[i + j] - mu) * inv);
          }
        }
        for (int j = 0; i + j < d; ++j) {
          const float g = dyr[i + j] * scale[i + j];
          acc_g[j] += g;
          acc_gx[j] += g * ((xr[i + j] - mu) * inv);
        }
        for (int width = kSumLanes / 2; width > 0; width /= 2) {
          for (int j = 0; j < width; ++j) {
            acc_g[j] += acc_g[j + width];
            acc_gx[j] += acc_gx[j + width];
          }
        }
        const float mean_g = acc_g[0] * inv_d;
        const float mean_gx = acc_gx[0] * inv_d;
        if (mode == GradMode::kAccumulate) {
          for (int64_t k = 0; k < d; ++k) {
            const float xhat = (xr[k] - mu) * inv;
            dxr[k] += inv * (dyr[k] * scale[k] - mean_g - xhat * mean_gx);
          }
        } else {
          for (int64_t k = 0; k < d; ++k) {
            const float xhat = (xr[k] - mu) * inv;
            dxr[k] = inv * (dyr[k] * scale[k] - mean_g - xhat * mean_gx);
          }
        }
      }
    });
  }
  if (!dscale && !dbias) return;
  const int64_t blocks = (d + kColumnBlock - 1) / kColumnBlock;
  parallel_for(blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kColumnBlock;
      const int64_t width = std::min(kColumnBlock, d - c0);
      double acc_scale[kColumnBlock] = {};
      double acc_bias[kColumnBlock] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * d + c0;
        const float* dyr = dy + r * d + c0;
        const float mu = mean[r];
        const float inv = inv_std_dev[r];
        for (int64_t j = 0; j < width; ++j) {
          acc_scale[j] += static_cast<double>(dyr[j] * ((xr[j] - mu) * inv));
          acc_bias[j] += static_cast<double>(dyr[j]);
        }
      }
      for (int64_t j = 0; j < width; ++j) {
        if (dscale) store_grad(dscale + c0 + j, static_cast<float>(acc_scale[j]), mode);
        if (dbias) store_grad(dbias + c0 + j, static_cast<float>(acc_bias[j]), mode);
      }
    }
  });
}

void group_norm(const GroupNormDims& dims, const float* x, const float* scale, const float* bias,
                float* y, float* mean, float* inv_std) {
  const int64_t per_group = dims.channels / dims.groups;
  const int64_t d = per_group * dims.inner;
  if (d == 0) return;
  const float inv_d = 1.0f / static_cast<float>(d);
  parallel_for(dims.batch * dims.groups, grain_for(d), [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const float* xb = x + block * d;
      float* yb = y + block * d;
      const float mu = lane_sum(xb, d) * inv_d;
      const float var = lane_sum_squared_deviation(xb, d, mu) * inv_d;
      const float inv = 1.0f / std::sqrt(var + dims.epsilon);
      const int64_t first_channel = block % dims.groups * per_group;
      for (int64_t k = 0; k < per_group; ++k) {
        const float s = scale[first_channel + k];
        const float b = bias ? bias[first_channel + k] : 0.0f;
        const float* xp = xb + k * dims.inner;
        float* yp = yb + k * dims.inner;
        for (int64_t i = 0; i < dims.inner; ++i) yp[i] = (xp[i] - mu) * inv * s + b;
      }
      if (mean) mean[block] = mu;
      if (inv_std) inv_std[block] = inv;
    }
  });
}

int64_t group_norm_backward_workspace(const GroupNormDims& dims) {
  return 2 * dims.batch * dims.channels;
}

void group_norm_backward(const GroupNormDims& dims, const float* x, const float* scale,
                         const float* mean, const float* inv_std, const float* dy, float* dx,
                         float* dscale, float* dbias, float* workspace, GradMode mode) {
  const int64_t channels = dims.channels;
  const int64_t inner = dims.inner;
  const int64_t per_group = channels / dims.groups;
  const int64_t planes = dims.batch * channels;
  if (planes == 0 || inner == 0) return;
  // Σdy and Σdy·x̂ of every (sample, channel) plane.
  float* plane_dy = workspace;
  float* plane_dy_xhat = workspace + planes;
  const auto block_of = [&](int64_t plane) {
    return plane / channels * dims.groups + plane % channels / per_group;
  };
  parallel_for(planes, grain_for(inner), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t block = block_of(p);
      const float* xp = x + p * inner;
      const float* dyp = dy + p * inner;
      plane_dy[p] = lane_sum(dyp, inner);
      plane_dy_xhat[p] = lane_sum_centered_product(dyp, xp, inner, mean[block]) * inv_std[block];
    }
  });
  if (dx) {
    const float inv_d = 1.0f / static_cast<float>(per_group * inner);
    parallel_for(planes, grain_for(inner), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t block = block_of(p);
        const int64_t first_plane = p - p % channels % per_group;
        const int64_t first_channel = first_plane % channels;
        // Σg and Σg·x̂ over the block, its planes added in channel order.
        float sum_g = 0.0f;
        float sum_gx = 0.0f;
        for (int64_t k = 0; k < per_group; ++k) {
          sum_g += scale[first_channel + k] * plane_dy[first_plane + k];
          sum_gx += scale[first_channel + k] * plane_dy_xhat[first_plane + k];
        }
        const float mean_g = sum_g * inv_d;
        const float mean_gx = sum_gx * inv_d;
        const float mu = mean[block];
        const float inv = inv_std[block];
        const float s = scale[p % channels];
        const float* xp = x + p * inner;
        const float* dyp = dy + p * inner;
        float* dxp = dx + p * inner;
        if (mode == GradMode::kAccumulate) {
          for (int64_t i = 0; i < inner; ++i) {
            const float xhat = (xp[i] - mu) * inv;
            dxp[i] += inv * (dyp[i] * s - mean_g - xhat * mean_gx);
          }
        } else {
          for (int64_t i = 0; i < inner; ++i) {
            const float xhat = (xp[i] - mu) * inv;
            dxp[i] = inv * (dyp[i] * s - mean_g - xhat * mean_gx);
          }
        }
      }
    });
  }
  if (!dscale && !dbias) return;
  parallel_for(channels, grain_for(dims.batch), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double sum_dy = 0;
      double sum_dy_xhat = 0;
      for (int64_t n = 0; n < dims.batch; ++n) {
        sum_dy += static_cast<double>(plane_dy[n * channels + c]);
        sum_dy_xhat += static_cast<double>(plane_dy_xhat[n * channels + c]);
      }
      if (dscale) store_grad(dscale + c, static_cast<float>(sum_dy_xhat), mode);
      if (dbias) store_grad(dbias + c, static_cast<float>(sum_dy), mode);
    }
  });
}

}  // namespace qforge::kernels
