// Gemm and MatMul backward: the float64 references against central finite differences, the
// float32 kernels against the references (every transpose, bias form and broadcast), and the
// same bits on 1 and 2 threads.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/gemm_backward.h"
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

int64_t bias_size(const GemmDims& d) {
  switch (d.bias) {
    case GemmBias::kNone:
      return 0;
    case GemmBias::kScalar:
      return 1;
    case GemmBias::kRow:
      return d.n;
    case GemmBias::kColumn:
      return d.m;
    case GemmBias::kFull:
      return d.m * d.n;
  }
  return 0;
}

GemmDims gemm_dims(int64_t m, int64_t n, int64_t k, bool ta, bool tb, float alpha, float beta,
                   GemmBias bias) {
  GemmDims d;
  d.m = m;
  d.n = n;
  d.k = k;
  d.trans_a = ta ? Transpose::kYes : Transpose::kNo;
  d.trans_b = tb ? Transpose::kYes : Transpose::kNo;
  d.alpha = alpha;
  d.beta = beta;
  d.bias = bias;
  return d;
}

std::string describe(const GemmDims& d) {
  return std::to_string(d.m) + "x" + std::to_string(d.n) + "x" + std::to_string(d.k) +
         (d.trans_a == Transpose::kYes ? " transA" : "") +
         (d.trans_b == Transpose::kYes ? " transB" : "") + " bias " +
         std::to_string(static_cast<int>(d.bias));
}

std::vector<GemmDims> gemm_cases() {
  std::vector<GemmDims> cases;
  const int64_t shapes[][3] = {{1, 1, 1}, {3, 13, 17}, {13, 17, 3}, {127, 3, 13}, {70, 300, 9}};
  const GemmBias biases[] = {GemmBias::kNone, GemmBias::kScalar, GemmBias::kRow, GemmBias::kColumn,
                             GemmBias::kFull};
  int bias_at = 0;
  for (const auto& s : shapes) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        const GemmBias bias = biases[bias_at++ % 5];
        cases.push_back(
            gemm_dims(s[0], s[1], s[2], ta, tb, ta ? 0.75f : 1.0f, tb ? -1.5f : 1.0f, bias));
      }
    }
  }
  for (GemmBias bias : biases)
    cases.push_back(gemm_dims(65, 257, 5, false, true, 2.0f, 0.5f, bias));
  return cases;
}

struct GemmData {
  std::vector<float> a, b, c, dy;
};

GemmData gemm_data(const GemmDims& d, uint32_t seed) {
  return {random_values(static_cast<size_t>(d.m * d.k), seed),
          random_values(static_cast<size_t>(d.k * d.n), seed + 1),
          random_values(static_cast<size_t>(bias_size(d)), seed + 2),
          random_values(static_cast<size_t>(d.m * d.n), seed + 3)};
}

struct GemmResult {
  std::vector<float> da, db, dc;
};

GemmResult run_gemm_backward(const GemmDims& d, const GemmData& x, int threads,
                             GradMode write = GradMode::kOverwrite,
                             const GemmResult* start = nullptr) {
  ThreadCount scope(threads);
  GemmResult r;
  if (start) {
    r = *start;
  } else {
    r = {std::vector<float>(x.a.size(), NAN), std::vector<float>(x.b.size(), NAN),
         std::vector<float>(x.c.size(), NAN)};
  }
  gemm_backward(d, x.a.data(), x.b.data(), x.dy.data(),
                {r.da.data(), r.db.data(), r.dc.empty() ? nullptr : r.dc.data()}, write);
  return r;
}

struct GemmReference {
  std::vector<double> da, db, dc;
};

GemmReference gemm_reference(const GemmDims& d, const std::vector<double>& a,
                             const std::vector<double>& b, const std::vector<double>& dy) {
  GemmReference r{std::vector<double>(a.size()), std::vector<double>(b.size()),
                  std::vector<double>(static_cast<size_t>(bias_size(d)))};
  reference::gemm_backward(d, a.data(), b.data(), dy.data(), r.da.data(), r.db.data(),
                           r.dc.empty() ? nullptr : r.dc.data());
  return r;
}

TEST(GemmBackwardReference, MatchesFiniteDifferences) {
  for (const GemmDims& d : gemm_cases()) {
    if (d.m * d.n * d.k > 4000) continue;
    SCOPED_TRACE(describe(d));
    const GemmData x = gemm_data(d, 1);
    std::vector<double> a = to_double(x.a), b = to_double(x.b), c = to_double(x.c);
    const std::vector<double> dy = to_double(x.dy);
    std::vector<double> y(dy.size());
    auto loss = [&] {
      reference::gemm_f64(d, a.data(), b.data(), c.empty() ? nullptr : c.data(), y.data());
      return testing::dot(y, dy);
    };
    const GemmReference ref = gemm_reference(d, a, b, dy);
    testing::expect_matches_differences(ref.da, testing::central_differences(a, loss), 1e-8, "da");
    testing::expect_matches_differences(ref.db, testing::central_differences(b, loss), 1e-8, "db");
    testing::expect_matches_differences(ref.dc, testing::central_differences(c, loss), 1e-8, "dc");
  }
}

TEST(GemmBackward, MatchesReference) {
  for (const GemmDims& d : gemm_cases()) {
    SCOPED_TRACE(describe(d));
    const GemmData x = gemm_data(d, 2);
    const GemmResult r = run_gemm_backward(d, x, 2);
    const std::vector<double> a = to_double(x.a), b = to_double(x.b), dy = to_double(x.dy);
    const GemmReference ref = gemm_reference(d, a, b, dy);
    GemmDims abs_dims = d;
    abs_dims.alpha = std::abs(d.alpha);
    abs_dims.beta = std::abs(d.beta);
    const GemmReference mag = gemm_reference(abs_dims, absolute(a), absolute(b), absolute(dy));
    expect_matches_reference(r.da, ref.da, mag.da, "da");
    expect_matches_reference(r.db, ref.db, mag.db, "db");
    expect_matches_reference(r.dc, ref.dc, mag.dc, "dc");
  }
}

TEST(GemmBackward, AccumulatesIntoOutputs) {
  for (const GemmDims& d : gemm_cases()) {
    SCOPED_TRACE(describe(d));
    const GemmData x = gemm_data(d, 3);
    const GemmResult start{random_values(x.a.size(), 4), random_values(x.b.size(), 5),
                           random_values(x.c.size(), 6)};
    const GemmResult r = run_gemm_backward(d, x, 2, GradMode::kAccumulate, &start);
    GemmReference ref = gemm_reference(d, to_double(x.a), to_double(x.b), to_double(x.dy));
    GemmDims abs_dims = d;
    abs_dims.alpha = std::abs(d.alpha);
    abs_dims.beta = std::abs(d.beta);
    GemmReference mag = gemm_reference(abs_dims, absolute(to_double(x.a)), absolute(to_double(x.b)),
                                       absolute(to_double(x.dy)));
    auto shift = [](std::vector<double>& v, std::vector<double>& m, const std::vector<float>& s) {
      for (size_t i = 0; i < v.size(); ++i) {
        v[i] += s[i];
        m[i] += std::abs(s[i]);
      }
    };
    shift(ref.da, mag.da, start.da);
    shift(ref.db, mag.db, start.db);
    shift(ref.dc, mag.dc, start.dc);
    expect_matches_reference(r.da, ref.da, mag.da, "da");
    expect_matches_reference(r.db, ref.db, mag.db, "db");
    expect_matches_reference(r.dc, ref.dc, mag.dc, "dc");
  }
}

TEST(GemmBackward, SameBitsForAnyThreadCount) {
  for (const GemmDims& d : gemm_cases()) {
    SCOPED_TRACE(describe(d));
    const GemmData x = gemm_data(d, 7);
    const GemmResult one = run_gemm_backward(d, x, 1);
    const GemmResult two = run_gemm_backward(d, x, 2);
    expect_same_bits(one.da.data(), two.da.data(), one.da.size(), "da");
    expect_same_bits(one.db.data(), two.db.data(), one.db.size(), "db");
    expect_same_bits(one.dc.data(), two.dc.data(), one.dc.size(), "dc");
  }
}

// ---------------------------------------------------------------------------------------------
// MatMul

struct MatMulCase {
  const char* name;
  Shape a, b;
};

const MatMulCase kMatMulCases[] = {
    {"plain", {3, 5}, {5, 7}},
    {"vector_a", {7}, {7, 5}},
    {"vector_b", {3, 4, 7}, {7}},
    {"vector_both", {13}, {13}},
    {"batched", {3, 13, 5}, {3, 5, 17}},
    {"shared_b", {2, 3, 13, 5}, {5, 17}},
    {"shared_b_many_rows", {3, 70, 9}, {9, 300}},
    {"broadcast_b_batch", {2, 3, 13, 5}, {3, 5, 17}},
    {"broadcast_both", {1, 3, 13, 5}, {2, 1, 5, 17}},
    {"shared_a", {13, 5}, {3, 5, 17}},
    {"shared_a_wide", {70, 9}, {5, 9, 300}},
    {"broadcast_inner_axes", {3, 1, 4, 6}, {1, 2, 6, 3}},
    {"batch_one", {1, 1, 13, 3}, {1, 3, 1}},
};

int64_t numel(const Shape& s) {
  return shape_numel(s);
}

struct MatMulData {
  MatMulDims dims;
  std::vector<float> a, b, dy;
};

MatMulData matmul_data(const MatMulCase& c, uint32_t seed) {
  MatMulData d;
  d.dims = *matmul_dims(c.a, c.b);
  d.a = random_values(static_cast<size_t>(numel(c.a)), seed);
  d.b = random_values(static_cast<size_t>(numel(c.b)), seed + 1);
  d.dy = random_values(static_cast<size_t>(numel(d.dims.out_shape)), seed + 2);
  return d;
}

struct MatMulResult {
  std::vector<float> da, db;
};

MatMulResult run_matmul_backward(const MatMulData& d, int threads,
                                 GradMode write = GradMode::kOverwrite,
                                 const MatMulResult* start = nullptr) {
  ThreadCount scope(threads);
  MatMulResult r;
  if (start) {
    r = *start;
  } else {
    r = {std::vector<float>(d.a.size(), NAN), std::vector<float>(d.b.size(), NAN)};
  }
  matmul_backward(d.dims, d.a.data(), d.b.data(), d.dy.data(), {r.da.data(), r.db.data()}, write);
  return r;
}

struct MatMulReference {
  std::vector<double> da, db;
};

MatMulReference matmul_reference(const MatMulCase& c, const std::vector<double>& a,
                                 const std::vector<double>& b, const std::vector<double>& dy) {
  MatMulReference r{std::vector<double>(a.size()), std::vector<double>(b.size())};
  reference::matmul_backward(c.a, a.data(), c.b, b.data(), dy.data(), r.da.data(), r.db.data());
  return r;
}

TEST(MatMulBackwardReference, MatchesFiniteDifferences) {
  for (const MatMulCase& c : kMatMulCases) {
    SCOPED_TRACE(c.name);
    const MatMulData d = matmul_data(c, 1);
    if (d.dy.size() * static_cast<size_t>(d.dims.k) > 3000) continue;
    std::vector<double> a = to_double(d.a), b = to_double(d.b);
    const std::vector<double> dy = to_double(d.dy);
    std::vector<double> y;
    auto loss = [&] {
      reference::matmul_f64(c.a, a.data(), c.b, b.data(), y);
      return testing::dot(y, dy);
    };
    const MatMulReference ref = matmul_reference(c, a, b, dy);
    testing::expect_matches_differences(ref.da, testing::central_differences(a, loss), 1e-8, "da");
    testing::expect_matches_differences(ref.db, testing::central_differences(b, loss), 1e-8, "db");
  }
}

TEST(MatMulBackward, MatchesReference) {
  for (const MatMulCase& c : kMatMulCases) {
    SCOPED_TRACE(c.name);
    const MatMulData d = matmul_data(c, 2);
    const MatMulResult r = run_matmul_backward(d, 2);
    const std::vector<double> a = to_double(d.a), b = to_double(d.b), dy = to_double(d.dy);
    const MatMulReference ref = matmul_reference(c, a, b, dy);
    const MatMulReference mag = matmul_reference(c, absolute(a), absolute(b), absolute(dy));
    expect_matches_reference(r.da, ref.da, mag.da, "da");
    expect_matches_reference(r.db, ref.db, mag.db, "db");

    const MatMulResult start{random_values(d.a.size(), 3), random_values(d.b.size(), 4)};
    const MatMulResult added = run_matmul_backward(d, 2, GradMode::kAccumulate, &start);
    MatMulReference ref_added = ref;
    MatMulReference mag_added = mag;
    for (size_t i = 0; i < ref.da.size(); ++i) {
      ref_added.da[i] += start.da[i];
      mag_added.da[i] += std::abs(start.da[i]);
    }
    for (size_t i = 0; i < ref.db.size(); ++i) {
      ref_added.db[i] += start.db[i];
      mag_added.db[i] += std::abs(start.db[i]);
    }
    expect_matches_reference(added.da, ref_added.da, mag_added.da, "da accumulated");
    expect_matches_reference(added.db, ref_added.db, mag_added.db, "db accumulated");
  }
}

TEST(MatMulBackward, SameBitsForAnyThreadCount) {
  for (const MatMulCase& c : kMatMulCases) {
    SCOPED_TRACE(c.name);
    const MatMulData d = matmul_data(c, 5);
    const MatMulResult one = run_matmul_backward(d, 1);
    const MatMulResult two = run_matmul_backward(d, 2);
    expect_same_bits(one.da.data(), two.da.data(), one.da.size(), "da");
    expect_same_bits(one.db.data(), two.db.data(), one.db.size(), "db");
  }
}

}  // namespace
}  // namespace qforge::kernels
