// quant::LrSchedule: exact rates of the warmup and of each decay, and validation. Base rates and
// periods are chosen so that the expected values are exact in double.
#include "quant/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "tests/support/errors.h"

namespace qforge {
namespace {

using quant::LrDecay;
using quant::LrSchedule;

std::vector<double> rates(const LrSchedule& schedule, int64_t steps) {
  std::vector<double> out;
  for (int64_t s = 0; s < steps; ++s) out.push_back(schedule.lr(s));
  return out;
}

TEST(LrSchedule, ConstantWithoutWarmup) {
  const LrSchedule schedule({.base_lr = 0.1});
  EXPECT_EQ(rates(schedule, 4), (std::vector<double>{0.1, 0.1, 0.1, 0.1}));
  EXPECT_EQ(schedule.lr(1'000'000), 0.1);
}

// Step s < warmup_steps runs at base_lr·(s + 1)/warmup_steps: never 0, base_lr at its last step.
TEST(LrSchedule, LinearWarmupThenConstant) {
  const LrSchedule schedule({.base_lr = 2.0, .warmup_steps = 4});
  EXPECT_EQ(rates(schedule, 6), (std::vector<double>{0.5, 1.0, 1.5, 2.0, 2.0, 2.0}));
}

// T = total − warmup = 4 decay steps: (1 + cos(π·t/4))/2 for t = 0..3, then 0.
TEST(LrSchedule, CosineAfterWarmupReachesZeroAtTotalSteps) {
  const LrSchedule schedule(
      {.base_lr = 1.0, .decay = LrDecay::kCosine, .warmup_steps = 2, .total_steps = 6});
  const std::vector<double> got = rates(schedule, 8);
  EXPECT_EQ(got[0], 0.5);
  EXPECT_EQ(got[1], 1.0);
  EXPECT_EQ(got[2], 1.0);
  EXPECT_EQ(got[3], (1.0 + std::cos(std::numbers::pi / 4)) / 2);  // 0.853553…
  EXPECT_EQ(got[4], 0.5);  // cos(π/2) is 6e-17, lost in 1 + it
  EXPECT_EQ(got[5], (1.0 + std::cos(3 * std::numbers::pi / 4)) / 2);  // 0.146446…
  EXPECT_NEAR(got[3], 0.8535533905932737, 1e-16);
  EXPECT_NEAR(got[5], 0.1464466094067262, 1e-16);
  EXPECT_EQ(got[6], 0.0);  // t = T and beyond: 0, not torch's rise back up
  EXPECT_EQ(got[7], 0.0);
}

TEST(LrSchedule, CosineWithoutWarmupStartsAtBaseRate) {
  const LrSchedule schedule({.base_lr = 0.5, .decay = LrDecay::kCosine, .total_steps = 2});
  EXPECT_EQ(rates(schedule, 3), (std::vector<double>{0.5, 0.25, 0.0}));
}

// Multiplied by gamma every step_size steps, counted after the warmup.
TEST(LrSchedule, StepDecayAfterWarmup) {
  const LrSchedule schedule(
      {.base_lr = 1.0, .decay = LrDecay::kStep, .warmup_steps = 2, .step_size = 3, .gamma = 0.5});
  EXPECT_EQ(rates(schedule, 10),
            (std::vector<double>{0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25}));
}

TEST(LrSchedule, DecayNamesRoundTrip) {
  for (LrDecay decay : {LrDecay::kConstant, LrDecay::kCosine, LrDecay::kStep}) {
    EXPECT_EQ(quant::parse_lr_decay(quant::lr_decay_name(decay)), decay);
  }
  const std::string message =
      testing::error_of(ErrorKind::kInvalid, [] { quant::parse_lr_decay("linear"); });
  EXPECT_EQ(message, "learning-rate schedule: expected constant, cosine or step, got 'linear'");
}

TEST(LrSchedule, RefusesInvalidOptions) {
  std::string message = testing::error_of(ErrorKind::kInvalid, [] {
    LrSchedule({.base_lr = 0.1, .decay = LrDecay::kCosine, .warmup_steps = 5, .total_steps = 5});
  });
  EXPECT_EQ(message,
            "learning-rate schedule (cosine): expected total_steps > warmup_steps (5), got 5");
  message = testing::error_of(ErrorKind::kInvalid,
                              [] { LrSchedule({.base_lr = 0.1, .decay = LrDecay::kStep}); });
  EXPECT_EQ(message, "learning-rate schedule (step): expected step_size > 0, got 0");
  message = testing::error_of(ErrorKind::kInvalid, [] { LrSchedule({.base_lr = 0}); });
  EXPECT_NE(message.find("expected base_lr finite and > 0"), std::string::npos) << message;
  message = testing::error_of(ErrorKind::kInvalid,
                              [] { LrSchedule({.base_lr = 0.1, .warmup_steps = -1}); });
  EXPECT_EQ(message, "learning-rate schedule (constant): expected warmup_steps >= 0, got -1");
  message = testing::error_of(ErrorKind::kInvalid, [] { LrSchedule({.base_lr = 0.1}).lr(-1); });
  EXPECT_EQ(message, "learning-rate schedule: expected a step >= 0, got -1");
}

}  // namespace
}  // namespace qforge
