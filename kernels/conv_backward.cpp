// Convolution backward: im2col/col2im around single-threaded OpenBLAS calls of fixed shapes,
// Winograd and packed-GEMM weight gradients, flat loops over stride-phased padded planes for
// depthwise convolutions, lane sums for the bias.
#include "kernels/conv_backward.h"

#include <algorithm>
#include <cstdint>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "kernels/conv_depth.h"
#include "kernels/conv_internal.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/packed_gemm.h"
#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

// Floats of one scratch region (an im2col tile of channel_block·kernel taps × tile_pixels).
constexpr int64_t kScratchFloats = int64_t{1} << 17;
// A GEMM task covers at least this many rows of the im2col matrix (input channel × tap), and a
// group splits into at most kMaxChannelBlocks tasks.
constexpr int64_t kMinBlockRows = 64;
constexpr int64_t kMaxChannelBlocks = 16;
constexpr int64_t kMinTilePixels = 64;
// Output values per parallel chunk in the direct loops.
constexpr int64_t kTaskElements = int64_t{1} << 14;
// Winograd dw: the transformed tiles of a chunk (16 values per tile and channel, input and output
// channels) take at most this many floats (4 MiB), and a chunk is at least kMinChunkTiles tiles.
constexpr int64_t kWinogradChunkFloats = int64_t{1} << 20;
constexpr int64_t kMinChunkTiles = 32;
// Both channel counts at least this: below, the 16 GEMMs are too small to pay for the transforms.
constexpr int64_t kWinogradMinChannels = 16;
// Packed dw: a task's packed chunk of output pixels (dY's rows and the unrolled input's columns)
// takes at most this many floats (256 KiB), and a chunk is kMinChunkPixels to kMaxChunkPixels
// pixels; the images' own dw, all held at once, at most kPackedDwMaxFloats (16 MiB; past it, tasks
// of output channels walk every image instead).
constexpr int64_t kPackedDwChunkFloats = int64_t{1} << 16;
constexpr int64_t kPackedDwMaxFloats = int64_t{1} << 22;
constexpr int64_t kMinChunkPixels = 64;
constexpr int64_t kMaxChunkPixels = 4096;

using conv_detail::ceil_div;
using conv_detail::round_up;
using conv_detail::valid_range;

struct Sizes {
  int64_t cin_g, cout_g, taps, pixels, in_plane, k;  // k: columns of a group's filter matrix
};

Sizes sizes_of(const ConvGeometry& g) {
  Sizes s;
  s.cin_g = g.in_channels / g.group;
  s.cout_g = g.out_channels / g.group;
  s.taps = g.kernel_h * g.kernel_w;
  s.pixels = g.out_h * g.out_w;
  s.in_plane = g.in_h * g.in_w;
  s.k = s.cin_g * s.taps;
  return s;
}

// Adds col (laid out as conv_detail::im2col_tile's) into the `channels` planes of dx, taps in (c,
// kh, kw) order and pixels in order.
void col2im_tile_add(const ConvGeometry& g, const float* col, int64_t channels, int64_t p0,
                     int64_t count, float* dx) {
  const int64_t in_plane = g.in_h * g.in_w;
  for (int64_t c = 0; c < channels; ++c) {
    float* plane = dx + c * in_plane;
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const float* row = col + ((c * g.kernel_h + kh) * g.kernel_w + kw) * count;
        const int64_t offset = kw * g.dilation_w - g.pad_left;
        int64_t lo_all, hi_all;
        valid_range(0, g.out_w, g.stride_w, offset, g.in_w, lo_all, hi_all);
        int64_t p = p0;
        while (p < p0 + count) {
          const int64_t oh = p / g.out_w;
          const int64_t ow0 = p % g.out_w;
          const int64_t ow1 = std::min(g.out_w, ow0 + (p0 + count - p));
          const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
          if (ih >= 0 && ih < g.in_h) {
            const float* src = row + (p - p0) - ow0;
            float* dst = plane + ih * g.in_w + offset;
            const int64_t lo = std::clamp(lo_all, ow0, ow1);
            const int64_t hi = std::clamp(hi_all, lo, ow1);
            const int64_t s = g.stride_w;
            if (s == 1) {
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += src[ow];
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow * s] += src[ow];
            }
          }
          p += ow1 - ow0;
        }
      }
    }
  }
}

// Depthwise planes split by stride phase and zero-padded, so that every kernel tap is one flat
// shift. Padded position (r, c) = (ih + pad_top, iw + pad_left) lies in phase plane
// (r mod stride_h, c mod stride_w) at row r div stride_h and column c div stride_w; a phase
// plane has hq rows of wq and `tail` zeros after them, an output plane is out_h rows of wq (zero
// past out_w). Tap (kh, kw) reads phase ((kh·dh) mod sh, (kw·dw) mod sw) and pairs output
// element i with its element i + (kh·dh div sh)·wq + kw·dw div sw, so each tap's sum or scatter
// is one contiguous, vectorised loop over out_h·wq elements.
struct PaddedPlanes {
  int64_t sh = 1, sw = 1, hq = 0, wq = 0, tail = 0;
  int64_t phase_floats() const { return hq * wq + tail; }
  int64_t input_floats() const { return sh * sw * phase_floats(); }
};

PaddedPlanes padded_planes(const ConvGeometry& g) {
  PaddedPlanes p;
  p.sh = g.stride_h;
  p.sw = g.stride_w;
  p.hq = g.out_h + (g.kernel_h - 1) * g.dilation_h / p.sh;
  p.tail = (g.kernel_w - 1) * g.dilation_w / p.sw;
  p.wq = g.out_w + p.tail;
  return p;
}

// Offset of tap (kh, kw) in the phase planes: its phase plane's start plus the flat shift.
int64_t tap_offset(const ConvGeometry& g, const PaddedPlanes& p, int64_t kh, int64_t kw) {
  const int64_t rh = kh * g.dilation_h, rw = kw * g.dilation_w;
  return ((rh % p.sh) * p.sw + rw % p.sw) * p.phase_floats() + rh / p.sh * p.wq + rw / p.sw;
}

// Scratch floats of one task: the phase planes of each input slice, a padded output plane, lanes
// per tap (a 2-D convolution: one slice, one depth tap).
int64_t padded_slot_floats(const ConvGeometry& g, const ConvDepth& depth) {
  const PaddedPlanes p = padded_planes(g);
  return depth.in * p.input_floats() + g.out_h * p.wq +
         depth.kernel * g.kernel_h * g.kernel_w * kSumLanes;
}

void pad_input_plane(const ConvGeometry& g, const PaddedPlanes& p, const float* x, float* xp) {
  for (int64_t a = 0; a < p.sh; ++a) {
    for (int64_t b = 0; b < p.sw; ++b) {
      float* phase = xp + (a * p.sw + b) * p.phase_floats();
      int64_t lo, hi;  // columns c whose input column c·sw + b − pad_left is inside
      valid_range(0, p.wq, p.sw, b - g.pad_left, g.in_w, lo, hi);
      for (int64_t q = 0; q < p.hq; ++q) {
        float* row = phase + q * p.wq;
        const int64_t ih = q * p.sh + a - g.pad_top;
        if (ih < 0 || ih >= g.in_h) {
          std::fill_n(row, p.wq, 0.0f);
          continue;
        }
        const float* src = x + ih * g.in_w + b - g.pad_left;
        std::fill(row, row + lo, 0.0f);
        for (int64_t c = lo; c < hi; ++c) row[c] = src[c * p.sw];
        std::fill(row + hi, row + p.wq, 0.0f);
      }
      std::fill_n(phase + p.hq * p.wq, p.tail, 0.0f);
    }
  }
}

void pad_output_plane(const ConvGeometry& g, const PaddedPlanes& p, const float* dy, float* dyp) {
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    std::copy_n(dy + oh * g.out_w, g.out_w, dyp + oh * p.wq);
    std::fill(dyp + oh * p.wq + g.out_w, dyp + (oh + 1) * p.wq, 0.0f);
  }
}

// dw of output channel co: per tap (kd, kh, kw), lanes over images in order (and within an
// image, output slices in order), then combined.
void padded_depthwise_weight_task(const ConvGeometry& g, const ConvDepth& depth, int64_t co,
                                  const float* x, const float* dy, float* dw, float* scratch,
                                  GradMode write) {
  const PaddedPlanes p = padded_planes(g);
  const int64_t mult = g.out_channels / g.group;
  const int64_t ci = co / mult;
  const int64_t plane_taps = g.kernel_h * g.kernel_w;
  const int64_t taps = depth.kernel * plane_taps;
  const int64_t n_flat = g.out_h * p.wq;
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t out_plane = g.out_h * g.out_w;
  float* xp = scratch;
  float* dyp = xp + depth.in * p.input_floats();
  float* lanes = dyp + n_flat;
  std::fill_n(lanes, taps * kSumLanes, 0.0f);
  for (int64_t n = 0; n < g.batch; ++n) {
    const float* xv = x + (n * g.in_channels + ci) * depth.in * in_plane;
    for (int64_t slice = 0; slice < depth.in; ++slice) {
      pad_input_plane(g, p, xv + slice * in_plane, xp + slice * p.input_floats());
    }
    for (int64_t d = 0; d < depth.out; ++d) {
      pad_output_plane(g, p, dy + ((n * g.out_channels + co) * depth.out + d) * out_plane, dyp);
      for (int64_t t = 0; t < depth.kernel; ++t) {
        const int64_t slice = depth_source_slice(depth, d, t);
        if (slice < 0) continue;
        const float* xs = xp + slice * p.input_floats();
        for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
          for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
            lane_dot_add(lanes + (t * plane_taps + kh * g.kernel_w + kw) * kSumLanes, dyp,
                         xs + tap_offset(g, p, kh, kw), 1, n_flat);
          }
        }
      }
    }
  }
  for (int64_t t = 0; t < taps; ++t) {
    const float sum = lane_combine(lanes + t * kSumLanes);
    float& out = dw[co * taps + t];
    out = write == GradMode::kAccumulate ? out + sum : sum;
  }
}

// dx of one input volume (image n, channel ci): the output channels of its group in order, their
// output slices in order, each depth tap's plane taps one flat axpy into the phase planes of the
// slice it reads, then the input positions gathered out of them.
void padded_depthwise_input_task(const ConvGeometry& g, const ConvDepth& depth, int64_t volume,
                                 const float* w, const float* dy, float* dx, float* scratch,
                                 GradMode write) {
  const PaddedPlanes p = padded_planes(g);
  const int64_t mult = g.out_channels / g.group;
  const int64_t n = volume / g.in_channels;
  const int64_t ci = volume % g.in_channels;
  const int64_t plane_taps = g.kernel_h * g.kernel_w;
  const int64_t taps = depth.kernel * plane_taps;
  const int64_t n_flat = g.out_h * p.wq;
  const int64_t out_plane = g.out_h * g.out_w;
  float* dxp = scratch;
  float* dyp = dxp + depth.in * p.input_floats();
  std::fill_n(dxp, depth.in * p.input_floats(), 0.0f);
  for (int64_t m = 0; m < mult; ++m) {
    const int64_t co = ci * mult + m;
    for (int64_t d = 0; d < depth.out; ++d) {
      pad_output_plane(g, p, dy + ((n * g.out_channels + co) * depth.out + d) * out_plane, dyp);
      for (int64_t t = 0; t < depth.kernel; ++t) {
        const int64_t slice = depth_source_slice(depth, d, t);
        if (slice < 0) continue;
        float* dxs = dxp + slice * p.input_floats();
        for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
          for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
            const float wv = w[co * taps + t * plane_taps + kh * g.kernel_w + kw];
            float* dst = dxs + tap_offset(g, p, kh, kw);
            for (int64_t i = 0; i < n_flat; ++i) dst[i] += wv * dyp[i];
          }
        }
      }
    }
  }
  const int64_t in_plane = g.in_h * g.in_w;
  for (int64_t slice = 0; slice < depth.in; ++slice) {
    const float* dxs = dxp + slice * p.input_floats();
    float* out = dx + (volume * depth.in + slice) * in_plane;
    if (write == GradMode::kOverwrite) std::fill_n(out, in_plane, 0.0f);
    for (int64_t ih = 0; ih < g.in_h; ++ih) {
      const int64_t r = ih + g.pad_top;
      const int64_t q = r / p.sh;
      if (q >= p.hq) continue;  // below every window: no gradient
      float* row = out + ih * g.in_w;
      for (int64_t b = 0; b < p.sw; ++b) {
        // Input columns iw with (iw + pad_left) mod sw == b, at phase column (iw + pad_left) div
        // sw.
        const int64_t first = ((b - g.pad_left) % p.sw + p.sw) % p.sw;
        const int64_t c0 = (first + g.pad_left) / p.sw;
        const float* src = dxs + ((r % p.sh) * p.sw + b) * p.phase_floats() + q * p.wq;
        const int64_t count = std::min(ceil_div(g.in_w - first, p.sw), p.wq - c0);
        for (int64_t j = 0; j < count; ++j) row[first + j * p.sw] += src[c0 + j];
      }
    }
  }
}

// The depthwise tasks over a whole batch: dw per output channel, dx per input volume.
void depthwise_backward(const ConvGeometry& g, const ConvDepth& depth, int slots, const float* x,
                        const float* w, const float* dy, const ConvGradients& grads,
                        std::byte* workspace, GradMode write, bool dx) {
  const size_t slot_bytes =
      aligned_bytes(static_cast<size_t>(padded_slot_floats(g, depth)) * sizeof(float));
  if (grads.dw) {
    parallel_tasks_with_scratch(
        g.out_channels, slots, slot_bytes, workspace, [&](int64_t co, std::byte* scratch) {
          padded_depthwise_weight_task(g, depth, co, x, dy, grads.dw,
                                       reinterpret_cast<float*>(scratch), write);
        });
  }
  if (grads.dx && dx) {
    parallel_tasks_with_scratch(g.batch * g.in_channels, slots, slot_bytes, workspace,
                                [&](int64_t volume, std::byte* scratch) {
                                  padded_depthwise_input_task(g, depth, volume, w, dy, grads.dx,
                                                              reinterpret_cast<float*>(scratch),
                                                              write);
                                });
  }
}

// A block of input channels of a group: its first channel, its channels and its rows of the
// unrolled input (channels · taps).
struct BlockRows {
  int64_t c0, channels, rows;
};

BlockRows block_rows(const ConvBackwardPlan& plan, const Sizes& s, int64_t block) {
  const int64_t c0 = block * plan.channel_block;
  const int64_t channels = std::min(plan.channel_block, s.cin_g - c0);
  return {c0, channels, channels * s.taps};
}

// dw of one group's block of input channels: Σ over images in order, then pixel tiles in order,
// of dY[tile] · im2col(x)[block, tile]ᵀ.
void gemm_weight_gradient_task(const ConvBackwardPlan& plan, const Sizes& s, int64_t group,
                               int64_t block, const float* x, const float* dy, float* dw,
                               float* col, GradMode write) {
  const ConvGeometry& g = plan.geometry;
  const auto [c0, channels, rows] = block_rows(plan, s, block);
  float* out = dw + group * s.cout_g * s.k + c0 * s.taps;
  bool first = write == GradMode::kOverwrite;
  for (int64_t n = 0; n < g.batch; ++n) {
    const float* xb = x + (n * g.in_channels + group * s.cin_g + c0) * s.in_plane;
    const float* dyb = dy + (n * g.out_channels + group * s.cout_g) * s.pixels;
    for (int64_t p0 = 0; p0 < s.pixels; p0 += plan.tile_pixels) {
      const int64_t count = std::min(plan.tile_pixels, s.pixels - p0);
      const float* cols = xb + p0;
      int64_t ld = s.in_plane;
      if (!plan.direct) {
        conv_detail::im2col_tile(g, xb, channels, p0, count, col);
        cols = col;
        ld = count;
      }
      sgemm(Transpose::kNo, Transpose::kYes, s.cout_g, rows, count, 1.0f, dyb + p0, s.pixels, cols,
            ld, first ? 0.0f : 1.0f, out, s.k);
      first = false;
    }
  }
  if (first) {  // no image or no pixel: the gradient is zero
    for (int64_t r = 0; r < s.cout_g; ++r) std::fill_n(out + r * s.k, rows, 0.0f);
  }
}

// dx of one image's group's block of input channels: col2im of W[:, block]ᵀ · dY, pixel tiles
// in order (or, for direct convolutions, the product straight into dx).
void gemm_input_gradient_task(const ConvBackwardPlan& plan, const Sizes& s, int64_t n,
                              int64_t group, int64_t block, const float* w, const float* dy,
                              float* dx, float* col, GradMode write) {
  const ConvGeometry& g = plan.geometry;
  const auto [c0, channels, rows] = block_rows(plan, s, block);
  const float* wb = w + group * s.cout_g * s.k + c0 * s.taps;
  const float* dyb = dy + (n * g.out_channels + group * s.cout_g) * s.pixels;
  float* dxb = dx + (n * g.in_channels + group * s.cin_g + c0) * s.in_plane;
  if (plan.direct) {
    sgemm(Transpose::kYes, Transpose::kNo, rows, s.pixels, s.cout_g, 1.0f, wb, s.k, dyb, s.pixels,
          write == GradMode::kAccumulate ? 1.0f : 0.0f, dxb, s.in_plane);
    return;
  }
  if (write == GradMode::kOverwrite) std::fill_n(dxb, channels * s.in_plane, 0.0f);
  for (int64_t p0 = 0; p0 < s.pixels; p0 += plan.tile_pixels) {
    const int64_t count = std::min(plan.tile_pixels, s.pixels - p0);
    sgemm(Transpose::kYes, Transpose::kNo, rows, count, s.cout_g, 1.0f, wb, s.k, dyb + p0, s.pixels,
          0.0f, col, count);
    col2im_tile_add(g, col, channels, p0, count, dxb);
  }
}

// dx of one image's block of input channels as above, the products W[:, block]ᵀ · dY[tile] on the
// packed micro-kernel: `packed` holds the block's rows of Wᵀ (c, kh, kw) in panels of
// kPackedRows, each [out_channel][row] (pack_input_gradient_weights), and dY's rows are read in
// place. Each col value is one chain of multiply-adds over the output channels in order.
void packed_input_gradient_task(const ConvBackwardPlan& plan, const Sizes& s, int64_t n,
                                int64_t block, const float* packed, const float* dy, float* dx,
                                float* col, GradMode write) {
  const ConvGeometry& g = plan.geometry;
  const auto [c0, channels, rows] = block_rows(plan, s, block);
  const float* dyb = dy + n * g.out_channels * s.pixels;
  float* dxb = dx + (n * g.in_channels + c0) * s.in_plane;
  if (write == GradMode::kOverwrite) std::fill_n(dxb, channels * s.in_plane, 0.0f);
  for (int64_t p0 = 0; p0 < s.pixels; p0 += plan.tile_pixels) {
    const int64_t count = std::min(plan.tile_pixels, s.pixels - p0);
    for (int64_t r0 = 0; r0 < rows; r0 += kPackedRows) {
      const float* panel = packed + r0 * s.cout_g;
      for (int64_t j0 = 0; j0 < count; j0 += kPackedCols) {
        packed_gemm_tile(s.cout_g, panel, dyb + p0 + j0, s.pixels, std::min(kPackedRows, rows - r0),
                         std::min(kPackedCols, count - j0), nullptr, 0, col + r0 * count + j0,
                         count, nullptr);
      }
    }
    col2im_tile_add(g, col, channels, p0, count, dxb);
  }
}

// Floats of one channel block's packed rows of Wᵀ, and of all of them.
int64_t packed_block_floats(const ConvBackwardPlan& plan, const Sizes& s) {
  return round_up(plan.channel_block * s.taps, kPackedRows) * s.cout_g;
}

// Wᵀ of an ungrouped convolution for packed_input_gradient_task, block after block: row r of
// block b (w's column c0·taps + r) at packed[b·packed_block_floats + (r − r % R)·cout + co·R +
// r % R], rows past the block zero.
void pack_input_gradient_weights(const ConvBackwardPlan& plan, const Sizes& s, const float* w,
                                 float* packed) {
  const int64_t per_block = ceil_div(plan.channel_block * s.taps, kPackedRows);
  parallel_for(plan.channel_blocks * per_block, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t block = t / per_block;
      const int64_t r0 = t % per_block * kPackedRows;
      const auto [c0, channels, rows] = block_rows(plan, s, block);
      const int64_t valid = std::clamp<int64_t>(rows - r0, 0, kPackedRows);
      float* dst = packed + block * packed_block_floats(plan, s) + r0 * s.cout_g;
      for (int64_t co = 0; co < s.cout_g; ++co) {
        const float* src = w + co * s.k + c0 * s.taps + r0;
        for (int64_t r = 0; r < kPackedRows; ++r)
          dst[co * kPackedRows + r] = r < valid ? src[r] : 0;
      }
    }
  });
}

// Winograd dw, F(3×3, 2×2) ----------------------------------------------------------------------
// With the F(2×2, 3×3) matrices Bᵀ (4×4), G (4×3) and Aᵀ (2×4), a 3×3 correlation of a 4×4 patch
// x with a 2×2 tile e, dw[u][v] = Σ_ab e[a][b]·x[a+u][b+v], is Gᵀ [(A e Aᵀ) ⊙ (Bᵀ x B)] G.

bool winograd_dw_applies(const ConvGeometry& g) {
  return g.group == 1 && g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 1 && g.stride_w == 1 &&
         g.dilation_h == 1 && g.dilation_w == 1 && g.in_channels >= kWinogradMinChannels &&
         g.out_channels >= kWinogradMinChannels && g.out_h >= 2 && g.out_w >= 2;
}

struct DwTiles {
  int64_t rows, cols, per_image, total;
};

DwTiles dw_tiles(const ConvGeometry& g) {
  DwTiles t;
  t.rows = ceil_div(g.out_h, 2);
  t.cols = ceil_div(g.out_w, 2);
  t.per_image = t.rows * t.cols;
  t.total = g.batch * t.per_image;
  return t;
}

// A chunk's transformed tiles of one side (x: in_channels, dy: out_channels): point p of the
// chunk's tile t and channel c at data[(c / panel)·panel_stride + t·tile_stride +
// p·point_stride + c % panel]. x's side, and dy's without the packed GEMM, are per point the
// row-major matrix [tiles × channels] (one panel); with the packed GEMM, dy's side is its left
// operand: panels of kPackedRows output channels, a tile's 16 points side by side in each, so
// that a tile's values go to a few contiguous runs.
struct DwSide {
  float* data;
  int64_t channels, panel, panel_stride, tile_stride, point_stride;
};

DwSide dw_row_major_side(float* data, int64_t channels, int64_t cols) {
  return {data, channels, channels, 0, channels, cols * channels};
}

DwSide dw_packed_side(float* data, int64_t channels, int64_t cols) {
  static_assert(kInterleavedPanels == 16, "a tile has 16 transform points");
  constexpr int64_t step = kInterleavedPanels * kPackedRows;  // the 16 points of a tile
  return {data, channels, kPackedRows, step * cols, step, kPackedRows};
}

// Floats of either layout.
int64_t dw_side_floats(int64_t channels, int64_t panel, int64_t cols) {
  return 16 * ceil_div(channels, panel) * panel * cols;
}

// Where the packed GEMM is built, dy's side is in its packed layout; otherwise both are
// row-major for OpenBLAS.
int64_t dw_dy_panel(const ConvGeometry& g) {
  return packed_gemm_available() ? kPackedRows : g.out_channels;
}

// Floats of the transform-domain sums M[16][out_channels][in_channels], then of a chunk's two
// sides.
int64_t dw_sum_floats(const ConvGeometry& g) {
  return 16 * g.out_channels * g.in_channels;
}
int64_t dw_chunk_floats(const ConvGeometry& g, int64_t chunk) {
  return dw_side_floats(g.out_channels, dw_dy_panel(g), chunk) +
         dw_side_floats(g.in_channels, g.in_channels, chunk);
}

// The position of tile t (images in order, rows of tiles, tiles in a row): its image and the
// output pixel of its top-left corner.
struct DwTile {
  int64_t n, oy, ox;
};

DwTile dw_tile(const DwTiles& tiles, int64_t t) {
  const int64_t within = t % tiles.per_image;
  return {t / tiles.per_image, 2 * (within / tiles.cols), 2 * (within % tiles.cols)};
}

// Bᵀ·d of a 4-vector (stride s): d0 − d2, d1 + d2, d2 − d1, d1 − d3.
inline void input_transform_4(const float* d, int64_t s, float* out, int64_t os) {
  out[0] = d[0] - d[2 * s];
  out[os] = d[s] + d[2 * s];
  out[2 * os] = d[2 * s] - d[s];
  out[3 * os] = d[s] - d[3 * s];
}

// Calls fn(out, c0, channels) for each panel of a side: its channels [c0, c0 + channels) and
// where column col of them starts (channel c0 + i at out[i], point p at out[p·point_stride]).
template <class Fn>
void for_each_panel(const DwSide& side, int64_t col, Fn&& fn) {
  const int64_t panels = ceil_div(side.channels, side.panel);
  for (int64_t q = 0; q < panels; ++q) {
    fn(side.data + q * side.panel_stride + col * side.tile_stride, q * side.panel,
       std::min(side.panel, side.channels - q * side.panel));
  }
}

#ifdef __AVX512F__
// Lane i: i·plane, the offsets of 16 consecutive channels' planes.
inline __m512i plane_offsets(int64_t plane) {
  return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                            _mm512_set1_epi32(static_cast<int>(plane)));
}
#endif

// Writes tile t's Bᵀ x B (its 4×4 input patch x, zero outside the input) at column col of the x
// side, every input channel. With AVX-512, 16 channels at a time gathered from their planes.
void transform_dw_x(const ConvGeometry& g, const DwTile& tile, const float* x, const DwSide& side,
                    int64_t col) {
  const int64_t iy = tile.oy - g.pad_top, ix = tile.ox - g.pad_left;
  const int64_t in_plane = g.in_h * g.in_w;
  const float* image = x + tile.n * g.in_channels * in_plane;
  bool inside[4][4];
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      inside[i][j] = iy + i >= 0 && iy + i < g.in_h && ix + j >= 0 && ix + j < g.in_w;
    }
  }
  const int64_t ps = side.point_stride;
#ifdef __AVX512F__
  const __m512i lanes = plane_offsets(in_plane);
#endif
  for_each_panel(side, col, [&](float* out, int64_t c0, int64_t panel_channels) {
    int64_t s = 0;
#ifdef __AVX512F__
    for (; s < panel_channels; s += 16) {
      const __mmask16 mask = conv_detail::lane_mask(panel_channels - s);
      const float* planes = image + (c0 + s) * in_plane;
      __m512 d[4][4];
      for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
          d[i][j] = inside[i][j] ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, lanes,
                                                            planes + (iy + i) * g.in_w + ix + j, 4)
                                 : _mm512_setzero_ps();
        }
      }
      __m512 t[4][4];  // Bᵀ·d, column by column
      for (int j = 0; j < 4; ++j) {
        t[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
        t[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
        t[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
        t[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
      }
      for (int i = 0; i < 4; ++i) {  // (Bᵀ·d)·B, row by row
        float* o = out + s + 4 * i * ps;
        _mm512_mask_storeu_ps(o, mask, _mm512_sub_ps(t[i][0], t[i][2]));
        _mm512_mask_storeu_ps(o + ps, mask, _mm512_add_ps(t[i][1], t[i][2]));
        _mm512_mask_storeu_ps(o + 2 * ps, mask, _mm512_sub_ps(t[i][2], t[i][1]));
        _mm512_mask_storeu_ps(o + 3 * ps, mask, _mm512_sub_ps(t[i][1], t[i][3]));
      }
    }
#endif
    for (; s < panel_channels; ++s) {
      const float* plane = image + (c0 + s) * in_plane;
      float patch[16], rows[16];
      for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
          patch[i * 4 + j] = inside[i][j] ? plane[(iy + i) * g.in_w + ix + j] : 0.0f;
        }
      }
      for (int j = 0; j < 4; ++j) input_transform_4(patch + j, 4, rows + j, 4);
      for (int i = 0; i < 4; ++i) {
        input_transform_4(rows + i * 4, 1, out + s + 4 * i * ps, ps);
      }
    }
  });
}

// Writes tile t's A e Aᵀ (its 2×2 tile e of dy, zero past the output's edge) at column col of
// the dy side, every output channel; A = [1 0; 1 1; 1 −1; 0 −1], rows first: r_a = A·(e_a0,
// e_a1), then point 4i + k = (A·(r_0[k], r_1[k]))_i.
void transform_dw_dy(const ConvGeometry& g, const DwTile& tile, const float* dy, const DwSide& side,
                     int64_t col) {
  const int64_t out_plane = g.out_h * g.out_w;
  const float* image = dy + tile.n * g.out_channels * out_plane + tile.oy * g.out_w + tile.ox;
  const bool right = tile.ox + 1 < g.out_w, below = tile.oy + 1 < g.out_h;
  const int64_t ps = side.point_stride;
#ifdef __AVX512F__
  const __m512i lanes = plane_offsets(out_plane);
  const __m512 zero = _mm512_setzero_ps();
#endif
  for_each_panel(side, col, [&](float* out, int64_t c0, int64_t panel_channels) {
    int64_t s = 0;
#ifdef __AVX512F__
    for (; s < panel_channels; s += 16) {
      // Gathered lanes: the panel's channels; stored: the whole panel (rows past the last
      // channel zero).
      const __mmask16 mask = conv_detail::lane_mask(panel_channels - s);
      const __mmask16 store = conv_detail::lane_mask(side.panel - s);
      const float* planes = image + (c0 + s) * out_plane;
      const __m512 e00 = _mm512_mask_i32gather_ps(zero, mask, lanes, planes, 4);
      const __m512 e01 = right ? _mm512_mask_i32gather_ps(zero, mask, lanes, planes + 1, 4) : zero;
      const __m512 e10 =
          below ? _mm512_mask_i32gather_ps(zero, mask, lanes, planes + g.out_w, 4) : zero;
      const __m512 e11 = right && below
                             ? _mm512_mask_i32gather_ps(zero, mask, lanes, planes + g.out_w + 1, 4)
                             : zero;
      const __m512 r0[4] = {e00, _mm512_add_ps(e00, e01), _mm512_sub_ps(e00, e01),
                            _mm512_sub_ps(zero, e01)};
      const __m512 r1[4] = {e10, _mm512_add_ps(e10, e11), _mm512_sub_ps(e10, e11),
                            _mm512_sub_ps(zero, e11)};
      for (int k = 0; k < 4; ++k) {
        float* o = out + s + k * ps;
        _mm512_mask_storeu_ps(o, store, r0[k]);
        _mm512_mask_storeu_ps(o + 4 * ps, store, _mm512_add_ps(r0[k], r1[k]));
        _mm512_mask_storeu_ps(o + 8 * ps, store, _mm512_sub_ps(r0[k], r1[k]));
        _mm512_mask_storeu_ps(o + 12 * ps, store, _mm512_sub_ps(zero, r1[k]));
      }
    }
#endif
    for (; s < panel_channels; ++s) {
      const float* e = image + (c0 + s) * out_plane;
      const float e00 = e[0], e01 = right ? e[1] : 0.0f;
      const float e10 = below ? e[g.out_w] : 0.0f, e11 = right && below ? e[g.out_w + 1] : 0.0f;
      const float r0[4] = {e00, e00 + e01, e00 - e01, 0.0f - e01};
      const float r1[4] = {e10, e10 + e11, e10 - e11, 0.0f - e11};
      for (int k = 0; k < 4; ++k) {
        float* o = out + s + k * ps;
        o[0] = r0[k];
        o[4 * ps] = r0[k] + r1[k];
        o[8 * ps] = r0[k] - r1[k];
        o[12 * ps] = 0.0f - r1[k];
      }
    }
    for (; s < side.panel; ++s) {  // a packed panel's rows past the last channel
      for (int p = 0; p < 16; ++p) out[s + p * ps] = 0.0f;
    }
  });
}

// dw[co][ci] (or +=) = Gᵀ·M[·][co][ci]·G, Gᵀ = [1 ½ ½ 0; 0 ½ −½ 0; 0 ½ ½ 1].
void winograd_dw_output(const ConvGeometry& g, const float* m, float* dw, GradMode write) {
  const int64_t pairs = g.out_channels * g.in_channels;
  parallel_for(pairs, 256, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float s[16];
      for (int k = 0; k < 16; ++k) s[k] = m[k * pairs + p];
      float cols[12];  // s·G: 4 rows × 3
      for (int r = 0; r < 4; ++r) {
        const float* a = s + r * 4;
        cols[r * 3 + 0] = a[0] + 0.5f * (a[1] + a[2]);
        cols[r * 3 + 1] = 0.5f * (a[1] - a[2]);
        cols[r * 3 + 2] = 0.5f * (a[1] + a[2]) + a[3];
      }
      float* out = dw + p * 9;
      for (int k = 0; k < 3; ++k) {
        const float a0 = cols[k], a1 = cols[3 + k], a2 = cols[6 + k], a3 = cols[9 + k];
        const float w0 = a0 + 0.5f * (a1 + a2);
        const float w1 = 0.5f * (a1 - a2);
        const float w2 = 0.5f * (a1 + a2) + a3;
        if (write == GradMode::kAccumulate) {
          out[k] += w0;
          out[3 + k] += w1;
          out[6 + k] += w2;
        } else {
          out[k] = w0;
          out[3 + k] = w1;
          out[6 + k] = w2;
        }
      }
    }
  });
}

// Tiles transformed per task.
constexpr int64_t kDwTaskTiles = 16;

void winograd_dw(const ConvBackwardPlan& plan, const float* x, const float* dy, float* dw,
                 std::byte* workspace, GradMode write) {
  const ConvGeometry& g = plan.geometry;
  const DwTiles tiles = dw_tiles(g);
  const int64_t co = g.out_channels, ci = g.in_channels, pairs = co * ci;
  const bool packed = packed_gemm_available();  // dy's side in the layout dw_dy_panel gives
  float* m = reinterpret_cast<float*>(workspace);
  float* sides = m + dw_sum_floats(g);
  if (tiles.total == 0) std::fill_n(m, dw_sum_floats(g), 0.0f);
  for (int64_t first = 0; first < tiles.total; first += plan.dw_chunk_tiles) {
    const int64_t chunk = std::min(plan.dw_chunk_tiles, tiles.total - first);
    const DwSide u =
        packed ? dw_packed_side(sides, co, chunk) : dw_row_major_side(sides, co, chunk);
    const DwSide v = dw_row_major_side(sides + dw_side_floats(co, u.panel, chunk), ci, chunk);
    parallel_for(ceil_div(chunk, kDwTaskTiles), 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin * kDwTaskTiles; t < std::min(chunk, end * kDwTaskTiles); ++t) {
        const DwTile tile = dw_tile(tiles, first + t);
        transform_dw_x(g, tile, x, v, t);
        transform_dw_dy(g, tile, dy, u, t);
      }
    });
    // M_p += U_p · V_pᵀ over the chunk's tiles.
    if (!packed) {
      const float beta = first == 0 ? 0.0f : 1.0f;
      parallel_for(16, 1, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          sgemm(Transpose::kYes, Transpose::kNo, co, ci, chunk, 1.0f, u.data + p * u.point_stride,
                co, v.data + p * v.point_stride, ci, beta, m + p * pairs, ci);
        }
      });
      continue;
    }
    // Each sum one chain of fused multiply-adds over the tiles in order, carried from chunk to
    // chunk: the bits do not depend on the chunk size.
    const int64_t panels = ceil_div(co, kPackedRows);
    parallel_for(16 * panels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t p = task / panels, q = task % panels;
        const float* a = u.data + q * u.panel_stride + p * u.point_stride;
        const int64_t rows = std::min(kPackedRows, co - q * kPackedRows);
        for (int64_t c0 = 0; c0 < ci; c0 += kPackedCols) {
          float* out = m + p * pairs + q * kPackedRows * ci + c0;
          packed_gemm_tile_interleaved(chunk, a, v.data + p * v.point_stride + c0, ci, rows,
                                       std::min(kPackedCols, ci - c0), first == 0 ? nullptr : out,
                                       ci, out, ci);
        }
      }
    });
  }
  winograd_dw_output(g, m, dw, write);
}

// Packed dw -------------------------------------------------------------------------------------
// dw [out_channels × k] = dY · im2col(x)ᵀ over every output pixel of every image, on the packed
// micro-kernel: per chunk of pixels, dY's rows are packed into panels of kPackedRows output
// channels and the unrolled input into panels of kPackedCols rows (c, kh, kw), [pixel][row].
// Two ways to split it, fixed by the geometry:
// - a task per image (plan.dw_row_blocks 0): image n's dw_n = Σ over chunks of dw_chunk_pixels
//   pixels in order, every tile adding its chunk's sum (one chain of multiply-adds over the
//   chunk's pixels in order) to what it holds; the images' dw_n are then added in image order.
//   Its memory is a dw per image, so only while those fit in kPackedDwMaxFloats;
// - past that, plan.dw_row_blocks tasks of output-channel panels, each packing the whole
//   unrolled input of every chunk (images in order, a chunk may span images) and carrying each
//   of its outputs as one chain over all pixels in order: the bits do not depend on the number of
//   blocks or the chunk.

struct PackedDwSizes {
  int64_t k = 0;             // rows of the unrolled input: in_channels · taps
  int64_t row_panels = 0;    // of output channels
  int64_t block_panels = 0;  // of them, per task
  int64_t col_panels = 0;    // of unrolled-input rows
  int64_t slot_floats = 0;   // one task's packed dY and input chunks
  int64_t dw_floats = 0;
};

// row_blocks: 0 for a task per image (every row panel in each task).
PackedDwSizes packed_dw_sizes(const ConvGeometry& g, int64_t chunk, int64_t row_blocks) {
  PackedDwSizes z;
  z.k = g.in_channels * g.kernel_h * g.kernel_w;
  z.row_panels = ceil_div(g.out_channels, kPackedRows);
  z.block_panels = row_blocks > 0 ? ceil_div(z.row_panels, row_blocks) : z.row_panels;
  z.col_panels = ceil_div(z.k, kPackedCols);
  z.slot_floats = (z.block_panels * kPackedRows + z.col_panels * kPackedCols) * chunk;
  z.dw_floats = g.out_channels * z.k;
  return z;
}

size_t packed_dw_slot_bytes(const PackedDwSizes& z) {
  return aligned_bytes(static_cast<size_t>(z.slot_floats) * sizeof(float));
}

bool packed_dw_applies(const ConvGeometry& g) {
  // The input gathers index an image with 32-bit offsets.
  return packed_gemm_available() && g.group == 1 &&
         g.in_channels * g.in_h * g.in_w < (int64_t{1} << 31);
}

// Panel `panel` of the unrolled input of image x for output pixels p0 .. p0+count:
// out[j·kPackedCols + r] = x at row panel·kPackedCols + r = (c, kh, kw) and pixel p0 + j, zero
// in the padding and past the last row.
void pack_dw_input_panel(const ConvGeometry& g, const float* x, int64_t panel, int64_t p0,
                         int64_t count, float* out) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t k = g.in_channels * taps;
  const int64_t rows = std::min(kPackedCols, k - panel * kPackedCols);
  // Row r reads x[c][oh·sh − pad_top + kh·dh][ow·sw − pad_left + kw·dw]: at offsets[r] from the
  // pixel's corner oh·sh·in_w + ow·sw.
  int64_t kh_of[kPackedCols], kw_of[kPackedCols];
  int32_t offsets[kPackedCols];
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = panel * kPackedCols + r;
    const int64_t c = row / taps;
    kh_of[r] = row % taps / g.kernel_w;
    kw_of[r] = row % taps % g.kernel_w;
    offsets[r] =
        static_cast<int32_t>(c * g.in_h * g.in_w + (kh_of[r] * g.dilation_h - g.pad_top) * g.in_w +
                             kw_of[r] * g.dilation_w - g.pad_left);
  }
  for (int64_t r = rows; r < kPackedCols; ++r) offsets[r] = 0;
  // Output positions whose every tap lies inside the input.
  int64_t oh_lo = 0, oh_hi = 0, ow_lo = 0, ow_hi = 0;
  conv_detail::valid_range(0, g.out_h, g.stride_h, -g.pad_top,
                           g.in_h - (g.kernel_h - 1) * g.dilation_h, oh_lo, oh_hi);
  conv_detail::valid_range(0, g.out_w, g.stride_w, -g.pad_left,
                           g.in_w - (g.kernel_w - 1) * g.dilation_w, ow_lo, ow_hi);
#ifdef __AVX512F__
  const __mmask16 low = conv_detail::lane_mask(rows);
  const __mmask16 high = conv_detail::lane_mask(rows - 16);
  const __m512i off_low = _mm512_loadu_si512(offsets);
  const __m512i off_high = _mm512_loadu_si512(offsets + 16);
#endif
  for (int64_t j = 0; j < count; ++j) {
    const int64_t p = p0 + j;
    const int64_t oh = p / g.out_w;
    const int64_t ow = p % g.out_w;
    float* d = out + j * kPackedCols;
    const int64_t corner = oh * g.stride_h * g.in_w + ow * g.stride_w;
#ifdef __AVX512F__
    if (oh >= oh_lo && oh < oh_hi && ow >= ow_lo && ow < ow_hi) {
      _mm512_storeu_ps(d,
                       _mm512_mask_i32gather_ps(_mm512_setzero_ps(), low, off_low, x + corner, 4));
      _mm512_storeu_ps(
          d + 16, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), high, off_high, x + corner, 4));
      continue;
    }
#endif
    for (int64_t r = 0; r < kPackedCols; ++r) {
      const int64_t ih = oh * g.stride_h - g.pad_top + (r < rows ? kh_of[r] : 0) * g.dilation_h;
      const int64_t iw = ow * g.stride_w - g.pad_left + (r < rows ? kw_of[r] : 0) * g.dilation_w;
      const bool inside = r < rows && ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
      d[r] = inside ? x[corner + offsets[r]] : 0.0f;
    }
  }
}

// Packs output pixels q0 .. q0+count of the flattened (image, pixel) order of the chunk: dY's
// rows of row panels [rp0, rp1) into a (kPackedRows · count floats per panel) and the unrolled
// input's column panels into b (kPackedCols · count per panel).
void pack_dw_chunk(const ConvGeometry& g, const PackedDwSizes& z, const float* x, const float* dy,
                   int64_t q0, int64_t count, int64_t rp0, int64_t rp1, float* a, float* b) {
  const int64_t pixels = g.out_h * g.out_w;
  for (int64_t q = q0; q < q0 + count;) {
    const int64_t n = q / pixels, p0 = q % pixels;
    const int64_t run = std::min(pixels - p0, q0 + count - q);  // pixels of image n
    const int64_t at = q - q0;
    const float* dyn = dy + n * g.out_channels * pixels;
    for (int64_t rp = rp0; rp < rp1; ++rp) {
      pack_rows(dyn + rp * kPackedRows * pixels + p0, pixels,
                std::min(kPackedRows, g.out_channels - rp * kPackedRows), run,
                a + (rp - rp0) * kPackedRows * count + at * kPackedRows);
    }
    const float* xn = x + n * g.in_channels * g.in_h * g.in_w;
    for (int64_t cp = 0; cp < z.col_panels; ++cp) {
      pack_dw_input_panel(g, xn, cp, p0, run, b + cp * kPackedCols * count + at * kPackedCols);
    }
    q += run;
  }
}

void packed_dw(const ConvBackwardPlan& plan, const float* x, const float* dy, float* dw,
               std::byte* workspace, GradMode write) {
  const ConvGeometry& g = plan.geometry;
  const int64_t chunk = plan.dw_chunk_pixels;
  const PackedDwSizes z = packed_dw_sizes(g, chunk, plan.dw_row_blocks);
  const int64_t pixels = g.out_h * g.out_w;
  if (plan.dw_row_blocks > 0) {
    const int64_t total = g.batch * pixels;
    if (total == 0 && write == GradMode::kOverwrite) std::fill_n(dw, z.dw_floats, 0.0f);
    parallel_tasks_with_scratch(
        plan.dw_row_blocks, plan.slots, packed_dw_slot_bytes(z), workspace,
        [&](int64_t block, std::byte* scratch) {
          const int64_t rp0 = block * z.block_panels;
          const int64_t rp1 = std::min(z.row_panels, rp0 + z.block_panels);
          float* a = reinterpret_cast<float*>(scratch);
          float* b = a + z.block_panels * kPackedRows * chunk;
          for (int64_t q0 = 0; q0 < total; q0 += chunk) {
            const int64_t count = std::min(chunk, total - q0);
            pack_dw_chunk(g, z, x, dy, q0, count, rp0, rp1, a, b);
            const bool start = q0 == 0 && write == GradMode::kOverwrite;
            for (int64_t rp = rp0; rp < rp1; ++rp) {
              for (int64_t cp = 0; cp < z.col_panels; ++cp) {
                float* out = dw + rp * kPackedRows * z.k + cp * kPackedCols;
                packed_gemm_tile(count, a + (rp - rp0) * kPackedRows * count,
                                 b + cp * kPackedCols * count, kPackedCols,
                                 std::min(kPackedRows, g.out_channels - rp * kPackedRows),
                                 std::min(kPackedCols, z.k - cp * kPackedCols),
                                 start ? nullptr : out, z.k, out, z.k, nullptr);
              }
            }
          }
        });
    return;
  }
  float* partial = reinterpret_cast<float*>(workspace);  // [batch][out_channels × k]
  std::byte* slots =
      workspace + aligned_bytes(static_cast<size_t>(g.batch * z.dw_floats) * sizeof(float));
  parallel_tasks_with_scratch(
      g.batch, plan.slots, packed_dw_slot_bytes(z), slots, [&](int64_t n, std::byte* scratch) {
        float* a = reinterpret_cast<float*>(scratch);
        float* b = a + z.row_panels * kPackedRows * chunk;
        float* dwn = partial + n * z.dw_floats;
        for (int64_t p0 = 0; p0 < pixels; p0 += chunk) {
          const int64_t count = std::min(chunk, pixels - p0);
          pack_dw_chunk(g, z, x, dy, n * pixels + p0, count, 0, z.row_panels, a, b);
          for (int64_t rp = 0; rp < z.row_panels; ++rp) {
            for (int64_t cp = 0; cp < z.col_panels; ++cp) {
              float* out = dwn + rp * kPackedRows * z.k + cp * kPackedCols;
              packed_gemm_tile_add(count, a + rp * kPackedRows * count,
                                   b + cp * kPackedCols * count, kPackedCols,
                                   std::min(kPackedRows, g.out_channels - rp * kPackedRows),
                                   std::min(kPackedCols, z.k - cp * kPackedCols),
                                   p0 == 0 ? nullptr : out, z.k, out, z.k);
            }
          }
        }
        if (pixels == 0) std::fill_n(dwn, z.dw_floats, 0.0f);
      });
  // dw (+)= Σ_n dw_n, images in order.
  parallel_for(z.dw_floats, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float sum = write == GradMode::kAccumulate ? dw[i] : 0.0f;
      for (int64_t n = 0; n < g.batch; ++n) sum += partial[n * z.dw_floats + i];
      dw[i] = sum;
    }
  });
}

size_t packed_dw_workspace_bytes(const ConvBackwardPlan& plan) {
  const PackedDwSizes z = packed_dw_sizes(plan.geometry, plan.dw_chunk_pixels, plan.dw_row_blocks);
  const size_t partials =
      plan.dw_row_blocks > 0
          ? 0
          : aligned_bytes(static_cast<size_t>(plan.geometry.batch * z.dw_floats) * sizeof(float));
  return partials + packed_dw_slot_bytes(z) * static_cast<size_t>(plan.slots);
}

// The convolution whose output is dx: dy convolved with w transposed (input and output channels
// swapped) and flipped, stride 1, each side padded by dilation·(kernel − 1) − pad.
bool transposed_geometry(const ConvGeometry& g, ConvGeometry& t) {
  const int64_t reach_h = g.dilation_h * (g.kernel_h - 1);
  const int64_t reach_w = g.dilation_w * (g.kernel_w - 1);
  // Ungrouped, or depthwise with one output channel per input channel (the same groups then).
  const bool depthwise_one = g.group == g.in_channels && g.group == g.out_channels;
  if ((g.group != 1 && !depthwise_one) || g.stride_h != 1 || g.stride_w != 1 ||
      g.pad_top > reach_h || g.pad_left > reach_w) {
    return false;
  }
  t = g;
  t.in_channels = g.out_channels;
  t.in_h = g.out_h;
  t.in_w = g.out_w;
  t.out_channels = g.in_channels;
  t.out_h = g.in_h;
  t.out_w = g.in_w;
  t.pad_top = reach_h - g.pad_top;
  t.pad_left = reach_w - g.pad_left;
  return true;
}

size_t flipped_weight_bytes(const ConvGeometry& g) {
  return aligned_bytes(
      static_cast<size_t>(g.in_channels * (g.out_channels / g.group) * g.kernel_h * g.kernel_w) *
      sizeof(float));
}

// wt[ci, co, kh, kw] = w[co, ci, kernel_h − 1 − kh, kernel_w − 1 − kw]; depthwise (a channel
// per group), wt[c, 0] = w[c, 0] flipped.
void flip_weights(const ConvGeometry& g, const float* w, float* wt) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  if (g.group > 1) {
    for (int64_t c = 0; c < g.out_channels; ++c) {
      for (int64_t t = 0; t < taps; ++t) wt[c * taps + t] = w[c * taps + taps - 1 - t];
    }
    return;
  }
  parallel_for(g.in_channels, std::max<int64_t>(1, kTaskElements / (g.out_channels * taps)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t ci = begin; ci < end; ++ci) {
                   for (int64_t co = 0; co < g.out_channels; ++co) {
                     const float* src = w + (co * g.in_channels + ci) * taps;
                     float* dst = wt + (ci * g.out_channels + co) * taps;
                     for (int64_t t = 0; t < taps; ++t) dst[t] = src[taps - 1 - t];
                   }
                 }
               });
}

// dx as conv2d(dy, w transposed and flipped) with plan.dx_plan: the flipped weights, then the
// convolution's workspace.
size_t dx_as_conv_workspace_bytes(const ConvBackwardPlan& plan) {
  return flipped_weight_bytes(plan.geometry) +
         conv_workspace_bytes(plan.dx_plan, ConvWeightForm::kRaw);
}

void dx_as_conv(const ConvBackwardPlan& plan, const float* w, const float* dy, float* dx,
                std::byte* workspace) {
  float* flipped = reinterpret_cast<float*>(workspace);
  flip_weights(plan.geometry, w, flipped);
  conv2d(plan.dx_plan, dy, flipped, nullptr, dx, workspace + flipped_weight_bytes(plan.geometry));
}

}  // namespace

ConvBackwardPlan plan_conv_backward(const ConvGeometry& geometry, int threads) {
  ConvBackwardPlan plan;
  plan.geometry = geometry;
  const ConvGeometry& g = geometry;
  const Sizes s = sizes_of(g);
  plan.slots = std::max(threads, 1);
  plan.depthwise = s.cin_g == 1 && g.group > 1;
  ConvGeometry transposed;
  if (plan.depthwise) {
    // dx of a stride-1 depthwise convolution with one output channel per input channel is
    // itself one: dy convolved with the flipped filters, on the forward's kernel.
    if (transposed_geometry(g, transposed)) {
      plan.dx_as_conv = true;
      plan.dx_plan = plan_conv(transposed, plan.slots);
    }
    return plan;
  }
  if (packed_gemm_available() && transposed_geometry(g, transposed)) {
    plan.dx_as_conv = true;
    plan.dx_plan = plan_conv(transposed, plan.slots);
  }
  if (winograd_dw_applies(g)) {
    plan.winograd_dw = true;
    // At least kMinChunkTiles, at most every tile (fewer than kMinChunkTiles on small planes).
    plan.dw_chunk_tiles = std::min(
        std::max(kWinogradChunkFloats / (16 * (g.in_channels + g.out_channels)), kMinChunkTiles),
        std::max<int64_t>(dw_tiles(g).total, 1));
  } else if (packed_dw_applies(g)) {
    plan.packed_dw = true;
    const PackedDwSizes z = packed_dw_sizes(g, 1, 0);
    int64_t pixels = g.out_h * g.out_w;  // a chunk's most: an image's, or with blocks all
    if (g.batch * z.dw_floats > kPackedDwMaxFloats) {
      plan.dw_row_blocks = std::min<int64_t>(z.row_panels, plan.slots);
      pixels *= g.batch;
    }
    // At least kMinChunkPixels, at most kMaxChunkPixels and the pixels there are.
    plan.dw_chunk_pixels = std::min(
        std::max(kPackedDwChunkFloats / packed_dw_sizes(g, 1, plan.dw_row_blocks).slot_floats,
                 kMinChunkPixels),
        std::max<int64_t>(1, std::min(kMaxChunkPixels, pixels)));
  }
  plan.direct = g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 &&
                g.pad_top == 0 && g.pad_left == 0 && g.out_h == g.in_h && g.out_w == g.in_w;
  const int64_t cin_g = std::max<int64_t>(1, s.cin_g);
  const int64_t taps = std::max<int64_t>(1, s.taps);
  plan.channel_block =
      std::clamp(std::max(ceil_div(cin_g, kMaxChannelBlocks), ceil_div(kMinBlockRows, taps)),
                 int64_t{1}, cin_g);
  plan.channel_blocks = ceil_div(cin_g, plan.channel_block);
  plan.packed_dx = packed_gemm_available() && g.group == 1 && !plan.direct;
  const int64_t pixels = std::max<int64_t>(1, s.pixels);
  if (plan.direct) {
    plan.tile_pixels = pixels;
  } else {
    const int64_t fit = kScratchFloats / (plan.channel_block * taps) / 16 * 16;
    plan.tile_pixels = std::min(pixels, std::max(kMinTilePixels, fit));
  }
  return plan;
}

size_t conv_backward_workspace_bytes(const ConvBackwardPlan& plan) {
  if (plan.depthwise) {
    const size_t padded =
        aligned_bytes(static_cast<size_t>(padded_slot_floats(plan.geometry, ConvDepth{})) *
                      sizeof(float)) *
        static_cast<size_t>(plan.slots);
    if (!plan.dx_as_conv) return padded;
    return std::max(padded, dx_as_conv_workspace_bytes(plan));
  }
  const Sizes s = sizes_of(plan.geometry);
  const size_t gemm_bytes =
      plan.direct
          ? 0
          : aligned_bytes(static_cast<size_t>(plan.channel_block * s.taps * plan.tile_pixels) *
                          sizeof(float)) *
                static_cast<size_t>(plan.slots);
  size_t winograd_bytes =
      plan.winograd_dw ? static_cast<size_t>(dw_sum_floats(plan.geometry) +
                                             dw_chunk_floats(plan.geometry, plan.dw_chunk_tiles)) *
                             sizeof(float)
                       : 0;
  if (plan.packed_dw) winograd_bytes = packed_dw_workspace_bytes(plan);
  size_t dx_bytes = gemm_bytes;
  if (plan.packed_dx) {
    dx_bytes += aligned_bytes(static_cast<size_t>(plan.channel_blocks) *
                              packed_block_floats(plan, s) * sizeof(float));
  }
  if (!plan.dx_as_conv) return std::max(dx_bytes, winograd_bytes);
  return std::max({dx_bytes, winograd_bytes, dx_as_conv_workspace_bytes(plan)});
}

void conv2d_backward(const ConvBackwardPlan& plan, const float* x, const float* w, const float* dy,
                     const ConvGradients& grads, std::byte* workspace, GradMode write) {
  const ConvGeometry& g = plan.geometry;
  const DenormalsFlushed flushed;
  if (grads.dbias) {
    conv_bias_gradient(dy, grads.dbias, g.batch, g.out_channels, g.out_h * g.out_w, write);
  }
  if (plan.depthwise) {
    // dx of a stride-1 depthwise convolution that overwrites it: the forward kernel (below).
    const bool dx_by_conv = plan.dx_as_conv && write == GradMode::kOverwrite;
    depthwise_backward(g, ConvDepth{}, plan.slots, x, w, dy, grads, workspace, write, !dx_by_conv);
    if (grads.dx && dx_by_conv) dx_as_conv(plan, w, dy, grads.dx, workspace);
    return;
  }
  const Sizes s = sizes_of(g);
  const size_t slot_bytes =
      plan.direct
          ? 0
          : aligned_bytes(static_cast<size_t>(plan.channel_block * s.taps * plan.tile_pixels) *
                          sizeof(float));
  const int64_t blocks = plan.channel_blocks;
  if (grads.dw && plan.winograd_dw) {
    winograd_dw(plan, x, dy, grads.dw, workspace, write);
  } else if (grads.dw && plan.packed_dw) {
    packed_dw(plan, x, dy, grads.dw, workspace, write);
  } else if (grads.dw) {
    parallel_tasks_with_scratch(
        g.group * blocks, plan.slots, slot_bytes, workspace, [&](int64_t task, std::byte* scratch) {
          gemm_weight_gradient_task(plan, s, task / blocks, task % blocks, x, dy, grads.dw,
                                    reinterpret_cast<float*>(scratch), write);
        });
  }
  if (grads.dx && plan.dx_as_conv && write == GradMode::kOverwrite) {
    dx_as_conv(plan, w, dy, grads.dx, workspace);
  } else if (grads.dx && plan.packed_dx) {
    float* packed = reinterpret_cast<float*>(workspace);
    pack_input_gradient_weights(plan, s, w, packed);
    std::byte* slots = workspace + aligned_bytes(static_cast<size_t>(blocks) *
                                                 packed_block_floats(plan, s) * sizeof(float));
    parallel_tasks_with_scratch(
        g.batch * blocks, plan.slots, slot_bytes, slots, [&](int64_t task, std::byte* scratch) {
          packed_input_gradient_task(plan, s, task / blocks, task % blocks,
                                     packed + task % blocks * packed_block_floats(plan, s), dy,
                                     grads.dx, reinterpret_cast<float*>(scratch), write);
        });
  } else if (grads.dx) {
    parallel_tasks_with_scratch(g.batch * g.group * blocks, plan.slots, slot_bytes, workspace,
                                [&](int64_t task, std::byte* scratch) {
                                  const int64_t n = task / (g.group * blocks);
                                  const int64_t rest = task % (g.group * blocks);
                                  gemm_input_gradient_task(
                                      plan, s, n, rest / blocks, rest % blocks, w, dy, grads.dx,
                                      reinterpret_cast<float*>(scratch), write);
                                });
  }
}

size_t conv3d_depthwise_backward_workspace_bytes(const ConvGeometry& plane, const ConvDepth& depth,
                                                 int threads) {
  return aligned_bytes(static_cast<size_t>(padded_slot_floats(plane, depth)) * sizeof(float)) *
         static_cast<size_t>(std::max(threads, 1));
}

void conv3d_depthwise_backward(const ConvGeometry& plane, const ConvDepth& depth, int threads,
                               const float* x, const float* w, const float* dy,
                               const ConvGradients& grads, std::byte* workspace, GradMode write) {
  const DenormalsFlushed flushed;
  if (grads.dbias) {
    conv_bias_gradient(dy, grads.dbias, plane.batch, plane.out_channels,
                       depth.out * plane.out_h * plane.out_w, write);
  }
  depthwise_backward(plane, depth, std::max(threads, 1), x, w, dy, grads, workspace, write, true);
}

void conv_bias_gradient(const float* dy, float* dbias, int64_t batch, int64_t channels,
                        int64_t pixels, GradMode write) {
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, pixels * batch));
  parallel_for(channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t co = begin; co < end; ++co) {
      float acc = write == GradMode::kAccumulate ? dbias[co] : 0.0f;
      for (int64_t n = 0; n < batch; ++n) {
        acc += lane_sum(dy + (n * channels + co) * pixels, pixels);
      }
      dbias[co] = acc;
    }
  });
}

}  // namespace qforge::kernels
