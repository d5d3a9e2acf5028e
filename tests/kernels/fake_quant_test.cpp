// Fake quantization against its naive ONNX-step reference (kernels/reference) on awkward shapes
// and every channel axis, exact ties-to-even and saturation cases, NaN/Inf handling, the STE
// backward's boundaries, and independence from the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "kernels/fake_quant.h"
#include "kernels/reference/fake_quant_reference.h"
#include "runtime/threads.h"
#include "tests/support/random.h"

namespace qforge::kernels {
namespace {

using testing::random_f32;

std::vector<float> random_scales(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(0.003f, 0.05f);
  std::vector<float> s(static_cast<size_t>(n));
  for (float& v : s) v = dist(rng);
  return s;
}

// Bitwise, with any NaN equal to any NaN.
void expect_bitwise(const Tensor& actual, const Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  const float* a = actual.data<float>();
  const float* e = expected.data<float>();
  int failures = 0;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    const bool same =
        (std::isnan(a[i]) && std::isnan(e[i])) || std::memcmp(&a[i], &e[i], sizeof(float)) == 0;
    if (!same && ++failures <= 5) {
      ADD_FAILURE() << what << ": element " << i << " is " << a[i] << ", expected " << e[i];
    }
  }
  EXPECT_EQ(failures, 0) << what;
}

Tensor run_forward(const Tensor& x, const FakeQuantScales& s) {
  Tensor y(DType::kFloat32, x.shape());
  fake_quant(x, s, y);
  return y;
}

Tensor run_backward(const Tensor& x, const Tensor& dy, const FakeQuantScales& s) {
  Tensor dx(DType::kFloat32, x.shape());
  fake_quant_backward(x, dy, s, dx);
  return dx;
}

class ThreadCount {
 public:
  explicit ThreadCount(int n) : previous_(runtime::num_threads()) { runtime::set_num_threads(n); }
  ~ThreadCount() { runtime::set_num_threads(previous_); }

 private:
  int previous_;
};

TEST(FakeQuant, PerTensorMatchesReferenceOnAwkwardShapes) {
  const std::vector<Shape> shapes = {{}, {1}, {13}, {127}, {124}, {3, 5, 7}, {2, 16385}, {200003}};
  uint32_t seed = 1;
  for (const Shape& shape : shapes) {
    // Wide enough that a good share saturates on both sides.
    const Tensor x = random_f32(shape, seed++, -3.0f, 3.0f);
    for (float scale : {0.02f, 0.0173f, 1.0f / 127.0f, 3.0f}) {
      const float s[] = {scale};
      const FakeQuantScales scales{s};
      const std::string what = shape_str(shape) + " scale " + std::to_string(scale);
      expect_bitwise(run_forward(x, scales), reference::fake_quant(x, scales), what);
      const Tensor dy = random_f32(shape, seed++, -1.0f, 1.0f);
      expect_bitwise(run_backward(x, dy, scales), reference::fake_quant_backward(x, dy, scales),
                     what + " backward");
    }
  }
}

TEST(FakeQuant, PerChannelMatchesReferenceOnEveryAxis) {
  struct Case {
    Shape shape;
    int axis;
  };
  // Conv weights (axis 0), Gemm transB (axis 0), MatMul [K, N] (axis 1), last axis, and layouts
  // spanning several parallel chunks with runs that cross chunk boundaries.
  const std::vector<Case> cases = {{{5, 7, 3}, 0},  {{5, 7, 3}, 1},     {{5, 7, 3}, 2},
                                   {{5, 7, 3}, -1}, {{4, 13}, 0},       {{4, 13}, 1},
                                   {{13}, 0},       {{16, 3, 3, 3}, 0}, {{300, 129}, 0},
                                   {{129, 300}, 1}, {{64, 1031}, -1},   {{7, 9, 1031}, 1}};
  uint32_t seed = 100;
  for (const Case& c : cases) {
    const Tensor x = random_f32(c.shape, seed++, -2.5f, 2.5f);
    const int axis = c.axis < 0 ? c.axis + static_cast<int>(c.shape.size()) : c.axis;
    const std::vector<float> s = random_scales(c.shape[static_cast<size_t>(axis)], seed++);
    const FakeQuantScales scales{s, c.axis};
    const std::string what = shape_str(c.shape) + " axis " + std::to_string(c.axis);
    expect_bitwise(run_forward(x, scales), reference::fake_quant(x, scales), what);
    const Tensor dy = random_f32(c.shape, seed++, -1.0f, 1.0f);
    expect_bitwise(run_backward(x, dy, scales), reference::fake_quant_backward(x, dy, scales),
                   what + " backward");
  }
}

TEST(FakeQuant, PerChannelUsesEachChannelsScale) {
  // [K=3, N=4] MatMul weight quantized along N: column n must equal per-tensor with scale s[n].
  const Tensor x = random_f32({3, 4}, 7, -1.0f, 1.0f);
  const std::vector<float> s = {0.001f, 0.01f, 0.004f, 0.02f};
  const Tensor y = run_forward(x, {s, 1});
  for (int64_t n = 0; n < 4; ++n) {
    for (int64_t k = 0; k < 3; ++k) {
      float one = 0.0f;
      fake_quant_f32(x.data<float>() + k * 4 + n, s[static_cast<size_t>(n)], &one, 1);
      EXPECT_EQ(y.data<float>()[k * 4 + n], one) << k << "," << n;
    }
  }
}

TEST(FakeQuant, TiesRoundHalfToEvenBothSigns) {
  // A power-of-two scale makes x / scale exactly k + 0.5.
  const float scale = 0.25f;
  std::vector<float> xs, expected;
  for (int k = -140; k <= 140; ++k) {
    const double tie = k + 0.5;
    xs.push_back(static_cast<float>(tie * scale));
    // The even one of k and k + 1, then saturation.
    double q = (k % 2 == 0) ? k : k + 1;
    q = std::fmin(std::fmax(q, -128.0), 127.0);
    expected.push_back(static_cast<float>(q * scale));
  }
  const Tensor x = Tensor::from_vector<float>({static_cast<int64_t>(xs.size())}, xs);
  const float s[] = {scale};
  const Tensor y = run_forward(x, {s});
  for (size_t i = 0; i < xs.size(); ++i) {
    EXPECT_EQ(y.data<float>()[i], expected[i]) << "x/scale = " << xs[i] / scale;
  }
  expect_bitwise(y, reference::fake_quant(x, {s}), "ties vs reference");
  // Spot values spelled out.
  const std::vector<float> spot = {0.5f,  1.5f,   2.5f,   -0.5f,   -1.5f,
                                   -2.5f, 126.5f, 127.5f, -128.5f, -129.5f};
  const std::vector<float> spot_q = {0.0f,  2.0f,   2.0f,   -0.0f,   -2.0f,
                                     -2.0f, 126.0f, 127.0f, -128.0f, -128.0f};
  for (size_t i = 0; i < spot.size(); ++i) {
    float y1 = 0.0f;
    const float x1 = spot[i];
    fake_quant_f32(&x1, 1.0f, &y1, 1);
    EXPECT_EQ(y1, spot_q[i]) << x1;
    if (y1 == 0.0f) {
      EXPECT_FALSE(std::signbit(y1)) << "an integer zero has no sign: " << x1;
    }
  }
}

TEST(FakeQuant, TiesWithNonPowerOfTwoScalesMatchOnnxDivision) {
  // x / scale in float32 (not x · (1/scale)): values built as (k + 0.5)·s land on or next to ties.
  for (float scale : {0.1f, 0.013f, 0.0037f, 7.3f}) {
    std::vector<float> xs;
    for (int k = -135; k <= 135; ++k) {
      const float x = (static_cast<float>(k) + 0.5f) * scale;
      xs.push_back(x);
      xs.push_back(std::nextafter(x, 0.0f));
      xs.push_back(std::nextafter(x, 1e9f));
    }
    const Tensor x = Tensor::from_vector<float>({static_cast<int64_t>(xs.size())}, xs);
    const float s[] = {scale};
    expect_bitwise(run_forward(x, {s}), reference::fake_quant(x, {s}),
                   "scale " + std::to_string(scale));
  }
}

TEST(FakeQuant, SaturatesInfinityAndPropagatesNan) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> xs = {1e30f, -1e30f, inf, -inf, nan, 3e38f};
  const Tensor x = Tensor::from_vector<float>({6}, xs);
  const float s[] = {0.5f};
  const Tensor y = run_forward(x, {s});
  EXPECT_EQ(y.data<float>()[0], 63.5f);
  EXPECT_EQ(y.data<float>()[1], -64.0f);
  EXPECT_EQ(y.data<float>()[2], 63.5f);
  EXPECT_EQ(y.data<float>()[3], -64.0f);
  EXPECT_TRUE(std::isnan(y.data<float>()[4]));
  EXPECT_EQ(y.data<float>()[5], 63.5f);
  // A tiny scale overflows x / scale to inf: still saturation, not NaN.
  const float tiny[] = {1e-38f};
  const Tensor big = Tensor::from_vector<float>({1}, {1e10f});
  EXPECT_EQ(run_forward(big, {tiny}).data<float>()[0], 127.0f * 1e-38f);
  const Tensor dy = Tensor::from_vector<float>({6}, {1, 1, 1, 1, 1, 1});
  const Tensor dx = run_backward(x, dy, {s});
  for (int i = 0; i < 6; ++i) EXPECT_EQ(dx.data<float>()[i], 0.0f) << i;
}

TEST(FakeQuant, StraightThroughBoundariesFollowRounding) {
  // x/scale in [-128.5, 127.5) passes: exactly where round_half_even(x/scale) is in [-128, 127].
  const float s[] = {1.0f};
  const std::vector<float> xs = {-128.5f, std::nextafter(-128.5f, -200.0f),
                                 127.5f,  std::nextafter(127.5f, 0.0f),
                                 0.0f,    -0.0f,
                                 127.0f,  -128.0f,
                                 128.0f,  -129.0f};
  const std::vector<float> pass = {1, 0, 0, 1, 1, 1, 1, 1, 0, 0};
  const Tensor x = Tensor::from_vector<float>({static_cast<int64_t>(xs.size())}, xs);
  Tensor dy(DType::kFloat32, x.shape());
  for (float& v : dy.span<float>()) v = 2.5f;
  const Tensor dx = run_backward(x, dy, {s});
  for (size_t i = 0; i < xs.size(); ++i) {
    EXPECT_EQ(dx.data<float>()[i], pass[i] * 2.5f) << "x = " << xs[i];
  }
  expect_bitwise(dx, reference::fake_quant_backward(x, dy, {s}), "boundaries vs reference");
}

TEST(FakeQuant, InPlaceAndThreadCountIndependent) {
  const Tensor x = random_f32({37, 4099}, 11, -4.0f, 4.0f);
  const std::vector<float> s = random_scales(4099, 12);
  Tensor serial(DType::kFloat32, x.shape());
  {
    ThreadCount one(1);
    fake_quant(x, {s, -1}, serial);
  }
  expect_bitwise(run_forward(x, {s, -1}), serial, "threads");
  Tensor inplace = x.clone();
  fake_quant(inplace, {s, -1}, inplace);
  expect_bitwise(inplace, serial, "in place");
}

// channel_abs_max: max |x| per index of the axis (or of the whole tensor), against a plain loop,
// on every axis of an awkward shape (inner sizes not a multiple of the 16 lanes), an infinity
// kept, NaN passed over as std::max does, and the same values for 1 and 2 threads.
TEST(ChannelAbsMax, MatchesAPlainLoopOnEveryAxis) {
  Tensor x = random_f32({3, 37, 5, 19}, 21, -6.0f, 6.0f);
  x.data<float>()[7 * 95 + 3] = -std::numeric_limits<float>::infinity();  // channel 7 of axis 1
  x.data<float>()[11 * 95 + 40] = std::numeric_limits<float>::quiet_NaN();
  for (int axis = -1; axis < x.rank(); ++axis) {
    SCOPED_TRACE("axis " + std::to_string(axis));
    const int64_t channels = axis < 0 ? 1 : x.dim(axis);
    int64_t inner = 1;
    for (int d = axis + 1; d < x.rank(); ++d) inner *= x.dim(d);
    if (axis < 0) inner = 1;
    std::vector<float> expected(static_cast<size_t>(channels), 0.0f);
    for (int64_t i = 0; i < x.numel(); ++i) {
      const size_t c = axis < 0 ? 0 : static_cast<size_t>(i / inner % channels);
      expected[c] = std::max(expected[c], std::fabs(x.data<float>()[i]));
    }
    for (int threads : {1, 2}) {
      ThreadCount scope(threads);
      std::vector<float> got(static_cast<size_t>(channels), -1.0f);
      channel_abs_max(x, axis, got);
      ASSERT_EQ(std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)), 0)
          << "threads " << threads;
    }
  }
  std::vector<float> per_channel(37);
  channel_abs_max(x, 1, per_channel);
  EXPECT_EQ(per_channel[7], std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isfinite(per_channel[11]));
  // The last axis of a MatMul weight: several blocks of channels and a partial one.
  Tensor w = random_f32({9, 150}, 22, -3.0f, 3.0f);
  w.data<float>()[4 * 150 + 70] = std::numeric_limits<float>::quiet_NaN();
  w.data<float>()[8 * 150 + 149] = -std::numeric_limits<float>::infinity();
  std::vector<float> want(150, 0.0f);
  for (int64_t i = 0; i < w.numel(); ++i) {
    want[static_cast<size_t>(i % 150)] =
        std::max(want[static_cast<size_t>(i % 150)], std::fabs(w.data<float>()[i]));
  }
  for (int threads : {1, 2}) {
    ThreadCount scope(threads);
    std::vector<float> got(150, -1.0f);
    channel_abs_max(w, 1, got);
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
        << "threads " << threads;
  }
}

TEST(FakeQuant, RejectsBadScalesAndAxes) {
  const Tensor x = random_f32({4, 3}, 5, -1.0f, 1.0f);
  Tensor y(DType::kFloat32, x.shape());
  const auto expect_invalid = [&](const FakeQuantScales& s, const std::string& needle) {
    try {
      fake_quant(x, s, y);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const float zero[] = {0.0f};
  const float nan[] = {std::numeric_limits<float>::quiet_NaN()};
  const float three[] = {0.1f, 0.2f, 0.3f};
  expect_invalid({zero}, "finite and > 0");
  expect_invalid({nan}, "finite and > 0");
  expect_invalid({three, 0}, "expected 4 scales");
  expect_invalid({three, 2}, "channel axis");
  expect_invalid({std::span<const float>{}}, "at least one scale");
  Tensor wrong(DType::kFloat32, {3, 4});
  EXPECT_THROW(fake_quant(x, {three, 1}, wrong), Error);
}

}  // namespace
}  // namespace qforge::kernels
