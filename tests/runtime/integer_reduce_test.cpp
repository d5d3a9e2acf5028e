// ReduceMin and ReduceMax of integers (an image's sides, as torchvision's detectors take their
// minimum), folded at resolution as ONNX Runtime computes them, and integer outputs compared
// exactly by the transform's equivalence check; ReduceSum, ReduceProd, ReduceL1 and
// ReduceSumSquare of int32 and int64 data as ONNX Runtime computes them, saturated past the
// type's range.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "fuzz/seed_models.h"
#include "graph/onnx_import.h"
#include "kernels/tensor.h"
#include "runtime/session.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;

// y = x · min(H, W) + min(int32(H, W)); sides = max(H, W) as int64 [1]. `reduce_last` is the op
// of the last reduction (ReduceMax, or ReduceMin for a model that computes another integer).
std::string sides_model(const std::string& reduce_last) {
  fuzz::ModelWriter m("sides");
  m.input("x", {-1, 3, 5, 7});
  m.output("y", {-1, 3, 5, 7});
  m.output("sides", {1});
  m.graph()->mutable_output(1)->mutable_type()->mutable_tensor_type()->set_elem_type(
      onnx::TensorProto::INT64);
  m.int64_weight("start", {2});
  m.int64_weight("end", {4});
  m.node("Shape", "shape", {"x"}, {"shape"});
  m.node("Slice", "hw", {"shape", "start", "end"}, {"hw"});
  fuzz::ModelWriter::integer(m.node("ReduceMin", "short_side", {"hw"}, {"side"}), "keepdims", 0);
  m.node(reduce_last, "long_side", {"hw"}, {"sides"});
  fuzz::ModelWriter::integer(m.node("Cast", "side_float", {"side"}, {"side_f"}), "to",
                             onnx::TensorProto::FLOAT);
  fuzz::ModelWriter::integer(m.node("Cast", "hw32", {"hw"}, {"hw32"}), "to",
                             onnx::TensorProto::INT32);
  fuzz::ModelWriter::ints(m.node("ReduceMin", "min32", {"hw32"}, {"min32"}), "axes", {0});
  fuzz::ModelWriter::integer(m.node("Cast", "min_float", {"min32"}, {"min_f"}), "to",
                             onnx::TensorProto::FLOAT);
  m.node("Mul", "scale", {"x", "side_f"}, {"scaled"});
  m.node("Add", "shift", {"scaled", "min_f"}, {"y"});
  return m.bytes();
}

TEST(IntegerReduce, MinAndMaxOfSizesFoldAsOnnxRuntimeComputesThem) {
  testing::TempDir dir;
  const std::string path = dir.file("sides.onnx");
  testing::write_bytes(path, sides_model("ReduceMax"));
  const Tensor x = testing::random_f32({2, 3, 5, 7}, 4, -1.0f, 1.0f);
  runtime::Session session(graph::load_onnx(path));
  const std::span<const Tensor> got = session.run(x);
  const std::vector<Tensor> want = testing::run_ort(path, {x});
  ASSERT_EQ(got.size(), 2u);
  ASSERT_EQ(want.size(), 2u);
  for (int64_t i = 0; i < x.numel(); ++i) {
    ASSERT_NEAR(got[0].data<float>()[i], x.data<float>()[i] * 5.0 + 5.0, 1e-5) << i;
    ASSERT_EQ(got[0].data<float>()[i], want[0].data<float>()[i]) << i;
  }
  ASSERT_EQ(got[1].dtype(), DType::kInt64);
  EXPECT_EQ(got[1].to_int64_vector(), (std::vector<int64_t>{7}));
  EXPECT_EQ(got[1].to_int64_vector(), want[1].to_int64_vector());
}

TEST(IntegerReduce, EquivalenceComparesIntegerOutputsExactly) {
  auto a = graph::parse_onnx(sides_model("ReduceMax"), "max.onnx");
  auto b = graph::parse_onnx(sides_model("ReduceMin"), "min.onnx");
  const std::vector<std::vector<Tensor>> batches = {
      {testing::random_f32({2, 3, 5, 7}, 5, -1.0f, 1.0f)}};
  const runtime::EquivalenceFigures same = runtime::check_equivalence(*a, *a, batches);
  EXPECT_TRUE(same.equivalent);
  EXPECT_EQ(same.integer_mismatches, 0u);
  EXPECT_EQ(same.elements, 2u * 3 * 5 * 7 + 1);
  const runtime::EquivalenceFigures other = runtime::check_equivalence(*a, *b, batches);
  EXPECT_FALSE(other.equivalent);
  EXPECT_EQ(other.integer_mismatches, 1u);  // 7 against 5; y is the same
  EXPECT_EQ(other.max_abs_diff, 0.0);
}

// x [2, 6] cast to int32 and int64, each reduced along axis 1 by ReduceSum (axes an input),
// ReduceProd, ReduceL1 and ReduceSumSquare (keepdims 0), the outputs in the data's type.
std::string integer_reductions_model() {
  fuzz::ModelWriter m("integer_reductions");
  m.input("x", {2, 6});
  m.int64_weight("axis", {1});
  m.node("Cast", "to32", {"x"}, {"x32"});
  m.node("Cast", "to64", {"x"}, {"x64"});
  fuzz::ModelWriter::integer(m.graph()->mutable_node(0), "to", onnx::TensorProto::INT32);
  fuzz::ModelWriter::integer(m.graph()->mutable_node(1), "to", onnx::TensorProto::INT64);
  for (const char* type : {"32", "64"}) {
    const std::string x = std::string("x") + type;
    for (const char* op : {"ReduceSum", "ReduceProd", "ReduceL1", "ReduceSumSquare"}) {
      const std::string out = std::string(op) + type;
      m.output(out, {2});
      m.graph()
          ->mutable_output(m.graph()->output_size() - 1)
          ->mutable_type()
          ->mutable_tensor_type()
          ->set_elem_type(type == std::string("32") ? onnx::TensorProto::INT32
                                                    : onnx::TensorProto::INT64);
      onnx::NodeProto* node = nullptr;
      if (op == std::string("ReduceSum")) {
        node = m.node(op, out, {x, "axis"}, {out});
      } else {
        node = m.node(op, out, {x}, {out});
        fuzz::ModelWriter::ints(node, "axes", {1});
      }
      fuzz::ModelWriter::integer(node, "keepdims", 0);
    }
  }
  return m.bytes();
}

TEST(IntegerReduce, SumsProductsAndNormsAreOnnxRuntimesSaturatedPastTheRange) {
  testing::TempDir dir;
  const std::string path = dir.file("reductions.onnx");
  testing::write_bytes(path, integer_reductions_model());
  // Row 0: an int32 product past -2^31 (-2.1e11) and a sum of squares past 2^31 - 1; row 1: an
  // int32 product and sum of squares past 2^31 - 1; every int64 result inside its range.
  Tensor x(DType::kFloat32, {2, 6});
  const std::vector<float> values = {100000, 100000, -1,     1,      7, 3,
                                     50000,  50000,  -50000, -50000, 1, 1};
  std::copy(values.begin(), values.end(), x.data<float>());
  runtime::Session session(graph::load_onnx(path));
  const std::span<const Tensor> got = session.run(x);
  const std::vector<Tensor> want = testing::run_ort(path, {x});
  ASSERT_EQ(got.size(), 8u);
  ASSERT_EQ(want.size(), 8u);
  const std::vector<std::vector<int64_t>> expected = {
      // int32: sum, product, L1, sum of squares
      {200010, 2},
      {std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()},
      {200012, 200002},
      {std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::max()},
      // int64
      {200010, 2},
      {-210000000000, 6250000000000000000},
      {200012, 200002},
      {20000000060, 10000000002}};
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(got[i].dtype(), i < 4 ? DType::kInt32 : DType::kInt64);
    EXPECT_EQ(got[i].to_int64_vector(), expected[i]);
    EXPECT_EQ(got[i].to_int64_vector(), want[i].to_int64_vector());
  }
}

}  // namespace
}  // namespace qforge
