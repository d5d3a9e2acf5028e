// Output comparison: the metrics against hand-computed values, and `qforge compare` end to end
// with its printed figures parsed back.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "runtime/compare.h"
#include "tests/support/onnx_models.h"
#include "tests/support/test_support.h"

namespace qforge {
namespace {

using kernels::Tensor;
using testing::count_lines;
using testing::data_path;
using testing::run_cli;
using testing::TempDir;

// a = [[1, 2], [3, 4]], b = [[1, 2.5], [4, 3]]: Δ = [0, .5, 1, -1]; Σa² = 30, Σb² = 32.25,
// Σab = 30, Σ(a-b)² = 2.25; row argmaxes (1, 1) vs (1, 0).
Tensor reference_2x2() {
  return Tensor::from_vector<float>({2, 2}, {1, 2, 3, 4});
}
Tensor candidate_2x2() {
  return Tensor::from_vector<float>({2, 2}, {1, 2.5f, 4, 3});
}

TEST(CompareMetrics, HandComputedFigures) {
  auto f = runtime::compare_outputs(reference_2x2(), candidate_2x2());
  EXPECT_EQ(f.elements, 4u);
  EXPECT_EQ(f.nonfinite, 0u);
  EXPECT_DOUBLE_EQ(f.max_abs_diff, 1.0);
  EXPECT_DOUBLE_EQ(f.max_rel_error, 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(f.cosine, 30.0 / std::sqrt(30.0 * 32.25));
  EXPECT_NEAR(f.sqnr_db, 10.0 * std::log10(30.0 / 2.25), 1e-12);
  EXPECT_NEAR(f.sqnr_db, 11.2494, 1e-4);
  ASSERT_TRUE(f.top1_agreement.has_value());
  EXPECT_EQ(f.rows, 2u);
  EXPECT_EQ(f.agreeing_rows, 1u);
  EXPECT_DOUBLE_EQ(*f.top1_agreement, 0.5);
}

TEST(CompareMetrics, BatchesAccumulateToTheWholeFigures) {
  runtime::OutputComparison c;
  c.add(reference_2x2().slice_rows(0, 1), candidate_2x2().slice_rows(0, 1));
  c.add(reference_2x2().slice_rows(1, 2), candidate_2x2().slice_rows(1, 2));
  auto split = c.figures();
  auto whole = runtime::compare_outputs(reference_2x2(), candidate_2x2());
  EXPECT_EQ(split.max_abs_diff, whole.max_abs_diff);
  EXPECT_EQ(split.max_rel_error, whole.max_rel_error);
  EXPECT_EQ(split.cosine, whole.cosine);
  EXPECT_EQ(split.sqnr_db, whole.sqnr_db);
  EXPECT_EQ(split.rows, 2u);
  EXPECT_EQ(split.agreeing_rows, 1u);
}

TEST(CompareMetrics, EqualZeroAndNonFiniteCases) {
  auto same = runtime::compare_outputs(reference_2x2(), reference_2x2());
  EXPECT_EQ(same.max_abs_diff, 0.0);
  EXPECT_EQ(same.sqnr_db, std::numeric_limits<double>::infinity());
  EXPECT_DOUBLE_EQ(same.cosine, 1.0);
  EXPECT_EQ(*same.top1_agreement, 1.0);

  // A zero reference divides by the floor; cosine against all zeros is 0.
  auto zeros = Tensor::from_vector<float>({1, 3, 1, 1}, {0, 0, 0});
  auto small = Tensor::from_vector<float>({1, 3, 1, 1}, {0, 2e-6f, 0});
  auto f = runtime::compare_outputs(zeros, small);
  EXPECT_NEAR(f.max_rel_error, 2.0, 1e-6);
  EXPECT_EQ(f.cosine, 0.0);
  EXPECT_EQ(f.sqnr_db, -std::numeric_limits<double>::infinity());
  EXPECT_FALSE(f.top1_agreement.has_value());  // not [N, C]
  EXPECT_DOUBLE_EQ(runtime::compare_outputs(zeros, zeros).cosine, 1.0);

  auto with_nan = Tensor::from_vector<float>({1, 3}, {1, std::nanf(""), 3});
  auto g = runtime::compare_outputs(with_nan, Tensor::from_vector<float>({1, 3}, {1, 5, 3}));
  EXPECT_EQ(g.nonfinite, 1u);
  EXPECT_EQ(g.max_abs_diff, 0.0);
}

TEST(CompareMetrics, ShapeMismatchIsInvalid) {
  try {
    runtime::compare_outputs(reference_2x2(), Tensor::from_vector<float>({4}, {1, 2, 3, 4}));
    FAIL() << "expected an Invalid error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
  }
}

// The number printed after `label` on its line of `out` (NaN when the line is missing).
double figure(const std::string& out, const std::string& label) {
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    auto at = line.find(label);
    if (at == std::string::npos) continue;
    return std::strtod(line.c_str() + at + label.size(), nullptr);
  }
  return std::nan("");
}

const std::string kResnetBn = data_path("models/resnet_bn.onnx");
const std::string kResnetFolded = data_path("models/resnet_folded.onnx");
const std::string kMobilenet = data_path("models/mobilenet_v3_bn.onnx");
const std::string kResnetInput = data_path("golden/resnet_input.npy");

TEST(CompareCli, ModelAgainstItselfIsIdentical) {
  auto r = run_cli("compare " + kResnetBn + " " + kResnetBn);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("random normal inputs, seed 0, 8 samples"), std::string::npos) << r.out;
  EXPECT_EQ(figure(r.out, "max |Δ|"), 0.0) << r.out;
  EXPECT_EQ(figure(r.out, "max rel. error"), 0.0) << r.out;
  EXPECT_EQ(figure(r.out, "cosine"), 1.0) << r.out;
  EXPECT_EQ(figure(r.out, "SQNR"), std::numeric_limits<double>::infinity()) << r.out;
  EXPECT_NE(r.out.find("SQNR               inf dB"), std::string::npos) << r.out;
  EXPECT_EQ(figure(r.out, "top-1 agreement"), 100.0) << r.out;
  EXPECT_NE(r.out.find("(8/8 rows)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("verdict    identical"), std::string::npos) << r.out;
}

TEST(CompareCli, BatchNormFoldingIsClose) {
  auto r = run_cli("compare " + kResnetBn + " " + kResnetFolded + " --data " + kResnetInput +
                   " --batch 3 --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  double max_diff = figure(r.out, "max |Δ|");
  EXPECT_GE(max_diff, 0.0) << r.out;
  EXPECT_LT(max_diff, 1e-3) << r.out;
  EXPECT_GT(figure(r.out, "cosine"), 0.99999) << r.out;
  EXPECT_GT(figure(r.out, "SQNR"), 60.0) << r.out;
  EXPECT_EQ(figure(r.out, "top-1 agreement"), 100.0) << r.out;
  EXPECT_EQ(r.out.find("verdict    different"), std::string::npos) << r.out;
}

TEST(CompareCli, DifferentModelsDiffer) {
  auto r =
      run_cli("compare " + kResnetBn + " " + kMobilenet + " --data " + kResnetInput + " --limit 3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("(3 samples"), std::string::npos) << r.out;
  double cosine = figure(r.out, "cosine");
  EXPECT_LT(cosine, 0.999) << r.out;
  EXPECT_GE(cosine, -1.0) << r.out;
  EXPECT_GT(figure(r.out, "max |Δ|"), 0.0) << r.out;
  EXPECT_LT(figure(r.out, "SQNR"), 30.0) << r.out;
  double agreement = figure(r.out, "top-1 agreement");
  EXPECT_GE(agreement, 0.0);
  EXPECT_LE(agreement, 100.0);
  EXPECT_NE(r.out.find("verdict    different"), std::string::npos) << r.out;
}

// x -> Relu -> y, both float32 of `shape`.
std::string relu_model(const std::vector<int64_t>& shape) {
  return testing::one_node_model("Relu", "relu", shape);
}

TEST(CompareCli, MismatchedInputShapesAreOneLineError) {
  TempDir dir;
  testing::write_bytes(dir.file("four.onnx"), relu_model({1, 4}));
  testing::write_bytes(dir.file("five.onnx"), relu_model({1, 5}));
  auto r = run_cli("compare " + dir.file("four.onnx") + " " + dir.file("five.onnx"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_EQ(r.err.rfind("qforge: error: compare: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(dir.file("four.onnx")), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(dir.file("five.onnx")), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("[1, 4]"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("[1, 5]"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST(CompareCli, FixedBatchModelWithoutDataUsesItsBatch) {
  TempDir dir;
  testing::write_bytes(dir.file("relu.onnx"), relu_model({3, 4}));
  auto r = run_cli("compare " + dir.file("relu.onnx") + " " + dir.file("relu.onnx"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("3 samples"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(3/3 rows)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("verdict    identical"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace qforge
