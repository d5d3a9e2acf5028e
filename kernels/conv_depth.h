// 3-D convolutions (video and volume models: x [N, C, D, H, W]) on the 2-D kernels of
// kernels/conv.h. Output slice d of image n reads the input slices d·stride − pad + t·dilation,
// t < kernel (taps outside the input read zero), so with those slices stacked along the
// channels (input channel c, tap t at channel c·kernel + t) it is one 2-D convolution whose
// weight [O, C/group, kd, kh, kw] is read as [O, C/group·kd, kh, kw] (the same memory). The
// stacks of every (n, d) form the batch of that 2-D convolution: its output [N·D_out, O, H', W']
// is the 3-D output with the depth before the channels. The backward is the 2-D backward on the
// same stacks, the stacks' gradient added back into the input's slices.
//
// Depthwise 3-D convolutions (one input channel per group: MViT's pooling, X3D's and CSN's
// blocks) would run as grouped GEMMs of kd·kh·kw rows on the stacks; they run directly instead,
// forward (conv3d_depthwise) and backward (conv3d_depthwise_backward), on the depthwise 2-D
// kernels' paths extended over the depth taps.
//
// Each step is a copy or a sum in a fixed order, so the bits are the 2-D kernels' and do not
// depend on the thread count; a slice's output does not depend on the batch it runs in.
#pragma once

#include <cstdint>

#include "kernels/conv.h"
#include "kernels/conv_backward.h"

namespace qforge::kernels {

// The depth axis of a 3-D convolution (the spatial axis before height and width).
struct ConvDepth {
  int64_t in = 1;
  int64_t out = 1;
  int64_t kernel = 1;
  int64_t stride = 1;
  int64_t dilation = 1;
  int64_t pad = 0;  // at the front; the back's is implied by `out`
};

// The input slice that tap t of output slice d reads, or -1 where it falls outside the input.
inline int64_t depth_source_slice(const ConvDepth& depth, int64_t d, int64_t t) {
  const int64_t s = d * depth.stride - depth.pad + t * depth.dilation;
  return s >= 0 && s < depth.in ? s : -1;
}

// The 2-D convolution of the stacks, from the 3-D convolution's batch, channels and plane
// geometry (`plane`: batch N, in_channels C, the height and width axes, out_channels, group).
ConvGeometry depth_stacked_geometry(const ConvGeometry& plane, const ConvDepth& depth);

// x [N, C, D_in, H·W] -> stacks [N·D_out, C·kernel, H·W].
void stack_depth_taps(const float* x, float* stacks, int64_t batch, int64_t channels, int64_t plane,
                      const ConvDepth& depth);
// The backward of stack_depth_taps: dx [N, C, D_in, H·W] = the sum, over the stack entries that
// copied each input element, of their gradient (overwritten; zero where no tap reads it).
void unstack_depth_taps(const float* stacks, float* dx, int64_t batch, int64_t channels,
                        int64_t plane, const ConvDepth& depth);

// [N, C, D, P] <-> [N·D, C, P].
void depth_to_batch(const float* x, float* y, int64_t batch, int64_t channels, int64_t depth,
                    int64_t plane);
void batch_to_depth(const float* x, float* y, int64_t batch, int64_t channels, int64_t depth,
                    int64_t plane);

// Whether a 3-D convolution, given its plane geometry, runs on conv3d_depthwise: one input
// channel per group (any number of outputs per group).
bool depthwise_3d_direct(const ConvGeometry& plane);

// x [N, C, D_in, H, W], w [O, 1, kd, kh, kw], bias [O] or null, y [N, O, D_out, H', W'] (not
// aliasing x, nor the epilogue's residual, which has y's layout). Each output is one fused
// multiply-add chain from the bias over the taps inside the input in (kd, kh, kw) order (taps in
// the plane's padding may add w·0), computed by one task: the same bits on any number of threads
// and in any batch. Runs with denormals flushed, as conv2d.
void conv3d_depthwise(const ConvGeometry& plane, const ConvDepth& depth, const float* x,
                      const float* w, const float* bias, float* y,
                      const ConvEpilogue& epilogue = {});

// The backward of conv3d_depthwise (the gradients of kernels/conv_backward.h, dx [N, C, D_in, H,
// W], dw [O, 1, kd, kh, kw], dbias [O]), on at most `threads` threads with one scratch region
// each: dw per output channel, over the images and then the output slices in order, per tap in
// (kd, kh, kw) order; dx per input volume, over the group's output channels and then the output
// slices in order, each depth tap's plane taps added into the slice it reads; dbias as conv2d's.
// Every gradient element is a fixed sequence of float operations: bit-identical for any thread
// count, and dx of an image does not depend on the batch.
size_t conv3d_depthwise_backward_workspace_bytes(const ConvGeometry& plane, const ConvDepth& depth,
                                                 int threads);
void conv3d_depthwise_backward(const ConvGeometry& plane, const ConvDepth& depth, int threads,
                               const float* x, const float* w, const float* dy,
                               const ConvGradients& grads, std::byte* workspace,
                               GradMode write = GradMode::kOverwrite);

}  // namespace qforge::kernels
