// Quantization parameter rules.
#include "quant/int8.h"

#include <limits>

namespace qforge::quant {

float scale_from_amax(float amax) {
  if (!(amax > 0)) return std::numeric_limits<float>::min();
  return amax / static_cast<float>(kQMax);
}

}  // namespace qforge::quant
