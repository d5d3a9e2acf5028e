// Softmax along one axis, with the row maximum subtracted before exponentiation.
#pragma once

#include <cstdint>

namespace qforge::kernels {

// x viewed as [outer, axis_size, inner]; softmax runs along axis_size.
struct SoftmaxDims {
  int64_t outer = 1;
  int64_t axis_size = 1;
  int64_t inner = 1;
};

void softmax(const SoftmaxDims& dims, const float* x, float* y);

// exp(x) for x <= 0 (what softmax feeds it), within about 1 ulp; 0 below the float range and
// NaN for NaN. Branch-free, so loops over it vectorise.
float exp_nonpositive(float x);

}  // namespace qforge::kernels
