// Distillation of an output that is no logits (a detector's boxes and class scores, a
// segmentation map, features): per sample, the squared error to the teacher's output relative
// to the teacher's mean square, averaged over the batch,
//   loss = 1/B · Σ_b  mean_i (s_bi − t_bi)² / (mean_i t_bi² + ε),   ε = 1e-8,
// so that outputs in different units (pixels, probabilities) weigh alike and a sample's loss
// does not depend on the batch it runs in. The teacher gets no gradient.
#pragma once

#include <cstdint>

#include "kernels/grad_mode.h"

namespace qforge::kernels {

inline constexpr float kRelativeErrorEpsilon = 1e-8f;

// student and teacher: [batch, n] row-major. Writes each sample's loss to row_loss [batch];
// returns the mean, summed over the batch in order in double. Each sample's sums run in lane
// order inside one task: the bits never depend on the thread count.
float relative_squared_error(int64_t batch, int64_t n, const float* student, const float* teacher,
                             float* row_loss);

// dstudent = dloss / B · 2·(s − t) / (n · (mean t² + ε)), per sample.
void relative_squared_error_backward(int64_t batch, int64_t n, const float* student,
                                     const float* teacher, float dloss, float* dstudent,
                                     GradMode mode = GradMode::kOverwrite);

}  // namespace qforge::kernels
