// Naive float64 references for kernels/resize.h and kernels/conv_transpose.h, each written from
// the ONNX operator definition (every output element computed from its coordinates), with the
// backward that adds each output's gradient into what it read.
#pragma once

#include <cstdint>

#include "kernels/conv_transpose.h"
#include "kernels/resize.h"

namespace qforge::kernels::reference {

// x [planes, in_h, in_w] -> y [planes, out_h, out_w]
void resize_f64(const ResizeGeometry& g, const double* x, double* y);
void resize_backward(const ResizeGeometry& g, const double* dy, double* dx);

// y[n, co, oh, ow] = bias[co] + Σ x[n, ci, ih, iw] · w[ci, co − group·C_out/group, kh, kw] over
// oh = ih·stride − pad + kh·dilation; bias may be null.
void conv_transpose2d_f64(const ConvTransposeGeometry& g, const double* x, const double* w,
                          const double* bias, double* y);
// Null gradient outputs are skipped.
void conv_transpose2d_backward(const ConvTransposeGeometry& g, const double* x, const double* w,
                               const double* dy, double* dx, double* dw, double* dbias);

}  // namespace qforge::kernels::reference
