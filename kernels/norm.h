// Normalisation kernels: BatchNormalization inference (folded to a per-channel affine map) and
// training (batch statistics, running-stat update, backward), LayerNormalization,
// GroupNormalization and InstanceNormalization with their backwards, plus the fixed-order
// vectorised row sums they and the pooling and softmax kernels share.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/grad_mode.h"

namespace qforge::kernels {

// Backward kernels (BatchNormalization training, LayerNormalization) follow PyTorch's autograd
// formulas. Every reduction (per-channel or per-column sums over the batch and pixels) runs in
// an order fixed by the shapes alone: each channel or column block is one task that walks the
// batch in order, so gradients are bit-identical for any thread count.

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

// Batch norm folding: the one place qforge turns a BatchNormalization in inference form into
// a per-channel affine map y = x·scale + shift, alone or folded into the convolution before it
// (the BatchNormalization kernel, the conv modules' output pass, the Conv epilogue fusion, Q/DQ
// placement and export, WeightFakeQuant all call batch_norm_fold).

// One BN's parameters over `channels` channels. beta and mean may be null when no shift is asked
// for (WeightFakeQuant folds only gamma and var).
struct BatchNormParameters {
  const float* gamma = nullptr;
  const float* beta = nullptr;
  const float* mean = nullptr;
  const float* var = nullptr;
  float epsilon = 1e-5f;
  int64_t channels = 0;
};

// The arithmetic of a fold. kDouble is the reference: what BatchNormalization runs and what the
// export writes. kFloat is the float-only form the conv modules and the epilogue fusion have
// always run in their output pass; switching them to kDouble would change their outputs' last
// bits.
enum class FoldPrecision : unsigned char { kDouble, kFloat };

// Where a fold goes; every pointer may be null, else it receives `channels` values:
//   factor  = gamma / sqrt(var + epsilon)
//   inv_std = 1 / sqrt(var + epsilon)
//   scale   = factor as float
//   shift   = beta − mean·factor, or with the convolution's bias b: (b − mean)·factor + beta
// kDouble computes in double from the float parameters and rounds once; kFloat computes every
// step in float.
struct BatchNormFold {
  double* factor = nullptr;
  double* inv_std = nullptr;
  float* scale = nullptr;
  float* shift = nullptr;
};

// `conv_bias` (may be null) is the bias of the convolution the BN follows.
void batch_norm_fold(const BatchNormParameters& bn, const float* conv_bias, FoldPrecision precision,
                     const BatchNormFold& out);

// A weight with its BN folded in, from batch_norm_fold's factor: per output channel c (the
// leading axis, `per_channel` values each) folded = float(w · factor[c]).
void fold_weight(const float* w, const double* factor, int64_t channels, int64_t per_channel,
                 float* folded);

// The same for a transposed convolution's weight [in_channels, out_per_group, …] (ONNX
// ConvTranspose), whose output channel for element (ci, j, …) is group(ci)·out_per_group + j:
// `factor` has groups · out_per_group values, `per_channel` is the kernel's size.
void fold_weight_transposed(const float* w, const double* factor, int64_t in_channels,
                            int64_t groups, int64_t out_per_group, int64_t per_channel,
                            float* folded);

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

// Per row: y = x / sqrt(mean(x²) + epsilon) · scale (an RMSNorm over the last `size` values,
// Llama's and T5's), scale of `size` values. Rows are independent: the bits do not depend on the
// thread count.
void rms_norm(const LayerNormDims& dims, const float* x, const float* scale, float* y);

// Sum of a[i]·b[i] in the same lane order.
inline float lane_dot(const float* a, const float* b, int64_t n) {
  float acc[kSumLanes] = {};
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes) {
    for (int j = 0; j < kSumLanes; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (int j = 0; i + j < n; ++j) acc[j] += a[i + j] * b[i + j];
  for (int width = kSumLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

// BatchNormalization training -------------------------------------------------------------------

// x [batch, channels, inner] (NCHW: inner = H·W); statistics run over batch·inner per channel.
struct BatchNormDims {
  int64_t batch = 1;
  int64_t channels = 1;
  int64_t inner = 1;
  float epsilon = 1e-5f;
};

// PyTorch's momentum convention: running = (1 - momentum)·running + momentum·batch_statistic,
// default 0.1. ONNX BatchNormalization's `momentum` is the weight of the running value (default
// 0.9): pass 1 - onnx_momentum.
struct BatchNormTrainingOptions {
  float momentum = 0.1f;
};

// Forward in training mode, per channel c over its M = batch·inner values:
//   mean = Σx / M,  var = Σ(x - mean)² / M (biased),  inv_std = 1 / sqrt(var + epsilon)
//   y = (x - mean)·inv_std·gamma + beta
// saved_mean and saved_inv_std (may be null) receive mean and inv_std for the backward. When
// running_mean and running_var are not null they are updated in place as PyTorch does, the
// variance unbiased: running_var = (1 - m)·running_var + m·var·M / (M - 1). M must be > 1 (an
// Invalid error otherwise, as PyTorch refuses one value per channel). Sums are accumulated per
// plane in lane order, then over the batch in double. Parallel over channels.
void batch_norm_training(const BatchNormDims& dims, const BatchNormTrainingOptions& options,
                         const float* x, const float* gamma, const float* beta, float* y,
                         float* saved_mean, float* saved_inv_std, float* running_mean,
                         float* running_var);

// y again from the statistics a forward saved: y = (x - mean)·inv_std·gamma + beta, the same
// operations as the forward, so the same bits. Parallel over channels.
void batch_norm_normalize(const BatchNormDims& dims, const float* x, const float* gamma,
                          const float* beta, const float* mean, const float* inv_std, float* y);

// The same over a batch cut into shards that are computed apart (runtime/training.h's shard
// group: several executors, possibly in several processes). Each shard gives per-channel sums in
// double; the caller adds them over every shard in shard order and hands the totals back, so
// the statistics are the whole batch's and their bits do not depend on where the shards ran.
// batch_norm_training is these three steps on one shard:
//   sums[c] = Σx over the shard's values of channel c (per plane in lane order, then the batch)
//   squares[c] = Σ(x - mean[c])² over them, mean[c] the whole batch's mean in float
//   batch_norm_apply_statistics: y from mean and the whole batch's Σ(x - mean)² over `count`
//   values, saved statistics and the running update (skipped where running_* is null).
void batch_norm_shard_sums(const BatchNormDims& dims, const float* x, double* sums);
void batch_norm_shard_squares(const BatchNormDims& dims, const float* x, const float* mean,
                              double* squares);
void batch_norm_apply_statistics(const BatchNormDims& dims, const BatchNormTrainingOptions& options,
                                 int64_t count, const float* x, const float* gamma,
                                 const float* beta, const float* mean, const double* squares,
                                 float* y, float* saved_inv_std, float* running_mean,
                                 float* running_var);
// The mean in float from the whole batch's sum over `count` values, as batch_norm_training
// rounds it.
inline float batch_norm_mean(double sum, int64_t count) {
  return static_cast<float>(sum / static_cast<double>(count));
}

// Backward of batch_norm_training from its saved mean and inv_std, per channel:
//   x̂ = (x - mean)·inv_std,  dbeta = Σdy,  dgamma = Σdy·x̂
//   dx = gamma·inv_std / M · (M·dy - dbeta - x̂·dgamma)
// Any of dx, dgamma, dbeta may be null; `mode` applies to all three. The channel sums run
// plane by plane in lane order, accumulated over the batch in double: one task per channel, so
// the bits never depend on the thread count.
void batch_norm_training_backward(const BatchNormDims& dims, const float* x, const float* gamma,
                                  const float* saved_mean, const float* saved_inv_std,
                                  const float* dy, float* dx, float* dgamma, float* dbeta,
                                  GradMode mode = GradMode::kOverwrite);

// batch_norm_training_backward over shards, as above: sums[2c] = Σdy and sums[2c + 1] =
// Σdy·(x - mean) over this shard; then dx of this shard from the totals over every shard
// (`count` values per channel), and dgamma, dbeta from this shard's own sums (`own`), which the
// caller adds over the shards like any parameter gradient.
void batch_norm_backward_shard_sums(const BatchNormDims& dims, const float* x,
                                    const float* saved_mean, const float* dy, double* sums);
void batch_norm_backward_apply(const BatchNormDims& dims, int64_t count, const float* x,
                               const float* gamma, const float* saved_mean,
                               const float* saved_inv_std, const float* dy, const double* totals,
                               const double* own, float* dx, float* dgamma, float* dbeta,
                               GradMode mode = GradMode::kOverwrite);

// Backward of BatchNormalization in inference mode (running statistics held fixed, as for a
// frozen BatchNorm during QAT), with inv_std = 1 / sqrt(var + epsilon) in float:
//   x̂ = (x - mean)·inv_std,  dx = dy·gamma·inv_std,  dgamma = Σdy·x̂,  dbeta = Σdy
// mean and var get no gradient. Any of dx, dgamma, dbeta may be null; sums as in
// batch_norm_training_backward (one task per channel, batch in order, double).
void batch_norm_inference_backward(const BatchNormDims& dims, const float* x, const float* gamma,
                                   const float* mean, const float* var, const float* dy, float* dx,
                                   float* dgamma, float* dbeta,
                                   GradMode mode = GradMode::kOverwrite);

// LayerNormalization backward -------------------------------------------------------------------

// Backward of layer_norm from its mean and inv_std_dev outputs, per row over D = dims.size:
//   x̂ = (x - mean)·inv_std,  g = dy·scale
//   dx = inv_std / D · (D·g - Σg - x̂·Σ(g·x̂))
//   dscale[i] = Σ_rows dy·x̂,  dbias[i] = Σ_rows dy
// Any of dx, dscale, dbias may be null; `mode` applies to all three. dx is parallel over rows;
// dscale and dbias over blocks of columns, each walking the rows in order (fixed-order sums).
void layer_norm_backward(const LayerNormDims& dims, const float* x, const float* scale,
                         const float* mean, const float* inv_std_dev, const float* dy, float* dx,
                         float* dscale, float* dbias, GradMode mode = GradMode::kOverwrite);

// GroupNormalization and InstanceNormalization ---------------------------------------------------

// x [batch, channels, inner]: the channels form `groups` groups of channels / groups neighbours,
// and each (sample, group) block of D = channels / groups · inner contiguous values is
// normalised on its own statistics. InstanceNormalization is groups = channels.
struct GroupNormDims {
  int64_t batch = 1;
  int64_t channels = 1;
  int64_t groups = 1;
  int64_t inner = 1;
  float epsilon = 1e-5f;
};

// Per block: mean = Σx / D, var = Σ(x - mean)² / D (biased), inv_std = 1 / sqrt(var + epsilon),
// then y = (x - mean)·inv_std·scale[c] + bias[c] with scale and bias per channel. mean and
// inv_std (may be null) receive batch·groups values. Sums in lane order within a block; one
// task per block, so the bits never depend on the thread count.
void group_norm(const GroupNormDims& dims, const float* x, const float* scale, const float* bias,
                float* y, float* mean, float* inv_std);

// Floats of workspace group_norm_backward needs: two per (sample, channel) plane.
int64_t group_norm_backward_workspace(const GroupNormDims& dims);

// Backward of group_norm from its mean and inv_std, per block over its D values:
//   x̂ = (x - mean)·inv_std,  g = dy·scale[c]
//   dx = inv_std / D · (D·g - Σg - x̂·Σ(g·x̂))
//   dscale[c] = Σ_n Σ_plane dy·x̂,  dbias[c] = Σ_n Σ_plane dy
// Any of dx, dscale, dbias may be null; `mode` applies to all three. Plane sums (lane order)
// go to `workspace` (group_norm_backward_workspace floats), a block adds its planes' sums in
// channel order, and dscale and dbias add the planes of a channel over the batch in order, in
// double: bit-identical for any thread count.
void group_norm_backward(const GroupNormDims& dims, const float* x, const float* scale,
                         const float* mean, const float* inv_std, const float* dy, float* dx,
                         float* dscale, float* dbias, float* workspace,
                         GradMode mode = GradMode::kOverwrite);

}  // namespace qforge::kernels
