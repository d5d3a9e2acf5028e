// BatchNormalization training and LayerNormalization backward: the float64 references against
// central finite differences of their float64 forwards, the running-stat update in closed form,
// the float32 kernels against the references on awkward shapes, accumulation, and bit-identical
// results for 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "kernels/norm.h"
#include "kernels/reference/norm_softmax_reference.h"
#include "tests/support/errors.h"
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

// Central differences with a step of 1e-6, the step these checks' tolerances were set for.
std::vector<double> finite_differences_1e6(std::vector<double>& v,
                                           const std::function<double()>& loss) {
  return testing::central_differences(v, loss, 1e-6);
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// BatchNormalization training -------------------------------------------------------------------

TEST(BatchNormTrainingBackward, ReferenceMatchesFiniteDifferences) {
  const BatchNormDims dims{2, 3, 5, 1e-5f};
  const size_t n = 2 * 3 * 5;
  std::vector<double> x = to_double(random_values(n, 1, -2.0f, 2.0f));
  std::vector<double> gamma = to_double(random_values(3, 2, 0.5f, 1.5f));
  std::vector<double> beta = to_double(random_values(3, 3, -0.5f, 0.5f));
  const std::vector<double> dy = to_double(random_values(n, 4, -1.0f, 1.0f));
  std::vector<double> y(n), mean(3), inv(3);
  auto loss = [&] {
    reference::batch_norm_training(dims, 0.1, x.data(), gamma.data(), beta.data(), y.data(),
                                   mean.data(), inv.data(), nullptr, nullptr);
    return dot(y, dy);
  };
  const std::vector<double> fd_x = finite_differences_1e6(x, loss);
  const std::vector<double> fd_gamma = finite_differences_1e6(gamma, loss);
  const std::vector<double> fd_beta = finite_differences_1e6(beta, loss);
  loss();
  std::vector<double> dx(n), dgamma(3), dbeta(3);
  reference::batch_norm_training_backward(dims, x.data(), gamma.data(), mean.data(), inv.data(),
                                          dy.data(), dx.data(), dgamma.data(), dbeta.data());
  expect_near_all(dx, fd_x, 1e-6, "dx");
  expect_near_all(dgamma, fd_gamma, 1e-6, "dgamma");
  expect_near_all(dbeta, fd_beta, 1e-6, "dbeta");
}

TEST(BatchNormTraining, RunningStatsFollowPyTorch) {
  // One channel holding 1, 2, 3, 4: mean 2.5, biased variance 1.25, unbiased 5/3.
  const BatchNormDims dims{2, 1, 2, 1e-5f};
  const std::vector<float> x = {1, 2, 3, 4};
  const float gamma = 2.0f, beta = 0.5f;
  std::vector<float> y(4);
  float mean = 0, inv = 0, running_mean = 0.0f, running_var = 1.0f;
  batch_norm_training(dims, {0.1f}, x.data(), &gamma, &beta, y.data(), &mean, &inv, &running_mean,
                      &running_var);
  EXPECT_FLOAT_EQ(mean, 2.5f);
  EXPECT_FLOAT_EQ(inv, static_cast<float>(1.0 / std::sqrt(1.25 + 1e-5)));
  EXPECT_FLOAT_EQ(running_mean, 0.25f);
  EXPECT_FLOAT_EQ(running_var, static_cast<float>(0.9 + 0.1 * 5.0 / 3.0));
  EXPECT_FLOAT_EQ(y[0], static_cast<float>((1 - 2.5) / std::sqrt(1.25 + 1e-5) * 2 + 0.5));
}

TEST(BatchNormTraining, OneValuePerChannelIsInvalid) {
  const BatchNormDims dims{1, 2, 1, 1e-5f};
  const std::vector<float> x = {1, 2}, gamma = {1, 1}, beta = {0, 0};
  std::vector<float> y(2);
  const std::string message = testing::error_of(ErrorKind::kInvalid, [&] {
    batch_norm_training(dims, {}, x.data(), gamma.data(), beta.data(), y.data(), nullptr, nullptr,
                        nullptr, nullptr);
  });
  EXPECT_EQ(message, "batch_norm_training: expected more than 1 value per channel, got 1");
}

struct BnRun {
  std::vector<float> y, mean, inv, running_mean, running_var, dx, dgamma, dbeta;
};

BnRun run_bn(const BatchNormDims& d, const std::vector<float>& x, const std::vector<float>& gamma,
             const std::vector<float>& beta, const std::vector<float>& dy) {
  const auto c = static_cast<size_t>(d.channels);
  BnRun r;
  r.y.resize(x.size());
  r.mean.resize(c);
  r.inv.resize(c);
  r.running_mean = random_values(c, 50, -1.0f, 1.0f);
  r.running_var = random_values(c, 51, 0.5f, 2.0f);
  batch_norm_training(d, {0.1f}, x.data(), gamma.data(), beta.data(), r.y.data(), r.mean.data(),
                      r.inv.data(), r.running_mean.data(), r.running_var.data());
  r.dx.resize(x.size());
  r.dgamma.resize(c);
  r.dbeta.resize(c);
  batch_norm_training_backward(d, x.data(), gamma.data(), r.mean.data(), r.inv.data(), dy.data(),
                               r.dx.data(), r.dgamma.data(), r.dbeta.data());
  return r;
}

TEST(BatchNormTrainingBackward, KernelMatchesReferenceOnAwkwardShapes) {
  const std::vector<BatchNormDims> shapes = {{1, 3, 13, 1e-5f},  {3, 17, 1, 1e-5f},
                                             {2, 5, 127, 1e-3f}, {3, 1, 17, 1e-5f},
                                             {1, 1, 2, 1e-5f},   {3, 13, 129, 1e-5f}};
  uint32_t seed = 10;
  for (const BatchNormDims& d : shapes) {
    const auto n = static_cast<size_t>(d.batch * d.channels * d.inner);
    const auto c = static_cast<size_t>(d.channels);
    const std::string what = "batch " + std::to_string(d.batch) + " channels " +
                             std::to_string(d.channels) + " inner " + std::to_string(d.inner);
    const std::vector<float> x = random_values(n, seed++, -3.0f, 5.0f);
    const std::vector<float> gamma = random_values(c, seed++, 0.5f, 1.5f);
    const std::vector<float> beta = random_values(c, seed++, -0.5f, 0.5f);
    const std::vector<float> dy = random_values(n, seed++, -1.0f, 1.0f);
    const BnRun got = run_bn(d, x, gamma, beta, dy);

    const std::vector<double> xd = to_double(x), gd = to_double(gamma), bd = to_double(beta);
    std::vector<double> y(n), mean(c), inv(c);
    std::vector<double> rm = to_double(random_values(c, 50, -1.0f, 1.0f));
    std::vector<double> rv = to_double(random_values(c, 51, 0.5f, 2.0f));
    reference::batch_norm_training(d, static_cast<double>(0.1f), xd.data(), gd.data(), bd.data(),
                                   y.data(), mean.data(), inv.data(), rm.data(), rv.data());
    std::vector<double> dx(n), dgamma(c), dbeta(c);
    const std::vector<double> dyd = to_double(dy);
    reference::batch_norm_training_backward(d, xd.data(), gd.data(), mean.data(), inv.data(),
                                            dyd.data(), dx.data(), dgamma.data(), dbeta.data());
    expect_close(got.y, to_float(y), 2e-5, 2e-5, what + " y");
    expect_close(got.mean, to_float(mean), 1e-6, 1e-6, what + " mean");
    expect_close(got.inv, to_float(inv), 0, 2e-5, what + " inv_std");
    expect_close(got.running_mean, to_float(rm), 1e-6, 1e-6, what + " running_mean");
    expect_close(got.running_var, to_float(rv), 1e-6, 1e-5, what + " running_var");
    expect_close(got.dx, to_float(dx), 2e-5, 1e-4, what + " dx");
    expect_close(got.dgamma, to_float(dgamma), 1e-4, 1e-5, what + " dgamma");
    expect_close(got.dbeta, to_float(dbeta), 1e-4, 1e-5, what + " dbeta");
  }
}

TEST(BatchNormTrainingBackward, OptionalOutputsAndAccumulation) {
  const BatchNormDims d{3, 4, 19, 1e-5f};
  const size_t n = 3 * 4 * 19;
  const std::vector<float> x = random_values(n, 1, -2.0f, 2.0f);
  const std::vector<float> gamma = random_values(4, 2, 0.5f, 1.5f);
  const std::vector<float> beta = random_values(4, 3, -0.5f, 0.5f);
  const std::vector<float> dy = random_values(n, 4, -1.0f, 1.0f);
  const BnRun full = run_bn(d, x, gamma, beta, dy);
  std::vector<float> dx = random_values(n, 5, -1.0f, 1.0f);
  std::vector<float> dgamma = random_values(4, 6, -1.0f, 1.0f);
  const std::vector<float> dx0 = dx, dgamma0 = dgamma;
  batch_norm_training_backward(d, x.data(), gamma.data(), full.mean.data(), full.inv.data(),
                               dy.data(), dx.data(), dgamma.data(), nullptr, GradMode::kAccumulate);
  // dx's addition may fuse with its last product (one rounding apart); dgamma's is a plain add.
  std::vector<float> want(n);
  for (size_t i = 0; i < n; ++i) want[i] = dx0[i] + full.dx[i];
  expect_close(dx, want, 1e-6, 1e-6, "dx");
  for (size_t i = 0; i < 4; ++i) ASSERT_EQ(dgamma[i], dgamma0[i] + full.dgamma[i]) << i;
  std::vector<float> dbeta_only(4);
  batch_norm_training_backward(d, x.data(), gamma.data(), full.mean.data(), full.inv.data(),
                               dy.data(), nullptr, nullptr, dbeta_only.data());
  testing::expect_same_bits(dbeta_only.data(), full.dbeta.data(), 4, "dbeta alone");
}

TEST(BatchNormTrainingBackward, SameBitsForAnyThreadCount) {
  const BatchNormDims d{5, 7, 3001, 1e-5f};
  const size_t n = 5 * 7 * 3001;
  const std::vector<float> x = random_values(n, 1, -2.0f, 3.0f);
  const std::vector<float> gamma = random_values(7, 2, 0.5f, 1.5f);
  const std::vector<float> beta = random_values(7, 3, -0.5f, 0.5f);
  const std::vector<float> dy = random_values(n, 4, -1.0f, 1.0f);
  BnRun one, two;
  {
    ThreadCount threads(1);
    one = run_bn(d, x, gamma, beta, dy);
  }
  {
    ThreadCount threads(2);
    two = run_bn(d, x, gamma, beta, dy);
  }
  testing::expect_same_bits(one.y.data(), two.y.data(), n, "y");
  testing::expect_same_bits(one.running_var.data(), two.running_var.data(), 7, "running_var");
  testing::expect_same_bits(one.dx.data(), two.dx.data(), n, "dx");
  testing::expect_same_bits(one.dgamma.data(), two.dgamma.data(), 7, "dgamma");
  testing::expect_same_bits(one.dbeta.data(), two.dbeta.data(), 7, "dbeta");
}

// BatchNormalization inference (frozen statistics) --------------------------------------------

TEST(BatchNormInferenceBackward, ReferenceMatchesFiniteDifferences) {
  const BatchNormDims dims{2, 3, 5, 1e-5f};
  const size_t n = 30;
  std::vector<double> x = to_double(random_values(n, 1, -2.0f, 2.0f));
  std::vector<double> gamma = to_double(random_values(3, 2, 0.5f, 1.5f));
  std::vector<double> beta = to_double(random_values(3, 3, -0.5f, 0.5f));
  const std::vector<double> mean = to_double(random_values(3, 4, -0.5f, 0.5f));
  const std::vector<double> var = to_double(random_values(3, 5, 0.5f, 2.0f));
  const std::vector<double> dy = to_double(random_values(n, 6, -1.0f, 1.0f));
  std::vector<double> y(n);
  auto loss = [&] {
    reference::batch_norm_inference(dims, x.data(), gamma.data(), beta.data(), mean.data(),
                                    var.data(), y.data());
    return dot(y, dy);
  };
  const std::vector<double> fd_x = finite_differences_1e6(x, loss);
  const std::vector<double> fd_gamma = finite_differences_1e6(gamma, loss);
  const std::vector<double> fd_beta = finite_differences_1e6(beta, loss);
  std::vector<double> dx(n), dgamma(3), dbeta(3);
  reference::batch_norm_inference_backward(dims, x.data(), gamma.data(), mean.data(), var.data(),
                                           dy.data(), dx.data(), dgamma.data(), dbeta.data());
  expect_near_all(dx, fd_x, 1e-6, "dx");
  expect_near_all(dgamma, fd_gamma, 1e-6, "dgamma");
  expect_near_all(dbeta, fd_beta, 1e-6, "dbeta");
}

TEST(BatchNormInferenceBackward, KernelMatchesReferenceAndThreadCount) {
  const std::vector<BatchNormDims> shapes = {{1, 3, 13, 1e-5f},
                                             {3, 17, 1, 1e-5f},
                                             {1, 1, 1, 1e-5f},
                                             {2, 5, 127, 1e-3f},
                                             {5, 7, 3001, 1e-5f}};
  uint32_t seed = 90;
  for (const BatchNormDims& d : shapes) {
    const auto n = static_cast<size_t>(d.batch * d.channels * d.inner);
    const auto c = static_cast<size_t>(d.channels);
    const std::string what = "batch " + std::to_string(d.batch) + " channels " +
                             std::to_string(d.channels) + " inner " + std::to_string(d.inner);
    const std::vector<float> x = random_values(n, seed++, -3.0f, 5.0f);
    const std::vector<float> gamma = random_values(c, seed++, 0.5f, 1.5f);
    const std::vector<float> mean = random_values(c, seed++, -0.5f, 0.5f);
    const std::vector<float> var = random_values(c, seed++, 0.5f, 2.0f);
    const std::vector<float> dy = random_values(n, seed++, -1.0f, 1.0f);
    std::vector<float> dx[2], dgamma[2], dbeta[2];
    for (int t = 0; t < 2; ++t) {
      ThreadCount threads(t + 1);
      dx[t].resize(n);
      dgamma[t].resize(c);
      dbeta[t].resize(c);
      batch_norm_inference_backward(d, x.data(), gamma.data(), mean.data(), var.data(), dy.data(),
                                    dx[t].data(), dgamma[t].data(), dbeta[t].data());
    }
    testing::expect_same_bits(dx[0].data(), dx[1].data(), n, what + " dx threads");
    testing::expect_same_bits(dgamma[0].data(), dgamma[1].data(), c, what + " dgamma threads");
    testing::expect_same_bits(dbeta[0].data(), dbeta[1].data(), c, what + " dbeta threads");
    const std::vector<double> xd = to_double(x), gd = to_double(gamma), md = to_double(mean);
    const std::vector<double> vd = to_double(var), dyd = to_double(dy);
    std::vector<double> rdx(n), rdg(c), rdb(c);
    reference::batch_norm_inference_backward(d, xd.data(), gd.data(), md.data(), vd.data(),
                                             dyd.data(), rdx.data(), rdg.data(), rdb.data());
    expect_close(dx[0], to_float(rdx), 1e-6, 1e-5, what + " dx");
    expect_close(dgamma[0], to_float(rdg), 1e-4, 1e-5, what + " dgamma");
    expect_close(dbeta[0], to_float(rdb), 1e-4, 1e-5, what + " dbeta");
  }
}

// LayerNormalization ----------------------------------------------------------------------------

TEST(LayerNormBackward, ReferenceMatchesFiniteDifferences) {
  const LayerNormDims dims{3, 7, 1e-5f};
  const size_t n = 21;
  std::vector<double> x = to_double(random_values(n, 1, -2.0f, 2.0f));
  std::vector<double> scale = to_double(random_values(7, 2, 0.5f, 1.5f));
  std::vector<double> bias = to_double(random_values(7, 3, -0.5f, 0.5f));
  const std::vector<double> dy = to_double(random_values(n, 4, -1.0f, 1.0f));
  std::vector<double> y(n), mean(3), inv(3);
  auto loss = [&] {
    reference::layer_norm(dims, x.data(), scale.data(), bias.data(), y.data(), mean.data(),
                          inv.data());
    return dot(y, dy);
  };
  const std::vector<double> fd_x = finite_differences_1e6(x, loss);
  const std::vector<double> fd_scale = finite_differences_1e6(scale, loss);
  const std::vector<double> fd_bias = finite_differences_1e6(bias, loss);
  loss();
  std::vector<double> dx(n), dscale(7), dbias(7);
  reference::layer_norm_backward(dims, x.data(), scale.data(), mean.data(), inv.data(), dy.data(),
                                 dx.data(), dscale.data(), dbias.data());
  expect_near_all(dx, fd_x, 1e-6, "dx");
  expect_near_all(dscale, fd_scale, 1e-6, "dscale");
  expect_near_all(dbias, fd_bias, 1e-6, "dbias");
}

struct LnRun {
  std::vector<float> dx, dscale, dbias;
};

LnRun run_ln(const LayerNormDims& d, const std::vector<float>& x, const std::vector<float>& scale,
             const std::vector<float>& bias, const std::vector<float>& dy) {
  std::vector<float> y(x.size()), mean(static_cast<size_t>(d.rows)),
      inv(static_cast<size_t>(d.rows));
  layer_norm(d, x.data(), scale.data(), bias.data(), y.data(), mean.data(), inv.data());
  LnRun r{std::vector<float>(x.size()), std::vector<float>(scale.size()),
          std::vector<float>(scale.size())};
  layer_norm_backward(d, x.data(), scale.data(), mean.data(), inv.data(), dy.data(), r.dx.data(),
                      r.dscale.data(), r.dbias.data());
  return r;
}

TEST(LayerNormBackward, KernelMatchesReferenceOnAwkwardShapes) {
  const std::vector<LayerNormDims> shapes = {{1, 1, 1e-5f},    {1, 13, 1e-5f},  {3, 17, 1e-5f},
                                             {13, 127, 1e-5f}, {127, 3, 1e-5f}, {3, 96, 1e-6f},
                                             {200, 33, 1e-5f}};
  uint32_t seed = 30;
  for (const LayerNormDims& d : shapes) {
    const auto n = static_cast<size_t>(d.rows * d.size);
    const auto s = static_cast<size_t>(d.size);
    const std::string what = "rows " + std::to_string(d.rows) + " size " + std::to_string(d.size);
    const std::vector<float> x = random_values(n, seed++, -3.0f, 5.0f);
    const std::vector<float> scale = random_values(s, seed++, 0.5f, 1.5f);
    const std::vector<float> bias = random_values(s, seed++, -0.5f, 0.5f);
    const std::vector<float> dy = random_values(n, seed++, -1.0f, 1.0f);
    const LnRun got = run_ln(d, x, scale, bias, dy);
    const std::vector<double> xd = to_double(x), sd = to_double(scale), bd = to_double(bias);
    const std::vector<double> dyd = to_double(dy);
    std::vector<double> y(n), mean(static_cast<size_t>(d.rows)), inv(static_cast<size_t>(d.rows));
    reference::layer_norm(d, xd.data(), sd.data(), bd.data(), y.data(), mean.data(), inv.data());
    std::vector<double> dx(n), dscale(s), dbias(s);
    reference::layer_norm_backward(d, xd.data(), sd.data(), mean.data(), inv.data(), dyd.data(),
                                   dx.data(), dscale.data(), dbias.data());
    // A single-element row normalises to 0 with inv_std = 1/sqrt(eps): dx is 0 up to rounding
    // amplified by that factor, so only compare it where the row has spread.
    if (d.size > 1) expect_close(got.dx, to_float(dx), 2e-5, 1e-4, what + " dx");
    expect_close(got.dscale, to_float(dscale), 1e-4, 1e-5, what + " dscale");
    expect_close(got.dbias, to_float(dbias), 1e-5, 1e-5, what + " dbias");
  }
}

TEST(LayerNormBackward, OptionalOutputsAndAccumulation) {
  const LayerNormDims d{9, 21, 1e-5f};
  const std::vector<float> x = random_values(189, 1, -2.0f, 2.0f);
  const std::vector<float> scale = random_values(21, 2, 0.5f, 1.5f);
  const std::vector<float> bias = random_values(21, 3, -0.5f, 0.5f);
  const std::vector<float> dy = random_values(189, 4, -1.0f, 1.0f);
  const LnRun full = run_ln(d, x, scale, bias, dy);
  std::vector<float> y(189), mean(9), inv(9);
  layer_norm(d, x.data(), scale.data(), bias.data(), y.data(), mean.data(), inv.data());
  std::vector<float> dx = random_values(189, 5, -1.0f, 1.0f);
  std::vector<float> dbias = random_values(21, 6, -1.0f, 1.0f);
  const std::vector<float> dx0 = dx, dbias0 = dbias;
  layer_norm_backward(d, x.data(), scale.data(), mean.data(), inv.data(), dy.data(), dx.data(),
                      nullptr, dbias.data(), GradMode::kAccumulate);
  std::vector<float> want(dx.size());
  for (size_t i = 0; i < dx.size(); ++i) want[i] = dx0[i] + full.dx[i];
  expect_close(dx, want, 1e-6, 1e-6, "dx");
  for (size_t i = 0; i < dbias.size(); ++i) ASSERT_EQ(dbias[i], dbias0[i] + full.dbias[i]) << i;
  std::vector<float> dscale_only(21);
  layer_norm_backward(d, x.data(), scale.data(), mean.data(), inv.data(), dy.data(), nullptr,
                      dscale_only.data(), nullptr);
  testing::expect_same_bits(dscale_only.data(), full.dscale.data(), 21, "dscale alone");
}

TEST(LayerNormBackward, SameBitsForAnyThreadCount) {
  const LayerNormDims d{4099, 96, 1e-5f};
  const size_t n = 4099 * 96;
  const std::vector<float> x = random_values(n, 1, -2.0f, 3.0f);
  const std::vector<float> scale = random_values(96, 2, 0.5f, 1.5f);
  const std::vector<float> bias = random_values(96, 3, -0.5f, 0.5f);
  const std::vector<float> dy = random_values(n, 4, -1.0f, 1.0f);
  LnRun one, two;
  {
    ThreadCount threads(1);
    one = run_ln(d, x, scale, bias, dy);
  }
  {
    ThreadCount threads(2);
    two = run_ln(d, x, scale, bias, dy);
  }
  testing::expect_same_bits(one.dx.data(), two.dx.data(), n, "dx");
  testing::expect_same_bits(one.dscale.data(), two.dscale.data(), 96, "dscale");
  testing::expect_same_bits(one.dbias.data(), two.dbias.data(), 96, "dbias");
}

}  // namespace
}  // namespace qforge::kernels
