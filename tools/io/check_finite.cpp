#include "tools/io/check_finite.h"

#include <cmath>

#include "kernels/error.h"

namespace qforge::io {

void check_finite(const float* data, size_t n, const std::string& what) {
  for (size_t i = 0; i < n; ++i) {
    float v = data[i];
    if (std::isfinite(v)) continue;
    const char* kind = std::isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf");
    throw_invalid(what + ": element " + std::to_string(i) + " is " + kind +
                  " (expected finite values)");
  }
}

}  // namespace qforge::io
