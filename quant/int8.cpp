// Quantization parameter rules.
#include "quant/int8.h"

#include "kernels/fake_quant.h"

namespace qforge::quant {

float scale_from_amax(float amax) {
  return kernels::symmetric_scale(amax);
}

}  // namespace qforge::quant
