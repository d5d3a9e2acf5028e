// Naive float64 references for the backward kernels of conv_backward.h, gemm_backward.h and
// pool_backward.h, with the float64 forwards the tests differentiate numerically. Each backward
// loops over the forward's definition and adds every output's gradient into the inputs it read
// (PyTorch's conventions); the gradient outputs are overwritten, a null one is skipped.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/conv.h"
#include "kernels/gemm.h"
#include "kernels/pool.h"

namespace qforge::kernels::reference {

// bias may be null.
void conv2d_f64(const ConvGeometry& g, const double* x, const double* w, const double* bias,
                double* y);
void conv2d_backward(const ConvGeometry& g, const double* x, const double* w, const double* dy,
                     double* dx, double* dw, double* dbias);

// y = alpha·op(a)·op(b) + beta·c, c broadcast as dims.bias says (null for kNone).
void gemm_f64(const GemmDims& dims, const double* a, const double* b, const double* c, double* y);
// dc has c's size: 1 (kScalar), n (kRow), m (kColumn) or m·n (kFull).
void gemm_backward(const GemmDims& dims, const double* a, const double* b, const double* dy,
                   double* da, double* db, double* dc);

// numpy matmul; y holds the broadcast batch of m × n products.
void matmul_f64(std::span<const int64_t> a_shape, const double* a, std::span<const int64_t> b_shape,
                const double* b, std::vector<double>& y);
void matmul_backward(std::span<const int64_t> a_shape, const double* a,
                     std::span<const int64_t> b_shape, const double* b, const double* dy,
                     double* da, double* db);

void max_pool2d_f64(const PoolGeometry& g, const double* x, double* y);
// The gradient of each output goes to the first maximum of its window in (kh, kw) order.
void max_pool2d_backward(const PoolGeometry& g, const double* x, const double* dy, double* dx);
void average_pool2d_f64(const PoolGeometry& g, PadCounting counting, const double* x, double* y);
void average_pool2d_backward(const PoolGeometry& g, PadCounting counting, const double* dy,
                             double* dx);

}  // namespace qforge::kernels::reference
