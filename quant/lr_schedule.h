// Learning-rate schedules: the rate of each optimizer step as a pure function of the step's
// index, so that a run resumed at step s continues with the rates it would have had.
#pragma once

#include <cstdint>
#include <string_view>

namespace qforge::quant {

enum class LrDecay {
  kConstant,  // base_lr
  kCosine,    // torch CosineAnnealingLR, eta_min 0, T_max = total_steps − warmup_steps
  kStep,      // torch StepLR: multiplied by gamma every step_size steps
};

// "constant", "cosine", "step".
const char* lr_decay_name(LrDecay decay);
// The inverse of lr_decay_name; Invalid naming the choices for any other text.
LrDecay parse_lr_decay(std::string_view name);

struct LrScheduleOptions {
  double base_lr = 1e-3;
  LrDecay decay = LrDecay::kConstant;
  // Linear warmup: step s < warmup_steps runs at base_lr·(s + 1)/warmup_steps, so the first
  // step does not run at 0 and step warmup_steps − 1 runs at base_lr. The decay starts after
  // it: t = s − warmup_steps counts the decay's own steps from 0.
  int64_t warmup_steps = 0;
  // kCosine: the steps of the whole run, warmup included (> warmup_steps). With
  // T = total_steps − warmup_steps the rate is base_lr·(1 + cos(π·t/T))/2: base_lr at t = 0,
  // falling to 0 at t = T, and 0 from there on (torch's schedule would rise again).
  int64_t total_steps = 0;
  // kStep: the rate is base_lr·gamma^⌊t/step_size⌋ (step_size > 0, gamma > 0).
  int64_t step_size = 0;
  double gamma = 0.1;
};

class LrSchedule {
 public:
  // Invalid, naming the field, unless base_lr is finite and > 0, warmup_steps >= 0, and the
  // decay's own fields are as described above.
  explicit LrSchedule(LrScheduleOptions options);
  // The rate of step `step` (counted from 0; Invalid when negative). Computed in double in the
  // order the formulas above are written, as data/generate/optimizer_goldens.py computes it.
  double lr(int64_t step) const;
  const LrScheduleOptions& options() const { return options_; }

 private:
  LrScheduleOptions options_;
};

}  // namespace qforge::quant
