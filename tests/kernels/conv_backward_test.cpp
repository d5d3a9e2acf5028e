// Convolution backward: the float64 reference against central finite differences, the float32
// kernel against the reference on awkward geometries, accumulation, and the same bits for any
// thread count and for an image whatever the batch.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "kernels/conv_backward.h"
#include "kernels/packed_gemm.h"
#include "kernels/reference/dense_backward_reference.h"
#include "tests/support/float_checks.h"
#include "tests/support/gradient_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::absolute;
using testing::expect_matches_reference;
using testing::expect_same_bits;
using testing::random_values;
using testing::ThreadCount;
using testing::to_double;

struct ConvCase {
  const char* name;
  int64_t batch, in_c, in_h, in_w, out_c;
  int64_t kh, kw, sh, sw, dh, dw;
  int64_t pt, pl, pb, pr;
  int64_t group;
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

size_t x_size(const ConvGeometry& g) {
  return static_cast<size_t>(g.batch * g.in_channels * g.in_h * g.in_w);
}
size_t w_size(const ConvGeometry& g) {
  return static_cast<size_t>(g.out_channels * (g.in_channels / g.group) * g.kernel_h * g.kernel_w);
}
size_t y_size(const ConvGeometry& g) {
  return static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w);
}

struct ConvData {
  std::vector<float> x, w, dy;
};

ConvData conv_data(const ConvGeometry& g, uint32_t seed) {
  return {random_values(x_size(g), seed), random_values(w_size(g), seed + 1),
          random_values(y_size(g), seed + 2)};
}

struct ConvResult {
  std::vector<float> dx, dw, db;
};

ConvResult run_backward(const ConvGeometry& g, const ConvData& d, int threads,
                        GradMode write = GradMode::kOverwrite, const ConvResult* start = nullptr) {
  ThreadCount scope(threads);
  const ConvBackwardPlan plan = plan_conv_backward(g, threads);
  std::vector<std::byte> ws(conv_backward_workspace_bytes(plan) + 64);
  ConvResult r;
  if (start) {
    r = *start;
  } else {
    r.dx.assign(x_size(g), NAN);
    r.dw.assign(w_size(g), NAN);
    r.db.assign(static_cast<size_t>(g.out_channels), NAN);
  }
  conv2d_backward(plan, d.x.data(), d.w.data(), d.dy.data(),
                  {r.dx.data(), r.dw.data(), r.db.data()}, ws.data(), write);
  return r;
}

struct Reference {
  std::vector<double> dx, dw, db;
};

Reference run_reference(const ConvGeometry& g, const std::vector<double>& x,
                        const std::vector<double>& w, const std::vector<double>& dy) {
  Reference r{std::vector<double>(x.size()), std::vector<double>(w.size()),
              std::vector<double>(static_cast<size_t>(g.out_channels))};
  reference::conv2d_backward(g, x.data(), w.data(), dy.data(), r.dx.data(), r.dw.data(),
                             r.db.data());
  return r;
}

const ConvCase kCases[] = {
    // name, batch, in_c, in_h, in_w, out_c, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, group
    {"pointwise", 1, 13, 7, 7, 17, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},
    {"pointwise_batch3", 3, 7, 13, 3, 31, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},
    {"pointwise_stride2", 3, 13, 13, 17, 7, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1},
    {"pointwise_padded", 1, 3, 5, 7, 7, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1},
    {"pointwise_many_channels", 1, 127, 3, 5, 17, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},
    {"k3_pad1", 1, 3, 17, 13, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
    {"k3_stride2_asymmetric_pads", 3, 7, 13, 17, 13, 3, 3, 2, 2, 1, 1, 0, 1, 2, 1, 1},
    {"k3_dilation2", 1, 5, 17, 17, 3, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2, 1},
    {"k3_channel_blocks", 3, 13, 9, 11, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
    {"k3_pixel_tiles", 1, 64, 45, 45, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
    {"k1x3", 3, 3, 13, 31, 7, 1, 3, 1, 1, 1, 1, 0, 1, 0, 1, 1},
    {"k5x2_stride2x1", 1, 3, 13, 31, 7, 5, 2, 2, 1, 1, 1, 2, 0, 1, 1, 1},
    {"grouped3", 3, 6, 13, 13, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 3},
    {"grouped_stride2_dilation2", 1, 12, 17, 13, 8, 3, 3, 2, 2, 2, 2, 1, 2, 2, 1, 4},
    {"depthwise", 1, 13, 17, 17, 13, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 13},
    {"depthwise_stride2", 3, 17, 13, 31, 17, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 17},
    {"depthwise_k5_stride2_dilation2", 3, 7, 31, 13, 7, 5, 5, 2, 2, 2, 2, 4, 3, 2, 1, 7},
    {"depthwise_multiplier2", 1, 3, 13, 13, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 3},
    {"depthwise_k7_pad3_wide_rows", 1, 5, 17, 41, 5, 7, 7, 1, 1, 1, 1, 3, 3, 3, 3, 5},
    {"depthwise_k3x5_stride1x2", 3, 4, 13, 17, 4, 3, 5, 1, 2, 1, 1, 1, 2, 1, 2, 4},
    {"depthwise_dilation2_unused_trailing_input", 3, 3, 17, 19, 3, 3, 3, 1, 1, 2, 2, 1, 0, -2, -1,
     3},
    {"depthwise_multiplier3_k5_asymmetric", 1, 2, 13, 11, 6, 5, 5, 1, 1, 1, 1, 1, 3, 2, 0, 2},
    {"depthwise_stride3_no_pad", 1, 5, 13, 17, 5, 3, 3, 3, 3, 1, 1, 0, 0, 0, 0, 5},
    {"depthwise_k4_stride3x2_dilation2x3", 3, 2, 16, 19, 4, 4, 4, 3, 2, 2, 3, 3, 1, 0, 2, 2},
    {"conv1d", 3, 13, 1, 31, 7, 1, 5, 1, 2, 1, 1, 0, 2, 0, 1, 1},
    {"single_input_channel", 3, 1, 13, 13, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
    {"kernel_covers_padded_input", 1, 3, 2, 2, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
    {"stride_skips_input", 1, 3, 13, 13, 5, 2, 2, 3, 3, 1, 1, 0, 0, 0, 0, 1},
    // dw by Winograd: odd output sizes (partial tiles at the edges), asymmetric pads, and enough
    // channels for the tiles to run in two chunks (128 and 19 tiles).
    {"winograd_dw_odd_sizes", 3, 19, 11, 13, 17, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
    {"winograd_dw_asymmetric_pads", 2, 16, 9, 10, 16, 3, 3, 1, 1, 1, 1, 0, 2, 2, 1, 1},
    {"winograd_dw_two_chunks", 3, 256, 14, 14, 256, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
    // Where the packed GEMM is built, the other ungrouped cases take the packed weight gradient
    // (k3_pixel_tiles in many chunks of pixels, pointwise_many_channels in several panels); a
    // weight this large over its batch (2 · 1024 · 2304 floats) keeps OpenBLAS.
    {"k3_stride2_large_weight", 2, 256, 5, 5, 1024, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1},
};

// (a) The reference backward is the gradient of the float64 forward: loss = Σ y·dy.
TEST(ConvBackwardReference, MatchesFiniteDifferences) {
  const ConvCase cases[] = {
      {"k3_stride2_pads", 2, 4, 5, 6, 3, 3, 3, 2, 1, 1, 1, 1, 0, 2, 1, 1},
      {"grouped_dilated", 1, 4, 6, 5, 6, 2, 3, 1, 2, 2, 1, 0, 2, 1, 0, 2},
      {"depthwise", 2, 3, 5, 5, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 3},
  };
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(c.name);
    const ConvGeometry g = geometry_of(c);
    const ConvData d = conv_data(g, 11);
    std::vector<double> x = to_double(d.x), w = to_double(d.w), dy = to_double(d.dy);
    std::vector<double> bias = to_double(random_values(static_cast<size_t>(g.out_channels), 5));
    std::vector<double> y(y_size(g));
    auto loss = [&] {
      reference::conv2d_f64(g, x.data(), w.data(), bias.data(), y.data());
      return testing::dot(y, dy);
    };
    const Reference ref = run_reference(g, x, w, dy);
    testing::expect_matches_differences(ref.dx, testing::central_differences(x, loss), 1e-8, "dx");
    testing::expect_matches_differences(ref.dw, testing::central_differences(w, loss), 1e-8, "dw");
    testing::expect_matches_differences(ref.db, testing::central_differences(bias, loss), 1e-8,
                                        "dbias");
  }
}

// (b) The float32 kernel against the reference, every gradient, on awkward geometries.
TEST(ConvBackward, MatchesReference) {
  for (const ConvCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const ConvGeometry g = geometry_of(c);
    const ConvData d = conv_data(g, 21);
    const ConvResult r = run_backward(g, d, 2);
    const std::vector<double> x = to_double(d.x), w = to_double(d.w), dy = to_double(d.dy);
    const Reference ref = run_reference(g, x, w, dy);
    const Reference mag = run_reference(g, absolute(x), absolute(w), absolute(dy));
    expect_matches_reference(r.dx, ref.dx, mag.dx, "dx");
    expect_matches_reference(r.dw, ref.dw, mag.dw, "dw");
    expect_matches_reference(r.db, ref.db, mag.db, "dbias");
  }
}

// Null outputs are skipped; the others are what a full call computes.
TEST(ConvBackward, ComputesOnlyTheRequestedGradients) {
  for (const char* name : {"k3_stride2_asymmetric_pads", "depthwise_stride2", "pointwise"}) {
    SCOPED_TRACE(name);
    const ConvCase* c = nullptr;
    for (const ConvCase& each : kCases) {
      if (std::string(each.name) == name) c = &each;
    }
    ASSERT_NE(c, nullptr);
    const ConvGeometry g = geometry_of(*c);
    const ConvData d = conv_data(g, 31);
    const ConvResult full = run_backward(g, d, 2);
    const ConvBackwardPlan plan = plan_conv_backward(g, 2);
    std::vector<std::byte> ws(conv_backward_workspace_bytes(plan) + 64);
    std::vector<float> dx(x_size(g), NAN), dw(w_size(g), NAN);
    conv2d_backward(plan, nullptr, d.w.data(), d.dy.data(), {dx.data(), nullptr, nullptr},
                    ws.data());
    expect_same_bits(dx.data(), full.dx.data(), dx.size(), "dx alone");
    conv2d_backward(plan, d.x.data(), nullptr, d.dy.data(), {nullptr, dw.data(), nullptr},
                    ws.data());
    expect_same_bits(dw.data(), full.dw.data(), dw.size(), "dw alone");
  }
}

// kAccumulate adds the gradient to what the outputs hold.
TEST(ConvBackward, AccumulatesIntoOutputs) {
  for (const ConvCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const ConvGeometry g = geometry_of(c);
    const ConvData d = conv_data(g, 41);
    ConvResult start{random_values(x_size(g), 51), random_values(w_size(g), 52),
                     random_values(static_cast<size_t>(g.out_channels), 53)};
    const ConvResult r = run_backward(g, d, 2, GradMode::kAccumulate, &start);
    Reference ref = run_reference(g, to_double(d.x), to_double(d.w), to_double(d.dy));
    Reference mag = run_reference(g, absolute(to_double(d.x)), absolute(to_double(d.w)),
                                  absolute(to_double(d.dy)));
    auto shift = [](std::vector<double>& v, std::vector<double>& m, const std::vector<float>& s) {
      for (size_t i = 0; i < v.size(); ++i) {
        v[i] += s[i];
        m[i] += std::abs(s[i]);
      }
    };
    shift(ref.dx, mag.dx, start.dx);
    shift(ref.dw, mag.dw, start.dw);
    shift(ref.db, mag.db, start.db);
    expect_matches_reference(r.dx, ref.dx, mag.dx, "dx");
    expect_matches_reference(r.dw, ref.dw, mag.dw, "dw");
    expect_matches_reference(r.db, ref.db, mag.db, "dbias");
  }
}

// (c) The same bits on 1 and 2 threads; an image's dx does not depend on the batch.
TEST(ConvBackward, SameBitsForAnyThreadCountAndBatch) {
  for (const ConvCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const ConvGeometry g = geometry_of(c);
    const ConvData d = conv_data(g, 61);
    const ConvResult one = run_backward(g, d, 1);
    const ConvResult two = run_backward(g, d, 2);
    expect_same_bits(one.dx.data(), two.dx.data(), one.dx.size(), "dx");
    expect_same_bits(one.dw.data(), two.dw.data(), one.dw.size(), "dw");
    expect_same_bits(one.db.data(), two.db.data(), one.db.size(), "dbias");
    if (g.batch > 1) {
      ConvGeometry single = g;
      single.batch = 1;
      const size_t xs = x_size(single), ys = y_size(single);
      const ConvData first{std::vector<float>(d.x.begin() + static_cast<int64_t>(xs),
                                              d.x.begin() + static_cast<int64_t>(2 * xs)),
                           d.w,
                           std::vector<float>(d.dy.begin() + static_cast<int64_t>(ys),
                                              d.dy.begin() + static_cast<int64_t>(2 * ys))};
      const ConvResult alone = run_backward(single, first, 2);
      expect_same_bits(alone.dx.data(), two.dx.data() + xs, xs, "dx of image 1 alone");
    }
  }
}

// The cases above that take the Winograd weight gradient do.
TEST(ConvBackward, WinogradCasesTakeWinograd) {
  int winograd = 0;
  for (const ConvCase& c : kCases) {
    const bool expected = std::string(c.name).rfind("winograd_dw", 0) == 0;
    const ConvBackwardPlan plan = plan_conv_backward(geometry_of(c), 2);
    EXPECT_EQ(plan.winograd_dw, expected) << c.name;
    if (plan.winograd_dw) {
      ++winograd;
      const int64_t tiles =
          c.batch * ((geometry_of(c).out_h + 1) / 2) * ((geometry_of(c).out_w + 1) / 2);
      if (std::string(c.name) == "winograd_dw_two_chunks") {
        EXPECT_LT(plan.dw_chunk_tiles, tiles);
        EXPECT_GT(2 * plan.dw_chunk_tiles, tiles);
      }
    }
  }
  EXPECT_EQ(winograd, 3);
}

// The Winograd dw in chunks of any size (chunks that cross images, start and end mid-row)
// matches the reference and has the same bits on 1 and 2 threads; on the packed GEMM, whose
// sums are one chain over the tiles, the same bits for every chunk size. Odd output sizes
// (13 × 37: 7 × 19 tiles, partial tiles at both edges), asymmetric pads, channel counts that
// fill neither the vector lanes (16) nor the GEMM panels.
TEST(ConvBackward, WinogradWeightGradientAnyChunking) {
  const ConvCase c{"winograd_dw_chunks", 3, 16, 13, 37, 17, 3, 3, 1, 1, 1, 1, 0, 1, 2, 1, 1};
  const ConvGeometry g = geometry_of(c);
  ASSERT_EQ(g.out_h, 13);
  ASSERT_EQ(g.out_w, 37);
  const ConvData d = conv_data(g, 71);
  const Reference ref = run_reference(g, to_double(d.x), to_double(d.w), to_double(d.dy));
  const Reference mag = run_reference(g, absolute(to_double(d.x)), absolute(to_double(d.w)),
                                      absolute(to_double(d.dy)));
  const int64_t per_image = 7 * 19;
  std::vector<float> first;
  for (int64_t chunk : {int64_t{1}, int64_t{20}, int64_t{64}, per_image - 1, per_image,
                        2 * per_image + 5, 3 * per_image}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    std::vector<float> dw[2];
    for (int threads : {1, 2}) {
      ThreadCount scope(threads);
      ConvBackwardPlan plan = plan_conv_backward(g, threads);
      ASSERT_TRUE(plan.winograd_dw);
      plan.dw_chunk_tiles = chunk;
      std::vector<std::byte> ws(conv_backward_workspace_bytes(plan) + 64);
      std::vector<float>& out = dw[threads - 1];
      out.assign(w_size(g), NAN);
      conv2d_backward(plan, d.x.data(), nullptr, d.dy.data(), {nullptr, out.data(), nullptr},
                      ws.data());
    }
    expect_matches_reference(dw[1], ref.dw, mag.dw, "dw");
    expect_same_bits(dw[0].data(), dw[1].data(), dw[0].size(), "dw on 1 and 2 threads");
    if (packed_gemm_available()) {
      if (first.empty()) first = dw[1];
      expect_same_bits(dw[1].data(), first.data(), first.size(), "dw against chunks of 1 tile");
    }
  }
}

// The ungrouped cases that are not Winograd's take the packed weight gradient where it is built,
// but for the large weight; grouped and depthwise cases never do.
TEST(ConvBackward, PackedWeightGradientWherePlanned) {
  int packed = 0;
  for (const ConvCase& c : kCases) {
    const std::string name = c.name;
    const ConvBackwardPlan plan = plan_conv_backward(geometry_of(c), 2);
    const bool expected =
        packed_gemm_available() && c.group == 1 && name.rfind("winograd_dw", 0) != 0;
    EXPECT_EQ(plan.packed_dw, expected) << name;
    // A dw per image only while they fit in 16 MiB together; past it, blocks of output channels.
    EXPECT_EQ(plan.dw_row_blocks, expected && name == "k3_stride2_large_weight" ? 2 : 0) << name;
    // dx too, where it is not the transposed convolution (strided, or accumulated) and x is not
    // the im2col matrix itself.
    EXPECT_EQ(plan.packed_dx, packed_gemm_available() && c.group == 1 && !plan.direct) << name;
    if (!plan.packed_dw) continue;
    ++packed;
    EXPECT_GT(plan.dw_chunk_pixels, 0) << name;
    if (name == "k3_pixel_tiles") {
      EXPECT_LT(4 * plan.dw_chunk_pixels, geometry_of(c).out_h * geometry_of(c).out_w);
    }
  }
  EXPECT_EQ(packed, packed_gemm_available() ? 17 : 0);
}

// The packed dw in blocks of output channels: each output one chain over every pixel of every
// image in order, so the same bits for any chunk (chunks that span images, start mid-image) and
// any number of blocks (1 or 2 threads), and the reference's values.
TEST(ConvBackward, PackedWeightGradientByRowBlocksAnyChunk) {
  if (!packed_gemm_available())
    GTEST_SKIP() << "the packed GEMM is built with AVX-512 or AVX2 + FMA only";
  const ConvCase c{"rows", 3, 256, 5, 5, 1024, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1};
  const ConvGeometry g = geometry_of(c);
  const ConvData d = conv_data(g, 81);
  const Reference ref = run_reference(g, to_double(d.x), to_double(d.w), to_double(d.dy));
  const Reference mag = run_reference(g, absolute(to_double(d.x)), absolute(to_double(d.w)),
                                      absolute(to_double(d.dy)));
  std::vector<float> first;
  for (int threads : {1, 2}) {
    for (int64_t chunk : {1, 4, 9, 10, 27}) {
      SCOPED_TRACE(std::to_string(threads) + " threads, chunk " + std::to_string(chunk));
      ThreadCount scope(threads);
      ConvBackwardPlan plan = plan_conv_backward(g, threads);
      ASSERT_TRUE(plan.packed_dw);
      ASSERT_EQ(plan.dw_row_blocks, threads);
      plan.dw_chunk_pixels = chunk;
      std::vector<std::byte> ws(conv_backward_workspace_bytes(plan) + 64);
      std::vector<float> dw(w_size(g), NAN);
      conv2d_backward(plan, d.x.data(), nullptr, d.dy.data(), {nullptr, dw.data(), nullptr},
                      ws.data());
      if (first.empty()) {
        first = dw;
        expect_matches_reference(dw, ref.dw, mag.dw, "dw");
      }
      expect_same_bits(dw.data(), first.data(), dw.size(), "dw against 1 thread, chunk 1");
    }
  }
}

// dx of a stride-1 depthwise convolution with one output channel per input channel is the
// forward depthwise convolution of dy with the flipped filters (MatchesReference checks its
// values); the other depthwise cases keep the direct loops.
TEST(ConvBackward, DepthwiseInputGradientAsConvolutionWherePlanned) {
  int as_conv = 0;
  for (const ConvCase& c : kCases) {
    const ConvGeometry g = geometry_of(c);
    if (g.group == 1 || g.in_channels != g.group) continue;
    const ConvBackwardPlan plan = plan_conv_backward(g, 2);
    ASSERT_TRUE(plan.depthwise) << c.name;
    const bool expected = c.sh == 1 && c.sw == 1 && c.out_c == c.in_c;
    EXPECT_EQ(plan.dx_as_conv, expected) << c.name;
    as_conv += plan.dx_as_conv;
  }
  EXPECT_EQ(as_conv, 3);
}

TEST(ConvBackward, EmptyBatchGivesZeroWeightGradient) {
  ConvGeometry g = geometry_of(kCases[6]);
  g.batch = 0;
  const ConvBackwardPlan plan = plan_conv_backward(g, 2);
  std::vector<std::byte> ws(conv_backward_workspace_bytes(plan) + 64);
  std::vector<float> dw(w_size(g), NAN), db(static_cast<size_t>(g.out_channels), NAN);
  conv2d_backward(plan, nullptr, nullptr, nullptr, {nullptr, dw.data(), db.data()}, ws.data());
  for (float v : dw) EXPECT_EQ(v, 0.0f);
  for (float v : db) EXPECT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace qforge::kernels
