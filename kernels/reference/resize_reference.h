// Naive float64 references for kernels/resize.h, kernels/grid_sample.h and
// kernels/conv_transpose.h, each written from the ONNX operator definition (every output element
// computed from its coordinates), with the backward that adds each output's gradient into what it
// read.
#pragma once

#include <cstdint>

#include "kernels/conv_transpose.h"
#include "kernels/grid_sample.h"
#include "kernels/resize.h"

namespace qforge::kernels::reference {

// x [planes, in_h, in_w] -> y [planes, out_h, out_w]
void resize_f64(const ResizeGeometry& g, const double* x, double* y);
void resize_backward(const ResizeGeometry& g, const double* dy, double* dx);

// F.grid_sample in float64: each output point's location unnormalized, reflected by folding it
// into one period (2·(W − 1) with align_corners, 2·W around -0.5 without) or clipped, then
// interpolated; y [batch, channels, out_h, out_w].
void grid_sample_f64(const GridSampleDims& d, const double* x, const double* grid, double* y);
// dx: each output's dy added into the pixels it read, with their weights.
void grid_sample_backward_dx(const GridSampleDims& d, const double* grid, const double* dy,
                             double* dx);

// y[n, co, oh, ow] = bias[co] + Σ x[n, ci, ih, iw] · w[ci, co − group·C_out/group, kh, kw] over
// oh = ih·stride − pad + kh·dilation; bias may be null.
void conv_transpose2d_f64(const ConvTransposeGeometry& g, const double* x, const double* w,
                          const double* bias, double* y);
// Null gradient outputs are skipped.
void conv_transpose2d_backward(const ConvTransposeGeometry& g, const double* x, const double* w,
                               const double* dy, double* dx, double* dw, double* dbias);

}  // namespace qforge::kernels::reference
