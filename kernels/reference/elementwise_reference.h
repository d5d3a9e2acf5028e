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
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& x, const Tensor& y);
Tensor logical_not(const Tensor& x);
Tensor cast(const Tensor& x, DType to);

}  // namespace qforge::kernels::reference
