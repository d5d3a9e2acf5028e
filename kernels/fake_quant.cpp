// Fake quantization kernels (see fake_quant.h for the exact definition).
#include "kernels/fake_quant.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "kernels/mask.h"
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

// ∂y/∂s of one element, by the LSQ rule (fake_quant.h).
inline float lsq_term(float x, float scale) {
  const float q = x / scale;
  const float inside = ((q + kRoundMagic) - kRoundMagic) - q;
  const float outside = q < kPassLow ? kFakeQuantMin : kFakeQuantMax;
  const float term = (q >= kPassLow && q < kPassHigh) ? inside : outside;
  return q == q ? term : 0.0f;
}

// Σ dy·∂y/∂s over n elements of one scale, in lane order.
float lsq_partial(const float* x, const float* dy, float scale, int64_t n) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += dy[i + j] * lsq_term(x[i + j], scale);
  }
  for (int j = 0; i + j < n; ++j) acc[j] += dy[i + j] * lsq_term(x[i + j], scale);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
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

void check_scales(const char* what, std::span<const float> scales) {
  for (float v : scales) {
    if (!(std::isfinite(v) && v > 0.0f)) {
      throw_invalid(std::string(what)
                        .append(": expected every scale finite and > 0, got ")
                        .append(std::to_string(v)));
    }
  }
}

// Checks the scales against x's shape (any dtype) and returns how channels lie in memory.
ChannelLayout scale_layout(const char* what, const Tensor& x, const FakeQuantScales& s) {
  check_scales(what, s.scales);
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

ChannelLayout check_and_layout(const char* what, const Tensor& x, const FakeQuantScales& s) {
  if (x.dtype() != DType::kFloat32) {
    throw_invalid(
        std::string(what).append(": expected a float32 tensor, got ").append(x.describe()));
  }
  return scale_layout(what, x, s);
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

void channel_abs_max(const Tensor& x, int axis, std::span<float> amax) {
  std::fill(amax.begin(), amax.end(), 0.0f);
  const float* p = x.data<float>();
  if (axis < 0) {
    for (int64_t i = 0; i < x.numel(); ++i) amax[0] = std::max(amax[0], std::fabs(p[i]));
    return;
  }
  const int64_t channels = x.dim(axis);
  if (static_cast<int64_t>(amax.size()) != channels) {
    throw_internal("channel_abs_max: " + std::to_string(amax.size()) + " outputs for " +
                   std::to_string(channels) + " channels");
  }
  int64_t inner = 1;
  for (int d = axis + 1; d < x.rank(); ++d) inner *= x.dim(d);
  const int64_t outer = channels > 0 && inner > 0 ? x.numel() / (channels * inner) : 0;
  // max is exact in any order, so each form gives the serial loop's result for any thread count.
  if (inner == 1) {
    // The channels lie along each row (a MatMul weight's last axis): a block of channels per
    // task, walking the rows, so that every read is of contiguous memory.
    constexpr int64_t kBlock = 64;
    parallel_for((channels + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t c0 = b * kBlock;
        const int64_t n = std::min(kBlock, channels - c0);
        float m[kBlock] = {};
        for (int64_t o = 0; o < outer; ++o) {
          const float* row = p + o * channels + c0;
          for (int64_t j = 0; j < n; ++j) m[j] = std::max(m[j], std::fabs(row[j]));
        }
        std::copy_n(m, n, amax.begin() + c0);
      }
    });
    return;
  }
  // A channel per task, its maximum kept in 16 lanes (one vector).
  constexpr int kLanes = 16;
  parallel_for(channels, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, outer * inner)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t c = begin; c < end; ++c) {
                   float lanes[kLanes] = {};
                   for (int64_t o = 0; o < outer; ++o) {
                     const float* row = p + (o * channels + c) * inner;
                     int64_t k = 0;
                     for (; k + kLanes <= inner; k += kLanes) {
                       for (int j = 0; j < kLanes; ++j) {
                         lanes[j] = std::max(lanes[j], std::fabs(row[k + j]));
                       }
                     }
                     for (; k < inner; ++k) lanes[0] = std::max(lanes[0], std::fabs(row[k]));
                   }
                   float m = 0.0f;
                   for (float lane : lanes) m = std::max(m, lane);
                   amax[static_cast<size_t>(c)] = m;
                 }
               });
}

float symmetric_scale(float amax) {
  if (!(amax > 0)) return std::numeric_limits<float>::min();
  return amax / kFakeQuantMax;
}

float lsq_grad_scale(int64_t elements_per_scale) {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(elements_per_scale) *
                                            static_cast<double>(kFakeQuantMax)));
}

int64_t fake_quant_lsq_workspace_floats(const Tensor& x, const FakeQuantScales& scales) {
  return fake_quant_lsq_workspace_floats(x.numel(), scales.scales.size());
}

int64_t fake_quant_lsq_workspace_floats(int64_t elements, size_t scale_count) {
  if (scale_count != 1) return 0;
  return (elements + kGrain - 1) / kGrain;
}

void fake_quant_lsq_backward(const Tensor& x, const Tensor& dy, const FakeQuantScales& scales,
                             const LsqOptions& options, Tensor* dx, std::span<float> dscale,
                             std::span<float> workspace) {
  const char* what = "fake_quant_lsq_backward";
  const ChannelLayout layout = check_and_layout(what, x, scales);
  check_same_shape(what, x, dy, "dy");
  if (dx) check_same_shape(what, x, *dx, "dx");
  if (dscale.size() != scales.scales.size() ||
      static_cast<int64_t>(workspace.size()) < fake_quant_lsq_workspace_floats(x, scales)) {
    throw_internal("fake_quant_lsq_backward: dscale or workspace too small");
  }
  const float* xp = x.data<float>();
  const float* dyp = dy.data<float>();
  const int64_t n = x.numel();
  const bool accumulate = options.mode == GradMode::kAccumulate;
  if (dx) {
    float* dxp = dx->data<float>();
    parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
      for_each_segment(
          begin, end, layout, scales.scales,
          [&](int64_t b, int64_t e, float s) {
            if (accumulate) {
              for (int64_t i = b; i < e; ++i) dxp[i] += ste_one(xp[i], dyp[i], s);
            } else {
              fake_quant_backward_f32(xp + b, dyp + b, s, dxp + b, e - b);
            }
          },
          [&](int64_t b, int64_t e, const float* s) {
            if (accumulate) {
              for (int64_t i = b; i < e; ++i) dxp[i] += ste_one(xp[i], dyp[i], s[i - b]);
            } else {
              ste_scales_loop(xp + b, dyp + b, s, dxp + b, e - b);
            }
          });
    });
  }
  const double g = options.grad_scale;
  auto store = [&](size_t c, double sum) {
    const auto v = static_cast<float>(sum * g);
    dscale[c] = accumulate ? dscale[c] + v : v;
  };
  if (scales.scales.size() == 1) {
    const float s = scales.scales[0];
    const int64_t chunks = (n + kGrain - 1) / kGrain;
    parallel_for(chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t first = c * kGrain;
        workspace[static_cast<size_t>(c)] =
            lsq_partial(xp + first, dyp + first, s, std::min(n, first + kGrain) - first);
      }
    });
    double sum = 0;
    for (int64_t c = 0; c < chunks; ++c) sum += workspace[static_cast<size_t>(c)];
    store(0, sum);
    return;
  }
  const int64_t channels = layout.channels;
  const int64_t inner = layout.inner;
  const int64_t outer = channels * inner == 0 ? 0 : n / (channels * inner);
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, outer * inner));
  parallel_for(channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const float s = scales.scales[static_cast<size_t>(c)];
      double sum = 0;
      for (int64_t o = 0; o < outer; ++o) {
        const int64_t first = (o * channels + c) * inner;
        sum += lsq_partial(xp + first, dyp + first, s, inner);
      }
      store(static_cast<size_t>(c), sum);
    }
  });
}

// Affine grids ----------------------------------------------------------------------------------

namespace {

struct IntRange {
  int32_t lo;
  int32_t hi;
};

IntRange int_range(const char* what, DType dtype) {
  if (dtype == DType::kInt8) return {-128, 127};
  if (dtype == DType::kUInt8) return {0, 255};
  throw_invalid(
      std::string(what).append(": expected an int8 or uint8 grid, got ").append(dtype_name(dtype)));
}

void check_zero_points(const char* what, std::span<const int32_t> zero_points, IntRange range) {
  for (int32_t zp : zero_points) {
    if (zp < range.lo || zp > range.hi) {
      throw_invalid(std::string(what)
                        .append(": expected zero points in [")
                        .append(std::to_string(range.lo))
                        .append(", ")
                        .append(std::to_string(range.hi))
                        .append("], got ")
                        .append(std::to_string(zp)));
    }
  }
}

ChannelLayout check_grid(const char* what, const Tensor& x, const QuantGrid& g, IntRange range) {
  const ChannelLayout layout = scale_layout(what, x, FakeQuantScales{g.scales, g.axis});
  if (!g.zero_points.empty() && g.zero_points.size() != g.scales.size()) {
    throw_invalid(std::string(what)
                      .append(": expected ")
                      .append(std::to_string(g.scales.size()))
                      .append(" zero points, got ")
                      .append(std::to_string(g.zero_points.size())));
  }
  check_zero_points(what, g.zero_points, range);
  return layout;
}

void check_output(const char* what, const Tensor& in, const Tensor& out, DType dtype) {
  if (out.dtype() != dtype || out.shape() != in.shape()) {
    throw_invalid(std::string(what)
                      .append(": expected an output of ")
                      .append(dtype_name(dtype))
                      .append(kernels::shape_str(in.shape()))
                      .append(", got ")
                      .append(out.describe()));
  }
}

// round_half_to_even(clamp(x / scale, lo − zp, hi − zp)), relative to the zero point, with NaN
// mapped to 0. Clamping first equals saturating after adding the zero point: the bounds are
// integers and rounding is monotonic.
inline float grid_offset(float x, float scale, float lo, float hi) {
  float q = x / scale;
  q = q < lo ? lo : q;
  q = q > hi ? hi : q;
  q = (q + kRoundMagic) - kRoundMagic;
  return q == q ? q : 0.0f;
}

// One channel's parameters in the float form the loops use.
struct ChannelGrid {
  float scale;
  float lo;  // range.lo − zero point
  float hi;
  int32_t zero_point;
};

inline ChannelGrid channel_grid(const QuantGrid& g, IntRange range, int64_t c) {
  const auto i = static_cast<size_t>(c);
  const int32_t zp = g.zero_points.empty() ? 0 : g.zero_points[i];
  return {g.scales[i], static_cast<float>(range.lo - zp), static_cast<float>(range.hi - zp), zp};
}

// Calls run(b, e, grid) over the runs of [begin, end) that share one channel.
template <class Run>
void for_each_channel_run(int64_t begin, int64_t end, const ChannelLayout& layout,
                          const QuantGrid& g, IntRange range, Run&& run) {
  if (g.scales.size() == 1) {
    run(begin, end, channel_grid(g, range, 0));
    return;
  }
  int64_t i = begin;
  while (i < end) {
    const int64_t run_index = i / layout.inner;
    const int64_t stop = std::min(end, (run_index + 1) * layout.inner);
    run(i, stop, channel_grid(g, range, run_index % layout.channels));
    i = stop;
  }
}

template <class T>
void quantize_loop(const float* x, T* q, int64_t n, const ChannelGrid& c) {
  for (int64_t i = 0; i < n; ++i) {
    q[i] =
        static_cast<T>(static_cast<int32_t>(grid_offset(x[i], c.scale, c.lo, c.hi)) + c.zero_point);
  }
}

template <class T>
void dequantize_loop(const T* q, float* y, int64_t n, const ChannelGrid& c) {
  for (int64_t i = 0; i < n; ++i) {
    y[i] = static_cast<float>(static_cast<int32_t>(q[i]) - c.zero_point) * c.scale;
  }
}

// Every channel's grid in the loops' float form, for a per-channel grid on the last axis (inner
// == 1: a MatMul weight's output channels), where a run per element would cost a call and a grid
// each: the loops walk a row's channels with these arrays and vectorise.
struct ChannelArrays {
  std::vector<float> scale, lo, hi;
  std::vector<int32_t> zero_point;
};

ChannelArrays channel_arrays(const QuantGrid& g, IntRange range) {
  ChannelArrays a;
  for (size_t c = 0; c < g.scales.size(); ++c) {
    const ChannelGrid cg = channel_grid(g, range, static_cast<int64_t>(c));
    a.scale.push_back(cg.scale);
    a.lo.push_back(cg.lo);
    a.hi.push_back(cg.hi);
    a.zero_point.push_back(cg.zero_point);
  }
  return a;
}

// Calls piece(i, n, c0) over the pieces of [begin, end) that hold channels c0 .. c0 + n − 1 of
// one row (inner == 1).
template <class Piece>
void for_each_row_piece(int64_t begin, int64_t end, int64_t channels, Piece&& piece) {
  for (int64_t i = begin; i < end;) {
    const int64_t c0 = i % channels;
    const int64_t n = std::min(end - i, channels - c0);
    piece(i, n, c0);
    i += n;
  }
}

template <class T>
void quantize_row(const float* x, T* q, int64_t n, const ChannelArrays& a, int64_t c0) {
  const float* s = a.scale.data() + c0;
  const float* lo = a.lo.data() + c0;
  const float* hi = a.hi.data() + c0;
  const int32_t* zp = a.zero_point.data() + c0;
  for (int64_t j = 0; j < n; ++j) {
    q[j] = static_cast<T>(static_cast<int32_t>(grid_offset(x[j], s[j], lo[j], hi[j])) + zp[j]);
  }
}

template <class T>
void dequantize_row(const T* q, float* y, int64_t n, const ChannelArrays& a, int64_t c0) {
  const float* s = a.scale.data() + c0;
  const int32_t* zp = a.zero_point.data() + c0;
  for (int64_t j = 0; j < n; ++j) {
    y[j] = static_cast<float>(static_cast<int32_t>(q[j]) - zp[j]) * s[j];
  }
}

void fake_quant_row(const float* x, float* y, int64_t n, const ChannelArrays& a, int64_t c0) {
  const float* s = a.scale.data() + c0;
  const float* lo = a.lo.data() + c0;
  const float* hi = a.hi.data() + c0;
  for (int64_t j = 0; j < n; ++j) y[j] = grid_offset(x[j], s[j], lo[j], hi[j]) * s[j];
}

bool walks_channels(const QuantGrid& g, const ChannelLayout& layout) {
  return g.scales.size() > 1 && layout.inner == 1;
}

}  // namespace

void quantize_linear(const Tensor& x, const QuantGrid& grid, Tensor& q) {
  const IntRange range = int_range("quantize_linear", grid.dtype);
  if (x.dtype() != DType::kFloat32) {
    throw_invalid(
        std::string("quantize_linear: expected a float32 tensor, got ").append(x.describe()));
  }
  const ChannelLayout layout = check_grid("quantize_linear", x, grid, range);
  check_output("quantize_linear", x, q, grid.dtype);
  const float* xp = x.data<float>();
  const bool is_signed = grid.dtype == DType::kInt8;
  void* qp = q.raw();
  if (walks_channels(grid, layout)) {
    const ChannelArrays a = channel_arrays(grid, range);
    parallel_for(x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_row_piece(begin, end, layout.channels, [&](int64_t i, int64_t n, int64_t c0) {
        if (is_signed) {
          quantize_row(xp + i, static_cast<int8_t*>(qp) + i, n, a, c0);
        } else {
          quantize_row(xp + i, static_cast<uint8_t*>(qp) + i, n, a, c0);
        }
      });
    });
    return;
  }
  parallel_for(x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for_each_channel_run(begin, end, layout, grid, range,
                         [&](int64_t b, int64_t e, const ChannelGrid& c) {
                           if (is_signed) {
                             quantize_loop(xp + b, static_cast<int8_t*>(qp) + b, e - b, c);
                           } else {
                             quantize_loop(xp + b, static_cast<uint8_t*>(qp) + b, e - b, c);
                           }
                         });
  });
}

void dequantize_linear(const Tensor& q, const QuantGrid& grid, Tensor& y) {
  const IntRange range = int_range("dequantize_linear", grid.dtype);
  if (q.dtype() != grid.dtype) {
    throw_invalid(std::string("dequantize_linear: expected a ")
                      .append(dtype_name(grid.dtype))
                      .append(" tensor, got ")
                      .append(q.describe()));
  }
  const ChannelLayout layout = check_grid("dequantize_linear", q, grid, range);
  check_output("dequantize_linear", q, y, DType::kFloat32);
  const bool is_signed = grid.dtype == DType::kInt8;
  const void* qp = q.raw();
  float* yp = y.data<float>();
  if (walks_channels(grid, layout)) {
    const ChannelArrays a = channel_arrays(grid, range);
    parallel_for(q.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_row_piece(begin, end, layout.channels, [&](int64_t i, int64_t n, int64_t c0) {
        if (is_signed) {
          dequantize_row(static_cast<const int8_t*>(qp) + i, yp + i, n, a, c0);
        } else {
          dequantize_row(static_cast<const uint8_t*>(qp) + i, yp + i, n, a, c0);
        }
      });
    });
    return;
  }
  parallel_for(q.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for_each_channel_run(begin, end, layout, grid, range,
                         [&](int64_t b, int64_t e, const ChannelGrid& c) {
                           if (is_signed) {
                             dequantize_loop(static_cast<const int8_t*>(qp) + b, yp + b, e - b, c);
                           } else {
                             dequantize_loop(static_cast<const uint8_t*>(qp) + b, yp + b, e - b, c);
                           }
                         });
  });
}

namespace {

// fake_quant_linear_record over elements [b, e) of one channel: y, q and the pass flags.
template <class T>
void record_loop(const float* x, float* y, T* q, uint8_t* flags, int64_t n, const ChannelGrid& c) {
  for (int64_t i = 0; i < n; ++i) {
    const float offset = grid_offset(x[i], c.scale, c.lo, c.hi);
    y[i] = offset * c.scale;
    q[i] = static_cast<T>(static_cast<int32_t>(offset) + c.zero_point);
    // The unsaturated integer, rounded as the forward rounds; beyond 2^22 the magic form is no
    // longer exact but stays far outside [lo, hi], and NaN fails both compares.
    const float rounded = (x[i] / c.scale + kRoundMagic) - kRoundMagic;
    flags[i] = rounded >= c.lo && rounded <= c.hi ? 1 : 0;
  }
}

// record_loop over [0, n) of one scale, with the pass flags packed straight into `pass` (element
// 0 at bit 0 of pass[0]): vectors of 16 (AVX-512) or 8 (AVX2) elements, then record_loop.
template <class T>
void record_run(const float* x, float* y, T* q, uint8_t* pass, int64_t n, const ChannelGrid& c) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 scale = _mm512_set1_ps(c.scale);
  const __m512 lo = _mm512_set1_ps(c.lo);
  const __m512 hi = _mm512_set1_ps(c.hi);
  const __m512 magic = _mm512_set1_ps(kRoundMagic);
  const __m512i zero_point = _mm512_set1_epi32(c.zero_point);
  for (; i + 16 <= n; i += 16) {
    const __m512 quotient = _mm512_div_ps(_mm512_loadu_ps(x + i), scale);
    __m512 v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(quotient, lo, _CMP_LT_OQ), quotient, lo);
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, hi, _CMP_GT_OQ), v, hi);
    v = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
    const __m512 offset = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
    _mm512_storeu_ps(y + i, _mm512_mul_ps(offset, scale));
    // (The zero-masked forms: the plain ones start from an undefined vector, which GCC 12
    // reports as maybe uninitialised.)
    const __m512i code = _mm512_add_epi32(_mm512_maskz_cvtps_epi32(0xFFFF, offset), zero_point);
    _mm512_mask_cvtepi32_storeu_epi8(q + i, 0xFFFF, code);
    const __m512 rounded = _mm512_sub_ps(_mm512_add_ps(quotient, magic), magic);
    const __mmask16 m =
        _mm512_cmp_ps_mask(rounded, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(rounded, hi, _CMP_LE_OQ);
    std::memcpy(pass + i / 8, &m, sizeof(m));
  }
#elif defined(__AVX2__)
  const __m256 scale = _mm256_set1_ps(c.scale);
  const __m256 lo = _mm256_set1_ps(c.lo);
  const __m256 hi = _mm256_set1_ps(c.hi);
  const __m256 magic = _mm256_set1_ps(kRoundMagic);
  for (; i + 8 <= n; i += 8) {
    const __m256 quotient = _mm256_div_ps(_mm256_loadu_ps(x + i), scale);
    __m256 v = _mm256_blendv_ps(quotient, lo, _mm256_cmp_ps(quotient, lo, _CMP_LT_OQ));
    v = _mm256_blendv_ps(v, hi, _mm256_cmp_ps(v, hi, _CMP_GT_OQ));
    v = _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
    const __m256 offset = _mm256_and_ps(_mm256_cmp_ps(v, v, _CMP_ORD_Q), v);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(offset, scale));
    alignas(32) int32_t codes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(codes), _mm256_cvtps_epi32(offset));
    for (int j = 0; j < 8; ++j) q[i + j] = static_cast<T>(codes[j] + c.zero_point);
    const __m256 rounded = _mm256_sub_ps(_mm256_add_ps(quotient, magic), magic);
    const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(rounded, lo, _CMP_GE_OQ),
                                        _mm256_cmp_ps(rounded, hi, _CMP_LE_OQ));
    pass[i / 8] = static_cast<uint8_t>(_mm256_movemask_ps(inside));
  }
#endif
  for (; i < n; i += 8) {
    uint8_t flags[8] = {};
    const int64_t count = std::min<int64_t>(8, n - i);
    record_loop(x + i, y + i, q + i, flags, count, c);
    pass[i / 8] = static_cast<uint8_t>(pack_flags(flags, count));
  }
}

}  // namespace

void fake_quant_linear_record(const Tensor& x, const QuantGrid& grid, Tensor& y, Tensor& q,
                              uint8_t* pass) {
  const IntRange range = int_range("fake_quant_linear_record", grid.dtype);
  const ChannelLayout layout =
      check_and_layout("fake_quant_linear_record", x, {grid.scales, grid.axis});
  check_grid("fake_quant_linear_record", x, grid, range);
  check_same_shape("fake_quant_linear_record", x, y, "y");
  check_output("fake_quant_linear_record", x, q, grid.dtype);
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  const bool is_signed = grid.dtype == DType::kInt8;
  void* qp = q.raw();
  const int64_t n = x.numel();
  // Whole 64-element words per task, so that no two tasks write one byte of the mask.
  if (grid.scales.size() == 1) {
    const ChannelGrid c = channel_grid(grid, range, 0);
    parallel_for((n + 63) / 64, kGrain / 64, [&](int64_t word_begin, int64_t word_end) {
      const int64_t b = word_begin * 64;
      const int64_t e = std::min(n, word_end * 64);
      if (is_signed) {
        record_run(xp + b, yp + b, static_cast<int8_t*>(qp) + b, pass + b / 8, e - b, c);
      } else {
        record_run(xp + b, yp + b, static_cast<uint8_t*>(qp) + b, pass + b / 8, e - b, c);
      }
    });
    // The last word's bits past n, which no task wrote.
    const int64_t written = (n + 7) / 8;
    std::fill(pass + written, pass + mask_bytes(n), uint8_t{0});
    return;
  }
  parallel_for((n + 63) / 64, kGrain / 64, [&](int64_t word_begin, int64_t word_end) {
    uint8_t flags[64];
    for (int64_t w = word_begin; w < word_end; ++w) {
      const int64_t begin = w * 64;
      const int64_t end = std::min(n, begin + 64);
      for_each_channel_run(
          begin, end, layout, grid, range, [&](int64_t b, int64_t e, const ChannelGrid& c) {
            uint8_t* f = flags + (b - begin);
            if (is_signed) {
              record_loop(xp + b, yp + b, static_cast<int8_t*>(qp) + b, f, e - b, c);
            } else {
              record_loop(xp + b, yp + b, static_cast<uint8_t*>(qp) + b, f, e - b, c);
            }
          });
      const uint64_t word = pack_flags(flags, end - begin);
      std::memcpy(pass + w * 8, &word, sizeof(word));
    }
  });
}

void fake_quant_linear(const Tensor& x, const QuantGrid& grid, Tensor& y) {
  const IntRange range = int_range("fake_quant_linear", grid.dtype);
  const ChannelLayout layout = check_and_layout("fake_quant_linear", x, {grid.scales, grid.axis});
  check_grid("fake_quant_linear", x, grid, range);
  check_same_shape("fake_quant_linear", x, y, "y");
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  if (walks_channels(grid, layout)) {
    const ChannelArrays a = channel_arrays(grid, range);
    parallel_for(x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_row_piece(begin, end, layout.channels, [&](int64_t i, int64_t n, int64_t c0) {
        fake_quant_row(xp + i, yp + i, n, a, c0);
      });
    });
    return;
  }
  parallel_for(x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for_each_channel_run(begin, end, layout, grid, range,
                         [&](int64_t b, int64_t e, const ChannelGrid& c) {
                           // The offset is an integer, so offset · scale is exactly what
                           // dequantize_linear computes from the stored integer.
                           for (int64_t i = b; i < e; ++i) {
                             yp[i] = grid_offset(xp[i], c.scale, c.lo, c.hi) * c.scale;
                           }
                         });
  });
}

void check_tensor_grid(const char* what, const TensorGrid& grid) {
  check_scales(what, std::span(&grid.scale, 1));
  check_zero_points(what, std::span(&grid.zero_point, 1), int_range(what, grid.dtype));
}

void fake_quant_linear_rows(const TensorGrid& grid, float* y, int64_t rows, int64_t count,
                            int64_t ld) {
  const IntRange range = int_range("fake_quant_linear_rows", grid.dtype);
  const float lo = static_cast<float>(range.lo - grid.zero_point);
  const float hi = static_cast<float>(range.hi - grid.zero_point);
  const float scale = grid.scale;
#if defined(__AVX512F__)
  // grid_offset's operations in its order, 16 lanes at a time and the row's tail under a mask:
  // the runs an output pass hands over can be a few outputs long.
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512 vlo = _mm512_set1_ps(lo);
  const __m512 vhi = _mm512_set1_ps(hi);
  const __m512 magic = _mm512_set1_ps(kRoundMagic);
  const auto one = [&](float* p, __mmask16 m) {
    const __m512 quotient = _mm512_div_ps(_mm512_maskz_loadu_ps(m, p), vscale);
    __m512 v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(quotient, vlo, _CMP_LT_OQ), quotient, vlo);
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, vhi, _CMP_GT_OQ), v, vhi);
    v = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
    const __m512 offset = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
    _mm512_mask_storeu_ps(p, m, _mm512_mul_ps(offset, vscale));
  };
  for (int64_t r = 0; r < rows; ++r) {
    float* row = y + r * ld;
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) one(row + i, 0xFFFF);
    if (i < count) one(row + i, static_cast<__mmask16>((1u << (count - i)) - 1u));
  }
#else
  for (int64_t r = 0; r < rows; ++r) {
    float* row = y + r * ld;
    for (int64_t i = 0; i < count; ++i) row[i] = grid_offset(row[i], scale, lo, hi) * scale;
  }
#endif
}

}  // namespace qforge::kernels
