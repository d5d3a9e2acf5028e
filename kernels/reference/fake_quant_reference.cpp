// Naive fake quantization reference (see fake_quant_reference.h).
#include "kernels/reference/fake_quant_reference.h"

#include <cmath>

#include "kernels/reference/reference_util.h"

namespace qforge::kernels::reference {
namespace {

size_t scale_index(const Tensor& x, const FakeQuantScales& s, int64_t flat) {
  if (s.scales.size() == 1) return 0;
  const int axis = s.axis < 0 ? s.axis + x.rank() : s.axis;
  return static_cast<size_t>(unravel(flat, x.shape())[static_cast<size_t>(axis)]);
}

float scale_at(const Tensor& x, const FakeQuantScales& s, int64_t flat) {
  return s.scales[scale_index(x, s, flat)];
}

// The integer ONNX QuantizeLinear produces, kept as float so that NaN can be reported.
float quantize(float x, float scale) {
  const float r = std::nearbyint(x / scale);  // default mode: round half to even
  if (std::isnan(r)) return r;
  return std::fmin(std::fmax(r, kFakeQuantMin), kFakeQuantMax);
}

}  // namespace

Tensor fake_quant(const Tensor& x, const FakeQuantScales& scales) {
  Tensor y(DType::kFloat32, x.shape());
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float s = scale_at(x, scales, i);
    const float q = quantize(xp[i], s);
    // Through an integer, as DequantizeLinear sees it: a zero has no sign.
    yp[i] = std::isnan(q) ? q : static_cast<float>(static_cast<int>(q)) * s;
  }
  return y;
}

Tensor fake_quant_backward(const Tensor& x, const Tensor& dy, const FakeQuantScales& scales) {
  Tensor dx(DType::kFloat32, x.shape());
  const float* xp = x.data<float>();
  const float* dyp = dy.data<float>();
  float* dxp = dx.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float s = scale_at(x, scales, i);
    const float r = std::nearbyint(xp[i] / s);
    // The gradient passes exactly where saturation did nothing.
    const bool inside = !std::isnan(r) && r >= kFakeQuantMin && r <= kFakeQuantMax;
    dxp[i] = inside ? dyp[i] : 0.0f;
  }
  return dx;
}

double fake_quant_value(double x, double scale) {
  const double r = std::nearbyint(x / scale);
  return std::fmin(std::fmax(r, kFakeQuantMin), kFakeQuantMax) * scale;
}

std::vector<double> fake_quant_lsq_scale_grad(const Tensor& x, const Tensor& dy,
                                              const FakeQuantScales& scales, double grad_scale) {
  std::vector<double> ds(scales.scales.size(), 0.0);
  const float* xp = x.data<float>();
  const float* dyp = dy.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const size_t c = scale_index(x, scales, i);
    const float q = xp[i] / scales.scales[c];
    if (std::isnan(q)) continue;
    const double r = std::nearbyint(q);
    double term = r - static_cast<double>(q);  // d(s·(x/s + (r - x/s)))/ds, r held
    if (r < kFakeQuantMin) term = kFakeQuantMin;
    if (r > kFakeQuantMax) term = kFakeQuantMax;
    ds[c] += static_cast<double>(dyp[i]) * term;
  }
  for (double& v : ds) v *= grad_scale;
  return ds;
}

}  // namespace qforge::kernels::reference
