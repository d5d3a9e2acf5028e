// Naive float64 references of BatchNormalization training, LayerNormalization,
// GroupNormalization (InstanceNormalization as one channel per group), Softmax and the
// losses on it, forward and backward: the oracle of kernels/{norm,softmax}'s backward kernels
// and, through their forwards, of the finite-difference checks of those backwards. The
// backwards are written as the textbook chain rule (through mean and variance, or through the
// full softmax Jacobian), not as the kernels' folded forms.
#pragma once

#include <cstdint>

#include "kernels/norm.h"
#include "kernels/softmax.h"

namespace qforge::kernels::reference {

// mean and inv_std per channel; running_mean/var (may be null) updated with `momentum`
// (PyTorch's convention) and the unbiased variance.
void batch_norm_training(const BatchNormDims& dims, double momentum, const double* x,
                         const double* gamma, const double* beta, double* y, double* mean,
                         double* inv_std, double* running_mean, double* running_var);
void batch_norm_training_backward(const BatchNormDims& dims, const double* x, const double* gamma,
                                  const double* mean, const double* inv_std, const double* dy,
                                  double* dx, double* dgamma, double* dbeta);

// Inference mode: y = (x - mean) / sqrt(var + epsilon)·gamma + beta with fixed statistics.
void batch_norm_inference(const BatchNormDims& dims, const double* x, const double* gamma,
                          const double* beta, const double* mean, const double* var, double* y);
void batch_norm_inference_backward(const BatchNormDims& dims, const double* x, const double* gamma,
                                   const double* mean, const double* var, const double* dy,
                                   double* dx, double* dgamma, double* dbeta);

void layer_norm(const LayerNormDims& dims, const double* x, const double* scale, const double* bias,
                double* y, double* mean, double* inv_std);
// y = x / sqrt(mean(x²) + epsilon) · scale per row.
void rms_norm(const LayerNormDims& dims, const double* x, const double* scale, double* y);
void layer_norm_backward(const LayerNormDims& dims, const double* x, const double* scale,
                         const double* mean, const double* inv_std, const double* dy, double* dx,
                         double* dscale, double* dbias);

// mean and inv_std: one value per (sample, group).
void group_norm(const GroupNormDims& dims, const double* x, const double* scale, const double* bias,
                double* y, double* mean, double* inv_std);
void group_norm_backward(const GroupNormDims& dims, const double* x, const double* scale,
                         const double* mean, const double* inv_std, const double* dy, double* dx,
                         double* dscale, double* dbias);

void softmax(const SoftmaxDims& dims, const double* x, double* y);
void softmax_backward(const SoftmaxDims& dims, const double* y, const double* dy, double* dx);
// log softmax(x) = log(exp(x) / Σ exp(x)) and dx_j = Σ_k dy_k · (δ_kj − softmax(x)_j) from x.
void log_softmax(const SoftmaxDims& dims, const double* x, double* y);
void log_softmax_backward(const SoftmaxDims& dims, const double* x, const double* dy, double* dx);

// Mean loss, and d loss / d logits times dloss.
double cross_entropy(const LossDims& dims, const double* logits, const int64_t* labels,
                     double label_smoothing = 0.0);
void cross_entropy_backward(const LossDims& dims, const double* logits, const int64_t* labels,
                            double dloss, double* dlogits, double label_smoothing = 0.0);
double distillation_kl(const LossDims& dims, const DistillationOptions& options,
                       const double* student_logits, const double* teacher_logits);
void distillation_kl_backward(const LossDims& dims, const DistillationOptions& options,
                              const double* student_logits, const double* teacher_logits,
                              double dloss, double* dstudent_logits);

}  // namespace qforge::kernels::reference
