// The harness cases: at least one per catalog unit (tests/runtime/catalog_harness_test.cpp fails
// naming a unit without one). Each is a one-node graph on awkward shapes (odd sizes, sizes that
// are no multiple of a SIMD width or tile, size-1 dims, broadcasting, groups, strides,
// dilations and pads) with seeded inputs kept away from the op's kinks and rounding boundaries.
// Adding a unit: append a case here, e.g.
//   out.push_back(HarnessCase("Tanh", "odd sizes").data(d.uniform({3, 1, 7}, -2, 2)));
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/fake_quant.h"
#include "tests/support/catalog_harness.h"

namespace qforge::testing::harness {

// Seeded inputs for the cases.
class Draw {
 public:
  explicit Draw(uint32_t seed) : rng_(seed) {}

  Tensor uniform(Shape shape, float lo = -1.0f, float hi = 1.0f) {
    Tensor t(DType::kFloat32, std::move(shape));
    std::uniform_real_distribution<float> dist(lo, hi);
    for (float& f : t.span<float>()) f = dist(rng_);
    return t;
  }
  // Uniform in [lo, hi) but at least `margin` from every kink.
  Tensor away(Shape shape, float lo, float hi, std::vector<float> kinks, float margin = 0.05f) {
    Tensor t(DType::kFloat32, std::move(shape));
    std::uniform_real_distribution<float> dist(lo, hi);
    for (float& f : t.span<float>()) {
      do {
        f = dist(rng_);
      } while (std::any_of(kinks.begin(), kinks.end(),
                           [&](float k) { return std::abs(f - k) < margin; }));
    }
    return t;
  }
  // Distinct values in [lo, hi), pairwise at least (hi − lo) / (2·numel) apart: a shuffled grid
  // with jitter, so that max and min are never ties.
  Tensor distinct(Shape shape, float lo = -1.0f, float hi = 1.0f) {
    Tensor t(DType::kFloat32, std::move(shape));
    const int64_t n = t.numel();
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng_);
    std::uniform_real_distribution<float> jitter(-0.25f, 0.25f);
    const float step = (hi - lo) / static_cast<float>(n);
    for (int64_t i = 0; i < n; ++i) {
      t.data<float>()[i] =
          lo + step * (static_cast<float>(order[static_cast<size_t>(i)]) + 0.5f + jitter(rng_));
    }
    return t;
  }
  // Integers of [lo, hi] as float32.
  Tensor small_ints(Shape shape, int lo, int hi) {
    Tensor t(DType::kFloat32, std::move(shape));
    std::uniform_int_distribution<int> dist(lo, hi);
    for (float& f : t.span<float>()) f = static_cast<float>(dist(rng_));
    return t;
  }
  // x = s·(k + u): k an integer of [k_lo, k_hi], |u| <= 0.35, so x / s stays 0.15 or more from
  // every rounding boundary k ± 0.5 and from the saturation bounds.
  Tensor on_grid(Shape shape, const std::vector<float>& scales, int axis, int k_lo, int k_hi) {
    Tensor t(DType::kFloat32, std::move(shape));
    std::uniform_int_distribution<int> k(k_lo, k_hi);
    std::uniform_real_distribution<float> u(-0.35f, 0.35f);
    int64_t inner = 1;
    for (int d = axis + 1; d < t.rank(); ++d) inner *= t.dim(d);
    const auto channels = static_cast<int64_t>(scales.size());
    for (int64_t i = 0; i < t.numel(); ++i) {
      const float s = scales[static_cast<size_t>(channels > 1 ? (i / inner) % channels : 0)];
      t.data<float>()[i] = s * (static_cast<float>(k(rng_)) + u(rng_));
    }
    return t;
  }

 private:
  std::mt19937 rng_;
};

inline Tensor i64(Shape shape, std::vector<int64_t> v) {
  return Tensor::from_vector<int64_t>(std::move(shape), v);
}
inline Tensor i64s(std::vector<int64_t> v) {
  const auto n = static_cast<int64_t>(v.size());
  return Tensor::from_vector<int64_t>({n}, v);
}
inline Tensor f32s(Shape shape, std::vector<float> v) {
  return Tensor::from_vector<float>(std::move(shape), v);
}
inline Tensor bools(Shape shape, std::vector<uint8_t> v) {
  Tensor t(DType::kBool, std::move(shape));
  std::copy(v.begin(), v.end(), t.data<uint8_t>());
  return t;
}

// ---------------------------------------------------------------------------------------------
// Naive references and closed forms of the internal ops (ONNX Runtime has none of them).

// FusedConv: Conv, then per channel ·scale + shift, + residual, clamp; the Conv itself is the
// qforge Conv kernel, which its own case holds to ONNX Runtime.
inline std::vector<Tensor> fused_conv_reference(std::span<const Tensor> in, const Attributes& conv,
                                                float lo, float hi) {
  HarnessCase c("Conv", "FusedConv's convolution");
  c.data(in[0]).weight(in[1]);
  if (in[2].defined()) c.weight(in[2]);
  c.attributes = conv;
  Tensor y = kernel_forward(c, KernelRun::Mode::kInference)[0];
  const int64_t channels = y.dim(1);
  const int64_t inner = y.numel() / (y.dim(0) * channels);
  float* p = y.data<float>();
  for (int64_t i = 0; i < y.numel(); ++i) {
    const int64_t ch = (i / inner) % channels;
    double v = p[i];
    if (in[3].defined()) v = v * in[3].data<float>()[ch] + in[4].data<float>()[ch];
    if (in[5].defined()) v += in[5].data<float>()[i];
    p[i] = static_cast<float>(std::clamp(v, double(lo), double(hi)));
  }
  return {y};
}

// The symmetric int8 grid of FakeQuant and WeightFakeQuant, in double: the integer of x / s
// (ties cannot occur: the cases stay off rounding boundaries), saturated to [-128, 127].
inline double grid_integer(double x, double s) {
  return std::clamp(std::nearbyint(x / s), -128.0, 127.0);
}
inline bool in_grid(double x, double s) {
  return x / s >= -128.5 && x / s < 127.5;
}

// FakeQuant(x, scale, zero point 0) with the scale per channel along `axis`.
struct ChannelIndex {
  int64_t inner = 1;
  int64_t channels = 1;
  int64_t operator()(int64_t i) const { return channels > 1 ? (i / inner) % channels : 0; }
};
inline ChannelIndex channel_index(const Tensor& x, int64_t scales, int axis) {
  ChannelIndex c;
  c.channels = scales;
  for (int d = axis + 1; d < x.rank(); ++d) c.inner *= x.dim(d);
  return c;
}

inline std::vector<Tensor> fake_quant_reference(std::span<const Tensor> in, int axis) {
  const Tensor& x = in[0];
  const float* s = in[1].data<float>();
  const ChannelIndex ch = channel_index(x, in[1].numel(), axis);
  Tensor y(DType::kFloat32, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double scale = s[ch(i)];
    y.data<float>()[i] = static_cast<float>(grid_integer(x.data<float>()[i], scale) * scale);
  }
  return {y};
}

// The straight-through estimator dx = dy inside the grid, and with a learned scale LSQ's
// dscale = g·Σ dy·(round(x/s) − x/s inside, −128 or 127 outside), g = 1/sqrt(N·127).
inline std::vector<std::vector<double>> fake_quant_gradient(std::span<const Tensor> in,
                                                            std::span<const Tensor> dy, int axis,
                                                            bool learned_scale) {
  const Tensor& x = in[0];
  const float* s = in[1].data<float>();
  const ChannelIndex ch = channel_index(x, in[1].numel(), axis);
  std::vector<std::vector<double>> out(in.size());
  out[0].resize(static_cast<size_t>(x.numel()));
  std::vector<double> dscale(static_cast<size_t>(in[1].numel()));
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double xv = x.data<float>()[i];
    const double sv = s[ch(i)];
    const double g = dy[0].data<float>()[i];
    out[0][static_cast<size_t>(i)] = in_grid(xv, sv) ? g : 0.0;
    const double q = xv / sv;
    const double ds = in_grid(xv, sv) ? std::nearbyint(q) - q : (q < 0 ? -128.0 : 127.0);
    dscale[static_cast<size_t>(ch(i))] += g * ds;
  }
  if (learned_scale) {
    const double g = 1.0 / std::sqrt(double(x.numel() / in[1].numel()) * 127.0);
    for (double& v : dscale) v *= g;
    out[1] = dscale;
  }
  return out;
}

// WeightFakeQuant(W, gamma?, var?) on the symmetric int8 grid, per output channel (axis 0): the
// weight folded with its batch norm, W·gamma/sqrt(var + eps), quantized with the scale
// max|folded| / 127; second output the fold factor.
struct WeightFold {
  std::vector<double> factor, inv_std, folded, scale;
  int64_t row = 0;
};
inline WeightFold weight_fold(std::span<const Tensor> in, double eps) {
  WeightFold f;
  const Tensor& w = in[0];
  const int64_t channels = w.dim(0);
  f.row = w.numel() / channels;
  const bool folds = in.size() > 1 && in[1].defined();
  for (int64_t c = 0; c < channels; ++c) {
    const double inv = folds ? 1.0 / std::sqrt(double(in[2].data<float>()[c]) + eps) : 1.0;
    f.inv_std.push_back(inv);
    f.factor.push_back(folds ? in[1].data<float>()[c] * inv : 1.0);
    double amax = 0;
    for (int64_t k = 0; k < f.row; ++k) {
      f.folded.push_back(float(w.data<float>()[c * f.row + k] * f.factor.back()));
      amax = std::max(amax, std::abs(f.folded.back()));
    }
    f.scale.push_back(kernels::symmetric_scale(static_cast<float>(amax)));
  }
  return f;
}
inline std::vector<Tensor> weight_fake_quant_reference(std::span<const Tensor> in, double eps) {
  const WeightFold f = weight_fold(in, eps);
  Tensor y(DType::kFloat32, in[0].shape());
  for (int64_t i = 0; i < y.numel(); ++i) {
    const double s = f.scale[static_cast<size_t>(i / f.row)];
    y.data<float>()[i] = static_cast<float>(grid_integer(f.folded[static_cast<size_t>(i)], s) * s);
  }
  std::vector<Tensor> out = {y};
  if (in.size() > 1 && in[1].defined()) {
    Tensor factor(DType::kFloat32, {static_cast<int64_t>(f.factor.size())});
    for (size_t c = 0; c < f.factor.size(); ++c) factor.data<float>()[c] = float(f.factor[c]);
    out.push_back(factor);
  }
  return out;
}
// The STE with the scale held constant: dW = dy·factor inside the grid; dgamma[c] =
// (Σ dfolded·W + dfactor[c])·inv_std[c].
inline std::vector<std::vector<double>> weight_fake_quant_gradient(std::span<const Tensor> in,
                                                                   std::span<const Tensor> dy,
                                                                   double eps) {
  const WeightFold f = weight_fold(in, eps);
  std::vector<std::vector<double>> out(in.size());
  const int64_t n = in[0].numel();
  out[0].resize(static_cast<size_t>(n));
  const bool folds = in.size() > 1 && in[1].defined();
  if (folds) out[1].assign(f.factor.size(), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const auto c = static_cast<size_t>(i / f.row);
    const double dfolded = in_grid(f.folded[static_cast<size_t>(i)], f.scale[c])
                               ? double(dy[0].data<float>()[i])
                               : 0.0;
    out[0][static_cast<size_t>(i)] = dfolded * f.factor[c];
    if (folds) out[1][c] += dfolded * in[0].data<float>()[i];
  }
  if (folds) {
    for (size_t c = 0; c < f.factor.size(); ++c) {
      out[1][c] = (out[1][c] + dy[1].data<float>()[c]) * f.inv_std[c];
    }
  }
  return out;
}

// A weight [channels, row] whose folded values sit on the grid of their channel (x / s at
// least 0.15 from a rounding boundary), the first of each row the channel's max |folded| =
// 127·s exactly.
inline Tensor weight_on_folded_grid(Draw& d, int64_t channels, int64_t row,
                                    const std::vector<float>& factor) {
  Tensor w(DType::kFloat32, {channels, row});
  for (int64_t c = 0; c < channels; ++c) {
    const float s = 0.01f * static_cast<float>(c + 1);
    const Tensor grid = d.on_grid({row}, {s}, 0, -120, 120);
    for (int64_t k = 0; k < row; ++k) {
      const float folded = k == 0 ? 127.0f * s : grid.data<float>()[k];
      w.data<float>()[c * row + k] = folded / factor[static_cast<size_t>(c)];
    }
  }
  return w;
}

// BatchNormalization as training runs it: batch mean and biased variance per channel.
inline std::vector<Tensor> batch_norm_training_reference(std::span<const Tensor> in, double eps) {
  const Tensor& x = in[0];
  const int64_t n = x.dim(0), channels = x.dim(1), inner = x.numel() / (n * channels);
  Tensor y(DType::kFloat32, x.shape());
  for (int64_t c = 0; c < channels; ++c) {
    double sum = 0, squares = 0;
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t k = 0; k < inner; ++k) sum += x.data<float>()[(b * channels + c) * inner + k];
    }
    const double mean = sum / double(n * inner);
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t k = 0; k < inner; ++k) {
        const double v = x.data<float>()[(b * channels + c) * inner + k] - mean;
        squares += v * v;
      }
    }
    const double inv = 1.0 / std::sqrt(squares / double(n * inner) + eps);
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t k = 0; k < inner; ++k) {
        const int64_t i = (b * channels + c) * inner + k;
        y.data<float>()[i] = static_cast<float>(
            (x.data<float>()[i] - mean) * inv * in[1].data<float>()[c] + in[2].data<float>()[c]);
      }
    }
  }
  return {y};
}

// Closed forms at kinks, in the one-sided conventions of kernels/README.md (PyTorch's): ReLU'(0)
// = 0, LeakyReLU'(0) = alpha, Clip 0 on both bounds (hardtanh, ReLU6), HardSwish x/3 + 1/2 from
// -3 and 1 from 3.
inline ClosedFormFn unary_kink_gradient(std::function<double(double)> derivative) {
  return [derivative](std::span<const Tensor> in, std::span<const Tensor> dy) {
    std::vector<std::vector<double>> out(in.size());
    for (int64_t i = 0; i < in[0].numel(); ++i) {
      out[0].push_back(double(dy[0].data<float>()[i]) * derivative(in[0].data<float>()[i]));
    }
    return out;
  };
}

// ---------------------------------------------------------------------------------------------

inline std::vector<HarnessCase> harness_cases() {
  Draw d(20261203);
  std::vector<HarnessCase> out;
  auto add = [&](HarnessCase c) -> HarnessCase& {
    out.push_back(std::move(c));
    return out.back();
  };
  using H = HarnessCase;
  using Ints = std::vector<int64_t>;

  // Element-wise, unary. Inputs stay 0.05 or more from every kink (and 2h = 1/64 further than
  // the finite differences reach).
  add(H("Relu", "odd sizes").data(d.away({3, 1, 37}, -2, 2, {0})));
  add(H("Relu", "at 0: no gradient")
          .data(f32s({2, 3}, {0.0f, -0.0f, 0.5f, -0.5f, 0.0f, 1.5f}))
          .gradient(unary_kink_gradient([](double x) { return x > 0 ? 1.0 : 0.0; })));
  add(H("LeakyRelu", "alpha 0.2").data(d.away({2, 19}, -2, 2, {0})).attr("alpha", 0.2f));
  add(H("LeakyRelu", "at 0: alpha")
          .data(f32s({4}, {0.0f, -0.0f, 0.75f, -0.75f}))
          .attr("alpha", 0.2f)
          .gradient(unary_kink_gradient([](double x) { return x > 0 ? 1.0 : 0.2; })));
  add(H("Elu", "alpha 0.7").data(d.away({5, 7}, -3, 2, {0})).attr("alpha", 0.7f));
  add(H("Sigmoid", "odd sizes").data(d.uniform({3, 17}, -4, 4)));
  // Silu (runtime-internal, runtime/fuse_epilogues.h): x / (1 + e^-x) in double.
  add(H("Silu", "x · sigmoid(x), odd sizes")
          .data(d.uniform({3, 17}, -8, 8))
          .reference([](std::span<const Tensor> in) {
            Tensor y(DType::kFloat32, in[0].shape());
            for (int64_t i = 0; i < y.numel(); ++i) {
              const double v = in[0].data<float>()[i];
              y.data<float>()[i] = static_cast<float>(v / (1.0 + std::exp(-v)));
            }
            return std::vector<Tensor>{y};
          }));
  add(H("HardSigmoid", "alpha 0.3, beta 0.4")
          .data(d.away({4, 9}, -3, 3, {-4.0f / 3.0f, 2.0f}))
          .attr("alpha", 0.3f)
          .attr("beta", 0.4f));
  add(H("HardSwish", "both sides of ±3").data(d.away({5, 11}, -4.5f, 4.5f, {-3, 3})));
  add(H("HardSwish", "at ±3: x/3 + 1/2 from -3, 1 from 3")
          .data(f32s({2, 3}, {-3.0f, 3.0f, -3.5f, 3.5f, 1.5f, 0.0f}))
          .gradient(unary_kink_gradient([](double x) {
            if (x < -3) return 0.0;
            return x < 3 ? x / 3 + 0.5 : 1.0;
          })));
  add(H("Erf", "odd sizes").data(d.uniform({2, 3, 7}, -2, 2)));
  add(H("Gelu", "erf form").data(d.uniform({3, 13}, -3, 3)).at_opset(20));
  add(H("Gelu", "tanh form")
          .data(d.uniform({3, 13}, -3, 3))
          .attr("approximate", std::string("tanh"))
          .at_opset(20));
  add(H("Tanh", "odd sizes").data(d.uniform({1, 29}, -2, 2)));
  add(H("Sqrt", "positive").data(d.uniform({3, 11}, 0.3f, 3)));
  add(H("Neg", "odd sizes").data(d.uniform({7, 3})));
  add(H("Exp", "odd sizes").data(d.uniform({2, 17}, -2, 2)));
  add(H("Log", "positive").data(d.uniform({3, 11}, 0.3f, 3)));
  add(H("Reciprocal", "away from 0").data(d.away({3, 11}, -3, 3, {0.0f}, 0.4f)));
  add(H("Abs", "away from 0").data(d.away({3, 11}, -3, 3, {0.0f})));
  add(H("Sin", "odd sizes").data(d.uniform({3, 13}, -4, 4)));
  add(H("Cos", "odd sizes").data(d.uniform({5, 7}, -4, 4)));
  // Piecewise constant: away from their steps, the gradient is 0.
  add(H("Floor", "off integers").data(d.away({3, 11}, -3, 3, {-3, -2, -1, 0, 1, 2, 3}, 0.05f)));
  add(H("Ceil", "off integers").data(d.away({3, 11}, -3, 3, {-3, -2, -1, 0, 1, 2, 3}, 0.05f)));
  add(H("Round", "off halves, ties to even")
          .data(d.away({3, 11}, -3, 3, {-2.5f, -1.5f, -0.5f, 0.5f, 1.5f, 2.5f}, 0.05f)));
  add(H("Sign", "off 0").data(d.away({4, 9}, -2, 2, {0.0f})));
  // T5's relative position buckets take |i - j| of int64 positions.
  add(H("Abs", "int64").data(i64({2, 3}, {-7, 0, 5, -(1LL << 40), 1, -1})));
  // DeBERTa's log-bucketed relative positions take the sign of int64 distances.
  add(H("Sign", "int64").data(i64({2, 3}, {-7, 0, 5, -(1LL << 40), 1, -1})));
  add(H("Softplus", "odd sizes").data(d.uniform({4, 9}, -3, 3)));
  add(H("Clip", "min and max inputs")
          .data(d.away({3, 19}, -2, 2, {-0.6f, 0.8f}))
          .setting(Tensor::scalar_f32(-0.6f))
          .setting(Tensor::scalar_f32(0.8f)));
  add(H("Clip", "on its bounds: no gradient")
          .data(f32s({2, 4}, {-0.5f, 0.5f, -1.0f, 1.0f, 0.25f, -0.5f, 0.5f, 0.0f}))
          .setting(Tensor::scalar_f32(-0.5f))
          .setting(Tensor::scalar_f32(0.5f))
          .gradient(unary_kink_gradient([](double x) { return x > -0.5 && x < 0.5 ? 1.0 : 0.0; })));
  add(H("Clip", "max only")
          .data(d.away({13}, -2, 2, {0.3f}))
          .absent()
          .setting(Tensor::scalar_f32(0.3f)));
  add(H("Identity", "odd sizes").data(d.uniform({3, 1, 5})));
  add(H("Dropout", "inference: identity and mask").data(d.uniform({3, 7})).with_outputs(2));
  add(H("Cast", "float to int64, off integers")
          .data(d.away({3, 5}, -4, 4, {-4, -3, -2, -1, 0, 1, 2, 3, 4}, 0.1f))
          .attr("to", int64_t{7})
          .no_gradient("its output is an integer"));
  // F.softmax(x, dtype=torch.float32) of a float32 x: the gradient passes through.
  add(H("Cast", "float to float").data(d.uniform({3, 7})).attr("to", int64_t{1}));
  add(H("Cast", "int64 to float")
          .data(i64({2, 3}, {-3, 0, 7, 1 << 20, -1, 5}))
          .attr("to", int64_t{1}));
  add(H("Not", "booleans").data(bools({2, 3}, {0, 1, 1, 0, 0, 1})));

  // Element-wise, binary, broadcasting.
  add(H("Add", "broadcast [2,3,5] + [3,1]").data(d.uniform({2, 3, 5})).data(d.uniform({3, 1})));
  add(H("Sub", "broadcast [4,1,3] − [5,1]").data(d.uniform({4, 1, 3})).data(d.uniform({5, 1})));
  add(H("Mul", "broadcast [1,7] · [3,1]").data(d.uniform({1, 7})).data(d.uniform({3, 1})));
  add(H("Div", "broadcast [4,5] / [5]")
          .data(d.uniform({4, 5}))
          .data(d.away({5}, -2, 2, {0}, 0.5f)));
  add(H("Pow", "positive base, broadcast exponent")
          .data(d.uniform({3, 4}, 0.5f, 2))
          .data(d.uniform({4}, -1.5f, 2)));
  // Max and Min: inputs on interleaved grids, so no two values that meet are closer than 1/12
  // (a tie would put the finite differences across a kink).
  add(H("Max", "broadcast [3,4] and [4]")
          .data(f32s({3, 4}, {-1.0f, 0.5f, -1.0f / 6, 5.0f / 6, 1.0f / 3, -5.0f / 6, 0.0f,
                              -2.0f / 3, 2.0f / 3, -0.5f, 1.0f / 6, -1.0f / 3}))
          .data(f32s({4}, {-0.92f, -0.25f, 0.08f, 0.58f})));
  add(H("Min", "three inputs, broadcast [2,3], [3] and [2,1]")
          .data(f32s({2, 3}, {0.0f, -1.0f, 2.0f / 3, -1.0f / 3, 1.0f / 3, -2.0f / 3}))
          .data(f32s({3}, {-8.0f / 9, -2.0f / 9, 4.0f / 9}))
          .data(f32s({2, 1}, {-7.0f / 9, 1.0f / 9})));
  add(H("Max", "one input").data(d.uniform({2, 5})));
  add(H("PRelu", "slope per channel")
          .data(d.away({2, 3, 4, 5}, -2, 2, {0}))
          .weight(d.uniform({3, 1, 1}, 0.05f, 0.5f)));
  add(H("Mod", "int64, sign of the divisor")
          .data(i64({2, 4}, {7, -7, 13, -13, 5, 0, -9, 11}))
          .data(i64({4}, {3, 3, -4, 5})));
  add(H("Mod", "float fmod")
          .data(d.uniform({2, 5}, -5, 5))
          .data(d.away({5}, -2, 2, {0}, 0.5f))
          .attr("fmod", int64_t{1}));
  add(H("Equal", "int64 broadcast")
          .data(i64({2, 3}, {1, 2, 3, 3, 2, 1}))
          .data(i64({3}, {1, 2, 1})));
  add(H("Greater", "broadcast").data(d.distinct({3, 4})).data(d.distinct({4})));
  add(H("Less", "broadcast").data(d.distinct({2, 1, 3})).data(d.distinct({4, 1})));
  // Ties included: the "or equal" half is where the two differ from Greater and Less.
  add(H("GreaterOrEqual", "int64 with ties")
          .data(i64({2, 3}, {1, 2, 3, 3, 2, 1}))
          .data(i64({3}, {1, 3, 2})));
  add(H("LessOrEqual", "int64 with ties")
          .data(i64({2, 3}, {1, 2, 3, 3, 2, 1}))
          .data(i64({3}, {1, 3, 2})));
  add(H("GreaterOrEqual", "float broadcast").data(d.distinct({3, 4})).data(d.distinct({4})));
  // A causal and a padding mask joined.
  add(H("And", "broadcast masks")
          .data(bools({3, 3}, {1, 0, 0, 1, 1, 0, 1, 1, 1}))
          .data(bools({2, 1, 3}, {1, 1, 0, 0, 1, 1})));
  add(H("Or", "broadcast masks")
          .data(bools({3, 3}, {1, 0, 0, 1, 1, 0, 1, 1, 1}))
          .data(bools({2, 1, 3}, {1, 1, 0, 0, 1, 1})));
  add(H("Xor", "broadcast masks")
          .data(bools({3, 3}, {1, 0, 0, 1, 1, 0, 1, 1, 1}))
          .data(bools({2, 1, 3}, {1, 1, 0, 0, 1, 1})));
  add(H("Where", "broadcast condition and branches")
          .setting(bools({3, 1}, {1, 0, 1}))
          .data(d.uniform({1, 4}))
          .data(d.uniform({3, 4})));
  // GPT-2's torch.where(causal, scores, lowest), the fill a scalar (here a value that
  // differences can move).
  add(H("Where", "causal keep, scalar fill")
          .setting(bools({1, 1, 3, 3}, {1, 0, 0, 1, 1, 0, 1, 1, 1}))
          .data(d.uniform({2, 2, 3, 3}))
          .data(Tensor::scalar_f32(-0.75f)));

  // Dense.
  const Attributes conv_attrs = {{"group", int64_t{2}},
                                 {"strides", Ints{2, 1}},
                                 {"dilations", Ints{1, 2}},
                                 {"pads", Ints{1, 2, 0, 1}},
                                 {"kernel_shape", Ints{3, 3}}};
  {
    H c("Conv", "groups 2, stride (2,1), dilation (1,2), uneven pads, bias");
    c.data(d.uniform({2, 4, 7, 9}))
        .weight(d.uniform({6, 2, 3, 3}, -0.5f, 0.5f))
        .weight(d.uniform({6}));
    c.attributes = conv_attrs;
    add(c);
  }
  add(H("Conv", "3x3 stride 1, pad 1, no bias")
          .data(d.uniform({1, 5, 9, 11}))
          .weight(d.uniform({7, 5, 3, 3}, -0.5f, 0.5f))
          .attr("pads", Ints{1, 1, 1, 1}));
  add(H("Conv", "depthwise 3x3 stride 2")
          .data(d.uniform({1, 6, 8, 7}))
          .weight(d.uniform({6, 1, 3, 3}))
          .weight(d.uniform({6}))
          .attr("group", int64_t{6})
          .attr("strides", Ints{2, 2})
          .attr("pads", Ints{1, 1, 1, 1}));
  // 3-D (video, volumes): depth taps stacked on the 2-D kernels (kernels/conv_depth.h).
  {
    H c("Conv", "3-D, groups 2, strides (2,1,2), dilations (2,1,1), uneven pads, bias");
    c.data(d.uniform({2, 4, 6, 5, 7}))
        .weight(d.uniform({6, 2, 2, 3, 3}, -0.5f, 0.5f))
        .weight(d.uniform({6}));
    c.attributes = {{"group", int64_t{2}},
                    {"strides", Ints{2, 1, 2}},
                    {"dilations", Ints{2, 1, 1}},
                    {"pads", Ints{1, 1, 0, 0, 1, 1}}};
    add(c);
  }
  add(H("Conv", "3-D 3x3x3, pad 1, no bias")
          .data(d.uniform({1, 3, 4, 6, 5}))
          .weight(d.uniform({5, 3, 3, 3, 3}, -0.5f, 0.5f))
          .attr("pads", Ints{1, 1, 1, 1, 1, 1}));
  // Depthwise 3-D convolutions run forward on their direct kernel (conv3d_depthwise).
  add(H("Conv", "3-D depthwise 3x3x3, strides (1,2,2), pad 1, bias (MViT's pooling)")
          .data(d.uniform({2, 5, 4, 9, 8}))
          .weight(d.uniform({5, 1, 3, 3, 3}))
          .weight(d.uniform({5}))
          .attr("group", int64_t{5})
          .attr("strides", Ints{1, 2, 2})
          .attr("pads", Ints{1, 1, 1, 1, 1, 1}));
  add(H("Conv", "3-D depthwise (3,1,1), stride (2,1,1)")
          .data(d.uniform({2, 4, 7, 3, 3}))
          .weight(d.uniform({4, 1, 3, 1, 1}))
          .attr("group", int64_t{4})
          .attr("strides", Ints{2, 1, 1})
          .attr("pads", Ints{1, 0, 0, 1, 0, 0}));
  add(H("Conv", "1x1, 17 channels")
          .data(d.uniform({2, 17, 3, 5}))
          .weight(d.uniform({9, 17, 1, 1}, -0.5f, 0.5f))
          .weight(d.uniform({9})));
  add(H("ConvTranspose", "groups 2, stride 2, output padding, pads")
          .data(d.uniform({1, 4, 5, 6}))
          .weight(d.uniform({4, 3, 3, 3}, -0.5f, 0.5f))
          .weight(d.uniform({6}))
          .attr("group", int64_t{2})
          .attr("strides", Ints{2, 2})
          .attr("pads", Ints{1, 0, 1, 1})
          .attr("output_padding", Ints{1, 0}));
  add(H("ConvTranspose", "dilation 2, no bias")
          .data(d.uniform({2, 3, 4, 3}))
          .weight(d.uniform({3, 5, 2, 3}, -0.5f, 0.5f))
          .attr("dilations", Ints{2, 1}));
  add(H("ConvTranspose", "3-D, groups 2, strides (2,1,2), output padding, pads")
          .data(d.uniform({2, 4, 3, 4, 3}))
          .weight(d.uniform({4, 3, 3, 2, 3}, -0.5f, 0.5f))
          .weight(d.uniform({6}))
          .attr("group", int64_t{2})
          .attr("strides", Ints{2, 1, 2})
          .attr("pads", Ints{1, 0, 1, 0, 1, 0})
          .attr("output_padding", Ints{1, 0, 1}));
  add(H("ConvTranspose", "3-D 2x2x2 stride 2 (a UNet's upsampling), dilation (2,1,1), no bias")
          .data(d.uniform({1, 3, 3, 4, 5}))
          .weight(d.uniform({3, 4, 2, 2, 2}, -0.5f, 0.5f))
          .attr("strides", Ints{2, 2, 2})
          .attr("dilations", Ints{2, 1, 1}));
  add(H("Gemm", "transA, transB, alpha, beta, C broadcast")
          .data(d.uniform({7, 5}))
          .weight(d.uniform({6, 7}))
          .weight(d.uniform({6}))
          .attr("transA", int64_t{1})
          .attr("transB", int64_t{1})
          .attr("alpha", 0.7f)
          .attr("beta", 1.3f));
  add(H("Gemm", "no C, 13 x 17").data(d.uniform({3, 13})).weight(d.uniform({13, 17})));
  add(H("MatMul", "batched, broadcast [2,1,5,7] x [3,7,4]")
          .data(d.uniform({2, 1, 5, 7}))
          .data(d.uniform({3, 7, 4})));
  add(H("MatMul", "constant weight [6,13] x [13,9]")
          .data(d.uniform({6, 13}))
          .weight(d.uniform({13, 9})));
  add(H("BatchNormalization", "inference, 5 channels")
          .data(d.uniform({3, 5, 4, 3}))
          .weight(d.uniform({5}, 0.5f, 1.5f))
          .weight(d.uniform({5}))
          .setting(d.uniform({5}))
          .setting(d.uniform({5}, 0.5f, 1.5f))
          .attr("epsilon", 1e-3f)
          .frozen());
  {
    H c("BatchNormalization", "training: batch statistics");
    c.data(d.uniform({3, 5, 2, 3}))
        .weight(d.uniform({5}, 0.5f, 1.5f))
        .weight(d.uniform({5}))
        .setting(d.uniform({5}))
        .setting(d.uniform({5}, 0.5f, 1.5f))
        .attr("epsilon", 1e-3f)
        .trained_forward()
        .reference(
            [](std::span<const Tensor> in) { return batch_norm_training_reference(in, 1e-3); });
    add(c);
  }
  add(H("LayerNormalization", "last axis of 7")
          .data(d.uniform({3, 4, 7}, -2, 2))
          .weight(d.uniform({7}, 0.5f, 1.5f))
          .weight(d.uniform({7})));
  add(H("LayerNormalization", "axis 1, scale [4,7], no bias")
          .data(d.uniform({3, 4, 7}, -2, 2))
          .weight(d.uniform({4, 7}, 0.5f, 1.5f))
          .attr("axis", int64_t{1}));
  add(H("Softmax", "axis 1 of [3,4,7]").data(d.uniform({3, 4, 7}, -3, 3)).attr("axis", int64_t{1}));
  add(H("Softmax", "last axis").data(d.uniform({2, 19}, -3, 3)));
  add(H("LogSoftmax", "last axis").data(d.uniform({3, 37}, -4, 4)));
  add(H("LogSoftmax", "axis 0 of [5,3,6]")
          .data(d.uniform({5, 3, 6}, -3, 3))
          .attr("axis", int64_t{0}));
  // Max pools: values at least 16 / (2·numel) apart, over twice the finite-difference step (2^-7)
  // for these sizes, so no window holds a near-tie.
  add(H("MaxPool", "3x3 stride 2, pads 1")
          .data(d.distinct({1, 3, 8, 9}, -8, 8))
          .attr("kernel_shape", Ints{3, 3})
          .attr("strides", Ints{2, 2})
          .attr("pads", Ints{1, 1, 1, 1}));
  add(H("MaxPool", "2x3 dilation (2,1), ceil mode")
          .data(d.distinct({2, 2, 7, 8}, -8, 8))
          .attr("kernel_shape", Ints{2, 3})
          .attr("dilations", Ints{2, 1})
          .attr("strides", Ints{2, 2})
          .attr("ceil_mode", int64_t{1}));
  add(H("AveragePool", "3x2 stride (2,1), uneven pads, pads excluded")
          .data(d.uniform({1, 3, 7, 9}))
          .attr("kernel_shape", Ints{3, 2})
          .attr("strides", Ints{2, 1})
          .attr("pads", Ints{1, 0, 1, 1}));
  add(H("AveragePool", "3x3 stride 2, pads counted")
          .data(d.uniform({2, 2, 6, 7}))
          .attr("kernel_shape", Ints{3, 3})
          .attr("strides", Ints{2, 2})
          .attr("pads", Ints{1, 1, 1, 1})
          .attr("count_include_pad", int64_t{1}));
  // 3-D (video, volumes): separable, over the depth taps, then the planes.
  add(H("MaxPool", "3-D 3x3x3 stride (1,2,2), pads 1")
          .data(d.distinct({2, 2, 5, 7, 6}, -8, 8))
          .attr("kernel_shape", Ints{3, 3, 3})
          .attr("strides", Ints{1, 2, 2})
          .attr("pads", Ints{1, 1, 1, 1, 1, 1}));
  add(H("MaxPool", "3-D 2x1x3 dilation (2,1,1), ceil mode")
          .data(d.distinct({1, 3, 7, 4, 8}, -8, 8))
          .attr("kernel_shape", Ints{2, 1, 3})
          .attr("dilations", Ints{2, 1, 1})
          .attr("strides", Ints{2, 1, 2})
          .attr("ceil_mode", int64_t{1}));
  add(H("AveragePool", "3-D 2x3x2 stride (2,2,1), uneven pads, pads excluded")
          .data(d.uniform({1, 3, 5, 7, 6}))
          .attr("kernel_shape", Ints{2, 3, 2})
          .attr("strides", Ints{2, 2, 1})
          .attr("pads", Ints{1, 1, 0, 0, 1, 1}));
  add(H("AveragePool", "3-D 3x3x3 stride 2, pads counted, ceil mode")
          .data(d.uniform({2, 2, 6, 5, 7}))
          .attr("kernel_shape", Ints{3, 3, 3})
          .attr("strides", Ints{2, 2, 2})
          .attr("pads", Ints{1, 1, 1, 1, 1, 1})
          .attr("ceil_mode", int64_t{1})
          .attr("count_include_pad", int64_t{1}));
  add(H("GlobalAveragePool", "odd spatial").data(d.uniform({2, 3, 5, 7})));
  add(H("InstanceNormalization", "odd spatial")
          .data(d.uniform({2, 3, 5, 3}, -2, 2))
          .weight(d.uniform({3}, 0.5f, 1.5f))
          .weight(d.uniform({3}))
          .attr("epsilon", 1e-5f));
  add(H("GroupNormalization", "2 groups of 2 channels, per-group scale (opset 18)")
          .data(d.uniform({2, 4, 3, 5}, -2, 2))
          .weight(d.uniform({2}, 0.5f, 1.5f))
          .weight(d.uniform({2}))
          .attr("num_groups", int64_t{2})
          .at_opset(18));
  add(H("GroupNormalization", "3 groups of 2 channels, per-channel scale (opset 21)")
          .data(d.uniform({2, 6, 5}, -2, 2))
          .weight(d.uniform({6}, 0.5f, 1.5f))
          .weight(d.uniform({6}))
          .attr("num_groups", int64_t{3})
          .at_opset(21));
  add(H("ReduceMax", "axes (1, 2) attribute, keepdims")
          .data(d.distinct({2, 3, 4}))
          .attr("axes", Ints{1, 2}));
  add(H("ReduceMax", "axes input, no keepdims (opset 18)")
          .data(d.distinct({3, 5}))
          .setting(i64s({-1}))
          .attr("keepdims", int64_t{0})
          .at_opset(18));
  add(H("ReduceL2", "axes (2, 3) attribute, keepdims")
          .data(d.uniform({2, 3, 4, 5}, -2, 2))
          .attr("axes", Ints{2, 3}));
  add(H("ReduceL2", "last axis input, no keepdims (opset 18)")
          .data(d.uniform({3, 5, 4}, -2, 2))
          .setting(i64s({-1}))
          .attr("keepdims", int64_t{0})
          .at_opset(18));
  add(H("ReduceSum", "axes input (0, 2), keepdims")
          .data(d.uniform({2, 3, 5}))
          .setting(i64s({0, 2})));
  add(H("ReduceMin", "axes (0, 2) attribute, keepdims")
          .data(d.distinct({3, 4, 5}))
          .attr("axes", Ints{0, 2}));
  add(H("ReduceMin", "axes input, no keepdims (opset 18)")
          .data(d.distinct({4, 7}))
          .setting(i64s({1}))
          .attr("keepdims", int64_t{0})
          .at_opset(18));
  add(H("ReduceL1", "axes (1, 3) attribute, keepdims")
          .data(d.away({2, 3, 4, 5}, -2, 2, {0.0f}))
          .attr("axes", Ints{1, 3}));
  add(H("ReduceL1", "all axes (opset 18)").data(d.away({3, 5}, -2, 2, {0.0f})).at_opset(18));
  add(H("ReduceSumSquare", "axes (0) attribute, no keepdims")
          .data(d.uniform({5, 3, 2}, -2, 2))
          .attr("axes", Ints{0})
          .attr("keepdims", int64_t{0}));
  // Products of values near 1 in magnitude: no product vanishes or overflows.
  add(H("ReduceProd", "axes (1) attribute, keepdims")
          .data(d.away({3, 6, 4}, -1.5f, 1.5f, {0.0f}, 0.5f))
          .attr("axes", Ints{1}));
  add(H("ReduceProd", "axes input (0, 2), no keepdims (opset 18)")
          .data(d.away({2, 3, 3}, -1.5f, 1.5f, {0.0f}, 0.5f))
          .setting(i64s({0, 2}))
          .attr("keepdims", int64_t{0})
          .at_opset(18));
  add(H("ReduceLogSum", "last axis attribute")
          .data(d.uniform({4, 9}, 0.5f, 2.0f))
          .attr("axes", Ints{-1}));
  add(H("ReduceLogSumExp", "axes (1) attribute, keepdims")
          .data(d.uniform({3, 11, 2}, -4, 4))
          .attr("axes", Ints{1}));
  add(H("ReduceLogSumExp", "axes input (-1), no keepdims (opset 18)")
          .data(d.uniform({2, 3, 17}, -30, 30))
          .setting(i64s({-1}))
          .attr("keepdims", int64_t{0})
          .at_opset(18));
  add(H("Tile", "repeats (2, 1, 3)").data(d.uniform({2, 3, 2})).setting(i64s({2, 1, 3})));
  add(H("CumSum", "axis 1").data(d.uniform({2, 7, 5})).setting(i64s({1})));
  add(H("CumSum", "last axis, exclusive, reverse")
          .data(d.uniform({3, 4, 17}))
          .setting(i64({}, {-1}))
          .attr("exclusive", int64_t{1})
          .attr("reverse", int64_t{1}));
  add(H("CumSum", "axis 0, reverse")
          .data(d.uniform({6, 3}))
          .setting(i64s({0}))
          .attr("reverse", int64_t{1}));
  // RoBERTa's position ids: the running count of a mask's tokens, in int32, and in int64.
  add(H("CumSum", "int32 mask counts")
          .data(Tensor::from_vector<int32_t>({2, 6}, {1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0}))
          .setting(i64s({1})));
  add(H("CumSum", "int64, exclusive")
          .data(i64({2, 4}, {7, -7, 1LL << 40, -13, 5, 0, -9, 11}))
          .setting(i64s({1}))
          .attr("exclusive", int64_t{1}));
  // torch.triu / tril: a decoder's causal mask, built from a full matrix.
  add(H("Trilu", "upper, k absent").data(d.uniform({2, 5, 7})));
  add(H("Trilu", "lower, k -1, wide")
          .data(d.uniform({3, 17}))
          .setting(i64({}, {-1}))
          .attr("upper", int64_t{0}));
  add(H("Trilu", "upper, k 2, tall, batched").data(d.uniform({2, 3, 9, 4})).setting(i64({}, {2})));
  add(H("Trilu", "lower, k past the columns")
          .data(d.uniform({4, 3}))
          .setting(i64({}, {5}))
          .attr("upper", int64_t{0}));
  add(H("Trilu", "int64, upper k 1")
          .data(i64({3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9}))
          .setting(i64({}, {1})));
  add(H("Trilu", "bool, lower").data(bools({2, 3}, {1, 1, 1, 1, 0, 1})).attr("upper", int64_t{0}));
  add(H("ArgMax", "axis 1, keepdims").data(d.distinct({2, 5, 3})).attr("axis", int64_t{1}));
  // Detection heads' top-scoring candidates; distinct values (ties order by index).
  add(H("TopK", "k 3 of the last axis")
          .data(d.distinct({2, 3, 7}))
          .setting(i64s({3}))
          .with_outputs(2));
  add(H("TopK", "k 2 smallest along axis 1")
          .data(d.distinct({2, 5, 3}))
          .setting(i64s({2}))
          .attr("axis", int64_t{1})
          .attr("largest", int64_t{0})
          .with_outputs(2));
  add(H("TopK", "k the whole axis 0")
          .data(d.distinct({4, 3}))
          .setting(i64s({4}))
          .attr("axis", int64_t{0})
          .with_outputs(2));
  add(H("ArgMax", "int32 ids, last axis, no keepdims")
          .data(Tensor::from_vector<int32_t>({2, 5}, {3, 9, 1, 9, 0, 49, 2, 7, 7, 1}))
          .attr("axis", int64_t{-1})
          .attr("keepdims", int64_t{0}));
  add(H("ArgMax", "int64, select last index")
          .data(i64({2, 4}, {5, -1, 5, 2, 1LL << 40, 3, 1LL << 40, 0}))
          .attr("axis", int64_t{1})
          .attr("select_last_index", int64_t{1}));
  add(H("IsNaN", "NaN among numbers and infinities")
          .data(Tensor::from_vector<float>({2, 3}, {1.0f, std::numeric_limits<float>::quiet_NaN(),
                                                    -std::numeric_limits<float>::infinity(), 0.0f,
                                                    std::numeric_limits<float>::infinity(),
                                                    -std::numeric_limits<float>::quiet_NaN()})));
  add(H("IsInf", "both signs")
          .data(Tensor::from_vector<float>({2, 3},
                                           {1.0f, std::numeric_limits<float>::quiet_NaN(),
                                            -std::numeric_limits<float>::infinity(), 0.0f,
                                            std::numeric_limits<float>::infinity(), -3e38f})));
  add(H("IsInf", "negative only")
          .data(Tensor::from_vector<float>(
              {4}, {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                    2.0f, -2.0f}))
          .attr("detect_positive", int64_t{0}));
  add(H("Size", "element count of a 3-D tensor").data(d.uniform({2, 3, 5})));
  add(H("ArgMin", "axis 1, keepdims").data(d.distinct({2, 5, 3})).attr("axis", int64_t{1}));
  add(H("ArgMin", "int64, select last index, no keepdims")
          .data(i64({2, 4}, {5, -1, 5, -1, 1LL << 40, 3, -(1LL << 40), -(1LL << 40)}))
          .attr("axis", int64_t{1})
          .attr("keepdims", int64_t{0})
          .attr("select_last_index", int64_t{1}));
  add(H("ArgMax", "last axis, select last index, no keepdims")
          .data(d.distinct({3, 4}))
          .attr("axis", int64_t{-1})
          .attr("keepdims", int64_t{0})
          .attr("select_last_index", int64_t{1}));
  add(H("ReduceMean", "axes attribute (1, 3), keepdims")
          .data(d.uniform({2, 3, 4, 5}))
          .attr("axes", Ints{1, 3}));
  add(H("ReduceMean", "axes input, no keepdims")
          .data(d.uniform({2, 3, 5}))
          .setting(i64s({-1}))
          .attr("keepdims", int64_t{0})
          .at_opset(18));

  // Shape and data movement.
  add(H("Reshape", "0 and -1").data(d.uniform({2, 3, 4})).setting(i64s({0, -1})));
  add(H("Flatten", "axis 2").data(d.uniform({2, 3, 4, 5})).attr("axis", int64_t{2}));
  add(H("Squeeze", "axes (1, 3)").data(d.uniform({2, 1, 3, 1})).setting(i64s({1, 3})));
  add(H("Unsqueeze", "axes (0, -1)").data(d.uniform({3, 4})).setting(i64s({0, -1})));
  add(H("Transpose", "perm (3,0,2,1)")
          .data(d.uniform({2, 3, 4, 5}))
          .attr("perm", Ints{3, 0, 2, 1}));
  add(H("Transpose", "int64, perm (1,0)")
          .data(i64({2, 3}, {1, 2, 3, 4, 5, 6}))
          .attr("perm", Ints{1, 0}));
  // Pixel shuffle (super-resolution heads) and its inverse.
  add(H("DepthToSpace", "blocksize 2, DCR")
          .data(d.uniform({2, 8, 3, 5}))
          .attr("blocksize", int64_t{2}));
  add(H("DepthToSpace", "blocksize 3, CRD (torch's pixel_shuffle)")
          .data(d.uniform({1, 18, 2, 3}))
          .attr("blocksize", int64_t{3})
          .attr("mode", std::string("CRD")));
  add(H("SpaceToDepth", "blocksize 2").data(d.uniform({2, 3, 4, 6})).attr("blocksize", int64_t{2}));
  add(H("Concat", "three inputs on axis 1")
          .data(d.uniform({2, 3, 4}))
          .data(d.uniform({2, 1, 4}))
          .data(d.uniform({2, 5, 4}))
          .attr("axis", int64_t{1}));
  add(H("Split", "sizes (2, 3, 4) on axis 1")
          .data(d.uniform({2, 9, 3}))
          .setting(i64s({2, 3, 4}))
          .attr("axis", int64_t{1})
          .with_outputs(3));
  add(H("Slice", "steps 2 and -2, negative ends")
          .data(d.uniform({5, 7, 4}))
          .setting(i64s({1, 6}))
          .setting(i64s({5, -8}))
          .setting(i64s({0, 1}))
          .setting(i64s({2, -2})));
  add(H("Expand", "[3,1,5] to [2,3,4,5]").data(d.uniform({3, 1, 5})).setting(i64s({2, 1, 4, 1})));
  add(H("Gather", "axis 1, repeated and negative indices")
          .data(d.uniform({5, 4, 3}))
          .setting(i64({2, 3}, {0, -1, 2, 3, 0, 0}))
          .attr("axis", int64_t{1}));
  // torch.gather: DeBERTa's relative-position scores, top-k selections.
  add(H("GatherElements", "axis 1, repeated and negative indices")
          .data(d.uniform({2, 4, 3}))
          .setting(i64({2, 5, 3}, {0, -1, 2, 3, 0,  0, 1, 1, 1, -4, 2, 3, 3, 2,  1,
                                   2, 2,  0, 1, -2, 3, 0, 0, 0, 3,  1, 2, 1, -3, 2}))
          .attr("axis", int64_t{1}));
  add(H("GatherElements", "last axis, indices smaller off the axis, int32")
          .data(d.uniform({3, 5}))
          .setting(Tensor::from_vector<int32_t>({2, 2}, {4, 0, -1, 2}))
          .attr("axis", int64_t{-1}));
  // tf.gather_nd: tuples into the leading dims, with and without batch dims, repeated tuples.
  add(H("GatherND", "pairs into [4, 3, 5], repeated")
          .data(d.uniform({4, 3, 5}))
          .setting(i64({3, 2}, {1, 2, -1, 0, 1, 2})));
  add(H("GatherND", "batch_dims 1, single indices")
          .data(d.uniform({2, 6, 3}))
          .setting(i64({2, 4, 1}, {0, 5, 5, -2, 1, 1, 3, 0}))
          .attr("batch_dims", int64_t{1}));
  add(H("GatherND", "full tuples, int64 data")
          .data(i64({2, 3}, {1, 2, 3, 4, 5, 6}))
          .setting(i64({2, 2}, {1, 2, 0, -1})));
  // F.one_hot: negative indices count from the depth, out-of-range ones give all off.
  add(H("OneHot", "last axis, float values")
          .data(i64({2, 3}, {0, 4, -1, 2, 7, -6}))
          .setting(i64({}, {5}))
          .setting(f32s({2}, {-0.5f, 2.0f})));
  add(H("OneHot", "axis 0, int32 indices and depth")
          .data(Tensor::from_vector<int32_t>({3}, {1, -2, 0}))
          .setting(Tensor::from_vector<int32_t>({1}, {4}))
          .setting(f32s({2}, {0.0f, 1.0f}))
          .attr("axis", int64_t{0}));
  add(H("OneHot", "axis 1 of 3, int64 values")
          .data(i64({2, 2}, {3, 0, -3, 9}))
          .setting(i64s({3}))
          .setting(i64s({0, 9}))
          .attr("axis", int64_t{1}));
  // torch.scatter / scatter_add: repeated targets (the last write kept; with add, summed).
  add(H("ScatterElements", "axis 1, repeated targets")
          .data(d.uniform({2, 5, 3}))
          .setting(i64({2, 3, 3}, {0, 4, 2, 0, 1, 2, 4, 4, -1, 3, 0, 1, 3, 3, 2, -5, 0, 0}))
          .data(d.uniform({2, 3, 3}))
          .attr("axis", int64_t{1}));
  add(H("ScatterElements", "add, last axis, smaller updates (opset 16)")
          .data(d.uniform({3, 6}))
          .setting(i64({2, 4}, {5, 0, 5, 2, 1, 1, -1, 3}))
          .data(d.uniform({2, 4}))
          .attr("axis", int64_t{-1})
          .attr("reduction", std::string("add"))
          .at_opset(16));
  add(H("ScatterElements", "int64 data, axis 0")
          .data(i64({3, 2}, {1, 2, 3, 4, 5, 6}))
          .setting(i64({1, 2}, {2, 0}))
          .setting(i64({1, 2}, {70, 80})));
  add(H("GatherElements", "int64 data, axis 0")
          .data(i64({3, 2}, {10, 11, 12, 13, 14, 15}))
          .setting(i64({2, 2}, {2, 0, -1, 1}))
          .attr("axis", int64_t{0}));
  add(H("Pad", "reflect")
          .data(d.uniform({2, 3, 5}))
          .setting(i64s({0, 2, 1, 0, 1, 3}))
          .attr("mode", std::string("reflect"))
          .no_gradient("reflect padding has no backward kernel"));
  add(H("Pad", "edge, negative pads crop")
          .data(d.uniform({3, 4, 5}))
          .setting(i64s({1, -1, 2, 0, 0, -2}))
          .attr("mode", std::string("edge"))
          .no_gradient("edge padding has no backward kernel"));
  add(H("Pad", "constant value 0.5")
          .data(d.uniform({2, 3, 4}))
          .setting(i64s({0, 1, 2, 1, 0, 1}))
          .setting(Tensor::scalar_f32(0.5f)));
  add(H("Resize", "linear, half pixel, scales (1, 1, 2, 1.5)")
          .data(d.uniform({1, 2, 3, 4}))
          .absent()
          .setting(f32s({4}, {1, 1, 2, 1.5f}))
          .attr("mode", std::string("linear")));
  add(H("Resize", "nearest, asymmetric, floor, sizes")
          .data(d.uniform({2, 1, 3, 5}))
          .absent()
          .absent()
          .setting(i64s({2, 1, 7, 8}))
          .attr("mode", std::string("nearest"))
          .attr("coordinate_transformation_mode", std::string("asymmetric"))
          .attr("nearest_mode", std::string("floor")));
  // 5-D (volumes): separable, along the depth, then the planes.
  add(H("Resize", "3-D linear, half pixel, scales (1, 1, 2, 1.5, 2)")
          .data(d.uniform({1, 2, 3, 4, 3}))
          .absent()
          .setting(f32s({5}, {1, 1, 2, 1.5f, 2}))
          .attr("mode", std::string("linear")));
  add(H("Resize", "3-D linear, align corners, sizes")
          .data(d.uniform({2, 1, 4, 3, 5}))
          .absent()
          .absent()
          .setting(i64s({2, 1, 7, 5, 4}))
          .attr("mode", std::string("linear"))
          .attr("coordinate_transformation_mode", std::string("align_corners")));
  add(H("Resize", "3-D nearest, asymmetric, floor, sizes")
          .data(d.uniform({2, 2, 3, 3, 5}))
          .absent()
          .absent()
          .setting(i64s({2, 2, 6, 7, 8}))
          .attr("mode", std::string("nearest"))
          .attr("coordinate_transformation_mode", std::string("asymmetric"))
          .attr("nearest_mode", std::string("floor")));
  // GridSample: grid values kept off the points where a sample's pixels change (integer pixel
  // coordinates; half-integers for nearest) and off the padding's folds, for both axes' sizes.
  // Without align_corners pixel p sits at g = (2p + 1) / size − 1, with it at 2p / (size − 1) − 1.
  auto grid_kinks = [](std::vector<int64_t> sizes, bool align, double step) {
    std::vector<float> kinks = {-1.0f, 1.0f};
    for (int64_t size : sizes) {
      for (double p = -3.0 * static_cast<double>(size); p <= 4.0 * static_cast<double>(size);
           p += step) {
        kinks.push_back(static_cast<float>(align ? 2 * p / static_cast<double>(size - 1) - 1
                                                 : (2 * p + 1) / static_cast<double>(size) - 1));
      }
    }
    return kinks;
  };
  add(H("GridSample", "bilinear, zeros, reaching outside")
          .data(d.uniform({2, 3, 5, 6}))
          .data(d.away({2, 4, 3, 2}, -1.2f, 1.2f, grid_kinks({5, 6}, false, 1.0), 0.03f))
          .at_opset(16));
  add(H("GridSample", "bilinear, border, align corners")
          .data(d.uniform({1, 2, 4, 7}))
          .data(d.away({1, 3, 5, 2}, -1.3f, 1.3f, grid_kinks({4, 7}, true, 1.0), 0.04f))
          .attr("padding_mode", std::string("border"))
          .attr("align_corners", int64_t{1})
          .at_opset(16));
  add(H("GridSample", "linear, reflection (opset 20)")
          .data(d.uniform({1, 2, 5, 4}))
          .data(d.away({1, 3, 3, 2}, -2.0f, 2.0f, grid_kinks({5, 4}, false, 0.5), 0.03f))
          .attr("mode", std::string("linear"))
          .attr("padding_mode", std::string("reflection"))
          .at_opset(20));
  add(H("GridSample", "bilinear, reflection, align corners")
          .data(d.uniform({1, 1, 3, 5}))
          .data(d.away({1, 2, 4, 2}, -2.5f, 2.5f, grid_kinks({3, 5}, true, 1.0), 0.04f))
          .attr("padding_mode", std::string("reflection"))
          .attr("align_corners", int64_t{1})
          .at_opset(16));
  // A nearest sample does not move with its grid value: the grid is a setting there.
  add(H("GridSample", "nearest, zeros")
          .data(d.uniform({2, 2, 4, 5}))
          .setting(d.away({2, 3, 4, 2}, -1.2f, 1.2f, grid_kinks({4, 5}, false, 0.5), 0.03f))
          .attr("mode", std::string("nearest"))
          .at_opset(16));
  add(H("Shape", "start 1").data(d.uniform({2, 3, 4})).attr("start", int64_t{1}));
  add(H("Constant", "float tensor").attr("value", f32s({2, 3}, {1, -2, 3.5f, 0, 7, -0.25f})));
  add(H("ConstantOfShape", "float fill").known(i64s({2, 3, 5})).attr("value", f32s({1}, {0.75f})));
  add(H("Range", "int64, step 3")
          .known(Tensor::scalar_i64(2))
          .known(Tensor::scalar_i64(17))
          .known(Tensor::scalar_i64(3)));
  add(H("ScatterND", "rows replaced")
          .data(d.uniform({4, 5}))
          .setting(i64({2, 1}, {3, 1}))
          .data(d.uniform({2, 5})));
  add(H("ScatterND", "pairs of indices, a negative one, slices of 2")
          .data(d.uniform({3, 4, 2}))
          .setting(i64({3, 2}, {0, 1, 2, -1, 1, 0}))
          .data(d.uniform({3, 2})));

  // Quantization.
  add(H("QuantizeLinear", "int8 per channel, saturating")
          .data(d.on_grid({3, 5}, {0.02f, 0.05f, 0.1f}, 0, -140, 140))
          .setting(f32s({3}, {0.02f, 0.05f, 0.1f}))
          .setting(Tensor::from_vector<int8_t>({3}, {0, 3, -2}))
          .attr("axis", int64_t{0}));
  add(H("QuantizeLinear", "uint8 per tensor")
          .data(d.on_grid({2, 7}, {0.03f}, 0, -140, 140))
          .setting(Tensor::scalar_f32(0.03f))
          .setting(Tensor::from_vector<uint8_t>({}, {128})));
  add(H("DequantizeLinear", "int8 per channel")
          .data(Tensor::from_vector<int8_t>({3, 4}, {-128, -3, 0, 127, 5, -7, 9, 1, 2, 3, -4, 100}))
          .setting(f32s({3}, {0.02f, 0.05f, 0.1f}))
          .setting(Tensor::from_vector<int8_t>({3}, {0, 3, -2}))
          .attr("axis", int64_t{0}));
  {
    const std::vector<float> scales = {0.02f, 0.05f, 0.1f};
    add(H("FakeQuant", "per channel, STE, constant scale")
            .data(d.on_grid({3, 2, 5}, scales, 0, -140, 140))
            .setting(f32s({3}, scales))
            .setting(Tensor::from_vector<int8_t>({3}, {0, 0, 0}))
            .attr("axis", int64_t{0})
            .reference([](std::span<const Tensor> in) { return fake_quant_reference(in, 0); })
            .gradient([](std::span<const Tensor> in, std::span<const Tensor> dy) {
              return fake_quant_gradient(in, dy, 0, false);
            }));
    add(H("FakeQuant", "per tensor, learned scale (LSQ)")
            .data(d.on_grid({4, 7}, {0.04f}, 0, -140, 140))
            .weight(Tensor::scalar_f32(0.04f))
            .setting(Tensor::from_vector<int8_t>({}, {0}))
            .reference([](std::span<const Tensor> in) { return fake_quant_reference(in, 0); })
            .gradient([](std::span<const Tensor> in, std::span<const Tensor> dy) {
              return fake_quant_gradient(in, dy, 0, true);
            }));
  }
  {
    const std::vector<float> gamma = {0.8f, 1.3f, -0.6f};
    const std::vector<float> var = {0.5f, 1.2f, 0.9f};
    std::vector<float> factor;
    for (size_t c = 0; c < 3; ++c) factor.push_back(gamma[c] / std::sqrt(var[c] + 1e-5f));
    add(H("WeightFakeQuant", "per channel, folded batch norm")
            .weight(weight_on_folded_grid(d, 3, 10, factor).reshaped({3, 2, 5}))
            .weight(f32s({3}, gamma))
            .setting(f32s({3}, var))
            .with_outputs(2)
            .reference(
                [](std::span<const Tensor> in) { return weight_fake_quant_reference(in, 1e-5); })
            .gradient([](std::span<const Tensor> in, std::span<const Tensor> dy) {
              return weight_fake_quant_gradient(in, dy, 1e-5);
            }));
    add(H("WeightFakeQuant", "per channel, no fold")
            .weight(weight_on_folded_grid(d, 4, 6, {1, 1, 1, 1}))
            .reference(
                [](std::span<const Tensor> in) { return weight_fake_quant_reference(in, 1e-5); })
            .gradient([](std::span<const Tensor> in, std::span<const Tensor> dy) {
              return weight_fake_quant_gradient(in, dy, 1e-5);
            }));
  }
  add(H("MatMulAdd", "[2,3,300] x [300,37] + row [37]: three passes over k, a partial panel")
          .data(d.uniform({2, 3, 300}))
          .weight(d.uniform({300, 37}))
          .weight(d.uniform({37}, -4.0f, 4.0f))
          .reference([](std::span<const Tensor> in) {
            HarnessCase product("MatMul", "MatMulAdd's product");
            product.data(in[0]).weight(in[1]);
            Tensor y = kernel_forward(product, KernelRun::Mode::kInference)[0];
            const int64_t n = in[2].numel();
            for (int64_t i = 0; i < y.numel(); ++i)
              y.data<float>()[i] += in[2].data<float>()[i % n];
            return std::vector<Tensor>{y};
          }));
  {
    Attributes conv = conv_attrs;
    H c("FusedConv", "grouped conv, BN scale and shift, residual, clamp");
    c.data(d.uniform({2, 4, 7, 9}))
        .weight(d.uniform({6, 2, 3, 3}, -0.5f, 0.5f))
        .weight(d.uniform({6}))
        .setting(d.uniform({6}, 0.5f, 1.5f))
        .setting(d.uniform({6}))
        .data(d.uniform({2, 6, 3, 8}));
    c.attributes = conv;
    c.attr("clamp_min", 0.0f).attr("clamp_max", 6.0f);
    c.reference(
        [conv](std::span<const Tensor> in) { return fused_conv_reference(in, conv, 0, 6); });
    add(c);
  }
  {
    // 3-D: the residual is read in the 2-D kernels' order (depth before channels).
    const Attributes conv3 = {{"pads", Ints{1, 0, 1, 1, 0, 1}}, {"strides", Ints{1, 2, 1}}};
    H c("FusedConv", "3-D conv, BN scale and shift, residual, clamp");
    c.data(d.uniform({2, 3, 4, 6, 5}))
        .weight(d.uniform({5, 3, 3, 2, 3}, -0.5f, 0.5f))
        .weight(d.uniform({5}))
        .setting(d.uniform({5}, 0.5f, 1.5f))
        .setting(d.uniform({5}))
        .data(d.uniform({2, 5, 4, 3, 5}));
    c.attributes = conv3;
    c.attr("clamp_min", 0.0f).attr("clamp_max", 6.0f);
    c.reference(
        [conv3](std::span<const Tensor> in) { return fused_conv_reference(in, conv3, 0, 6); });
    add(c);
  }

  {
    // 3-D depthwise, on the direct kernel: the residual in the output's own layout.
    const Attributes conv3 = {{"group", int64_t{4}}, {"pads", Ints{1, 1, 1, 1, 1, 1}}};
    H c("FusedConv", "3-D depthwise conv, BN scale and shift, residual, clamp");
    c.data(d.uniform({2, 4, 3, 5, 6}))
        .weight(d.uniform({4, 1, 3, 3, 3}, -0.5f, 0.5f))
        .weight(d.uniform({4}))
        .setting(d.uniform({4}, 0.5f, 1.5f))
        .setting(d.uniform({4}))
        .data(d.uniform({2, 4, 3, 5, 6}));
    c.attributes = conv3;
    c.attr("clamp_min", 0.0f).attr("clamp_max", 6.0f);
    c.reference(
        [conv3](std::span<const Tensor> in) { return fused_conv_reference(in, conv3, 0, 6); });
    add(c);
  }

  // Modules: their lowering is the reference.
  auto bn_params = [&](H& c, int64_t channels) {
    c.weight(d.uniform({channels}, 0.5f, 1.5f))
        .weight(d.uniform({channels}))
        .setting(d.uniform({channels}))
        .setting(d.uniform({channels}, 0.5f, 1.5f))
        .attr("epsilon", 1e-3f);
  };
  // Before an activation with a kink at 0, the finite differences of the lowering need every
  // pre-activation off the kink: with |conv| <= 1.2 (weights in ±0.25 over at most 18 terms)
  // and |mean| <= 0.5, a shift of ±4 per channel keeps γ·(conv − mean)/σ + β beyond ±1.4,
  // the channels alternating between the two sides.
  auto bn_params_off_zero = [&](H& c, int64_t channels) {
    std::vector<float> beta;
    for (int64_t k = 0; k < channels; ++k) beta.push_back(k % 2 ? -4.0f : 4.0f);
    c.weight(d.uniform({channels}, 0.5f, 1.5f))
        .weight(f32s({channels}, beta))
        .setting(d.uniform({channels}, -0.5f, 0.5f))
        .setting(d.uniform({channels}, 1.0f, 1.5f))
        .attr("epsilon", 1e-3f);
  };
  {
    H c("ConvBNAct", "grouped, strided, BN, Relu");
    c.data(d.uniform({2, 4, 7, 9}))
        .weight(d.uniform({6, 2, 3, 3}, -0.25f, 0.25f))
        .weight(d.uniform({6}, -0.1f, 0.1f));
    bn_params_off_zero(c, 6);
    for (const auto& [k, v] : conv_attrs) c.attr(k, v);
    c.attr("activation", std::string("Relu"));
    add(c);
  }
  // The bias (±3 per channel) keeps every pre-activation off Clip's kinks at 0 and 6.
  add(H("ConvBNAct", "no BN, Clip")
          .data(d.uniform({1, 3, 6, 5}))
          .weight(d.uniform({5, 3, 3, 3}, -0.25f, 0.25f))
          .weight(f32s({5}, {3, -3, 3, -3, 3}))
          .attr("pads", Ints{1, 1, 1, 1})
          .attr("activation", std::string("Clip"))
          .attr("clip_min", 0.0f)
          .attr("clip_max", 6.0f));
  {
    H c("ConvBN", "1x1 stride 2");
    c.data(d.uniform({2, 5, 5, 7}))
        .weight(d.uniform({3, 5, 1, 1}))
        .weight(d.uniform({3}))
        .attr("strides", Ints{2, 2});
    bn_params(c, 3);
    add(c);
  }
  {
    H c("ConvBNAddAct", "residual, Gelu");
    c.data(d.uniform({1, 4, 5, 6}))
        .data(d.uniform({1, 4, 5, 6}))
        .weight(d.uniform({4, 4, 3, 3}, -0.5f, 0.5f))
        .weight(d.uniform({4}));
    bn_params(c, 4);
    c.attr("pads", Ints{1, 1, 1, 1}).attr("activation", std::string("Gelu"));
    add(c);
  }
  {
    // The pool's windows must not hold near ties, nor its Relu kinks: the image rises by 0.1 a
    // pixel along both axes (noise ±0.005) and each channel's weights share one sign, so a conv
    // output differs from its left and upper neighbours by 0.2·Σ|w| >= 0.27 (the noise moves
    // it by 0.07 at most); |conv| >= 0.6, so with mean 0 and a shift of ±1 of the weights' sign
    // every pre-activation is 1 or more from Relu's kink.
    Tensor image = d.uniform({1, 3, 11, 9}, -0.005f, 0.005f);
    for (int64_t i = 0; i < image.numel(); ++i) {
      image.data<float>()[i] += 0.1f * static_cast<float>((i / 9) % 11 + i % 9);
    }
    Tensor stem_w = d.uniform({4, 3, 3, 3}, 0.05f, 0.25f);
    for (int64_t i = 27; i < 54; ++i) stem_w.data<float>()[i] *= -1.0f;
    for (int64_t i = 81; i < 108; ++i) stem_w.data<float>()[i] *= -1.0f;
    H c("StemConvBNActMaxPool", "stride 2 conv, Relu, 3x3 pool");
    c.data(image)
        .weight(stem_w)
        .weight(d.uniform({4}, -0.05f, 0.05f))
        .weight(d.uniform({4}, 0.5f, 1.5f))
        .weight(f32s({4}, {1, -1, 1, -1}))
        .setting(f32s({4}, {0, 0, 0, 0}))
        .setting(d.uniform({4}, 1.0f, 1.5f))
        .attr("epsilon", 1e-3f);
    c.attr("strides", Ints{2, 2})
        .attr("activation", std::string("Relu"))
        .attr("pool_kernel_shape", Ints{3, 3})
        .attr("pool_strides", Ints{2, 2})
        .attr("pool_pads", Ints{1, 1, 1, 1});
    add(c);
  }
  {
    H c("ConvTransposeBNAct", "groups 2, stride 2, LeakyRelu");
    c.data(d.uniform({1, 4, 3, 5}))
        .weight(d.uniform({4, 3, 3, 3}, -0.25f, 0.25f))
        .weight(d.uniform({6}, -0.1f, 0.1f));
    bn_params_off_zero(c, 6);
    c.attr("group", int64_t{2})
        .attr("strides", Ints{2, 2})
        .attr("pads", Ints{1, 1, 1, 1})
        .attr("output_padding", Ints{1, 1})
        .attr("activation", std::string("LeakyRelu"))
        .attr("alpha", 0.1f);
    add(c);
  }
  {
    H c("ConvTransposeBN", "stride (2,1), no bias");
    c.data(d.uniform({2, 3, 4, 3}))
        .weight(d.uniform({3, 5, 2, 2}))
        .absent()
        .attr("strides", Ints{2, 1});
    bn_params(c, 5);
    add(c);
  }
  add(H("Linear", "MatMul layout [in, out]")
          .data(d.uniform({2, 3, 13}))
          .weight(d.uniform({13, 9}))
          .weight(d.uniform({9}))
          .attr("weight_layout", std::string("matmul"))
          .attr("source", std::string("MatMul")));
  add(H("Linear", "Gemm layout [out, in], no bias")
          .data(d.uniform({5, 11}))
          .weight(d.uniform({7, 11}))
          .absent()
          .attr("weight_layout", std::string("gemm"))
          .attr("source", std::string("Gemm")));
  add(H("LinearAct", "Silu")
          .data(d.uniform({3, 17}))
          .weight(d.uniform({17, 6}))
          .weight(d.uniform({6}))
          .attr("weight_layout", std::string("matmul"))
          .attr("source", std::string("MatMul"))
          .attr("activation", std::string("Silu")));
  add(H("RMSNorm", "last axis of 9")
          .data(d.uniform({2, 3, 9}, -2, 2))
          .weight(d.uniform({9}, 0.5f, 1.5f))
          .attr("epsilon", 1e-6f));
  add(H("RMSNorm", "rows of 33, a large epsilon")
          .data(d.uniform({5, 33}, -3, 3))
          .weight(d.uniform({33}, -1.5f, 1.5f))
          .attr("epsilon", 0.25f));
  add(H("LayerNorm", "last axis of 9")
          .data(d.uniform({2, 3, 9}, -2, 2))
          .weight(d.uniform({9}, 0.5f, 1.5f))
          .weight(d.uniform({9}))
          .attr("axis", int64_t{-1})
          .attr("epsilon", 1e-5f));
  add(H("AdaptiveAvgPool", "odd spatial").data(d.uniform({2, 3, 5, 3})));
  add(H("InstanceNorm", "odd spatial")
          .data(d.uniform({2, 3, 5, 3}, -2, 2))
          .weight(d.uniform({3}, 0.5f, 1.5f))
          .weight(d.uniform({3}))
          .attr("epsilon", 1e-5f));
  add(H("GroupNorm", "2 groups, per-channel scale (opset 21)")
          .data(d.uniform({2, 4, 7}, -2, 2))
          .weight(d.uniform({4}, 0.5f, 1.5f))
          .weight(d.uniform({4}))
          .attr("num_groups", int64_t{2})
          .at_opset(21));
  add(H("ActAdd", "Sigmoid")
          .data(d.uniform({2, 3, 5}))
          .data(d.uniform({2, 3, 5}))
          .attr("activation", std::string("Sigmoid")));
  add(H("SDPA", "mask, 2 heads, S 5, S_k 7")
          .data(d.uniform({1, 2, 5, 4}))
          .data(d.uniform({1, 2, 7, 4}))
          .data(d.uniform({1, 2, 7, 3}))
          .setting(d.uniform({1, 1, 5, 7}))
          .attr("scale", 0.5f));
  add(H("SDPA", "causal, no mask")
          .data(d.uniform({2, 6, 4}))
          .data(d.uniform({2, 6, 4}))
          .data(d.uniform({2, 6, 5}))
          .attr("scale", 0.45f)
          .attr("causal", int64_t{1}));
  add(H("MHAInProjection", "3 heads, bias")
          .data(d.uniform({2, 5, 6}))
          .weight(d.uniform({6, 18}))
          .weight(d.uniform({18}))
          .attr("num_heads", int64_t{3})
          .with_outputs(3));
  add(H("SwinAttention", "2 windows with a mask")
          .data(d.uniform({4, 2, 4, 3}))
          .data(d.uniform({4, 2, 4, 3}))
          .data(d.uniform({4, 2, 4, 5}))
          .weight(d.uniform({1, 2, 4, 4}))
          .setting(d.uniform({1, 2, 1, 4, 4}, -2, 0))
          .attr("scale", 0.6f)
          .attr("num_windows", int64_t{2}));
  // SliceUpdate (graph/slice_update.h), held to ONNX Runtime through its lowering to ScatterND.
  add(H("SliceUpdate", "torch's x[:, :, 1:, 1:] = y")
          .data(d.uniform({1, 2, 5, 6}))
          .data(d.uniform({1, 2, 4, 5}))
          .attr("starts", Ints{0, 0, 1, 1})
          .attr("steps", Ints{1, 1, 1, 1}));
  add(H("SliceUpdate", "steps 2 and 3 on the leading axes, the last whole")
          .data(d.uniform({5, 7, 3}))
          .data(d.uniform({2, 2, 3}))
          .attr("starts", Ints{1, 0})
          .attr("steps", Ints{2, 3}));
  add(H("SwinWindowPartition", "padding and shift")
          .data(d.uniform({1, 5, 6, 3}))
          .attr("window_size", Ints{3, 3})
          .attr("shift", Ints{1, 2})
          .attr("padding", Ints{1, 0}));
  add(H("SwinWindowReverse", "padding and shift")
          .data(d.uniform({4, 9, 3}))
          .attr("window_size", Ints{3, 3})
          .attr("shift", Ints{1, 2})
          .attr("padding", Ints{1, 0})
          .attr("image_size", Ints{5, 6}));
  return out;
}

}  // namespace qforge::testing::harness
