// Module activations.
#include "runtime/ops/activation.h"

#include <cmath>
#include <limits>
#include <string>

#include "runtime/op_registry.h"

namespace qforge::runtime::ops {

kernels::UnaryOp unary_op_of(ActivationKind kind) {
  switch (kind) {
    case ActivationKind::kRelu:
      return kernels::UnaryOp::kRelu;
    case ActivationKind::kClip:
      return kernels::UnaryOp::kClip;
    case ActivationKind::kLeakyRelu:
      return kernels::UnaryOp::kLeakyRelu;
    case ActivationKind::kElu:
      return kernels::UnaryOp::kElu;
    case ActivationKind::kHardSwish:
      return kernels::UnaryOp::kHardSwish;
    case ActivationKind::kHardSigmoid:
      return kernels::UnaryOp::kHardSigmoid;
    case ActivationKind::kSigmoid:
      return kernels::UnaryOp::kSigmoid;
    case ActivationKind::kGelu:
      return kernels::UnaryOp::kGeluErf;
    case ActivationKind::kSilu:
      return kernels::UnaryOp::kSilu;
    default:
      break;
  }
  throw_internal("activation: no unary kernel for this kind");
}

ActivationSpec activation_of(const graph::Node& node) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  ActivationSpec s;
  if (!node.has_attr("activation")) return s;
  const std::string kind = node.attr_string("activation");
  if (kind == "Relu") {
    s.kind = ActivationKind::kRelu;
    s.params.min = 0;
  } else if (kind == "Clip") {
    s.kind = ActivationKind::kClip;
    s.params.min = node.attr_float("clip_min", -kInf);
    s.params.max = node.attr_float("clip_max", kInf);
  } else if (kind == "LeakyRelu") {
    s.kind = ActivationKind::kLeakyRelu;
    s.params.alpha = node.attr_float("alpha", 0.01f);
  } else if (kind == "Elu") {
    s.kind = ActivationKind::kElu;
    s.params.alpha = node.attr_float("alpha", 1.0f);
  } else if (kind == "Gelu") {
    s.kind = ActivationKind::kGelu;
  } else if (kind == "Silu") {
    s.kind = ActivationKind::kSilu;
  } else if (kind == "HardSwish") {
    s.kind = ActivationKind::kHardSwish;
  } else if (kind == "HardSigmoid") {
    s.kind = ActivationKind::kHardSigmoid;
    s.params.alpha = node.attr_float("alpha", 0.2f);
    s.params.beta = node.attr_float("beta", 0.5f);
  } else if (kind == "Sigmoid") {
    s.kind = ActivationKind::kSigmoid;
  } else {
    std::string got = "'";
    got.append(kind).append("'");
    fail_node(node,
              "activation Relu, Clip, LeakyRelu, Elu, Gelu, Silu, HardSwish, HardSigmoid or "
              "Sigmoid",
              got);
  }
  return s;
}

void apply_activation(const ActivationSpec& s, const float* x, float* y, int64_t n) {
  if (s.kind == ActivationKind::kNone) {
    if (x != y) std::copy(x, x + n, y);
    return;
  }
  // GELU and SiLU are the kernels' fused forms, vectorised there (kernels/elementwise.h).
  kernels::unary_f32(unary_op_of(s.kind), s.params, x, y, n);
}

}  // namespace qforge::runtime::ops
