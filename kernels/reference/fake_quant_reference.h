// Naive reference of fake quantization: one element at a time through coordinates, following
// ONNX QuantizeLinear/DequantizeLinear step by step (std::nearbyint, then saturate). Test oracle.
#pragma once

#include "kernels/fake_quant.h"
#include "kernels/tensor.h"

namespace qforge::kernels::reference {

Tensor fake_quant(const Tensor& x, const FakeQuantScales& scales);
Tensor fake_quant_backward(const Tensor& x, const Tensor& dy, const FakeQuantScales& scales);

}  // namespace qforge::kernels::reference
