// Backward of the float32 numpy-broadcasting binary ops of kernels/elementwise.h, y = op(a, b):
//   Add: da = dy, db = dy;  Sub: da = dy, db = −dy;  Mul: da = dy·b, db = dy·a;
//   Div: da = dy / b, db = −dy·((a / b) / b) (PyTorch's form);
// each summed over the axes its input broadcasts along, so that da has a's shape and db b's.
// A gradient element sums its output elements in row-major order (runs along the innermost
// axis in lane_sum's order, when that axis is summed), one element or one block of neighbouring
// elements per task: gradients are bit-identical for any thread count.
#pragma once

#include "kernels/elementwise.h"
#include "kernels/gradient.h"

namespace qforge::kernels {

// True for the ops binary_backward differentiates: Add, Sub, Mul, Div.
bool binary_backward_supports(BinaryOp op);

// Gradients to compute; a null pointer skips that gradient.
struct BinaryGradients {
  float* da = nullptr;
  float* db = nullptr;
};

// plan: the forward's plan_broadcast({a_shape, b_shape}); dy has plan.out_shape. a is needed for
// db of Mul and Div, b for da of Mul and Div and db of Div. Throws Unsupported for other ops.
void binary_backward(BinaryOp op, const BroadcastPlan& plan, const float* a, const float* b,
                     const float* dy, const BinaryGradients& grads,
                     GradMode write = GradMode::kOverwrite);

}  // namespace qforge::kernels
