// Depthwise 3-D convolutions on their direct kernel (kernels/conv_depth.h, conv3d_depthwise):
// every output is one fused multiply-add chain from the bias over the taps inside the input in
// (kd, kh, kw) order, bit for bit, on each of its paths (sixteen channels per vector on planes
// at most 16 outputs wide, padded planes for 3×3 to 7×7 kernels of strides 1 and 2, output rows
// for any other plane geometry), at one and two threads and whatever the batch; the epilogue is
// the separate passes. The backward against sums in double, bit-identical at one and two threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/conv_depth.h"
#include "tests/support/float_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::expect_close;
using testing::expect_same_bits;
using testing::random_values;
using testing::ThreadCount;

struct Case {
  const char* name;
  int64_t batch, channels, multiplier;
  int64_t in_d, in_h, in_w;
  int64_t kd, kh, kw;
  int64_t sd, sh, sw;
  int64_t dd, dh, dw;
  int64_t pd, ph, pw;  // front, top, left; the back, bottom and right pads are the same
  bool bias;
};

const Case kCases[] = {
    // name, batch, channels, multiplier, in d/h/w, kernel d/h/w, strides, dilations, pads, bias
    // MViT's pooling: 3×3×3, pad 1, strides (1,1,1), (1,2,2), (1,4,4) and (1,8,8).
    {"mvit_q_56", 1, 19, 1, 4, 56, 56, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, false},
    {"mvit_q_stride2", 2, 17, 1, 4, 28, 28, 3, 3, 3, 1, 2, 2, 1, 1, 1, 1, 1, 1, false},
    {"mvit_kv_stride4", 1, 16, 1, 3, 28, 28, 3, 3, 3, 1, 4, 4, 1, 1, 1, 1, 1, 1, true},
    {"mvit_kv_stride8", 1, 5, 1, 3, 56, 56, 3, 3, 3, 1, 8, 8, 1, 1, 1, 1, 1, 1, false},
    {"mvit_14x14", 3, 37, 1, 5, 14, 14, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true},
    // X3D and CSN: depth stride 2, 5×5 and 7×7 planes, channel blocks of 16 and a part.
    {"depth_stride2_k5_7x7", 2, 20, 1, 7, 7, 7, 3, 5, 5, 2, 1, 1, 1, 1, 1, 1, 2, 2, true},
    {"k7_stride2_to_8x8", 1, 33, 1, 3, 16, 16, 3, 7, 7, 1, 2, 2, 1, 1, 1, 1, 3, 3, true},
    {"wide_k5_stride2", 1, 6, 1, 3, 40, 37, 2, 5, 5, 1, 2, 2, 1, 1, 1, 0, 2, 2, true},
    // Depth taps outside the input: a kernel deeper than the input, pads past it, dilation.
    {"depth_dilation2_pad3", 2, 9, 1, 4, 12, 12, 3, 3, 3, 1, 1, 1, 2, 1, 1, 3, 1, 1, true},
    {"kernel_deeper_than_input", 1, 18, 1, 2, 9, 20, 5, 3, 3, 1, 1, 1, 1, 1, 1, 2, 1, 1, false},
    // The row path: non-square, dilated, stride 3 planes; a multiplier of 2 (padded and rows).
    {"rows_k3x5_dilation2", 2, 7, 1, 4, 13, 17, 3, 3, 5, 2, 1, 1, 1, 2, 1, 1, 2, 2, true},
    {"rows_stride3", 1, 5, 1, 3, 13, 19, 2, 3, 3, 1, 3, 3, 1, 1, 1, 1, 0, 0, true},
    {"multiplier2_padded", 1, 3, 2, 3, 11, 22, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true},
    {"multiplier2_rows", 2, 3, 2, 3, 9, 9, 3, 1, 3, 1, 1, 2, 1, 1, 1, 1, 0, 1, false},
    {"temporal_only", 2, 4, 1, 7, 3, 3, 3, 1, 1, 2, 1, 1, 1, 1, 1, 1, 0, 0, true},
};

struct Problem {
  ConvGeometry plane;
  ConvDepth depth;
  std::vector<float> x, w, b;
};

int64_t out_size(int64_t in, int64_t kernel, int64_t stride, int64_t dilation, int64_t pad) {
  return (in + 2 * pad - ((kernel - 1) * dilation + 1)) / stride + 1;
}

Problem problem_of(const Case& c, uint32_t seed) {
  Problem p;
  ConvGeometry& g = p.plane;
  g.batch = c.batch;
  g.in_channels = g.group = c.channels;
  g.out_channels = c.channels * c.multiplier;
  g.in_h = c.in_h;
  g.in_w = c.in_w;
  g.kernel_h = c.kh;
  g.kernel_w = c.kw;
  g.stride_h = c.sh;
  g.stride_w = c.sw;
  g.dilation_h = c.dh;
  g.dilation_w = c.dw;
  g.pad_top = c.ph;
  g.pad_left = c.pw;
  g.out_h = out_size(c.in_h, c.kh, c.sh, c.dh, c.ph);
  g.out_w = out_size(c.in_w, c.kw, c.sw, c.dw, c.pw);
  p.depth = {.in = c.in_d,
             .out = out_size(c.in_d, c.kd, c.sd, c.dd, c.pd),
             .kernel = c.kd,
             .stride = c.sd,
             .dilation = c.dd,
             .pad = c.pd};
  p.x = random_values(static_cast<size_t>(c.batch * c.channels * c.in_d * c.in_h * c.in_w), seed);
  p.w = random_values(static_cast<size_t>(g.out_channels * c.kd * c.kh * c.kw), seed + 1);
  if (c.bias) p.b = random_values(static_cast<size_t>(g.out_channels), seed + 2);
  return p;
}

size_t output_size(const Problem& p) {
  return static_cast<size_t>(p.plane.batch * p.plane.out_channels * p.depth.out * p.plane.out_h *
                             p.plane.out_w);
}

std::vector<float> run(const Problem& p, const ConvEpilogue& epilogue = {}) {
  std::vector<float> y(output_size(p), NAN);
  conv3d_depthwise(p.plane, p.depth, p.x.data(), p.w.data(), p.b.empty() ? nullptr : p.b.data(),
                   y.data(), epilogue);
  return y;
}

float multiply_add(float a, float b, float c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return c + a * b;
#endif
}

// Calls visit(output, channel, x index, w index) for every output in order and each of its taps
// inside the input in (kd, kh, kw) order; an output without such taps is visited with no tap
// (x and w indices -1).
template <class Visit>
void for_each_tap(const Problem& p, Visit&& visit) {
  const ConvGeometry& g = p.plane;
  const ConvDepth& dp = p.depth;
  const int64_t multiplier = g.out_channels / g.group;
  size_t out = 0;
  for (int64_t n = 0; n < g.batch; ++n) {
    for (int64_t oc = 0; oc < g.out_channels; ++oc) {
      const int64_t x0 = (n * g.in_channels + oc / multiplier) * dp.in * g.in_h * g.in_w;
      const int64_t w0 = oc * dp.kernel * g.kernel_h * g.kernel_w;
      for (int64_t od = 0; od < dp.out; ++od) {
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          for (int64_t ow = 0; ow < g.out_w; ++ow, ++out) {
            visit(out, oc, int64_t{-1}, int64_t{-1});
            for (int64_t t = 0; t < dp.kernel; ++t) {
              const int64_t id = od * dp.stride - dp.pad + t * dp.dilation;
              if (id < 0 || id >= dp.in) continue;
              for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
                const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
                if (ih < 0 || ih >= g.in_h) continue;
                for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
                  const int64_t iw = ow * g.stride_w - g.pad_left + kw * g.dilation_w;
                  if (iw < 0 || iw >= g.in_w) continue;
                  visit(out, oc, x0 + (id * g.in_h + ih) * g.in_w + iw,
                        w0 + (t * g.kernel_h + kh) * g.kernel_w + kw);
                }
              }
            }
          }
        }
      }
    }
  }
}

// The chain of each output, written out.
std::vector<float> chains(const Problem& p) {
  std::vector<float> y(output_size(p));
  for_each_tap(p, [&](size_t out, int64_t oc, int64_t xi, int64_t wi) {
    if (xi < 0) {
      y[out] = p.b.empty() ? 0.0f : p.b[static_cast<size_t>(oc)];
    } else {
      y[out] = multiply_add(p.w[static_cast<size_t>(wi)], p.x[static_cast<size_t>(xi)], y[out]);
    }
  });
  return y;
}

TEST(Conv3dDepthwise, EveryOutputIsOneFusedMultiplyAddChain) {
  uint32_t seed = 3;
  for (const Case& c : kCases) {
    const Problem p = problem_of(c, seed += 3);
    ASSERT_TRUE(depthwise_3d_direct(p.plane)) << c.name;
    const std::vector<float> expected = chains(p);
    for (int threads : {1, 2}) {
      ThreadCount count(threads);
      expect_same_bits(run(p).data(), expected.data(), expected.size(),
                       std::string(c.name) + " at " + std::to_string(threads) + " threads");
    }
  }
}

TEST(Conv3dDepthwise, AVolumeDoesNotDependOnTheBatch) {
  ThreadCount threads(2);
  for (const char* name : {"mvit_q_stride2", "depth_stride2_k5_7x7", "multiplier2_rows"}) {
    const Case& c = *std::find_if(std::begin(kCases), std::end(kCases),
                                  [&](const Case& k) { return std::string(k.name) == name; });
    const Problem p = problem_of(c, 41);
    const std::vector<float> batched = run(p);
    Problem last = p;
    last.plane.batch = 1;
    const size_t in_sample = p.x.size() / static_cast<size_t>(p.plane.batch);
    last.x.assign(p.x.end() - static_cast<std::ptrdiff_t>(in_sample), p.x.end());
    const std::vector<float> alone = run(last);
    expect_same_bits(alone.data(), batched.data() + batched.size() - alone.size(), alone.size(),
                     name);
  }
}

// Scale, shift, residual and clamp on the output the kernel gives without them: the same
// expression per element (the kernel's may fuse the scale and shift into one rounding).
TEST(Conv3dDepthwise, EpilogueIsTheSeparatePass) {
  ThreadCount threads(2);
  for (const char* name : {"mvit_14x14", "mvit_q_56", "rows_stride3", "multiplier2_padded"}) {
    const Case& c = *std::find_if(std::begin(kCases), std::end(kCases),
                                  [&](const Case& k) { return std::string(k.name) == name; });
    const Problem p = problem_of(c, 57);
    const size_t out = output_size(p);
    const auto channels = static_cast<size_t>(p.plane.out_channels);
    const size_t volume = out / channels / static_cast<size_t>(p.plane.batch);
    const auto scale = random_values(channels, 58, 0.5f, 2.0f);
    const auto shift = random_values(channels, 59);
    const auto residual = random_values(out, 60);
    std::vector<float> expected = run(p);
    for (size_t i = 0; i < out; ++i) {
      const size_t ch = i / volume % channels;
      expected[i] = std::clamp(expected[i] * scale[ch] + shift[ch] + residual[i], 0.0f, 6.0f);
    }
    ConvEpilogue e;
    e.scale = scale.data();
    e.shift = shift.data();
    e.residual = residual.data();
    e.clamp_min = 0.0f;
    e.clamp_max = 6.0f;
    expect_close(run(p, e), expected, 1e-6, 1e-6, name);
  }
}

struct Gradients {
  std::vector<float> dx, dw, dbias;
};

Gradients run_backward(const Problem& p, const std::vector<float>& dy, int threads,
                       GradMode write = GradMode::kOverwrite, const Gradients* start = nullptr) {
  Gradients g{std::vector<float>(p.x.size()), std::vector<float>(p.w.size()),
              std::vector<float>(static_cast<size_t>(p.plane.out_channels))};
  if (start) g = *start;
  ThreadCount count(threads);
  std::vector<std::byte> ws(conv3d_depthwise_backward_workspace_bytes(p.plane, p.depth, threads));
  ConvGradients grads{.dx = g.dx.data(), .dw = g.dw.data(), .dbias = g.dbias.data()};
  conv3d_depthwise_backward(p.plane, p.depth, threads, p.x.data(), p.w.data(), dy.data(), grads,
                            ws.data(), write);
  return g;
}

// dx, dw and dbias summed in double over every (output, tap) pair.
Gradients reference_backward(const Problem& p, const std::vector<float>& dy) {
  std::vector<double> dx(p.x.size()), dw(p.w.size()), db(static_cast<size_t>(p.plane.out_channels));
  for_each_tap(p, [&](size_t out, int64_t oc, int64_t xi, int64_t wi) {
    const double gy = dy[out];
    if (xi < 0) {
      db[static_cast<size_t>(oc)] += gy;
      return;
    }
    dx[static_cast<size_t>(xi)] += gy * p.w[static_cast<size_t>(wi)];
    dw[static_cast<size_t>(wi)] += gy * p.x[static_cast<size_t>(xi)];
  });
  auto to_float = [](const std::vector<double>& v) {
    return std::vector<float>(v.begin(), v.end());
  };
  return {to_float(dx), to_float(dw), to_float(db)};
}

TEST(Conv3dDepthwise, BackwardMatchesDoubleSumsAndAnyThreadCount) {
  uint32_t seed = 101;
  for (const Case& c : kCases) {
    const Problem p = problem_of(c, seed += 4);
    const std::vector<float> dy = random_values(output_size(p), seed + 3);
    const Gradients want = reference_backward(p, dy);
    const Gradients one = run_backward(p, dy, 1);
    const Gradients two = run_backward(p, dy, 2);
    // Sums of up to batch · D_out · out_h · out_w products of values in [-1, 1].
    const double terms =
        static_cast<double>(p.plane.batch * p.depth.out * p.plane.out_h * p.plane.out_w);
    expect_close(one.dx, want.dx, 2e-6, 1e-5, std::string(c.name) + " dx");
    expect_close(one.dw, want.dw, 2e-6 * std::sqrt(terms), 1e-5, std::string(c.name) + " dw");
    expect_close(one.dbias, want.dbias, 2e-6 * std::sqrt(terms), 1e-5,
                 std::string(c.name) + " dbias");
    expect_same_bits(two.dx.data(), one.dx.data(), one.dx.size(), std::string(c.name) + " dx");
    expect_same_bits(two.dw.data(), one.dw.data(), one.dw.size(), std::string(c.name) + " dw");
    expect_same_bits(two.dbias.data(), one.dbias.data(), one.dbias.size(),
                     std::string(c.name) + " dbias");
  }
}

// Accumulating adds each gradient to what the buffers hold.
TEST(Conv3dDepthwise, BackwardAccumulates) {
  ThreadCount threads(2);
  const Problem p = problem_of(kCases[1], 7);
  const std::vector<float> dy = random_values(output_size(p), 8);
  const Gradients once = run_backward(p, dy, 2);
  const Gradients twice = run_backward(p, dy, 2, GradMode::kAccumulate, &once);
  auto doubled = [](std::vector<float> v) {
    for (float& f : v) f *= 2.0f;
    return v;
  };
  expect_close(twice.dx, doubled(once.dx), 1e-6, 1e-6, "dx");
  expect_close(twice.dw, doubled(once.dw), 1e-6, 1e-6, "dw");
  expect_close(twice.dbias, doubled(once.dbias), 1e-6, 1e-6, "dbias");
}

}  // namespace
}  // namespace qforge::kernels
