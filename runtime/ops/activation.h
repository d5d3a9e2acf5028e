// Activations named by a module's `activation` attribute (ConvBNAct, LinearAct, ActAdd, …):
// parsed once, applied in the operation order of the nodes the module replaced, so a module
// computes bit for bit what its lowering computes.
#pragma once

#include <cstdint>

#include "graph/ir.h"
#include "kernels/elementwise.h"

namespace qforge::runtime::ops {

enum class ActivationKind {
  kNone,
  kRelu,
  kClip,
  kLeakyRelu,
  kElu,
  kGelu,
  kSilu,
  kHardSwish,
  kHardSigmoid,
  kSigmoid
};

struct ActivationSpec {
  ActivationKind kind = ActivationKind::kNone;
  kernels::UnaryParams params;
};

// kNone when the node has no `activation` attribute; an Invalid error for an unknown one.
ActivationSpec activation_of(const graph::Node& node);

// Relu and Clip are a clamp range that a convolution's output pass can apply.
inline bool is_clamp(ActivationKind kind) {
  return kind == ActivationKind::kRelu || kind == ActivationKind::kClip;
}

// The element-wise kernel of an activation other than kNone.
kernels::UnaryOp unary_op_of(ActivationKind kind);

// y = act(x) over n elements (x may equal y); parallel over fixed chunks for large n.
void apply_activation(const ActivationSpec& spec, const float* x, float* y, int64_t n);

}  // namespace qforge::runtime::ops
