// Observers (see observers.h).
#include "quant/observers.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <mutex>
#include <numeric>
#include <string>

#include "kernels/error.h"
#include "kernels/parallel.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace qforge::quant {
namespace {

constexpr float kFloatMax = std::numeric_limits<float>::max();

void check_float(const char* who, const kernels::Tensor& x) {
  if (x.dtype() != kernels::DType::kFloat32) {
    throw_invalid(
        std::string(who).append(": expected a float32 tensor, got ").append(x.describe()));
  }
}

[[noreturn]] void throw_non_finite(const char* who, const kernels::Tensor& x) {
  throw_invalid(
      std::string(who).append(": expected finite values, got NaN or Inf in ").append(x.describe()));
}

// max |x| over n values; `bad` becomes nonzero when any value is NaN or ±Inf.
float abs_max(const float* x, int64_t n, uint32_t& bad) {
  int64_t i = 0;
  float m = 0.0f;
#ifdef __AVX512F__
  __m512 vmax = _mm512_setzero_ps();
  __mmask16 not_finite = 0;
  const __m512 float_max = _mm512_set1_ps(kFloatMax);
  for (; i + 16 <= n; i += 16) {
    const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + i));
    // Masked forms: the plain ones trip GCC 12's maybe-uninitialized on their undefined source.
    vmax = _mm512_mask_max_ps(vmax, 0xFFFF, vmax, a);
    // Not (a <= FLT_MAX), unordered included: ±Inf and NaN.
    not_finite |= _mm512_cmp_ps_mask(a, float_max, _CMP_NLE_UQ);
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, vmax);
  for (float v : lanes) m = std::max(m, v);
  bad |= static_cast<uint32_t>(not_finite != 0);
#endif
  for (; i < n; ++i) {
    const float a = std::fabs(x[i]);
    m = a > m ? a : m;
    bad |= static_cast<uint32_t>(!(a <= kFloatMax));
  }
  return m;
}

// Brings counts taken at range 2^k to range 2^(k + steps): bins (2j, 2j + 1) merge into j, once
// per step. The caller caps steps at log2(bins), after which everything sits in bin 0.
template <class Count>
void merge_bin_pairs(Count* counts, size_t bins, int steps) {
  for (int s = 0; s < steps; ++s) {
    for (size_t j = 0; j < bins / 2; ++j) counts[j] = counts[2 * j] + counts[2 * j + 1];
    std::fill(counts + bins / 2, counts + bins, Count{0});
  }
}

}  // namespace

double Histogram::total() const {
  return std::accumulate(counts.begin(), counts.end(), 0.0);
}

// MaxObserver ------------------------------------------------------------------------------------

MaxObserver::MaxObserver(MaxObserverOptions options) : options_(options) {}

void MaxObserver::reset() {
  amax_ = 0.0f;
  std::fill(channel_amax_.begin(), channel_amax_.end(), 0.0f);
  count_ = 0;
}

float MaxObserver::amax() const {
  if (!per_channel()) return amax_;
  float m = 0.0f;
  for (float v : channel_amax_) m = std::max(m, v);
  return m;
}

void MaxObserver::observe(const kernels::Tensor& x) {
  check_float("MaxObserver", x);
  const float* p = x.data<float>();
  const int64_t n = x.numel();
  uint32_t bad = 0;
  if (!per_channel()) {
    const float m = abs_max(p, n, bad);
    if (bad) throw_non_finite("MaxObserver", x);
    amax_ = std::max(amax_, m);
    count_ += n;
    return;
  }
  const int rank = x.rank();
  const int axis = *options_.axis < 0 ? *options_.axis + rank : *options_.axis;
  if (axis < 0 || axis >= rank) {
    throw_invalid(std::string("MaxObserver: expected channel axis ")
                      .append(std::to_string(*options_.axis))
                      .append(" to exist in ")
                      .append(x.describe()));
  }
  const int64_t channels = x.shape()[static_cast<size_t>(axis)];
  int64_t inner = 1;
  for (int d = axis + 1; d < rank; ++d) inner *= x.shape()[static_cast<size_t>(d)];
  if (channel_amax_.empty()) {
    channel_amax_.assign(static_cast<size_t>(channels), 0.0f);
  } else if (static_cast<int64_t>(channel_amax_.size()) != channels) {
    throw_invalid(std::string("MaxObserver: expected ")
                      .append(std::to_string(channel_amax_.size()))
                      .append(" channels along axis ")
                      .append(std::to_string(*options_.axis))
                      .append(" as before, got ")
                      .append(x.describe()));
  }
  if (n == 0) return;
  const int64_t outer = n / (channels * inner);
  float* amax = channel_amax_.data();
  if (inner == 1) {
    // Rows of `channels` values: an element-wise max against the running row vectorises.
    uint32_t b = 0;
    for (int64_t o = 0; o < outer; ++o) {
      const float* row = p + o * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const float a = std::fabs(row[c]);
        amax[c] = a > amax[c] ? a : amax[c];
        b |= static_cast<uint32_t>(!(a <= kFloatMax));
      }
    }
    bad |= b;
  } else {
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t c = 0; c < channels; ++c) {
        const float m = abs_max(p + (o * channels + c) * inner, inner, bad);
        amax[c] = std::max(amax[c], m);
      }
    }
  }
  if (bad) throw_non_finite("MaxObserver", x);
  count_ += n;
}

void MaxObserver::merge(const MaxObserver& other) {
  if (per_channel() != other.per_channel()) {
    throw_invalid("MaxObserver: expected both observers per tensor or both per channel");
  }
  amax_ = std::max(amax_, other.amax_);
  count_ += other.count_;
  if (other.channel_amax_.empty()) return;
  if (channel_amax_.empty()) {
    channel_amax_ = other.channel_amax_;
    return;
  }
  if (channel_amax_.size() != other.channel_amax_.size()) {
    throw_invalid(std::string("MaxObserver: expected ")
                      .append(std::to_string(channel_amax_.size()))
                      .append(" channels in the merged observer, got ")
                      .append(std::to_string(other.channel_amax_.size())));
  }
  for (size_t c = 0; c < channel_amax_.size(); ++c) {
    channel_amax_[c] = std::max(channel_amax_[c], other.channel_amax_[c]);
  }
}

void MaxObserver::write(runtime::ByteWriter& out) const {
  out.put<uint8_t>(per_channel() ? 1 : 0);
  out.put(amax_);
  out.put(count_);
  out.put_span(std::span<const float>(channel_amax_));
}

void MaxObserver::merge_written(runtime::ByteReader& in) {
  MaxObserver other(options_);
  if ((in.get<uint8_t>() != 0) != per_channel()) {
    throw_internal("MaxObserver: merging a written observer of another kind");
  }
  other.amax_ = in.get<float>();
  other.count_ = in.get<int64_t>();
  other.channel_amax_ = in.get_vector<float>();
  merge(other);
}

// HistogramObserver ------------------------------------------------------------------------------

HistogramObserver::HistogramObserver(HistogramObserverOptions options) {
  if (options.bins < 2 || !std::has_single_bit(static_cast<uint64_t>(options.bins))) {
    throw_invalid(std::string("HistogramObserver: expected a power-of-two bin count >= 2, got ")
                      .append(std::to_string(options.bins)));
  }
  counts_.assign(static_cast<size_t>(options.bins), 0);
  log2_bins_ = std::countr_zero(static_cast<uint64_t>(options.bins));
}

void HistogramObserver::reset() {
  std::fill(counts_.begin(), counts_.end(), 0);
  range_exponent_.reset();
  max_ = 0.0f;
  count_ = 0;
}

double HistogramObserver::range() const {
  return range_exponent_ ? std::ldexp(1.0, *range_exponent_) : 0.0;
}

uint64_t HistogramObserver::total() const {
  return std::accumulate(counts_.begin(), counts_.end(), uint64_t{0});
}

Histogram HistogramObserver::histogram() const {
  Histogram h;
  h.counts.assign(counts_.begin(), counts_.end());
  h.range = range();
  return h;
}

void HistogramObserver::grow_to(int exponent) {
  // After log2(bins) merges everything sits in bin 0; more would change nothing.
  merge_bin_pairs(counts_.data(), counts_.size(),
                  std::min(exponent - *range_exponent_, log2_bins_));
  range_exponent_ = exponent;
}

namespace {

// Values binned at a time: the block's max is found first, then the block is binned while it is
// still in the L1 cache.
constexpr int64_t kBinBlock = 4096;
// Fewest elements worth a parallel task: a tensor is split into at most one part per thread,
// each at least this long (smaller tensors are binned on the calling thread).
constexpr int64_t kBinTask = int64_t{1} << 16;
// Most elements one part may hold, so that its uint32 counts cannot overflow.
constexpr int64_t kMaxPart = int64_t{1} << 31;
// Interleaved copies of the counts: consecutive values landing in the same bin (common, most
// activations crowd the low bins) update different copies instead of waiting on each other.
constexpr int kCopies = 4;

// One task's partial histogram of |x|, with its own power-of-two range like the observer's.
// uint32 counts suffice: a part holds at most kMaxPart values.
class PartialHistogram {
 public:
  void start(int log2_bins) {
    log2_bins_ = log2_bins;
    bins_ = size_t{1} << log2_bins;
    counts_.assign(kCopies * bins_, 0);
    zeros_ = 0;
    exponent_.reset();
    max_ = 0.0f;
  }

  // Bins x[0, n); `bad` becomes nonzero on NaN or Inf.
  void add(const float* x, int64_t n, uint32_t& bad) {
    int32_t index[kBinBlock];
    for (int64_t b = 0; b < n; b += kBinBlock) {
      const int64_t len = std::min(kBinBlock, n - b);
      const float m = abs_max(x + b, len, bad);
      if (bad) return;
      max_ = std::max(max_, m);
      if (!(m > 0.0f)) {
        zeros_ += static_cast<uint64_t>(len);
        continue;
      }
      int exponent = 0;
      std::frexp(static_cast<double>(m), &exponent);  // m < 2^exponent
      if (!exponent_) {
        exponent_ = exponent;
      } else if (exponent > *exponent_) {
        grow_to(exponent);
      }
      bin_block(x + b, len, index);
    }
  }

  float max() const { return max_; }
  std::optional<int> exponent() const { return exponent_; }
  // The count of bin j over all copies, zeros included in bin 0.
  uint64_t count(size_t j) const {
    uint64_t c = j == 0 ? zeros_ : 0;
    for (int k = 0; k < kCopies; ++k) c += counts_[k * bins_ + j];
    return c;
  }

 private:
  void grow_to(int exponent) {
    const int steps = std::min(exponent - *exponent_, log2_bins_);
    for (int k = 0; k < kCopies; ++k) merge_bin_pairs(counts_.data() + k * bins_, bins_, steps);
    exponent_ = exponent;
  }

  void bin_block(const float* x, int64_t len, int32_t* index) {
    // The bin of v is floor(v · 2^(log2_bins − k)). Scaling by a power of two is exact in float
    // (the product is below bins, and one small enough to be subnormal truncates to bin 0 either
    // way) when the factor itself is a normal float; otherwise double does it. Values of bin 0
    // (zeros after a ReLU, often half the tensor) are only counted; the others are scattered.
    const int shift = log2_bins_ - *exponent_;
    int64_t m = 0;
    if (shift >= -126 && shift <= 127) {
      m = nonzero_bins(x, len, std::ldexp(1.0f, shift), index);
    } else {
      const double to_bin = std::ldexp(1.0, shift);
      for (int64_t i = 0; i < len; ++i) {
        index[m] = static_cast<int32_t>(std::fabs(static_cast<double>(x[i])) * to_bin);
        m += index[m] != 0;
      }
    }
    scatter(index, m, len);
  }

  // Counts the m nonzero bins in `index`, and len − m values of bin 0.
  void scatter(const int32_t* index, int64_t m, int64_t len) {
    zeros_ += static_cast<uint64_t>(len - m);
    uint32_t* c0 = counts_.data();
    uint32_t* c1 = c0 + bins_;
    uint32_t* c2 = c1 + bins_;
    uint32_t* c3 = c2 + bins_;
    int64_t i = 0;
    for (; i + kCopies <= m; i += kCopies) {
      ++c0[index[i]];
      ++c1[index[i + 1]];
      ++c2[index[i + 2]];
      ++c3[index[i + 3]];
    }
    for (; i < m; ++i) ++c0[index[i]];
  }

  // Writes the nonzero bins floor(|x_i| · to_bin) of x[0, len) to `index`, in order; returns how
  // many there are.
  static int64_t nonzero_bins(const float* x, int64_t len, float to_bin, int32_t* index) {
    int64_t m = 0;
    int64_t i = 0;
#ifdef __AVX512F__
    const __m512 scale = _mm512_set1_ps(to_bin);
    for (; i + 16 <= len; i += 16) {
      const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + i));
      // Masked form, as in abs_max.
      const __m512i bin =
          _mm512_mask_cvttps_epi32(_mm512_setzero_si512(), 0xFFFF, _mm512_mul_ps(a, scale));
      const __mmask16 nonzero = _mm512_test_epi32_mask(bin, bin);
      _mm512_storeu_si512(index + m, _mm512_maskz_compress_epi32(nonzero, bin));
      m += std::popcount(static_cast<unsigned>(nonzero));
    }
#endif
    for (; i < len; ++i) {
      index[m] = static_cast<int32_t>(std::fabs(x[i]) * to_bin);
      m += index[m] != 0;
    }
    return m;
  }

  int log2_bins_ = 0;
  size_t bins_ = 0;
  std::vector<uint32_t> counts_;  // kCopies × bins
  uint64_t zeros_ = 0;            // values of bin 0, which is bin 0 at every range
  std::optional<int> exponent_;
  float max_ = 0.0f;
};

}  // namespace

void HistogramObserver::observe(const kernels::Tensor& x) {
  check_float("HistogramObserver", x);
  const float* p = x.data<float>();
  const int64_t n = x.numel();
  // Tasks bin disjoint parts into partial histograms that merge exactly (their ranges nest), so
  // the counts do not depend on how the tensor was split or in which order parts finished.
  const int64_t tasks =
      std::max(std::clamp<int64_t>((n + kBinTask - 1) / kBinTask, 1, kernels::max_threads()),
               (n + kMaxPart - 1) / kMaxPart);
  const int64_t per_task = (n + tasks - 1) / tasks;
  std::mutex merge_mutex;
  bool bad_seen = false;
  kernels::parallel_for(tasks, 1, [&](int64_t t0, int64_t t1) {
    // Reused by every call on this thread: after the first call nothing allocates.
    thread_local PartialHistogram part;
    for (int64_t t = t0; t < t1; ++t) {
      part.start(log2_bins_);
      uint32_t bad = 0;
      const int64_t begin = t * per_task;
      const int64_t end = std::min(n, begin + per_task);
      part.add(p + begin, end - begin, bad);
      const std::lock_guard<std::mutex> lock(merge_mutex);
      if (bad) {
        bad_seen = true;
        return;
      }
      merge_partial(part.exponent(), part.max(), [&](size_t j) { return part.count(j); });
    }
  });
  if (bad_seen) throw_non_finite("HistogramObserver", x);
  count_ += static_cast<uint64_t>(n);
}

template <class CountOf>
void HistogramObserver::merge_partial(std::optional<int> exponent, float max, CountOf&& count_of) {
  max_ = std::max(max_, max);
  if (!exponent) {
    counts_[0] += count_of(0);
    return;
  }
  if (!range_exponent_) {
    range_exponent_ = exponent;
  } else if (*exponent > *range_exponent_) {
    grow_to(*exponent);
  }
  // The part's bin j at range 2^k' is bin j >> (k - k') here; beyond log2(bins) shifts it is 0.
  const int shift = std::min(*range_exponent_ - *exponent, log2_bins_);
  for (size_t j = 0; j < counts_.size(); ++j) counts_[j >> shift] += count_of(j);
}

void HistogramObserver::merge(const HistogramObserver& other) {
  if (other.bins() != bins()) {
    throw_invalid(std::string("HistogramObserver: expected ")
                      .append(std::to_string(bins()))
                      .append(" bins in the merged histogram, got ")
                      .append(std::to_string(other.bins())));
  }
  merge_partial(other.range_exponent_, other.max_, [&](size_t j) { return other.counts_[j]; });
  count_ += other.count_;
}

void HistogramObserver::write(runtime::ByteWriter& out) const {
  out.put<uint8_t>(range_exponent_ ? 1 : 0);
  out.put<int32_t>(range_exponent_.value_or(0));
  out.put(max_);
  out.put(count_);
  out.put_span(std::span<const uint64_t>(counts_));
}

void HistogramObserver::merge_written(runtime::ByteReader& in) {
  const bool has_range = in.get<uint8_t>() != 0;
  const auto exponent = in.get<int32_t>();
  const auto max = in.get<float>();
  const auto count = in.get<uint64_t>();
  const std::vector<uint64_t> counts = in.get_vector<uint64_t>();
  if (counts.size() != counts_.size()) {
    throw_internal(std::string("HistogramObserver: expected ")
                       .append(std::to_string(counts_.size()))
                       .append(" bins in the written histogram, got ")
                       .append(std::to_string(counts.size())));
  }
  merge_partial(has_range ? std::optional<int>(exponent) : std::nullopt, max,
                [&](size_t j) { return counts[j]; });
  count_ += count;
}

}  // namespace qforge::quant
