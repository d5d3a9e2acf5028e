// Inputs must be finite: a NaN or Inf in a calibration batch would poison every observer.
#pragma once

#include <cstddef>
#include <string>

namespace qforge::io {

// Throws an Invalid error "<what>: element <i> is NaN (expected finite values)" (or +Inf/-Inf)
// for the first non-finite value of data[0, n).
void check_finite(const float* data, size_t n, const std::string& what);

}  // namespace qforge::io
