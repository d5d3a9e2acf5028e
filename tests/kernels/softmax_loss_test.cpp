// Softmax and log-softmax backward, cross-entropy and KL distillation: the float64 references
// against central
// finite differences of their float64 forwards, the float32 kernels against the references on
// awkward shapes (softmax axis innermost or not), label checks, accumulation, and bit-identical
// results for 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kernels/reference/norm_softmax_reference.h"
#include "kernels/softmax.h"
#include "tests/support/errors.h"
#include "tests/support/float_checks.h"
#include "tests/support/gradient_checks.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_count.h"
#include "tools/io/npz.h"

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

std::vector<int64_t> random_labels(int64_t batch, int64_t classes, uint32_t seed) {
  const std::vector<float> u = random_values(static_cast<size_t>(batch), seed, 0.0f, 1.0f);
  std::vector<int64_t> labels(u.size());
  for (size_t i = 0; i < u.size(); ++i) {
    labels[i] = std::min<int64_t>(classes - 1, static_cast<int64_t>(u[i] * classes));
  }
  return labels;
}

// Softmax ---------------------------------------------------------------------------------------

TEST(SoftmaxBackward, ReferenceMatchesFiniteDifferences) {
  for (const SoftmaxDims& dims : {SoftmaxDims{2, 5, 1}, SoftmaxDims{2, 4, 3}}) {
    const size_t n = static_cast<size_t>(dims.outer * dims.axis_size * dims.inner);
    std::vector<double> x = to_double(random_values(n, 1, -3.0f, 3.0f));
    const std::vector<double> dy = to_double(random_values(n, 2, -1.0f, 1.0f));
    std::vector<double> y(n);
    auto loss = [&] {
      reference::softmax(dims, x.data(), y.data());
      double s = 0;
      for (size_t i = 0; i < n; ++i) s += y[i] * dy[i];
      return s;
    };
    const std::vector<double> fd = finite_differences_1e6(x, loss);
    loss();
    std::vector<double> dx(n);
    reference::softmax_backward(dims, y.data(), dy.data(), dx.data());
    expect_near_all(dx, fd, 1e-7, "inner " + std::to_string(dims.inner));
  }
}

std::vector<float> run_softmax_backward(const SoftmaxDims& d, const std::vector<float>& x,
                                        const std::vector<float>& dy) {
  std::vector<float> y(x.size()), dx(x.size());
  softmax(d, x.data(), y.data());
  softmax_backward(d, y.data(), dy.data(), dx.data());
  return dx;
}

TEST(SoftmaxBackward, KernelMatchesReferenceOnAwkwardShapes) {
  const std::vector<SoftmaxDims> shapes = {{1, 1, 1},  {3, 13, 1},  {1, 127, 1}, {17, 3, 1},
                                           {2, 17, 3}, {3, 5, 127}, {1, 13, 65}, {5, 1000, 1}};
  uint32_t seed = 40;
  for (const SoftmaxDims& d : shapes) {
    const size_t n = static_cast<size_t>(d.outer * d.axis_size * d.inner);
    const std::string what =
        std::to_string(d.outer) + "x" + std::to_string(d.axis_size) + "x" + std::to_string(d.inner);
    const std::vector<float> x = random_values(n, seed++, -5.0f, 5.0f);
    const std::vector<float> dy = random_values(n, seed++, -1.0f, 1.0f);
    std::vector<float> y(n);
    softmax(d, x.data(), y.data());
    std::vector<float> dx(n);
    softmax_backward(d, y.data(), dy.data(), dx.data());
    // The reference backward from the kernel's own y: this checks the backward alone.
    const std::vector<double> yd = to_double(y), dyd = to_double(dy);
    std::vector<double> expected(n);
    reference::softmax_backward(d, yd.data(), dyd.data(), expected.data());
    expect_close(dx, to_float(expected), 1e-6, 1e-5, what);
    std::vector<float> acc = random_values(n, seed++, -1.0f, 1.0f);
    const std::vector<float> acc0 = acc;
    softmax_backward(d, y.data(), dy.data(), acc.data(), GradMode::kAccumulate);
    std::vector<float> want(n);
    for (size_t i = 0; i < n; ++i) want[i] = acc0[i] + dx[i];
    expect_close(acc, want, 1e-6, 1e-6, what + " accumulated");
  }
}

TEST(SoftmaxBackward, SameBitsForAnyThreadCount) {
  for (const SoftmaxDims& d : {SoftmaxDims{4001, 37, 1}, SoftmaxDims{7, 33, 901}}) {
    const size_t n = static_cast<size_t>(d.outer * d.axis_size * d.inner);
    const std::vector<float> x = random_values(n, 1, -5.0f, 5.0f);
    const std::vector<float> dy = random_values(n, 2, -1.0f, 1.0f);
    std::vector<float> one, two;
    {
      ThreadCount threads(1);
      one = run_softmax_backward(d, x, dy);
    }
    {
      ThreadCount threads(2);
      two = run_softmax_backward(d, x, dy);
    }
    testing::expect_same_bits(one.data(), two.data(), n, "softmax backward");
  }
}

// Log-softmax -----------------------------------------------------------------------------------

TEST(LogSoftmax, ReferenceBackwardMatchesFiniteDifferences) {
  for (const SoftmaxDims& dims : {SoftmaxDims{2, 5, 1}, SoftmaxDims{2, 4, 3}}) {
    const size_t n = static_cast<size_t>(dims.outer * dims.axis_size * dims.inner);
    std::vector<double> x = to_double(random_values(n, 3, -3.0f, 3.0f));
    const std::vector<double> dy = to_double(random_values(n, 4, -1.0f, 1.0f));
    std::vector<double> y(n);
    auto loss = [&] {
      reference::log_softmax(dims, x.data(), y.data());
      double s = 0;
      for (size_t i = 0; i < n; ++i) s += y[i] * dy[i];
      return s;
    };
    const std::vector<double> fd = finite_differences_1e6(x, loss);
    std::vector<double> dx(n);
    reference::log_softmax_backward(dims, x.data(), dy.data(), dx.data());
    expect_near_all(dx, fd, 1e-7, "inner " + std::to_string(dims.inner));
  }
}

// The kernel against the float64 reference on awkward shapes (axis innermost or not, one class,
// logits far apart so that exp underflows), overwriting and accumulating, and the same bits at 1
// and 2 threads.
TEST(LogSoftmax, KernelMatchesReferenceOnAwkwardShapesAtAnyThreadCount) {
  const std::vector<SoftmaxDims> shapes = {{1, 1, 1},  {3, 13, 1},  {1, 127, 1}, {17, 3, 1},
                                           {2, 17, 3}, {3, 5, 127}, {1, 13, 65}, {5, 1000, 1}};
  uint32_t seed = 60;
  for (const SoftmaxDims& d : shapes) {
    for (float spread : {5.0f, 80.0f}) {
      const size_t n = static_cast<size_t>(d.outer * d.axis_size * d.inner);
      const std::string what = std::to_string(d.outer) + "x" + std::to_string(d.axis_size) + "x" +
                               std::to_string(d.inner) + " spread " + std::to_string(spread);
      const std::vector<float> x = random_values(n, seed++, -spread, spread);
      const std::vector<float> dy = random_values(n, seed++, -1.0f, 1.0f);
      std::vector<float> y(n), dx(n);
      std::vector<float> y2(n), dx2(n);
      {
        ThreadCount threads(1);
        log_softmax(d, x.data(), y.data());
        log_softmax_backward(d, y.data(), dy.data(), dx.data());
      }
      {
        ThreadCount threads(2);
        log_softmax(d, x.data(), y2.data());
        log_softmax_backward(d, y2.data(), dy.data(), dx2.data());
      }
      testing::expect_same_bits(y.data(), y2.data(), n, what + " forward");
      testing::expect_same_bits(dx.data(), dx2.data(), n, what + " backward");
      const std::vector<double> xd = to_double(x), dyd = to_double(dy);
      std::vector<double> want_y(n), want_dx(n);
      reference::log_softmax(d, xd.data(), want_y.data());
      reference::log_softmax_backward(d, xd.data(), dyd.data(), want_dx.data());
      // y = (x − m) − log Σ: a few roundings of values up to 2·spread.
      expect_close(y, to_float(want_y), 1e-6, 1e-5, what + " forward");
      expect_close(dx, to_float(want_dx), 1e-5, 1e-5, what + " backward");
      std::vector<float> acc = random_values(n, seed++, -1.0f, 1.0f);
      const std::vector<float> acc0 = acc;
      log_softmax_backward(d, y.data(), dy.data(), acc.data(), GradMode::kAccumulate);
      std::vector<float> want(n);
      for (size_t i = 0; i < n; ++i) want[i] = acc0[i] + dx[i];
      expect_close(acc, want, 1e-6, 1e-6, what + " accumulated");
    }
  }
}

// Cross-entropy ---------------------------------------------------------------------------------

TEST(CrossEntropy, ReferenceMatchesFiniteDifferences) {
  const LossDims dims{3, 7};
  std::vector<double> z = to_double(random_values(21, 1, -4.0f, 4.0f));
  const std::vector<int64_t> labels = {0, 6, 3};
  const std::vector<double> fd = finite_differences_1e6(
      z, [&] { return reference::cross_entropy(dims, z.data(), labels.data()); });
  std::vector<double> dz(21);
  reference::cross_entropy_backward(dims, z.data(), labels.data(), 1.0, dz.data());
  expect_near_all(dz, fd, 1e-7, "dlogits");
}

TEST(CrossEntropy, SmoothedReferenceMatchesFiniteDifferences) {
  const LossDims dims{3, 7};
  std::vector<double> z = to_double(random_values(21, 3, -4.0f, 4.0f));
  const std::vector<int64_t> labels = {4, 0, 6};
  for (double eps : {0.1, 0.6, 1.0}) {
    const std::vector<double> fd = finite_differences_1e6(
        z, [&] { return reference::cross_entropy(dims, z.data(), labels.data(), eps); });
    std::vector<double> dz(21);
    reference::cross_entropy_backward(dims, z.data(), labels.data(), 1.0, dz.data(), eps);
    expect_near_all(dz, fd, 1e-7, "dlogits, label smoothing " + std::to_string(eps));
  }
}

// A loss and its gradient against a PyTorch golden's "<loss_key>" and "<grad_key>": the loss
// within loss_tolerance relative, the gradient as expect_close(1e-7, 1e-5).
void expect_golden(const std::map<std::string, Tensor>& golden, const std::string& loss_key,
                   const std::string& grad_key, float loss, const std::vector<float>& grad,
                   double loss_tolerance, const std::string& what) {
  const float want = golden.at(loss_key).data<float>()[0];
  EXPECT_NEAR(loss, want, loss_tolerance * std::abs(want)) << what;
  const Tensor& want_grad = golden.at(grad_key);
  ASSERT_EQ(static_cast<size_t>(want_grad.numel()), grad.size()) << what;
  const std::vector<float> expected(want_grad.data<float>(), want_grad.data<float>() + grad.size());
  expect_close(grad, expected, 1e-7, 1e-5, what);
}

// F.cross_entropy(s, labels, label_smoothing=ε) and its autograd gradient
// (data/generate/distillation_goldens.py), ε = 0 included.
TEST(CrossEntropy, LabelSmoothingMatchesPyTorch) {
  const auto golden = io::read_npz(testing::data_path("golden/distill/kernel.npz"));
  const Tensor& logits = golden.at("student");
  const Tensor& labels = golden.at("labels");
  const LossDims d{logits.dim(0), logits.dim(1)};
  const auto n = static_cast<size_t>(logits.numel());
  for (const char* eps : {"0", "0.1", "0.35"}) {
    const float e = std::stof(eps);
    std::vector<float> p(n), rows(static_cast<size_t>(d.batch)), dz(n);
    const float loss =
        cross_entropy(d, logits.data<float>(), labels.data<int64_t>(), p.data(), rows.data(), e);
    cross_entropy_backward(d, p.data(), labels.data<int64_t>(), 1.0f, dz.data(),
                           GradMode::kOverwrite, e);
    expect_golden(golden, std::string("ce_loss/") + eps, std::string("ce_grad/") + eps, loss, dz,
                  1e-6, std::string("label smoothing ") + eps);
  }
}

TEST(CrossEntropy, KnownValue) {
  // Uniform logits over 4 classes: loss ln 4, gradient (1/4 - onehot) / batch.
  const LossDims dims{2, 4};
  const std::vector<float> z(8, 0.5f);
  const std::vector<int64_t> labels = {1, 3};
  std::vector<float> p(8), rows(2), dz(8);
  EXPECT_FLOAT_EQ(cross_entropy(dims, z.data(), labels.data(), p.data(), rows.data()),
                  static_cast<float>(std::log(4.0)));
  cross_entropy_backward(dims, p.data(), labels.data(), 1.0f, dz.data());
  const std::vector<float> expected = {0.125f, -0.375f, 0.125f, 0.125f,
                                       0.125f, 0.125f,  0.125f, -0.375f};
  expect_close(dz, expected, 1e-7, 0, "dlogits");
}

TEST(CrossEntropy, KernelMatchesReferenceOnAwkwardShapes) {
  const std::vector<LossDims> shapes = {{1, 1}, {1, 10}, {3, 13}, {17, 3}, {3, 1000}, {129, 17}};
  uint32_t seed = 60;
  for (const LossDims& d : shapes) {
    const size_t n = static_cast<size_t>(d.batch * d.classes);
    const std::string what = std::to_string(d.batch) + "x" + std::to_string(d.classes);
    const std::vector<float> z = random_values(n, seed++, -8.0f, 8.0f);
    const std::vector<int64_t> labels = random_labels(d.batch, d.classes, seed++);
    std::vector<float> p(n), rows(static_cast<size_t>(d.batch)), dz(n);
    const float loss = cross_entropy(d, z.data(), labels.data(), p.data(), rows.data());
    cross_entropy_backward(d, p.data(), labels.data(), 0.75f, dz.data());
    const std::vector<double> zd = to_double(z);
    const double expected_loss = reference::cross_entropy(d, zd.data(), labels.data());
    EXPECT_NEAR(loss, expected_loss, 1e-6 * (1 + std::abs(expected_loss))) << what;
    std::vector<double> expected(n);
    reference::cross_entropy_backward(d, zd.data(), labels.data(), 0.75, expected.data());
    expect_close(dz, to_float(expected), 1e-7, 1e-5, what);
    // Smoothed, and accumulated onto what dz holds.
    const float eps = 0.25f;
    const float smoothed = cross_entropy(d, z.data(), labels.data(), p.data(), rows.data(), eps);
    std::vector<float> acc = dz;
    cross_entropy_backward(d, p.data(), labels.data(), 0.75f, acc.data(), GradMode::kAccumulate,
                           eps);
    const double expected_smoothed = reference::cross_entropy(d, zd.data(), labels.data(), eps);
    EXPECT_NEAR(smoothed, expected_smoothed, 1e-6 * (1 + std::abs(expected_smoothed))) << what;
    std::vector<double> smoothed_grad(n);
    reference::cross_entropy_backward(d, zd.data(), labels.data(), 0.75, smoothed_grad.data(), eps);
    for (size_t i = 0; i < n; ++i) smoothed_grad[i] += dz[i];
    expect_close(acc, to_float(smoothed_grad), 1e-7, 1e-5, what + ", smoothed, accumulated");
  }
}

TEST(CrossEntropy, LabelSmoothingOutsideZeroOneIsInvalid) {
  const LossDims dims{1, 3};
  const std::vector<float> z(3, 0.0f);
  const std::vector<int64_t> labels = {2};
  std::vector<float> p(3), rows(1);
  for (float eps : {-0.1f, 1.5f, std::nanf("")}) {
    const std::string message = testing::error_of(ErrorKind::kInvalid, [&] {
      cross_entropy(dims, z.data(), labels.data(), p.data(), rows.data(), eps);
    });
    EXPECT_EQ(message.rfind("cross_entropy: expected label smoothing in [0, 1], got ", 0), 0u)
        << message;
  }
}

TEST(CrossEntropy, LabelOutOfRangeIsInvalid) {
  const LossDims dims{2, 3};
  const std::vector<float> z(6, 0.0f);
  const std::vector<int64_t> labels = {2, 3};
  std::vector<float> p(6), rows(2);
  const std::string message = testing::error_of(ErrorKind::kInvalid, [&] {
    cross_entropy(dims, z.data(), labels.data(), p.data(), rows.data());
  });
  EXPECT_EQ(message, "cross_entropy: expected labels in [0, 3), got 3 for sample 1");
}

TEST(CrossEntropy, SameBitsForAnyThreadCount) {
  const LossDims d{3001, 101};
  const size_t n = 3001 * 101;
  const std::vector<float> z = random_values(n, 1, -6.0f, 6.0f);
  const std::vector<int64_t> labels = random_labels(d.batch, d.classes, 2);
  float loss[2];
  std::vector<float> dz[2];
  for (int t = 0; t < 2; ++t) {
    ThreadCount threads(t + 1);
    std::vector<float> p(n), rows(3001);
    dz[t].resize(n);
    loss[t] = cross_entropy(d, z.data(), labels.data(), p.data(), rows.data(), 0.1f);
    cross_entropy_backward(d, p.data(), labels.data(), 1.0f, dz[t].data(), GradMode::kOverwrite,
                           0.1f);
  }
  testing::expect_same_bits(&loss[0], &loss[1], 1, "loss");
  testing::expect_same_bits(dz[0].data(), dz[1].data(), n, "dlogits");
}

// Distillation ----------------------------------------------------------------------------------

TEST(DistillationKl, ReferenceMatchesFiniteDifferences) {
  const LossDims dims{3, 6};
  for (const DistillationOptions& o :
       {DistillationOptions{1.0f, true}, DistillationOptions{4.0f, true},
        DistillationOptions{2.5f, false}}) {
    std::vector<double> s = to_double(random_values(18, 1, -4.0f, 4.0f));
    const std::vector<double> t = to_double(random_values(18, 2, -4.0f, 4.0f));
    const std::vector<double> fd = finite_differences_1e6(
        s, [&] { return reference::distillation_kl(dims, o, s.data(), t.data()); });
    std::vector<double> ds(18);
    reference::distillation_kl_backward(dims, o, s.data(), t.data(), 1.0, ds.data());
    expect_near_all(ds, fd, 1e-7, "T = " + std::to_string(o.temperature));
  }
}

// The kernel against PyTorch's F.kl_div(F.log_softmax(s / T), F.softmax(t / T), 'batchmean')
// (· T² or not) and its autograd gradient (data/generate/distillation_goldens.py): the direction
// of the divergence (teacher ‖ student), the mean over the batch and the T² factor.
TEST(DistillationKl, KernelMatchesPyTorch) {
  const auto golden = io::read_npz(testing::data_path("golden/distill/kernel.npz"));
  const Tensor& student = golden.at("student");
  const Tensor& teacher = golden.at("teacher");
  const LossDims d{student.dim(0), student.dim(1)};
  const auto n = static_cast<size_t>(student.numel());
  const std::pair<const char*, DistillationOptions> cases[] = {
      {"1", {1.0f, true}}, {"4", {4.0f, true}}, {"2.5_plain", {2.5f, false}}};
  for (const auto& [name, o] : cases) {
    std::vector<float> p(n), q(n), rows(static_cast<size_t>(d.batch)), ds(n);
    const float loss = distillation_kl(d, o, student.data<float>(), teacher.data<float>(), p.data(),
                                       q.data(), rows.data());
    distillation_kl_backward(d, o, p.data(), q.data(), 1.0f, ds.data());
    expect_golden(golden, std::string("loss/") + name, std::string("grad/") + name, loss, ds, 1e-5,
                  std::string("T = ") + name);
  }
}

TEST(DistillationKl, IdenticalLogitsGiveZero) {
  const LossDims dims{2, 5};
  const std::vector<float> z = random_values(10, 3, -2.0f, 2.0f);
  std::vector<float> p(10), q(10), rows(2), ds(10);
  const DistillationOptions o{3.0f, true};
  EXPECT_NEAR(distillation_kl(dims, o, z.data(), z.data(), p.data(), q.data(), rows.data()), 0.0f,
              1e-7);
  distillation_kl_backward(dims, o, p.data(), q.data(), 1.0f, ds.data());
  for (float v : ds) EXPECT_EQ(v, 0.0f);
}

TEST(DistillationKl, KernelMatchesReferenceOnAwkwardShapes) {
  const std::vector<LossDims> shapes = {{1, 1}, {1, 10}, {3, 13}, {17, 3}, {3, 1000}, {129, 17}};
  uint32_t seed = 80;
  for (const DistillationOptions& o :
       {DistillationOptions{1.0f, true}, DistillationOptions{4.0f, true},
        DistillationOptions{2.0f, false}}) {
    for (const LossDims& d : shapes) {
      const size_t n = static_cast<size_t>(d.batch * d.classes);
      const std::string what = std::to_string(d.batch) + "x" + std::to_string(d.classes) +
                               " T = " + std::to_string(o.temperature);
      const std::vector<float> s = random_values(n, seed++, -8.0f, 8.0f);
      const std::vector<float> t = random_values(n, seed++, -8.0f, 8.0f);
      std::vector<float> p(n), q(n), rows(static_cast<size_t>(d.batch)), ds(n);
      const float loss = distillation_kl(d, o, s.data(), t.data(), p.data(), q.data(), rows.data());
      distillation_kl_backward(d, o, p.data(), q.data(), 0.5f, ds.data());
      const std::vector<double> sd = to_double(s), td = to_double(t);
      const double expected_loss = reference::distillation_kl(d, o, sd.data(), td.data());
      EXPECT_NEAR(loss, expected_loss, 2e-6 * (1 + std::abs(expected_loss))) << what;
      std::vector<double> expected(n);
      reference::distillation_kl_backward(d, o, sd.data(), td.data(), 0.5, expected.data());
      expect_close(ds, to_float(expected), 1e-7, 1e-5, what);
    }
  }
}

TEST(DistillationKl, TemperatureMustBePositive) {
  const LossDims dims{1, 2};
  const std::vector<float> z(2, 0.0f);
  std::vector<float> p(2), q(2), rows(1);
  const std::string message = testing::error_of(ErrorKind::kInvalid, [&] {
    distillation_kl(dims, {0.0f, true}, z.data(), z.data(), p.data(), q.data(), rows.data());
  });
  EXPECT_EQ(message, "distillation_kl: expected a finite temperature > 0, got 0.000000");
}

TEST(DistillationKl, SameBitsForAnyThreadCount) {
  const LossDims d{2003, 101};
  const size_t n = 2003 * 101;
  const std::vector<float> s = random_values(n, 1, -6.0f, 6.0f);
  const std::vector<float> t = random_values(n, 2, -6.0f, 6.0f);
  const DistillationOptions o{4.0f, true};
  float loss[2];
  std::vector<float> ds[2];
  for (int k = 0; k < 2; ++k) {
    ThreadCount threads(k + 1);
    std::vector<float> p(n), q(n), rows(2003);
    ds[k].resize(n);
    loss[k] = distillation_kl(d, o, s.data(), t.data(), p.data(), q.data(), rows.data());
    distillation_kl_backward(d, o, p.data(), q.data(), 1.0f, ds[k].data());
  }
  testing::expect_same_bits(&loss[0], &loss[1], 1, "loss");
  testing::expect_same_bits(ds[0].data(), ds[1].data(), n, "dlogits");
}

}  // namespace
}  // namespace qforge::kernels
