// Observers against naive recomputation: running and per-channel max, SmoothQuant's last-axis max,
// and the histogram's exactness contract: the final counts depend only on the values seen, not on
// batch order, batch size or how observers were split and merged.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/error.h"
#include "quant/observers.h"
#include "runtime/threads.h"
#include "tests/support/random.h"

namespace qforge::quant {
namespace {

using kernels::DType;
using kernels::Shape;
using kernels::Tensor;

using testing::random_f32;

// Values spread over many binades, with some exact zeros, so that ranges grow often.
std::vector<float> wide_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-20, 12);
  std::vector<float> v(n);
  for (float& x : v) x = (rng() % 17 == 0) ? 0.0f : std::ldexp(normal(rng), exponent(rng));
  return v;
}

Tensor wrap_values(std::vector<float>& v, size_t begin, size_t end) {
  return Tensor::wrap(DType::kFloat32, {static_cast<int64_t>(end - begin)}, v.data() + begin);
}

TEST(ObserverMax, PerTensorRunningMax) {
  MaxObserver obs;
  EXPECT_EQ(obs.amax(), 0.0f);
  obs.observe(Tensor::from_vector<float>({3}, {0.5f, -2.0f, 1.0f}));
  obs.observe(Tensor::from_vector<float>({2, 2}, {1.5f, -1.75f, 0.0f, 1.0f}));
  EXPECT_EQ(obs.amax(), 2.0f);
  EXPECT_EQ(obs.count(), 7);
  obs.observe(Tensor::from_vector<float>({1}, {-3.25f}));
  EXPECT_EQ(obs.amax(), 3.25f);
  obs.reset();
  EXPECT_EQ(obs.amax(), 0.0f);
}

TEST(ObserverMax, PerChannelEveryAxisMatchesNaive) {
  const Shape shape = {3, 5, 7};
  for (int axis : {0, 1, 2, -1}) {
    MaxObserver obs(MaxObserverOptions{.axis = axis});
    const int a = axis < 0 ? axis + 3 : axis;
    std::vector<float> expected(static_cast<size_t>(shape[static_cast<size_t>(a)]), 0.0f);
    for (uint32_t batch = 0; batch < 3; ++batch) {
      const Tensor x = random_f32(shape, 40 + batch, -2.0f, 2.0f);
      obs.observe(x);
      for (int64_t i = 0; i < x.numel(); ++i) {
        const int64_t idx[3] = {i / 35, (i / 7) % 5, i % 7};
        float& e = expected[static_cast<size_t>(idx[a])];
        e = std::max(e, std::fabs(x.data<float>()[i]));
      }
    }
    ASSERT_EQ(obs.channel_amax().size(), expected.size()) << axis;
    for (size_t c = 0; c < expected.size(); ++c) {
      EXPECT_EQ(obs.channel_amax()[c], expected[c]) << "axis " << axis << " channel " << c;
    }
    EXPECT_EQ(obs.amax(), *std::max_element(expected.begin(), expected.end()));
  }
}

TEST(ObserverMax, MergeEqualsOneObserver) {
  MaxObserver whole(MaxObserverOptions{.axis = 0});
  MaxObserver left(MaxObserverOptions{.axis = 0});
  MaxObserver right(MaxObserverOptions{.axis = 0});
  const Tensor a = random_f32({4, 9}, 1, -1.0f, 1.0f);
  const Tensor b = random_f32({4, 9}, 2, -3.0f, 3.0f);
  whole.observe(a);
  whole.observe(b);
  left.observe(a);
  right.observe(b);
  left.merge(right);
  ASSERT_EQ(left.channel_amax().size(), 4u);
  for (size_t c = 0; c < 4; ++c) EXPECT_EQ(left.channel_amax()[c], whole.channel_amax()[c]);
  EXPECT_EQ(left.count(), whole.count());
}

TEST(ObserverMax, RejectsNonFiniteAndChangedChannels) {
  MaxObserver obs;
  EXPECT_THROW(
      obs.observe(Tensor::from_vector<float>({2}, {1.0f, std::numeric_limits<float>::quiet_NaN()})),
      Error);
  EXPECT_THROW(
      obs.observe(Tensor::from_vector<float>({2}, {1.0f, -std::numeric_limits<float>::infinity()})),
      Error);
  MaxObserver channels(MaxObserverOptions{.axis = 1});
  channels.observe(random_f32({2, 3}, 3, -1.0f, 1.0f));
  try {
    channels.observe(random_f32({2, 4}, 3, -1.0f, 1.0f));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_NE(std::string(e.what()).find("expected 3 channels"), std::string::npos) << e.what();
  }
  MaxObserver bad_axis(MaxObserverOptions{.axis = 3});
  EXPECT_THROW(bad_axis.observe(random_f32({2, 3}, 3, -1.0f, 1.0f)), Error);
}

TEST(ObserverSmoothQuant, MaxPerLastAxis) {
  SmoothQuantObserver obs;
  const Tensor x = random_f32({2, 5, 6}, 9, -4.0f, 4.0f);  // [batch, tokens, C_in]
  obs.observe(x);
  obs.observe(x.reshaped({10, 6}));
  std::vector<float> expected(6, 0.0f);
  for (int64_t i = 0; i < x.numel(); ++i) {
    float& e = expected[static_cast<size_t>(i % 6)];
    e = std::max(e, std::fabs(x.data<float>()[i]));
  }
  ASSERT_EQ(obs.channel_amax().size(), 6u);
  for (size_t c = 0; c < 6; ++c) EXPECT_EQ(obs.channel_amax()[c], expected[c]);
}

TEST(ObserverHistogram, RangeIsSmallestPowerOfTwoAboveMax) {
  HistogramObserver obs;
  obs.observe(Tensor::from_vector<float>({2}, {0.75f, -0.25f}));
  EXPECT_EQ(obs.range(), 1.0);
  EXPECT_EQ(obs.counts()[1536], 1u);  // 0.75 · 2048 / 1
  EXPECT_EQ(obs.counts()[512], 1u);
  // Exactly 1.0 does not fit [0, 1): the range doubles and pairs merge.
  obs.observe(Tensor::from_vector<float>({1}, {1.0f}));
  EXPECT_EQ(obs.range(), 2.0);
  EXPECT_EQ(obs.counts()[768], 1u);
  EXPECT_EQ(obs.counts()[256], 1u);
  EXPECT_EQ(obs.counts()[1024], 1u);
  EXPECT_EQ(obs.total(), 3u);
}

TEST(ObserverHistogram, ZerosGoToBinZeroBeforeAndAfterARangeExists) {
  HistogramObserver obs;
  obs.observe(Tensor(DType::kFloat32, {5}));
  EXPECT_FALSE(obs.range_exponent().has_value());
  EXPECT_EQ(obs.range(), 0.0);
  EXPECT_EQ(obs.counts()[0], 5u);
  obs.observe(Tensor::from_vector<float>({3}, {0.0f, 3.0f, -0.0f}));
  EXPECT_EQ(obs.range(), 4.0);
  EXPECT_EQ(obs.counts()[0], 7u);
  EXPECT_EQ(obs.counts()[1536], 1u);
}

TEST(ObserverHistogram, CountsMatchDirectBinningAtFinalRange) {
  std::vector<float> v = wide_values(50000, 5);
  HistogramObserver obs;
  for (size_t b = 0; b < v.size(); b += 997)
    obs.observe(wrap_values(v, b, std::min(v.size(), b + 997)));
  float top = 0.0f;
  for (float x : v) top = std::max(top, std::fabs(x));
  int e = 0;
  std::frexp(static_cast<double>(top), &e);
  ASSERT_EQ(obs.range_exponent(), e);
  std::vector<uint64_t> direct(2048, 0);
  for (float x : v) {
    // floor(|x| / 2^e · 2048) in exact arithmetic (long double holds it exactly).
    const long double pos = std::fabs(static_cast<long double>(x)) / std::ldexp(1.0L, e) * 2048.0L;
    ++direct[static_cast<size_t>(std::floor(pos))];
  }
  EXPECT_TRUE(std::equal(direct.begin(), direct.end(), obs.counts().begin()));
  EXPECT_EQ(obs.total(), v.size());
}

// floor(|x| / 2^e · bins) for every value, in exact arithmetic (long double holds it exactly).
std::vector<uint64_t> direct_counts(const std::vector<float>& v, int e, int bins) {
  std::vector<uint64_t> direct(static_cast<size_t>(bins), 0);
  for (float x : v) {
    const long double pos = std::fabs(static_cast<long double>(x)) / std::ldexp(1.0L, e) * bins;
    ++direct[static_cast<size_t>(std::floor(pos))];
  }
  return direct;
}

// Large tensors are binned by parallel tasks, each with its own range, in blocks whose max is
// taken first: the counts must still be those of direct binning at the final range, for any
// thread count, with the exact max kept.
TEST(ObserverHistogram, ParallelBinningOfLargeTensorsIsExact) {
  std::vector<float> v = wide_values(700001, 8);
  // A run of zeros longer than a block, and the largest value near the end.
  std::fill(v.begin() + 5000, v.begin() + 20000, 0.0f);
  v[v.size() - 3] = -12345.5f;
  float top = 0.0f;
  for (float x : v) top = std::max(top, std::fabs(x));
  int e = 0;
  std::frexp(static_cast<double>(top), &e);
  const std::vector<uint64_t> direct = direct_counts(v, e, 2048);
  for (int threads : {1, 2}) {
    runtime::set_num_threads(threads);
    HistogramObserver obs;
    obs.observe(wrap_values(v, 0, v.size()));
    EXPECT_EQ(obs.range_exponent(), e) << threads << " threads";
    EXPECT_EQ(obs.max(), top);
    EXPECT_EQ(obs.count(), static_cast<int64_t>(v.size()));
    EXPECT_TRUE(std::equal(direct.begin(), direct.end(), obs.counts().begin()))
        << threads << " threads";
  }
  runtime::set_num_threads(0);
}

// Ranges whose bin factor 2^(log2 bins - k) is not a normal float: subnormal data (k far below
// zero) and data near FLT_MAX.
TEST(ObserverHistogram, ExtremeRangesBinExactly) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (const float scale : {1e-39f, 3e38f}) {
    std::vector<float> v(9000);
    for (float& x : v) x = unit(rng) * scale;
    float top = 0.0f;
    for (float x : v) top = std::max(top, std::fabs(x));
    int e = 0;
    std::frexp(static_cast<double>(top), &e);
    HistogramObserver obs;
    obs.observe(wrap_values(v, 0, v.size()));
    ASSERT_EQ(obs.range_exponent(), e) << scale;
    const std::vector<uint64_t> direct = direct_counts(v, e, 2048);
    EXPECT_TRUE(std::equal(direct.begin(), direct.end(), obs.counts().begin())) << scale;
    EXPECT_EQ(obs.max(), top);
  }
}

TEST(ObserverHistogram, IdenticalForAnyBatchOrderSizeAndSplit) {
  std::vector<float> v = wide_values(40000, 6);
  HistogramObserver one;
  one.observe(wrap_values(v, 0, v.size()));

  // Ascending magnitude forces a growth at nearly every batch.
  std::vector<float> sorted = v;
  std::sort(sorted.begin(), sorted.end(),
            [](float a, float b) { return std::fabs(a) < std::fabs(b); });
  HistogramObserver ascending;
  for (size_t b = 0; b < sorted.size(); b += 61) {
    ascending.observe(wrap_values(sorted, b, std::min(sorted.size(), b + 61)));
  }

  // Random batch sizes in shuffled order, split over three observers merged in another order.
  std::mt19937 rng(7);
  std::vector<float> shuffled = v;
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  HistogramObserver parts[3];
  size_t pos = 0;
  int which = 0;
  while (pos < shuffled.size()) {
    const size_t len = std::min<size_t>(shuffled.size() - pos, 1 + rng() % 3000);
    parts[which++ % 3].observe(wrap_values(shuffled, pos, pos + len));
    pos += len;
  }
  HistogramObserver merged;
  merged.merge(parts[2]);
  merged.merge(parts[0]);
  merged.merge(parts[1]);

  for (const HistogramObserver* h : {&ascending, &merged}) {
    EXPECT_EQ(h->range_exponent(), one.range_exponent());
    EXPECT_TRUE(std::equal(one.counts().begin(), one.counts().end(), h->counts().begin()));
  }
}

TEST(ObserverHistogram, MergeBringsSmallerRangeUp) {
  std::vector<float> small = {0.001f, 0.002f, 0.0f, 0.0035f};
  std::vector<float> large = {100.0f, -3.0f, 0.5f};
  HistogramObserver a, b, both;
  a.observe(wrap_values(small, 0, small.size()));
  b.observe(wrap_values(large, 0, large.size()));
  both.observe(wrap_values(large, 0, large.size()));
  both.observe(wrap_values(small, 0, small.size()));
  HistogramObserver a_then_b = a;
  a_then_b.merge(b);
  b.merge(a);
  for (const HistogramObserver* h : {&a_then_b, &b}) {
    EXPECT_EQ(h->range(), 128.0);
    EXPECT_TRUE(std::equal(both.counts().begin(), both.counts().end(), h->counts().begin()));
  }
  EXPECT_EQ(both.counts()[0], 4u);  // three small values and the zero share bin 0 at range 128
}

// What one rank writes and another merges (a data-parallel calibration) equals merge, whichever
// side saw the larger range, and an observer that saw nothing changes nothing.
TEST(ObserverHistogram, WrittenMergeEqualsMerge) {
  std::vector<float> v = wide_values(5000, 11);
  HistogramObserver first, second, empty, one;
  first.observe(wrap_values(v, 0, 1700));
  second.observe(wrap_values(v, 1700, v.size()));
  one.observe(wrap_values(v, 0, v.size()));
  for (const bool first_receives : {true, false}) {
    HistogramObserver receiver = first_receives ? first : second;
    runtime::ByteWriter out;
    (first_receives ? second : first).write(out);
    empty.write(out);
    runtime::ByteReader in(out.bytes());
    receiver.merge_written(in);
    receiver.merge_written(in);
    EXPECT_TRUE(in.at_end());
    EXPECT_EQ(receiver.range_exponent(), one.range_exponent());
    EXPECT_EQ(receiver.max(), one.max());
    EXPECT_EQ(receiver.count(), one.count());
    EXPECT_TRUE(std::equal(one.counts().begin(), one.counts().end(), receiver.counts().begin()));
  }
  HistogramObserver small(HistogramObserverOptions{.bins = 64});
  runtime::ByteWriter out;
  small.write(out);
  runtime::ByteReader in(out.bytes());
  EXPECT_THROW(first.merge_written(in), Error);
}

TEST(ObserverMax, WrittenMergeEqualsMerge) {
  const Tensor a = random_f32({4, 9}, 1, -1.0f, 1.0f);
  const Tensor b = random_f32({4, 9}, 2, -3.0f, 3.0f);
  MaxObserver whole(MaxObserverOptions{.axis = 1}), left(MaxObserverOptions{.axis = 1}),
      right(MaxObserverOptions{.axis = 1}), nothing(MaxObserverOptions{.axis = 1});
  whole.observe(a);
  whole.observe(b);
  left.observe(a);
  right.observe(b);
  runtime::ByteWriter out;
  right.write(out);
  nothing.write(out);
  right.write(out);
  runtime::ByteReader in(out.bytes());
  nothing.merge_written(in);  // an empty receiver takes the channels
  left.merge_written(in);     // an empty sender changes nothing
  left.merge_written(in);
  ASSERT_EQ(nothing.channel_amax().size(), 9u);
  ASSERT_EQ(left.channel_amax().size(), 9u);
  for (size_t c = 0; c < 9; ++c) {
    EXPECT_EQ(nothing.channel_amax()[c], right.channel_amax()[c]);
    EXPECT_EQ(left.channel_amax()[c], whole.channel_amax()[c]);
  }
  EXPECT_EQ(left.count(), whole.count());
  MaxObserver per_tensor;
  runtime::ByteWriter other;
  per_tensor.write(other);
  runtime::ByteReader other_in(other.bytes());
  EXPECT_THROW(left.merge_written(other_in), Error);
}

TEST(ObserverHistogram, ValidatesBinsAndValues) {
  EXPECT_THROW(HistogramObserver(HistogramObserverOptions{.bins = 1000}), Error);
  EXPECT_THROW(HistogramObserver(HistogramObserverOptions{.bins = 1}), Error);
  HistogramObserver small(HistogramObserverOptions{.bins = 64});
  HistogramObserver regular;
  EXPECT_THROW(regular.merge(small), Error);
  EXPECT_THROW(
      regular.observe(Tensor::from_vector<float>({1}, {std::numeric_limits<float>::infinity()})),
      Error);
  EXPECT_THROW(regular.observe(Tensor(DType::kInt32, {2})), Error);
}

TEST(ObserverHistogram, HistogramViewHasEdges) {
  HistogramObserver obs(HistogramObserverOptions{.bins = 8});
  obs.observe(Tensor::from_vector<float>({3}, {0.1f, 0.6f, -0.9f}));
  const Histogram h = obs.histogram();
  EXPECT_EQ(h.range, 1.0);
  EXPECT_EQ(h.bins(), 8);
  EXPECT_EQ(h.edge(3), 0.375);
  EXPECT_EQ(h.total(), 3.0);
  EXPECT_EQ(h.counts[0], 1.0);
  EXPECT_EQ(h.counts[4], 1.0);
  EXPECT_EQ(h.counts[7], 1.0);
}

}  // namespace
}  // namespace qforge::quant
