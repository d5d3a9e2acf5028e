// Reference normalisation, softmax and loss kernels in double (see norm_softmax_reference.h).
#include "kernels/reference/norm_softmax_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace qforge::kernels::reference {
namespace {

int64_t bn_index(const BatchNormDims& d, int64_t n, int64_t c, int64_t i) {
  return (n * d.channels + c) * d.inner + i;
}

// log softmax of z/T along one row of d values.
std::vector<double> log_softmax_row(const double* z, int64_t d, double t) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t k = 0; k < d; ++k) mx = std::max(mx, z[k] / t);
  double sum = 0;
  for (int64_t k = 0; k < d; ++k) sum += std::exp(z[k] / t - mx);
  std::vector<double> out(static_cast<size_t>(d));
  for (int64_t k = 0; k < d; ++k) out[static_cast<size_t>(k)] = z[k] / t - mx - std::log(sum);
  return out;
}

double distillation_factor(const DistillationOptions& o) {
  const double t = o.temperature;
  return o.scale_by_temperature_squared ? t * t : 1.0;
}

// Class i's share of the smoothed cross-entropy target: 1 − ε on the label, ε/classes on every
// class.
double smoothed_target(int64_t i, int64_t label, int64_t classes, double label_smoothing) {
  return (i == label ? 1.0 - label_smoothing : 0.0) +
         label_smoothing / static_cast<double>(classes);
}

}  // namespace

void batch_norm_training(const BatchNormDims& d, double momentum, const double* x,
                         const double* gamma, const double* beta, double* y, double* mean,
                         double* inv_std, double* running_mean, double* running_var) {
  const auto count = static_cast<double>(d.batch * d.inner);
  for (int64_t c = 0; c < d.channels; ++c) {
    double sum = 0;
    for (int64_t n = 0; n < d.batch; ++n) {
      for (int64_t i = 0; i < d.inner; ++i) sum += x[bn_index(d, n, c, i)];
    }
    const double mu = sum / count;
    double sq = 0;
    for (int64_t n = 0; n < d.batch; ++n) {
      for (int64_t i = 0; i < d.inner; ++i) {
        const double dev = x[bn_index(d, n, c, i)] - mu;
        sq += dev * dev;
      }
    }
    const double var = sq / count;
    const double inv = 1.0 / std::sqrt(var + d.epsilon);
    for (int64_t n = 0; n < d.batch; ++n) {
      for (int64_t i = 0; i < d.inner; ++i) {
        const int64_t at = bn_index(d, n, c, i);
        y[at] = (x[at] - mu) * inv * gamma[c] + beta[c];
      }
    }
    if (mean) mean[c] = mu;
    if (inv_std) inv_std[c] = inv;
    if (running_mean) running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mu;
    if (running_var) {
      running_var[c] = (1 - momentum) * running_var[c] + momentum * sq / (count - 1);
    }
  }
}

void batch_norm_training_backward(const BatchNormDims& d, const double* x, const double* gamma,
                                  const double* mean, const double* inv_std, const double* dy,
                                  double* dx, double* dgamma, double* dbeta) {
  const auto count = static_cast<double>(d.batch * d.inner);
  for (int64_t c = 0; c < d.channels; ++c) {
    const double mu = mean[c];
    const double inv = inv_std[c];
    // Chain rule through y = x̂·γ + β, x̂ = (x - μ)·(σ² + ε)^(-1/2), σ² and μ of x.
    double dvar = 0, dmean = 0, sum_centered = 0, db = 0, dg = 0;
    for (int64_t n = 0; n < d.batch; ++n) {
      for (int64_t i = 0; i < d.inner; ++i) {
        const int64_t at = bn_index(d, n, c, i);
        const double dxhat = dy[at] * gamma[c];
        dvar += dxhat * (x[at] - mu) * -0.5 * inv * inv * inv;
        dmean += -dxhat * inv;
        sum_centered += -2.0 * (x[at] - mu);
        db += dy[at];
        dg += dy[at] * (x[at] - mu) * inv;
      }
    }
    dmean += dvar * sum_centered / count;
    for (int64_t n = 0; n < d.batch; ++n) {
      for (int64_t i = 0; i < d.inner; ++i) {
        const int64_t at = bn_index(d, n, c, i);
        if (dx) {
          dx[at] = dy[at] * gamma[c] * inv + dvar * 2.0 * (x[at] - mu) / count + dmean / count;
        }
      }
    }
    if (dgamma) dgamma[c] = dg;
    if (dbeta) dbeta[c] = db;
  }
}

void batch_norm_inference(const BatchNormDims& d, const double* x, const double* gamma,
                          const double* beta, const double* mean, const double* var, double* y) {
  for (int64_t n = 0; n < d.batch; ++n) {
    for (int64_t c = 0; c < d.channels; ++c) {
      for (int64_t i = 0; i < d.inner; ++i) {
        const int64_t at = bn_index(d, n, c, i);
        y[at] = (x[at] - mean[c]) / std::sqrt(var[c] + d.epsilon) * gamma[c] + beta[c];
      }
    }
  }
}

void batch_norm_inference_backward(const BatchNormDims& d, const double* x, const double* gamma,
                                   const double* mean, const double* var, const double* dy,
                                   double* dx, double* dgamma, double* dbeta) {
  for (int64_t c = 0; c < d.channels; ++c) {
    const double inv = 1.0 / std::sqrt(var[c] + d.epsilon);
    double dg = 0, db = 0;
    for (int64_t n = 0; n < d.batch; ++n) {
      for (int64_t i = 0; i < d.inner; ++i) {
        const int64_t at = bn_index(d, n, c, i);
        dg += dy[at] * (x[at] - mean[c]) * inv;
        db += dy[at];
        if (dx) dx[at] = dy[at] * gamma[c] * inv;
      }
    }
    if (dgamma) dgamma[c] = dg;
    if (dbeta) dbeta[c] = db;
  }
}

void layer_norm(const LayerNormDims& dims, const double* x, const double* scale, const double* bias,
                double* y, double* mean, double* inv_std) {
  const int64_t d = dims.size;
  for (int64_t r = 0; r < dims.rows; ++r) {
    const double* xr = x + r * d;
    double sum = 0;
    for (int64_t i = 0; i < d; ++i) sum += xr[i];
    const double mu = sum / static_cast<double>(d);
    double sq = 0;
    for (int64_t i = 0; i < d; ++i) sq += (xr[i] - mu) * (xr[i] - mu);
    const double inv = 1.0 / std::sqrt(sq / static_cast<double>(d) + dims.epsilon);
    for (int64_t i = 0; i < d; ++i) {
      y[r * d + i] = (xr[i] - mu) * inv * scale[i] + (bias ? bias[i] : 0.0);
    }
    if (mean) mean[r] = mu;
    if (inv_std) inv_std[r] = inv;
  }
}

void rms_norm(const LayerNormDims& dims, const double* x, const double* scale, double* y) {
  const int64_t d = dims.size;
  for (int64_t r = 0; r < dims.rows; ++r) {
    const double* xr = x + r * d;
    double sq = 0;
    for (int64_t i = 0; i < d; ++i) sq += xr[i] * xr[i];
    const double inv = 1.0 / std::sqrt(sq / static_cast<double>(d) + dims.epsilon);
    for (int64_t i = 0; i < d; ++i) y[r * d + i] = xr[i] * inv * scale[i];
  }
}

void layer_norm_backward(const LayerNormDims& dims, const double* x, const double* scale,
                         const double* mean, const double* inv_std, const double* dy, double* dx,
                         double* dscale, double* dbias) {
  const int64_t d = dims.size;
  const auto size = static_cast<double>(d);
  if (dscale) std::fill_n(dscale, d, 0.0);
  if (dbias) std::fill_n(dbias, d, 0.0);
  for (int64_t r = 0; r < dims.rows; ++r) {
    const double* xr = x + r * d;
    const double* dyr = dy + r * d;
    const double mu = mean[r];
    const double inv = inv_std[r];
    double dvar = 0, dmean = 0, sum_centered = 0;
    for (int64_t i = 0; i < d; ++i) {
      const double dxhat = dyr[i] * scale[i];
      dvar += dxhat * (xr[i] - mu) * -0.5 * inv * inv * inv;
      dmean += -dxhat * inv;
      sum_centered += -2.0 * (xr[i] - mu);
      if (dscale) dscale[i] += dyr[i] * (xr[i] - mu) * inv;
      if (dbias) dbias[i] += dyr[i];
    }
    dmean += dvar * sum_centered / size;
    if (!dx) continue;
    for (int64_t i = 0; i < d; ++i) {
      dx[r * d + i] = dyr[i] * scale[i] * inv + dvar * 2.0 * (xr[i] - mu) / size + dmean / size;
    }
  }
}

void group_norm(const GroupNormDims& dims, const double* x, const double* scale, const double* bias,
                double* y, double* mean, double* inv_std) {
  const int64_t per_group = dims.channels / dims.groups;
  const int64_t d = per_group * dims.inner;
  for (int64_t n = 0; n < dims.batch; ++n) {
    for (int64_t g = 0; g < dims.groups; ++g) {
      const int64_t block = n * dims.groups + g;
      const double* xb = x + block * d;
      double sum = 0;
      for (int64_t i = 0; i < d; ++i) sum += xb[i];
      const double mu = sum / static_cast<double>(d);
      double sq = 0;
      for (int64_t i = 0; i < d; ++i) sq += (xb[i] - mu) * (xb[i] - mu);
      const double inv = 1.0 / std::sqrt(sq / static_cast<double>(d) + dims.epsilon);
      for (int64_t i = 0; i < d; ++i) {
        const int64_t c = g * per_group + i / dims.inner;
        y[block * d + i] = (xb[i] - mu) * inv * scale[c] + (bias ? bias[c] : 0.0);
      }
      if (mean) mean[block] = mu;
      if (inv_std) inv_std[block] = inv;
    }
  }
}

void group_norm_backward(const GroupNormDims& dims, const double* x, const double* scale,
                         const double* mean, const double* inv_std, const double* dy, double* dx,
                         double* dscale, double* dbias) {
  const int64_t per_group = dims.channels / dims.groups;
  const int64_t d = per_group * dims.inner;
  const auto size = static_cast<double>(d);
  if (dscale) std::fill_n(dscale, dims.channels, 0.0);
  if (dbias) std::fill_n(dbias, dims.channels, 0.0);
  for (int64_t block = 0; block < dims.batch * dims.groups; ++block) {
    const int64_t first_channel = block % dims.groups * per_group;
    const double* xb = x + block * d;
    const double* dyb = dy + block * d;
    const double mu = mean[block];
    const double inv = inv_std[block];
    // Through x̂ = (x - mean)·inv_std, inv_std = (var + eps)^-1/2 and mean, as the chain rule
    // writes it.
    double dvar = 0, dmean = 0, sum_centered = 0;
    for (int64_t i = 0; i < d; ++i) {
      const int64_t c = first_channel + i / dims.inner;
      const double dxhat = dyb[i] * scale[c];
      dvar += dxhat * (xb[i] - mu) * -0.5 * inv * inv * inv;
      dmean += -dxhat * inv;
      sum_centered += -2.0 * (xb[i] - mu);
      if (dscale) dscale[c] += dyb[i] * (xb[i] - mu) * inv;
      if (dbias) dbias[c] += dyb[i];
    }
    dmean += dvar * sum_centered / size;
    if (!dx) continue;
    for (int64_t i = 0; i < d; ++i) {
      const int64_t c = first_channel + i / dims.inner;
      dx[block * d + i] = dyb[i] * scale[c] * inv + dvar * 2.0 * (xb[i] - mu) / size + dmean / size;
    }
  }
}

void softmax(const SoftmaxDims& dims, const double* x, double* y) {
  const int64_t d = dims.axis_size;
  for (int64_t o = 0; o < dims.outer; ++o) {
    for (int64_t i = 0; i < dims.inner; ++i) {
      const int64_t base = o * d * dims.inner + i;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t k = 0; k < d; ++k) mx = std::max(mx, x[base + k * dims.inner]);
      double sum = 0;
      for (int64_t k = 0; k < d; ++k) sum += std::exp(x[base + k * dims.inner] - mx);
      for (int64_t k = 0; k < d; ++k) {
        y[base + k * dims.inner] = std::exp(x[base + k * dims.inner] - mx) / sum;
      }
    }
  }
}

void softmax_backward(const SoftmaxDims& dims, const double* y, const double* dy, double* dx) {
  const int64_t d = dims.axis_size;
  for (int64_t o = 0; o < dims.outer; ++o) {
    for (int64_t i = 0; i < dims.inner; ++i) {
      const int64_t base = o * d * dims.inner + i;
      // dx_j = Σ_k dy_k · ∂y_k/∂x_j with ∂y_k/∂x_j = y_k·(δ_kj - y_j).
      for (int64_t j = 0; j < d; ++j) {
        const double yj = y[base + j * dims.inner];
        double acc = 0;
        for (int64_t k = 0; k < d; ++k) {
          const double yk = y[base + k * dims.inner];
          acc += dy[base + k * dims.inner] * yk * ((k == j ? 1.0 : 0.0) - yj);
        }
        dx[base + j * dims.inner] = acc;
      }
    }
  }
}

void log_softmax(const SoftmaxDims& dims, const double* x, double* y) {
  const int64_t n = dims.outer * dims.axis_size * dims.inner;
  softmax(dims, x, y);
  for (int64_t i = 0; i < n; ++i) y[i] = std::log(y[i]);
}

void log_softmax_backward(const SoftmaxDims& dims, const double* x, const double* dy, double* dx) {
  const int64_t d = dims.axis_size;
  std::vector<double> p(static_cast<size_t>(dims.outer * d * dims.inner));
  softmax(dims, x, p.data());
  for (int64_t o = 0; o < dims.outer; ++o) {
    for (int64_t i = 0; i < dims.inner; ++i) {
      const int64_t base = o * d * dims.inner + i;
      for (int64_t j = 0; j < d; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < d; ++k) {
          acc += dy[base + k * dims.inner] *
                 ((k == j ? 1.0 : 0.0) - p[static_cast<size_t>(base + j * dims.inner)]);
        }
        dx[base + j * dims.inner] = acc;
      }
    }
  }
}

double cross_entropy(const LossDims& dims, const double* logits, const int64_t* labels,
                     double label_smoothing) {
  double total = 0;
  for (int64_t b = 0; b < dims.batch; ++b) {
    const std::vector<double> lp = log_softmax_row(logits + b * dims.classes, dims.classes, 1.0);
    for (int64_t i = 0; i < dims.classes; ++i) {
      total -=
          smoothed_target(i, labels[b], dims.classes, label_smoothing) * lp[static_cast<size_t>(i)];
    }
  }
  return total / static_cast<double>(dims.batch);
}

void cross_entropy_backward(const LossDims& dims, const double* logits, const int64_t* labels,
                            double dloss, double* dlogits, double label_smoothing) {
  const double k = dloss / static_cast<double>(dims.batch);
  for (int64_t b = 0; b < dims.batch; ++b) {
    const std::vector<double> lp = log_softmax_row(logits + b * dims.classes, dims.classes, 1.0);
    for (int64_t i = 0; i < dims.classes; ++i) {
      dlogits[b * dims.classes + i] =
          k * (std::exp(lp[static_cast<size_t>(i)]) -
               smoothed_target(i, labels[b], dims.classes, label_smoothing));
    }
  }
}

double distillation_kl(const LossDims& dims, const DistillationOptions& options,
                       const double* student_logits, const double* teacher_logits) {
  const double t = options.temperature;
  double total = 0;
  for (int64_t b = 0; b < dims.batch; ++b) {
    const std::vector<double> lp =
        log_softmax_row(student_logits + b * dims.classes, dims.classes, t);
    const std::vector<double> lq =
        log_softmax_row(teacher_logits + b * dims.classes, dims.classes, t);
    for (size_t k = 0; k < lp.size(); ++k) total += std::exp(lq[k]) * (lq[k] - lp[k]);
  }
  return total * distillation_factor(options) / static_cast<double>(dims.batch);
}

void distillation_kl_backward(const LossDims& dims, const DistillationOptions& options,
                              const double* student_logits, const double* teacher_logits,
                              double dloss, double* dstudent_logits) {
  const double t = options.temperature;
  const double k = dloss * distillation_factor(options) / (static_cast<double>(dims.batch) * t);
  for (int64_t b = 0; b < dims.batch; ++b) {
    const std::vector<double> lp =
        log_softmax_row(student_logits + b * dims.classes, dims.classes, t);
    const std::vector<double> lq =
        log_softmax_row(teacher_logits + b * dims.classes, dims.classes, t);
    for (size_t i = 0; i < lp.size(); ++i) {
      dstudent_logits[b * dims.classes + static_cast<int64_t>(i)] =
          k * (std::exp(lp[i]) - std::exp(lq[i]));
    }
  }
}

}  // namespace qforge::kernels::reference
