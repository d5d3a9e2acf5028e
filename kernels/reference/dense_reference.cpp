// Reference dense kernels: each output element computed straight from its definition.
#include "kernels/reference/dense_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace qforge::kernels::reference {

void conv2d(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y) {
  const int64_t cin_g = g.in_channels / g.group;
  const int64_t cout_g = g.out_channels / g.group;
  for (int64_t n = 0; n < g.batch; ++n) {
    for (int64_t oc = 0; oc < g.out_channels; ++oc) {
      const int64_t grp = oc / cout_g;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          double acc = bias ? bias[oc] : 0.0;
          for (int64_t ci = 0; ci < cin_g; ++ci) {
            const int64_t c = grp * cin_g + ci;
            for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
              const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
              if (ih < 0 || ih >= g.in_h) continue;
              for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
                const int64_t iw = ow * g.stride_w - g.pad_left + kw * g.dilation_w;
                if (iw < 0 || iw >= g.in_w) continue;
                acc +=
                    static_cast<double>(x[((n * g.in_channels + c) * g.in_h + ih) * g.in_w + iw]) *
                    w[((oc * cin_g + ci) * g.kernel_h + kh) * g.kernel_w + kw];
              }
            }
          }
          y[((n * g.out_channels + oc) * g.out_h + oh) * g.out_w + ow] = static_cast<float>(acc);
        }
      }
    }
  }
}

void gemm(const GemmDims& d, const float* a, const float* b, const float* bias, float* y) {
  for (int64_t i = 0; i < d.m; ++i) {
    for (int64_t j = 0; j < d.n; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < d.k; ++p) {
        const float av = d.trans_a == Transpose::kYes ? a[p * d.m + i] : a[i * d.k + p];
        const float bv = d.trans_b == Transpose::kYes ? b[j * d.k + p] : b[p * d.n + j];
        acc += static_cast<double>(av) * bv;
      }
      double c = 0.0;
      switch (d.bias) {
        case GemmBias::kNone:
          break;
        case GemmBias::kScalar:
          c = bias[0];
          break;
        case GemmBias::kRow:
          c = bias[j];
          break;
        case GemmBias::kColumn:
          c = bias[i];
          break;
        case GemmBias::kFull:
          c = bias[i * d.n + j];
          break;
      }
      y[i * d.n + j] = static_cast<float>(d.alpha * acc + d.beta * c);
    }
  }
}

std::vector<int64_t> matmul(std::span<const int64_t> a_shape, const float* a,
                            std::span<const int64_t> b_shape, const float* b,
                            std::vector<float>& y) {
  const bool a_vec = a_shape.size() == 1;
  const bool b_vec = b_shape.size() == 1;
  // Both operands as matrices with the same number of (leading, size-1 padded) batch axes.
  const size_t a_rank = a_vec ? 2 : a_shape.size();
  const size_t b_rank = b_vec ? 2 : b_shape.size();
  const size_t rank = std::max(a_rank, b_rank);
  std::vector<int64_t> as(rank, 1), bs(rank, 1);
  if (a_vec) {
    as[rank - 1] = a_shape[0];
  } else {
    std::copy(a_shape.begin(), a_shape.end(), as.begin() + static_cast<int64_t>(rank - a_rank));
  }
  if (b_vec) {
    bs[rank - 2] = b_shape[0];
  } else {
    std::copy(b_shape.begin(), b_shape.end(), bs.begin() + static_cast<int64_t>(rank - b_rank));
  }
  const int64_t m = as[rank - 2], k = as[rank - 1], n = bs[rank - 1];
  std::vector<int64_t> batch(rank - 2);
  int64_t count = 1;
  for (size_t i = 0; i + 2 < rank; ++i) {
    batch[i] = std::max(as[i], bs[i]);
    count *= batch[i];
  }
  y.assign(static_cast<size_t>(count * m * n), 0.0f);
  std::vector<int64_t> idx(batch.size(), 0);
  for (int64_t t = 0; t < count; ++t) {
    int64_t rest = t;
    for (size_t i = batch.size(); i-- > 0;) {
      idx[i] = rest % batch[i];
      rest /= batch[i];
    }
    int64_t a_off = 0, b_off = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      a_off = a_off * as[i] + (as[i] == 1 ? 0 : idx[i]);
      b_off = b_off * bs[i] + (bs[i] == 1 ? 0 : idx[i]);
    }
    a_off *= m * k;
    b_off *= k * n;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0.0;
        for (int64_t p = 0; p < k; ++p) {
          acc += static_cast<double>(a[a_off + i * k + p]) * b[b_off + p * n + j];
        }
        y[static_cast<size_t>((t * m + i) * n + j)] = static_cast<float>(acc);
      }
    }
  }
  std::vector<int64_t> out(batch.size() + (a_vec ? 0 : 1) + (b_vec ? 0 : 1));
  std::copy(batch.begin(), batch.end(), out.begin());
  size_t at = batch.size();
  if (!a_vec) out[at++] = m;
  if (!b_vec) out[at] = n;
  return out;
}

void batch_norm(const float* x, int64_t batch, int64_t channels, int64_t inner, const float* gamma,
                const float* beta, const float* mean, const float* var, float epsilon, float* y) {
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      const double inv = 1.0 / std::sqrt(static_cast<double>(var[c]) + epsilon);
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t at = (n * channels + c) * inner + i;
        y[at] =
            static_cast<float>((x[at] - static_cast<double>(mean[c])) * inv * gamma[c] + beta[c]);
      }
    }
  }
}

void layer_norm(const float* x, int64_t rows, int64_t size, const float* scale, const float* bias,
                float epsilon, float* y, float* mean, float* inv_std_dev) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * size;
    double sum = 0.0;
    for (int64_t i = 0; i < size; ++i) sum += xr[i];
    const double mu = sum / static_cast<double>(size);
    double sq = 0.0;
    for (int64_t i = 0; i < size; ++i) sq += (xr[i] - mu) * (xr[i] - mu);
    const double inv = 1.0 / std::sqrt(sq / static_cast<double>(size) + epsilon);
    for (int64_t i = 0; i < size; ++i) {
      y[r * size + i] = static_cast<float>((xr[i] - mu) * inv * scale[i] + (bias ? bias[i] : 0.0f));
    }
    if (mean) mean[r] = static_cast<float>(mu);
    if (inv_std_dev) inv_std_dev[r] = static_cast<float>(inv);
  }
}

void softmax(const SoftmaxDims& dims, const float* x, float* y) {
  for (int64_t o = 0; o < dims.outer; ++o) {
    for (int64_t i = 0; i < dims.inner; ++i) {
      const int64_t base = o * dims.axis_size * dims.inner + i;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t k = 0; k < dims.axis_size; ++k)
        mx = std::max<double>(mx, x[base + k * dims.inner]);
      double sum = 0.0;
      for (int64_t k = 0; k < dims.axis_size; ++k) sum += std::exp(x[base + k * dims.inner] - mx);
      for (int64_t k = 0; k < dims.axis_size; ++k) {
        y[base + k * dims.inner] =
            static_cast<float>(std::exp(x[base + k * dims.inner] - mx) / sum);
      }
    }
  }
}

void max_pool2d(const PoolGeometry& g, const float* x, float* y, int64_t* indices,
                IndexOrder order) {
  for (int64_t p = 0; p < g.batch * g.channels; ++p) {
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        float best = -std::numeric_limits<float>::infinity();
        int64_t best_at = 0;
        for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
          for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
            const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
            const int64_t iw = ow * g.stride_w - g.pad_left + kw * g.dilation_w;
            if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) continue;
            const float v = x[(p * g.in_h + ih) * g.in_w + iw];
            if (v > best) {
              best = v;
              best_at = order == IndexOrder::kRowMajor ? ih * g.in_w + iw : ih + iw * g.in_h;
            }
          }
        }
        const int64_t at = (p * g.out_h + oh) * g.out_w + ow;
        y[at] = best;
        if (indices) indices[at] = p * g.in_h * g.in_w + best_at;
      }
    }
  }
}

void average_pool2d(const PoolGeometry& g, PadCounting counting, const float* x, float* y) {
  for (int64_t p = 0; p < g.batch * g.channels; ++p) {
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        double sum = 0.0;
        int64_t count = 0;
        for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
          for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
            const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
            const int64_t iw = ow * g.stride_w - g.pad_left + kw * g.dilation_w;
            const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
            const bool in_padded = ih >= -g.pad_top && ih < g.in_h + g.pad_bottom &&
                                   iw >= -g.pad_left && iw < g.in_w + g.pad_right;
            if (inside) sum += x[(p * g.in_h + ih) * g.in_w + iw];
            if (counting == PadCounting::kIncludePad ? in_padded : inside) ++count;
          }
        }
        y[(p * g.out_h + oh) * g.out_w + ow] = static_cast<float>(sum / static_cast<double>(count));
      }
    }
  }
}

void reduce_mean(std::span<const int64_t> shape, std::span<const int64_t> axes, const float* x,
                 float* y) {
  const size_t rank = shape.size();
  std::vector<bool> reduced(rank, false);
  for (int64_t a : axes) reduced[static_cast<size_t>(a)] = true;
  int64_t outputs = 1, count = 1, total = 1;
  for (size_t i = 0; i < rank; ++i) {
    (reduced[i] ? count : outputs) *= shape[i];
    total *= shape[i];
  }
  std::vector<double> acc(static_cast<size_t>(outputs), 0.0);
  std::vector<int64_t> idx(rank, 0);
  for (int64_t t = 0; t < total; ++t) {
    int64_t rest = t;
    for (size_t i = rank; i-- > 0;) {
      idx[i] = rest % shape[i];
      rest /= shape[i];
    }
    int64_t out = 0;
    for (size_t i = 0; i < rank; ++i) {
      if (!reduced[i]) out = out * shape[i] + idx[i];
    }
    acc[static_cast<size_t>(out)] += x[t];
  }
  for (int64_t o = 0; o < outputs; ++o) {
    y[o] = static_cast<float>(acc[static_cast<size_t>(o)] / static_cast<double>(count));
  }
}

}  // namespace qforge::kernels::reference
