// Fake quantization kernels (see fake_quant.h for the exact definition).
#include "kernels/fake_quant.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/error.h"
#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

// Adding 1.5·2^23 moves any |q| ≤ 2^22 into [2^23, 2^24) where the float spacing is 1, so the
// addition itself rounds to an integer under the default ties-to-even mode; the constant is even,
// so the parity of the result is that of round(q). This form vectorises where nearbyint may not.
constexpr float kRoundMagic = 12582912.0f;
constexpr float kPassLow = -128.5f;
constexpr float kPassHigh = 127.5f;
constexpr int64_t kGrain = 16384;

inline float fake_quant_one(float x, float scale) {
  float q = x / scale;
  // Clamping before rounding equals rounding before clamping (the bounds are integers and
  // rounding is monotonic); written as compares so that NaN falls through both.
  q = q < kFakeQuantMin ? kFakeQuantMin : q;
  q = q > kFakeQuantMax ? kFakeQuantMax : q;
  q = (q + kRoundMagic) - kRoundMagic;
  return q * scale;
}

inline float ste_one(float x, float dy, float scale) {
  const float q = x / scale;
  return (q >= kPassLow && q < kPassHigh) ? dy : 0.0f;
}

void fake_quant_scales_loop(const float* x, const float* scales, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fake_quant_one(x[i], scales[i]);
}

void ste_scales_loop(const float* x, const float* dy, const float* scales, float* dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = ste_one(x[i], dy[i], scales[i]);
}

struct ChannelLayout {
  int64_t channels = 1;
  int64_t inner = 1;  // elements per (outer, channel) run
};

ChannelLayout check_and_layout(const char* what, const Tensor& x, const FakeQuantScales& s) {
  if (x.dtype() != DType::kFloat32) {
    throw_invalid(
        std::string(what).append(": expected a float32 tensor, got ").append(x.describe()));
  }
  for (float v : s.scales) {
    if (!(std::isfinite(v) && v > 0.0f)) {
      throw_invalid(std::string(what)
                        .append(": expected every scale finite and > 0, got ")
                        .append(std::to_string(v)));
    }
  }
  ChannelLayout layout;
  if (s.scales.size() == 1) return layout;
  if (s.scales.empty()) throw_invalid(std::string(what).append(": expected at least one scale"));
  const int rank = x.rank();
  const int axis = s.axis < 0 ? s.axis + rank : s.axis;
  if (axis < 0 || axis >= rank) {
    throw_invalid(std::string(what)
                      .append(": expected a channel axis in [")
                      .append(std::to_string(-rank))
                      .append(", ")
                      .append(std::to_string(rank - 1))
                      .append("], got ")
                      .append(std::to_string(s.axis)));
  }
  layout.channels = x.shape()[static_cast<size_t>(axis)];
  if (static_cast<int64_t>(s.scales.size()) != layout.channels) {
    throw_invalid(std::string(what)
                      .append(": expected ")
                      .append(std::to_string(layout.channels))
                      .append(" scales for axis ")
                      .append(std::to_string(s.axis))
                      .append(" of ")
                      .append(x.describe())
                      .append(", got ")
                      .append(std::to_string(s.scales.size())));
  }
  for (int d = axis + 1; d < rank; ++d) layout.inner *= x.shape()[static_cast<size_t>(d)];
  return layout;
}

void check_same_shape(const char* what, const Tensor& a, const Tensor& b, const char* b_name) {
  if (b.dtype() != DType::kFloat32 || b.shape() != a.shape()) {
    throw_invalid(std::string(what)
                      .append(": expected ")
                      .append(b_name)
                      .append(" to be ")
                      .append(a.describe())
                      .append(", got ")
                      .append(b.describe()));
  }
}

// Calls run(begin, end, scale) or run_vec(begin, end, scales + c) over the segments of
// [begin, end) that share one scale (inner > 1) or that walk the channels of one row (inner == 1).
template <class Scalar, class Vector>
void for_each_segment(int64_t begin, int64_t end, const ChannelLayout& layout,
                      std::span<const float> scales, Scalar&& run, Vector&& run_vec) {
  if (scales.size() == 1) {
    run(begin, end, scales[0]);
    return;
  }
  int64_t i = begin;
  if (layout.inner == 1) {
    while (i < end) {
      const int64_t c = i % layout.channels;
      const int64_t stop = std::min(end, i + (layout.channels - c));
      run_vec(i, stop, scales.data() + c);
      i = stop;
    }
    return;
  }
  while (i < end) {
    const int64_t run_index = i / layout.inner;
    const int64_t stop = std::min(end, (run_index + 1) * layout.inner);
    run(i, stop, scales[static_cast<size_t>(run_index % layout.channels)]);
    i = stop;
  }
}

}  // namespace

void fake_quant_f32(const float* x, float scale, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fake_quant_one(x[i], scale);
}

void fake_quant_backward_f32(const float* x, const float* dy, float scale, float* dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = ste_one(x[i], dy[i], scale);
}

void fake_quant(const Tensor& x, const FakeQuantScales& scales, Tensor& y) {
  const ChannelLayout layout = check_and_layout("fake_quant", x, scales);
  check_same_shape("fake_quant", x, y, "y");
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  parallel_for(x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for_each_segment(
        begin, end, layout, scales.scales,
        [&](int64_t b, int64_t e, float s) { fake_quant_f32(xp + b, s, yp + b, e - b); },
        [&](int64_t b, int64_t e, const float* s) {
          fake_quant_scales_loop(xp + b, s, yp + b, e - b);
        });
  });
}

void fake_quant_backward(const Tensor& x, const Tensor& dy, const FakeQuantScales& scales,
                         Tensor& dx) {
  const ChannelLayout layout = check_and_layout("fake_quant_backward", x, scales);
  check_same_shape("fake_quant_backward", x, dy, "dy");
  check_same_shape("fake_quant_backward", x, dx, "dx");
  const float* xp = x.data<float>();
  const float* dyp = dy.data<float>();
  float* dxp = dx.data<float>();
  parallel_for(x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for_each_segment(
        begin, end, layout, scales.scales,
        [&](int64_t b, int64_t e, float s) {
          fake_quant_backward_f32(xp + b, dyp + b, s, dxp + b, e - b);
        },
        [&](int64_t b, int64_t e, const float* s) {
          ste_scales_loop(xp + b, dyp + b, s, dxp + b, e - b);
        });
  });
}

}  // namespace qforge::kernels
