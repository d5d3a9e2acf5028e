// Optimizers that update a training executor's parameters in place from their gradients, and
// their state as named tensors, so that a run resumed from a checkpoint continues bit-identically.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>

#include "runtime/training.h"

namespace qforge::quant {

// Answers, for a parameter, whether weight decay skips it. An empty function: every trainable
// parameter decays. Asked at every step, so it must answer the same for a parameter each time.
using NoWeightDecay = std::function<bool(const runtime::Parameter&)>;

// The usual exclusion: tensors of rank 0 or 1, which in a convolutional or transformer network
// are the biases and the scales and shifts of BatchNorm and LayerNorm (γ, β).
bool is_vector_parameter(const runtime::Parameter& parameter);

// An optimizer's state by name: what a checkpoint stores (io::write_npz takes it as it is) and
// load_state restores. Keys are "<field>/<parameter name>", e.g. "exp_avg/conv1.weight", with
// the field names of PyTorch's optimizer state. Tensors are copies, not views of the optimizer.
using OptimizerState = std::map<std::string, kernels::Tensor>;

// What a training loop needs of any optimizer. State is kept by parameter name: a step may be
// given the parameters in any order, and a parameter without a gradient is left as it is.
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Updates every trainable parameter from its grad at the current learning rate.
  virtual void step(std::span<runtime::Parameter> parameters) = 0;
  // The learning rate of the steps that follow; a schedule (quant/lr_schedule.h) sets it before
  // each step. Invalid unless finite and >= 0.
  virtual void set_lr(double lr) = 0;
  virtual double lr() const = 0;
  virtual OptimizerState state() const = 0;
  // Replaces the whole state with `state` (a copy of what state() returned). Invalid when a key
  // or a tensor is not one this optimizer writes; a tensor whose shape is not its parameter's is
  // refused at the next step, naming the parameter.
  virtual void load_state(const OptimizerState& state) = 0;
};

// Stochastic gradient descent as torch.optim.SGD (1.13, single-tensor path) computes it, per
// element in float32, each line one rounding (fma: one rounding for a·b + c, as PyTorch's
// vectorized add with alpha):
//   g = fma(p, wd, grad)                                      (wd = 0 where excluded)
//   buf = g on the first step, then fma(g, 1 − dampening, buf·momentum)
//   g = fma(buf, momentum, g) (Nesterov) or buf (momentum ≠ 0)
//   p = fma(g, −lr, p)
// Hyperparameters are doubles, as Python's floats are: a scalar derived from them (1 −
// dampening) is computed in double and rounded to float once, as PyTorch does.
// State: "momentum_buffer/<name>" (float32, the parameter's shape), when momentum ≠ 0.
struct SgdOptions {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
  NoWeightDecay no_weight_decay;  // e.g. is_vector_parameter
};

class Sgd final : public Optimizer {
 public:
  explicit Sgd(SgdOptions options);
  void step(std::span<runtime::Parameter> parameters) override;
  void set_lr(double lr) override;
  double lr() const override { return options_.lr; }
  OptimizerState state() const override;
  void load_state(const OptimizerState& state) override;

 private:
  SgdOptions options_;
  std::map<std::string, kernels::Tensor> momentum_;  // by parameter name, from its first step
};

// AdamW as torch.optim.AdamW (1.13, single-tensor path, amsgrad and maximize off) computes it.
// Per parameter, t is its own step count (1 on its first step); the scalars are computed in
// double from the double hyperparameters and rounded to float where PyTorch's kernels do:
//   p = p · float(1 − lr·wd)                                  (skipped where excluded)
//   m = fma(grad, float(1 − β1), m·β1)
//   v = fma(grad·float(1 − β2), grad, v·β2)
//   p = p + (float(−lr / (1 − β1^t)) · m) / (sqrt(v) / float(sqrt(1 − β2^t)) + float(eps))
// State: "exp_avg/<name>", "exp_avg_sq/<name>" (float32, the parameter's shape) and
// "step/<name>" (int64 scalar).
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  NoWeightDecay no_weight_decay;  // e.g. is_vector_parameter
};

class AdamW final : public Optimizer {
 public:
  explicit AdamW(AdamWOptions options);
  void step(std::span<runtime::Parameter> parameters) override;
  void set_lr(double lr) override;
  double lr() const override { return options_.lr; }
  OptimizerState state() const override;
  void load_state(const OptimizerState& state) override;

 private:
  struct Moments {
    kernels::Tensor exp_avg;
    kernels::Tensor exp_avg_sq;
    int64_t step = 0;
  };
  AdamWOptions options_;
  std::map<std::string, Moments> moments_;  // by parameter name, from its first step
};

}  // namespace qforge::quant
