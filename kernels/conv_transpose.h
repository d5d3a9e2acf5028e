// Float32 NCHW transposed convolution (ONNX ConvTranspose), forward and backward, run as the
// convolution whose data gradient it is. For x [N, C_in, H, W] and w [C_in, C_out/group, kH,
// kW], y = conv_transpose(x, w) + bias is the dx of the convolution `conv` that reads a
// [N, C_out, out_h, out_w] input with the same weight (its out_channels = C_in): so
//   forward:  y  = conv2d_backward's dx with conv's dy = x (OpenBLAS GEMMs, col2im);
//   dx:          = conv2d(dy, w) over conv's geometry (the packed GEMM or OpenBLAS);
//   dw:          = conv2d_backward's dw with conv's input = dy and conv's dy = x;
//   dbias[co] = Σ_n lane_sum(dy[n, co]), images in order (conv_bias_gradient).
// Both inherit the convolution kernels' fixed splits: outputs are bit-identical for any thread
// count.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/conv.h"
#include "kernels/conv_backward.h"

namespace qforge::kernels {

// The transposed convolution's own terms. out_h/out_w follow from ONNX's rule
// stride·(in − 1) + output_padding + dilation·(k − 1) + 1 − pad_begin − pad_end.
struct ConvTransposeGeometry {
  int64_t batch = 1;
  int64_t in_channels = 1;   // x's channels = w.shape[0]
  int64_t out_channels = 1;  // y's channels = w.shape[1] · group
  int64_t in_h = 1;
  int64_t in_w = 1;
  int64_t out_h = 1;
  int64_t out_w = 1;
  int64_t kernel_h = 1;
  int64_t kernel_w = 1;
  int64_t stride_h = 1;
  int64_t stride_w = 1;
  int64_t dilation_h = 1;
  int64_t dilation_w = 1;
  int64_t pad_top = 0;
  int64_t pad_left = 0;
  int64_t group = 1;
};

// The convolution from y's space to x's space whose data gradient the transposed one is.
ConvGeometry conv_of_transpose(const ConvTransposeGeometry& g);

struct ConvTransposePlan {
  ConvTransposeGeometry geometry;
  ConvPlan conv;                   // conv2d over conv_of_transpose: the data gradient
  ConvBackwardPlan conv_backward;  // its backward: the forward and the weight gradient
};

ConvTransposePlan plan_conv_transpose(const ConvTransposeGeometry& geometry, int threads);
size_t conv_transpose_workspace_bytes(const ConvTransposePlan& plan);
size_t conv_transpose_backward_workspace_bytes(const ConvTransposePlan& plan);

// x [N, C_in, in_h, in_w], w [C_in, C_out/group, kH, kW], bias [C_out] or null,
// y [N, C_out, out_h, out_w] (not aliasing x).
void conv_transpose2d(const ConvTransposePlan& plan, const float* x, const float* w,
                      const float* bias, float* y, std::byte* workspace);

// y[n, c, p] += bias[c] over y [batch, channels, pixels] (the transposed convolutions' bias,
// plain or 3-D), planes in parallel.
void add_channel_bias(const float* bias, float* y, int64_t batch, int64_t channels, int64_t pixels);

// x (needed for dw), w (needed for dx) and dy as in the forward; a null gradient is skipped.
void conv_transpose2d_backward(const ConvTransposePlan& plan, const float* x, const float* w,
                               const float* dy, const ConvGradients& grads, std::byte* workspace);

}  // namespace qforge::kernels
