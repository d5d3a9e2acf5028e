#include "kernels/conv_transpose.h"

#include <algorithm>

#include "kernels/parallel.h"

namespace qforge::kernels {

ConvGeometry conv_of_transpose(const ConvTransposeGeometry& g) {
  ConvGeometry c;
  c.batch = g.batch;
  c.in_channels = g.out_channels;
  c.in_h = g.out_h;
  c.in_w = g.out_w;
  c.out_channels = g.in_channels;
  c.out_h = g.in_h;
  c.out_w = g.in_w;
  c.kernel_h = g.kernel_h;
  c.kernel_w = g.kernel_w;
  c.stride_h = g.stride_h;
  c.stride_w = g.stride_w;
  c.dilation_h = g.dilation_h;
  c.dilation_w = g.dilation_w;
  c.pad_top = g.pad_top;
  c.pad_left = g.pad_left;
  c.group = g.group;
  return c;
}

ConvTransposePlan plan_conv_transpose(const ConvTransposeGeometry& geometry, int threads) {
  const ConvGeometry conv = conv_of_transpose(geometry);
  // The data gradient's conv2d runs without prepared weights: the BLAS split, which depends on
  // the geometry only.
  return {geometry, plan_conv(conv, threads, {.gemm = ConvGemm::kBlas}),
          plan_conv_backward(conv, threads)};
}

size_t conv_transpose_workspace_bytes(const ConvTransposePlan& plan) {
  return conv_backward_workspace_bytes(plan.conv_backward);
}

size_t conv_transpose_backward_workspace_bytes(const ConvTransposePlan& plan) {
  return std::max(conv_workspace_bytes(plan.conv, ConvWeightForm::kRaw),
                  conv_backward_workspace_bytes(plan.conv_backward));
}

void conv_transpose2d(const ConvTransposePlan& plan, const float* x, const float* w,
                      const float* bias, float* y, std::byte* workspace) {
  ConvGradients as_gradient;
  as_gradient.dx = y;
  conv2d_backward(plan.conv_backward, nullptr, w, x, as_gradient, workspace);
  if (!bias) return;
  const ConvTransposeGeometry& g = plan.geometry;
  add_channel_bias(bias, y, g.batch, g.out_channels, g.out_h * g.out_w);
}

void add_channel_bias(const float* bias, float* y, int64_t batch, int64_t channels,
                      int64_t pixels) {
  parallel_for(batch * channels, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(1, pixels)),
               [&](int64_t p0, int64_t p1) {
                 for (int64_t p = p0; p < p1; ++p) {
                   const float b = bias[p % channels];
                   float* plane = y + p * pixels;
                   for (int64_t i = 0; i < pixels; ++i) plane[i] += b;
                 }
               });
}

void conv_transpose2d_backward(const ConvTransposePlan& plan, const float* x, const float* w,
                               const float* dy, const ConvGradients& grads, std::byte* workspace) {
  const ConvTransposeGeometry& g = plan.geometry;
  if (grads.dx) conv2d(plan.conv, dy, w, nullptr, grads.dx, workspace);
  if (grads.dw) {
    ConvGradients weight;
    weight.dw = grads.dw;
    conv2d_backward(plan.conv_backward, dy, nullptr, x, weight, workspace);
  }
  if (grads.dbias) {
    conv_bias_gradient(dy, grads.dbias, g.batch, g.out_channels, g.out_h * g.out_w);
  }
}

}  // namespace qforge::kernels
