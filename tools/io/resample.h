// Image geometry as torchvision 0.14 applies it to PIL images: Resize (PIL's antialiased
// bilinear resampling, in its 8-bit fixed-point arithmetic, so that pixels agree exactly) and
// CenterCrop (zero padding when the crop is larger, Python's rounding of the offset).
#pragma once

#include <span>
#include <utility>

#include "tools/io/image.h"

namespace qforge::io {

// The (width, height) torchvision's Resize(size) gives an image of width x height. size {N}:
// the shorter side becomes N and the longer int(N * long / short), truncated; {H, W}: exactly.
std::pair<int, int> resized_size(int width, int height, std::span<const int> size);

// Resamples with PIL's Image.resize(..., BILINEAR): a triangle filter whose support widens with
// the downscale factor, weights normalised per output pixel and rounded to 22 fractional bits,
// applied horizontally then vertically with 8-bit rounding and clipping after each pass. Any
// channel count; an axis whose size does not change is not resampled.
Image resize_bilinear(const Image& image, int width, int height);

// torchvision's CenterCrop((height, width)): where the crop is larger than the image, the image
// is first padded with zeros (the extra pixel of an odd padding at the right or bottom); the
// crop's offset is round((size - crop) / 2) with ties to even, as Python rounds.
Image center_crop(const Image& image, int height, int width);

}  // namespace qforge::io
