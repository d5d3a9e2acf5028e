// Calibrators (see calibrators.h for the exact definitions).
#include "quant/calibrators.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "quant/int8.h"

namespace qforge::quant {
namespace {

// Lane sums indexed by the absolute bin index (j mod kLanes): they vectorise, and two candidates
// whose non-zero terms are equal and sit at the same bins get bit-identical sums, so exact ties
// stay exact ties.
constexpr int kLanes = 8;

double lane_total(const double (&acc)[kLanes]) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

bool is_empty(const Histogram& h) {
  return !(h.range > 0.0) || !(h.total() > 0.0);
}

}  // namespace

AmaxChoice max_amax(const Histogram& h) {
  if (is_empty(h)) return {};
  int64_t top = h.bins() - 1;
  while (top > 0 && !(h.counts[static_cast<size_t>(top)] > 0.0)) --top;
  return {h.edge(top + 1), top + 1};
}

AmaxChoice percentile_amax(const Histogram& h, double percentile) {
  if (!(percentile > 0.0 && percentile <= 100.0)) {
    throw_invalid(std::string("percentile calibrator: expected a percentile in (0, 100], got ")
                      .append(std::to_string(percentile)));
  }
  if (is_empty(h)) return {};
  const double target = (percentile / 100.0) * h.total();
  double cumulative = 0.0;
  for (int64_t j = 0; j < h.bins(); ++j) {
    cumulative += h.counts[static_cast<size_t>(j)];
    if (cumulative >= target) return {h.edge(j + 1), j + 1};
  }
  return {h.edge(h.bins()), h.bins()};
}

AmaxChoice entropy_amax(const Histogram& h, EntropyOptions options) {
  if (options.levels < 1) {
    throw_invalid(std::string("entropy calibrator: expected levels >= 1, got ")
                      .append(std::to_string(options.levels)));
  }
  const int64_t n = h.bins();
  const int64_t start = std::max<int64_t>(options.start_bin, 1);
  if (is_empty(h) || n < start) return max_amax(h);

  std::vector<double> b(h.counts);
  if (n >= 2) b[0] = b[1];
  // Prefix sums: mass[j] = sum b[:j], nonzero[j] = #{b > 0 in [:j)}; exact for whole counts.
  std::vector<double> mass(static_cast<size_t>(n + 1), 0.0);
  std::vector<int64_t> nonzero(static_cast<size_t>(n + 1), 0);
  for (int64_t j = 0; j < n; ++j) {
    mass[static_cast<size_t>(j + 1)] = mass[static_cast<size_t>(j)] + b[static_cast<size_t>(j)];
    nonzero[static_cast<size_t>(j + 1)] =
        nonzero[static_cast<size_t>(j)] + (b[static_cast<size_t>(j)] > 0.0 ? 1 : 0);
  }
  const double total = mass[static_cast<size_t>(n)];
  if (!(total > 0.0)) return max_amax(h);

  // p_j and log p_j for bins that are not the last kept one (whose p includes the outliers).
  std::vector<double> p(static_cast<size_t>(n)), log_p(static_cast<size_t>(n));
  for (size_t j = 0; j < p.size(); ++j) {
    p[j] = b[j] / total;
    log_p[j] = p[j] > 0.0 ? std::log(p[j]) : 0.0;
  }
  std::vector<double> log_q(static_cast<size_t>(n));  // per bin, of the candidate being scored

  const int64_t levels = options.levels;
  double best = std::numeric_limits<double>::infinity();
  int64_t best_i = -1;
  for (int64_t i = start; i <= n; ++i) {
    const int64_t last = i - 1;
    const double kept = mass[static_cast<size_t>(i)];
    const double outliers = total - kept;
    const double b_last = b[static_cast<size_t>(last)];
    if (!(b_last > 0.0) && outliers > 0.0) continue;  // p > 0 where q = 0: divergence is +inf

    // Level l covers bins [ceil(l·i / levels), ceil((l + 1)·i / levels)).
    for (int64_t l = 0; l < levels; ++l) {
      const int64_t s = (l * i + levels - 1) / levels;
      const int64_t e = ((l + 1) * i + levels - 1) / levels;
      if (s >= e) continue;
      const int64_t c = nonzero[static_cast<size_t>(e)] - nonzero[static_cast<size_t>(s)];
      const double m = mass[static_cast<size_t>(e)] - mass[static_cast<size_t>(s)];
      // Empty levels hold only p = 0 bins; 0 keeps their terms exactly zero.
      const double lq = c > 0 ? std::log((m / static_cast<double>(c)) / kept) : 0.0;
      std::fill(log_q.begin() + s, log_q.begin() + e, lq);
    }

    double acc[kLanes] = {};
    const double* pp = p.data();
    const double* lp = log_p.data();
    const double* lq = log_q.data();
    int64_t j = 0;
    for (; j + kLanes <= last; j += kLanes) {
      for (int k = 0; k < kLanes; ++k) acc[k] += pp[j + k] * (lp[j + k] - lq[j + k]);
    }
    for (; j < last; ++j) acc[j % kLanes] += pp[j] * (lp[j] - lq[j]);
    double divergence = lane_total(acc);
    const double p_last = (b_last + outliers) / total;
    if (p_last > 0.0) divergence += p_last * (std::log(p_last) - lq[last]);

    if (divergence <= best) {
      best = divergence;
      best_i = i;
    }
  }
  if (best_i < 0) return max_amax(h);
  return {h.edge(best_i), best_i};
}

AmaxChoice mse_amax(const Histogram& h, MseOptions options) {
  if (is_empty(h)) return {};
  const int64_t n = h.bins();
  const int64_t start = std::clamp<int64_t>(options.start_bin, 1, n);
  std::vector<double> centre(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    centre[static_cast<size_t>(j)] =
        h.range * (static_cast<double>(j) + 0.5) / static_cast<double>(n);
  }
  // 1.5·2^52: adding it rounds a double in [0, 2^51] to an integer, ties to even.
  constexpr double kRoundMagic = 6755399441055744.0;
  constexpr double kQMaxD = static_cast<double>(kQMax);
  const double* counts = h.counts.data();
  const double* c = centre.data();
  double best = std::numeric_limits<double>::infinity();
  int64_t best_k = start;
  for (int64_t k = start; k <= n; ++k) {
    const double scale = h.edge(k) / kQMaxD;
    double acc[kLanes] = {};
    int64_t j = 0;
    const auto term = [&](int64_t t) {
      const double u = c[t] / scale;
      double q = u < kQMaxD ? u : kQMaxD;
      q = (q + kRoundMagic) - kRoundMagic;
      const double d = q - u;
      return counts[t] * (d * d);
    };
    for (; j + kLanes <= n; j += kLanes) {
      for (int t = 0; t < kLanes; ++t) acc[t] += term(j + t);
    }
    for (; j < n; ++j) acc[j % kLanes] += term(j);
    const double error = lane_total(acc) * (scale * scale);
    if (error < best) {
      best = error;
      best_k = k;
    }
  }
  return {h.edge(best_k), best_k};
}

AmaxChoice calibrate_amax(const Histogram& histogram, const CalibratorOptions& options) {
  switch (options.method) {
    case Calibrator::kMax:
      return max_amax(histogram);
    case Calibrator::kPercentile:
      return percentile_amax(histogram, options.percentile);
    case Calibrator::kEntropy:
      return entropy_amax(histogram, options.entropy);
    case Calibrator::kMse:
      return mse_amax(histogram, options.mse);
  }
  throw_internal("calibrate_amax: unknown calibrator");
}

const char* calibrator_name(Calibrator method) {
  switch (method) {
    case Calibrator::kMax:
      return "max";
    case Calibrator::kPercentile:
      return "percentile";
    case Calibrator::kEntropy:
      return "entropy";
    case Calibrator::kMse:
      return "mse";
  }
  return "unknown";
}

std::optional<Calibrator> calibrator_from_name(std::string_view name) {
  for (Calibrator m :
       {Calibrator::kMax, Calibrator::kPercentile, Calibrator::kEntropy, Calibrator::kMse}) {
    if (name == calibrator_name(m)) return m;
  }
  return std::nullopt;
}

}  // namespace qforge::quant
