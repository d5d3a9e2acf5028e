// Convolution: the planner, which picks an algorithm per geometry, and the OpenBLAS path, GEMMs
// per (image, group, channel block, pixel tile) on the input itself or on an im2col tile in
// per-thread scratch. The other algorithms have a file each (kernels/conv_internal.h): Winograd
// F(2×2, 3×3) per (image or group of images, block of tiles), the packed GEMM per (tile
// of the batch's pixels, channel block) with the input gathered into its panels, and depthwise
// kernels.
#include "kernels/conv.h"

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/conv_internal.h"
#include "kernels/gemm.h"
#include "kernels/parallel.h"

namespace qforge::kernels {
namespace conv_detail {

// The im2col tile (conv_internal.h). The valid column range of a tap depends only on kw, so it
// is computed once per tap, and rows are walked without divisions.
void im2col_tile(const ConvGeometry& g, const float* x, int64_t channels, int64_t p0, int64_t np,
                 float* col) {
  const int64_t plane = g.in_h * g.in_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t oh_first = p0 / g.out_w;
  const int64_t ow_first = p0 % g.out_w;
  const int64_t s = g.stride_w;
  if (taps == 1 && g.pad_top == 0 && g.pad_left == 0 && (g.out_h - 1) * g.stride_h < g.in_h &&
      (g.out_w - 1) * s < g.in_w) {
    // 1×1 unpadded (strided) kernel: every tap lies inside the input, a plain strided gather.
    for (int64_t c = 0; c < channels; ++c) {
      const float* xc = x + c * plane;
      float* dst = col + c * np;
      int64_t oh = oh_first;
      int64_t ow0 = ow_first;
      int64_t remaining = np;
      while (remaining > 0) {
        const int64_t n = std::min(g.out_w - ow0, remaining);
        const float* row = xc + oh * g.stride_h * g.in_w + ow0 * s;
        if (s == 2) {
          for (int64_t j = 0; j < n; ++j) dst[j] = row[2 * j];
        } else {
          for (int64_t j = 0; j < n; ++j) dst[j] = row[j * s];
        }
        dst += n;
        remaining -= n;
        ow0 = 0;
        ++oh;
      }
    }
    return;
  }
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t offset = kw * g.dilation_w - g.pad_left;
      int64_t lo_all, hi_all;
      valid_range(0, g.out_w, s, offset, g.in_w, lo_all, hi_all);
      for (int64_t c = 0; c < channels; ++c) {
        const float* xc = x + c * plane;
        float* dst = col + (c * taps + kh * g.kernel_w + kw) * np;
        int64_t oh = oh_first;
        int64_t ow0 = ow_first;
        int64_t remaining = np;
        while (remaining > 0) {
          const int64_t ow1 = std::min(g.out_w, ow0 + remaining);
          const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
          // dst[ow - ow0] is this row's column for output column ow.
          if (ih < 0 || ih >= g.in_h) {
            std::fill(dst, dst + (ow1 - ow0), 0.0f);
          } else {
            const int64_t lo = std::clamp(lo_all, ow0, ow1);
            const int64_t hi = std::clamp(hi_all, lo, ow1);
            const float* row = xc + ih * g.in_w;
            std::fill(dst, dst + (lo - ow0), 0.0f);
            if (s == 1) {
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow - ow0] = row[ow + offset];
            } else if (s == 2) {
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow - ow0] = row[2 * ow + offset];
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow - ow0] = row[ow * s + offset];
            }
            std::fill(dst + (hi - ow0), dst + (ow1 - ow0), 0.0f);
          }
          dst += ow1 - ow0;
          remaining -= ow1 - ow0;
          ow0 = 0;
          ++oh;
        }
      }
    }
  }
}

}  // namespace conv_detail

namespace {

using conv_detail::activate_runs;
using conv_detail::ceil_div;
using conv_detail::channel_finish;
using conv_detail::finish_run;
using conv_detail::im2col_tile;
using conv_detail::is_identity;
using conv_detail::split_evenly;

// An im2col tile stays near this size so that the GEMM reads it from L2 (ResNet-50 at batch 8
// ran a few percent faster with 1 MiB than with 256-512 KiB tiles, and no faster beyond).
constexpr int64_t kIm2colTileBytes = 1024 * 1024;
// Tiles never go below this many pixels: narrower GEMMs waste the BLAS micro-kernel.
constexpr int64_t kMinTilePixels = 64;
// Output channels per GEMM call; wider layers are split so that batch 1 still has parallel work
// and the weight block stays cache-sized.
constexpr int64_t kChannelBlock = 256;
// im2col GEMMs with at least this many output channels take blocks this wide: every block
// gathers its own tile and OpenBLAS re-packs it (ResNet-50's downsample and 3×3 stride-2 layers
// ran 5-20% faster than with kChannelBlock).
constexpr int64_t kIm2colChannelBlock = 512;

void conv_gemm(const ConvPlan& plan, const float* x, const float* w, const float* bias, float* y,
               std::byte* workspace, const ConvEpilogue& e) {
  const ConvGeometry& g = plan.geometry;
  const bool finish = !is_identity(e);
  const bool direct = plan.algorithm == ConvAlgorithm::kDirectGemm;
  const int64_t in_per_group = g.in_channels / g.group;
  const int64_t out_per_group = g.out_channels / g.group;
  const int64_t k = in_per_group * g.kernel_h * g.kernel_w;
  const int64_t pixels = g.out_h * g.out_w;
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t tiles = plan.pixel_tiles;
  const int64_t blocks = plan.channel_blocks;
  const int64_t tasks = g.batch * g.group * blocks * tiles;
  const size_t slot_bytes =
      direct ? 0 : aligned_bytes(static_cast<size_t>(k * plan.tile_pixels) * sizeof(float));

  parallel_tasks_with_scratch(
      tasks, plan.slots, slot_bytes, workspace, [&](int64_t t, std::byte* scratch) {
        const int64_t tile = t % tiles;
        t /= tiles;
        const int64_t block = t % blocks;
        t /= blocks;
        const int64_t grp = t % g.group;
        const int64_t n = t / g.group;

        const int64_t p0 = tile * plan.tile_pixels;
        const int64_t np = std::min(plan.tile_pixels, pixels - p0);
        const int64_t m0 = block * plan.channel_block;
        const int64_t rows = std::min(plan.channel_block, out_per_group - m0);
        const int64_t oc0 = grp * out_per_group + m0;

        const float* xg = x + (n * g.in_channels + grp * in_per_group) * in_plane;
        const float* right;
        int64_t ldb;
        if (direct) {
          right = xg + p0;
          ldb = pixels;
        } else {
          float* col = reinterpret_cast<float*>(scratch);
          im2col_tile(g, xg, in_per_group, p0, np, col);
          right = col;
          ldb = np;
        }
        float* yb = y + (n * g.out_channels + oc0) * pixels + p0;
        float beta = 0.0f;
        if (bias) {
          for (int64_t r = 0; r < rows; ++r) std::fill_n(yb + r * pixels, np, bias[oc0 + r]);
          beta = 1.0f;
        }
        sgemm(Transpose::kNo, Transpose::kNo, rows, np, k, 1.0f, w + oc0 * k, k, right, ldb, beta,
              yb, pixels);
        if (finish) {
          const int64_t offset = (n * g.out_channels + oc0) * pixels + p0;
          for (int64_t r = 0; r < rows; ++r) {
            finish_run(channel_finish(e, oc0 + r), yb + r * pixels,
                       e.residual ? e.residual + offset + r * pixels : nullptr, np);
          }
        }
        activate_runs(e, yb, rows, np, pixels);
      });
}

}  // namespace

ConvPlan plan_conv(const ConvGeometry& geometry, int threads, const ConvPlanOptions& options) {
  ConvPlan plan;
  const ConvGeometry& g = geometry;
  plan.geometry = g;
  plan.slots = std::max(threads, 1);
  const int64_t in_per_group = g.in_channels / g.group;
  if (in_per_group == 1 && g.group > 1) {
    plan.algorithm = ConvAlgorithm::kDepthwise;
    return plan;
  }
  if (conv_detail::winograd_applies(g)) {
    conv_detail::plan_winograd(plan, options);
    return plan;
  }
  const bool shallow = options.gemm == ConvGemm::kShallow
                           ? conv_detail::shallow_fits(g)
                           : options.gemm == ConvGemm::kAuto && conv_detail::shallow_pays(g);
  if (shallow && shallow_conv_available()) {
    plan.algorithm = ConvAlgorithm::kShallow;
    return plan;
  }
  const bool pointwise = g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 &&
                         g.pad_top == 0 && g.pad_left == 0 && g.out_h == g.in_h &&
                         g.out_w == g.in_w;
  plan.algorithm = pointwise ? ConvAlgorithm::kDirectGemm : ConvAlgorithm::kIm2colGemm;
  // Where the build lacks the shallow path, the packed GEMM runs those convolutions with its
  // bits, so that a build for AVX2 computes what an AVX-512 build does.
  if (conv_detail::plan_packed(plan, shallow ? ConvPlanOptions{ConvGemm::kPacked} : options)) {
    return plan;
  }
  const int64_t k = in_per_group * g.kernel_h * g.kernel_w;
  const int64_t pixels = g.out_h * g.out_w;
  const int64_t max_tile =
      std::max(kMinTilePixels, kIm2colTileBytes / std::max<int64_t>(1, k * int64_t{sizeof(float)}));
  std::tie(plan.tile_pixels, plan.pixel_tiles) = split_evenly(pixels, max_tile, 16);
  std::tie(plan.channel_block, plan.channel_blocks) =
      split_evenly(g.out_channels / g.group,
                   plan.algorithm == ConvAlgorithm::kIm2colGemm &&
                           g.out_channels / g.group >= kIm2colChannelBlock
                       ? kIm2colChannelBlock
                       : kChannelBlock,
                   16);
  return plan;
}

bool conv_residual_may_alias_output(const ConvPlan& plan) {
  return plan.algorithm == ConvAlgorithm::kShallow ||
         (plan.packed && (plan.algorithm == ConvAlgorithm::kDirectGemm ||
                          plan.algorithm == ConvAlgorithm::kIm2colGemm));
}

size_t conv_prepared_weight_floats(const ConvPlan& plan) {
  if (plan.algorithm == ConvAlgorithm::kWinograd)
    return conv_detail::winograd_prepared_floats(plan);
  if (plan.packed) return conv_detail::packed_prepared_floats(plan);
  return 0;
}

void prepare_conv_weights(const ConvPlan& plan, const float* w, float* prepared) {
  if (plan.algorithm == ConvAlgorithm::kWinograd) {
    conv_detail::prepare_winograd_weights(plan, w, prepared);
  } else if (plan.packed) {
    conv_detail::prepare_packed_weights(plan, w, prepared);
  }
}

size_t conv_workspace_bytes(const ConvPlan& plan, ConvWeightForm form) {
  if (plan.algorithm == ConvAlgorithm::kWinograd) {
    return conv_detail::winograd_workspace_bytes(plan, form);
  }
  if (plan.packed) return conv_detail::packed_workspace_bytes(plan, form);
  if (plan.algorithm == ConvAlgorithm::kShallow) return conv_detail::shallow_workspace_bytes(plan);
  if (plan.algorithm != ConvAlgorithm::kIm2colGemm) return 0;
  const ConvGeometry& g = plan.geometry;
  const int64_t k = g.in_channels / g.group * g.kernel_h * g.kernel_w;
  return static_cast<size_t>(plan.slots) *
         aligned_bytes(static_cast<size_t>(k * plan.tile_pixels) * sizeof(float));
}

void conv2d(const ConvPlan& plan, const float* x, const float* w, const float* bias, float* y,
            std::byte* workspace, const ConvEpilogue& epilogue, const float* prepared_weights) {
  const ConvGeometry& g = plan.geometry;
  if (g.batch * g.out_channels * g.out_h * g.out_w == 0) return;
  const DenormalsFlushed flushed;
  switch (plan.algorithm) {
    case ConvAlgorithm::kDepthwise:
      conv_detail::conv_depthwise(plan, x, w, bias, y, epilogue);
      break;
    case ConvAlgorithm::kWinograd:
      conv_detail::conv_winograd(plan, x, w, prepared_weights, bias, y, workspace, epilogue);
      break;
    case ConvAlgorithm::kShallow:
      conv_detail::conv_shallow(plan, x, w, bias, y, workspace, epilogue);
      break;
    case ConvAlgorithm::kDirectGemm:
    case ConvAlgorithm::kIm2colGemm:
      if (plan.packed) {
        conv_detail::conv_packed(plan, x, w, prepared_weights, bias, y, workspace, epilogue);
        break;
      }
      conv_gemm(plan, x, w, bias, y, workspace, epilogue);
      break;
  }
}

}  // namespace qforge::kernels
