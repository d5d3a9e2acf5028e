// Backward of the pooling kernels of kernels/pool.h (PyTorch's conventions):
//   MaxPool: each output's gradient goes to the first maximum of its window, taps scanned in
//     (kh, kw) order with a strict >, the forward's own choice (so ties go to the earliest tap);
//     a window holding no value above −inf sends it to its first tap inside the input.
//   AveragePool: each output's gradient, divided by the forward's count (taps inside the input,
//     or also those on explicit padding), goes to every tap inside the input.
//   GlobalAveragePool: dx = dy / plane_size over each plane.
//   ReduceMean: dx = dy / count, each output's gradient over the elements it averaged.
// One task per (image, channel) plane, outputs in row-major order, so gradients are
// bit-identical for any thread count. dx is written as `write` says.
#pragma once

#include <cstdint>

#include "kernels/gradient.h"
#include "kernels/pool.h"

namespace qforge::kernels {

// x: the forward's input (the maxima are found again); dy [batch, channels, out_h, out_w];
// dx [batch, channels, in_h, in_w].
void max_pool2d_backward(const PoolGeometry& g, const float* x, const float* dy, float* dx,
                         GradMode write = GradMode::kOverwrite);

// The record a training forward keeps of a max pooling in place of x: per output, one byte, the
// tap kh · kernel_w + kw of its window that max_pool2d_backward sends its gradient to, kNoTap
// where the window holds no input. Windows of up to 255 taps (max_pool2d_has_taps).
inline constexpr uint8_t kNoTap = 255;
bool max_pool2d_has_taps(const PoolGeometry& g);
void max_pool2d_taps(const PoolGeometry& g, const float* x, uint8_t* taps);
// max_pool2d_backward from those taps: the same sums in the same order, so the same bits.
void max_pool2d_backward_from_taps(const PoolGeometry& g, const uint8_t* taps, const float* dy,
                                   float* dx, GradMode write = GradMode::kOverwrite);

void average_pool2d_backward(const PoolGeometry& g, PadCounting counting, const float* dy,
                             float* dx, GradMode write = GradMode::kOverwrite);
// dy holds one value per plane.
void global_average_pool_backward(const float* dy, int64_t planes, int64_t plane_size, float* dx,
                                  GradMode write = GradMode::kOverwrite);
// The plan of the forward (plan_reduce); dy holds its outputs, dx its input. Elements are
// independent, so dx does not depend on the thread count.
void reduce_mean_backward(const ReducePlan& plan, const float* dy, float* dx,
                          GradMode write = GradMode::kOverwrite);

}  // namespace qforge::kernels
