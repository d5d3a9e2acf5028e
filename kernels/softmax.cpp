// Softmax and log-softmax: per row (or per block of columns when the axis is not innermost),
// parallel over rows, with an exponential written so that the compiler vectorises it.
#include "kernels/softmax.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/error.h"
#include "kernels/norm.h"
#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

constexpr int64_t kTaskElements = 1 << 14;
// Columns handled together when the softmax axis is not the innermost one.
constexpr int64_t kColumnBlock = 64;

// e^x = 2^n · e^r with n = round(x / ln 2) and |r| <= ln 2 / 2; e^r by its Taylor polynomial
// of degree 7 (truncation below 1e-8), 2^n built in the exponent bits.
inline float exp_inline(float x) {
  constexpr float kLowest = -87.33654f;  // ln of the smallest normal float
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // ln 2 split so that n·kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRoundMagic = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  const float xc = x < kLowest ? kLowest : x;
  const float n = (xc * kLog2e + kRoundMagic) - kRoundMagic;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // NaN lands on the clamp (keeping the conversion defined) and still yields NaN through p.
  const float nc = n > -126.0f ? n : -126.0f;
  const int32_t bits = (static_cast<int32_t>(nc) + 127) << 23;
  const float result = p * std::bit_cast<float>(bits);
  return x < kLowest ? 0.0f : result;
}

// Softmax (or with kLog, log-softmax: x − m − log Σ exp(x − m)) of `rows` rows of d.
template <bool kLog>
void softmax_rows(const float* x, int64_t rows, int64_t d, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    float lanes[kSumLanes];
    std::fill_n(lanes, kSumLanes, xr[0]);
    int64_t i = 0;
    for (; i + kSumLanes <= d; i += kSumLanes) {
      for (int j = 0; j < kSumLanes; ++j) lanes[j] = xr[i + j] > lanes[j] ? xr[i + j] : lanes[j];
    }
    for (int j = 0; i + j < d; ++j) lanes[j] = xr[i + j] > lanes[j] ? xr[i + j] : lanes[j];
    float mx = lanes[0];
    for (int j = 1; j < kSumLanes; ++j) mx = lanes[j] > mx ? lanes[j] : mx;
    for (int64_t k = 0; k < d; ++k) yr[k] = exp_inline(xr[k] - mx);
    const float sum = lane_sum(yr, d);
    if constexpr (kLog) {
      const float log_sum = std::log(sum);
      for (int64_t k = 0; k < d; ++k) yr[k] = (xr[k] - mx) - log_sum;
    } else {
      for (int64_t k = 0; k < d; ++k) yr[k] = yr[k] / sum;
    }
  }
}

// Softmax (log-softmax with kLog) down the axis for `width` adjacent columns starting at x (row
// stride `inner`).
template <bool kLog>
void softmax_columns(const float* x, int64_t d, int64_t inner, int64_t width, float* y) {
  float mx[kColumnBlock];
  float sum[kColumnBlock];
  std::copy_n(x, width, mx);
  for (int64_t k = 1; k < d; ++k) {
    const float* xr = x + k * inner;
    for (int64_t j = 0; j < width; ++j) mx[j] = xr[j] > mx[j] ? xr[j] : mx[j];
  }
  std::fill_n(sum, width, 0.0f);
  for (int64_t k = 0; k < d; ++k) {
    const float* xr = x + k * inner;
    float* yr = y + k * inner;
    for (int64_t j = 0; j < width; ++j) {
      yr[j] = exp_inline(xr[j] - mx[j]);
      sum[j] += yr[j];
    }
  }
  if constexpr (kLog) {
    for (int64_t j = 0; j < width; ++j) sum[j] = std::log(sum[j]);
  }
  for (int64_t k = 0; k < d; ++k) {
    const float* xr = x + k * inner;
    float* yr = y + k * inner;
    if constexpr (kLog) {
      for (int64_t j = 0; j < width; ++j) yr[j] = (xr[j] - mx[j]) - sum[j];
    } else {
      for (int64_t j = 0; j < width; ++j) yr[j] = yr[j] / sum[j];
    }
  }
}

// Row maximum in lane order (the forward's max pass).
float row_max(const float* x, int64_t d) {
  float lanes[kSumLanes];
  std::fill_n(lanes, kSumLanes, x[0]);
  int64_t i = 0;
  for (; i + kSumLanes <= d; i += kSumLanes) {
    for (int j = 0; j < kSumLanes; ++j) lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
  }
  for (int j = 0; i + j < d; ++j) lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
  float mx = lanes[0];
  for (int j = 1; j < kSumLanes; ++j) mx = lanes[j] > mx ? lanes[j] : mx;
  return mx;
}

// p = softmax(z·inv_t) over one row of d logits; returns logsumexp(z·inv_t) (so that
// log p = z·inv_t - the result).
float softmax_row_lse(const float* z, int64_t d, float inv_t, float* p) {
  const float mx = row_max(z, d) * inv_t;  // inv_t > 0, so the maximum commutes with it
  for (int64_t k = 0; k < d; ++k) p[k] = exp_inline(z[k] * inv_t - mx);
  const float sum = lane_sum(p, d);
  for (int64_t k = 0; k < d; ++k) p[k] = p[k] / sum;
  return mx + std::log(sum);
}

// dx = y·(dy − Σ dy·y) (softmax), or with kLog dx = dy − exp(y)·Σ dy (log-softmax, y its output).
template <bool kLog>
void softmax_backward_rows(const float* y, const float* dy, int64_t rows, int64_t d, float* dx,
                           GradMode mode) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* yr = y + r * d;
    const float* gr = dy + r * d;
    float* xr = dx + r * d;
    if constexpr (kLog) {
      const float total = lane_sum(gr, d);
      if (mode == GradMode::kAccumulate) {
        for (int64_t k = 0; k < d; ++k) xr[k] += gr[k] - exp_inline(yr[k]) * total;
      } else {
        for (int64_t k = 0; k < d; ++k) xr[k] = gr[k] - exp_inline(yr[k]) * total;
      }
      continue;
    }
    const float dot = lane_dot(gr, yr, d);
    if (mode == GradMode::kAccumulate) {
      for (int64_t k = 0; k < d; ++k) xr[k] += yr[k] * (gr[k] - dot);
    } else {
      for (int64_t k = 0; k < d; ++k) xr[k] = yr[k] * (gr[k] - dot);
    }
  }
}

template <bool kLog>
void softmax_backward_columns(const float* y, const float* dy, int64_t d, int64_t inner,
                              int64_t width, float* dx, GradMode mode) {
  float dot[kColumnBlock];
  std::fill_n(dot, width, 0.0f);
  for (int64_t k = 0; k < d; ++k) {
    const float* yr = y + k * inner;
    const float* gr = dy + k * inner;
    for (int64_t j = 0; j < width; ++j) dot[j] += kLog ? gr[j] : gr[j] * yr[j];
  }
  for (int64_t k = 0; k < d; ++k) {
    const float* yr = y + k * inner;
    const float* gr = dy + k * inner;
    float* xr = dx + k * inner;
    if constexpr (kLog) {
      for (int64_t j = 0; j < width; ++j) {
        const float g = gr[j] - exp_inline(yr[j]) * dot[j];
        xr[j] = mode == GradMode::kAccumulate ? xr[j] + g : g;
      }
    } else if (mode == GradMode::kAccumulate) {
      for (int64_t j = 0; j < width; ++j) xr[j] += yr[j] * (gr[j] - dot[j]);
    } else {
      for (int64_t j = 0; j < width; ++j) xr[j] = yr[j] * (gr[j] - dot[j]);
    }
  }
}

int64_t row_grain(int64_t d) {
  return std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, d));
}

// The mean of row_loss over the batch, summed in order in double, times factor.
float mean_loss(const float* row_loss, int64_t batch, double factor) {
  double sum = 0;
  for (int64_t b = 0; b < batch; ++b) sum += row_loss[b];
  return static_cast<float>(sum * factor / static_cast<double>(batch));
}

// out = scale·(a - b) or out += scale·(a - b) over n elements, in fixed chunks.
void scaled_difference(const float* a, const float* b, float scale, int64_t n, float* out,
                       GradMode mode) {
  parallel_for(n, kTaskElements, [&](int64_t begin, int64_t end) {
    if (mode == GradMode::kAccumulate) {
      for (int64_t i = begin; i < end; ++i) out[i] += scale * (a[i] - b[i]);
    } else {
      for (int64_t i = begin; i < end; ++i) out[i] = scale * (a[i] - b[i]);
    }
  });
}

}  // namespace

float exp_nonpositive(float x) {
  return exp_inline(x);
}

namespace {

template <bool kLog>
void softmax_any(const SoftmaxDims& dims, const float* x, float* y) {
  const int64_t d = dims.axis_size;
  if (dims.outer * d * dims.inner == 0) return;
  if (dims.inner == 1) {
    const int64_t grain = std::max<int64_t>(1, kTaskElements / d);
    parallel_for(dims.outer, grain, [&](int64_t begin, int64_t end) {
      softmax_rows<kLog>(x + begin * d, end - begin, d, y + begin * d);
    });
    return;
  }
  const int64_t blocks = (dims.inner + kColumnBlock - 1) / kColumnBlock;
  const int64_t grain = std::max<int64_t>(1, kTaskElements / (d * kColumnBlock));
  parallel_for(dims.outer * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / blocks;
      const int64_t c0 = (t % blocks) * kColumnBlock;
      const int64_t offset = o * d * dims.inner + c0;
      softmax_columns<kLog>(x + offset, d, dims.inner, std::min(kColumnBlock, dims.inner - c0),
                            y + offset);
    }
  });
}

template <bool kLog>
void softmax_backward_any(const SoftmaxDims& dims, const float* y, const float* dy, float* dx,
                          GradMode mode) {
  const int64_t d = dims.axis_size;
  if (dims.outer * d * dims.inner == 0) return;
  if (dims.inner == 1) {
    parallel_for(dims.outer, row_grain(d), [&](int64_t begin, int64_t end) {
      softmax_backward_rows<kLog>(y + begin * d, dy + begin * d, end - begin, d, dx + begin * d,
                                  mode);
    });
    return;
  }
  const int64_t blocks = (dims.inner + kColumnBlock - 1) / kColumnBlock;
  const int64_t grain = std::max<int64_t>(1, kTaskElements / (d * kColumnBlock));
  parallel_for(dims.outer * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / blocks;
      const int64_t c0 = (t % blocks) * kColumnBlock;
      const int64_t offset = o * d * dims.inner + c0;
      softmax_backward_columns<kLog>(y + offset, dy + offset, d, dims.inner,
                                     std::min(kColumnBlock, dims.inner - c0), dx + offset, mode);
    }
  });
}

}  // namespace

void softmax(const SoftmaxDims& dims, const float* x, float* y) {
  softmax_any<false>(dims, x, y);
}

void log_softmax(const SoftmaxDims& dims, const float* x, float* y) {
  softmax_any<true>(dims, x, y);
}

void softmax_backward(const SoftmaxDims& dims, const float* y, const float* dy, float* dx,
                      GradMode mode) {
  softmax_backward_any<false>(dims, y, dy, dx, mode);
}

void log_softmax_backward(const SoftmaxDims& dims, const float* y, const float* dy, float* dx,
                          GradMode mode) {
  softmax_backward_any<true>(dims, y, dy, dx, mode);
}

float cross_entropy(const LossDims& dims, const float* logits, const int64_t* labels,
                    float* probabilities, float* row_loss, float label_smoothing) {
  const int64_t c = dims.classes;
  if (!(label_smoothing >= 0.0f && label_smoothing <= 1.0f)) {
    throw_invalid("cross_entropy: expected label smoothing in [0, 1], got " +
                  std::to_string(label_smoothing));
  }
  for (int64_t b = 0; b < dims.batch; ++b) {
    if (labels[b] < 0 || labels[b] >= c) {
      throw_invalid("cross_entropy: expected labels in [0, " + std::to_string(c) + "), got " +
                    std::to_string(labels[b]) + " for sample " + std::to_string(b));
    }
  }
  if (dims.batch == 0) return 0.0f;
  const float on = 1.0f - label_smoothing;
  const float spread = label_smoothing / static_cast<float>(c);
  parallel_for(dims.batch, row_grain(c), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* z = logits + b * c;
      const float lse = softmax_row_lse(z, c, 1.0f, probabilities + b * c);
      if (label_smoothing == 0.0f) {
        row_loss[b] = lse - z[labels[b]];
        continue;
      }
      double sum = 0;  // in class order: the same bits for any thread count
      for (int64_t i = 0; i < c; ++i) sum += z[i];
      row_loss[b] = lse - on * z[labels[b]] - spread * static_cast<float>(sum);
    }
  });
  return mean_loss(row_loss, dims.batch, 1.0);
}

void cross_entropy_backward(const LossDims& dims, const float* probabilities, const int64_t* labels,
                            float dloss, float* dlogits, GradMode mode, float label_smoothing) {
  const int64_t c = dims.classes;
  if (dims.batch == 0) return;
  const float k = dloss / static_cast<float>(dims.batch);
  // The target's two values (1 and 0 without smoothing).
  const float off = label_smoothing / static_cast<float>(c);
  const float on = 1.0f - label_smoothing + off;
  parallel_for(dims.batch, row_grain(c), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* p = probabilities + b * c;
      float* g = dlogits + b * c;
      const int64_t label = labels[b];
      if (mode == GradMode::kAccumulate) {
        for (int64_t i = 0; i < c; ++i) g[i] += k * (p[i] - (i == label ? on : off));
      } else {
        for (int64_t i = 0; i < c; ++i) g[i] = k * (p[i] - (i == label ? on : off));
      }
    }
  });
}

namespace {

float check_temperature(const DistillationOptions& options) {
  const float t = options.temperature;
  if (!(std::isfinite(t) && t > 0.0f)) {
    throw_invalid("distillation_kl: expected a finite temperature > 0, got " + std::to_string(t));
  }
  return t;
}

double distillation_factor(const DistillationOptions& options) {
  const double t = options.temperature;
  return options.scale_by_temperature_squared ? t * t : 1.0;
}

}  // namespace

float distillation_kl(const LossDims& dims, const DistillationOptions& options,
                      const float* student_logits, const float* teacher_logits,
                      float* student_probabilities, float* teacher_probabilities, float* row_loss) {
  const float inv_t = 1.0f / check_temperature(options);
  const int64_t c = dims.classes;
  if (dims.batch == 0) return 0.0f;
  if (c == 0) {
    std::fill_n(row_loss, dims.batch, 0.0f);
    return 0.0f;
  }
  parallel_for(dims.batch, row_grain(c), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* s = student_logits + b * c;
      const float* t = teacher_logits + b * c;
      float* p = student_probabilities + b * c;
      float* q = teacher_probabilities + b * c;
      const float lse_s = softmax_row_lse(s, c, inv_t, p);
      const float lse_t = softmax_row_lse(t, c, inv_t, q);
      // q·(log q - log p) with log q = t/T - lse_t and log p = s/T - lse_s; a q that underflows
      // to 0 adds 0.
      float acc[kSumLanes] = {};
      int64_t i = 0;
      for (; i + kSumLanes <= c; i += kSumLanes) {
        for (int j = 0; j < kSumLanes; ++j) {
          const int64_t k = i + j;
          acc[j] += q[k] * ((t[k] * inv_t - lse_t) - (s[k] * inv_t - lse_s));
        }
      }
      for (int j = 0; i + j < c; ++j) {
        const int64_t k = i + j;
        acc[j] += q[k] * ((t[k] * inv_t - lse_t) - (s[k] * inv_t - lse_s));
      }
      for (int width = kSumLanes / 2; width > 0; width /= 2) {
        for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
      }
      row_loss[b] = acc[0];
    }
  });
  return mean_loss(row_loss, dims.batch, distillation_factor(options));
}

void distillation_kl_backward(const LossDims& dims, const DistillationOptions& options,
                              const float* student_probabilities,
                              const float* teacher_probabilities, float dloss,
                              float* dstudent_logits, GradMode mode) {
  const float t = check_temperature(options);
  if (dims.batch == 0) return;
  const float k = static_cast<float>(static_cast<double>(dloss) * distillation_factor(options) /
                                     (static_cast<double>(dims.batch) * t));
  scaled_difference(student_probabilities, teacher_probabilities, k, dims.batch * dims.classes,
                    dstudent_logits, mode);
}

}  // namespace qforge::kernels
