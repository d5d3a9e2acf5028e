// Output agreement figures.
#include "runtime/compare.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace qforge::runtime {
namespace {

int64_t first_argmax(const float* row, int64_t n) {
  return static_cast<int64_t>(std::max_element(row, row + n) - row);
}

}  // namespace

void OutputComparison::add(const kernels::Tensor& a, const kernels::Tensor& b) {
  if (a.dtype() != kernels::DType::kFloat32 || b.dtype() != kernels::DType::kFloat32) {
    throw_invalid("compare: expected float32 outputs, got " + a.describe() + " and " +
                  b.describe());
  }
  if (a.shape() != b.shape()) {
    throw_invalid("compare: expected outputs of the same shape, got " + a.describe() + " and " +
                  b.describe());
  }
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  const size_t n = static_cast<size_t>(a.numel());
  for (size_t i = 0; i < n; ++i) {
    const double x = pa[i];
    const double y = pb[i];
    if (!std::isfinite(x) || !std::isfinite(y)) {
      ++nonfinite_;
      continue;
    }
    const double d = std::fabs(x - y);
    max_abs_diff_ = std::max(max_abs_diff_, d);
    max_rel_error_ = std::max(max_rel_error_, d / std::max(std::fabs(x), kRelativeErrorFloor));
    sum_ab_ += x * y;
    sum_aa_ += x * x;
    sum_bb_ += y * y;
    sum_dd_ += d * d;
  }
  elements_ += n;

  const bool row_wise = a.rank() == 2 && (classes_ < 0 || a.dim(1) == classes_);
  if (!row_wise) row_wise_ = false;
  if (!row_wise_) return;
  classes_ = a.dim(1);
  const int64_t rows = a.dim(0);
  if (classes_ == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    agreeing_rows_ +=
        first_argmax(pa + r * classes_, classes_) == first_argmax(pb + r * classes_, classes_);
  }
  rows_ += static_cast<size_t>(rows);
}

ComparisonFigures OutputComparison::figures() const {
  ComparisonFigures f;
  f.elements = elements_;
  f.nonfinite = nonfinite_;
  f.max_abs_diff = max_abs_diff_;
  f.max_rel_error = max_rel_error_;
  if (sum_aa_ == 0 && sum_bb_ == 0) {
    f.cosine = 1;
  } else if (sum_aa_ == 0 || sum_bb_ == 0) {
    f.cosine = 0;
  } else {
    f.cosine = std::clamp(sum_ab_ / (std::sqrt(sum_aa_) * std::sqrt(sum_bb_)), -1.0, 1.0);
  }
  if (sum_dd_ == 0) {
    f.sqnr_db = std::numeric_limits<double>::infinity();
  } else if (sum_aa_ == 0) {
    f.sqnr_db = -std::numeric_limits<double>::infinity();
  } else {
    f.sqnr_db = 10.0 * std::log10(sum_aa_ / sum_dd_);
  }
  if (row_wise_ && classes_ > 0 && rows_ > 0) {
    f.rows = rows_;
    f.agreeing_rows = agreeing_rows_;
    f.top1_agreement = static_cast<double>(agreeing_rows_) / static_cast<double>(rows_);
  }
  return f;
}

ComparisonFigures compare_outputs(const kernels::Tensor& a, const kernels::Tensor& b) {
  OutputComparison c;
  c.add(a, b);
  return c.figures();
}

}  // namespace qforge::runtime
