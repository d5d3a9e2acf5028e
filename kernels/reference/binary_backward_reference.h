// Naive float64 references for kernels/binary_backward.h: the forward of Add, Sub, Mul, Div,
// PRelu and Pow under numpy broadcasting, and its gradients, every output element's terms added
// into the input elements it read; and Max or Min of any number of inputs with PyTorch's tie rule.
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

// y = max (is_max) or min of the inputs broadcast together; a NaN input makes y NaN.
std::vector<double> extremum_f64(bool is_max, const std::vector<Shape>& shapes,
                                 const std::vector<const double*>& inputs);
// Per output element: the inputs equal to y share dy evenly, the others get 0, and every input
// gets dy where y is NaN. dx[i] (shapes[i]) is overwritten.
void extremum_backward(bool is_max, const std::vector<Shape>& shapes,
                       const std::vector<const double*>& inputs, const double* dy,
                       const std::vector<double*>& dx);

}  // namespace qforge::kernels::reference
