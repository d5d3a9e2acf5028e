// Backward of every float activation in the element-wise table: the float64 reference derivative
// against central finite differences of the float64 reference forward (away from kinks), the
// closed form at the kinks (PyTorch's conventions), the float32 kernel against the reference on
// awkward sizes, accumulation, and independence from the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/reference/elementwise_reference.h"
#include "tests/support/float_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::expect_close;
using testing::random_values;
using testing::ThreadCount;

struct ActivationCase {
  std::string name;
  UnaryOp op;
  UnaryParams params;
  float lo = -6.0f;  // sampled input range
  float hi = 6.0f;
  std::vector<double> kinks;  // points where the derivative jumps
};

std::vector<ActivationCase> activation_cases() {
  UnaryParams none;
  UnaryParams leaky;
  leaky.alpha = 0.01f;
  UnaryParams elu;
  elu.alpha = 1.0f;
  UnaryParams elu_half;
  elu_half.alpha = 0.5f;
  UnaryParams hard_sigmoid;  // ONNX defaults
  hard_sigmoid.alpha = 0.2f;
  hard_sigmoid.beta = 0.5f;
  UnaryParams torch_hard_sigmoid;
  torch_hard_sigmoid.alpha = 1.0f / 6.0f;
  torch_hard_sigmoid.beta = 0.5f;
  UnaryParams relu6;
  relu6.min = 0.0f;
  relu6.max = 6.0f;
  UnaryParams clip;
  clip.min = -1.5f;
  clip.max = 2.25f;
  return {
      {"Relu", UnaryOp::kRelu, none, -6, 6, {0}},
      {"LeakyRelu", UnaryOp::kLeakyRelu, leaky, -6, 6, {0}},
      {"Elu", UnaryOp::kElu, elu, -6, 6, {0}},
      {"EluHalf", UnaryOp::kElu, elu_half, -6, 6, {0}},
      {"Sigmoid", UnaryOp::kSigmoid, none, -10, 10, {}},
      {"HardSigmoid", UnaryOp::kHardSigmoid, hard_sigmoid, -4, 4, {-2.5, 2.5}},
      {"HardSigmoidTorch", UnaryOp::kHardSigmoid, torch_hard_sigmoid, -5, 5, {-3, 3}},
      {"HardSwish", UnaryOp::kHardSwish, none, -5, 5, {-3, 3}},
      {"Erf", UnaryOp::kErf, none, -4, 4, {}},
      {"GeluErf", UnaryOp::kGeluErf, none, -6, 6, {}},
      {"GeluTanh", UnaryOp::kGeluTanh, none, -6, 6, {}},
      {"Silu", UnaryOp::kSilu, none, -10, 10, {}},
      {"Tanh", UnaryOp::kTanh, none, -6, 6, {}},
      {"Sqrt", UnaryOp::kSqrt, none, 0.05f, 9, {}},
      {"Neg", UnaryOp::kNeg, none, -6, 6, {}},
      {"Exp", UnaryOp::kExp, none, -6, 6, {}},
      {"Log", UnaryOp::kLog, none, 0.05f, 9, {}},
      {"Reciprocal", UnaryOp::kReciprocal, none, 0.2f, 9, {}},
      {"Abs", UnaryOp::kAbs, none, -6, 6, {0}},
      {"Sin", UnaryOp::kSin, none, -6, 6, {}},
      {"Cos", UnaryOp::kCos, none, -6, 6, {}},
      {"Softplus", UnaryOp::kSoftplus, none, -10, 10, {}},
      {"Relu6", UnaryOp::kClip, relu6, -3, 9, {0, 6}},
      {"Clip", UnaryOp::kClip, clip, -4, 4, {-1.5, 2.25}},
  };
}

bool near_kink(const ActivationCase& c, double x, double margin) {
  for (double k : c.kinks) {
    if (std::abs(x - k) < margin) return true;
  }
  return false;
}

std::vector<float> run_backward(const ActivationCase& c, const std::vector<float>& x,
                                const std::vector<float>& dy) {
  std::vector<float> dx(x.size());
  unary_backward_f32(c.op, c.params, x.data(), dy.data(), dx.data(),
                     static_cast<int64_t>(x.size()));
  return dx;
}

TEST(ActivationBackward, ReferenceMatchesFiniteDifferencesAwayFromKinks) {
  constexpr double kStep = 1e-5;
  for (const ActivationCase& c : activation_cases()) {
    const std::vector<float> xs = random_values(400, 11, c.lo, c.hi);
    int checked = 0;
    for (float xf : xs) {
      const double x = xf;
      if (near_kink(c, x, 1e-3)) continue;
      const double fd = (reference::unary_value(c.op, c.params, x + kStep) -
                         reference::unary_value(c.op, c.params, x - kStep)) /
                        (2 * kStep);
      const double d = reference::unary_derivative(c.op, c.params, x);
      EXPECT_NEAR(d, fd, 1e-7 * (1 + std::abs(d))) << c.name << " at x = " << x;
      ++checked;
    }
    EXPECT_GT(checked, 350) << c.name;
  }
}

TEST(ActivationBackward, KinksFollowPyTorch) {
  struct Kink {
    std::string name;
    double x;
    double derivative;
  };
  std::vector<ActivationCase> cases = activation_cases();
  auto find = [&](const std::string& name) {
    for (const ActivationCase& c : cases) {
      if (c.name == name) return c;
    }
    ADD_FAILURE() << "no case " << name;
    return cases[0];
  };
  const std::vector<Kink> kinks = {
      {"Relu", 0.0, 0.0},          {"Relu", -0.0, 0.0},        {"LeakyRelu", 0.0, 0.01f},
      {"Elu", 0.0, 1.0},           {"EluHalf", 0.0, 0.5},      {"HardSwish", -3.0, -0.5},
      {"HardSwish", 3.0, 1.0},     {"HardSwish", -3.5, 0.0},   {"HardSwish", 2.5, 2.5 / 3 + 0.5},
      {"HardSigmoidTorch", -3, 0}, {"HardSigmoidTorch", 3, 0}, {"HardSigmoidTorch", 0, 1.0 / 6},
      {"HardSigmoid", -2.5, 0},    {"HardSigmoid", 2.5, 0},    {"Relu6", 0.0, 0.0},
      {"Relu6", 6.0, 0.0},         {"Relu6", 5.5, 1.0},        {"Clip", -1.5, 0.0},
      {"Clip", 2.25, 0.0},         {"Clip", 0.0, 1.0},
  };
  for (const Kink& k : kinks) {
    const ActivationCase c = find(k.name);
    const std::string what = k.name + " at x = " + std::to_string(k.x);
    EXPECT_NEAR(reference::unary_derivative(c.op, c.params, k.x), k.derivative, 1e-7) << what;
    const std::vector<float> dx = run_backward(c, {static_cast<float>(k.x)}, {2.0f});
    EXPECT_NEAR(dx[0], 2.0 * k.derivative, 1e-6) << what;
  }
}

TEST(ActivationBackward, KernelMatchesReferenceOnAwkwardSizes) {
  uint32_t seed = 100;
  for (const ActivationCase& c : activation_cases()) {
    for (int64_t n : {1, 3, 13, 17, 127, 16384 * 2 + 5}) {
      const auto count = static_cast<size_t>(n);
      const std::vector<float> x = random_values(count, seed++, c.lo, c.hi);
      const std::vector<float> dy = random_values(count, seed++, -1.0f, 1.0f);
      Tensor xt(DType::kFloat32, {n});
      Tensor dyt(DType::kFloat32, {n});
      std::copy(x.begin(), x.end(), xt.data<float>());
      std::copy(dy.begin(), dy.end(), dyt.data<float>());
      const Tensor expected = reference::unary_backward(c.op, c.params, xt, dyt);
      const std::span<const float> e = expected.span<float>();
      expect_close(run_backward(c, x, dy), std::vector<float>(e.begin(), e.end()), 2e-6, 2e-5,
                   c.name + " n = " + std::to_string(n));
    }
  }
}

TEST(ActivationBackward, AccumulateAddsToTheGradient) {
  for (const ActivationCase& c : activation_cases()) {
    const std::vector<float> x = random_values(1001, 7, c.lo, c.hi);
    const std::vector<float> dy = random_values(1001, 8, -1.0f, 1.0f);
    const std::vector<float> before = random_values(1001, 9, -1.0f, 1.0f);
    const std::vector<float> fresh = run_backward(c, x, dy);
    std::vector<float> acc = before;
    unary_backward_f32(c.op, c.params, x.data(), dy.data(), acc.data(), 1001,
                       GradMode::kAccumulate);
    // The compiler may fuse the addition with the derivative's last product, so the sum is
    // checked to within that one rounding.
    std::vector<float> want(acc.size());
    for (size_t i = 0; i < acc.size(); ++i) want[i] = before[i] + fresh[i];
    expect_close(acc, want, 1e-6, 1e-6, c.name);
  }
}

TEST(ActivationBackward, InPlaceOverDy) {
  const ActivationCase c = activation_cases()[9];  // GeluErf
  const std::vector<float> x = random_values(300, 3, c.lo, c.hi);
  std::vector<float> g = random_values(300, 4, -1.0f, 1.0f);
  const std::vector<float> expected = run_backward(c, x, g);
  unary_backward_f32(c.op, c.params, x.data(), g.data(), g.data(), 300);
  testing::expect_same_bits(g.data(), expected.data(), g.size(), c.name);
}

TEST(ActivationBackward, SameBitsForAnyThreadCount) {
  const int64_t n = 16384 * 5 + 77;
  for (const ActivationCase& c : activation_cases()) {
    const std::vector<float> x = random_values(static_cast<size_t>(n), 21, c.lo, c.hi);
    const std::vector<float> dy = random_values(static_cast<size_t>(n), 22, -1.0f, 1.0f);
    std::vector<float> one, two;
    {
      ThreadCount threads(1);
      one = run_backward(c, x, dy);
    }
    {
      ThreadCount threads(2);
      two = run_backward(c, x, dy);
    }
    testing::expect_same_bits(one.data(), two.data(), one.size(), c.name);
  }
}

}  // namespace
}  // namespace qforge::kernels
