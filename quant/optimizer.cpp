// SGD's element-wise update, parallel over fixed chunks of each parameter.
#include "quant/optimizer.h"

#include "kernels/error.h"
#include "kernels/parallel.h"

namespace qforge::quant {

Sgd::Sgd(SgdOptions options) : options_(options) {
  if (!(options_.lr > 0) || options_.momentum < 0 || options_.weight_decay < 0 ||
      (options_.nesterov && (options_.momentum <= 0 || options_.dampening != 0))) {
    throw_invalid(
        "SGD: expected lr > 0, momentum >= 0, weight_decay >= 0, and Nesterov only "
        "with momentum and no dampening");
  }
}

void Sgd::step(std::span<runtime::Parameter> parameters) {
  if (momentum_.empty()) momentum_.resize(parameters.size());
  if (momentum_.size() != parameters.size()) {
    throw_internal("SGD: the parameter list changed between steps");
  }
  const SgdOptions o = options_;
  for (size_t i = 0; i < parameters.size(); ++i) {
    runtime::Parameter& p = parameters[i];
    if (!p.trainable()) continue;
    float* value = p.value.data<float>();
    const float* grad = p.grad.data<float>();
    const bool first = !momentum_[i].defined();
    if (o.momentum != 0 && first)
      momentum_[i] = kernels::Tensor(kernels::DType::kFloat32, p.value.shape());
    float* buf = o.momentum != 0 ? momentum_[i].data<float>() : nullptr;
    kernels::parallel_for(p.value.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        float g = grad[k];
        if (o.weight_decay != 0) g = g + o.weight_decay * value[k];
        if (buf) {
          buf[k] = first ? g : buf[k] * o.momentum + (1.0f - o.dampening) * g;
          g = o.nesterov ? g + o.momentum * buf[k] : buf[k];
        }
        value[k] = value[k] + (-o.lr) * g;
      }
    });
  }
}

}  // namespace qforge::quant
