// GroupNormalization and InstanceNormalization (one channel per group) kernels: the float64
// reference backward against central finite differences of the float64 forward, the float32
// forward and backward against the references on awkward shapes, optional gradients and
// accumulation, and bit-identical results for 1 and 2 threads.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "kernels/norm.h"
#include "kernels/reference/norm_softmax_reference.h"
#include "tests/support/float_checks.h"
#include "tests/support/gradient_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::expect_close;
using testing::expect_near_all;
using testing::random_values;
using testing::ThreadCount;
using testing::to_double;
using testing::to_float;

std::string dims_str(const GroupNormDims& d) {
  std::string s("batch ");
  s.append(std::to_string(d.batch))
      .append(" channels ")
      .append(std::to_string(d.channels))
      .append(" groups ")
      .append(std::to_string(d.groups))
      .append(" inner ")
      .append(std::to_string(d.inner));
  return s;
}

size_t numel(const GroupNormDims& d) {
  return static_cast<size_t>(d.batch * d.channels * d.inner);
}

size_t blocks(const GroupNormDims& d) {
  return static_cast<size_t>(d.batch * d.groups);
}

TEST(GroupNormBackward, ReferenceMatchesFiniteDifferences) {
  for (const GroupNormDims& dims :
       {GroupNormDims{2, 6, 3, 5, 1e-5f}, GroupNormDims{2, 3, 3, 4, 1e-5f},
        GroupNormDims{1, 4, 1, 3, 1e-3f}}) {
    const std::string what = dims_str(dims);
    const size_t n = numel(dims);
    const auto c = static_cast<size_t>(dims.channels);
    std::vector<double> x = to_double(random_values(n, 1, -2.0f, 2.0f));
    std::vector<double> scale = to_double(random_values(c, 2, 0.5f, 1.5f));
    std::vector<double> bias = to_double(random_values(c, 3, -0.5f, 0.5f));
    const std::vector<double> dy = to_double(random_values(n, 4, -1.0f, 1.0f));
    std::vector<double> y(n), mean(blocks(dims)), inv(blocks(dims));
    auto loss = [&] {
      reference::group_norm(dims, x.data(), scale.data(), bias.data(), y.data(), mean.data(),
                            inv.data());
      return testing::dot(y, dy);
    };
    const std::vector<double> fd_x = testing::central_differences(x, loss, 1e-6);
    const std::vector<double> fd_scale = testing::central_differences(scale, loss, 1e-6);
    const std::vector<double> fd_bias = testing::central_differences(bias, loss, 1e-6);
    loss();
    std::vector<double> dx(n), dscale(c), dbias(c);
    reference::group_norm_backward(dims, x.data(), scale.data(), mean.data(), inv.data(), dy.data(),
                                   dx.data(), dscale.data(), dbias.data());
    expect_near_all(dx, fd_x, 1e-6, what + " dx");
    expect_near_all(dscale, fd_scale, 1e-6, what + " dscale");
    expect_near_all(dbias, fd_bias, 1e-6, what + " dbias");
  }
}

struct GnRun {
  std::vector<float> y, mean, inv, dx, dscale, dbias;
};

GnRun run_gn(const GroupNormDims& d, const std::vector<float>& x, const std::vector<float>& scale,
             const std::vector<float>& bias, const std::vector<float>& dy) {
  GnRun r;
  r.y.resize(x.size());
  r.mean.resize(blocks(d));
  r.inv.resize(blocks(d));
  group_norm(d, x.data(), scale.data(), bias.data(), r.y.data(), r.mean.data(), r.inv.data());
  r.dx.resize(x.size());
  r.dscale.resize(scale.size());
  r.dbias.resize(scale.size());
  std::vector<float> workspace(static_cast<size_t>(group_norm_backward_workspace(d)));
  group_norm_backward(d, x.data(), scale.data(), r.mean.data(), r.inv.data(), dy.data(),
                      r.dx.data(), r.dscale.data(), r.dbias.data(), workspace.data());
  return r;
}

TEST(GroupNorm, KernelsMatchReferenceOnAwkwardShapes) {
  const std::vector<GroupNormDims> shapes = {
      {1, 1, 1, 13, 1e-5f},  {3, 17, 17, 1, 1e-5f},  {2, 6, 3, 127, 1e-5f}, {3, 13, 13, 17, 1e-5f},
      {1, 12, 4, 49, 1e-3f}, {2, 32, 8, 129, 1e-5f}, {3, 9, 1, 7, 1e-5f},   {127, 2, 2, 3, 1e-5f}};
  uint32_t seed = 10;
  for (const GroupNormDims& d : shapes) {
    const std::string what = dims_str(d);
    const size_t n = numel(d);
    const auto c = static_cast<size_t>(d.channels);
    const std::vector<float> x = random_values(n, seed++, -3.0f, 5.0f);
    const std::vector<float> scale = random_values(c, seed++, 0.5f, 1.5f);
    const std::vector<float> bias = random_values(c, seed++, -0.5f, 0.5f);
    const std::vector<float> dy = random_values(n, seed++, -1.0f, 1.0f);
    const GnRun got = run_gn(d, x, scale, bias, dy);

    const std::vector<double> xd = to_double(x), sd = to_double(scale), bd = to_double(bias);
    const std::vector<double> dyd = to_double(dy);
    std::vector<double> y(n), mean(blocks(d)), inv(blocks(d));
    reference::group_norm(d, xd.data(), sd.data(), bd.data(), y.data(), mean.data(), inv.data());
    std::vector<double> dx(n), dscale(c), dbias(c);
    reference::group_norm_backward(d, xd.data(), sd.data(), mean.data(), inv.data(), dyd.data(),
                                   dx.data(), dscale.data(), dbias.data());
    expect_close(got.y, to_float(y), 1e-5, 1e-5, what + " y");
    expect_close(got.mean, to_float(mean), 1e-5, 1e-5, what + " mean");
    expect_close(got.inv, to_float(inv), 1e-5, 1e-5, what + " inv_std");
    // A block of one value normalises to 0 with inv_std = 1/sqrt(eps): dx is 0 up to rounding
    // amplified by that factor, so it is compared only where the block has spread.
    if (d.channels / d.groups * d.inner > 1) {
      expect_close(got.dx, to_float(dx), 2e-5, 1e-4, what + " dx");
    }
    expect_close(got.dscale, to_float(dscale), 1e-4, 1e-5, what + " dscale");
    expect_close(got.dbias, to_float(dbias), 1e-5, 1e-5, what + " dbias");
  }
}

TEST(GroupNorm, NoBiasIsZeroBias) {
  const GroupNormDims d{2, 6, 2, 11, 1e-5f};
  const std::vector<float> x = random_values(numel(d), 1, -2.0f, 2.0f);
  const std::vector<float> scale = random_values(6, 2, 0.5f, 1.5f);
  const std::vector<float> zeros(6, 0.0f);
  std::vector<float> with(x.size()), without(x.size());
  group_norm(d, x.data(), scale.data(), zeros.data(), with.data(), nullptr, nullptr);
  group_norm(d, x.data(), scale.data(), nullptr, without.data(), nullptr, nullptr);
  testing::expect_same_bits(without.data(), with.data(), x.size(), "y");
}

TEST(GroupNormBackward, OptionalOutputsAndAccumulation) {
  const GroupNormDims d{3, 8, 4, 21, 1e-5f};
  const size_t n = numel(d);
  const std::vector<float> x = random_values(n, 1, -2.0f, 2.0f);
  const std::vector<float> scale = random_values(8, 2, 0.5f, 1.5f);
  const std::vector<float> bias = random_values(8, 3, -0.5f, 0.5f);
  const std::vector<float> dy = random_values(n, 4, -1.0f, 1.0f);
  const GnRun full = run_gn(d, x, scale, bias, dy);
  std::vector<float> workspace(static_cast<size_t>(group_norm_backward_workspace(d)));
  std::vector<float> dx = random_values(n, 5, -1.0f, 1.0f);
  std::vector<float> dbias = random_values(8, 6, -1.0f, 1.0f);
  const std::vector<float> dx0 = dx, dbias0 = dbias;
  group_norm_backward(d, x.data(), scale.data(), full.mean.data(), full.inv.data(), dy.data(),
                      dx.data(), nullptr, dbias.data(), workspace.data(), GradMode::kAccumulate);
  std::vector<float> want(n);
  for (size_t i = 0; i < n; ++i) want[i] = dx0[i] + full.dx[i];
  expect_close(dx, want, 1e-6, 1e-6, "dx");
  for (size_t i = 0; i < dbias.size(); ++i) ASSERT_EQ(dbias[i], dbias0[i] + full.dbias[i]) << i;
  std::vector<float> dscale_only(8);
  group_norm_backward(d, x.data(), scale.data(), full.mean.data(), full.inv.data(), dy.data(),
                      nullptr, dscale_only.data(), nullptr, workspace.data());
  testing::expect_same_bits(dscale_only.data(), full.dscale.data(), 8, "dscale alone");
}

TEST(GroupNorm, SameBitsForAnyThreadCount) {
  for (const GroupNormDims& d :
       {GroupNormDims{5, 64, 64, 1031, 1e-5f}, GroupNormDims{3, 96, 8, 517, 1e-5f}}) {
    const size_t n = numel(d);
    const auto c = static_cast<size_t>(d.channels);
    const std::vector<float> x = random_values(n, 1, -2.0f, 3.0f);
    const std::vector<float> scale = random_values(c, 2, 0.5f, 1.5f);
    const std::vector<float> bias = random_values(c, 3, -0.5f, 0.5f);
    const std::vector<float> dy = random_values(n, 4, -1.0f, 1.0f);
    GnRun one, two;
    {
      ThreadCount threads(1);
      one = run_gn(d, x, scale, bias, dy);
    }
    {
      ThreadCount threads(2);
      two = run_gn(d, x, scale, bias, dy);
    }
    const std::string what = dims_str(d);
    testing::expect_same_bits(one.y.data(), two.y.data(), n, what + " y");
    testing::expect_same_bits(one.dx.data(), two.dx.data(), n, what + " dx");
    testing::expect_same_bits(one.dscale.data(), two.dscale.data(), c, what + " dscale");
    testing::expect_same_bits(one.dbias.data(), two.dbias.data(), c, what + " dbias");
  }
}

}  // namespace
}  // namespace qforge::kernels
