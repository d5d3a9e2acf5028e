// Streaming statistics tapped at Q/DQ points while calibration data runs: running max |x| (per
// tensor or per channel), a mergeable histogram of |x|, and SmoothQuant's per-input-channel max.
// Memory is independent of how much data is seen; after the first call nothing allocates.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "kernels/tensor.h"
#include "runtime/communicator.h"

namespace qforge::quant {

// A histogram of |x| over [0, range): bin j holds values in [edge(j), edge(j + 1)) with
// edge(k) = range · k / bins(). Counts are whole numbers (exact in double below 2^53).
// range == 0 means no nonzero value was seen (all counts, if any, are zeros in bin 0).
struct Histogram {
  std::vector<double> counts;
  double range = 0.0;

  int64_t bins() const { return static_cast<int64_t>(counts.size()); }
  double edge(int64_t k) const {
    return range * static_cast<double>(k) / static_cast<double>(bins());
  }
  double total() const;
};

struct MaxObserverOptions {
  // Per channel along this axis (negative counts from the end); per tensor when empty.
  std::optional<int> axis;
};

// Running max |x|. Non-finite values are an Invalid error (a range from them means nothing, and
// the dataset loader should already have refused them).
class MaxObserver {
 public:
  explicit MaxObserver(MaxObserverOptions options = {});

  void observe(const kernels::Tensor& x);
  // Folds in another observer of the same point (threads, processes); max is order-free.
  void merge(const MaxObserver& other);
  void reset();
  // Its statistics as bytes, and another process's written ones merged in (merge's result).
  void write(runtime::ByteWriter& out) const;
  void merge_written(runtime::ByteReader& in);

  bool per_channel() const { return options_.axis.has_value(); }
  // Per tensor: the running max (0 before any data). Per channel: the max over channels.
  float amax() const;
  // Per channel only: one entry per index of the axis (empty before any data).
  std::span<const float> channel_amax() const { return channel_amax_; }
  int64_t count() const { return count_; }  // elements observed

 private:
  MaxObserverOptions options_;
  float amax_ = 0.0f;
  std::vector<float> channel_amax_;
  int64_t count_ = 0;
};

// SmoothQuant statistics: max |x| per input channel, the last axis of the activation that feeds
// a Linear or MHAInProjection ([..., C_in]).
class SmoothQuantObserver {
 public:
  SmoothQuantObserver() : max_(MaxObserverOptions{.axis = -1}) {}
  void observe(const kernels::Tensor& x) { max_.observe(x); }
  void merge(const SmoothQuantObserver& other) { max_.merge(other.max_); }
  void write(runtime::ByteWriter& out) const { max_.write(out); }
  void merge_written(runtime::ByteReader& in) { max_.merge_written(in); }
  void reset() { max_.reset(); }
  std::span<const float> channel_amax() const { return max_.channel_amax(); }

 private:
  MaxObserver max_;
};

struct HistogramObserverOptions {
  int64_t bins = 2048;  // a power of two ≥ 2
};

// Histogram of |x| whose range is always a power of two, 2^k, with k the frexp exponent of the
// largest |x| seen: the smallest power of two strictly above every value (strictly, so that the
// largest value lands inside the last bin, not on its upper edge). The first nonzero batch sets
// k; a later larger value raises k, and each doubling merges adjacent bin pairs (2j, 2j+1) → j.
// Because bins() and 2^k are powers of two, the bin of v at range 2^k is exactly
// floor(v · bins / 2^k) (computed in double without rounding), and merging pairs maps it to its
// bin at range 2^(k+1): the final counts depend only on the multiset of values, never on batch
// order, batch size or how observers were split and merged. Zeros go to bin 0 at every range.
// Non-finite values are an Invalid error.
class HistogramObserver {
 public:
  explicit HistogramObserver(HistogramObserverOptions options = {});

  void observe(const kernels::Tensor& x);
  // Folds in another histogram with the same bin count; the one with the smaller range is
  // brought to the larger range first. Exact: the result equals observing both inputs here.
  void merge(const HistogramObserver& other);
  void reset();
  // Its statistics as bytes, and another process's written ones merged in: exactly what merge
  // gives with that process's observer.
  void write(runtime::ByteWriter& out) const;
  void merge_written(runtime::ByteReader& in);

  int64_t bins() const { return static_cast<int64_t>(counts_.size()); }
  std::span<const uint64_t> counts() const { return counts_; }
  // k of range = 2^k; empty while no nonzero value was seen.
  std::optional<int> range_exponent() const { return range_exponent_; }
  double range() const;  // 2^k, or 0 while no nonzero value was seen
  uint64_t total() const;
  Histogram histogram() const;
  // The exact max |x| seen (the histogram's range only bounds it); 0 before any data.
  float max() const { return max_; }
  int64_t count() const { return static_cast<int64_t>(count_); }  // elements observed

 private:
  void grow_to(int exponent);
  // Adds counts taken at range 2^exponent (none: all in bin 0), count_of(j) for bin j.
  template <class CountOf>
  void merge_partial(std::optional<int> exponent, float max, CountOf&& count_of);

  std::vector<uint64_t> counts_;
  int log2_bins_ = 0;
  std::optional<int> range_exponent_;
  float max_ = 0.0f;
  uint64_t count_ = 0;
};

}  // namespace qforge::quant
