// The element-wise kernels against their naive references (kernels/reference) on awkward shapes
// and every broadcast layout, the accuracy of the vectorised math against the C library, and
// the determinism contract: an element's result never depends on chunking or thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/reference/elementwise_reference.h"
#include "kernels/vector_math.h"
#include "runtime/threads.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

Tensor random_f32(const Shape& shape, uint32_t seed, float lo = -3.0f, float hi = 3.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  Tensor t(DType::kFloat32, shape);
  for (float& v : t.span<float>()) v = dist(rng);
  return t;
}

template <class T>
Tensor random_int(const Shape& shape, uint32_t seed, int64_t lo, int64_t hi) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> dist(lo, hi);
  Tensor t(dtype_of<T>(), shape);
  for (T& v : t.span<T>()) v = static_cast<T>(dist(rng));
  return t;
}

Tensor random_bool(const Shape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  Tensor t(DType::kBool, shape);
  auto* p = static_cast<uint8_t*>(t.raw());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<uint8_t>(rng() & 1U);
  return t;
}

void expect_same(const Tensor& actual, const Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.dtype(), expected.dtype()) << what;
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  EXPECT_EQ(std::memcmp(actual.raw(), expected.raw(), actual.nbytes()), 0) << what;
}

void expect_close(const Tensor& actual, const Tensor& expected, double atol, double rtol,
                  const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  const float* a = actual.data<float>();
  const float* e = expected.data<float>();
  int failures = 0;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    const bool both_nan = std::isnan(a[i]) && std::isnan(e[i]);
    if (!both_nan && !(std::abs(double{a[i]} - e[i]) <= atol + rtol * std::abs(double{e[i]}))) {
      if (++failures <= 5) {
        ADD_FAILURE() << what << ": element " << i << " is " << a[i] << ", expected " << e[i];
      }
    }
  }
  EXPECT_EQ(failures, 0) << what;
}

Tensor run_unary(UnaryOp op, const UnaryParams& p, const Tensor& x) {
  Tensor y(x.dtype(), x.shape());
  unary(op, p, x, y);
  return y;
}

Tensor run_binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  const std::vector<Shape> shapes = {a.shape(), b.shape()};
  const BroadcastPlan plan = plan_broadcast(shapes);
  Tensor y(binary_outputs_bool(op) ? DType::kBool : a.dtype(), plan.out_shape);
  binary(op, plan, a, b, y);
  return y;
}

using testing::ThreadCount;

// Vectorised math ------------------------------------------------------------------------------

TEST(ElementwiseMath, ErfWithin1e7OfLibm) {
  double worst = 0;
  for (float x = -6.0f; x <= 6.0f; x += 1.0f / 4096) {
    worst = std::max(worst, std::abs(double{erf_approx(x)} - std::erf(double{x})));
  }
  EXPECT_LE(worst, 1e-7);
  EXPECT_EQ(erf_approx(0.0f), 0.0f);
  EXPECT_EQ(erf_approx(std::numeric_limits<float>::infinity()), 1.0f);
  EXPECT_EQ(erf_approx(-std::numeric_limits<float>::infinity()), -1.0f);
  EXPECT_TRUE(std::isnan(erf_approx(std::numeric_limits<float>::quiet_NaN())));
}

TEST(ElementwiseMath, TanhAndExpWithinFewUlpOfLibm) {
  double tanh_worst = 0;
  double exp_worst = 0;
  for (float x = -12.0f; x <= 12.0f; x += 1.0f / 2048) {
    const double t = std::tanh(double{x});
    tanh_worst = std::max(tanh_worst, std::abs(tanh_approx(x) - t) / std::max(std::abs(t), 1e-30));
    const double e = std::exp(double{x});
    exp_worst = std::max(exp_worst, std::abs(exp_approx(x) - e) / e);
  }
  EXPECT_LE(tanh_worst, 2e-7);
  EXPECT_LE(exp_worst, 1e-7);
  EXPECT_EQ(tanh_approx(0.0f), 0.0f);
  EXPECT_FLOAT_EQ(tanh_approx(1e-6f), 1e-6f);
  EXPECT_EQ(tanh_approx(std::numeric_limits<float>::infinity()), 1.0f);
  EXPECT_TRUE(std::isnan(tanh_approx(std::numeric_limits<float>::quiet_NaN())));
}

// Unary ----------------------------------------------------------------------------------------

struct UnaryCase {
  UnaryOp op;
  const char* name;
  double atol;
  double rtol;
};

TEST(ElementwiseUnary, FloatOpsMatchReferenceOnAwkwardShapes) {
  const UnaryCase cases[] = {
      {UnaryOp::kRelu, "Relu", 0, 0},
      {UnaryOp::kLeakyRelu, "LeakyRelu", 0, 0},
      {UnaryOp::kElu, "Elu", 1e-7, 1e-6},
      {UnaryOp::kSigmoid, "Sigmoid", 2e-7, 1e-6},
      {UnaryOp::kHardSigmoid, "HardSigmoid", 1e-7, 1e-6},
      {UnaryOp::kHardSwish, "HardSwish", 1e-7, 1e-6},
      {UnaryOp::kErf, "Erf", 1e-7, 0},
      {UnaryOp::kTanh, "Tanh", 1e-7, 2e-7},
      {UnaryOp::kSqrt, "Sqrt", 0, 0},
      {UnaryOp::kNeg, "Neg", 0, 0},
      {UnaryOp::kClip, "Clip", 0, 0},
      {UnaryOp::kExp, "Exp", 0, 1e-6},
      {UnaryOp::kLog, "Log", 1e-7, 1e-6},
      {UnaryOp::kReciprocal, "Reciprocal", 0, 1e-7},
      {UnaryOp::kAbs, "Abs", 0, 0},
      {UnaryOp::kSin, "Sin", 1e-7, 2e-7},
      {UnaryOp::kCos, "Cos", 1e-7, 2e-7},
      {UnaryOp::kFloor, "Floor", 0, 0},
      {UnaryOp::kCeil, "Ceil", 0, 0},
      {UnaryOp::kRound, "Round", 0, 0},
      {UnaryOp::kSign, "Sign", 0, 0},
      {UnaryOp::kSoftplus, "Softplus", 2e-7, 1e-6},
      {UnaryOp::kGeluErf, "GeluErf", 2e-7, 1e-6},
      {UnaryOp::kSilu, "Silu", 2e-7, 1e-6},
      {UnaryOp::kGeluTanh, "GeluTanh", 2e-7, 1e-6},
  };
  UnaryParams p;
  p.alpha = 0.3f;
  p.beta = 0.45f;
  p.min = -0.7f;
  p.max = 1.3f;
  const Shape shapes[] = {{}, {1}, {7}, {3, 13}, {2, 3, 17, 7}, {1, 3, 1, 5, 1, 7}, {40000}};
  uint32_t seed = 1;
  for (const UnaryCase& c : cases) {
    for (const Shape& shape : shapes) {
      const float lo = c.op == UnaryOp::kSqrt                                  ? 0.0f
                       : c.op == UnaryOp::kLog || c.op == UnaryOp::kReciprocal ? 0.01f
                                                                               : -6.0f;
      const Tensor x = random_f32(shape, seed++, lo, 6.0f);
      const std::string what = std::string(c.name) + " " + shape_str(shape);
      expect_close(run_unary(c.op, p, x), reference::unary(c.op, p, x), c.atol, c.rtol, what);
    }
  }
}

TEST(ElementwiseUnary, HardSwishAndHardSigmoidHitTheirKnees) {
  const Tensor x = Tensor::from_vector<float>({6}, {-4.0f, -3.0f, 0.0f, 1.5f, 3.0f, 5.0f});
  UnaryParams p;
  p.alpha = 0.2f;
  p.beta = 0.5f;
  EXPECT_EQ(run_unary(UnaryOp::kHardSwish, p, x).to_float_vector(),
            (std::vector<float>{-0.0f, -0.0f, 0.0f, 1.125f, 3.0f, 5.0f}));
  EXPECT_EQ(run_unary(UnaryOp::kHardSigmoid, p, x).to_float_vector(),
            (std::vector<float>{0.0f, 0.0f, 0.5f, 0.8f, 1.0f, 1.0f}));
}

TEST(ElementwiseUnary, IntegerReluNegClipAbsSignMatchReference) {
  UnaryParams p;
  p.int_min = -5;
  p.int_max = 9;
  for (UnaryOp op :
       {UnaryOp::kRelu, UnaryOp::kNeg, UnaryOp::kClip, UnaryOp::kAbs, UnaryOp::kSign}) {
    const Tensor a = random_int<int64_t>({3, 17}, 11, -20, 20);
    expect_same(run_unary(op, p, a), reference::unary(op, p, a), "int64");
    const Tensor b = random_int<int32_t>({13}, 12, -20, 20);
    expect_same(run_unary(op, p, b), reference::unary(op, p, b), "int32");
    const Tensor c = random_int<int8_t>({7}, 13, -20, 20);
    expect_same(run_unary(op, p, c), reference::unary(op, p, c), "int8");
  }
  EXPECT_FALSE(unary_supports(UnaryOp::kSigmoid, DType::kInt64));
  EXPECT_FALSE(unary_supports(UnaryOp::kRelu, DType::kBool));
}

TEST(ElementwiseUnary, ResultsIndependentOfChunkingAndThreads) {
  // Every element computed in a long vectorised run equals the same element computed alone
  // (scalar path), and 1 thread gives the bits of many.
  const Tensor x = random_f32({3 * 16384 + 17}, 5, -9.0f, 9.0f);
  for (UnaryOp op :
       {UnaryOp::kErf, UnaryOp::kTanh, UnaryOp::kSigmoid, UnaryOp::kElu, UnaryOp::kHardSwish,
        UnaryOp::kGeluErf, UnaryOp::kSilu, UnaryOp::kExp, UnaryOp::kSoftplus, UnaryOp::kGeluTanh,
        UnaryOp::kSin, UnaryOp::kCos, UnaryOp::kRound}) {
    UnaryParams p;
    p.alpha = 1.0f;
    const Tensor many = run_unary(op, p, x);
    Tensor one_thread;
    {
      ThreadCount threads(1);
      one_thread = run_unary(op, p, x);
    }
    expect_same(one_thread, many, "thread count");
    const float* xs = x.data<float>();
    const float* ys = many.data<float>();
    int mismatches = 0;
    for (int64_t i = 0; i < x.numel(); i += 97) {
      float alone = 0;
      unary_f32(op, p, xs + i, &alone, 1);
      mismatches += std::memcmp(&alone, ys + i, sizeof(float)) != 0;
    }
    EXPECT_EQ(mismatches, 0) << "op " << static_cast<int>(op);
  }
}

// Broadcasting plans ---------------------------------------------------------------------------

TEST(ElementwiseBroadcast, PlansRecogniseTheFastLayouts) {
  auto kind = [](Shape a, Shape b) {
    const std::vector<Shape> shapes = {a, b};
    return plan_broadcast(shapes);
  };
  EXPECT_EQ(kind({2, 3, 4}, {2, 3, 4}).kind, BroadcastKind::kSame);
  EXPECT_EQ(kind({2, 3, 4}, {}).kind, BroadcastKind::kScalar);
  EXPECT_EQ(kind({1}, {2, 3, 4}).kind, BroadcastKind::kScalar);
  const BroadcastPlan channel = kind({2, 16, 5, 7}, {1, 16, 1, 1});
  EXPECT_EQ(channel.kind, BroadcastKind::kChannel);
  EXPECT_EQ(channel.channels, 16);
  EXPECT_EQ(channel.inner, 35);
  EXPECT_EQ(kind({16, 1, 1}, {2, 16, 5, 7}).kind, BroadcastKind::kChannel);
  EXPECT_EQ(kind({1, 16, 5, 7}, {16, 1, 1}).kind, BroadcastKind::kChannel);
  const BroadcastPlan row = kind({2, 49, 96}, {96});
  EXPECT_EQ(row.kind, BroadcastKind::kRow);
  EXPECT_EQ(row.channels, 96);
  EXPECT_EQ(kind({7, 1}, {1, 13}).kind, BroadcastKind::kGeneral);
  // Dims that broadcast alike merge: [2,3,4,5] against [1,1,4,5] is one row broadcast.
  const BroadcastPlan merged = kind({2, 3, 4, 5}, {1, 1, 4, 5});
  EXPECT_EQ(merged.kind, BroadcastKind::kRow);
  EXPECT_EQ(merged.dims, (Shape{6, 20}));
  EXPECT_FALSE(broadcast_shape(std::vector<Shape>{{2, 3}, {4}}).has_value());
  EXPECT_EQ(*broadcast_shape(std::vector<Shape>{{0}, {1}}), (Shape{0}));
}

struct ShapePair {
  Shape a;
  Shape b;
};

const ShapePair kBroadcastShapes[] = {
    {{}, {}},
    {{7}, {7}},
    {{3, 13}, {}},
    {{1}, {3, 13}},
    {{2, 5, 3, 7}, {1, 5, 1, 1}},
    {{5, 1, 1}, {2, 5, 3, 7}},
    {{2, 3, 17}, {17}},
    {{17}, {2, 3, 17}},
    {{7, 1}, {1, 13}},
    {{1, 3, 1, 5, 1, 7}, {2, 1, 4, 1, 6, 1}},
    {{2, 1, 4, 5}, {3, 1, 5}},
    {{4, 40, 300}, {4, 1, 300}},  // large enough to split into parallel chunks
    {{8, 64, 100}, {64, 1}},
    {{3, 0, 2}, {1, 2}},
};

TEST(ElementwiseBinary, FloatOpsMatchReferenceForEveryBroadcastLayout) {
  const BinaryOp ops[] = {BinaryOp::kAdd, BinaryOp::kSub,   BinaryOp::kMul,     BinaryOp::kDiv,
                          BinaryOp::kPow, BinaryOp::kEqual, BinaryOp::kGreater, BinaryOp::kLess,
                          BinaryOp::kMax, BinaryOp::kMin,   BinaryOp::kPRelu};
  uint32_t seed = 100;
  for (const ShapePair& s : kBroadcastShapes) {
    for (BinaryOp op : ops) {
      const bool pow = op == BinaryOp::kPow;
      const Tensor a = random_f32(s.a, seed++, pow ? 0.1f : -3.0f, 3.0f);
      Tensor b = random_f32(s.b, seed++, pow ? -2.0f : 0.5f, 3.0f);
      if (op == BinaryOp::kEqual) b = random_f32(s.b, 1, -3.0f, 3.0f);
      const std::string what = "op " + std::to_string(static_cast<int>(op)) + " " + shape_str(s.a) +
                               " " + shape_str(s.b);
      if (binary_outputs_bool(op)) {
        expect_same(run_binary(op, a, a), reference::binary(op, a, a), what);
        expect_same(run_binary(op, a, b), reference::binary(op, a, b), what);
      } else {
        expect_close(run_binary(op, a, b), reference::binary(op, a, b), 0, pow ? 2e-7 : 0, what);
        expect_close(run_binary(op, b, a), reference::binary(op, b, a), 0, pow ? 2e-7 : 0, what);
      }
    }
  }
}

// Max and Min propagate NaN from either input (ONNX Runtime, torch.maximum); the comparisons
// are false against NaN.
TEST(ElementwiseBinary, MaxMinAndComparisonsWithNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor a = Tensor::from_vector<float>({4}, {1.0f, nan, -2.0f, 3.0f});
  const Tensor b = Tensor::from_vector<float>({4}, {2.0f, 0.0f, nan, 3.0f});
  const std::vector<float> max = run_binary(BinaryOp::kMax, a, b).to_float_vector();
  const std::vector<float> min = run_binary(BinaryOp::kMin, a, b).to_float_vector();
  EXPECT_EQ(max[0], 2.0f);
  EXPECT_TRUE(std::isnan(max[1]) && std::isnan(max[2]));
  EXPECT_EQ(max[3], 3.0f);
  EXPECT_EQ(min[0], 1.0f);
  EXPECT_TRUE(std::isnan(min[1]) && std::isnan(min[2]));
  EXPECT_EQ(run_binary(BinaryOp::kGreater, a, b).to_int64_vector(),
            (std::vector<int64_t>{0, 0, 0, 0}));
  EXPECT_EQ(run_binary(BinaryOp::kLess, a, b).to_int64_vector(),
            (std::vector<int64_t>{1, 0, 0, 0}));
}

TEST(ElementwiseBinary, PowSpecialExponentsMatchLibm) {
  const Tensor a = random_f32({3, 17}, 7, 0.1f, 4.0f);
  for (float e : {2.0f, 3.0f, 0.5f, -0.5f, 1.0f, -1.0f, 1.7f}) {
    const Tensor b = Tensor::scalar_f32(e);
    const Tensor y = run_binary(BinaryOp::kPow, a, b);
    for (int64_t i = 0; i < a.numel(); ++i) {
      const double expected = std::pow(double{a.data<float>()[i]}, double{e});
      EXPECT_NEAR(y.data<float>()[i], expected, 3e-7 * std::abs(expected)) << "exponent " << e;
    }
  }
  // A float base with an int64 exponent (torch exports x ** 2 this way too).
  const Tensor y = run_binary(BinaryOp::kPow, a, Tensor::scalar_i64(2));
  expect_same(y, run_binary(BinaryOp::kPow, a, Tensor::scalar_f32(2.0f)), "int64 exponent");
}

TEST(ElementwiseBinary, IntegerOpsMatchReferenceWithCAndPythonSemantics) {
  uint32_t seed = 300;
  for (const ShapePair& s : kBroadcastShapes) {
    const Tensor a = random_int<int64_t>(s.a, seed++, -50, 50);
    Tensor b = random_int<int64_t>(s.b, seed++, 1, 9);
    // Negative divisors too, never zero.
    for (int64_t& v : b.span<int64_t>()) v = (v % 2 == 0) ? -v : v;
    for (BinaryOp op : {BinaryOp::kAdd, BinaryOp::kSub, BinaryOp::kMul, BinaryOp::kDiv,
                        BinaryOp::kMod, BinaryOp::kFmod, BinaryOp::kEqual, BinaryOp::kGreater,
                        BinaryOp::kLess, BinaryOp::kMax, BinaryOp::kMin}) {
      const std::string what = "op " + std::to_string(static_cast<int>(op)) + " " + shape_str(s.a) +
                               " " + shape_str(s.b);
      expect_same(run_binary(op, a, b), reference::binary(op, a, b), what);
    }
    const Tensor a32 = random_int<int32_t>(s.a, seed++, -50, 50);
    const Tensor b32 = random_int<int32_t>(s.b, seed++, 1, 9);
    expect_same(run_binary(BinaryOp::kMod, a32, b32), reference::binary(BinaryOp::kMod, a32, b32),
                "int32 Mod");
  }
  // The cases the semantics differ on, spelled out.
  const Tensor a = Tensor::from_vector<int64_t>({4}, {7, -7, 7, -7});
  const Tensor b = Tensor::from_vector<int64_t>({4}, {2, 2, -2, -2});
  EXPECT_EQ(run_binary(BinaryOp::kDiv, a, b).to_int64_vector(),
            (std::vector<int64_t>{3, -3, -3, 3}));
  EXPECT_EQ(run_binary(BinaryOp::kMod, a, b).to_int64_vector(),
            (std::vector<int64_t>{1, 1, -1, -1}));
  EXPECT_EQ(run_binary(BinaryOp::kFmod, a, b).to_int64_vector(),
            (std::vector<int64_t>{1, -1, 1, -1}));
  const Tensor base = Tensor::from_vector<int64_t>({5}, {3, -2, 2, 1, -1});
  const Tensor exp = Tensor::from_vector<int64_t>({5}, {4, 3, -1, -5, -3});
  EXPECT_EQ(run_binary(BinaryOp::kPow, base, exp).to_int64_vector(),
            (std::vector<int64_t>{81, -8, 0, 1, -1}));
}

TEST(ElementwiseBinary, FloatModFollowsDivisorSignAndFmodDividendSign) {
  const Tensor a = Tensor::from_vector<float>({4}, {7.5f, -7.5f, 7.5f, -7.5f});
  const Tensor b = Tensor::from_vector<float>({4}, {2.0f, 2.0f, -2.0f, -2.0f});
  EXPECT_EQ(run_binary(BinaryOp::kMod, a, b).to_float_vector(),
            (std::vector<float>{1.5f, 0.5f, -0.5f, -1.5f}));
  EXPECT_EQ(run_binary(BinaryOp::kFmod, a, b).to_float_vector(),
            (std::vector<float>{1.5f, -1.5f, 1.5f, -1.5f}));
  expect_same(run_binary(BinaryOp::kMod, a, b), reference::binary(BinaryOp::kMod, a, b), "Mod");
}

TEST(ElementwiseBinary, IntegerDivisionByZeroIsInvalid) {
  const Tensor a = Tensor::from_vector<int64_t>({3}, {1, 2, 3});
  const Tensor b = Tensor::from_vector<int64_t>({3}, {1, 0, 3});
  try {
    run_binary(BinaryOp::kDiv, a, b);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_EQ(std::string(e.what()), "expected nonzero integer divisors, got 0");
  }
  EXPECT_THROW(run_binary(BinaryOp::kMod, a, b), Error);
}

TEST(ElementwiseBinary, EqualOnBoolAndInt8) {
  const Tensor a = random_bool({3, 13}, 1);
  const Tensor b = random_bool({13}, 2);
  expect_same(run_binary(BinaryOp::kEqual, a, b), reference::binary(BinaryOp::kEqual, a, b),
              "bool");
  const Tensor c = random_int<int8_t>({2, 7}, 3, -2, 2);
  const Tensor d = random_int<int8_t>({2, 1}, 4, -2, 2);
  expect_same(run_binary(BinaryOp::kEqual, c, d), reference::binary(BinaryOp::kEqual, c, d),
              "int8");
}

// GreaterOrEqual and LessOrEqual on floats (with ties) and integers; And and Or on masks.
TEST(ElementwiseBinary, OrEqualComparisonsAndLogicalOpsMatchReference) {
  Tensor x = random_f32({3, 17}, 5, -2.0f, 2.0f);
  for (int64_t i = 0; i < x.numel(); ++i) {
    x.data<float>()[i] = std::round(x.data<float>()[i] * 2.0f) / 2.0f;  // ties with y
  }
  Tensor y = random_f32({17}, 6, -2.0f, 2.0f);
  for (int64_t i = 0; i < y.numel(); ++i) {
    y.data<float>()[i] = std::round(y.data<float>()[i] * 2.0f) / 2.0f;
  }
  const Tensor m = random_int<int64_t>({2, 5}, 7, -3, 3);
  const Tensor n = random_int<int64_t>({5}, 8, -3, 3);
  for (BinaryOp op : {BinaryOp::kGreaterOrEqual, BinaryOp::kLessOrEqual}) {
    expect_same(run_binary(op, x, y), reference::binary(op, x, y), "float");
    expect_same(run_binary(op, m, n), reference::binary(op, m, n), "int64");
  }
  const Tensor a = random_bool({3, 13}, 9);
  const Tensor b = random_bool({13}, 10);
  for (BinaryOp op : {BinaryOp::kAnd, BinaryOp::kOr}) {
    expect_same(run_binary(op, a, b), reference::binary(op, a, b), "bool");
  }
  EXPECT_FALSE(binary_supports(BinaryOp::kAnd, DType::kInt64, DType::kInt64));
}

TEST(ElementwiseBinary, ResultsIndependentOfThreadCount) {
  const Tensor a = random_f32({4, 64, 300}, 1);
  const Tensor b = random_f32({64, 1}, 2, 0.5f, 2.0f);
  const Tensor many = run_binary(BinaryOp::kDiv, a, b);
  ThreadCount threads(1);
  expect_same(run_binary(BinaryOp::kDiv, a, b), many, "Div");
}

// Where, Not, Cast -----------------------------------------------------------------------------

TEST(ElementwiseWhere, MatchesReferenceBroadcastingThreeWays) {
  struct Case {
    Shape c, x, y;
  };
  const Case cases[] = {{{3, 13}, {3, 13}, {3, 13}},
                        {{1, 49, 49}, {}, {64, 1, 1}},
                        {{7, 1}, {1, 13}, {7, 13}},
                        {{2, 1, 3, 1, 5, 1}, {1, 4, 1, 6, 1, 7}, {1}},
                        {{}, {17}, {3, 1}}};
  uint32_t seed = 500;
  for (const Case& c : cases) {
    const Tensor cond = random_bool(c.c, seed++);
    const std::vector<Shape> shapes = {c.c, c.x, c.y};
    const BroadcastPlan plan = plan_broadcast(shapes);
    {
      const Tensor x = random_f32(c.x, seed++);
      const Tensor y = random_f32(c.y, seed++);
      Tensor out(DType::kFloat32, plan.out_shape);
      where(plan, cond, x, y, out);
      expect_same(out, reference::where(cond, x, y), "float " + shape_str(c.c));
    }
    {
      const Tensor x = random_int<int64_t>(c.x, seed++, -9, 9);
      const Tensor y = random_int<int64_t>(c.y, seed++, -9, 9);
      Tensor out(DType::kInt64, plan.out_shape);
      where(plan, cond, x, y, out);
      expect_same(out, reference::where(cond, x, y), "int64 " + shape_str(c.c));
    }
    {
      const Tensor x = random_bool(c.x, seed++);
      const Tensor y = random_bool(c.y, seed++);
      Tensor out(DType::kBool, plan.out_shape);
      where(plan, cond, x, y, out);
      expect_same(out, reference::where(cond, x, y), "bool " + shape_str(c.c));
    }
  }
}

TEST(ElementwiseNot, FlipsBools) {
  const Tensor x = random_bool({3, 17}, 9);
  Tensor y(DType::kBool, x.shape());
  logical_not(x, y);
  expect_same(y, reference::logical_not(x), "not");
}

TEST(ElementwiseCast, EveryDtypePairMatchesReference) {
  const DType dtypes[] = {DType::kFloat32, DType::kInt64, DType::kInt32,
                          DType::kInt8,    DType::kUInt8, DType::kBool};
  Tensor f = Tensor::from_vector<float>(
      {13}, {0.0f, -0.0f, 1.7f, -1.7f, 2.5f, -2.5f, 127.9f, 300.0f, -300.0f, 3e9f, -3e9f, 1e19f,
             std::numeric_limits<float>::quiet_NaN()});
  const Tensor sources[] = {f,
                            Tensor::from_vector<int64_t>({5}, {0, 1, -1, 300, -(int64_t{1} << 40)}),
                            Tensor::from_vector<int32_t>({4}, {0, 7, -7, 100000}),
                            Tensor::from_vector<int8_t>({3}, {0, -128, 127}),
                            Tensor::from_vector<uint8_t>({3}, {0, 1, 255}),
                            random_bool({7}, 3)};
  for (const Tensor& src : sources) {
    for (DType to : dtypes) {
      Tensor y(to, src.shape());
      cast(src, y);
      expect_same(y, reference::cast(src, to),
                  std::string(dtype_name(src.dtype())) + " to " + dtype_name(to));
    }
  }
  // Saturation and NaN, spelled out.
  Tensor i64(DType::kInt64, f.shape());
  cast(f, i64);
  EXPECT_EQ(i64.to_int64_vector()[11], std::numeric_limits<int64_t>::max());
  EXPECT_EQ(i64.to_int64_vector()[12], 0);
  Tensor u8(DType::kUInt8, f.shape());
  cast(f, u8);
  EXPECT_EQ(u8.to_int64_vector()[8], 0);
  EXPECT_EQ(u8.to_int64_vector()[7], 255);
}

}  // namespace
}  // namespace qforge::kernels
