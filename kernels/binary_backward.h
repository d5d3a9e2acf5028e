// Backward of the float32 numpy-broadcasting binary ops of kernels/elementwise.h, y = op(a, b):
//   Add: da = dy, db = dy;  Sub: da = dy, db = −dy;  Mul: da = dy·b, db = dy·a;
//   Div: da = dy / b, db = −dy·((a / b) / b) (PyTorch's form);
//   PRelu (a the input, b the slope): da = a > 0 ? dy : b·dy, db = a > 0 ? 0 : a·dy (PyTorch's
//   prelu backward: the slope's side at a = 0);
//   Pow: da = dy·(b·a^(b−1)), 0 where b = 0; db = dy·(a^b·ln a), 0 where a = 0 and b >= 0
//   (PyTorch's pow backward, a^b as the forward computes it, kernels/elementwise.h pow_f32);
// and of Max and Min over any number of inputs (extremum_backward);
// each summed over the axes its input broadcasts along, so that da has a's shape and db b's.
// A gradient element sums its output elements in row-major order (runs along the innermost
// axis in lane_sum's order, when that axis is summed), one element or one block of neighbouring
// elements per task: gradients are bit-identical for any thread count.
#pragma once

#include <span>

#include "kernels/elementwise.h"
#include "kernels/gradient.h"

namespace qforge::kernels {

// True for the ops binary_backward differentiates: Add, Sub, Mul, Div, PRelu, Pow.
bool binary_backward_supports(BinaryOp op);

// Gradients to compute; a null pointer skips that gradient.
struct BinaryGradients {
  float* da = nullptr;
  float* db = nullptr;
};

// plan: the forward's plan_broadcast({a_shape, b_shape}); dy has plan.out_shape. a is needed for
// db of Mul and Div and both gradients of PRelu and Pow, b for da of Mul, Div and PRelu, db of Div
// and both gradients of Pow.
// quotient (Div only, optional): the forward's output a / b; db is then −(Σ dy·quotient) / b and a
// is not read, so a caller need not keep a (a training executor keeps the output instead).
// Throws Unsupported for other ops.
void binary_backward(BinaryOp op, const BroadcastPlan& plan, const float* a, const float* b,
                     const float* dy, const BinaryGradients& grads,
                     GradMode write = GradMode::kOverwrite, const float* quotient = nullptr);

// Max (is_max) or Min of n >= 1 float inputs, y their element-wise extremum under numpy
// broadcasting. At each output element the inputs equal to y share dy evenly (dy / k for k
// equal inputs), the others get 0: torch.maximum / torch.minimum for two inputs (ties halve),
// torch.amax / amin over the broadcast inputs stacked for more. Where y is NaN no input equals
// it and none is beaten, so every input gets dy, as torch.maximum does. Each gradient is summed
// over the axes its input broadcasts along, in binary_backward's order.
// plans[i]: plan_broadcast({x_i shape, y shape}); y and dy have the output shape; dx[i] may be
// null; workspace: y's element count of floats.
struct ExtremumBackwardArgs {
  bool is_max = true;
  std::span<const BroadcastPlan> plans;
  std::span<const float* const> x;
  const float* y = nullptr;
  const float* dy = nullptr;
  std::span<float* const> dx;
  float* workspace = nullptr;
};
void extremum_backward(const ExtremumBackwardArgs& args, GradMode write = GradMode::kOverwrite);

}  // namespace qforge::kernels
