// The packed GEMM (kernels/packed_gemm.h) and the convolutions that run on it, against the
// naive references on edge sizes (columns not a multiple of the vector width, k not a multiple
// of the depth block, output channels not a multiple of the row panel, tiles spanning images),
// plus the determinism contract: the same bits for any batch, thread count and weight form.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/conv.h"
#include "kernels/elementwise.h"
#include "kernels/packed_gemm.h"
#include "kernels/reference/dense_reference.h"
#include "tests/support/float_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::expect_close;
using testing::expect_same_bits;
using testing::random_values;

using testing::ThreadCount;

// ---------------------------------------------------------------------------------------------
// The micro-tile

// Every tile height and width, a depth that is not a multiple of anything, with and without
// running sums and the epilogue, against a double-precision product.
TEST(PackedGemm, TileMatchesReferenceForEveryEdgeSize) {
  const int64_t kc = 37;
  const int64_t m = kPackedRows;
  const auto a = random_values(static_cast<size_t>(m * kc), 1);
  const auto b = random_values(static_cast<size_t>(kc * kPackedCols), 2);
  const auto c0 = random_values(static_cast<size_t>(m * kPackedCols), 3);
  const auto bias = random_values(static_cast<size_t>(m), 4);
  const auto scale = random_values(static_cast<size_t>(m), 5, 0.5f, 2.0f);
  const auto shift = random_values(static_cast<size_t>(m), 6);
  const auto residual = random_values(static_cast<size_t>(m * kPackedCols), 7);
  std::vector<float> packed(packed_rows_floats(m, kc));
  pack_rows(a.data(), kc, m, kc, packed.data());
  for (int64_t rows = 1; rows <= kPackedRows; ++rows) {
    for (int64_t cols = 1; cols <= kPackedCols; ++cols) {
      for (int mode = 0; mode < 3; ++mode) {  // plain, running sums, sums and epilogue
        const bool accumulate = mode >= 1;
        TileEpilogue e;
        e.bias = bias.data();
        e.finish = true;
        e.scale = scale.data();
        e.shift = shift.data();
        e.residual = residual.data();
        e.ld_residual = kPackedCols;
        e.lo = -0.5f;
        e.hi = 3.0f;
        std::vector<float> out(static_cast<size_t>(m * kPackedCols), NAN);
        packed_gemm_tile(kc, packed.data(), b.data(), kPackedCols, rows, cols,
                         accumulate ? c0.data() : nullptr, kPackedCols, out.data(), kPackedCols,
                         mode == 2 ? &e : nullptr);
        const std::string what = "rows " + std::to_string(rows) + " cols " + std::to_string(cols) +
                                 " mode " + std::to_string(mode);
        for (int64_t r = 0; r < m; ++r) {
          for (int64_t j = 0; j < kPackedCols; ++j) {
            const float got = out[static_cast<size_t>(r * kPackedCols + j)];
            if (r >= rows || j >= cols) {
              ASSERT_TRUE(std::isnan(got))
                  << what << ": wrote outside the tile at " << r << "," << j;
              continue;
            }
            double sum = accumulate ? c0[static_cast<size_t>(r * kPackedCols + j)] : 0.0;
            for (int64_t kk = 0; kk < kc; ++kk) {
              sum += double(a[static_cast<size_t>(r * kc + kk)]) *
                     b[static_cast<size_t>(kk * kPackedCols + j)];
            }
            double expected = sum;
            if (mode == 2) {
              expected = (sum + bias[r]) * scale[r] + shift[r] + residual[r * kPackedCols + j];
              expected = std::clamp(expected, -0.5, 3.0);
            }
            ASSERT_NEAR(got, expected, 1e-5) << what << " at " << r << "," << j;
          }
        }
      }
    }
  }
}

// Every output is one chain of fused multiply-adds over k in order, from its running sum (or
// zero); the add form's chain starts from zero and the running sum is added at the end. That
// contract is what makes the bits the same on AVX-512 and on AVX2: checked bit for bit against
// std::fma for every tile height and width, B read as a plain matrix exactly `cols` wide.
TEST(PackedGemm, EveryOutputIsOneFusedChainOverK) {
  const int64_t kc = 41;
  const auto a = random_values(static_cast<size_t>(kPackedRows * kc), 21);
  const auto c0 = random_values(static_cast<size_t>(kPackedRows * kPackedCols), 23);
  std::vector<float> packed(packed_rows_floats(kPackedRows, kc));
  pack_rows(a.data(), kc, kPackedRows, kc, packed.data());
  for (int64_t rows = 1; rows <= kPackedRows; ++rows) {
    for (int64_t cols = 1; cols <= kPackedCols; ++cols) {
      const auto b = random_values(static_cast<size_t>(kc * cols), 22);
      for (int mode = 0; mode < 3; ++mode) {  // plain, running sums, added after
        const float* c_in = mode == 0 ? nullptr : c0.data();
        std::vector<float> got(c0.size(), NAN);
        if (mode == 2) {
          packed_gemm_tile_add(kc, packed.data(), b.data(), cols, rows, cols, c_in, kPackedCols,
                               got.data(), kPackedCols);
        } else {
          packed_gemm_tile(kc, packed.data(), b.data(), cols, rows, cols, c_in, kPackedCols,
                           got.data(), kPackedCols, nullptr);
        }
        std::vector<float> want(c0.size(), NAN);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t j = 0; j < cols; ++j) {
            const size_t o = static_cast<size_t>(r * kPackedCols + j);
            float acc = mode == 1 ? c0[o] : 0.0f;
            for (int64_t kk = 0; kk < kc; ++kk) {
              acc = std::fma(a[static_cast<size_t>(r * kc + kk)],
                             b[static_cast<size_t>(kk * cols + j)], acc);
            }
            want[o] = mode == 2 ? c0[o] + acc : acc;
          }
        }
        expect_same_bits(got.data(), want.data(), got.size(),
                         "rows " + std::to_string(rows) + " cols " + std::to_string(cols) +
                             " mode " + std::to_string(mode));
      }
    }
  }
}

// The interleaved form reads product i's panel at a + i·kPackedRows, k steps
// kInterleavedPanels·kPackedRows apart, and gives each product the bits packed_gemm_tile gives
// its own panel, for every tile height and width, with and without running sums.
TEST(PackedGemm, InterleavedPanelsGiveEachProductsBits) {
  const int64_t kc = 23;
  const int64_t step = kInterleavedPanels * kPackedRows;
  const auto interleaved = random_values(static_cast<size_t>(kc * step), 11);
  const auto b = random_values(static_cast<size_t>(kc * kPackedCols), 12);
  const auto c0 = random_values(static_cast<size_t>(kPackedRows * kPackedCols), 13);
  for (int64_t i : {int64_t{0}, int64_t{5}, kInterleavedPanels - 1}) {
    std::vector<float> own(static_cast<size_t>(kc * kPackedRows));
    for (int64_t kk = 0; kk < kc; ++kk) {
      std::copy_n(interleaved.begin() + kk * step + i * kPackedRows, kPackedRows,
                  own.begin() + kk * kPackedRows);
    }
    for (int64_t rows = 1; rows <= kPackedRows; ++rows) {
      for (int64_t cols = 1; cols <= kPackedCols; ++cols) {
        for (bool accumulate : {false, true}) {
          std::vector<float> want(c0.size(), NAN), got(c0.size(), NAN);
          const float* c_in = accumulate ? c0.data() : nullptr;
          packed_gemm_tile(kc, own.data(), b.data(), kPackedCols, rows, cols, c_in, kPackedCols,
                           want.data(), kPackedCols, nullptr);
          packed_gemm_tile_interleaved(kc, interleaved.data() + i * kPackedRows, b.data(),
                                       kPackedCols, rows, cols, c_in, kPackedCols, got.data(),
                                       kPackedCols);
          expect_same_bits(got.data(), want.data(), got.size(),
                           "product " + std::to_string(i) + " rows " + std::to_string(rows) +
                               " cols " + std::to_string(cols));
        }
      }
    }
  }
}

// The micro-kernel's epilogue, the one applied to kept-aside sums (tiles that span images) and
// the scalar form give the same bits.
TEST(PackedGemm, VectorAndScalarEpiloguesAgreeBitForBit) {
  const int64_t kc = 19;
  const auto a = random_values(static_cast<size_t>(kPackedRows * kc), 11);
  const auto b = random_values(static_cast<size_t>(kc * kPackedCols), 12);
  const auto bias = random_values(static_cast<size_t>(kPackedRows), 13);
  const auto scale = random_values(static_cast<size_t>(kPackedRows), 14, 0.5f, 2.0f);
  const auto shift = random_values(static_cast<size_t>(kPackedRows), 15);
  const auto residual = random_values(static_cast<size_t>(kPackedRows * kPackedCols), 16);
  std::vector<float> packed(packed_rows_floats(kPackedRows, kc));
  pack_rows(a.data(), kc, kPackedRows, kc, packed.data());
  TileEpilogue e;
  e.bias = bias.data();
  e.finish = true;
  e.scale = scale.data();
  e.shift = shift.data();
  e.residual = residual.data();
  e.ld_residual = kPackedCols;
  e.lo = 0.0f;
  e.hi = 6.0f;
  std::vector<float> vec(static_cast<size_t>(kPackedRows * kPackedCols));
  std::vector<float> sums(vec.size());
  packed_gemm_tile(kc, packed.data(), b.data(), kPackedCols, kPackedRows, kPackedCols, nullptr, 0,
                   vec.data(), kPackedCols, &e);
  packed_gemm_tile(kc, packed.data(), b.data(), kPackedCols, kPackedRows, kPackedCols, nullptr, 0,
                   sums.data(), kPackedCols, nullptr);
  std::vector<float> scalar(vec.size());
  for (int64_t r = 0; r < kPackedRows; ++r) {
    for (int64_t j = 0; j < kPackedCols; ++j) {
      const size_t i = static_cast<size_t>(r * kPackedCols + j);
      scalar[i] = apply_tile_epilogue(e, r, j, sums[i]);
    }
  }
  expect_same_bits(vec.data(), scalar.data(), vec.size(), "scalar epilogue");
  // Kept-aside sums finished later, for every width.
  for (int64_t cols = 1; cols <= kPackedCols; ++cols) {
    std::vector<float> later(vec.size(), NAN);
    store_tile_with_epilogue(sums.data(), kPackedCols, kPackedRows, cols, later.data(), kPackedCols,
                             e);
    for (int64_t r = 0; r < kPackedRows; ++r) {
      const size_t at = static_cast<size_t>(r * kPackedCols);
      expect_same_bits(later.data() + at, vec.data() + at, static_cast<size_t>(cols),
                       "finished later, cols " + std::to_string(cols));
      if (cols < kPackedCols) {
        EXPECT_TRUE(std::isnan(later[at + static_cast<size_t>(cols)]));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Convolutions on the packed GEMM

struct PackedConvCase {
  const char* name;
  int64_t batch, in_c, in_h, in_w, out_c, kernel, stride, pad, dilation;
};

// Columns (batch · pixels) are never a multiple of 32 and tiles span images; channels are not
// multiples of 14; depths above 256 take several passes over k; Winograd's GEMMs group images.
const PackedConvCase kCases[] = {
    {"pointwise_7x7", 3, 45, 7, 7, 37, 1, 1, 0, 1},
    {"pointwise_deep", 2, 300, 5, 9, 130, 1, 1, 0, 1},
    {"pointwise_deeper_wide", 2, 600, 4, 5, 270, 1, 1, 0, 1},
    {"pointwise_wide_plane", 1, 16, 23, 29, 24, 1, 1, 0, 1},
    {"pointwise_stride2", 3, 40, 13, 11, 29, 1, 2, 0, 1},
    {"pointwise_padded", 2, 20, 9, 10, 31, 1, 1, 1, 1},
    {"k3_stride2", 3, 31, 15, 13, 33, 3, 2, 1, 1},
    {"k3_stride1_deep", 2, 40, 6, 7, 26, 3, 1, 1, 1},
    {"k3_dilation2", 1, 17, 11, 12, 25, 3, 1, 2, 2},
    {"stem_like", 2, 3, 37, 35, 64, 7, 2, 3, 1},
    {"k5_stride3", 2, 7, 19, 23, 45, 5, 3, 2, 1},
    // Winograd on the packed GEMM, the tiles of several images side by side.
    {"winograd_14x14", 3, 24, 14, 14, 40, 3, 1, 1, 1},
    {"winograd_wide_7x7", 3, 256, 7, 7, 256, 3, 1, 1, 1},
};

ConvGeometry geometry_of(const PackedConvCase& c) {
  ConvGeometry g;
  g.batch = c.batch;
  g.in_channels = c.in_c;
  g.in_h = c.in_h;
  g.in_w = c.in_w;
  g.out_channels = c.out_c;
  g.kernel_h = g.kernel_w = c.kernel;
  g.stride_h = g.stride_w = c.stride;
  g.dilation_h = g.dilation_w = c.dilation;
  g.pad_top = g.pad_left = c.pad;
  const int64_t extent = (c.kernel - 1) * c.dilation + 1;
  g.out_h = (c.in_h + 2 * c.pad - extent) / c.stride + 1;
  g.out_w = (c.in_w + 2 * c.pad - extent) / c.stride + 1;
  return g;
}

struct ConvInputs {
  std::vector<float> x, w, b, scale, shift, residual;
};

ConvInputs conv_inputs(const ConvGeometry& g, uint32_t seed) {
  ConvInputs d;
  d.x = random_values(static_cast<size_t>(g.batch * g.in_channels * g.in_h * g.in_w), seed);
  d.w = random_values(static_cast<size_t>(g.out_channels * g.in_channels * g.kernel_h * g.kernel_w),
                      seed + 1);
  d.b = random_values(static_cast<size_t>(g.out_channels), seed + 2);
  d.scale = random_values(static_cast<size_t>(g.out_channels), seed + 3, 0.5f, 2.0f);
  d.shift = random_values(static_cast<size_t>(g.out_channels), seed + 4);
  d.residual =
      random_values(static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w), seed + 5);
  return d;
}

ConvEpilogue epilogue_of(const ConvInputs& d) {
  ConvEpilogue e;
  e.scale = d.scale.data();
  e.shift = d.shift.data();
  e.residual = d.residual.data();
  e.clamp_min = 0.0f;
  return e;
}

// The packed GEMM wherever it can run: these shapes are smaller than the ones plan_conv picks it
// for on its own.
ConvPlanOptions forced() {
  ConvPlanOptions options;
  options.gemm = ConvGemm::kPacked;
  return options;
}

// conv2d with the packed GEMM (prepared weights or raw), on the calling thread count.
std::vector<float> run_packed(const ConvGeometry& g, const ConvInputs& d, int plan_threads,
                              bool prepared, const ConvEpilogue& e,
                              const ConvPlanOptions& options = forced()) {
  const ConvPlan plan = plan_conv(g, plan_threads, options);
  std::vector<float> packed;
  if (prepared) {
    packed.resize(conv_prepared_weight_floats(plan));
    prepare_conv_weights(plan, d.w.data(), packed.data());
  }
  std::vector<std::byte> ws(
      conv_workspace_bytes(plan, prepared ? ConvWeightForm::kPrepared : ConvWeightForm::kRaw) + 64);
  std::vector<float> y(static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w), NAN);
  conv2d(plan, d.x.data(), d.w.data(), d.b.data(), y.data(), ws.data(), e,
         prepared ? packed.data() : nullptr);
  return y;
}

// One image of a square convolution with "same" padding: {in_c, size, out_c, kernel, stride}.
ConvGeometry square(int64_t in_c, int64_t size, int64_t out_c, int64_t kernel, int64_t stride) {
  const PackedConvCase c{"square", 1, in_c, size, size, out_c, kernel, stride, kernel / 2, 1};
  return geometry_of(c);
}

TEST(PackedConv, PlansThePackedGemmWhereItPays) {
  for (const PackedConvCase& c : kCases) {
    EXPECT_EQ(plan_conv(geometry_of(c), 2, forced()).packed, packed_gemm_available()) << c.name;
  }
  // On its own: ResNet-50's layers take it, and 1×1 layers of any plane from 24 deep (where
  // the shallow path, with the same bits, does not take them) ...
  for (const ConvGeometry& g :
       {square(3, 224, 64, 7, 2), square(256, 56, 64, 1, 1), square(128, 56, 128, 3, 2),
        square(1024, 14, 256, 1, 1), square(1024, 14, 2048, 1, 2), square(480, 14, 80, 1, 1),
        square(24, 56, 144, 1, 1), square(160, 7, 960, 1, 1)}) {
    const ConvPlan plan = plan_conv(g, 2);
    EXPECT_EQ(plan.packed || plan.algorithm == ConvAlgorithm::kShallow, packed_gemm_available())
        << g.in_channels << "→" << g.out_channels << " " << g.kernel_h << "×" << g.kernel_w;
  }
  // ... other narrow layers on small planes, shallow and tiny ones and grouped ones do not.
  ConvGeometry grouped = square(44, 28, 36, 3, 1);
  grouped.group = 4;
  for (const ConvGeometry& g : {square(96, 14, 80, 3, 2), grouped}) {
    EXPECT_FALSE(plan_conv(g, 2).packed) << g.in_channels << "→" << g.out_channels;
    if (g.group > 1) {
      EXPECT_FALSE(plan_conv(g, 2, forced()).packed);
    }
  }
  // Shallow ones take the shallow path, or, in a build without it, the packed GEMM (its bits).
  for (const ConvGeometry& g : {square(16, 112, 96, 1, 1), square(32, 112, 16, 1, 1)}) {
    const ConvPlan plan = plan_conv(g, 2);
    EXPECT_EQ(plan.algorithm == ConvAlgorithm::kShallow, shallow_conv_available());
    EXPECT_EQ(plan.packed, !shallow_conv_available() && packed_gemm_available())
        << g.in_channels << "→" << g.out_channels;
  }
  ConvPlanOptions blas;
  blas.gemm = ConvGemm::kBlas;
  EXPECT_FALSE(plan_conv(square(256, 56, 64, 1, 1), 2, blas).packed);
  // Winograd's GEMMs, with the tiles of several images side by side on small planes.
  for (const char* name : {"winograd_14x14", "winograd_wide_7x7"}) {
    for (const PackedConvCase& c : kCases) {
      if (std::string(c.name) != name) continue;
      const ConvPlan plan = plan_conv(geometry_of(c), 2);
      EXPECT_EQ(plan.algorithm, ConvAlgorithm::kWinograd) << name;
      EXPECT_EQ(plan.packed, packed_gemm_available()) << name;
      if (packed_gemm_available()) {
        EXPECT_GT(plan.image_group, 1) << name;
      }
      EXPECT_FALSE(plan_conv(geometry_of(c), 2, blas).packed) << name;
    }
  }
}

TEST(PackedConv, MatchesReferenceWithAndWithoutEpilogue) {
  ThreadCount threads(2);
  uint32_t seed = 100;
  for (const PackedConvCase& c : kCases) {
    const ConvGeometry g = geometry_of(c);
    const ConvInputs d = conv_inputs(g, seed += 7);
    std::vector<float> expected(d.residual.size());
    reference::conv2d(g, d.x.data(), d.w.data(), d.b.data(), expected.data());
    const double k = static_cast<double>(g.in_channels * g.kernel_h * g.kernel_w);
    expect_close(run_packed(g, d, 2, true, {}), expected, 1e-5 * std::sqrt(k), 1e-4, c.name);
    const size_t plane = static_cast<size_t>(g.out_h * g.out_w);
    for (size_t i = 0; i < expected.size(); ++i) {
      const size_t ch = i / plane % static_cast<size_t>(g.out_channels);
      expected[i] = std::max(expected[i] * d.scale[ch] + d.shift[ch] + d.residual[i], 0.0f);
    }
    expect_close(run_packed(g, d, 2, false, epilogue_of(d)), expected, 3e-5 * std::sqrt(k), 1e-4,
                 std::string(c.name) + " epilogue");
    // The OpenBLAS plan of the same convolution still holds.
    ConvPlanOptions blas;
    blas.gemm = ConvGemm::kBlas;
    expect_close(run_packed(g, d, 2, true, epilogue_of(d), blas), expected, 3e-5 * std::sqrt(k),
                 1e-4, std::string(c.name) + " OpenBLAS");
  }
}

TEST(PackedConv, SameBitsForAnyThreadCountAndWeightForm) {
  for (const PackedConvCase& c : kCases) {
    const ConvGeometry g = geometry_of(c);
    const ConvInputs d = conv_inputs(g, 55);
    const ConvEpilogue e = epilogue_of(d);
    std::vector<float> one;
    {
      ThreadCount threads(1);
      one = run_packed(g, d, 1, true, e);
    }
    for (int n : {2, 3}) {
      ThreadCount threads(n);
      const std::string what = std::string(c.name) + " threads " + std::to_string(n);
      expect_same_bits(run_packed(g, d, n, true, e).data(), one.data(), one.size(), what);
      expect_same_bits(run_packed(g, d, 1, false, e).data(), one.data(), one.size(),
                       what + " raw weights, plan for 1 thread");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Shallow convolutions: the packed GEMM's arithmetic, straight from the input

// Output channels off the 6-channel blocks, outputs off the 64-output runs (and runs shorter
// than a vector), strides 1 to 3, 1×1 to 7×7 kernels, depths from 3 to the path's limit of 160.
const PackedConvCase kShallowCases[] = {
    {"stem_3x3_stride2", 3, 3, 33, 31, 16, 3, 2, 1, 1},
    {"stem_7x7_stride2", 2, 3, 37, 35, 13, 7, 2, 3, 1},
    {"expansion_16_deep", 2, 16, 13, 11, 72, 1, 1, 0, 1},
    {"pointwise_deepest", 1, 160, 9, 9, 7, 1, 1, 0, 1},
    {"pointwise_one_pixel", 5, 20, 1, 1, 11, 1, 1, 0, 1},
    {"pointwise_stride2", 3, 40, 13, 11, 29, 1, 2, 0, 1},
    {"pointwise_padded", 2, 20, 9, 10, 31, 1, 1, 1, 1},
    {"k3_rows_wider_than_a_run", 2, 5, 17, 70, 9, 3, 1, 1, 1},
    {"k5_stride3", 1, 4, 19, 23, 5, 5, 3, 2, 1},
};

// A shallow case, and the same with one more output row and column (a trailing pad one wider
// than the leading one) where the kernel is larger than 1×1.
std::vector<std::pair<std::string, ConvGeometry>> shallow_geometries() {
  std::vector<std::pair<std::string, ConvGeometry>> out;
  for (const PackedConvCase& c : kShallowCases) {
    ConvGeometry g = geometry_of(c);
    out.emplace_back(c.name, g);
    if (c.kernel > 1) {
      ++g.out_h;
      ++g.out_w;
      out.emplace_back(std::string(c.name) + " trailing pad", g);
    }
  }
  return out;
}

ConvPlanOptions gemm_option(ConvGemm gemm) {
  ConvPlanOptions options;
  options.gemm = gemm;
  return options;
}

// Each output the packed GEMM's chain (from zero over the taps in k order, then the bias, then
// the epilogue), so the same bits as the packed GEMM, with and without bias and epilogue; and
// near the double-precision reference.
TEST(ShallowConv, SameBitsAsThePackedGemm) {
  ThreadCount threads(2);
  uint32_t seed = 300;
  for (const auto& [name, g] : shallow_geometries()) {
    const ConvPlan plan = plan_conv(g, 2, gemm_option(ConvGemm::kShallow));
    if (!shallow_conv_available()) {
      EXPECT_NE(plan.algorithm, ConvAlgorithm::kShallow) << name;
      EXPECT_EQ(plan.packed, packed_gemm_available()) << name;
      continue;
    }
    ASSERT_EQ(plan.algorithm, ConvAlgorithm::kShallow) << name;
    ASSERT_TRUE(plan_conv(g, 2, forced()).packed) << name;
    ConvInputs d = conv_inputs(g, seed += 11);
    ConvEpilogue e = epilogue_of(d);
    e.clamp_max = 0.75f;
    for (int mode = 0; mode < 3; ++mode) {  // epilogue, plain, plain without bias
      const std::string what = name + (mode == 0 ? " epilogue" : mode == 1 ? " plain" : " no bias");
      if (mode == 2) d.b.clear();
      const ConvEpilogue used = mode == 0 ? e : ConvEpilogue{};
      const std::vector<float> shallow =
          run_packed(g, d, 2, false, used, gemm_option(ConvGemm::kShallow));
      const std::vector<float> packed = run_packed(g, d, 2, true, used);
      expect_same_bits(shallow.data(), packed.data(), packed.size(), what);
      if (mode != 1) continue;
      std::vector<float> expected(shallow.size());
      reference::conv2d(g, d.x.data(), d.w.data(), d.b.data(), expected.data());
      const double k = static_cast<double>(g.in_channels * g.kernel_h * g.kernel_w);
      expect_close(shallow, expected, 1e-5 * std::sqrt(k), 1e-4, what + " reference");
    }
  }
}

TEST(ShallowConv, SameBitsForAnyThreadCountAndBatch) {
  if (!shallow_conv_available()) return;
  for (const auto& [name, g] : shallow_geometries()) {
    const ConvInputs d = conv_inputs(g, 77);
    const ConvEpilogue e = epilogue_of(d);
    const ConvPlanOptions shallow = gemm_option(ConvGemm::kShallow);
    std::vector<float> one;
    {
      ThreadCount threads(1);
      one = run_packed(g, d, 1, false, e, shallow);
    }
    for (int n : {2, 3}) {
      ThreadCount threads(n);
      const std::string what = name + " threads " + std::to_string(n);
      expect_same_bits(run_packed(g, d, n, false, e, shallow).data(), one.data(), one.size(), what);
      expect_same_bits(run_packed(g, d, 1, false, e, shallow).data(), one.data(), one.size(),
                       what + ", plan for 1 thread");
    }
    // The last image alone, as a batch of 1.
    ConvGeometry single = g;
    single.batch = 1;
    ConvInputs alone = d;
    const size_t in_image = static_cast<size_t>(g.in_channels * g.in_h * g.in_w);
    const size_t out_image = static_cast<size_t>(g.out_channels * g.out_h * g.out_w);
    alone.x.assign(d.x.end() - static_cast<std::ptrdiff_t>(in_image), d.x.end());
    alone.residual.assign(d.residual.end() - static_cast<std::ptrdiff_t>(out_image),
                          d.residual.end());
    ThreadCount threads(2);
    const std::vector<float> y = run_packed(single, alone, 2, false, epilogue_of(alone), shallow);
    expect_same_bits(y.data(), one.data() + one.size() - out_image, out_image, name + " alone");
  }
}

// kAuto plans the shallow path up to 96 deep on any plane and up to 160 deep on planes of at
// least one run (64 outputs), or, in a build without it, the packed GEMM; never grouped, dilated
// or with unequal strides, nor when a GEMM is asked for.
TEST(ShallowConv, PlannedWhereItPays) {
  const auto shallow = [](const ConvGeometry& g, ConvGemm gemm = ConvGemm::kAuto) {
    return plan_conv(g, 2, gemm_option(gemm)).algorithm == ConvAlgorithm::kShallow;
  };
  const bool available = shallow_conv_available();
  for (const ConvGeometry& g :
       {square(3, 224, 16, 3, 2), square(3, 224, 64, 7, 2), square(16, 56, 72, 1, 1),
        square(96, 7, 576, 1, 1), square(160, 8, 960, 1, 1), square(20, 1, 480, 1, 1)}) {
    EXPECT_EQ(shallow(g), available) << g.in_channels << "→" << g.out_channels;
    EXPECT_EQ(plan_conv(g, 2).packed, !available && packed_gemm_available());
    EXPECT_FALSE(shallow(g, ConvGemm::kBlas));
    EXPECT_FALSE(shallow(g, ConvGemm::kPacked));
  }
  ConvGeometry grouped = square(16, 28, 16, 1, 1);
  grouped.group = 2;
  ConvGeometry dilated = square(4, 28, 16, 3, 1);
  dilated.dilation_h = dilated.dilation_w = 2;
  ConvGeometry unequal = square(4, 28, 16, 3, 1);
  unequal.stride_w = 2;
  unequal.out_w = 14;
  for (const ConvGeometry& g : {square(97, 7, 576, 1, 1), square(161, 56, 64, 1, 1),
                                square(32, 28, 32, 3, 2), grouped, dilated, unequal}) {
    EXPECT_FALSE(shallow(g)) << g.in_channels << "→" << g.out_channels;
  }
  for (const ConvGeometry& g : {grouped, dilated, unequal, square(161, 56, 64, 1, 1)}) {
    EXPECT_FALSE(shallow(g, ConvGemm::kShallow)) << g.in_channels << "→" << g.out_channels;
  }
  EXPECT_EQ(shallow(square(97, 7, 576, 1, 1), ConvGemm::kShallow), available);
}

// The packed Winograd plan transforms its filters straight into the GEMM's panels (16 filters at
// a time in vector lanes): the same bits as the OpenBLAS plan's transformed filters packed
// point by point, for channel counts off the 16 lanes and the 14-row panels.
// conv2d of d under `plan` (its weights prepared where the plan prepares them) into `y`, or into a
// new output of NaNs.
std::vector<float> conv_output(const ConvPlan& plan, const ConvInputs& d, const ConvEpilogue& e,
                               std::vector<float> y = {}) {
  const ConvGeometry& g = plan.geometry;
  std::vector<float> prepared(conv_prepared_weight_floats(plan));
  if (!prepared.empty()) prepare_conv_weights(plan, d.w.data(), prepared.data());
  std::vector<std::byte> ws(conv_workspace_bytes(plan, prepared.empty()
                                                           ? ConvWeightForm::kRaw
                                                           : ConvWeightForm::kPrepared) +
                            64);
  if (y.empty()) y.assign(static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w), NAN);
  conv2d(plan, d.x.data(), d.w.data(), d.b.data(), y.data(), ws.data(), e,
         prepared.empty() ? nullptr : prepared.data());
  return y;
}

// Where conv_residual_may_alias_output allows it, the output may be written over the residual:
// the same bits as with the residual apart, on every packed case (several passes over k, tiles
// across images; Winograd excluded) and every shallow case, at 1 and 2 threads. The others do
// not allow it: Winograd, the depthwise kernel and OpenBLAS write the output before their
// epilogue reads the residual.
TEST(PackedConv, OutputWrittenOverTheResidualKeepsItsBits) {
  // conv2d under `plan`, the output apart from the residual or written over it.
  auto run = [](const ConvPlan& plan, const ConvInputs& d, bool over_residual) {
    ConvEpilogue e = epilogue_of(d);
    if (!over_residual) return conv_output(plan, d, e);
    std::vector<float> y = d.residual;
    e.residual = y.data();
    return conv_output(plan, d, e, std::move(y));
  };
  std::vector<std::tuple<std::string, ConvGeometry, ConvPlanOptions>> cases;
  for (const PackedConvCase& c : kCases) {
    const ConvGeometry g = geometry_of(c);
    if (plan_conv(g, 2, forced()).algorithm == ConvAlgorithm::kWinograd) {
      EXPECT_FALSE(conv_residual_may_alias_output(plan_conv(g, 2, forced()))) << c.name;
      continue;
    }
    cases.emplace_back(c.name, g, forced());
  }
  for (const auto& [name, g] : shallow_geometries()) {
    cases.emplace_back(name + " shallow", g, gemm_option(ConvGemm::kShallow));
  }
  uint32_t seed = 700;
  for (const auto& [name, g, options] : cases) {
    const ConvInputs d = conv_inputs(g, seed += 13);
    for (int threads : {1, 2}) {
      ThreadCount count(threads);
      const ConvPlan plan = plan_conv(g, threads, options);
      EXPECT_EQ(conv_residual_may_alias_output(plan), packed_gemm_available()) << name;
      if (!conv_residual_may_alias_output(plan)) continue;
      const std::vector<float> apart = run(plan, d, false);
      const std::vector<float> over = run(plan, d, true);
      expect_same_bits(over.data(), apart.data(), apart.size(),
                       name + " at " + std::to_string(threads) + " threads");
    }
  }
  const ConvGeometry depthwise = [] {
    ConvGeometry g = square(32, 9, 32, 3, 1);
    g.group = 32;
    return g;
  }();
  EXPECT_FALSE(conv_residual_may_alias_output(plan_conv(depthwise, 2)));
  EXPECT_FALSE(conv_residual_may_alias_output(
      plan_conv(square(64, 14, 64, 1, 1), 2, gemm_option(ConvGemm::kBlas))));
}

// A case for each convolution algorithm and path: the packed GEMM's (direct, im2col, Winograd),
// the shallow path's, OpenBLAS's (direct, im2col, Winograd), the depthwise kernel's vector and
// plane loops.
std::vector<std::tuple<std::string, ConvGeometry, ConvPlanOptions>> every_algorithm_cases() {
  std::vector<std::tuple<std::string, ConvGeometry, ConvPlanOptions>> cases;
  for (const PackedConvCase& c : kCases) cases.emplace_back(c.name, geometry_of(c), forced());
  for (const auto& [name, g] : shallow_geometries()) {
    cases.emplace_back(name + " shallow", g, gemm_option(ConvGemm::kShallow));
  }
  for (const PackedConvCase& c : {kCases[0], kCases[6], kCases[11]}) {
    cases.emplace_back(std::string(c.name) + " blas", geometry_of(c), gemm_option(ConvGemm::kBlas));
  }
  for (const auto& [size, kernel, stride, multiplier] :
       {std::tuple<int64_t, int64_t, int64_t, int64_t>{13, 3, 1, 1}, {12, 5, 2, 1}, {9, 3, 1, 2}}) {
    ConvGeometry g = square(24, size, 24 * multiplier, kernel, stride);
    g.batch = 2;
    g.group = 24;
    cases.emplace_back("depthwise k" + std::to_string(kernel) + " s" + std::to_string(stride) +
                           " x" + std::to_string(multiplier),
                       g, ConvPlanOptions{});
  }
  return cases;
}

// The plans of every_algorithm_cases() took every algorithm this build has.
void expect_every_algorithm(const std::vector<ConvAlgorithm>& planned) {
  std::vector<ConvAlgorithm> expected = {ConvAlgorithm::kDepthwise, ConvAlgorithm::kWinograd,
                                         ConvAlgorithm::kDirectGemm, ConvAlgorithm::kIm2colGemm};
  if (shallow_conv_available()) expected.push_back(ConvAlgorithm::kShallow);
  for (ConvAlgorithm a : expected) {
    EXPECT_NE(std::find(planned.begin(), planned.end(), a), planned.end()) << static_cast<int>(a);
  }
}

// An activation in the epilogue (SiLU, HardSwish, …) gives each output the bits the element-wise
// kernel gives it over the finished output: on every algorithm (packed direct, im2col and
// Winograd, shallow, OpenBLAS direct, im2col and Winograd, depthwise on its vector and plane
// loops), with the rest of the epilogue and without it, at 1 and 2 threads.
TEST(ConvEpilogueActivation, SameBitsAsTheElementwiseKernelAfter) {
  struct Activation {
    const char* name;
    UnaryOp op;
    UnaryParams params;
  };
  UnaryParams hard_sigmoid;
  hard_sigmoid.alpha = 0.2f;
  hard_sigmoid.beta = 0.5f;
  UnaryParams leaky;
  leaky.alpha = 0.1f;
  const Activation activations[] = {{"Silu", UnaryOp::kSilu, {}},
                                    {"HardSwish", UnaryOp::kHardSwish, {}},
                                    {"HardSigmoid", UnaryOp::kHardSigmoid, hard_sigmoid},
                                    {"Sigmoid", UnaryOp::kSigmoid, {}},
                                    {"LeakyRelu", UnaryOp::kLeakyRelu, leaky},
                                    {"Gelu", UnaryOp::kGeluErf, {}}};
  std::vector<ConvAlgorithm> algorithms;
  uint32_t seed = 900;
  for (const auto& [name, g, options] : every_algorithm_cases()) {
    const ConvInputs d = conv_inputs(g, seed += 17);
    for (int threads : {1, 2}) {
      ThreadCount count(threads);
      const ConvPlan plan = plan_conv(g, threads, options);
      algorithms.push_back(plan.algorithm);
      for (bool rest : {false, true}) {
        ConvEpilogue e;
        if (rest) {
          e = epilogue_of(d);
          e.clamp_min = -1.5f;
          e.clamp_max = 4.0f;
        }
        const std::vector<float> finished = conv_output(plan, d, e);
        for (const Activation& a : activations) {
          std::vector<float> expected(finished.size());
          unary_f32(a.op, a.params, finished.data(), expected.data(),
                    static_cast<int64_t>(expected.size()));
          e.activation = a.op;
          e.activation_params = a.params;
          const std::vector<float> fused = conv_output(plan, d, e);
          expect_same_bits(fused.data(), expected.data(), expected.size(),
                           name + ", " + a.name + (rest ? " after BN, residual and clamp" : "") +
                               " at " + std::to_string(threads) + " threads");
        }
      }
    }
  }
  expect_every_algorithm(algorithms);
}

// Denormal inputs read as zero and denormal results are written as zero, on every algorithm at
// 1 and 2 threads: the same bits as with those inputs zeroed, and zeros where every product
// is denormal. The caller's own arithmetic keeps denormals after the call.
TEST(ConvDenormals, ReadAndWrittenAsZero) {
  constexpr float kDenormal = 3e-39f;
  std::vector<ConvAlgorithm> algorithms;
  uint32_t seed = 950;
  for (const auto& [name, g, options] : every_algorithm_cases()) {
    ConvInputs d = conv_inputs(g, seed += 19);
    ConvInputs zeroed = d;
    for (size_t i = 0; i < d.x.size(); i += 3) {
      d.x[i] = i % 2 ? kDenormal : -kDenormal;
      zeroed.x[i] = 0.0f;
    }
    ConvInputs tiny = d;  // products of 1e-20 and 1e-19: 1e-39, each denormal
    std::fill(tiny.x.begin(), tiny.x.end(), 1e-20f);
    std::fill(tiny.w.begin(), tiny.w.end(), 1e-19f);
    std::fill(tiny.b.begin(), tiny.b.end(), 0.0f);
    for (int threads : {1, 2}) {
      ThreadCount count(threads);
      const ConvPlan plan = plan_conv(g, threads, options);
      algorithms.push_back(plan.algorithm);
      const std::string what = name + " at " + std::to_string(threads) + " threads";
      const ConvEpilogue e = epilogue_of(d);
      const std::vector<float> y = conv_output(plan, d, e);
      const std::vector<float> expected = conv_output(plan, zeroed, epilogue_of(zeroed));
      expect_same_bits(y.data(), expected.data(), expected.size(), what);
      for (float v : conv_output(plan, tiny, ConvEpilogue{})) {
        ASSERT_EQ(v, 0.0f) << what;
      }
    }
  }
  expect_every_algorithm(algorithms);
  volatile float a = 1e-20f;
  volatile float b = 1e-19f;
  EXPECT_GT(a * b, 0.0f);
}

TEST(PackedConv, WinogradFiltersPackAsTheTransformThenPack) {
  ThreadCount threads(2);
  for (const auto& [in_c, out_c] : {std::pair<int64_t, int64_t>{37, 30}, {64, 64}, {16, 17}}) {
    const ConvGeometry g = square(in_c, 12, out_c, 3, 1);
    const std::string what = std::to_string(in_c) + " → " + std::to_string(out_c);
    ConvPlanOptions blas_options;
    blas_options.gemm = ConvGemm::kBlas;
    const ConvPlan blas = plan_conv(g, 2, blas_options);
    const ConvPlan packed = plan_conv(g, 2, forced());
    ASSERT_EQ(blas.algorithm, ConvAlgorithm::kWinograd) << what;
    ASSERT_EQ(packed.algorithm, ConvAlgorithm::kWinograd) << what;
    ASSERT_EQ(packed.packed, packed_gemm_available()) << what;
    if (!packed.packed) continue;
    const std::vector<float> w = random_values(static_cast<size_t>(out_c * in_c * 9), 71);
    std::vector<float> transformed(conv_prepared_weight_floats(blas));
    ASSERT_EQ(transformed.size(), static_cast<size_t>(16 * out_c * in_c)) << what;
    prepare_conv_weights(blas, w.data(), transformed.data());
    const size_t point = packed_rows_floats(out_c, in_c);
    std::vector<float> expected(16 * point);
    for (int64_t p = 0; p < 16; ++p) {
      pack_rows(transformed.data() + p * out_c * in_c, in_c, out_c, in_c,
                expected.data() + p * point);
    }
    std::vector<float> prepared(conv_prepared_weight_floats(packed), NAN);
    ASSERT_EQ(prepared.size(), expected.size()) << what;
    prepare_conv_weights(packed, w.data(), prepared.data());
    expect_same_bits(prepared.data(), expected.data(), expected.size(), what);
  }
}

TEST(PackedConv, ImageResultDoesNotDependOnBatch) {
  ThreadCount threads(2);
  for (const PackedConvCase& c : kCases) {
    ConvGeometry g = geometry_of(c);
    g.batch = 5;
    const ConvInputs d = conv_inputs(g, 77);
    const ConvEpilogue e = epilogue_of(d);
    const std::vector<float> batched = run_packed(g, d, 2, true, e);
    const size_t in_image = static_cast<size_t>(g.in_channels * g.in_h * g.in_w);
    const size_t out_image = static_cast<size_t>(g.out_channels * g.out_h * g.out_w);
    // Every image alone, as a batch of 1 (tiles of the batch span images; alone they do not).
    for (size_t n = 0; n < 5; ++n) {
      ConvGeometry single = g;
      single.batch = 1;
      ConvInputs alone = d;
      alone.x.assign(d.x.begin() + n * in_image, d.x.begin() + (n + 1) * in_image);
      alone.residual.assign(d.residual.begin() + n * out_image,
                            d.residual.begin() + (n + 1) * out_image);
      const std::vector<float> y = run_packed(single, alone, 2, true, epilogue_of(alone));
      expect_same_bits(y.data(), batched.data() + n * out_image, out_image,
                       std::string(c.name) + " image " + std::to_string(n));
    }
  }
}

}  // namespace
}  // namespace qforge::kernels
