// Transposed convolution: the float64 reference against central finite differences, the
// float32 forward and backward against the reference on awkward geometries (groups, strides,
// pads, output padding, dilation, depthwise), and the same bits on 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/conv_transpose.h"
#include "kernels/reference/resize_reference.h"
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

struct Case {
  const char* name;
  int64_t batch, in_c, in_h, in_w, out_c;
  int64_t kh, kw, sh, sw, dh, dw;
  int64_t pt, pl, pb, pr, oph, opw;
  int64_t group;
};

ConvTransposeGeometry geometry_of(const Case& c) {
  ConvTransposeGeometry g;
  g.batch = c.batch;
  g.in_channels = c.in_c;
  g.out_channels = c.out_c;
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
  g.out_h = c.sh * (c.in_h - 1) + c.oph + (c.kh - 1) * c.dh + 1 - c.pt - c.pb;
  g.out_w = c.sw * (c.in_w - 1) + c.opw + (c.kw - 1) * c.dw + 1 - c.pl - c.pr;
  g.group = c.group;
  return g;
}

size_t x_size(const ConvTransposeGeometry& g) {
  return static_cast<size_t>(g.batch * g.in_channels * g.in_h * g.in_w);
}
size_t w_size(const ConvTransposeGeometry& g) {
  return static_cast<size_t>(g.in_channels * (g.out_channels / g.group) * g.kernel_h * g.kernel_w);
}
size_t y_size(const ConvTransposeGeometry& g) {
  return static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w);
}

const Case kCases[] = {
    // name, batch, in_c, in_h, in_w, out_c, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oph, opw, group
    {"k2_stride2_unet", 2, 13, 7, 5, 7, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0, 1},
    {"k3_stride2_pad1_output_padding1", 3, 5, 6, 7, 11, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1},
    {"k4_stride2_pad1", 1, 17, 9, 13, 3, 4, 4, 2, 2, 1, 1, 1, 1, 1, 1, 0, 0, 1},
    {"k3_stride1_same", 1, 7, 13, 13, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1},
    {"asymmetric_pads_strides", 2, 3, 5, 11, 4, 3, 5, 3, 2, 1, 1, 0, 2, 2, 1, 2, 1, 1},
    {"dilation2_output_padding", 1, 4, 7, 6, 6, 3, 3, 2, 3, 2, 2, 1, 0, 0, 2, 1, 2, 1},
    {"grouped3", 2, 6, 7, 7, 9, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 3},
    {"depthwise", 1, 13, 9, 7, 13, 4, 4, 2, 2, 1, 1, 1, 1, 1, 1, 0, 0, 13},
    {"pointwise", 3, 13, 5, 9, 31, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1},
    {"pointwise_stride2", 1, 7, 5, 4, 3, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1, 1, 1},
    {"conv1d", 2, 5, 1, 17, 7, 1, 4, 1, 2, 1, 1, 0, 1, 0, 1, 0, 1, 1},
    {"single_pixel", 1, 3, 1, 1, 127, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1},
};

struct Result {
  std::vector<float> y, dx, dw, db;
};

struct Data {
  std::vector<float> x, w, b, dy;
};

Data data_for(const ConvTransposeGeometry& g, uint32_t seed) {
  return {random_values(x_size(g), seed), random_values(w_size(g), seed + 1),
          random_values(static_cast<size_t>(g.out_channels), seed + 2),
          random_values(y_size(g), seed + 3)};
}

Result run(const ConvTransposeGeometry& g, const Data& d, int threads) {
  ThreadCount scope(threads);
  const ConvTransposePlan plan = plan_conv_transpose(g, threads);
  std::vector<std::byte> ws(std::max(conv_transpose_workspace_bytes(plan),
                                     conv_transpose_backward_workspace_bytes(plan)) +
                            64);
  std::byte* aligned = ws.data() + (64 - reinterpret_cast<uintptr_t>(ws.data()) % 64) % 64;
  Result r{std::vector<float>(y_size(g), NAN), std::vector<float>(x_size(g), NAN),
           std::vector<float>(w_size(g), NAN),
           std::vector<float>(static_cast<size_t>(g.out_channels), NAN)};
  conv_transpose2d(plan, d.x.data(), d.w.data(), d.b.data(), r.y.data(), aligned);
  conv_transpose2d_backward(plan, d.x.data(), d.w.data(), d.dy.data(),
                            {r.dx.data(), r.dw.data(), r.db.data()}, aligned);
  return r;
}

struct Reference {
  std::vector<double> y, dx, dw, db;
};

Reference reference_of(const ConvTransposeGeometry& g, const std::vector<double>& x,
                       const std::vector<double>& w, const std::vector<double>& b,
                       const std::vector<double>& dy) {
  Reference r{std::vector<double>(y_size(g)), std::vector<double>(x.size()),
              std::vector<double>(w.size()), std::vector<double>(b.size())};
  reference::conv_transpose2d_f64(g, x.data(), w.data(), b.data(), r.y.data());
  reference::conv_transpose2d_backward(g, x.data(), w.data(), dy.data(), r.dx.data(), r.dw.data(),
                                       r.db.data());
  return r;
}

TEST(ConvTransposeReference, BackwardMatchesFiniteDifferences) {
  for (const Case& c : {kCases[1], kCases[5], kCases[6]}) {
    SCOPED_TRACE(c.name);
    Case small = c;
    small.batch = 1;
    const ConvTransposeGeometry g = geometry_of(small);
    const Data d = data_for(g, 7);
    std::vector<double> x = to_double(d.x), w = to_double(d.w), b = to_double(d.b);
    const std::vector<double> dy = to_double(d.dy);
    std::vector<double> y(y_size(g));
    auto loss = [&] {
      reference::conv_transpose2d_f64(g, x.data(), w.data(), b.data(), y.data());
      return testing::dot(y, dy);
    };
    const Reference ref = reference_of(g, x, w, b, dy);
    testing::expect_matches_differences(ref.dx, testing::central_differences(x, loss), 1e-8, "dx");
    testing::expect_matches_differences(ref.dw, testing::central_differences(w, loss), 1e-8, "dw");
    testing::expect_matches_differences(ref.db, testing::central_differences(b, loss), 1e-8,
                                        "dbias");
  }
}

TEST(ConvTranspose, ForwardAndBackwardMatchTheReference) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    const ConvTransposeGeometry g = geometry_of(c);
    const Data d = data_for(g, 21);
    const Result r = run(g, d, 2);
    const std::vector<double> x = to_double(d.x), w = to_double(d.w), b = to_double(d.b),
                              dy = to_double(d.dy);
    const Reference ref = reference_of(g, x, w, b, dy);
    const Reference mag = reference_of(g, absolute(x), absolute(w), absolute(b), absolute(dy));
    expect_matches_reference(r.y, ref.y, mag.y, "y");
    expect_matches_reference(r.dx, ref.dx, mag.dx, "dx");
    expect_matches_reference(r.dw, ref.dw, mag.dw, "dw");
    expect_matches_reference(r.db, ref.db, mag.db, "dbias");
  }
}

TEST(ConvTranspose, SameBitsOnOneAndTwoThreads) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    const ConvTransposeGeometry g = geometry_of(c);
    const Data d = data_for(g, 31);
    const Result one = run(g, d, 1);
    const Result two = run(g, d, 2);
    expect_same_bits(one.y.data(), two.y.data(), one.y.size(), "y");
    expect_same_bits(one.dx.data(), two.dx.data(), one.dx.size(), "dx");
    expect_same_bits(one.dw.data(), two.dw.data(), one.dw.size(), "dw");
    expect_same_bits(one.db.data(), two.db.data(), one.db.size(), "dbias");
  }
}

}  // namespace
}  // namespace qforge::kernels
