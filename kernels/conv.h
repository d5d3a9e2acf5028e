// Float32 NCHW convolution. 1×1 stride-1 unpadded convolutions are a GEMM straight on the input;
// 3×3 stride-1 convolutions on large enough planes use Winograd F(2×2, 3×3) (16 GEMMs per block
// of 2×2 output tiles); other convolutions gather an im2col tile of output pixels into scratch and
// run one GEMM per tile; convolutions with one input channel per group (depthwise) use direct
// loops. With AVX-512, or AVX2 and FMA, the GEMMs of ungrouped convolutions run on the packed
// micro-kernel of kernels/packed_gemm.h (weights packed once), elsewhere on OpenBLAS. With
// AVX-512, ungrouped convolutions of at most 160 taps in all (in_channels · kernel_h · kernel_w:
// stems, shallow 1×1 layers) run directly on the input, unpacked, with the packed GEMM's bits
// (with AVX2 and FMA, on the packed GEMM).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>

#include "kernels/elementwise.h"
#include "kernels/fake_quant.h"

namespace qforge::kernels {

// One 2-D convolution. 1-D convolutions use in_h = out_h = kernel_h = 1. Trailing pads are
// implied by out_h/out_w: taps outside the input read zero.
struct ConvGeometry {
  int64_t batch = 1;
  int64_t in_channels = 1;
  int64_t in_h = 1;
  int64_t in_w = 1;
  int64_t out_channels = 1;
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

enum class ConvAlgorithm : uint8_t {
  kDirectGemm,  // 1×1, stride 1, no padding: the input planes are the GEMM's right operand
  kIm2colGemm,  // im2col tile in scratch, then GEMM
  kWinograd,    // 3×3, stride 1, dilation 1, group 1, enough channels and tiles (below)
  kDepthwise,   // one input channel per group
  kShallow,     // group 1, few taps in all (in_channels · kernel_h · kernel_w): direct, unpacked
};

// Winograd pays off once an image has this many 2×2 output tiles (about 12×12 pixels; ResNet-50's
// 14×14 layers gain, its 7×7 layers lose): on smaller planes its 16 GEMMs are too narrow.
inline constexpr int64_t kWinogradMinTiles = 36;
// With few channels the 16 GEMMs are too thin (K = input channels) and im2col wins.
inline constexpr int64_t kWinogradMinChannels = 16;
// Wide layers gain from this many tiles on (ResNet-50's 7×7 layers with 512 channels: 16 GEMMs
// of 16 columns beat one im2col GEMM of 49 by about 10%).
inline constexpr int64_t kWinogradWideMinTiles = 16;
inline constexpr int64_t kWinogradWideChannels = 256;

// How a convolution is split into GEMM calls. The OpenBLAS split is fixed by the geometry of one
// image (never by the batch or the thread count); the packed GEMM's split may follow the batch
// and the thread count, since each of its outputs is one chain of multiply-adds in k order.
// Either way an image's output bits are the same in any batch and on any number of threads.
struct ConvPlan {
  ConvGeometry geometry;
  ConvAlgorithm algorithm = ConvAlgorithm::kIm2colGemm;
  // Per image: output pixels per GEMM call and their count; for Winograd, 2×2 output tiles
  // per block of 16 GEMMs and the number of blocks.
  int64_t tile_pixels = 0;
  int64_t pixel_tiles = 0;
  int64_t channel_block = 0;  // output channels per GEMM call
  int64_t channel_blocks = 0;
  int slots = 1;  // scratch regions, one per thread that may run
  // Winograd's 16 GEMMs, and direct and im2col convolutions of one group, run on the packed
  // GEMM (kernels/packed_gemm.h) where it is built, with the weights packed once. For
  // direct and im2col convolutions a task is then a tile of tile_pixels columns of the whole
  // batch's output pixels (a tile may span images; pixel_tiles of them) by channel_block output
  // channels, its input columns gathered straight into packed panels depth_block rows of k at
  // a time. Each output is one chain of multiply-adds in k order, so any split gives the same
  // bits. Packed Winograd forms V and M of image_group images side by side.
  bool packed = false;
  int64_t depth_block = 0;
  int64_t image_group = 1;
};

// Elementwise work folded into the output pass while the output is still in cache (a fused
// BatchNormalization, residual add and ReLU/ReLU6/Clip, then any other activation):
// y = act(clamp((conv + bias)·scale[c] + shift[c] + residual, clamp_min, clamp_max)).
// Null pointers, infinite clamps and no activation leave that part out.
struct ConvEpilogue {
  const float* scale = nullptr;  // [out_channels]
  const float* shift = nullptr;  // [out_channels]
  // [batch, out_channels, out_h, out_w]; it may be y itself only where
  // conv_residual_may_alias_output(plan).
  const float* residual = nullptr;
  float clamp_min = -std::numeric_limits<float>::infinity();
  float clamp_max = std::numeric_limits<float>::infinity();
  // An activation of the element-wise table (SiLU, HardSwish, Sigmoid, …), applied last to each
  // output run as soon as it is written, with the bits unary_f32 gives each value.
  std::optional<UnaryOp> activation;
  UnaryParams activation_params;
  // A QuantizeLinear → DequantizeLinear of every output on one grid (the runtime's FakeQuant of
  // the convolution's output), after the activation, with the bits fake_quant_linear gives.
  std::optional<TensorGrid> quant;
};

// Which GEMM a plan uses: kAuto picks by the geometry (the packed GEMM where it was measured to
// pay); tests and benchmarks force one or the other.
enum class ConvGemm : uint8_t {
  kAuto,
  kPacked,   // the packed GEMM wherever it can run (AVX-512 or AVX2 + FMA build, group 1)
  kBlas,     // OpenBLAS throughout
  kShallow,  // the shallow direct path wherever it fits (without AVX-512: the packed GEMM)
};

struct ConvPlanOptions {
  ConvGemm gemm = ConvGemm::kAuto;
};

ConvPlan plan_conv(const ConvGeometry& geometry, int threads, const ConvPlanOptions& options = {});

// Whether the epilogue's residual may be y's own memory under `plan` (the output written over
// the residual): the shallow path and the packed direct and im2col paths read each residual
// element in the task that writes the same output element, just before writing it, and write
// nothing else to y (the packed path's running sums over k live in scratch). Winograd, the
// depthwise kernel and OpenBLAS write y before their epilogue reads the residual.
bool conv_residual_may_alias_output(const ConvPlan& plan);

// Whether this build has ConvAlgorithm::kShallow (AVX-512); without it those convolutions run
// on the packed GEMM, with the same bits, where that is built (AVX2 and FMA).
bool shallow_conv_available();

// Some algorithms consume the filters in another form (Winograd: G g G^T; the packed GEMM: row
// panels). A caller whose filters are constant prepares them once and passes them to every
// conv2d call, which then skips that work and needs less workspace.
size_t conv_prepared_weight_floats(const ConvPlan& plan);  // 0: nothing to prepare
void prepare_conv_weights(const ConvPlan& plan, const float* w, float* prepared);

enum class ConvWeightForm : uint8_t { kRaw, kPrepared };
size_t conv_workspace_bytes(const ConvPlan& plan, ConvWeightForm form = ConvWeightForm::kRaw);

// x [batch, in_channels, in_h, in_w], w [out_channels, in_channels/group, kernel_h, kernel_w],
// bias [out_channels] or nullptr, y [batch, out_channels, out_h, out_w] (not aliasing x).
// prepared_weights: prepare_conv_weights(plan, w) or null (then the workspace must be sized
// for ConvWeightForm::kRaw). Runs with denormals flushed (kernels/parallel.h, DenormalsFlushed):
// a denormal input reads as zero and a denormal output is written as zero.
void conv2d(const ConvPlan& plan, const float* x, const float* w, const float* bias, float* y,
            std::byte* workspace, const ConvEpilogue& epilogue = {},
            const float* prepared_weights = nullptr);

}  // namespace qforge::kernels
