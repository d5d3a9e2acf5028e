// Pooling backward: the float64 references against central finite differences (inputs with
// distinct values, so no difference crosses a change of maximum), ties in closed form, the
// float32 kernels against the references on awkward geometries, and the same bits on 1 and 2
// threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/pool_backward.h"
#include "kernels/reference/dense_backward_reference.h"
#include "tests/support/float_checks.h"
#include "tests/support/gradient_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::absolute;
using testing::expect_matches_reference;
using testing::expect_same_bits;
using testing::random_values;
using testing::ThreadCount;
using testing::to_double;

struct PoolCase {
  const char* name;
  int64_t batch, channels, in_h, in_w;
  int64_t kh, kw, sh, sw, dh, dw;
  int64_t pt, pl, pb, pr;
  bool ceil_mode;
};

// Output size as ONNX computes it; with ceil_mode a last window must start inside the input or
// the leading padding.
int64_t pooled_size(int64_t in, int64_t pad_begin, int64_t pad_end, int64_t kernel, int64_t stride,
                    int64_t dilation, bool ceil_mode) {
  const int64_t span = in + pad_begin + pad_end - ((kernel - 1) * dilation + 1);
  int64_t out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad_begin) --out;
  return out;
}

PoolGeometry geometry_of(const PoolCase& c) {
  PoolGeometry g;
  g.batch = c.batch;
  g.channels = c.channels;
  g.in_h = c.in_h;
  g.in_w = c.in_w;
  g.kernel_h = c.kh;
  g.kernel_w = c.kw;
  g.stride_h = c.sh;
  g.stride_w = c.sw;
  g.dilation_h = c.dh;
  g.dilation_w = c.dw;
  g.pad_top = c.pt;
  g.pad_left = c.pl;
  g.out_h = pooled_size(c.in_h, c.pt, c.pb, c.kh, c.sh, c.dh, c.ceil_mode);
  g.out_w = pooled_size(c.in_w, c.pl, c.pr, c.kw, c.sw, c.dw, c.ceil_mode);
  // Explicit padding as the forward counts it: with ceil_mode the trailing windows may reach
  // past pad_end, and those taps never count.
  g.pad_bottom = c.pb;
  g.pad_right = c.pr;
  return g;
}

size_t in_size(const PoolGeometry& g) {
  return static_cast<size_t>(g.batch * g.channels * g.in_h * g.in_w);
}
size_t out_size(const PoolGeometry& g) {
  return static_cast<size_t>(g.batch * g.channels * g.out_h * g.out_w);
}

// Distinct values at least 1/size apart, in random order: no central difference with a small
// step changes which tap is a window's maximum.
std::vector<float> distinct_values(size_t size, uint32_t seed) {
  std::vector<float> v(size);
  std::iota(v.begin(), v.end(), 0.0f);
  std::mt19937 rng(seed);
  std::shuffle(v.begin(), v.end(), rng);
  for (float& f : v) f = f / static_cast<float>(size) - 0.5f;
  return v;
}

const PoolCase kCases[] = {
    // name, batch, channels, in_h, in_w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, ceil_mode
    {"k2_stride2", 1, 3, 8, 8, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, false},
    {"k3_stride2_pad1", 3, 5, 13, 17, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, false},
    {"k3_stride1_overlapping", 1, 2, 13, 13, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, false},
    {"k3_stride2_ceil", 3, 2, 13, 14, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0, true},
    {"k3_stride2_pad1_ceil", 1, 3, 17, 12, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, true},
    {"asymmetric_pads", 3, 1, 13, 17, 3, 2, 2, 3, 1, 1, 2, 0, 1, 1, false},
    {"dilation2", 1, 3, 17, 13, 3, 3, 1, 2, 2, 2, 2, 1, 2, 1, false},
    {"k5_stride3_ceil_dilated", 3, 2, 31, 17, 5, 3, 3, 3, 1, 2, 2, 1, 2, 1, true},
    {"pool1d", 3, 7, 1, 127, 1, 3, 1, 2, 1, 1, 0, 1, 0, 1, false},
    {"wide_rows", 1, 2, 3, 300, 1, 3, 1, 1, 1, 1, 0, 1, 0, 1, false},
    {"window_covers_input", 1, 3, 3, 3, 5, 5, 1, 1, 1, 1, 1, 1, 1, 1, false},
};

TEST(PoolBackwardReference, MatchesFiniteDifferences) {
  for (const PoolCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const PoolGeometry g = geometry_of(c);
    std::vector<double> x = to_double(distinct_values(in_size(g), 3));
    const std::vector<double> dy = to_double(random_values(out_size(g), 4));
    std::vector<double> y(out_size(g)), dx(in_size(g));
    reference::max_pool2d_backward(g, x.data(), dy.data(), dx.data());
    auto max_loss = [&] {
      reference::max_pool2d_f64(g, x.data(), y.data());
      return testing::dot(y, dy);
    };
    const double step = 0.1 / static_cast<double>(x.size());
    testing::expect_matches_differences(dx, testing::central_differences(x, max_loss, step), 1e-8,
                                        "max dx");
    for (PadCounting counting : {PadCounting::kExcludePad, PadCounting::kIncludePad}) {
      reference::average_pool2d_backward(g, counting, dy.data(), dx.data());
      auto average_loss = [&] {
        reference::average_pool2d_f64(g, counting, x.data(), y.data());
        return testing::dot(y, dy);
      };
      testing::expect_matches_differences(dx, testing::central_differences(x, average_loss), 1e-8,
                                          "average dx");
    }
  }
}

// Ties (where differences are not defined): the whole gradient goes to the first maximum of a
// window in (kh, kw) order, as PyTorch sends it.
TEST(MaxPoolBackward, TiesGoToTheFirstMaximumInScanOrder) {
  PoolGeometry g;
  g.in_h = 3;
  g.in_w = 4;
  g.out_h = 2;
  g.out_w = 3;
  g.kernel_h = g.kernel_w = 2;
  // Row-major 3 × 4: the windows at (0, 0), (0, 1), (1, 2) hold two or more equal maxima.
  const std::vector<float> x = {5, 5, 5, 1,  //
                                5, 2, 3, 4,  //
                                0, 1, 4, 4};
  const std::vector<float> dy = {1, 10, 100, 1000, 10000, 100000};
  std::vector<float> dx(12, -1.0f);
  max_pool2d_backward(g, x.data(), dy.data(), dx.data());
  // First maxima per window: (0,0)→x[0], (0,1)→x[1], (0,2)→x[2], (1,0)→x[4], (1,1)→x[10],
  // (1,2)→x[7] (before x[10] and x[11], which tie with it).
  const std::vector<float> expected = {1, 10, 100, 0, 1000, 0, 0, 100000, 0, 0, 10000, 0};
  EXPECT_EQ(dx, expected);
  std::vector<double> ref(12);
  const std::vector<double> xd = to_double(x), dyd = to_double(dy);
  reference::max_pool2d_backward(g, xd.data(), dyd.data(), ref.data());
  EXPECT_EQ(ref, to_double(expected));
}

TEST(PoolBackward, MatchesReference) {
  for (const PoolCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const PoolGeometry g = geometry_of(c);
    // Rounded to a few levels so that many windows hold ties.
    std::vector<float> x = random_values(in_size(g), 7);
    for (float& v : x) v = std::round(v * 4.0f);
    const std::vector<float> dy = random_values(out_size(g), 8);
    const std::vector<double> xd = to_double(x), dyd = to_double(dy);
    std::vector<float> dx(in_size(g), NAN);
    std::vector<double> ref(in_size(g)), mag(in_size(g));
    max_pool2d_backward(g, x.data(), dy.data(), dx.data());
    reference::max_pool2d_backward(g, xd.data(), dyd.data(), ref.data());
    reference::max_pool2d_backward(g, xd.data(), absolute(dyd).data(), mag.data());
    expect_matches_reference(dx, ref, mag, "max dx");
    for (PadCounting counting : {PadCounting::kExcludePad, PadCounting::kIncludePad}) {
      std::fill(dx.begin(), dx.end(), NAN);
      average_pool2d_backward(g, counting, dy.data(), dx.data());
      reference::average_pool2d_backward(g, counting, dyd.data(), ref.data());
      reference::average_pool2d_backward(g, counting, absolute(dyd).data(), mag.data());
      expect_matches_reference(dx, ref, mag, "average dx");
    }
  }
}

TEST(PoolBackward, AccumulatesIntoDx) {
  const PoolGeometry g = geometry_of(kCases[1]);
  const std::vector<float> x = random_values(in_size(g), 9);
  const std::vector<float> dy = random_values(out_size(g), 10);
  const std::vector<float> start = random_values(in_size(g), 11);
  const std::vector<double> xd = to_double(x), dyd = to_double(dy);
  std::vector<double> ref(in_size(g)), mag(in_size(g));
  auto shift = [&] {
    for (size_t i = 0; i < ref.size(); ++i) {
      ref[i] += start[i];
      mag[i] += std::abs(start[i]);
    }
  };
  std::vector<float> added = start;
  max_pool2d_backward(g, x.data(), dy.data(), added.data(), GradMode::kAccumulate);
  reference::max_pool2d_backward(g, xd.data(), dyd.data(), ref.data());
  reference::max_pool2d_backward(g, xd.data(), absolute(dyd).data(), mag.data());
  shift();
  expect_matches_reference(added, ref, mag, "max dx accumulated");
  added = start;
  average_pool2d_backward(g, PadCounting::kIncludePad, dy.data(), added.data(),
                          GradMode::kAccumulate);
  reference::average_pool2d_backward(g, PadCounting::kIncludePad, dyd.data(), ref.data());
  reference::average_pool2d_backward(g, PadCounting::kIncludePad, absolute(dyd).data(), mag.data());
  shift();
  expect_matches_reference(added, ref, mag, "average dx accumulated");
}

TEST(GlobalAveragePoolBackward, SpreadsEachPlanesGradient) {
  for (int64_t plane_size : {1, 13, 49, 127}) {
    const int64_t planes = 3 * 17;
    const std::vector<float> dy = random_values(static_cast<size_t>(planes), 12);
    std::vector<float> dx(static_cast<size_t>(planes * plane_size), NAN);
    global_average_pool_backward(dy.data(), planes, plane_size, dx.data());
    for (int64_t p = 0; p < planes; ++p) {
      for (int64_t i = 0; i < plane_size; ++i) {
        ASSERT_EQ(dx[static_cast<size_t>(p * plane_size + i)],
                  dy[static_cast<size_t>(p)] / static_cast<float>(plane_size));
      }
    }
    // The gradient of the mean, by central differences in float64 (the mean is linear).
    std::vector<double> x = to_double(random_values(static_cast<size_t>(plane_size), 13));
    auto loss = [&] {
      double sum = 0.0;
      for (double v : x) sum += v;
      return sum / static_cast<double>(plane_size) * dy[0];
    };
    const std::vector<double> numeric = testing::central_differences(x, loss);
    testing::expect_matches_differences(
        std::vector<double>(x.size(), static_cast<double>(dy[0]) / static_cast<double>(plane_size)),
        numeric, 1e-8, "global average dx");
    std::vector<float> added(dx.size(), 1.0f);
    global_average_pool_backward(dy.data(), planes, plane_size, added.data(),
                                 GradMode::kAccumulate);
    for (size_t i = 0; i < dx.size(); ++i) ASSERT_EQ(added[i], 1.0f + dx[i]);
  }
}

// The taps a training forward records give max_pool2d_backward's gradient bit for bit, ties
// (values rounded to a few levels), NaN, −inf windows and accumulation included, on 1 and 2
// threads.
TEST(MaxPoolBackward, FromRecordedTapsIsTheBackwardBitForBit) {
  for (const PoolCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const PoolGeometry g = geometry_of(c);
    ASSERT_TRUE(max_pool2d_has_taps(g));
    std::vector<float> x = random_values(in_size(g), 16);
    for (size_t i = 0; i < x.size(); ++i) {
      x[i] = std::round(x[i] * 4.0f);
      if (i % 17 == 3) x[i] = NAN;
      if (i % 13 == 5) x[i] = -INFINITY;
    }
    const std::vector<float> dy = random_values(out_size(g), 17);
    const std::vector<float> start = random_values(in_size(g), 18);
    for (GradMode mode : {GradMode::kOverwrite, GradMode::kAccumulate}) {
      std::vector<float> want = start;
      max_pool2d_backward(g, x.data(), dy.data(), want.data(), mode);
      for (int threads : {1, 2}) {
        ThreadCount scope(threads);
        std::vector<uint8_t> taps(out_size(g), 0xEE);
        max_pool2d_taps(g, x.data(), taps.data());
        std::vector<float> got = start;
        max_pool2d_backward_from_taps(g, taps.data(), dy.data(), got.data(), mode);
        expect_same_bits(got.data(), want.data(), want.size(), "dx from taps");
      }
    }
  }
  // A window whose dilated rows all fall in the padding (the output row in the middle): its
  // gradient goes nowhere, with or without taps.
  PoolGeometry empty_row;
  empty_row.batch = 2;
  empty_row.channels = 3;
  empty_row.in_h = 2;
  empty_row.in_w = 5;
  empty_row.kernel_h = empty_row.kernel_w = 2;
  empty_row.dilation_h = 3;
  empty_row.pad_top = empty_row.pad_bottom = 2;
  empty_row.out_h = 3;
  empty_row.out_w = 4;
  const std::vector<float> x = random_values(in_size(empty_row), 19);
  const std::vector<float> dy = random_values(out_size(empty_row), 20);
  std::vector<float> want(in_size(empty_row), NAN), got(in_size(empty_row), NAN);
  max_pool2d_backward(empty_row, x.data(), dy.data(), want.data());
  std::vector<uint8_t> taps(out_size(empty_row), 0xEE);
  max_pool2d_taps(empty_row, x.data(), taps.data());
  for (int64_t p = 0; p < 6; ++p) {
    for (int64_t ow = 0; ow < 4; ++ow)
      EXPECT_EQ(taps[static_cast<size_t>(p * 12 + 4 + ow)], kNoTap);
  }
  max_pool2d_backward_from_taps(empty_row, taps.data(), dy.data(), got.data());
  expect_same_bits(got.data(), want.data(), want.size(), "dx with an empty window");
  PoolGeometry too_wide;
  too_wide.in_w = too_wide.kernel_w = 256;
  EXPECT_FALSE(max_pool2d_has_taps(too_wide));
}

TEST(PoolBackward, SameBitsForAnyThreadCount) {
  for (const PoolCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const PoolGeometry g = geometry_of(c);
    const std::vector<float> x = random_values(in_size(g), 14);
    const std::vector<float> dy = random_values(out_size(g), 15);
    std::vector<float> runs[2][3];
    for (int threads : {1, 2}) {
      ThreadCount scope(threads);
      auto& r = runs[threads - 1];
      for (auto& v : r) v.assign(in_size(g), NAN);
      max_pool2d_backward(g, x.data(), dy.data(), r[0].data());
      average_pool2d_backward(g, PadCounting::kExcludePad, dy.data(), r[1].data());
      average_pool2d_backward(g, PadCounting::kIncludePad, dy.data(), r[2].data());
    }
    for (int i = 0; i < 3; ++i) {
      expect_same_bits(runs[0][i].data(), runs[1][i].data(), runs[0][i].size(), "dx");
    }
  }
}

}  // namespace
}  // namespace qforge::kernels
