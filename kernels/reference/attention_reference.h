// Naive float64 scaled dot-product attention, forward and backward, for the finite-difference
// checks of the backward and as the oracle of kernels::attention_backward. The mask, when
// `layout` is not null, takes its values from mask_values at the layout's offsets (layout->data
// is ignored), so that it can be perturbed in double.
#pragma once

#include <cstdint>

#include "kernels/attention.h"

namespace qforge::kernels::reference {

void attention(const AttentionDims& dims, const double* q, const double* k, const double* v,
               const AttentionMask* layout, const double* mask_values, double* out);

// dq, dk, dv as q, k, v; dmask (when layout and dmask are not null) has the mask's elements,
// each the sum of dS over the scores it broadcasts to. Any output may be null.
void attention_backward(const AttentionDims& dims, const double* q, const double* k,
                        const double* v, const AttentionMask* layout, const double* mask_values,
                        const double* dout, double* dq, double* dk, double* dv, double* dmask,
                        int64_t mask_numel);

}  // namespace qforge::kernels::reference
