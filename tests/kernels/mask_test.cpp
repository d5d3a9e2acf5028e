// One-bit masks and the fake quant's record (kernels/mask.h, fake_quant_linear_record): each bit
// against the rule it packs, on lengths around the 8-, 16- and 64-element boundaries and across
// task boundaries; the record's y, integers and pass mask against fake_quant_linear,
// quantize_linear and the straight-through estimator, special values included; these records
// and MaxPool's taps the same bits on 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/fake_quant.h"
#include "kernels/mask.h"
#include "kernels/pool_backward.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::random_f32;
using testing::ThreadCount;

const std::vector<int64_t> kLengths = {1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200, 16384 * 3 + 37};

std::vector<uint8_t> mask_of(int64_t n) {
  return std::vector<uint8_t>(mask_bytes(n), 0xA5);  // garbage that every bit must overwrite
}

// Values around the quantizer's boundaries for `scale`, and the special ones, mixed into x.
void plant_specials(Tensor& x, float scale) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> specials = {0.0f,
                                       -0.0f,
                                       127.5f * scale,
                                       127.4999f * scale,
                                       -128.5f * scale,
                                       -128.6f * scale,
                                       126.5f * scale,
                                       -127.5f * scale,
                                       1e30f,
                                       -1e30f,
                                       inf,
                                       -inf,
                                       std::nanf(""),
                                       0.5f * scale,
                                       -0.5f * scale,
                                       4e6f * scale,
                                       -4e6f * scale,
                                       255.5f * scale,
                                       254.5f * scale,
                                       -1.5f * scale};
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (i % 5 == 0) p[i] = specials[static_cast<size_t>(i / 5) % specials.size()];
  }
}

TEST(Mask, PositiveMaskIsYGreaterThanZero) {
  for (int64_t n : kLengths) {
    Tensor y = random_f32({n}, static_cast<uint32_t>(n), -1.0f, 1.0f);
    plant_specials(y, 0.01f);
    std::vector<uint8_t> mask = mask_of(n);
    positive_mask(y.data<float>(), n, mask.data());
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(mask_bit(mask.data(), i), y.data<float>()[i] > 0.0f) << "n " << n << " at " << i;
    }
    for (int64_t i = n; i < static_cast<int64_t>(mask.size()) * 8; ++i) {
      ASSERT_FALSE(mask_bit(mask.data(), i)) << "n " << n << ": bit " << i << " past the end";
    }
  }
}

TEST(Mask, MaskedGradientPassesDyWhereSetAndPositiveZeroElsewhere) {
  for (int64_t n : kLengths) {
    const Tensor y = random_f32({n}, static_cast<uint32_t>(n) + 1, -1.0f, 1.0f);
    Tensor dy = random_f32({n}, static_cast<uint32_t>(n) + 2, -1.0f, 1.0f);
    dy.data<float>()[0] = -0.0f;
    std::vector<uint8_t> mask = mask_of(n);
    positive_mask(y.data<float>(), n, mask.data());
    std::vector<float> dx(static_cast<size_t>(n), std::nanf(""));
    masked_gradient(dy.data<float>(), mask.data(), n, dx.data());
    for (int64_t i = 0; i < n; ++i) {
      const float want = y.data<float>()[i] > 0.0f ? dy.data<float>()[i] : 0.0f;
      ASSERT_EQ(std::memcmp(&dx[static_cast<size_t>(i)], &want, sizeof(float)), 0)
          << "n " << n << " at " << i;
    }
  }
}

TEST(Mask, PackFlagsPutsElementJAtBitJ) {
  uint8_t flags[64] = {};
  for (int j = 0; j < 64; ++j) {
    std::fill(flags, flags + 64, uint8_t{0});
    flags[j] = 1;
    EXPECT_EQ(pack_flags(flags, 64), uint64_t{1} << j) << j;
  }
  std::fill(flags, flags + 64, uint8_t{1});
  EXPECT_EQ(pack_flags(flags, 64), ~uint64_t{0});
  EXPECT_EQ(pack_flags(flags, 13), (uint64_t{1} << 13) - 1);
}

struct GridCase {
  std::string name;
  DType dtype;
  std::vector<float> scales;
  std::vector<int32_t> zero_points;
  int axis;
  Shape shape;
};

std::vector<GridCase> grid_cases() {
  std::vector<GridCase> cases;
  for (int64_t n : kLengths) {
    cases.push_back({"int8 per tensor, " + std::to_string(n), DType::kInt8, {0.02f}, {}, 0, {n}});
  }
  cases.push_back({"uint8 zero point 3", DType::kUInt8, {0.013f}, {3}, 0, {5, 1001}});
  cases.push_back({"int8 zero point -7", DType::kInt8, {0.03f}, {-7}, 0, {3, 333}});
  cases.push_back(
      {"int8 per channel, axis 1", DType::kInt8, {0.01f, 0.02f, 0.05f}, {}, 1, {4, 3, 37}});
  cases.push_back({"uint8 per channel, last axis",
                   DType::kUInt8,
                   {0.01f, 0.02f, 0.05f, 0.004f, 0.03f},
                   {0, 128, 255, 7, 100},
                   -1,
                   {13, 5}});
  return cases;
}

// The integer quantize_linear gives, the offset from the zero point of the unsaturated rounding
// of x / scale, and whether the straight-through estimator passes the gradient there.
bool passes(float x, float scale, int32_t zero_point, DType dtype) {
  const float lo = dtype == DType::kInt8 ? -128.0f : 0.0f;
  const float hi = dtype == DType::kInt8 ? 127.0f : 255.0f;
  const float q = std::nearbyint(x / scale) + static_cast<float>(zero_point);
  return q >= lo && q <= hi;
}

TEST(FakeQuantRecord, MatchesFakeQuantQuantizeLinearAndTheEstimator) {
  for (const GridCase& c : grid_cases()) {
    SCOPED_TRACE(c.name);
    Tensor x = random_f32(c.shape, 7, -4.0f, 4.0f);
    plant_specials(x, c.scales[0]);
    QuantGrid grid{c.scales, c.zero_points, c.axis, c.dtype};
    Tensor want_y(DType::kFloat32, c.shape);
    fake_quant_linear(x, grid, want_y);
    Tensor want_q(c.dtype, c.shape);
    quantize_linear(x, grid, want_q);
    for (int threads : {1, 2}) {
      ThreadCount count(threads);
      Tensor y(DType::kFloat32, c.shape);
      Tensor q(c.dtype, c.shape);
      std::vector<uint8_t> pass = mask_of(x.numel());
      fake_quant_linear_record(x, grid, y, q, pass.data());
      ASSERT_EQ(std::memcmp(y.raw(), want_y.raw(), y.nbytes()), 0) << threads << " threads";
      ASSERT_EQ(std::memcmp(q.raw(), want_q.raw(), q.nbytes()), 0) << threads << " threads";
      Tensor restored(DType::kFloat32, c.shape);
      dequantize_linear(q, grid, restored);
      ASSERT_EQ(std::memcmp(restored.raw(), y.raw(), y.nbytes()), 0) << threads << " threads";
      const int64_t channels = c.scales.size() == 1 ? 1 : static_cast<int64_t>(c.scales.size());
      int64_t inner = 1;
      if (channels > 1) {
        const int axis = c.axis < 0 ? c.axis + static_cast<int>(c.shape.size()) : c.axis;
        for (size_t d = static_cast<size_t>(axis) + 1; d < c.shape.size(); ++d) inner *= c.shape[d];
      }
      for (int64_t i = 0; i < x.numel(); ++i) {
        const auto k = static_cast<size_t>((i / inner) % channels);
        const int32_t zp = c.zero_points.empty() ? 0 : c.zero_points[k];
        ASSERT_EQ(mask_bit(pass.data(), i), passes(x.data<float>()[i], c.scales[k], zp, c.dtype))
            << "element " << i << " = " << x.data<float>()[i] << ", " << threads << " threads";
      }
      for (int64_t i = x.numel(); i < static_cast<int64_t>(pass.size()) * 8; ++i) {
        ASSERT_FALSE(mask_bit(pass.data(), i)) << "bit " << i << " past the end";
      }
    }
  }
}

// On the symmetric int8 grid the mask is fake_quant_backward's rule, so masked_gradient is that
// backward bit for bit.
TEST(FakeQuantRecord, MaskedGradientIsTheSymmetricBackward) {
  const float scale = 0.02f;
  Tensor x = random_f32({3, 16384 + 99}, 11, -4.0f, 4.0f);
  plant_specials(x, scale);
  const Tensor dy = random_f32(x.shape(), 12, -1.0f, 1.0f);
  const std::vector<float> scales = {scale};
  Tensor want(DType::kFloat32, x.shape());
  fake_quant_backward(x, dy, {scales, 0}, want);
  Tensor y(DType::kFloat32, x.shape());
  Tensor q(DType::kInt8, x.shape());
  std::vector<uint8_t> pass = mask_of(x.numel());
  fake_quant_linear_record(x, {scales, {}, 0, DType::kInt8}, y, q, pass.data());
  Tensor dx(DType::kFloat32, x.shape());
  masked_gradient(dy.data<float>(), pass.data(), x.numel(), dx.data<float>());
  EXPECT_EQ(std::memcmp(dx.raw(), want.raw(), dx.nbytes()), 0);
}

// Several tasks on 2 threads (so that ThreadSanitizer sees them run together): the masks, the
// fake quant's record and MaxPool's taps, each the same bits as on one thread.
TEST(Mask, RecordsAreTheSameBitsOnOneAndTwoThreads) {
  const int64_t n = 16384 * 5 + 77;
  Tensor x = random_f32({n}, 21, -3.0f, 3.0f);
  plant_specials(x, 0.02f);
  const Tensor dy = random_f32({n}, 22, -1.0f, 1.0f);
  const std::vector<float> scales = {0.02f};
  const QuantGrid grid{scales, {}, 0, DType::kInt8};
  PoolGeometry pool;
  pool.batch = 4;
  pool.channels = 8;
  pool.in_h = pool.in_w = 40;
  pool.out_h = pool.out_w = 20;
  pool.kernel_h = pool.kernel_w = 3;
  pool.stride_h = pool.stride_w = 2;
  pool.pad_top = pool.pad_left = pool.pad_bottom = pool.pad_right = 1;
  const Tensor px = random_f32({4 * 8 * 40 * 40}, 23, -1.0f, 1.0f);
  const Tensor pdy = random_f32({4 * 8 * 20 * 20}, 24, -1.0f, 1.0f);
  struct Run {
    std::vector<uint8_t> positive, pass, taps;
    std::vector<float> dx, y, pool_dx;
    std::vector<int8_t> q;
  };
  auto run = [&](int threads) {
    ThreadCount count(threads);
    Run r;
    r.positive = mask_of(n);
    positive_mask(x.data<float>(), n, r.positive.data());
    r.dx.assign(static_cast<size_t>(n), 0.0f);
    masked_gradient(dy.data<float>(), r.positive.data(), n, r.dx.data());
    Tensor y(DType::kFloat32, {n});
    Tensor q(DType::kInt8, {n});
    r.pass = mask_of(n);
    fake_quant_linear_record(x, grid, y, q, r.pass.data());
    r.y.assign(y.data<float>(), y.data<float>() + n);
    r.q.assign(q.data<int8_t>(), q.data<int8_t>() + n);
    r.taps.assign(static_cast<size_t>(pdy.numel()), 0);
    max_pool2d_taps(pool, px.data<float>(), r.taps.data());
    r.pool_dx.assign(static_cast<size_t>(px.numel()), 0.0f);
    max_pool2d_backward_from_taps(pool, r.taps.data(), pdy.data<float>(), r.pool_dx.data());
    return r;
  };
  const Run one = run(1);
  const Run two = run(2);
  EXPECT_EQ(one.positive, two.positive);
  EXPECT_EQ(std::memcmp(one.dx.data(), two.dx.data(), one.dx.size() * sizeof(float)), 0);
  EXPECT_EQ(one.pass, two.pass);
  EXPECT_EQ(std::memcmp(one.y.data(), two.y.data(), one.y.size() * sizeof(float)), 0);
  EXPECT_EQ(one.q, two.q);
  EXPECT_EQ(one.taps, two.taps);
  EXPECT_EQ(std::memcmp(one.pool_dx.data(), two.pool_dx.data(), one.pool_dx.size() * sizeof(float)),
            0);
}

}  // namespace
}  // namespace qforge::kernels
