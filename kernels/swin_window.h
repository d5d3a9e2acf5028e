// Swin window partition and its inverse as row gathers: every output row of C floats comes from
// one input row (or is zero padding), found by index arithmetic, so the pad, the cyclic shift and
// the window reshuffle are one pass instead of a Pad, Slice/Concat and Reshape/Transpose chain.
#pragma once

#include <cstdint>

namespace qforge::kernels {

// An image [batch, height, width, channels] padded at the bottom and right to
// [batch, height + pad_h, width + pad_w, channels] (a multiple of the window in each direction),
// rolled by -shift (row y of the result is row (y + shift_h) mod padded_h of the padded image),
// and cut into windows [batch · windows, window_h · window_w, channels], windows row-major.
struct SwinWindowGeometry {
  int64_t batch = 1;
  int64_t height = 1;
  int64_t width = 1;
  int64_t channels = 1;
  int64_t window_h = 1;
  int64_t window_w = 1;
  int64_t shift_h = 0;  // in [0, padded_h)
  int64_t shift_w = 0;  // in [0, padded_w)
  int64_t pad_h = 0;
  int64_t pad_w = 0;

  int64_t padded_h() const { return height + pad_h; }
  int64_t padded_w() const { return width + pad_w; }
  int64_t windows_per_image() const { return (padded_h() / window_h) * (padded_w() / window_w); }
  int64_t window_rows() const { return batch * padded_h() * padded_w(); }  // B · nW · wh · ww
  int64_t image_rows() const { return batch * height * width; }            // B · H · W
};

// Throws an Invalid error naming the rule a geometry breaks (sizes positive, padded sizes
// multiples of the window, shifts inside the padded sizes).
void check_swin_window_geometry(const SwinWindowGeometry& g);

// The image row (b · H + y) · W + x that window row `row` copies, or -1 where it is padding.
int64_t swin_partition_source_row(const SwinWindowGeometry& g, int64_t row);
// The window row that image row `row` ((b · H + y) · W + x) of the reverse copies.
int64_t swin_reverse_source_row(const SwinWindowGeometry& g, int64_t row);

// image [B, H, W, C] -> windows [B · nW, wh · ww, C]; parallel over rows.
void swin_window_partition(const SwinWindowGeometry& g, const float* image, float* windows);
// windows [B · nW, wh · ww, C] -> image [B, H, W, C]: roll back by +shift and crop the padding.
void swin_window_reverse(const SwinWindowGeometry& g, const float* windows, float* image);

}  // namespace qforge::kernels
