// GridSample: the float32 kernel against the float64 reference (written from F.grid_sample's
// definition, its reflection an independent fold into one period) for both modes, the three
// paddings and both corner alignments, on awkward sizes (one-pixel axes, grids reaching far
// outside); the input's gradient against the reference's scatter, the grid's against central
// differences of the reference; the same bits on 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/grid_sample.h"
#include "kernels/reference/resize_reference.h"
#include "tests/support/float_checks.h"
#include "tests/support/gradient_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::random_values;
using testing::ThreadCount;
using testing::to_double;

struct Size {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
};

const Size kSizes[] = {
    {2, 3, 5, 7, 4, 6},     // odd sizes
    {1, 2, 1, 9, 3, 5},     // one input row
    {1, 1, 6, 1, 2, 7},     // one input column
    {3, 5, 13, 17, 9, 11},  // more points than a task's grain on two threads
};

// Grid values kept off the places where the sample's pixels change (a pixel's integer
// coordinate, or for nearest a half-integer), so that rounding in float and double agree, with
// a margin of `margin` pixels.
std::vector<float> grid_off_kinks(const GridSampleDims& d, uint32_t seed, float reach) {
  std::vector<float> g =
      random_values(static_cast<size_t>(d.batch * d.out_h * d.out_w * 2), seed, -reach, reach);
  const double shift = d.mode == GridMode::kNearest ? 0.5 : 0.0;
  for (size_t i = 0; i < g.size(); ++i) {
    const int64_t size = i % 2 == 0 ? d.in_w : d.in_h;
    for (int tries = 0; tries < 100; ++tries) {
      const double at = d.align_corners ? (g[i] + 1.0) / 2.0 * static_cast<double>(size - 1)
                                        : ((g[i] + 1.0) * static_cast<double>(size) - 1.0) / 2.0;
      // Off integers and half-integers alike covers the kinks, the folds and the clips.
      const double frac = std::abs(at * 2.0 - std::round(at * 2.0)) / 2.0;
      if (frac > 0.05 && std::abs(at - shift - std::round(at - shift)) > 0.05) break;
      g[i] = std::fmod(g[i] + 0.0371f + reach, 2.0f * reach) - reach;
    }
  }
  return g;
}

TEST(GridSampleKernel, MatchesTheReferenceInEveryModeAtAnyThreadCount) {
  uint32_t seed = 1;
  for (const Size& s : kSizes) {
    for (GridMode mode : {GridMode::kBilinear, GridMode::kNearest}) {
      for (GridPadding padding :
           {GridPadding::kZeros, GridPadding::kBorder, GridPadding::kReflection}) {
        for (bool align : {false, true}) {
          const GridSampleDims d{s.batch, s.channels, s.in_h,  s.in_w, s.out_h,
                                 s.out_w, mode,       padding, align};
          const std::string what = std::to_string(s.in_h) + "x" + std::to_string(s.in_w) +
                                   (mode == GridMode::kNearest ? " nearest" : " bilinear") +
                                   " padding " + std::to_string(static_cast<int>(padding)) +
                                   (align ? " align" : "");
          SCOPED_TRACE(what);
          const size_t nx = static_cast<size_t>(s.batch * s.channels * s.in_h * s.in_w);
          const size_t ny = static_cast<size_t>(s.batch * s.channels * s.out_h * s.out_w);
          const std::vector<float> x = random_values(nx, seed++, -2.0f, 2.0f);
          const std::vector<float> grid = grid_off_kinks(d, seed++, 2.5f);
          const std::vector<float> dy = random_values(ny, seed++, -1.0f, 1.0f);
          std::vector<float> y[2], dx[2], dgrid[2];
          for (int threads : {1, 2}) {
            ThreadCount tc(threads);
            y[threads - 1].resize(ny);
            dx[threads - 1].assign(nx, NAN);
            dgrid[threads - 1].assign(grid.size(), NAN);
            grid_sample(d, x.data(), grid.data(), y[threads - 1].data());
            grid_sample_backward(d, x.data(), grid.data(), dy.data(), dx[threads - 1].data(),
                                 dgrid[threads - 1].data());
          }
          testing::expect_same_bits(y[0].data(), y[1].data(), ny, "forward");
          testing::expect_same_bits(dx[0].data(), dx[1].data(), nx, "dx");
          if (mode == GridMode::kBilinear) {
            testing::expect_same_bits(dgrid[0].data(), dgrid[1].data(), grid.size(), "dgrid");
          }
          const std::vector<double> xd = to_double(x), dyd = to_double(dy);
          std::vector<double> gd = to_double(grid);
          std::vector<double> want(ny), want_dx(nx);
          reference::grid_sample_f64(d, xd.data(), gd.data(), want.data());
          reference::grid_sample_backward_dx(d, gd.data(), dyd.data(), want_dx.data());
          testing::expect_close(y[0], testing::to_float(want), 1e-5, 1e-5, "forward");
          testing::expect_close(dx[0], testing::to_float(want_dx), 1e-5, 1e-5, "dx");
          if (mode != GridMode::kBilinear) continue;
          // The grid's gradient: central differences of Σ dy · y over the float64 reference.
          std::vector<double> out(ny);
          auto loss = [&] {
            reference::grid_sample_f64(d, xd.data(), gd.data(), out.data());
            return testing::dot(out, dyd);
          };
          testing::expect_matches_differences(
              to_double(dgrid[0]), testing::central_differences(gd, loss, 1e-5), 1e-3, "dgrid");
        }
      }
    }
  }
}

// Hand-computed samples: the four corners' mean at the centre of a 2×2 image; -1 is the first
// pixel's centre with align_corners and its left edge without (half of it with zeros padding);
// reflection folds a point past the edge back inside.
TEST(GridSampleKernel, HandComputedSamples) {
  const std::vector<float> x = {1, 2, 3, 4};
  auto sample = [&](float gx, float gy, GridPadding padding, bool align) {
    const GridSampleDims d{1, 1, 2, 2, 1, 1, GridMode::kBilinear, padding, align};
    const float grid[2] = {gx, gy};
    float y = NAN;
    grid_sample(d, x.data(), grid, &y);
    return y;
  };
  EXPECT_FLOAT_EQ(sample(0, 0, GridPadding::kZeros, false), 2.5f);
  EXPECT_FLOAT_EQ(sample(-1, -1, GridPadding::kZeros, true), 1.0f);
  EXPECT_FLOAT_EQ(sample(-1, -0.5f, GridPadding::kZeros, false), 0.5f);   // x at -0.5, y at 0
  EXPECT_FLOAT_EQ(sample(-1, -0.5f, GridPadding::kBorder, false), 1.0f);  // clipped to 0
  // x at -1.5 (align_corners, width 2): reflected about 0 to 1.5 → past 1, again to 0.5.
  EXPECT_FLOAT_EQ(sample(-4, -1, GridPadding::kReflection, true), 1.5f);
  // A NaN grid value samples NaN (as PyTorch), its grid gradient NaN and the input's nothing; an
  // infinite or huge one samples 0 with zeros padding and the edge with border padding (x at 1,
  // y at the middle: the mean of 2 and 4), never an out-of-range index.
  const float inf = INFINITY;
  EXPECT_TRUE(std::isnan(sample(NAN, 0, GridPadding::kZeros, false)));
  EXPECT_TRUE(std::isnan(sample(0, NAN, GridPadding::kBorder, false)));
  EXPECT_TRUE(std::isnan(sample(NAN, 0, GridPadding::kReflection, true)));
  for (float far : {inf, 3e12f}) {
    EXPECT_EQ(sample(far, 0, GridPadding::kZeros, false), 0.0f) << far;
    EXPECT_EQ(sample(-far, 0, GridPadding::kZeros, true), 0.0f) << far;
    EXPECT_FLOAT_EQ(sample(far, 0, GridPadding::kBorder, false), 3.0f) << far;
  }
  EXPECT_TRUE(std::isfinite(sample(3e7f, 0, GridPadding::kReflection, false)));
  EXPECT_TRUE(std::isfinite(sample(3e38f, 0, GridPadding::kReflection, true)));
  EXPECT_TRUE(std::isnan(sample(inf, 0, GridPadding::kReflection, false)));
  for (GridMode mode : {GridMode::kBilinear, GridMode::kNearest}) {
    const GridSampleDims d{1, 1, 2, 2, 1, 1, mode, GridPadding::kZeros, false};
    const float grid[2] = {0.0f, NAN};
    float y = 0;
    grid_sample(d, x.data(), grid, &y);
    EXPECT_TRUE(std::isnan(y));
    const float dy = 1.0f;
    float dx[4], dgrid[2] = {0, 0};
    grid_sample_backward(d, x.data(), grid, &dy, dx, dgrid);
    EXPECT_EQ(std::vector<float>(dx, dx + 4), std::vector<float>(4, 0.0f));
    if (mode == GridMode::kBilinear) {
      EXPECT_TRUE(std::isnan(dgrid[0]) && std::isnan(dgrid[1]));
    }
  }
}

}  // namespace
}  // namespace qforge::kernels
