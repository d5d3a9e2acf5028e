// Softmax: per row (or per block of columns when the axis is not innermost), parallel over rows,
// with an exponential written so that the compiler vectorises it.
#include "kernels/softmax.h"

#include <algorithm>
#include <bit>
#include <cstdint>

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
    for (int64_t k = 0; k < d; ++k) yr[k] = yr[k] / sum;
  }
}

// Softmax down the axis for `width` adjacent columns starting at x (row stride `inner`).
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
  for (int64_t k = 0; k < d; ++k) {
    float* yr = y + k * inner;
    for (int64_t j = 0; j < width; ++j) yr[j] = yr[j] / sum[j];
  }
}

}  // namespace

float exp_nonpositive(float x) {
  return exp_inline(x);
}

void softmax(const SoftmaxDims& dims, const float* x, float* y) {
  const int64_t d = dims.axis_size;
  if (dims.outer * d * dims.inner == 0) return;
  if (dims.inner == 1) {
    const int64_t grain = std::max<int64_t>(1, kTaskElements / d);
    parallel_for(dims.outer, grain, [&](int64_t begin, int64_t end) {
      softmax_rows(x + begin * d, end - begin, d, y + begin * d);
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
      softmax_columns(x + offset, d, dims.inner, std::min(kColumnBlock, dims.inner - c0),
                      y + offset);
    }
  });
}

}  // namespace qforge::kernels
