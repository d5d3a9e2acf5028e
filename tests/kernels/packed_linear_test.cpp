// gemm() and matmul() on weights prepared for the packed micro-kernel: against a
// double-precision reference on awkward shapes, bit-identical rows whatever the batch and thread
// count, and the Gemm, MatMul and MHAInProjection ops with constant weights against live ones.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/packed_gemm.h"
#include "tests/support/float_checks.h"
#include "tests/support/op_runner.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::expect_close;
using testing::expect_same_bits;
using testing::random_values;
using testing::ThreadCount;

// y = op(a)·op(b) + beta·bias in double, and for every output the sum of the magnitudes of its
// terms: a chain of k fused multiply-adds in float is within about (k + 1)·2^-24 of that sum.
struct Reference {
  std::vector<double> y;
  std::vector<double> magnitude;
};

Reference reference_linear(const GemmDims& d, const std::vector<float>& a,
                           const std::vector<float>& b, const std::vector<float>& bias) {
  Reference ref;
  ref.y.assign(static_cast<size_t>(d.m * d.n), 0.0);
  ref.magnitude.assign(ref.y.size(), 0.0);
  for (int64_t i = 0; i < d.m; ++i) {
    for (int64_t j = 0; j < d.n; ++j) {
      double sum = 0.0, magnitude = 0.0;
      if (d.bias == GemmBias::kRow) {
        sum = static_cast<double>(d.beta) * bias[static_cast<size_t>(j)];
        magnitude = std::abs(sum);
      }
      for (int64_t p = 0; p < d.k; ++p) {
        const double w = d.trans_b == Transpose::kYes ? b[static_cast<size_t>(j * d.k + p)]
                                                      : b[static_cast<size_t>(p * d.n + j)];
        const double term = static_cast<double>(a[static_cast<size_t>(i * d.k + p)]) * w;
        sum += term;
        magnitude += std::abs(term);
      }
      ref.y[static_cast<size_t>(i * d.n + j)] = sum;
      ref.magnitude[static_cast<size_t>(i * d.n + j)] = magnitude;
    }
  }
  return ref;
}

// Runs gemm() on prepared weights. b itself is passed as NaNs: a path that read it instead of
// the prepared form would show.
std::vector<float> run_prepared(const GemmDims& d, const std::vector<float>& a,
                                const std::vector<float>& b, const std::vector<float>& bias) {
  std::vector<float> prepared(gemm_prepared_weight_floats(d));
  prepare_gemm_weights(d, b.data(), prepared.data());
  const std::vector<float> poisoned(b.size(), std::numeric_limits<float>::quiet_NaN());
  std::vector<std::byte> ws(gemm_workspace_bytes(d, GemmWeightForm::kPrepared) + 64);
  std::vector<float> y(static_cast<size_t>(d.m * d.n), std::numeric_limits<float>::quiet_NaN());
  gemm(d, a.data(), poisoned.data(), bias.empty() ? nullptr : bias.data(), y.data(), ws.data(),
       prepared.data());
  return y;
}

GemmDims linear_dims(int64_t m, int64_t n, int64_t k, Transpose trans_b, GemmBias bias) {
  GemmDims d;
  d.m = m;
  d.n = n;
  d.k = k;
  d.trans_b = trans_b;
  d.bias = bias;
  return d;
}

TEST(PackedLinear, MatchesDoubleReferenceOnAwkwardShapes) {
  if (!packed_gemm_available()) GTEST_SKIP() << "no vector FMA: gemm() keeps OpenBLAS";
  ThreadCount threads(2);
  uint32_t seed = 40;
  // n and m around the 32-column and 14-row panels; k = 1, one pass, and three passes over k.
  for (int64_t m : {1, 13, 15, 43}) {
    for (int64_t n : {1, 5, 31, 33, 70}) {
      for (int64_t k : {1, 9, 257, 700}) {
        for (Transpose tb : {Transpose::kNo, Transpose::kYes}) {
          for (GemmBias bias : {GemmBias::kNone, GemmBias::kRow}) {
            GemmDims d = linear_dims(m, n, k, tb, bias);
            d.beta = tb == Transpose::kYes ? 1.0f : -1.5f;
            ASSERT_GT(gemm_prepared_weight_floats(d), 0u);
            const auto a = random_values(static_cast<size_t>(m * k), ++seed);
            const auto b = random_values(static_cast<size_t>(k * n), ++seed);
            const auto c =
                random_values(bias == GemmBias::kRow ? static_cast<size_t>(n) : 0, ++seed);
            const Reference ref = reference_linear(d, a, b, c);
            const std::vector<float> y = run_prepared(d, a, b, c);
            const double unit = std::ldexp(1.0, -24);
            int failures = 0;
            for (size_t i = 0; i < y.size(); ++i) {
              const double bound = 1.01 * static_cast<double>(k + 1) * unit * ref.magnitude[i];
              if (!(std::abs(y[i] - ref.y[i]) <= bound) && ++failures <= 3) {
                ADD_FAILURE() << "m=" << m << " n=" << n << " k=" << k
                              << " trans_b=" << static_cast<int>(tb)
                              << " bias=" << static_cast<int>(bias) << ": element " << i << " is "
                              << y[i] << ", expected " << ref.y[i] << " within " << bound;
              }
            }
          }
        }
      }
    }
  }
}

TEST(PackedLinear, RowBitsDoNotDependOnBatchOrThreads) {
  if (!packed_gemm_available()) GTEST_SKIP() << "no vector FMA: gemm() keeps OpenBLAS";
  // n wide enough for several column blocks, k for several passes.
  const int64_t n = 1100, k = 600, total = 100;
  const auto a_all = random_values(static_cast<size_t>(total * k), 71);
  const auto b = random_values(static_cast<size_t>(k * n), 72);
  const auto bias = random_values(static_cast<size_t>(n), 73);
  for (Transpose tb : {Transpose::kNo, Transpose::kYes}) {
    auto run_rows = [&](int64_t m, int threads) {
      ThreadCount scope(threads);
      const std::vector<float> a(a_all.begin(), a_all.begin() + m * k);
      return run_prepared(linear_dims(m, n, k, tb, GemmBias::kRow), a, b, bias);
    };
    const std::vector<float> full = run_rows(total, 1);
    for (int64_t m : {1, 7, 100}) {
      for (int threads : {1, 2}) {
        const std::vector<float> part = run_rows(m, threads);
        expect_same_bits(part.data(), full.data(), static_cast<size_t>(m * n),
                         "first " + std::to_string(m) + " rows on " + std::to_string(threads) +
                             " threads, trans_b " + std::to_string(static_cast<int>(tb)));
      }
    }
  }
}

TEST(PackedLinear, PathOnlyWhereItApplies) {
  GemmDims d = linear_dims(10, 20, 30, Transpose::kYes, GemmBias::kRow);
  EXPECT_EQ(gemm_prepared_weight_floats(d) > 0, packed_gemm_available());
  if (packed_gemm_available()) {
    EXPECT_EQ(gemm_prepared_weight_floats(d), size_t{32 * 30});
    EXPECT_EQ(gemm_workspace_bytes(d, GemmWeightForm::kPrepared), 0u);
  }
  for (GemmBias other : {GemmBias::kScalar, GemmBias::kColumn, GemmBias::kFull}) {
    EXPECT_EQ(gemm_prepared_weight_floats(linear_dims(10, 20, 30, Transpose::kNo, other)), 0u);
  }
  GemmDims scaled = d;
  scaled.alpha = 0.5f;
  EXPECT_EQ(gemm_prepared_weight_floats(scaled), 0u);
  GemmDims trans_a = d;
  trans_a.trans_a = Transpose::kYes;
  EXPECT_EQ(gemm_prepared_weight_floats(trans_a), 0u);
  EXPECT_EQ(gemm_prepared_weight_floats(linear_dims(10, 20, 0, Transpose::kNo, GemmBias::kNone)),
            0u);
}

TEST(PackedLinear, MatMulOnPreparedWeightsMatchesOpenBlas) {
  if (!packed_gemm_available()) GTEST_SKIP() << "no vector FMA: matmul() keeps OpenBLAS";
  ThreadCount threads(2);
  const Shape a_shape{3, 17, 45};
  const Shape b_shape{45, 40};
  const auto dims = matmul_dims(a_shape, b_shape);
  ASSERT_TRUE(dims && dims->shared_b);
  const auto a = random_values(static_cast<size_t>(shape_numel(a_shape)), 81);
  const auto b = random_values(static_cast<size_t>(shape_numel(b_shape)), 82);
  std::vector<float> prepared(matmul_prepared_weight_floats(*dims));
  ASSERT_FALSE(prepared.empty());
  prepare_matmul_weights(*dims, b.data(), prepared.data());
  const size_t out = static_cast<size_t>(shape_numel(dims->out_shape));
  std::vector<float> packed_y(out), blas_y(out);
  std::vector<std::byte> ws(matmul_workspace_bytes(*dims) + 64);
  matmul(*dims, a.data(), b.data(), packed_y.data(), ws.data(), prepared.data());
  matmul(*dims, a.data(), b.data(), blas_y.data(), ws.data());
  expect_close(packed_y, blas_y, 1e-5 * std::sqrt(45.0), 1e-5, "matmul prepared vs OpenBLAS");
}

// ---------------------------------------------------------------------------------------------
// The ops: a constant weight is prepared at creation, a live one runs on OpenBLAS.

Tensor random_tensor(const Shape& shape, uint32_t seed) {
  Tensor t(DType::kFloat32, shape);
  const auto v = random_values(static_cast<size_t>(shape_numel(shape)), seed);
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

class OneNode : public testing::OneNodeGraph {
 public:
  using OneNodeGraph::OneNodeGraph;
  std::vector<std::vector<float>> run() {
    const std::vector<runtime::TensorInfo> out_infos = infer();
    std::unique_ptr<runtime::OpKernel> kernel = def_->create(*node_, infos_, out_infos);
    std::vector<Tensor> outputs;
    for (const runtime::TensorInfo& info : out_infos) outputs.emplace_back(info.dtype, info.shape);
    std::vector<Tensor> inputs;
    for (const testing::OpInput& in : inputs_) inputs.push_back(in.value);
    std::vector<std::byte> workspace(kernel->workspace_bytes() + 64);
    kernel->forward(inputs, outputs, workspace.data());
    std::vector<std::vector<float>> values;
    for (const Tensor& t : outputs) {
      values.emplace_back(t.data<float>(), t.data<float>() + shape_numel(t.shape()));
    }
    return values;
  }
};

// Runs the node with its weight (input 1) and bias (input 2, if any) constant, then live, and
// compares every output.
void expect_constant_matches_live(
    const std::string& op,
    const std::map<std::string, graph::AttributeValue, std::less<>>& attributes,
    const std::vector<Tensor>& inputs, size_t outputs, double k, const std::string& what) {
  std::vector<testing::OpInput> constant, live;
  for (size_t i = 0; i < inputs.size(); ++i) {
    constant.push_back({inputs[i], i > 0});
    live.push_back({inputs[i], false});
  }
  const auto expected = OneNode(op, attributes, live, outputs).run();
  const auto actual = OneNode(op, attributes, constant, outputs).run();
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    expect_close(actual[i], expected[i], 1e-5 * std::sqrt(k), 1e-5,
                 what + " output " + std::to_string(i));
  }
}

TEST(PackedLinear, OpsWithConstantWeightsMatchLiveWeights) {
  ThreadCount threads(2);
  const int64_t m = 37, k = 300, n = 70;
  const Tensor x = random_tensor({m, k}, 91);
  const Tensor w_nk = random_tensor({n, k}, 92);
  const Tensor w_kn = random_tensor({k, n}, 93);
  const Tensor bias = random_tensor({n}, 94);
  expect_constant_matches_live("Gemm", {{"transB", int64_t{1}}}, {x, w_nk, bias}, 1, k,
                               "Gemm transB with bias");
  expect_constant_matches_live("Gemm", {{"beta", 0.5f}}, {x, w_kn, bias}, 1, k,
                               "Gemm with beta 0.5");
  expect_constant_matches_live("Gemm", {}, {x, w_kn}, 1, k, "Gemm without bias");
  expect_constant_matches_live("MatMul", {}, {random_tensor({2, 19, k}, 95), w_kn}, 1, k,
                               "MatMul [2, 19, k] x [k, n]");
  expect_constant_matches_live("MatMul", {}, {random_tensor({5, k}, 96), random_tensor({k}, 97)}, 1,
                               k, "MatMul by a vector");

  const int64_t batch = 2, seq = 9, embed = 48;
  const Tensor xe = random_tensor({batch, seq, embed}, 98);
  const Tensor in_bias = random_tensor({3 * embed}, 99);
  for (const char* layout : {"matmul", "gemm"}) {
    const Shape w_shape =
        std::string(layout) == "gemm" ? Shape{3 * embed, embed} : Shape{embed, 3 * embed};
    expect_constant_matches_live(
        "MHAInProjection", {{"num_heads", int64_t{4}}, {"weight_layout", std::string(layout)}},
        {xe, random_tensor(w_shape, 100), in_bias}, 3, embed,
        std::string("MHAInProjection ") + layout);
  }
}

}  // namespace
}  // namespace qforge::kernels
