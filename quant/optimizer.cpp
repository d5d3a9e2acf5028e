// SGD's and AdamW's element-wise updates, parallel over fixed chunks of each parameter, and
// their state by name. Built with -ffp-contract=off (quant/CMakeLists.txt): every fused
// multiply-add here is an explicit std::fma where PyTorch's kernel has one, and no other
// product may be fused, or the results would drift from PyTorch's by a rounding.
#include "quant/optimizer.h"

#include <cmath>
#include <string_view>
#include <utility>

#include "kernels/error.h"
#include "kernels/parallel.h"

namespace qforge::quant {
namespace {

constexpr int64_t kGrain = 1 << 14;
constexpr std::string_view kMomentumBuffer = "momentum_buffer/";
constexpr std::string_view kExpAvg = "exp_avg/";
constexpr std::string_view kExpAvgSq = "exp_avg_sq/";
constexpr std::string_view kStep = "step/";

// As PyTorch: 0 is a valid rate (a schedule may end there).
bool valid_lr(double lr) {
  return std::isfinite(lr) && lr >= 0;
}

bool decays(const NoWeightDecay& no_weight_decay, const runtime::Parameter& p) {
  return !no_weight_decay || !no_weight_decay(p);
}

// The parameter name after `prefix`, or empty when `key` does not start with it.
std::string_view name_after(std::string_view key, std::string_view prefix) {
  if (key.size() <= prefix.size() || key.substr(0, prefix.size()) != prefix) return {};
  return key.substr(prefix.size());
}

// A state tensor's shape must be its parameter's; a mismatch means the state came from
// another model.
void check_state_shape(const char* stage, const std::string& field, const runtime::Parameter& p,
                       const kernels::Tensor& t) {
  if (t.shape() != p.value.shape()) {
    throw_invalid(std::string(stage) + ": state '" + field + p.name + "': expected the shape " +
                  kernels::shape_str(p.value.shape()) + " of its parameter, got " +
                  kernels::shape_str(t.shape()));
  }
}

void check_float_tensor(const char* stage, const std::string& key, const kernels::Tensor& t) {
  if (!t.defined() || t.dtype() != kernels::DType::kFloat32) {
    throw_invalid(std::string(stage) + ": state '" + key + "': expected a float32 tensor, got " +
                  (t.defined() ? t.describe() : std::string("an undefined tensor")));
  }
}

}  // namespace

bool is_vector_parameter(const runtime::Parameter& parameter) {
  return parameter.value.rank() <= 1;
}

// ---------------------------------------------------------------------------------------------
// SGD

Sgd::Sgd(SgdOptions options) : options_(std::move(options)) {
  const SgdOptions& o = options_;
  if (!valid_lr(o.lr) || !(o.momentum >= 0) || !(o.dampening >= 0) || !(o.weight_decay >= 0) ||
      (o.nesterov && (o.momentum <= 0 || o.dampening != 0))) {
    throw_invalid(
        "SGD: expected lr >= 0, momentum >= 0, dampening >= 0, weight_decay >= 0, and Nesterov "
        "only with momentum and no dampening");
  }
}

void Sgd::set_lr(double lr) {
  if (!valid_lr(lr))
    throw_invalid("SGD: expected a finite learning rate >= 0, got " + std::to_string(lr));
  options_.lr = lr;
}

void Sgd::step(std::span<runtime::Parameter> parameters) {
  const SgdOptions& o = options_;
  const float momentum = static_cast<float>(o.momentum);
  const float one_minus_dampening = static_cast<float>(1.0 - o.dampening);
  const float neg_lr = static_cast<float>(-o.lr);
  for (runtime::Parameter& p : parameters) {
    if (!p.trainable()) continue;
    const float weight_decay =
        decays(o.no_weight_decay, p) ? static_cast<float>(o.weight_decay) : 0.0f;
    float* value = p.value.data<float>();
    const float* grad = p.grad.data<float>();
    float* buf = nullptr;
    bool first = false;
    if (o.momentum != 0) {
      kernels::Tensor& b = momentum_[p.name];
      first = !b.defined();
      if (first) b = kernels::Tensor(kernels::DType::kFloat32, p.value.shape());
      check_state_shape("SGD", std::string(kMomentumBuffer), p, b);
      buf = b.data<float>();
    }
    const bool nesterov = o.nesterov;
    kernels::parallel_for(p.value.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        float g = grad[k];
        if (weight_decay != 0) g = std::fma(value[k], weight_decay, g);
        if (buf) {
          buf[k] = first ? g : std::fma(g, one_minus_dampening, buf[k] * momentum);
          g = nesterov ? std::fma(buf[k], momentum, g) : buf[k];
        }
        value[k] = std::fma(g, neg_lr, value[k]);
      }
    });
  }
}

OptimizerState Sgd::state() const {
  OptimizerState state;
  for (const auto& [name, buf] : momentum_) {
    state[std::string(kMomentumBuffer) + name] = buf.clone();
  }
  return state;
}

void Sgd::load_state(const OptimizerState& state) {
  std::map<std::string, kernels::Tensor> momentum;
  for (const auto& [key, tensor] : state) {
    const std::string_view name = name_after(key, kMomentumBuffer);
    if (name.empty()) {
      throw_invalid("SGD: state '" + key + "': expected a key 'momentum_buffer/<parameter>'");
    }
    if (options_.momentum == 0) {
      throw_invalid("SGD: state '" + key + "': expected no momentum buffers (momentum is 0)");
    }
    check_float_tensor("SGD", key, tensor);
    momentum[std::string(name)] = tensor.clone();
  }
  momentum_ = std::move(momentum);
}

// ---------------------------------------------------------------------------------------------
// AdamW

AdamW::AdamW(AdamWOptions options) : options_(std::move(options)) {
  const AdamWOptions& o = options_;
  if (!valid_lr(o.lr) || !(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1) ||
      !(o.eps >= 0) || !(o.weight_decay >= 0)) {
    throw_invalid(
        "AdamW: expected lr >= 0, 0 <= beta1 < 1, 0 <= beta2 < 1, eps >= 0 and "
        "weight_decay >= 0");
  }
}

void AdamW::set_lr(double lr) {
  if (!valid_lr(lr))
    throw_invalid("AdamW: expected a finite learning rate >= 0, got " + std::to_string(lr));
  options_.lr = lr;
}

void AdamW::step(std::span<runtime::Parameter> parameters) {
  const AdamWOptions& o = options_;
  const float beta1 = static_cast<float>(o.beta1);
  const float beta2 = static_cast<float>(o.beta2);
  const float one_minus_beta1 = static_cast<float>(1.0 - o.beta1);
  const float one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
  const float eps = static_cast<float>(o.eps);
  for (runtime::Parameter& p : parameters) {
    if (!p.trainable()) continue;
    Moments& m = moments_[p.name];
    if (!m.exp_avg.defined()) {
      m.exp_avg = kernels::Tensor(kernels::DType::kFloat32, p.value.shape());
      m.exp_avg_sq = kernels::Tensor(kernels::DType::kFloat32, p.value.shape());
      m.step = 0;
    }
    check_state_shape("AdamW", std::string(kExpAvg), p, m.exp_avg);
    check_state_shape("AdamW", std::string(kExpAvgSq), p, m.exp_avg_sq);
    m.step += 1;
    const double t = static_cast<double>(m.step);
    const double bias_correction1 = 1.0 - std::pow(o.beta1, t);
    const double bias_correction2 = 1.0 - std::pow(o.beta2, t);
    const float neg_step_size = static_cast<float>(-(o.lr / bias_correction1));
    const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
    const bool decay = o.weight_decay != 0 && decays(o.no_weight_decay, p);
    const float decay_factor = static_cast<float>(1.0 - o.lr * o.weight_decay);

    float* value = p.value.data<float>();
    const float* grad = p.grad.data<float>();
    float* exp_avg = m.exp_avg.data<float>();
    float* exp_avg_sq = m.exp_avg_sq.data<float>();
    kernels::parallel_for(p.value.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const float g = grad[k];
        const float v = decay ? value[k] * decay_factor : value[k];
        const float avg = std::fma(g, one_minus_beta1, exp_avg[k] * beta1);
        const float avg_sq = std::fma(g * one_minus_beta2, g, exp_avg_sq[k] * beta2);
        exp_avg[k] = avg;
        exp_avg_sq[k] = avg_sq;
        const float denom = std::sqrt(avg_sq) / bias_correction2_sqrt + eps;
        value[k] = v + (neg_step_size * avg) / denom;
      }
    });
  }
}

OptimizerState AdamW::state() const {
  OptimizerState state;
  for (const auto& [name, m] : moments_) {
    state[std::string(kExpAvg) + name] = m.exp_avg.clone();
    state[std::string(kExpAvgSq) + name] = m.exp_avg_sq.clone();
    state[std::string(kStep) + name] = kernels::Tensor::scalar_i64(m.step);
  }
  return state;
}

void AdamW::load_state(const OptimizerState& state) {
  std::map<std::string, Moments> moments;
  for (const auto& [key, tensor] : state) {
    std::string_view name;
    if (!(name = name_after(key, kExpAvg)).empty()) {
      check_float_tensor("AdamW", key, tensor);
      moments[std::string(name)].exp_avg = tensor.clone();
    } else if (!(name = name_after(key, kExpAvgSq)).empty()) {
      check_float_tensor("AdamW", key, tensor);
      moments[std::string(name)].exp_avg_sq = tensor.clone();
    } else if (!(name = name_after(key, kStep)).empty()) {
      if (!tensor.defined() || tensor.dtype() != kernels::DType::kInt64 || tensor.numel() != 1 ||
          tensor.data<int64_t>()[0] < 1) {
        throw_invalid("AdamW: state '" + key + "': expected an int64 scalar >= 1, got " +
                      (tensor.defined() ? tensor.describe() : std::string("nothing")));
      }
      moments[std::string(name)].step = tensor.data<int64_t>()[0];
    } else {
      throw_invalid("AdamW: state '" + key +
                    "': expected a key 'exp_avg/<parameter>', 'exp_avg_sq/<parameter>' or "
                    "'step/<parameter>'");
    }
  }
  for (const auto& [name, m] : moments) {
    if (!m.exp_avg.defined() || !m.exp_avg_sq.defined() || m.step == 0) {
      throw_invalid("AdamW: state of parameter '" + name +
                    "': expected exp_avg, exp_avg_sq and step, got only some of them");
    }
    if (m.exp_avg.shape() != m.exp_avg_sq.shape()) {
      throw_invalid("AdamW: state of parameter '" + name +
                    "': expected exp_avg and exp_avg_sq of one shape, got " +
                    kernels::shape_str(m.exp_avg.shape()) + " and " +
                    kernels::shape_str(m.exp_avg_sq.shape()));
    }
  }
  moments_ = std::move(moments);
}

}  // namespace qforge::quant
