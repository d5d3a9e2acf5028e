// Reference backward kernels: the forward's loops, with every product's gradient added into the
// values it read.
#include "kernels/reference/dense_backward_reference.h"

#include <algorithm>
#include <limits>

namespace qforge::kernels::reference {
namespace {

// Calls fn(x_index, w_index, y_index) for every multiply-add of the convolution.
template <class Fn>
void for_each_conv_product(const ConvGeometry& g, Fn&& fn) {
  const int64_t cin_g = g.in_channels / g.group;
  const int64_t cout_g = g.out_channels / g.group;
  for (int64_t n = 0; n < g.batch; ++n) {
    for (int64_t oc = 0; oc < g.out_channels; ++oc) {
      const int64_t grp = oc / cout_g;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t yi = ((n * g.out_channels + oc) * g.out_h + oh) * g.out_w + ow;
          for (int64_t ci = 0; ci < cin_g; ++ci) {
            const int64_t c = grp * cin_g + ci;
            for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
              const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
              if (ih < 0 || ih >= g.in_h) continue;
              for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
                const int64_t iw = ow * g.stride_w - g.pad_left + kw * g.dilation_w;
                if (iw < 0 || iw >= g.in_w) continue;
                fn(((n * g.in_channels + c) * g.in_h + ih) * g.in_w + iw,
                   ((oc * cin_g + ci) * g.kernel_h + kh) * g.kernel_w + kw, yi);
              }
            }
          }
        }
      }
    }
  }
}

// Calls fn(x_index, inside_input, inside_padding) for the taps of one pooling window.
template <class Fn>
void for_each_pool_tap(const PoolGeometry& g, int64_t plane, int64_t oh, int64_t ow, Fn&& fn) {
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
      const int64_t iw = ow * g.stride_w - g.pad_left + kw * g.dilation_w;
      const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
      const bool in_padded = ih >= -g.pad_top && ih < g.in_h + g.pad_bottom && iw >= -g.pad_left &&
                             iw < g.in_w + g.pad_right;
      fn(inside ? (plane * g.in_h + ih) * g.in_w + iw : -1, inside, in_padded);
    }
  }
}

int64_t pool_window_count(const PoolGeometry& g, PadCounting counting, int64_t plane, int64_t oh,
                          int64_t ow) {
  int64_t count = 0;
  for_each_pool_tap(g, plane, oh, ow, [&](int64_t, bool inside, bool in_padded) {
    if (counting == PadCounting::kIncludePad ? in_padded : inside) ++count;
  });
  return count;
}

int64_t max_pool_source(const PoolGeometry& g, const double* x, int64_t plane, int64_t oh,
                        int64_t ow) {
  double best = -std::numeric_limits<double>::infinity();
  int64_t at = -1;
  for_each_pool_tap(g, plane, oh, ow, [&](int64_t xi, bool inside, bool) {
    if (inside && (at < 0 || x[xi] > best)) {
      best = x[xi];
      at = xi;
    }
  });
  return at;
}

struct BroadcastMatMul {
  std::vector<int64_t> as, bs, batch;  // a's and b's shapes padded to the same rank; the batch
  int64_t m = 0, k = 0, n = 0, count = 1;
};

BroadcastMatMul broadcast_matmul(std::span<const int64_t> a_shape,
                                 std::span<const int64_t> b_shape) {
  BroadcastMatMul d;
  const bool a_vec = a_shape.size() == 1;
  const bool b_vec = b_shape.size() == 1;
  const size_t a_rank = a_vec ? 2 : a_shape.size();
  const size_t b_rank = b_vec ? 2 : b_shape.size();
  const size_t rank = std::max(a_rank, b_rank);
  d.as.assign(rank, 1);
  d.bs.assign(rank, 1);
  if (a_vec) {
    d.as[rank - 1] = a_shape[0];
  } else {
    std::copy(a_shape.begin(), a_shape.end(), d.as.begin() + static_cast<int64_t>(rank - a_rank));
  }
  if (b_vec) {
    d.bs[rank - 2] = b_shape[0];
  } else {
    std::copy(b_shape.begin(), b_shape.end(), d.bs.begin() + static_cast<int64_t>(rank - b_rank));
  }
  d.m = d.as[rank - 2];
  d.k = d.as[rank - 1];
  d.n = d.bs[rank - 1];
  d.batch.assign(rank - 2, 1);
  for (size_t i = 0; i + 2 < rank; ++i) {
    d.batch[i] = std::max(d.as[i], d.bs[i]);
    d.count *= d.batch[i];
  }
  return d;
}

// Calls fn(t, a_offset, b_offset) for every batch index t of the product.
template <class Fn>
void for_each_matmul_batch(const BroadcastMatMul& d, Fn&& fn) {
  std::vector<int64_t> idx(d.batch.size(), 0);
  for (int64_t t = 0; t < d.count; ++t) {
    int64_t rest = t;
    for (size_t i = d.batch.size(); i-- > 0;) {
      idx[i] = rest % d.batch[i];
      rest /= d.batch[i];
    }
    int64_t a_off = 0, b_off = 0;
    for (size_t i = 0; i < d.batch.size(); ++i) {
      a_off = a_off * d.as[i] + (d.as[i] == 1 ? 0 : idx[i]);
      b_off = b_off * d.bs[i] + (d.bs[i] == 1 ? 0 : idx[i]);
    }
    fn(t, a_off * d.m * d.k, b_off * d.k * d.n);
  }
}

int64_t numel(std::span<const int64_t> shape) {
  int64_t count = 1;
  for (int64_t s : shape) count *= s;
  return count;
}

}  // namespace

void conv2d_f64(const ConvGeometry& g, const double* x, const double* w, const double* bias,
                double* y) {
  const int64_t pixels = g.out_h * g.out_w;
  for (int64_t i = 0; i < g.batch * g.out_channels * pixels; ++i) {
    y[i] = bias ? bias[i / pixels % g.out_channels] : 0.0;
  }
  for_each_conv_product(g, [&](int64_t xi, int64_t wi, int64_t yi) { y[yi] += x[xi] * w[wi]; });
}

void conv2d_backward(const ConvGeometry& g, const double* x, const double* w, const double* dy,
                     double* dx, double* dw, double* dbias) {
  const int64_t pixels = g.out_h * g.out_w;
  if (dx) std::fill_n(dx, g.batch * g.in_channels * g.in_h * g.in_w, 0.0);
  if (dw) {
    std::fill_n(dw, g.out_channels * (g.in_channels / g.group) * g.kernel_h * g.kernel_w, 0.0);
  }
  for_each_conv_product(g, [&](int64_t xi, int64_t wi, int64_t yi) {
    if (dx) dx[xi] += w[wi] * dy[yi];
    if (dw) dw[wi] += x[xi] * dy[yi];
  });
  if (dbias) {
    std::fill_n(dbias, g.out_channels, 0.0);
    for (int64_t i = 0; i < g.batch * g.out_channels * pixels; ++i) {
      dbias[i / pixels % g.out_channels] += dy[i];
    }
  }
}

void gemm_f64(const GemmDims& d, const double* a, const double* b, const double* c, double* y) {
  for (int64_t i = 0; i < d.m; ++i) {
    for (int64_t j = 0; j < d.n; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < d.k; ++p) {
        const double av = d.trans_a == Transpose::kYes ? a[p * d.m + i] : a[i * d.k + p];
        const double bv = d.trans_b == Transpose::kYes ? b[j * d.k + p] : b[p * d.n + j];
        acc += av * bv;
      }
      double cv = 0.0;
      switch (d.bias) {
        case GemmBias::kNone:
          break;
        case GemmBias::kScalar:
          cv = c[0];
          break;
        case GemmBias::kRow:
          cv = c[j];
          break;
        case GemmBias::kColumn:
          cv = c[i];
          break;
        case GemmBias::kFull:
          cv = c[i * d.n + j];
          break;
      }
      y[i * d.n + j] = d.alpha * acc + d.beta * cv;
    }
  }
}

void gemm_backward(const GemmDims& d, const double* a, const double* b, const double* dy,
                   double* da, double* db, double* dc) {
  if (da) std::fill_n(da, d.m * d.k, 0.0);
  if (db) std::fill_n(db, d.k * d.n, 0.0);
  for (int64_t i = 0; i < d.m; ++i) {
    for (int64_t j = 0; j < d.n; ++j) {
      const double g = d.alpha * dy[i * d.n + j];
      for (int64_t p = 0; p < d.k; ++p) {
        const int64_t ai = d.trans_a == Transpose::kYes ? p * d.m + i : i * d.k + p;
        const int64_t bi = d.trans_b == Transpose::kYes ? j * d.k + p : p * d.n + j;
        if (da) da[ai] += g * b[bi];
        if (db) db[bi] += g * a[ai];
      }
    }
  }
  if (!dc || d.bias == GemmBias::kNone) return;
  const int64_t c_size = d.bias == GemmBias::kScalar   ? 1
                         : d.bias == GemmBias::kRow    ? d.n
                         : d.bias == GemmBias::kColumn ? d.m
                                                       : d.m * d.n;
  std::fill_n(dc, c_size, 0.0);
  for (int64_t i = 0; i < d.m; ++i) {
    for (int64_t j = 0; j < d.n; ++j) {
      const int64_t ci = d.bias == GemmBias::kScalar   ? 0
                         : d.bias == GemmBias::kRow    ? j
                         : d.bias == GemmBias::kColumn ? i
                                                       : i * d.n + j;
      dc[ci] += d.beta * dy[i * d.n + j];
    }
  }
}

void matmul_f64(std::span<const int64_t> a_shape, const double* a, std::span<const int64_t> b_shape,
                const double* b, std::vector<double>& y) {
  const BroadcastMatMul d = broadcast_matmul(a_shape, b_shape);
  y.assign(static_cast<size_t>(d.count * d.m * d.n), 0.0);
  for_each_matmul_batch(d, [&](int64_t t, int64_t a_off, int64_t b_off) {
    for (int64_t i = 0; i < d.m; ++i) {
      for (int64_t j = 0; j < d.n; ++j) {
        double acc = 0.0;
        for (int64_t p = 0; p < d.k; ++p) acc += a[a_off + i * d.k + p] * b[b_off + p * d.n + j];
        y[static_cast<size_t>((t * d.m + i) * d.n + j)] = acc;
      }
    }
  });
}

void matmul_backward(std::span<const int64_t> a_shape, const double* a,
                     std::span<const int64_t> b_shape, const double* b, const double* dy,
                     double* da, double* db) {
  const BroadcastMatMul d = broadcast_matmul(a_shape, b_shape);
  if (da) std::fill_n(da, numel(a_shape), 0.0);
  if (db) std::fill_n(db, numel(b_shape), 0.0);
  for_each_matmul_batch(d, [&](int64_t t, int64_t a_off, int64_t b_off) {
    for (int64_t i = 0; i < d.m; ++i) {
      for (int64_t j = 0; j < d.n; ++j) {
        const double g = dy[(t * d.m + i) * d.n + j];
        for (int64_t p = 0; p < d.k; ++p) {
          if (da) da[a_off + i * d.k + p] += g * b[b_off + p * d.n + j];
          if (db) db[b_off + p * d.n + j] += g * a[a_off + i * d.k + p];
        }
      }
    }
  });
}

void max_pool2d_f64(const PoolGeometry& g, const double* x, double* y) {
  for (int64_t p = 0; p < g.batch * g.channels; ++p) {
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t at = max_pool_source(g, x, p, oh, ow);
        y[(p * g.out_h + oh) * g.out_w + ow] =
            at < 0 ? -std::numeric_limits<double>::infinity() : x[at];
      }
    }
  }
}

void max_pool2d_backward(const PoolGeometry& g, const double* x, const double* dy, double* dx) {
  std::fill_n(dx, g.batch * g.channels * g.in_h * g.in_w, 0.0);
  for (int64_t p = 0; p < g.batch * g.channels; ++p) {
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t at = max_pool_source(g, x, p, oh, ow);
        if (at >= 0) dx[at] += dy[(p * g.out_h + oh) * g.out_w + ow];
      }
    }
  }
}

void average_pool2d_f64(const PoolGeometry& g, PadCounting counting, const double* x, double* y) {
  for (int64_t p = 0; p < g.batch * g.channels; ++p) {
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        double sum = 0.0;
        for_each_pool_tap(g, p, oh, ow, [&](int64_t xi, bool inside, bool) {
          if (inside) sum += x[xi];
        });
        y[(p * g.out_h + oh) * g.out_w + ow] =
            sum / static_cast<double>(pool_window_count(g, counting, p, oh, ow));
      }
    }
  }
}

void average_pool2d_backward(const PoolGeometry& g, PadCounting counting, const double* dy,
                             double* dx) {
  std::fill_n(dx, g.batch * g.channels * g.in_h * g.in_w, 0.0);
  for (int64_t p = 0; p < g.batch * g.channels; ++p) {
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const double share = dy[(p * g.out_h + oh) * g.out_w + ow] /
                             static_cast<double>(pool_window_count(g, counting, p, oh, ow));
        for_each_pool_tap(g, p, oh, ow, [&](int64_t xi, bool inside, bool) {
          if (inside) dx[xi] += share;
        });
      }
    }
  }
}

}  // namespace qforge::kernels::reference
