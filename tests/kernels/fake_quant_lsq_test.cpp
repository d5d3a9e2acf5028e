// LSQ scale gradient of fake quantization: finite differences of the float64 forward where they
// are valid (saturated elements, whose output s·qmin or s·qmax is smooth in s), the closed form
// inside the range (where LSQ's straight-through rounding is not the forward's derivative), the
// kernel against the reference per tensor and per channel on awkward shapes, the gradient
// scale, accumulation, and bit-identical results for 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/fake_quant.h"
#include "kernels/reference/fake_quant_reference.h"
#include "tests/support/float_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::random_f32;
using testing::ThreadCount;

struct LsqResult {
  std::vector<float> dscale;
  Tensor dx;
};

LsqResult run_lsq(const Tensor& x, const Tensor& dy, const FakeQuantScales& scales,
                  const LsqOptions& options = {}) {
  LsqResult r{std::vector<float>(scales.scales.size()), Tensor(DType::kFloat32, x.shape())};
  std::vector<float> workspace(static_cast<size_t>(fake_quant_lsq_workspace_floats(x, scales)));
  fake_quant_lsq_backward(x, dy, scales, options, &r.dx, r.dscale, workspace);
  return r;
}

Tensor from_values(const std::vector<float>& v) {
  Tensor t(DType::kFloat32, {static_cast<int64_t>(v.size())});
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

TEST(FakeQuantLsq, SaturatedPartMatchesFiniteDifferences) {
  // Every |x/s| is beyond 135 for s within the step, so y = s·qmin or s·qmax there.
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> mag(2.0f, 9.0f);
  std::vector<float> xs(64);
  for (size_t i = 0; i < xs.size(); ++i) xs[i] = (i % 2 ? 1.0f : -1.0f) * mag(rng);
  const Tensor x = from_values(xs);
  const Tensor dy = random_f32({64}, 6, -1.0f, 1.0f);
  const float s = 0.01f;
  const float sv[] = {s};
  const FakeQuantScales scales{sv};
  auto loss = [&](double scale) {
    double l = 0;
    for (int64_t i = 0; i < 64; ++i) {
      l += dy.data<float>()[i] * reference::fake_quant_value(x.data<float>()[i], scale);
    }
    return l;
  };
  constexpr double kStep = 1e-7;
  const double fd = (loss(s + kStep) - loss(s - kStep)) / (2 * kStep);
  const std::vector<double> ref = reference::fake_quant_lsq_scale_grad(x, dy, scales, 1.0);
  EXPECT_NEAR(ref[0], fd, 1e-6 * (1 + std::abs(fd)));
  EXPECT_NEAR(run_lsq(x, dy, scales).dscale[0], fd, 1e-4 * (1 + std::abs(fd)));
}

TEST(FakeQuantLsq, ClosedFormInsideAndAtTheBounds) {
  struct Case {
    float x;
    float expected;  // ∂y/∂s at s = 0.5
  };
  const std::vector<Case> cases = {
      {1.3f, 3.0f - 1.3f / 0.5f},  // q = 2.6 rounds to 3
      {-0.1f, 0.2f},               // q = -0.2 rounds to -0
      {0.25f, -0.5f},              // q = 0.5 rounds half to even, 0
      {0.75f, 0.5f},               // q = 1.5 rounds to 2
      {-64.25f, 0.5f},             // q = -128.5 rounds to -128: inside
      {63.75f, 127.0f},            // q = 127.5 rounds to 128: saturates
      {-70.0f, -128.0f},           // q = -140
      {1e30f, 127.0f},
      {-INFINITY, -128.0f},
      {NAN, 0.0f},
  };
  const float sv[] = {0.5f};
  const FakeQuantScales scales{sv};
  for (const Case& c : cases) {
    const Tensor x = from_values({c.x});
    const Tensor dy = from_values({2.0f});
    const std::string what = "x = " + std::to_string(c.x);
    EXPECT_FLOAT_EQ(run_lsq(x, dy, scales).dscale[0], 2.0f * c.expected) << what;
    EXPECT_FLOAT_EQ(static_cast<float>(reference::fake_quant_lsq_scale_grad(x, dy, scales, 1)[0]),
                    2.0f * c.expected)
        << what;
  }
}

void expect_matches_reference(const Tensor& x, const Tensor& dy, const FakeQuantScales& scales,
                              const std::string& what) {
  const LsqResult got = run_lsq(x, dy, scales);
  const std::vector<double> ref = reference::fake_quant_lsq_scale_grad(x, dy, scales, 1.0);
  // Tolerance on the scale of the summed magnitudes (|term| <= 128, |dy| <= 1).
  const double per_scale = static_cast<double>(x.numel()) / static_cast<double>(ref.size());
  for (size_t c = 0; c < ref.size(); ++c) {
    EXPECT_NEAR(got.dscale[c], ref[c], 1e-6 * 128 * per_scale + 1e-5 * std::abs(ref[c]))
        << what << " scale " << c;
  }
  const Tensor ste = reference::fake_quant_backward(x, dy, scales);
  testing::expect_same_bits(got.dx.data<float>(), ste.data<float>(), static_cast<size_t>(x.numel()),
                            what + " dx");
}

TEST(FakeQuantLsq, KernelMatchesReferencePerTensor) {
  uint32_t seed = 1;
  for (const Shape& shape : std::vector<Shape>{{1}, {3}, {13}, {127}, {3, 5, 17}, {200003}}) {
    const Tensor x = random_f32(shape, seed++, -3.0f, 3.0f);
    const Tensor dy = random_f32(shape, seed++, -1.0f, 1.0f);
    for (float s : {0.02f, 0.0173f, 3.0f}) {
      const float sv[] = {s};
      expect_matches_reference(x, dy, FakeQuantScales{sv},
                               shape_str(shape) + " scale " + std::to_string(s));
    }
  }
}

TEST(FakeQuantLsq, KernelMatchesReferencePerChannel) {
  uint32_t seed = 20;
  struct Case {
    Shape shape;
    int axis;
  };
  for (const Case& c : std::vector<Case>{{{3, 1, 3, 3}, 0},
                                         {{17, 13}, 0},
                                         {{17, 13}, 1},
                                         {{3, 17, 5, 5}, 1},
                                         {{2, 3, 127}, -1},
                                         {{13, 3, 3, 3}, 0}}) {
    const Tensor x = random_f32(c.shape, seed++, -2.0f, 2.0f);
    const Tensor dy = random_f32(c.shape, seed++, -1.0f, 1.0f);
    const int axis = c.axis < 0 ? c.axis + static_cast<int>(c.shape.size()) : c.axis;
    const int64_t channels = c.shape[static_cast<size_t>(axis)];
    std::vector<float> sv(static_cast<size_t>(channels));
    std::mt19937 rng(seed++);
    std::uniform_real_distribution<float> dist(0.004f, 0.03f);
    for (float& v : sv) v = dist(rng);
    expect_matches_reference(x, dy, FakeQuantScales{sv, c.axis},
                             shape_str(c.shape) + " axis " + std::to_string(c.axis));
  }
}

TEST(FakeQuantLsq, GradScaleAndAccumulation) {
  EXPECT_FLOAT_EQ(lsq_grad_scale(1000), static_cast<float>(1.0 / std::sqrt(127000.0)));
  const Tensor x = random_f32({4, 33}, 3, -2.0f, 2.0f);
  const Tensor dy = random_f32({4, 33}, 4, -1.0f, 1.0f);
  const std::vector<float> sv = {0.01f, 0.02f, 0.015f, 0.03f};
  const FakeQuantScales scales{sv, 0};
  const LsqResult plain = run_lsq(x, dy, scales);
  const float g = lsq_grad_scale(33);
  const LsqResult scaled = run_lsq(x, dy, scales, {g, GradMode::kOverwrite});
  for (size_t c = 0; c < 4; ++c) {
    EXPECT_NEAR(scaled.dscale[c], plain.dscale[c] * g, 1e-6 * std::abs(plain.dscale[c]));
  }
  std::vector<float> dscale = {1.0f, -2.0f, 0.5f, 0.25f};
  Tensor dx = random_f32({4, 33}, 5, -1.0f, 1.0f);
  const Tensor dx0 = dx.clone();
  fake_quant_lsq_backward(x, dy, scales, {1.0f, GradMode::kAccumulate}, &dx, dscale, {});
  const std::vector<float> dscale0 = {1.0f, -2.0f, 0.5f, 0.25f};
  for (size_t c = 0; c < 4; ++c) EXPECT_EQ(dscale[c], dscale0[c] + plain.dscale[c]);
  for (int64_t i = 0; i < x.numel(); ++i) {
    ASSERT_EQ(dx.data<float>()[i], dx0.data<float>()[i] + plain.dx.data<float>()[i]) << i;
  }
}

TEST(FakeQuantLsq, SameBitsForAnyThreadCount) {
  const Tensor x = random_f32({64, 9, 71, 5}, 1, -3.0f, 3.0f);
  const Tensor dy = random_f32({64, 9, 71, 5}, 2, -1.0f, 1.0f);
  const float one_scale[] = {0.013f};
  std::vector<float> per_channel(9);
  for (size_t c = 0; c < 9; ++c) per_channel[c] = 0.005f + 0.002f * static_cast<float>(c);
  for (const FakeQuantScales& scales :
       {FakeQuantScales{one_scale}, FakeQuantScales{per_channel, 1}}) {
    LsqResult a, b;
    {
      ThreadCount threads(1);
      a = run_lsq(x, dy, scales);
    }
    {
      ThreadCount threads(2);
      b = run_lsq(x, dy, scales);
    }
    testing::expect_same_bits(a.dscale.data(), b.dscale.data(), a.dscale.size(), "dscale");
    testing::expect_same_bits(a.dx.data<float>(), b.dx.data<float>(),
                              static_cast<size_t>(x.numel()), "dx");
  }
}

}  // namespace
}  // namespace qforge::kernels
