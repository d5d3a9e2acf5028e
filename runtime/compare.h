// Agreement figures between a reference output and a candidate output of the same shape, summed
// over batches (rewrite and quantization regression checks, `qforge compare`).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "kernels/tensor.h"

namespace qforge::runtime {

// |Δ| / max(|a|, kRelativeErrorFloor) is the relative error of one element: the floor keeps
// reference values at or near zero from dividing by zero, at the price of reporting large
// relative errors for elements whose reference is below it.
inline constexpr double kRelativeErrorFloor = 1e-6;

struct ComparisonFigures {
  size_t elements = 0;
  // Elements where a or b is NaN or ±inf; they take no part in the other figures.
  size_t nonfinite = 0;
  double max_abs_diff = 0;   // max |a - b|, in the output's units
  double max_rel_error = 0;  // max |a - b| / max(|a|, kRelativeErrorFloor)
  // Σab / sqrt(Σa² · Σb²); 1 when both are all zeros, 0 when only one is.
  double cosine = 1;
  // 10·log10(Σa² / Σ(a - b)²) in dB: +inf when a == b everywhere.
  double sqnr_db = 0;
  // For [N, C] outputs: rows whose first argmax agree, out of all rows.
  std::optional<double> top1_agreement;
  size_t rows = 0;
  size_t agreeing_rows = 0;
};

// Sums over batches in the order they are added; double accumulation, so for a fixed batch order
// the figures are deterministic.
class OutputComparison {
 public:
  // a: reference, b: candidate, both float32 of the same shape (Invalid error otherwise); all
  // batches must share their trailing dims.
  void add(const kernels::Tensor& a, const kernels::Tensor& b);
  ComparisonFigures figures() const;

 private:
  size_t elements_ = 0;
  size_t nonfinite_ = 0;
  double max_abs_diff_ = 0;
  double max_rel_error_ = 0;
  double sum_ab_ = 0;
  double sum_aa_ = 0;
  double sum_bb_ = 0;
  double sum_dd_ = 0;
  bool row_wise_ = true;  // every batch so far was [N, C]
  int64_t classes_ = -1;
  size_t rows_ = 0;
  size_t agreeing_rows_ = 0;
};

// One-shot form of OutputComparison.
ComparisonFigures compare_outputs(const kernels::Tensor& a, const kernels::Tensor& b);

}  // namespace qforge::runtime
