// Resize: the float32 kernel against the float64 reference (written from the ONNX definition) for
// every mode, coordinate transform and nearest rounding, upsampling and downsampling by integer
// and fractional factors on awkward shapes; the reference backward against central finite
// differences; hand-computed values; the same bits on 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/reference/resize_reference.h"
#include "kernels/resize.h"
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

struct Size {
  int64_t planes, in_h, in_w, out_h, out_w;
  float scale_h, scale_w;  // 0: out / in, as when sizes are given
};

const Size kSizes[] = {
    {3, 7, 5, 14, 10, 2.0f, 2.0f},     // torch's scale_factor 2
    {2, 13, 1, 26, 3, 2.0f, 3.0f},     // one input column
    {1, 5, 7, 13, 17, 0.0f, 0.0f},     // sizes with fractional factors
    {5, 13, 17, 6, 9, 0.0f, 0.0f},     // downsampling
    {2, 9, 11, 4, 5, 0.5f, 0.5f},      // downsampling by scales
    {1, 1, 1, 3, 7, 3.0f, 7.0f},       // one pixel
    {2, 6, 6, 1, 1, 0.0f, 0.0f},       // to one pixel
    {7, 4, 127, 9, 254, 2.25f, 2.0f},  // wide rows, a scale with a fraction
};

ResizeGeometry geometry(const Size& s, ResizeMode mode, ResizeCoordinates coordinates,
                        NearestRounding rounding) {
  ResizeGeometry g;
  g.planes = s.planes;
  g.in_h = s.in_h;
  g.in_w = s.in_w;
  g.out_h = s.out_h;
  g.out_w = s.out_w;
  g.scale_h = s.scale_h > 0 ? s.scale_h : static_cast<float>(s.out_h) / static_cast<float>(s.in_h);
  g.scale_w = s.scale_w > 0 ? s.scale_w : static_cast<float>(s.out_w) / static_cast<float>(s.in_w);
  g.mode = mode;
  g.coordinates = coordinates;
  g.rounding = rounding;
  return g;
}

struct Variant {
  const char* name;
  ResizeMode mode;
  ResizeCoordinates coordinates;
  NearestRounding rounding;
};

const Variant kVariants[] = {
    {"nearest_asymmetric_floor (torch)", ResizeMode::kNearest, ResizeCoordinates::kAsymmetric,
     NearestRounding::kFloor},
    {"nearest_half_pixel_round_prefer_floor", ResizeMode::kNearest, ResizeCoordinates::kHalfPixel,
     NearestRounding::kRoundPreferFloor},
    {"nearest_half_pixel_round_prefer_ceil", ResizeMode::kNearest, ResizeCoordinates::kHalfPixel,
     NearestRounding::kRoundPreferCeil},
    {"nearest_align_corners_round_prefer_floor", ResizeMode::kNearest,
     ResizeCoordinates::kAlignCorners, NearestRounding::kRoundPreferFloor},
    {"nearest_pytorch_half_pixel_ceil", ResizeMode::kNearest, ResizeCoordinates::kPytorchHalfPixel,
     NearestRounding::kCeil},
    {"nearest_asymmetric_round_prefer_ceil", ResizeMode::kNearest, ResizeCoordinates::kAsymmetric,
     NearestRounding::kRoundPreferCeil},
    {"linear_half_pixel", ResizeMode::kLinear, ResizeCoordinates::kHalfPixel,
     NearestRounding::kRoundPreferFloor},
    {"linear_pytorch_half_pixel", ResizeMode::kLinear, ResizeCoordinates::kPytorchHalfPixel,
     NearestRounding::kRoundPreferFloor},
    {"linear_align_corners", ResizeMode::kLinear, ResizeCoordinates::kAlignCorners,
     NearestRounding::kRoundPreferFloor},
    {"linear_asymmetric", ResizeMode::kLinear, ResizeCoordinates::kAsymmetric,
     NearestRounding::kRoundPreferFloor},
};

size_t in_size(const ResizeGeometry& g) {
  return static_cast<size_t>(g.planes * g.in_h * g.in_w);
}
size_t out_size(const ResizeGeometry& g) {
  return static_cast<size_t>(g.planes * g.out_h * g.out_w);
}

struct Result {
  std::vector<float> y, dx;
};

Result run(const ResizeGeometry& g, const std::vector<float>& x, const std::vector<float>& dy,
           int threads) {
  ThreadCount scope(threads);
  const ResizePlan plan = plan_resize(g);
  Result r{std::vector<float>(out_size(g), NAN), std::vector<float>(in_size(g), NAN)};
  resize(plan, x.data(), r.y.data());
  resize_backward(plan, dy.data(), r.dx.data());
  return r;
}

TEST(Resize, MatchesTheReferenceForEveryModeAndShape) {
  for (const Variant& v : kVariants) {
    for (const Size& s : kSizes) {
      const ResizeGeometry g = geometry(s, v.mode, v.coordinates, v.rounding);
      SCOPED_TRACE(std::string(v.name) + " " + std::to_string(s.in_h) + "x" +
                   std::to_string(s.in_w) + " -> " + std::to_string(s.out_h) + "x" +
                   std::to_string(s.out_w));
      const std::vector<float> x = random_values(in_size(g), 3);
      const std::vector<float> dy = random_values(out_size(g), 4);
      const Result r = run(g, x, dy, 2);
      std::vector<double> y(out_size(g)), y_mag(out_size(g)), dx(in_size(g)), dx_mag(in_size(g));
      reference::resize_f64(g, to_double(x).data(), y.data());
      reference::resize_f64(g, absolute(to_double(x)).data(), y_mag.data());
      reference::resize_backward(g, to_double(dy).data(), dx.data());
      reference::resize_backward(g, absolute(to_double(dy)).data(), dx_mag.data());
      expect_matches_reference(r.y, y, y_mag, "y");
      expect_matches_reference(r.dx, dx, dx_mag, "dx");
      const Result one = run(g, x, dy, 1);
      expect_same_bits(one.y.data(), r.y.data(), r.y.size(), "y on 1 and 2 threads");
      expect_same_bits(one.dx.data(), r.dx.data(), r.dx.size(), "dx on 1 and 2 threads");
    }
  }
}

TEST(ResizeReference, BackwardMatchesFiniteDifferences) {
  for (const Variant& v : kVariants) {
    if (v.mode != ResizeMode::kLinear) continue;
    SCOPED_TRACE(v.name);
    const ResizeGeometry g =
        geometry({2, 5, 7, 9, 11, 0.0f, 0.0f}, v.mode, v.coordinates, v.rounding);
    std::vector<double> x = to_double(random_values(in_size(g), 5));
    const std::vector<double> dy = to_double(random_values(out_size(g), 6));
    std::vector<double> y(out_size(g)), dx(in_size(g));
    auto loss = [&] {
      reference::resize_f64(g, x.data(), y.data());
      return testing::dot(y, dy);
    };
    reference::resize_backward(g, dy.data(), dx.data());
    testing::expect_matches_differences(dx, testing::central_differences(x, loss), 1e-8, "dx");
  }
}

// Values worked by hand from the ONNX definitions.
TEST(Resize, HandComputedValues) {
  const std::vector<float> x = {1, 2, 3, 4};  // one 1×4 row
  auto resize_row = [&](ResizeMode mode, ResizeCoordinates coordinates, NearestRounding rounding,
                        int64_t out, float scale) {
    ResizeGeometry g;
    g.in_w = 4;
    g.out_w = out;
    g.scale_w = scale;
    g.mode = mode;
    g.coordinates = coordinates;
    g.rounding = rounding;
    std::vector<float> y(static_cast<size_t>(out));
    resize(plan_resize(g), x.data(), y.data());
    return y;
  };
  // Nearest ×2, asymmetric floor: each value twice.
  EXPECT_EQ(resize_row(ResizeMode::kNearest, ResizeCoordinates::kAsymmetric,
                       NearestRounding::kFloor, 8, 2.0f),
            (std::vector<float>{1, 1, 2, 2, 3, 3, 4, 4}));
  // Linear ×2, half pixel: sources −0.25 (clamped to 0), 0.25, 0.75, 1.25, … , 3.25 (clamped).
  EXPECT_EQ(resize_row(ResizeMode::kLinear, ResizeCoordinates::kHalfPixel, NearestRounding::kFloor,
                       8, 2.0f),
            (std::vector<float>{1, 1.25f, 1.75f, 2.25f, 2.75f, 3.25f, 3.75f, 4}));
  // Linear to 7, align corners: sources 0, 0.5, …, 3.
  EXPECT_EQ(resize_row(ResizeMode::kLinear, ResizeCoordinates::kAlignCorners,
                       NearestRounding::kFloor, 7, 1.75f),
            (std::vector<float>{1, 1.5f, 2, 2.5f, 3, 3.5f, 4}));
  // Nearest ÷2, half pixel: sources 0.5 and 2.5, which round_prefer_floor takes down and
  // round_prefer_ceil up.
  EXPECT_EQ(resize_row(ResizeMode::kNearest, ResizeCoordinates::kHalfPixel,
                       NearestRounding::kRoundPreferFloor, 2, 0.5f),
            (std::vector<float>{1, 3}));
  EXPECT_EQ(resize_row(ResizeMode::kNearest, ResizeCoordinates::kHalfPixel,
                       NearestRounding::kRoundPreferCeil, 2, 0.5f),
            (std::vector<float>{2, 4}));
}

}  // namespace
}  // namespace qforge::kernels
