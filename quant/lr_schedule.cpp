// The schedules' closed forms; the expressions keep the operation order of the Python that
// makes the optimizer goldens, so both give the same doubles.
#include "quant/lr_schedule.h"

#include <cmath>
#include <numbers>
#include <string>

#include "kernels/error.h"

namespace qforge::quant {

const char* lr_decay_name(LrDecay decay) {
  switch (decay) {
    case LrDecay::kConstant:
      return "constant";
    case LrDecay::kCosine:
      return "cosine";
    case LrDecay::kStep:
      return "step";
  }
  return "?";
}

LrDecay parse_lr_decay(std::string_view name) {
  for (LrDecay decay : {LrDecay::kConstant, LrDecay::kCosine, LrDecay::kStep}) {
    if (name == lr_decay_name(decay)) return decay;
  }
  throw_invalid("learning-rate schedule: expected constant, cosine or step, got '" +
                std::string(name) + "'");
}

LrSchedule::LrSchedule(LrScheduleOptions options) : options_(options) {
  const LrScheduleOptions& o = options_;
  const std::string stage = std::string("learning-rate schedule (") + lr_decay_name(o.decay) + ")";
  if (!std::isfinite(o.base_lr) || !(o.base_lr > 0)) {
    throw_invalid(stage + ": expected base_lr finite and > 0, got " + std::to_string(o.base_lr));
  }
  if (o.warmup_steps < 0) {
    throw_invalid(stage + ": expected warmup_steps >= 0, got " + std::to_string(o.warmup_steps));
  }
  if (o.decay == LrDecay::kCosine && o.total_steps <= o.warmup_steps) {
    throw_invalid(stage + ": expected total_steps > warmup_steps (" +
                  std::to_string(o.warmup_steps) + "), got " + std::to_string(o.total_steps));
  }
  if (o.decay == LrDecay::kStep) {
    if (o.step_size <= 0) {
      throw_invalid(stage + ": expected step_size > 0, got " + std::to_string(o.step_size));
    }
    if (!std::isfinite(o.gamma) || !(o.gamma > 0)) {
      throw_invalid(stage + ": expected gamma finite and > 0, got " + std::to_string(o.gamma));
    }
  }
}

double LrSchedule::lr(int64_t step) const {
  const LrScheduleOptions& o = options_;
  if (step < 0) {
    throw_invalid("learning-rate schedule: expected a step >= 0, got " + std::to_string(step));
  }
  if (step < o.warmup_steps) {
    return o.base_lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  }
  const int64_t t = step - o.warmup_steps;
  switch (o.decay) {
    case LrDecay::kConstant:
      return o.base_lr;
    case LrDecay::kCosine: {
      const int64_t period = o.total_steps - o.warmup_steps;
      if (t >= period) return 0.0;
      return o.base_lr *
             (1.0 +
              std::cos(std::numbers::pi * static_cast<double>(t) / static_cast<double>(period))) /
             2.0;
    }
    case LrDecay::kStep:
      return o.base_lr * std::pow(o.gamma, static_cast<double>(t / o.step_size));
  }
  return o.base_lr;
}

}  // namespace qforge::quant
