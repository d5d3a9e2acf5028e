// How a backward kernel stores a gradient it computes.
#pragma once

namespace qforge::kernels {

// kOverwrite stores the gradient; kAccumulate adds it to what the output already holds, for a
// tensor read by several nodes whose gradients sum (fan-out) without a separate Add pass.
enum class GradMode { kOverwrite, kAccumulate };

// One gradient element stored as `write` says.
inline void store_gradient(float& out, float g, GradMode write) {
  if (write == GradMode::kOverwrite) {
    out = g;
  } else {
    out += g;
  }
}

}  // namespace qforge::kernels
