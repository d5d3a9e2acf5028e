// Observers (see observers.h).
#include "quant/observers.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "kernels/error.h"

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

// max |x| over n values; `bad` becomes nonzero when any value is NaN or ±Inf. Independent lanes
// (max is exact in any order) let the loop vectorise, which a single running max does not.
float abs_max(const float* x, int64_t n, uint32_t& bad) {
  constexpr int kLanes = 16;
  float lane_max[kLanes] = {};
  uint32_t lane_bad[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const float a = std::fabs(x[i + k]);
      lane_max[k] = a > lane_max[k] ? a : lane_max[k];
      lane_bad[k] |= static_cast<uint32_t>(!(a <= kFloatMax));
    }
  }
  for (; i < n; ++i) {
    const float a = std::fabs(x[i]);
    lane_max[0] = a > lane_max[0] ? a : lane_max[0];
    lane_bad[0] |= static_cast<uint32_t>(!(a <= kFloatMax));
  }
  float m = 0.0f;
  for (int k = 0; k < kLanes; ++k) {
    m = std::max(m, lane_max[k]);
    bad |= lane_bad[k];
  }
  return m;
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
  const int steps = std::min(exponent - *range_exponent_, log2_bins_);
  const size_t n = counts_.size();
  for (int s = 0; s < steps; ++s) {
    for (size_t j = 0; j < n / 2; ++j) counts_[j] = counts_[2 * j] + counts_[2 * j + 1];
    std::fill(counts_.begin() + static_cast<std::ptrdiff_t>(n / 2), counts_.end(), 0);
  }
  range_exponent_ = exponent;
}

void HistogramObserver::observe(const kernels::Tensor& x) {
  check_float("HistogramObserver", x);
  const float* p = x.data<float>();
  const int64_t n = x.numel();
  uint32_t bad = 0;
  const float batch_max = abs_max(p, n, bad);
  if (bad) throw_non_finite("HistogramObserver", x);
  if (!(batch_max > 0.0f)) {
    counts_[0] += static_cast<uint64_t>(n);
    return;
  }
  int exponent = 0;
  std::frexp(static_cast<double>(batch_max), &exponent);  // batch_max < 2^exponent
  if (!range_exponent_) {
    range_exponent_ = exponent;
  } else if (exponent > *range_exponent_) {
    grow_to(exponent);
  }
  // bins / 2^k is a power of two and |x| a float, so the product is exact in double.
  const double to_bin = std::ldexp(1.0, log2_bins_ - *range_exponent_);
  uint64_t* counts = counts_.data();
  for (int64_t i = 0; i < n; ++i) {
    const double v = std::fabs(static_cast<double>(p[i])) * to_bin;
    ++counts[static_cast<size_t>(v)];
  }
}

void HistogramObserver::merge(const HistogramObserver& other) {
  if (other.bins() != bins()) {
    throw_invalid(std::string("HistogramObserver: expected ")
                      .append(std::to_string(bins()))
                      .append(" bins in the merged histogram, got ")
                      .append(std::to_string(other.bins())));
  }
  if (!other.range_exponent_) {
    counts_[0] += other.counts_[0];
    return;
  }
  if (!range_exponent_) {
    range_exponent_ = other.range_exponent_;
  } else if (*other.range_exponent_ > *range_exponent_) {
    grow_to(*other.range_exponent_);
  }
  // Other's bin j at range 2^k' is bin j >> (k - k') here; beyond log2(bins) shifts it is 0.
  const int shift = std::min(*range_exponent_ - *other.range_exponent_, log2_bins_);
  for (size_t j = 0; j < counts_.size(); ++j) counts_[j >> shift] += other.counts_[j];
}

}  // namespace qforge::quant
