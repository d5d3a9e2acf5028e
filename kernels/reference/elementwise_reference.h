// Naive reference implementations of the element-wise kernels: one element at a time through
// coordinates, floats in double precision. They are the specification the fast kernels are
// tested against, not for production use.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/elementwise.h"
#include "kernels/tensor.h"

namespace qforge::kernels::reference {

Tensor unary(UnaryOp op, const UnaryParams& params, const Tensor& x);
// One float op in double: f(x), and f'(x) with the kink conventions of unary_backward_f32.
double unary_value(UnaryOp op, const UnaryParams& params, double x);
double unary_derivative(UnaryOp op, const UnaryParams& params, double x);
// dx = dy · f'(x) element by element (float32 in, float32 out, double inside).
Tensor unary_backward(UnaryOp op, const UnaryParams& params, const Tensor& x, const Tensor& dy);
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& x, const Tensor& y);
Tensor logical_not(const Tensor& x);
Tensor cast(const Tensor& x, DType to);

}  // namespace qforge::kernels::reference
