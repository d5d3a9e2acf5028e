// Fake quantization: signed 8-bit symmetric QuantizeLinear→DequantizeLinear in float32, per
// tensor or per channel, its straight-through-estimator backward and the LSQ scale gradient.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/grad_mode.h"
#include "kernels/tensor.h"

namespace qforge::kernels {

// The quantization grid: zero point 0, integers [-128, 127].
inline constexpr float kFakeQuantMin = -128.0f;
inline constexpr float kFakeQuantMax = 127.0f;

// Per tensor when scales has one element; otherwise one scale per index of `axis` (negative
// counts from the end), scales.size() == dim(axis). Every scale must be finite and > 0.
struct FakeQuantScales {
  std::span<const float> scales;
  int axis = 0;
};

// The symmetric scale for a range: amax / 127 (a float32 division); a zero or NaN amax gives the
// smallest positive normal float, so that the grid stays well defined.
float symmetric_scale(float amax);

// max |x| per index of `axis` (amax.size() == dim(axis)), or over the whole tensor into
// amax[0] when axis < 0. NaN is skipped, as std::max skips it.
void channel_abs_max(const Tensor& x, int axis, std::span<float> amax);

// Forward, bit for bit what ONNX QuantizeLinear followed by DequantizeLinear computes:
//   q = saturate_[-128,127](round_half_to_even(x / scale))   (a float32 division, not x·(1/s))
//   y = float(q) · scale            (q is an integer, so y = +0 where q = 0, even for x < 0)
// ±inf saturates to ±128·scale / 127·scale. NaN propagates (y = NaN); ONNX leaves the integer a
// NaN quantizes to undefined, and a NaN output keeps bad data visible instead of hiding it as 0.
// y may alias x. Parallel over fixed chunks: results never depend on the thread count.
void fake_quant(const Tensor& x, const FakeQuantScales& scales, Tensor& y);

// Straight-through estimator: dx = dy where the quantizer did not saturate, else 0. With
// ties-to-even rounding, round(x/s) lies in [-128, 127] exactly when the float32 quotient x/s
// lies in [-128.5, 127.5): -128.5 rounds to -128 (even), 127.5 rounds to 128 (saturates).
// NaN quotients pass no gradient. dx may alias dy.
void fake_quant_backward(const Tensor& x, const Tensor& dy, const FakeQuantScales& scales,
                         Tensor& dx);

// Learned step size (LSQ, Esser et al. 2019) ------------------------------------------------------

// With q = x/s (the forward's float32 division) and the STE's range test:
//   ∂y/∂s = round(q) - q   where -128.5 <= q < 127.5 (round half to even, as the forward)
//         = -128           where q < -128.5
//         = 127            where q >= 127.5
//         = 0              where q is NaN
//   dscale = grad_scale · Σ dy·∂y/∂s, over the whole tensor or over each channel's elements.
// grad_scale is LSQ's g; lsq_grad_scale gives the paper's 1 / sqrt(N·127) for N elements per
// scale (pass 1 for the plain gradient).
struct LsqOptions {
  float grad_scale = 1.0f;
  GradMode mode = GradMode::kOverwrite;  // for dx and dscale alike
};

float lsq_grad_scale(int64_t elements_per_scale);

// Floats of workspace fake_quant_lsq_backward needs for x's element count and these scales.
int64_t fake_quant_lsq_workspace_floats(const Tensor& x, const FakeQuantScales& scales);
// The same for `elements` values and `scale_count` scales.
int64_t fake_quant_lsq_workspace_floats(int64_t elements, size_t scale_count);

// dscale (one value per scale) and, when dx is not null, the STE's dx (as
// fake_quant_backward). The sums run in an order fixed by the shapes alone: per tensor, lane
// sums over fixed chunks of the flat tensor, combined in chunk order in double; per channel, one
// task per channel walking its runs in order. Bits never depend on the thread count.
void fake_quant_lsq_backward(const Tensor& x, const Tensor& dy, const FakeQuantScales& scales,
                             const LsqOptions& options, Tensor* dx, std::span<float> dscale,
                             std::span<float> workspace);

// The contiguous float32 loops themselves, one scale for n elements.
void fake_quant_f32(const float* x, float scale, float* y, int64_t n);
void fake_quant_backward_f32(const float* x, const float* dy, float scale, float* dx, int64_t n);

// Affine 8-bit grids (ONNX QuantizeLinear / DequantizeLinear, opset 13 semantics) -------------

// Per tensor when scales has one element; otherwise one scale and zero point per index of `axis`
// (negative counts from the end). zero_points is empty (all 0) or as long as scales; each lies
// in the range of `dtype` (kInt8: [-128, 127], kUInt8: [0, 255]). Every scale must be finite
// and > 0.
struct QuantGrid {
  std::span<const float> scales;
  std::span<const int32_t> zero_points;
  int axis = 1;
  DType dtype = DType::kInt8;
};

// q = saturate(round_half_to_even(x / scale) + zero_point), a float32 division as in ONNX. ±inf
// saturates. NaN, whose integer ONNX leaves undefined, maps to the zero point. q has x's shape
// and grid.dtype.
void quantize_linear(const Tensor& x, const QuantGrid& grid, Tensor& q);
// y = float(q − zero_point) · scale; q is int8 or uint8 (grid.dtype), y float32 of q's shape.
void dequantize_linear(const Tensor& q, const QuantGrid& grid, Tensor& y);
// dequantize_linear(quantize_linear(x)) bit for bit, NaN included (→ +0), without the integer
// tensor. y may alias x.
void fake_quant_linear(const Tensor& x, const QuantGrid& grid, Tensor& y);

// One grid for a whole tensor: a scalar scale and zero point.
struct TensorGrid {
  float scale = 1.0f;
  int32_t zero_point = 0;
  DType dtype = DType::kInt8;
};

// fake_quant_linear on one tensor-wide grid over `rows` runs of `count` floats `ld` apart, in
// place, with the same bits: a producer's output pass applies it to each block it has written
// while the block is in cache. Invalid error for a grid fake_quant_linear would reject.
void fake_quant_linear_rows(const TensorGrid& grid, float* y, int64_t rows, int64_t count,
                            int64_t ld);
// The checks fake_quant_linear_rows makes, for a caller that builds the grid once.
void check_tensor_grid(const char* what, const TensorGrid& grid);

// fake_quant_linear's y, and the record a training forward keeps of it in place of x: q,
// quantize_linear's integers (dequantize_linear(q) is y again, bit for bit), and `pass`, a mask
// of x's elements (kernels/mask.h, mask_bytes(x.numel())) set where the straight-through
// estimator passes the gradient: round_half_to_even(x / scale) + zero point within the grid's
// range before saturation (for the symmetric int8 grid the rule of fake_quant_backward), clear
// for NaN. masked_gradient(dy, pass) is then the fake quant's backward.
void fake_quant_linear_record(const Tensor& x, const QuantGrid& grid, Tensor& y, Tensor& q,
                              uint8_t* pass);

}  // namespace qforge::kernels
