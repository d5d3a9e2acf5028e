// Softmax and log-softmax along one axis, with the row maximum subtracted before exponentiation;
// their backward; and the classification losses built on softmax (cross-entropy with integer
// labels, KL-divergence distillation at a temperature) with their gradients with respect to the
// logits.
#pragma once

#include <cstdint>

#include "kernels/grad_mode.h"

namespace qforge::kernels {

// x viewed as [outer, axis_size, inner]; softmax runs along axis_size.
struct SoftmaxDims {
  int64_t outer = 1;
  int64_t axis_size = 1;
  int64_t inner = 1;
};

void softmax(const SoftmaxDims& dims, const float* x, float* y);
// log softmax(x) = x − m − log Σ exp(x − m), m the maximum along the axis (ONNX LogSoftmax,
// F.log_softmax: CTC heads, log-probability outputs).
void log_softmax(const SoftmaxDims& dims, const float* x, float* y);

// Backward from the forward's output y: dx = y·(dy - Σ_axis dy·y) (PyTorch's
// _softmax_backward_data). kOverwrite may write dx over dy. Each row's sum runs in lane order (or
// down the axis for a block of columns) inside one task: bits never depend on the thread count.
void softmax_backward(const SoftmaxDims& dims, const float* y, const float* dy, float* dx,
                      GradMode mode = GradMode::kOverwrite);
// From log_softmax's output y: dx = dy − exp(y)·Σ_axis dy (PyTorch's
// _log_softmax_backward_data), the sums as softmax_backward's.
void log_softmax_backward(const SoftmaxDims& dims, const float* y, const float* dy, float* dx,
                          GradMode mode = GradMode::kOverwrite);

// Losses over logits [batch, classes] (row-major), as torch.nn.functional does them with
// reduction 'mean' ('batchmean' for KL). Per-row losses are computed in parallel and summed over
// the batch in order, in double: the loss and the gradients never depend on the thread count.
struct LossDims {
  int64_t batch = 1;
  int64_t classes = 1;
};

// Cross-entropy with int64 class labels (no ignore_index), as F.cross_entropy with
// label_smoothing ε: the target puts 1 − ε on the label and ε spread evenly over all classes,
//   loss = mean_b (logsumexp(z_b) − (1 − ε)·z_b[label_b] − ε/classes·Σ_k z_b[k])
// (ε = 0: the plain loss, bit for bit). Writes the softmax probabilities [batch, classes] (what
// the backward reads) and each sample's loss row_loss [batch]; returns the mean. A label outside
// [0, classes), or ε outside [0, 1], is an Invalid error.
float cross_entropy(const LossDims& dims, const float* logits, const int64_t* labels,
                    float* probabilities, float* row_loss, float label_smoothing = 0.0f);

// dlogits = dloss / batch · (p − target), target = (1 − ε)·onehot(label) + ε/classes.
void cross_entropy_backward(const LossDims& dims, const float* probabilities, const int64_t* labels,
                            float dloss, float* dlogits, GradMode mode = GradMode::kOverwrite,
                            float label_smoothing = 0.0f);

// Knowledge distillation at temperature T (Hinton et al.), as
// F.kl_div(log_softmax(s/T), softmax(t/T), reduction='batchmean')·T²:
//   p = softmax(s/T), q = softmax(t/T),  loss = factor / batch · Σ_b Σ_k q·(log q - log p)
// with factor = T² (scale_by_temperature_squared, the usual choice that keeps the gradient's
// size independent of T) or 1. The teacher gets no gradient.
struct DistillationOptions {
  float temperature = 1.0f;
  bool scale_by_temperature_squared = true;
};

// Writes p and q [batch, classes] for the backward and row_loss [batch] (before the factor and
// the mean); returns the loss. temperature must be finite and > 0 (an Invalid error otherwise).
float distillation_kl(const LossDims& dims, const DistillationOptions& options,
                      const float* student_logits, const float* teacher_logits,
                      float* student_probabilities, float* teacher_probabilities, float* row_loss);

// dstudent_logits = dloss · factor / (batch·T) · (p - q).
void distillation_kl_backward(const LossDims& dims, const DistillationOptions& options,
                              const float* student_probabilities,
                              const float* teacher_probabilities, float dloss,
                              float* dstudent_logits, GradMode mode = GradMode::kOverwrite);

// exp(x) for x <= 0 (what softmax feeds it), within about 1 ulp; 0 below the float range and
// NaN for NaN. Branch-free, so loops over it vectorise.
float exp_nonpositive(float x);

}  // namespace qforge::kernels
