// Symmetric signed 8-bit quantization parameters (the rules of DESIGN.md, Quantization).
#pragma once

#include <cstdint>

namespace qforge::quant {

inline constexpr int kQMin = -128;
inline constexpr int kQMax = 127;

// scale = amax / 127, zero point 0. A zero amax gives the smallest positive scale ONNX allows
// to stay well defined.
float scale_from_amax(float amax);

}  // namespace qforge::quant
