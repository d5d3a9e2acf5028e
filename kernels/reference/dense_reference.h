// Naive reference implementations of the dense kernels: plain loops over the definitions with
// double accumulation. They are the test oracle for kernels/{conv,gemm,norm,pool,softmax}.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/conv.h"
#include "kernels/gemm.h"
#include "kernels/pool.h"
#include "kernels/softmax.h"

namespace qforge::kernels::reference {

void conv2d(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y);

// y = alpha·op(a)·op(b) + beta·bias, bias broadcast as dims.bias says.
void gemm(const GemmDims& dims, const float* a, const float* b, const float* bias, float* y);

// numpy matmul; returns the output shape and fills y (resized).
std::vector<int64_t> matmul(std::span<const int64_t> a_shape, const float* a,
                            std::span<const int64_t> b_shape, const float* b,
                            std::vector<float>& y);

// x [batch, channels, inner]: (x - mean) / sqrt(var + epsilon) · gamma + beta.
void batch_norm(const float* x, int64_t batch, int64_t channels, int64_t inner, const float* gamma,
                const float* beta, const float* mean, const float* var, float epsilon, float* y);

void layer_norm(const float* x, int64_t rows, int64_t size, const float* scale, const float* bias,
                float epsilon, float* y, float* mean, float* inv_std_dev);

void softmax(const SoftmaxDims& dims, const float* x, float* y);

void max_pool2d(const PoolGeometry& g, const float* x, float* y, int64_t* indices,
                IndexOrder order);
void average_pool2d(const PoolGeometry& g, PadCounting counting, const float* x, float* y);

// Mean over `axes` of x with `shape`; y holds the kept axes in order.
void reduce_mean(std::span<const int64_t> shape, std::span<const int64_t> axes, const float* x,
                 float* y);

}  // namespace qforge::kernels::reference
