// Optimizers that update a training executor's parameters in place from their gradients.
#pragma once

#include <span>
#include <vector>

#include "runtime/training.h"

namespace qforge::quant {

// Stochastic gradient descent as torch.optim.SGD computes it, per element in float32:
//   g = grad + weight_decay·p
//   buf = g on the first step, then momentum·buf + (1 − dampening)·g
//   g = g + momentum·buf (Nesterov) or buf (momentum ≠ 0)
//   p = p − lr·g
struct SgdOptions {
  float lr = 0.01f;
  float momentum = 0.0f;
  float dampening = 0.0f;
  float weight_decay = 0.0f;
  bool nesterov = false;
};

class Sgd {
 public:
  explicit Sgd(SgdOptions options);
  // Updates every trainable parameter from its grad. The parameters must be the same, in the
  // same order, at every step (their momentum buffers are kept by position).
  void step(std::span<runtime::Parameter> parameters);

 private:
  SgdOptions options_;
  std::vector<kernels::Tensor> momentum_;  // per parameter; undefined until its first step
};

}  // namespace qforge::quant
