// Float32 grid sampling of NCHW planes (ONNX GridSample over two spatial axes, F.grid_sample):
// each output point reads the input at the normalized location its grid entry gives, (x, y) in
// [-1, 1] across the width and the height, bilinearly or at the nearest pixel, with zeros, the
// border or a reflection outside. Its backward gives the input's gradient and, bilinearly, the
// grid's.
//   x_pixel = (g + 1) / 2 · (W − 1)          with align_corners
//   x_pixel = ((g + 1) · W − 1) / 2          without (pixels as squares, -1 their left edge)
// Forward tasks own output rows; the input's gradient is scattered by one task per (image,
// channel) plane walking the outputs in order, and the grid's sums the channels in order: the bits
// do not depend on the thread count.
#pragma once

#include <cstdint>

namespace qforge::kernels {

enum class GridMode : uint8_t { kBilinear, kNearest };
enum class GridPadding : uint8_t { kZeros, kBorder, kReflection };

struct GridSampleDims {
  int64_t batch = 1, channels = 1;
  int64_t in_h = 1, in_w = 1;    // X [batch, channels, in_h, in_w]
  int64_t out_h = 1, out_w = 1;  // grid [batch, out_h, out_w, 2], Y [batch, channels, out_h, out_w]
  GridMode mode = GridMode::kBilinear;
  GridPadding padding = GridPadding::kZeros;
  bool align_corners = false;
};

// A grid value's location in pixels along an axis of `size` pixels, after the padding mode's
// clipping or reflection, and its derivative with respect to the grid value (0 where clipped).
// The kernels then sample NaN at a NaN location (as PyTorch does; its gradient to the grid is
// NaN, to the input nothing), and 0 at a location farther out than 10^9 pixels (an infinite or
// huge grid value with zeros padding; border padding clips it to the edge first, reflection of
// an infinite one is NaN).
struct GridCoordinate {
  float at = 0.0f;
  float slope = 0.0f;
};
GridCoordinate grid_coordinate(float g, int64_t size, GridPadding padding, bool align_corners);

void grid_sample(const GridSampleDims& dims, const float* x, const float* grid, float* y);

// dx (overwritten; null: not wanted) and, bilinear only, dgrid (overwritten; null: not wanted),
// from the forward's inputs and dy. A nearest sample's location does not move with the grid: its
// grid gradient is 0 and not computed here.
void grid_sample_backward(const GridSampleDims& dims, const float* x, const float* grid,
                          const float* dy, float* dx, float* dgrid);

}  // namespace qforge::kernels
