// Float32 resizing of NCHW planes (ONNX Resize and Upsample over the two spatial axes): nearest
// with its four rounding rules, and bilinear, under the coordinate transforms torch and paddle
// export. Each output axis is planned once into a table of source indices and weights; running
// a plan allocates nothing.
//   forward:  y[n, c, oh, ow] = Σ_{taps} wh·ww·x[n, c, ih, iw]
//   backward: dx[n, c, ih, iw] = Σ over the outputs that read (ih, iw) of wh·ww·dy[n, c, oh, ow]
// Planes run in parallel, each by one task in a fixed order, so results are bit-identical for
// any thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/gradient.h"

namespace qforge::kernels {

enum class ResizeMode : uint8_t { kNearest, kLinear };

// ONNX coordinate_transformation_mode: where output coordinate x lands in the input.
enum class ResizeCoordinates : uint8_t {
  kHalfPixel,         // (x + 0.5) / scale − 0.5
  kPytorchHalfPixel,  // the same, but 0 when the output axis has one element
  kAlignCorners,      // x · (in − 1) / (out − 1), 0 when out is 1
  kAsymmetric,        // x / scale
};

// ONNX nearest_mode: how a fractional source coordinate becomes an index.
enum class NearestRounding : uint8_t { kRoundPreferFloor, kRoundPreferCeil, kFloor, kCeil };

struct ResizeGeometry {
  int64_t planes = 1;  // batch · channels
  int64_t in_h = 1;
  int64_t in_w = 1;
  int64_t out_h = 1;
  int64_t out_w = 1;
  // The scales the coordinate transform divides by: the Resize scales, or out / in (computed in
  // float, as ONNX Runtime does) when sizes were given.
  float scale_h = 1.0f;
  float scale_w = 1.0f;
  ResizeMode mode = ResizeMode::kNearest;
  ResizeCoordinates coordinates = ResizeCoordinates::kHalfPixel;
  NearestRounding rounding = NearestRounding::kRoundPreferFloor;
};

// Per output index of one axis: the two source indices and the weight of the second (nearest:
// both indices equal, weight 0).
struct ResizeAxis {
  std::vector<int64_t> lo;
  std::vector<int64_t> hi;
  std::vector<float> weight_hi;
};

struct ResizePlan {
  ResizeGeometry geometry;
  ResizeAxis h;
  ResizeAxis w;
};

// The source coordinate of output index `x` along an axis (in float, as the ONNX reference
// and ONNX Runtime compute it).
float resize_source_coordinate(ResizeCoordinates coordinates, int64_t x, float scale, int64_t in,
                               int64_t out);

ResizePlan plan_resize(const ResizeGeometry& geometry);
// x [planes, in_h, in_w] -> y [planes, out_h, out_w]
void resize(const ResizePlan& plan, const float* x, float* y);
// dy [planes, out_h, out_w] -> dx [planes, in_h, in_w]
void resize_backward(const ResizePlan& plan, const float* dy, float* dx,
                     GradMode write = GradMode::kOverwrite);

}  // namespace qforge::kernels
