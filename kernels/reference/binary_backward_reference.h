// Naive float64 references for kernels/binary_backward.h: the forward of Add, Sub, Mul and Div
// under numpy broadcasting, and its gradients, every output element's terms added into the
// input elements it read.
#pragma once

#include <vector>

#include "kernels/elementwise.h"
#include "kernels/tensor.h"

namespace qforge::kernels::reference {

void binary_f64(BinaryOp op, const Shape& a_shape, const double* a, const Shape& b_shape,
                const double* b, std::vector<double>& y);
// da and db (a's and b's shapes) are overwritten; a null one is skipped.
void binary_backward(BinaryOp op, const Shape& a_shape, const double* a, const Shape& b_shape,
                     const double* b, const double* dy, double* da, double* db);

}  // namespace qforge::kernels::reference
