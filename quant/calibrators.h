// Calibrators: a histogram of |x| (quant/observers.h) → the amax that sets scale = amax / 127.
// Each returns the chosen bin edge index with its amax = histogram.edge(index), so that results
// can be compared exactly. All are deterministic. An empty histogram (range 0 or no counts)
// gives amax 0 at edge 0. Counts are treated as whole numbers (sums of them are exact).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "quant/observers.h"

namespace qforge::quant {

struct AmaxChoice {
  double amax = 0.0;
  int64_t edge = 0;  // amax == histogram.edge(edge)
};

// max: the upper edge of the highest non-empty bin. (With a MaxObserver, its amax() is the
// exact running max and needs no calibrator.)
AmaxChoice max_amax(const Histogram& histogram);

// percentile: the smallest upper edge edge(j + 1) whose cumulative count counts[0..j] reaches
// (percentile / 100) · total, evaluated in double in that order. percentile in (0, 100].
AmaxChoice percentile_amax(const Histogram& histogram, double percentile = 99.99);

struct EntropyOptions {
  int64_t start_bin = 128;  // first candidate bin count
  int64_t levels = 128;     // quantized levels of |x| for signed 8 bits
};

// entropy: TensorRT's KL-divergence threshold search, as NVIDIA's pytorch-quantization runs it.
//   b = counts with b[0] replaced by b[1] (the spike of exact zeros, e.g. after ReLU, is not
//   allowed to dominate); T = sum(b). For each candidate i in [start_bin, bins]:
//   P: p_j = b_j / T for j < i, plus the outliers sum(b[i:]) / T added to p_{i-1}.
//   Q: bins j < i fall into level floor(levels · j / i); a level's mass m (sum of b_j in it,
//      outliers not included) is spread evenly over its c non-empty bins: q_j = (m / c) / Q_i
//      where b_j > 0, else 0, with Q_i = sum(b[:i]) (the exact sum of that Q, mathematically).
//   KL(P‖Q) = sum over p_j > 0 of p_j · log(p_j / q_j); +inf when some p_j > 0 has q_j = 0 (only
//   possible at j = i - 1: b_{i-1} = 0 with outliers beyond i).
//   The minimum divergence wins, the largest i among equal minima (pytorch-quantization takes
//   the last argmin), and amax = edge(i), the upper edge of the last kept bin.
// When no candidate exists (bins < start_bin) or b has no mass, the max calibrator answers.
AmaxChoice entropy_amax(const Histogram& histogram, EntropyOptions options = {});

struct MseOptions {
  int64_t start_bin = 128;  // first candidate edge (clamped to [1, bins])
};

// mse: for each candidate edge k in [start_bin, bins], amax = edge(k), s = amax / 127, the error
//   E_k = s² · sum_j counts_j · (min(round_half_even(c_j / s), 127) − c_j / s)²
// with c_j = range · (j + 0.5) / bins the bin centre (every value of a bin stands at its
// centre); that is sum_j counts_j · (fake_quant(c_j) − c_j)² in exact arithmetic, written in
// units of s so that on-grid centres give exactly zero. The first minimum wins; amax = edge(k).
AmaxChoice mse_amax(const Histogram& histogram, MseOptions options = {});

enum class Calibrator { kMax, kPercentile, kEntropy, kMse };

struct CalibratorOptions {
  Calibrator method = Calibrator::kMax;
  double percentile = 99.99;
  EntropyOptions entropy;
  MseOptions mse;
};

AmaxChoice calibrate_amax(const Histogram& histogram, const CalibratorOptions& options);

const char* calibrator_name(Calibrator method);  // "max", "percentile", "entropy", "mse"
std::optional<Calibrator> calibrator_from_name(std::string_view name);

}  // namespace qforge::quant
