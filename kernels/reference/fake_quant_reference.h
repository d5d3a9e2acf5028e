// Naive reference of fake quantization: one element at a time through coordinates, following
// ONNX QuantizeLinear/DequantizeLinear step by step (std::nearbyint, then saturate). Test oracle.
#pragma once

#include <vector>

#include "kernels/fake_quant.h"
#include "kernels/tensor.h"

namespace qforge::kernels::reference {

Tensor fake_quant(const Tensor& x, const FakeQuantScales& scales);
Tensor fake_quant_backward(const Tensor& x, const Tensor& dy, const FakeQuantScales& scales);

// One element of the forward in double, s·clamp(round(x/s), -128, 127) with the quotient
// taken in double: the function the LSQ scale gradient's saturated part is checked against.
double fake_quant_value(double x, double scale);
// LSQ's dscale per scale, grad_scale · Σ dy·∂y/∂s (fake_quant.h), element by element in double
// with the quotient x/s in float32 as the forward rounds it.
std::vector<double> fake_quant_lsq_scale_grad(const Tensor& x, const Tensor& dy,
                                              const FakeQuantScales& scales, double grad_scale);

}  // namespace qforge::kernels::reference
