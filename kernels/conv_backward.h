// Backward of the float32 NCHW convolution of kernels/conv.h, for y = conv(x, w) + bias:
//   dx[n, ci, ih, iw]   = Σ_{co in ci's group, kh, kw} w[co, ci', kh, kw] · dy[n, co, oh, ow]
//   dw[co, ci', kh, kw] = Σ_n Σ_{oh, ow} dy[n, co, oh, ow] · x[n, ci, ih, iw]
//   dbias[co]           = Σ_n Σ_{oh, ow} dy[n, co, oh, ow]
// over the taps ih = oh·stride_h − pad_top + kh·dilation_h (likewise w) that land inside the
// input, ci' = ci − group·in_channels/group (PyTorch's convolution_backward).
//
// How it runs: by default, ungrouped and grouped convolutions run on OpenBLAS, one single-threaded
// cblas_sgemm per task of a shape fixed by the geometry alone. dx is col2im of Wᵀ·dY, a task per
// (image, group, block of input channels), so tasks write disjoint channels; dw is
// dY·im2col(x)ᵀ, a task per (group, block of input channels) that adds the images in order
// 0 .. batch-1 (and, within an image, blocks of output pixels in order). 1×1 stride-1 unpadded
// convolutions use x and dx as the im2col matrix directly. Where the packed GEMM is built, dx of
// an ungrouped stride-1 convolution that overwrites dx is instead the forward convolution
// (kernels/conv.h: Winograd or the packed GEMM over the whole batch) of dy with the filters
// transposed and flipped, padded by dilation·(kernel − 1) − pad. dw of an ungrouped 3×3 stride-1
// convolution with enough channels is Winograd's minimal filtering F(3×3, 2×2), the dual of the
// forward's F(2×2, 3×3): for each 2×2 tile of dy and the 4×4 patch of x it reads,
//   dw += Gᵀ [(A·dy·Aᵀ) ⊙ (Bᵀ·x·B)] G
// (16 products for 36); the transformed tiles of a chunk of tiles are summed by 16 GEMMs
// [out_channels × tiles]·[tiles × in_channels], a task per transform point, chunks in order, and
// the 16 sums go back to 3×3 once at the end. Where the packed GEMM is built, dx of the other
// ungrouped convolutions that are not direct (strided ones, or any when dx is accumulated) is
// col2im of Wᵀ·dY on the packed micro-kernel (Wᵀ packed once per call, dY's rows read in place),
// the same tasks and order as above. dw of the other ungrouped convolutions (the stem,
// strided and 1×1 convolutions), where the packed GEMM is built and the batch's per-image
// weight gradients fit in 16 MiB, runs on the packed micro-kernel instead of OpenBLAS: a task per
// image packs chunks of its output pixels (dy's rows, and the unrolled input gathered straight
// into [pixel][32 rows] panels) and adds each chunk's products to its own dw, tile by tile; the
// images' dw are then added in image order. Convolutions with one input
// channel per group (depthwise) use direct vectorised loops: dx per input plane, dw per output
// channel summing images in order, on zero-padded copies of the planes split by stride phase, where
// every kernel tap is one contiguous loop over a plane. dbias sums each channel's planes, images
// in order, with lane_sum. Depthwise 3-D convolutions run the same depthwise tasks over their
// depth taps (kernels/conv_depth.h, conv3d_depthwise_backward). Every output is thus a fixed
// sequence of float operations: gradients are bit-identical for any thread count, and dx of an
// image does not depend on the batch it runs in.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/conv.h"
#include "kernels/gradient.h"

namespace qforge::kernels {

struct ConvBackwardPlan {
  ConvGeometry geometry;
  // One input channel per group: direct loops over stride-phased, zero-padded copies of the
  // planes in scratch, each kernel tap one flat loop.
  bool depthwise = false;
  bool direct = false;        // 1×1, stride 1, no padding: x and dx are the im2col matrix
  int64_t channel_block = 0;  // input channels of a group per GEMM task
  int64_t channel_blocks = 0;
  int64_t tile_pixels = 0;  // output pixels per im2col tile
  int slots = 1;            // scratch regions, one per thread that may run
  // dx (when it is overwritten) as conv2d(dy, w transposed and flipped) with this plan: stride-1
  // ungrouped convolutions (where the packed GEMM is built), and stride-1 depthwise ones with one
  // output channel per input channel, on the forward depthwise kernel.
  bool dx_as_conv = false;
  ConvPlan dx_plan;
  // dw by F(3×3, 2×2) Winograd, dw_chunk_tiles 2×2 tiles of dy (images in order, rows of tiles,
  // tiles in a row) transformed at a time; each transform-domain sum runs over the tiles in
  // order (on the packed GEMM, one chain of fused multiply-adds whatever the chunk).
  bool winograd_dw = false;
  int64_t dw_chunk_tiles = 0;
  // dw of the other ungrouped convolutions on the packed GEMM (where it is built), dY and the
  // unrolled input packed dw_chunk_pixels output pixels at a time: a task per image and the
  // images' dw summed in order, or, where a dw per image would take too much memory,
  // dw_row_blocks tasks of output channels each walking every image.
  bool packed_dw = false;
  int64_t dw_chunk_pixels = 0;
  int64_t dw_row_blocks = 0;
  // dx of the ungrouped convolutions that are not direct, where it is not the transposed
  // convolution, on the packed GEMM (where it is built): Wᵀ packed once per call, dY read in place.
  bool packed_dx = false;
};

// threads: the most threads the backward will run on (scratch regions). The split of the work
// depends on the geometry only.
ConvBackwardPlan plan_conv_backward(const ConvGeometry& geometry, int threads);
size_t conv_backward_workspace_bytes(const ConvBackwardPlan& plan);

// Gradients to compute; a null pointer skips that gradient.
struct ConvGradients {
  float* dx = nullptr;     // [batch, in_channels, in_h, in_w]
  float* dw = nullptr;     // [out_channels, in_channels/group, kernel_h, kernel_w]
  float* dbias = nullptr;  // [out_channels]
};

// x (needed for dw), w (needed for dx) and dy [batch, out_channels, out_h, out_w] as in conv2d.
// workspace: conv_backward_workspace_bytes(plan) bytes, 64-byte aligned. The outputs must not
// alias the inputs. Denormals are flushed, as in conv2d.
void conv2d_backward(const ConvBackwardPlan& plan, const float* x, const float* w, const float* dy,
                     const ConvGradients& grads, std::byte* workspace,
                     GradMode write = GradMode::kOverwrite);

// The bias gradient of a convolution (plain, transposed or 3-D) whose output dy is
// [batch, channels, pixels]: dbias[c] = Σ_n lane_sum(dy[n, c]), images in order, a task per
// block of channels.
void conv_bias_gradient(const float* dy, float* dbias, int64_t batch, int64_t channels,
                        int64_t pixels, GradMode write = GradMode::kOverwrite);

}  // namespace qforge::kernels
