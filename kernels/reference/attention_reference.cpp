// Reference attention in double (see attention_reference.h).
#include "kernels/reference/attention_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace qforge::kernels::reference {
namespace {

int64_t mask_offset(const AttentionMask& m, int64_t b, int64_t i, int64_t j) {
  int64_t offset = i * m.row_stride + j * m.col_stride;
  for (size_t d = m.batch_shape.size(); d-- > 0;) {
    offset += (b % m.batch_shape[d]) * m.batch_strides[d];
    b /= m.batch_shape[d];
  }
  return offset;
}

// Softmax probabilities P [q_len, kv_len] of task b.
std::vector<double> probabilities(const AttentionDims& d, const double* q, const double* k,
                                  const AttentionMask* layout, const double* mask_values,
                                  int64_t b) {
  std::vector<double> p(static_cast<size_t>(d.q_len * d.kv_len));
  const double* qb = q + b * d.q_len * d.head_dim;
  const double* kb = k + b * d.kv_len * d.head_dim;
  for (int64_t i = 0; i < d.q_len; ++i) {
    double* row = p.data() + i * d.kv_len;
    double peak = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < d.kv_len; ++j) {
      double s = 0;
      for (int64_t e = 0; e < d.head_dim; ++e) s += qb[i * d.head_dim + e] * kb[j * d.head_dim + e];
      s *= d.scale;
      if (layout) s += mask_values[mask_offset(*layout, b, i, j)];
      if (d.causal && j > i) s = -std::numeric_limits<double>::infinity();
      row[j] = s;
      peak = std::max(peak, s);
    }
    double total = 0;
    for (int64_t j = 0; j < d.kv_len; ++j) {
      row[j] = std::exp(row[j] - peak);
      total += row[j];
    }
    for (int64_t j = 0; j < d.kv_len; ++j) row[j] /= total;
  }
  return p;
}

}  // namespace

void attention(const AttentionDims& d, const double* q, const double* k, const double* v,
               const AttentionMask* layout, const double* mask_values, double* out) {
  for (int64_t b = 0; b < d.batch; ++b) {
    const std::vector<double> p = probabilities(d, q, k, layout, mask_values, b);
    const double* vb = v + b * d.kv_len * d.value_dim;
    for (int64_t i = 0; i < d.q_len; ++i) {
      for (int64_t e = 0; e < d.value_dim; ++e) {
        double acc = 0;
        for (int64_t j = 0; j < d.kv_len; ++j) {
          acc += p[static_cast<size_t>(i * d.kv_len + j)] * vb[j * d.value_dim + e];
        }
        out[(b * d.q_len + i) * d.value_dim + e] = acc;
      }
    }
  }
}

void attention_backward(const AttentionDims& d, const double* q, const double* k, const double* v,
                        const AttentionMask* layout, const double* mask_values, const double* dout,
                        double* dq, double* dk, double* dv, double* dmask, int64_t mask_numel) {
  if (dmask) std::fill_n(dmask, mask_numel, 0.0);
  for (int64_t b = 0; b < d.batch; ++b) {
    const std::vector<double> p = probabilities(d, q, k, layout, mask_values, b);
    const double* qb = q + b * d.q_len * d.head_dim;
    const double* kb = k + b * d.kv_len * d.head_dim;
    const double* vb = v + b * d.kv_len * d.value_dim;
    const double* gb = dout + b * d.q_len * d.value_dim;
    auto at = [&](int64_t i, int64_t j) { return p[static_cast<size_t>(i * d.kv_len + j)]; };
    // dP[i][j] = Σ_e dO[i][e]·V[j][e]; dS = Jacobian of the row softmax applied to dP.
    std::vector<double> dp(p.size()), ds(p.size());
    for (int64_t i = 0; i < d.q_len; ++i) {
      for (int64_t j = 0; j < d.kv_len; ++j) {
        double acc = 0;
        for (int64_t e = 0; e < d.value_dim; ++e) {
          acc += gb[i * d.value_dim + e] * vb[j * d.value_dim + e];
        }
        dp[static_cast<size_t>(i * d.kv_len + j)] = acc;
      }
      for (int64_t j = 0; j < d.kv_len; ++j) {
        double acc = 0;
        for (int64_t l = 0; l < d.kv_len; ++l) {
          acc += dp[static_cast<size_t>(i * d.kv_len + l)] * at(i, l) *
                 ((l == j ? 1.0 : 0.0) - at(i, j));
        }
        ds[static_cast<size_t>(i * d.kv_len + j)] = acc;
      }
    }
    if (dv) {
      for (int64_t j = 0; j < d.kv_len; ++j) {
        for (int64_t e = 0; e < d.value_dim; ++e) {
          double acc = 0;
          for (int64_t i = 0; i < d.q_len; ++i) acc += at(i, j) * gb[i * d.value_dim + e];
          dv[(b * d.kv_len + j) * d.value_dim + e] = acc;
        }
      }
    }
    if (dq) {
      for (int64_t i = 0; i < d.q_len; ++i) {
        for (int64_t e = 0; e < d.head_dim; ++e) {
          double acc = 0;
          for (int64_t j = 0; j < d.kv_len; ++j) {
            acc += ds[static_cast<size_t>(i * d.kv_len + j)] * kb[j * d.head_dim + e];
          }
          dq[(b * d.q_len + i) * d.head_dim + e] = d.scale * acc;
        }
      }
    }
    if (dk) {
      for (int64_t j = 0; j < d.kv_len; ++j) {
        for (int64_t e = 0; e < d.head_dim; ++e) {
          double acc = 0;
          for (int64_t i = 0; i < d.q_len; ++i) {
            acc += ds[static_cast<size_t>(i * d.kv_len + j)] * qb[i * d.head_dim + e];
          }
          dk[(b * d.kv_len + j) * d.head_dim + e] = d.scale * acc;
        }
      }
    }
    if (dmask && layout) {
      for (int64_t i = 0; i < d.q_len; ++i) {
        for (int64_t j = 0; j < d.kv_len; ++j) {
          dmask[mask_offset(*layout, b, i, j)] += ds[static_cast<size_t>(i * d.kv_len + j)];
        }
      }
    }
  }
}

}  // namespace qforge::kernels::reference
