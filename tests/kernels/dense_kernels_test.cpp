// The dense kernels (conv, gemm/matmul, norms, pools, softmax) against their naive references
// on awkward shapes, plus the determinism contract: the same bits for any thread count and for
// an image whatever the batch it runs in.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/conv.h"
#include "kernels/fake_quant.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/pool.h"
#include "kernels/reference/dense_reference.h"
#include "kernels/reference/norm_softmax_reference.h"
#include "kernels/softmax.h"
#include "runtime/threads.h"
#include "tests/support/float_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::expect_close;
using testing::expect_same_bits;
using testing::random_values;

using testing::ThreadCount;

std::vector<std::byte> workspace_of(size_t bytes) {
  return std::vector<std::byte>(bytes + 64);
}

// ---------------------------------------------------------------------------------------------
// Convolution

struct ConvCase {
  const char* name;
  int64_t batch, in_c, in_h, in_w, out_c;
  int64_t kh, kw, sh, sw, dh, dw;
  int64_t pt, pl, pb, pr;
  int64_t group;
  bool bias;
};

ConvGeometry geometry_of(const ConvCase& c) {
  ConvGeometry g;
  g.batch = c.batch;
  g.in_channels = c.in_c;
  g.in_h = c.in_h;
  g.in_w = c.in_w;
  g.out_channels = c.out_c;
  g.kernel_h = c.kh;
  g.kernel_w = c.kw;
  g.stride_h = c.sh;
  g.stride_w = c.sw;
  g.dilation_h = c.dh;
  g.dilation_w = c.dw;
  g.pad_top = c.pt;
  g.pad_left = c.pl;
  g.out_h = (c.in_h + c.pt + c.pb - ((c.kh - 1) * c.dh + 1)) / c.sh + 1;
  g.out_w = (c.in_w + c.pl + c.pr - ((c.kw - 1) * c.dw + 1)) / c.sw + 1;
  g.group = c.group;
  return g;
}

struct ConvData {
  std::vector<float> x, w, b;
};

ConvData conv_data(const ConvGeometry& g, bool bias, uint32_t seed) {
  ConvData d;
  d.x = random_values(static_cast<size_t>(g.batch * g.in_channels * g.in_h * g.in_w), seed);
  d.w = random_values(
      static_cast<size_t>(g.out_channels * (g.in_channels / g.group) * g.kernel_h * g.kernel_w),
      seed + 1);
  if (bias) d.b = random_values(static_cast<size_t>(g.out_channels), seed + 2);
  return d;
}

std::vector<float> run_conv(const ConvGeometry& g, const ConvData& d, int threads) {
  const ConvPlan plan = plan_conv(g, threads);
  std::vector<std::byte> ws = workspace_of(conv_workspace_bytes(plan));
  std::vector<float> y(static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w), NAN);
  conv2d(plan, d.x.data(), d.w.data(), d.b.empty() ? nullptr : d.b.data(), y.data(), ws.data());
  return y;
}

const ConvCase kConvCases[] = {
    // name, batch, in_c, in_h, in_w, out_c, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, group, bias
    {"pointwise", 1, 13, 7, 7, 17, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, true},
    {"pointwise_batch3_nobias", 3, 7, 13, 3, 31, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, false},
    {"pointwise_stride2", 3, 13, 13, 17, 7, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1, true},
    {"pointwise_padded", 1, 3, 5, 7, 7, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, true},
    {"k3_pad1", 1, 3, 17, 13, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true},
    {"k3_stride2_asymmetric_pads", 3, 7, 13, 17, 13, 3, 3, 2, 2, 1, 1, 0, 1, 2, 1, 1, true},
    {"k3_dilation2", 1, 5, 17, 17, 3, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2, 1, false},
    {"k1x3", 3, 3, 13, 31, 7, 1, 3, 1, 1, 1, 1, 0, 1, 0, 1, 1, true},
    {"k5x2_stride2x1", 1, 3, 13, 31, 7, 5, 2, 2, 1, 1, 1, 2, 0, 1, 1, 1, true},
    {"grouped3", 3, 6, 13, 13, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 3, true},
    {"grouped_stride2_dilation2", 1, 12, 17, 13, 8, 3, 3, 2, 2, 2, 2, 1, 2, 2, 1, 4, false},
    {"depthwise", 1, 13, 17, 17, 13, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 13, true},
    {"depthwise_stride2", 3, 17, 13, 31, 17, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 17, true},
    {"depthwise_k5_stride2_dilation2", 3, 7, 31, 13, 7, 5, 5, 2, 2, 2, 2, 4, 3, 2, 1, 7, false},
    {"depthwise_multiplier2", 1, 3, 13, 13, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 3, true},
    {"depthwise_stride3", 1, 5, 13, 17, 5, 3, 3, 3, 3, 1, 1, 0, 0, 0, 0, 5, true},
    {"depthwise_k7_pad3", 1, 5, 17, 23, 5, 7, 7, 1, 1, 1, 1, 3, 3, 3, 3, 5, true},
    {"depthwise_k3x5_stride1x2", 3, 4, 13, 17, 4, 3, 5, 1, 2, 1, 1, 1, 2, 1, 2, 4, false},
    {"depthwise_k3_dilation3_no_pad", 1, 3, 17, 19, 3, 3, 3, 1, 1, 3, 3, 0, 0, 0, 0, 3, true},
    // MobileNetV3's last blocks: 7×7 and 2×2 outputs, 5×5 kernels, stride 1 and 2.
    {"depthwise_k5_7x7", 2, 9, 7, 7, 9, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 9, true},
    {"depthwise_k5_stride2_to_7x7", 2, 9, 14, 14, 9, 5, 5, 2, 2, 1, 1, 2, 2, 2, 2, 9, false},
    {"depthwise_k5_2x2", 16, 120, 2, 2, 120, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 120, false},
    // Planes up to 16 outputs wide run 16 channels per vector: whole and partial channel
    // blocks, strides 1 and 2, 3×3 to 7×7, asymmetric padding, a 16-wide output.
    {"depthwise_k5_7x7_channel_blocks", 2, 37, 7, 7, 37, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 37, true},
    {"depthwise_k3_stride2_to_14x14", 1, 33, 28, 27, 33, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 33, false},
    {"depthwise_k7_7x7_blocks", 1, 20, 7, 7, 20, 7, 7, 1, 1, 1, 1, 3, 3, 3, 3, 20, true},
    {"depthwise_k3_16_wide", 3, 17, 9, 16, 17, 3, 3, 1, 1, 1, 1, 0, 1, 2, 1, 17, true},
    {"depthwise_k7_stride2_to_4x4", 1, 16, 8, 8, 16, 7, 7, 2, 2, 1, 1, 3, 3, 3, 3, 16, true},
    {"conv1d", 3, 13, 1, 31, 7, 1, 5, 1, 2, 1, 1, 0, 2, 0, 1, 1, true},
    {"single_input_channel", 3, 1, 13, 13, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true},
    {"kernel_covers_padded_input", 1, 3, 2, 2, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true},
    // Large enough for several pixel tiles and output-channel blocks per image.
    {"stem_tiles_and_channel_blocks", 1, 3, 100, 100, 260, 7, 7, 2, 2, 1, 1, 3, 3, 3, 3, 1, true},
    {"k3_tiles", 3, 64, 40, 40, 17, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true},
    // Winograd: odd output sizes, asymmetric or no padding, several blocks of tiles.
    {"winograd_odd", 1, 17, 25, 31, 19, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true},
    {"winograd_asymmetric_pads", 3, 16, 27, 26, 16, 3, 3, 1, 1, 1, 1, 0, 2, 1, 0, 1, false},
    {"winograd_unpadded", 1, 16, 13, 15, 17, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0, 1, true},
    {"winograd_blocks", 1, 16, 68, 66, 17, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true},
    {"winograd_deep", 1, 128, 30, 29, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true},
    {"pointwise_grouped_tiles", 1, 256, 33, 33, 64, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, true},
};

const ConvCase& conv_case(std::string_view name) {
  for (const ConvCase& c : kConvCases) {
    if (name == c.name) return c;
  }
  throw std::runtime_error("no conv case " + std::string(name));
}

TEST(DenseConv, MatchesReferenceOnAwkwardShapes) {
  ThreadCount threads(2);
  uint32_t seed = 1;
  for (const ConvCase& c : kConvCases) {
    const ConvGeometry g = geometry_of(c);
    const ConvData d = conv_data(g, c.bias, seed += 3);
    std::vector<float> expected(static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w));
    reference::conv2d(g, d.x.data(), d.w.data(), d.b.empty() ? nullptr : d.b.data(),
                      expected.data());
    const double k = static_cast<double>(g.in_channels / g.group * g.kernel_h * g.kernel_w);
    expect_close(run_conv(g, d, 2), expected, 1e-5 * std::sqrt(k), 1e-4, c.name);
  }
}

// Every depthwise output is PyTorch's arithmetic for it (measured on Debian's PyTorch 1.13, one
// and two threads, 2×2 to 112×112 planes): one fused multiply-add chain from the bias (zero
// without one) over the valid taps in (kh, kw) order, the taps over padding adding w·0, which
// leaves the sum as it is. Bit for bit, on every depthwise case above: whole vector blocks, the
// short blocks at a plane's end, the row paths of other shapes. (A build for a CPU without
// fused multiply-add rounds each product: then that is the chain.)
float multiply_add(float a, float b, float c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return c + a * b;
#endif
}

TEST(DenseConv, DepthwiseIsOneFusedMultiplyAddChainPerOutput) {
  ThreadCount threads(2);
  uint32_t seed = 5;
  int cases = 0;
  for (const ConvCase& c : kConvCases) {
    if (c.group == 1 || c.in_c != c.group) continue;
    ++cases;
    const ConvGeometry g = geometry_of(c);
    const ConvData d = conv_data(g, c.bias, seed += 3);
    const std::vector<float> y = run_conv(g, d, 2);
    const int64_t multiplier = g.out_channels / g.group;
    int64_t differing = 0;
    size_t i = 0;
    for (int64_t n = 0; n < g.batch; ++n) {
      for (int64_t oc = 0; oc < g.out_channels; ++oc) {
        const float* x = d.x.data() + (n * g.in_channels + oc / multiplier) * g.in_h * g.in_w;
        const float* w = d.w.data() + oc * g.kernel_h * g.kernel_w;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          for (int64_t ow = 0; ow < g.out_w; ++ow, ++i) {
            float acc = d.b.empty() ? 0.0f : d.b[static_cast<size_t>(oc)];
            for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
              const int64_t ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
              if (ih < 0 || ih >= g.in_h) continue;
              for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
                const int64_t iw = ow * g.stride_w - g.pad_left + kw * g.dilation_w;
                if (iw < 0 || iw >= g.in_w) continue;
                acc = multiply_add(w[kh * g.kernel_w + kw], x[ih * g.in_w + iw], acc);
              }
            }
            differing += y[i] != acc;
          }
        }
      }
    }
    EXPECT_EQ(differing, 0) << c.name << ": outputs of " << y.size();
  }
  EXPECT_GE(cases, 10);
}

TEST(DenseConv, PicksTheAlgorithmFromTheGeometry) {
  auto algorithm = [](const char* name, ConvGemm gemm = ConvGemm::kAuto) {
    return plan_conv(geometry_of(conv_case(name)), 2, {.gemm = gemm}).algorithm;
  };
  // Shallow ungrouped convolutions run directly where the build has that path (AVX-512).
  const auto shallow_or = [](ConvAlgorithm otherwise) {
    return shallow_conv_available() ? ConvAlgorithm::kShallow : otherwise;
  };
  EXPECT_EQ(algorithm("pointwise"), shallow_or(ConvAlgorithm::kDirectGemm));
  EXPECT_EQ(algorithm("pointwise", ConvGemm::kBlas), ConvAlgorithm::kDirectGemm);
  EXPECT_EQ(algorithm("pointwise_grouped_tiles"), ConvAlgorithm::kDirectGemm);
  EXPECT_EQ(algorithm("pointwise_stride2"), shallow_or(ConvAlgorithm::kIm2colGemm));
  EXPECT_EQ(algorithm("pointwise_stride2", ConvGemm::kBlas), ConvAlgorithm::kIm2colGemm);
  EXPECT_EQ(algorithm("pointwise_padded"), shallow_or(ConvAlgorithm::kIm2colGemm));
  EXPECT_EQ(algorithm("k3_pad1"), shallow_or(ConvAlgorithm::kIm2colGemm));
  EXPECT_EQ(algorithm("k3_pad1", ConvGemm::kBlas), ConvAlgorithm::kIm2colGemm);
  EXPECT_EQ(algorithm("depthwise"), ConvAlgorithm::kDepthwise);
  EXPECT_EQ(algorithm("depthwise_multiplier2"), ConvAlgorithm::kDepthwise);
  EXPECT_EQ(algorithm("single_input_channel"), shallow_or(ConvAlgorithm::kIm2colGemm));
  EXPECT_EQ(algorithm("k3_tiles"), ConvAlgorithm::kWinograd);
  EXPECT_EQ(algorithm("winograd_odd"), ConvAlgorithm::kWinograd);
  EXPECT_EQ(algorithm("winograd_asymmetric_pads"), ConvAlgorithm::kWinograd);
  EXPECT_EQ(algorithm("winograd_unpadded"), ConvAlgorithm::kWinograd);
  EXPECT_EQ(algorithm("grouped3"), ConvAlgorithm::kIm2colGemm);
  EXPECT_EQ(algorithm("k3_dilation2"), ConvAlgorithm::kIm2colGemm);
  EXPECT_GT(plan_conv(geometry_of(conv_case("winograd_blocks")), 2).pixel_tiles, 1);
  EXPECT_EQ(algorithm("stem_tiles_and_channel_blocks"), shallow_or(ConvAlgorithm::kIm2colGemm));
  const ConvPlan stem = plan_conv(geometry_of(conv_case("stem_tiles_and_channel_blocks")), 2,
                                  {.gemm = ConvGemm::kBlas});
  EXPECT_GT(stem.pixel_tiles, 1);
  EXPECT_GT(stem.channel_blocks, 1);
  EXPECT_EQ(algorithm("k5x2_stride2x1"), ConvAlgorithm::kIm2colGemm);
  // The direct GEMM and the shallow path read a 1×1 stride-1 input in place: no workspace.
  const ConvGeometry pointwise = geometry_of(conv_case("pointwise"));
  EXPECT_EQ(conv_workspace_bytes(plan_conv(pointwise, 4, {.gemm = ConvGemm::kBlas})), 0u);
  if (shallow_conv_available()) {
    EXPECT_EQ(conv_workspace_bytes(plan_conv(pointwise, 4, {.gemm = ConvGemm::kShallow})), 0u);
  }
}

TEST(DenseConv, SameBitsForAnyThreadCount) {
  for (const char* name :
       {"k3_stride2_asymmetric_pads", "grouped_stride2_dilation2", "depthwise_k5_stride2_dilation2",
        "depthwise_k7_pad3", "depthwise_k5_7x7_channel_blocks", "stem_tiles_and_channel_blocks",
        "k3_tiles", "pointwise_grouped_tiles", "winograd_blocks", "winograd_asymmetric_pads"}) {
    const ConvCase& c = conv_case(name);
    const ConvGeometry g = geometry_of(c);
    const ConvData d = conv_data(g, c.bias, 99);
    std::vector<float> one;
    {
      ThreadCount threads(1);
      one = run_conv(g, d, 1);
    }
    for (int n : {2, 3}) {
      ThreadCount threads(n);
      // Plans made for more or fewer threads than run must give the same bits too.
      expect_same_bits(run_conv(g, d, n).data(), one.data(), one.size(),
                       std::string(c.name) + " threads " + std::to_string(n));
      expect_same_bits(run_conv(g, d, 1).data(), one.data(), one.size(),
                       std::string(c.name) + " plan for 1 thread, run on " + std::to_string(n));
    }
  }
}

TEST(DenseConv, ImageResultDoesNotDependOnBatch) {
  ThreadCount threads(2);
  for (const char* name :
       {"pointwise_batch3_nobias", "k3_stride2_asymmetric_pads", "depthwise_k5_stride2_dilation2",
        "depthwise_k7_pad3", "k3_tiles", "winograd_asymmetric_pads"}) {
    const ConvCase& c = conv_case(name);
    ConvGeometry g = geometry_of(c);
    g.batch = 3;
    const ConvData d = conv_data(g, c.bias, 7);
    const std::vector<float> batched = run_conv(g, d, 2);
    // The last image alone, as a batch of 1.
    ConvGeometry single = g;
    single.batch = 1;
    ConvData alone = d;
    const size_t in_image = static_cast<size_t>(g.in_channels * g.in_h * g.in_w);
    const size_t out_image = static_cast<size_t>(g.out_channels * g.out_h * g.out_w);
    alone.x.assign(d.x.begin() + 2 * in_image, d.x.end());
    const std::vector<float> y = run_conv(single, alone, 2);
    expect_same_bits(y.data(), batched.data() + 2 * out_image, out_image, c.name);
  }
}

TEST(DenseConv, WinogradRoundingStaysNearDirectConvolution) {
  // qforge's equivalence checks run at 1e-5; Winograd must not add more than a few ulps of
  // rounding per layer (F(4×4, 3×3) would fail this bound, F(2×2, 3×3) passes it).
  ThreadCount threads(2);
  ConvGeometry g;
  g.in_channels = g.out_channels = 64;
  g.in_h = g.in_w = g.out_h = g.out_w = 30;
  g.kernel_h = g.kernel_w = 3;
  g.pad_top = g.pad_left = 1;
  ASSERT_EQ(plan_conv(g, 2).algorithm, ConvAlgorithm::kWinograd);
  ConvData d = conv_data(g, true, 31);
  for (float& v : d.x) v = std::max(v, 0.0f);  // activations after a ReLU
  std::vector<float> expected(static_cast<size_t>(g.out_channels * g.out_h * g.out_w));
  reference::conv2d(g, d.x.data(), d.w.data(), d.b.data(), expected.data());
  const std::vector<float> y = run_conv(g, d, 2);
  double scale = 0.0, worst = 0.0;
  for (size_t i = 0; i < y.size(); ++i) {
    scale = std::max(scale, std::abs(double(expected[i])));
    worst = std::max(worst, std::abs(double(y[i]) - expected[i]));
  }
  EXPECT_LT(worst / scale, 2e-6);
}

TEST(DenseConv, PreparedWeightsGiveTheSameBits) {
  ThreadCount threads(2);
  for (const char* name : {"winograd_odd", "winograd_blocks", "k3_pad1", "depthwise"}) {
    const ConvCase& c = conv_case(name);
    const ConvGeometry g = geometry_of(c);
    const ConvData d = conv_data(g, c.bias, 23);
    const ConvPlan plan = plan_conv(g, 2);
    std::vector<float> prepared(conv_prepared_weight_floats(plan));
    prepare_conv_weights(plan, d.w.data(), prepared.data());
    std::vector<std::byte> ws = workspace_of(conv_workspace_bytes(plan, ConvWeightForm::kPrepared));
    std::vector<float> y(static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w), NAN);
    conv2d(plan, d.x.data(), d.w.data(), d.b.empty() ? nullptr : d.b.data(), y.data(), ws.data(),
           {}, prepared.empty() ? nullptr : prepared.data());
    const std::vector<float> raw = run_conv(g, d, 2);
    expect_same_bits(y.data(), raw.data(), raw.size(), name);
  }
  EXPECT_GT(conv_prepared_weight_floats(plan_conv(geometry_of(conv_case("winograd_odd")), 1)), 0u);
  // im2col on OpenBLAS and the shallow path read the filters as they are.
  const ConvGeometry k3 = geometry_of(conv_case("k3_pad1"));
  EXPECT_EQ(conv_prepared_weight_floats(plan_conv(k3, 1, {.gemm = ConvGemm::kBlas})), 0u);
  if (shallow_conv_available()) {
    EXPECT_EQ(conv_prepared_weight_floats(plan_conv(k3, 1, {.gemm = ConvGemm::kShallow})), 0u);
  }
}

TEST(DenseConv, EpilogueMatchesSeparatePasses) {
  ThreadCount threads(2);
  for (const char* name : {"pointwise_batch3_nobias", "k3_stride2_asymmetric_pads", "winograd_odd",
                           "depthwise_stride2", "depthwise_k7_pad3",
                           "depthwise_k5_7x7_channel_blocks", "stem_tiles_and_channel_blocks"}) {
    const ConvCase& c = conv_case(name);
    const ConvGeometry g = geometry_of(c);
    const ConvData d = conv_data(g, c.bias, 17);
    const size_t out = static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w);
    const size_t plane = static_cast<size_t>(g.out_h * g.out_w);
    const auto scale = random_values(static_cast<size_t>(g.out_channels), 18, 0.5f, 2.0f);
    const auto shift = random_values(static_cast<size_t>(g.out_channels), 19);
    const auto residual = random_values(out, 20);
    std::vector<float> expected(out);
    reference::conv2d(g, d.x.data(), d.w.data(), d.b.empty() ? nullptr : d.b.data(),
                      expected.data());
    for (size_t i = 0; i < out; ++i) {
      const size_t ch = i / plane % static_cast<size_t>(g.out_channels);
      expected[i] = std::clamp(expected[i] * scale[ch] + shift[ch] + residual[i], 0.0f, 6.0f);
    }
    ConvEpilogue e;
    e.scale = scale.data();
    e.shift = shift.data();
    e.residual = residual.data();
    e.clamp_min = 0.0f;
    e.clamp_max = 6.0f;
    const ConvPlan plan = plan_conv(g, 2);
    std::vector<std::byte> ws = workspace_of(conv_workspace_bytes(plan));
    std::vector<float> y(out, NAN);
    conv2d(plan, d.x.data(), d.w.data(), d.b.empty() ? nullptr : d.b.data(), y.data(), ws.data(),
           e);
    const double k = static_cast<double>(g.in_channels / g.group * g.kernel_h * g.kernel_w);
    expect_close(y, expected, 3e-5 * std::sqrt(k), 1e-4, std::string(name) + " epilogue");
  }
}

// The epilogue's fake quant is fake_quant_linear of the output the rest of the epilogue gives,
// bit for bit, on every algorithm (each case on each GEMM a plan may take): signed and unsigned
// grids with a zero point, a range that saturates, after a clamp or an activation.
TEST(DenseConv, EpilogueFakeQuantIsTheSeparatePassBitForBit) {
  ThreadCount threads(2);
  int checked = 0;
  for (const ConvCase& c : kConvCases) {
    const ConvGeometry g = geometry_of(c);
    const ConvData d = conv_data(g, c.bias, 23);
    const size_t out = static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w);
    const auto scale = random_values(static_cast<size_t>(g.out_channels), 24, 0.5f, 2.0f);
    const auto shift = random_values(static_cast<size_t>(g.out_channels), 25);
    for (ConvGemm gemm :
         {ConvGemm::kAuto, ConvGemm::kPacked, ConvGemm::kBlas, ConvGemm::kShallow}) {
      const ConvPlan plan = plan_conv(g, 2, {.gemm = gemm});
      std::vector<std::byte> ws = workspace_of(conv_workspace_bytes(plan));
      for (int variant = 0; variant < 2; ++variant) {
        ConvEpilogue e;
        if (variant == 0) {
          e.scale = scale.data();
          e.shift = shift.data();
          e.clamp_min = 0.0f;
        } else {
          e.activation = UnaryOp::kSilu;
        }
        std::vector<float> want(out, NAN);
        conv2d(plan, d.x.data(), d.w.data(), d.b.empty() ? nullptr : d.b.data(), want.data(),
               ws.data(), e);
        float amax = 0.0f;
        for (float v : want) amax = std::max(amax, std::abs(v));
        // 110 steps over the range below the zero point and fewer above it: both ends saturate.
        TensorGrid grid;
        grid.dtype = variant == 0 ? DType::kUInt8 : DType::kInt8;
        grid.zero_point = variant == 0 ? 7 : -5;
        grid.scale = amax / 110.0f;
        const float scales[] = {grid.scale};
        const int32_t zero_points[] = {grid.zero_point};
        Tensor t = Tensor::from_vector<float>({static_cast<int64_t>(out)}, want);
        fake_quant_linear(t, {.scales = scales, .zero_points = zero_points, .dtype = grid.dtype},
                          t);
        e.quant = grid;
        std::vector<float> y(out, NAN);
        conv2d(plan, d.x.data(), d.w.data(), d.b.empty() ? nullptr : d.b.data(), y.data(),
               ws.data(), e);
        expect_same_bits(y.data(), t.data<float>(), out,
                         std::string(c.name) + " algorithm " +
                             std::to_string(static_cast<int>(plan.algorithm)) + " variant " +
                             std::to_string(variant));
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, static_cast<int>(std::size(kConvCases)) * 8);
}

// ---------------------------------------------------------------------------------------------
// Gemm and MatMul

std::vector<float> run_gemm(const GemmDims& d, const std::vector<float>& a,
                            const std::vector<float>& b, const std::vector<float>& bias) {
  std::vector<std::byte> ws = workspace_of(gemm_workspace_bytes(d));
  std::vector<float> y(static_cast<size_t>(d.m * d.n), NAN);
  gemm(d, a.data(), b.data(), bias.empty() ? nullptr : bias.data(), y.data(), ws.data());
  return y;
}

size_t bias_count(const GemmDims& d) {
  switch (d.bias) {
    case GemmBias::kNone:
      return 0;
    case GemmBias::kScalar:
      return 1;
    case GemmBias::kRow:
      return static_cast<size_t>(d.n);
    case GemmBias::kColumn:
      return static_cast<size_t>(d.m);
    case GemmBias::kFull:
      return static_cast<size_t>(d.m * d.n);
  }
  return 0;
}

TEST(DenseGemm, MatchesReferenceForTransposesAndBiases) {
  ThreadCount threads(2);
  uint32_t seed = 10;
  for (int64_t m : {1, 3, 17, 64, 65, 131}) {
    for (int64_t n : {1, 7, 31}) {
      for (int64_t k : {1, 13, 33}) {
        for (int t = 0; t < 4; ++t) {
          for (GemmBias bias : {GemmBias::kNone, GemmBias::kScalar, GemmBias::kRow,
                                GemmBias::kColumn, GemmBias::kFull}) {
            GemmDims d;
            d.m = m;
            d.n = n;
            d.k = k;
            d.trans_a = t & 1 ? Transpose::kYes : Transpose::kNo;
            d.trans_b = t & 2 ? Transpose::kYes : Transpose::kNo;
            d.alpha = 0.75f;
            d.beta = -1.5f;
            d.bias = bias;
            const auto a = random_values(static_cast<size_t>(m * k), ++seed);
            const auto b = random_values(static_cast<size_t>(k * n), ++seed);
            const auto c = random_values(bias_count(d), ++seed);
            std::vector<float> expected(static_cast<size_t>(m * n));
            reference::gemm(d, a.data(), b.data(), c.data(), expected.data());
            expect_close(run_gemm(d, a, b, c), expected, 1e-5 * std::sqrt(double(k)) + 1e-6, 1e-4,
                         "gemm m=" + std::to_string(m) + " n=" + std::to_string(n) +
                             " k=" + std::to_string(k) + " trans=" + std::to_string(t) +
                             " bias=" + std::to_string(static_cast<int>(bias)));
          }
        }
      }
    }
  }
}

TEST(DenseGemm, WideOutputsSplitIntoColumnBlocks) {
  ThreadCount threads(2);
  uint32_t seed = 900;
  for (int64_t m : {1, 70}) {
    for (int t = 0; t < 4; ++t) {
      for (GemmBias bias : {GemmBias::kNone, GemmBias::kRow, GemmBias::kColumn, GemmBias::kFull}) {
        GemmDims d;
        d.m = m;
        d.n = 1100;
        d.k = 29;
        d.trans_a = t & 1 ? Transpose::kYes : Transpose::kNo;
        d.trans_b = t & 2 ? Transpose::kYes : Transpose::kNo;
        d.beta = 0.5f;
        d.bias = bias;
        const auto a = random_values(static_cast<size_t>(d.m * d.k), ++seed);
        const auto b = random_values(static_cast<size_t>(d.k * d.n), ++seed);
        const auto c = random_values(bias_count(d), ++seed);
        std::vector<float> expected(static_cast<size_t>(d.m * d.n));
        reference::gemm(d, a.data(), b.data(), c.data(), expected.data());
        expect_close(run_gemm(d, a, b, c), expected, 1e-5 * std::sqrt(double(d.k)), 1e-4,
                     "wide gemm m=" + std::to_string(m) + " trans=" + std::to_string(t) +
                         " bias=" + std::to_string(static_cast<int>(bias)));
      }
    }
  }
}

TEST(DenseGemm, RowBitsDoNotDependOnRowCountOrThreads) {
  // Rows are the batch of a Linear layer: a row's result must not change with the batch size.
  const int64_t n = 700, k = 300, total = 150;  // n > 512: two column blocks
  const auto b = random_values(static_cast<size_t>(k * n), 5);
  const auto bias = random_values(static_cast<size_t>(n), 6);
  const auto a_all = random_values(static_cast<size_t>(total * k), 7);
  for (Transpose ta : {Transpose::kNo, Transpose::kYes}) {
    auto run_rows = [&](int64_t m, int threads) {
      ThreadCount scope(threads);
      GemmDims d;
      d.m = m;
      d.n = n;
      d.k = k;
      d.trans_a = ta;
      d.bias = GemmBias::kRow;
      std::vector<float> a(static_cast<size_t>(m * k));
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t p = 0; p < k; ++p) {
          a[static_cast<size_t>(ta == Transpose::kYes ? p * m + i : i * k + p)] =
              a_all[static_cast<size_t>(i * k + p)];
        }
      }
      return run_gemm(d, a, b, bias);
    };
    const std::vector<float> full = run_rows(total, 1);
    for (int64_t m : {1, 3, 63, 64, 65, 130}) {
      for (int threads : {1, 2}) {
        const std::vector<float> part = run_rows(m, threads);
        expect_same_bits(part.data(), full.data(), part.size(),
                         "m=" + std::to_string(m) + " threads=" + std::to_string(threads) +
                             " transA=" + std::to_string(ta == Transpose::kYes));
      }
    }
  }
}

struct MatMulCase {
  Shape a, b, out;
};

TEST(DenseMatMul, MatchesReferenceWithBroadcastAndVectors) {
  ThreadCount threads(2);
  const MatMulCase cases[] = {
      {{3}, {3}, {}},
      {{3}, {3, 5}, {5}},
      {{4, 3}, {3}, {4}},
      {{7}, {2, 7, 3}, {2, 3}},
      {{2, 3, 7}, {7}, {2, 3}},
      {{13, 17}, {17, 31}, {13, 31}},
      {{2, 3, 4}, {4, 5}, {2, 3, 5}},
      {{3, 67, 31}, {31, 17}, {3, 67, 17}},
      {{1, 5, 13}, {1, 13, 7}, {1, 5, 7}},
      {{2, 3, 4}, {2, 4, 5}, {2, 3, 5}},
      {{4, 5}, {3, 5, 2}, {3, 4, 2}},
      {{2, 1, 3, 4}, {3, 4, 5}, {2, 3, 3, 5}},
      {{3, 1, 7, 13}, {1, 5, 13, 17}, {3, 5, 7, 17}},
      {{1, 3, 0, 4}, {4, 2}, {1, 3, 0, 2}},
      {{3, 0}, {0, 4}, {3, 4}},
  };
  uint32_t seed = 40;
  for (const MatMulCase& c : cases) {
    const std::string what = "matmul " + shape_str(c.a) + " x " + shape_str(c.b);
    auto dims = matmul_dims(c.a, c.b);
    ASSERT_TRUE(dims.has_value()) << what;
    EXPECT_EQ(dims->out_shape, c.out) << what;
    const auto a = random_values(static_cast<size_t>(shape_numel(c.a)), ++seed);
    const auto b = random_values(static_cast<size_t>(shape_numel(c.b)), ++seed);
    std::vector<float> expected;
    EXPECT_EQ(reference::matmul(c.a, a.data(), c.b, b.data(), expected), c.out) << what;
    std::vector<std::byte> ws = workspace_of(matmul_workspace_bytes(*dims));
    std::vector<float> y(static_cast<size_t>(shape_numel(dims->out_shape)), NAN);
    matmul(*dims, a.data(), b.data(), y.data(), ws.data());
    expect_close(y, expected, 1e-5 * std::sqrt(double(dims->k)) + 1e-6, 1e-4, what);
  }
}

TEST(DenseMatMul, RejectsShapesThatDoNotMultiply) {
  EXPECT_FALSE(matmul_dims(Shape{2, 3}, Shape{4, 5}).has_value());
  EXPECT_FALSE(matmul_dims(Shape{2, 3, 4}, Shape{3, 4, 5}).has_value());
  EXPECT_FALSE(matmul_dims(Shape{3}, Shape{4}).has_value());
  EXPECT_FALSE(matmul_dims(Shape{}, Shape{4}).has_value());
}

TEST(DenseMatMul, FoldedRowsDoNotDependOnBatch) {
  ThreadCount threads(2);
  const Shape w_shape{96, 40};
  const auto w = random_values(static_cast<size_t>(shape_numel(w_shape)), 3);
  const auto a = random_values(3 * 21 * 96, 4);
  auto run = [&](int64_t batch) {
    const Shape a_shape{batch, 21, 96};
    auto dims = matmul_dims(a_shape, w_shape);
    EXPECT_TRUE(dims->shared_b);
    std::vector<std::byte> ws = workspace_of(matmul_workspace_bytes(*dims));
    std::vector<float> y(static_cast<size_t>(batch * 21 * 40));
    matmul(*dims, a.data(), w.data(), y.data(), ws.data());
    return y;
  };
  const auto three = run(3);
  const auto one = run(1);
  expect_same_bits(one.data(), three.data(), one.size(), "first image of 3 vs alone");
}

// ---------------------------------------------------------------------------------------------
// BatchNormalization, LayerNormalization

TEST(DenseBatchNorm, FoldedAffineMatchesReference) {
  ThreadCount threads(2);
  for (auto [batch, channels, inner] :
       {std::tuple<int64_t, int64_t, int64_t>{3, 13, 35}, {1, 17, 1}, {2, 7, 169}}) {
    const auto x = random_values(static_cast<size_t>(batch * channels * inner), 1, -3, 3);
    const auto gamma = random_values(static_cast<size_t>(channels), 2);
    const auto beta = random_values(static_cast<size_t>(channels), 3);
    const auto mean = random_values(static_cast<size_t>(channels), 4);
    const auto var = random_values(static_cast<size_t>(channels), 5, 0.01f, 2.0f);
    std::vector<float> scale(static_cast<size_t>(channels)), shift(scale.size());
    batch_norm_fold({.gamma = gamma.data(),
                     .beta = beta.data(),
                     .mean = mean.data(),
                     .var = var.data(),
                     .epsilon = 1e-3f,
                     .channels = channels},
                    nullptr, FoldPrecision::kDouble,
                    {.scale = scale.data(), .shift = shift.data()});
    std::vector<float> y(x.size()), expected(x.size());
    channel_affine(x.data(), scale.data(), shift.data(), batch, channels, inner, y.data());
    reference::batch_norm(x.data(), batch, channels, inner, gamma.data(), beta.data(), mean.data(),
                          var.data(), 1e-3f, expected.data());
    expect_close(y, expected, 1e-5, 1e-4, "batch norm " + std::to_string(channels));
  }
}

TEST(DenseLayerNorm, MatchesReferenceWithStatistics) {
  ThreadCount threads(2);
  for (auto [rows, size] :
       {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {31, 13}, {17, 768}, {3, 1000}}) {
    for (bool with_bias : {true, false}) {
      const auto x = random_values(static_cast<size_t>(rows * size), 8, -2, 5);
      const auto scale = random_values(static_cast<size_t>(size), 9);
      const auto bias = random_values(static_cast<size_t>(size), 10);
      LayerNormDims d{rows, size, 1e-5f};
      std::vector<float> y(x.size()), mean(static_cast<size_t>(rows)), inv(mean.size());
      std::vector<float> ey(x.size()), emean(mean.size()), einv(mean.size());
      layer_norm(d, x.data(), scale.data(), with_bias ? bias.data() : nullptr, y.data(),
                 mean.data(), inv.data());
      reference::layer_norm(x.data(), rows, size, scale.data(), with_bias ? bias.data() : nullptr,
                            1e-5f, ey.data(), emean.data(), einv.data());
      const std::string what = "layer norm " + std::to_string(rows) + "x" + std::to_string(size);
      expect_close(y, ey, 1e-4, 1e-4, what);
      expect_close(mean, emean, 1e-5, 1e-4, what + " mean");
      expect_close(inv, einv, 1e-5, 1e-4, what + " inv_std_dev");
    }
  }
}

// RMSNorm against the double reference, and bit-identical at 1 and 2 threads.
TEST(DenseRmsNorm, MatchesReferenceAtAnyThreadCount) {
  for (auto [rows, size] :
       {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {31, 13}, {17, 768}, {3, 1000}, {130, 33}}) {
    const auto x = random_values(static_cast<size_t>(rows * size), 11, -2, 5);
    const auto scale = random_values(static_cast<size_t>(size), 12);
    const LayerNormDims d{rows, size, 1e-6f};
    std::vector<float> y[2];
    for (int t = 1; t <= 2; ++t) {
      ThreadCount threads(t);
      y[t - 1].resize(x.size());
      rms_norm(d, x.data(), scale.data(), y[t - 1].data());
    }
    const std::vector<double> xd(x.begin(), x.end()), sd(scale.begin(), scale.end());
    std::vector<double> want(x.size());
    reference::rms_norm(d, xd.data(), sd.data(), want.data());
    const std::vector<float> wantf(want.begin(), want.end());
    const std::string what = "rms norm " + std::to_string(rows) + "x" + std::to_string(size);
    expect_close(y[1], wantf, 1e-5, 1e-5, what);
    EXPECT_EQ(y[0], y[1]) << what;
  }
}

TEST(DenseLaneSum, MatchesDoubleSumForEveryLength) {
  for (int64_t n = 0; n < 70; ++n) {
    const auto x = random_values(static_cast<size_t>(n), static_cast<uint32_t>(n) + 1);
    double expected = 0.0;
    for (float v : x) expected += v;
    EXPECT_NEAR(lane_sum(x.data(), n), expected, 1e-5) << n;
  }
}

// ---------------------------------------------------------------------------------------------
// Softmax

TEST(DenseSoftmax, MatchesReferenceAlongAnyAxis) {
  ThreadCount threads(2);
  const SoftmaxDims cases[] = {{1, 1, 1},  {3, 17, 1},  {7, 1000, 1}, {2, 3, 1},
                               {3, 7, 13}, {1, 5, 100}, {2, 1, 7},    {3, 31, 67}};
  uint32_t seed = 70;
  for (const SoftmaxDims& d : cases) {
    const auto x =
        random_values(static_cast<size_t>(d.outer * d.axis_size * d.inner), ++seed, -20, 20);
    std::vector<float> y(x.size()), expected(x.size());
    softmax(d, x.data(), y.data());
    reference::softmax(d, x.data(), expected.data());
    expect_close(y, expected, 1e-7, 1e-5,
                 "softmax " + std::to_string(d.outer) + "x" + std::to_string(d.axis_size) + "x" +
                     std::to_string(d.inner));
  }
}

TEST(DenseSoftmax, HandlesHugeAndInfiniteInputs) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {1e30f, -inf, 1e30f, 0.0f, -1e30f, 3.0f, -inf, 2.0f};
  std::vector<float> y(x.size());
  softmax({2, 4, 1}, x.data(), y.data());
  EXPECT_FLOAT_EQ(y[0], 0.5f);
  EXPECT_EQ(y[1], 0.0f);
  EXPECT_FLOAT_EQ(y[2], 0.5f);
  EXPECT_EQ(y[3], 0.0f);
  EXPECT_EQ(y[4], 0.0f);
  EXPECT_NEAR(y[5], 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_EQ(y[6], 0.0f);
  EXPECT_NEAR(y[7], std::exp(-1.0) / (1.0 + std::exp(-1.0)), 1e-6);
}

TEST(DenseSoftmax, ExponentialIsAccurateOverTheNonPositiveRange) {
  double worst = 0.0;
  for (float x = -87.0f; x <= 0.0f; x += 0.0137f) {
    const double expected = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(exp_nonpositive(x) - expected) / expected);
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(exp_nonpositive(0.0f), 1.0f);
  EXPECT_EQ(exp_nonpositive(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(exp_nonpositive(-100.0f), 0.0f);
  EXPECT_TRUE(std::isnan(exp_nonpositive(std::numeric_limits<float>::quiet_NaN())));
}

// ---------------------------------------------------------------------------------------------
// Pools and reductions

struct PoolCase {
  const char* name;
  int64_t batch, channels, in_h, in_w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
  bool ceil_mode;
};

PoolGeometry pool_geometry(const PoolCase& c) {
  PoolGeometry g;
  g.batch = c.batch;
  g.channels = c.channels;
  g.in_h = c.in_h;
  g.in_w = c.in_w;
  g.kernel_h = c.kh;
  g.kernel_w = c.kw;
  g.stride_h = c.sh;
  g.stride_w = c.sw;
  g.dilation_h = c.dh;
  g.dilation_w = c.dw;
  g.pad_top = c.pt;
  g.pad_left = c.pl;
  g.pad_bottom = c.pb;
  g.pad_right = c.pr;
  auto out = [&](int64_t in, int64_t k, int64_t s, int64_t d, int64_t p0, int64_t p1) {
    const int64_t span = in + p0 + p1 - ((k - 1) * d + 1);
    if (!c.ceil_mode) return span / s + 1;
    int64_t o = (span + s - 1) / s + 1;
    if ((o - 1) * s >= in + p0) --o;
    return o;
  };
  g.out_h = out(c.in_h, c.kh, c.sh, c.dh, c.pt, c.pb);
  g.out_w = out(c.in_w, c.kw, c.sw, c.dw, c.pl, c.pr);
  return g;
}

const PoolCase kPoolCases[] = {
    // name, batch, channels, in_h, in_w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, ceil
    {"stem_3x3_s2_p1", 3, 5, 13, 17, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, false},
    {"2x2_s2", 1, 7, 13, 13, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, false},
    {"2x2_s2_ceil", 1, 7, 13, 13, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, true},
    {"3x3_s2_ceil_padded", 3, 3, 17, 31, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, true},
    {"ceil_drops_window_in_padding", 1, 2, 5, 5, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, true},
    {"asymmetric_pads", 3, 4, 7, 13, 3, 5, 1, 2, 1, 1, 0, 2, 2, 1, false},
    {"dilation2", 1, 3, 17, 13, 3, 3, 1, 1, 2, 2, 2, 1, 1, 2, false},
    {"k1x3_1d_like", 3, 5, 1, 31, 1, 3, 1, 2, 1, 1, 0, 1, 0, 1, false},
    {"stride3", 1, 3, 13, 17, 3, 3, 3, 3, 1, 1, 0, 0, 0, 0, true},
};

TEST(DensePool, MaxPoolMatchesReferenceWithIndices) {
  ThreadCount threads(2);
  uint32_t seed = 100;
  for (const PoolCase& c : kPoolCases) {
    const PoolGeometry g = pool_geometry(c);
    const auto x =
        random_values(static_cast<size_t>(g.batch * g.channels * g.in_h * g.in_w), ++seed);
    const size_t out = static_cast<size_t>(g.batch * g.channels * g.out_h * g.out_w);
    for (IndexOrder order : {IndexOrder::kRowMajor, IndexOrder::kColumnMajor}) {
      std::vector<float> y(out), ey(out), y_plain(out);
      std::vector<int64_t> idx(out), eidx(out);
      max_pool2d(g, x.data(), y.data(), idx.data(), order);
      max_pool2d(g, x.data(), y_plain.data(), nullptr, order);
      reference::max_pool2d(g, x.data(), ey.data(), eidx.data(), order);
      expect_close(y, ey, 0, 0, c.name);
      expect_close(y_plain, ey, 0, 0, std::string(c.name) + " without indices");
      EXPECT_EQ(idx, eidx) << c.name;
    }
  }
}

TEST(DensePool, AveragePoolMatchesReferenceForBothPadCountings) {
  ThreadCount threads(2);
  uint32_t seed = 200;
  for (const PoolCase& c : kPoolCases) {
    const PoolGeometry g = pool_geometry(c);
    const auto x =
        random_values(static_cast<size_t>(g.batch * g.channels * g.in_h * g.in_w), ++seed);
    const size_t out = static_cast<size_t>(g.batch * g.channels * g.out_h * g.out_w);
    for (PadCounting counting : {PadCounting::kExcludePad, PadCounting::kIncludePad}) {
      std::vector<float> y(out), ey(out);
      average_pool2d(g, counting, x.data(), y.data());
      reference::average_pool2d(g, counting, x.data(), ey.data());
      expect_close(y, ey, 1e-6, 1e-5,
                   std::string(c.name) + (counting == PadCounting::kIncludePad ? " include" : ""));
    }
  }
}

TEST(DensePool, GlobalAveragePoolMatchesMean) {
  ThreadCount threads(2);
  for (auto [planes, size] : {std::pair<int64_t, int64_t>{1, 1}, {39, 49}, {3, 3136}, {17, 13}}) {
    const auto x = random_values(static_cast<size_t>(planes * size), 3);
    std::vector<float> y(static_cast<size_t>(planes)), expected(y.size());
    global_average_pool(x.data(), planes, size, y.data());
    const Shape shape{planes, size};
    const std::vector<int64_t> axes{1};
    reference::reduce_mean(shape, axes, x.data(), expected.data());
    expect_close(y, expected, 1e-6, 1e-5, "global average pool " + std::to_string(size));
  }
}

TEST(DenseReduceMean, MatchesReferenceForAxisSets) {
  ThreadCount threads(2);
  struct Case {
    Shape shape;
    std::vector<int64_t> axes;
  };
  const Case cases[] = {
      {{3, 7, 13}, {2}},      {{3, 7, 13}, {1}},          {{3, 7, 13}, {0}},
      {{3, 7, 13}, {0, 2}},   {{3, 7, 13}, {0, 1, 2}},    {{3, 7, 13}, {}},
      {{2, 3, 4, 5}, {1, 3}}, {{2, 3, 4, 5}, {0, 2}},     {{2, 3, 4, 5}, {2, 3}},
      {{3, 1, 5}, {1}},       {{3, 1, 5}, {0, 2}},        {{2, 3, 4, 5, 6}, {0, 2, 4}},
      {{1, 300, 17}, {1}},    {{31, 2, 3, 1}, {0, 1, 3}}, {{4, 1000}, {1}},
  };
  uint32_t seed = 300;
  for (const Case& c : cases) {
    const auto x = random_values(static_cast<size_t>(shape_numel(c.shape)), ++seed);
    int64_t outputs = 1;
    for (size_t i = 0; i < c.shape.size(); ++i) {
      if (std::find(c.axes.begin(), c.axes.end(), static_cast<int64_t>(i)) == c.axes.end()) {
        outputs *= c.shape[i];
      }
    }
    std::vector<float> y(static_cast<size_t>(outputs)), expected(y.size());
    const ReducePlan plan = plan_reduce(c.shape, c.axes);
    reduce_mean(plan, x.data(), y.data());
    reference::reduce_mean(c.shape, c.axes, x.data(), expected.data());
    std::string what = "reduce mean " + shape_str(c.shape) + " axes " + shape_str(c.axes);
    expect_close(y, expected, 1e-6, 1e-5, what);
  }
}

}  // namespace
}  // namespace qforge::kernels
