// Split: the kernel against the reference on awkward shapes and axes (empty parts, one part,
// 1-, 4- and 8-byte elements) at 1 and 2 threads; its backward (concat of the outputs'
// gradients, zero where none reached an output) against central finite differences of the
// forward run on float64 elements and against the reference concat.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/reference/shape_reference.h"
#include "kernels/shape_backward.h"
#include "kernels/shape_ops.h"
#include "tests/support/float_checks.h"
#include "tests/support/gradient_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::random_values;
using testing::ThreadCount;
using testing::to_double;

struct SplitCase {
  Shape shape;
  int axis;
  std::vector<int64_t> sizes;
};

const SplitCase kCases[] = {
    {{3, 13, 5, 7}, 1, {6, 7}},         // C2f's two halves, odd
    {{2, 64, 9, 9}, 1, {32, 32}},       // even halves
    {{1, 13, 127}, 2, {1, 0, 63, 63}},  // an empty part, the last axis
    {{5, 3}, 0, {5}},                   // one part
    {{127, 1, 3}, 0, {13, 100, 14}},    // the first axis
    {{2, 3, 4, 5}, 3, {2, 2, 1}},       // short rows
    {{1, 1, 1, 1}, 1, {1}},             // one element
};

std::vector<Shape> part_shapes(const SplitCase& c) {
  std::vector<Shape> shapes;
  for (int64_t size : c.sizes) {
    Shape s = c.shape;
    s[static_cast<size_t>(c.axis)] = size;
    shapes.push_back(s);
  }
  return shapes;
}

TEST(Split, MatchesTheReferenceForEveryElementSizeAndThreadCount) {
  for (const SplitCase& c : kCases) {
    SCOPED_TRACE(shape_str(c.shape) + " axis " + std::to_string(c.axis));
    for (DType dtype : {DType::kFloat32, DType::kUInt8, DType::kInt64}) {
      const int64_t n = shape_numel(c.shape);
      Tensor x(dtype, c.shape);
      auto* bytes = static_cast<unsigned char*>(x.raw());
      for (size_t i = 0; i < x.nbytes(); ++i) bytes[i] = static_cast<unsigned char>(i * 7 + n);
      const std::vector<Tensor> want = reference::split(x, c.sizes, c.axis);
      const std::vector<Shape> shapes = part_shapes(c);
      const ConcatPlan plan = plan_concat(shapes, c.axis, dtype_size(dtype));
      for (int threads : {1, 2}) {
        ThreadCount scope(threads);
        std::vector<Tensor> outputs;
        for (const Shape& s : shapes) outputs.emplace_back(dtype, s);
        split(plan, x.raw(), outputs);
        for (size_t k = 0; k < outputs.size(); ++k) {
          ASSERT_EQ(outputs[k].shape(), want[k].shape());
          EXPECT_EQ(std::memcmp(outputs[k].raw(), want[k].raw(), want[k].nbytes()), 0)
              << "part " << k << " " << dtype_name(dtype) << " on " << threads << " threads";
        }
      }
    }
  }
}

TEST(SplitBackward, MatchesDifferencesAndTheReferenceConcat) {
  for (const SplitCase& c : kCases) {
    SCOPED_TRACE(shape_str(c.shape) + " axis " + std::to_string(c.axis));
    const std::vector<Shape> shapes = part_shapes(c);
    const auto n = static_cast<size_t>(shape_numel(c.shape));
    std::vector<double> x = to_double(random_values(n, 3));
    std::vector<std::vector<double>> dys;
    for (size_t k = 0; k < shapes.size(); ++k) {
      dys.push_back(to_double(random_values(static_cast<size_t>(shape_numel(shapes[k])),
                                            4 + static_cast<uint32_t>(k))));
    }
    // Σ_k dot(part_k, dy_k), the forward moving float64 elements as 8-byte ones.
    const ConcatPlan forward = plan_concat(shapes, c.axis, sizeof(double));
    auto loss = [&] {
      std::vector<Tensor> parts;
      for (const Shape& s : shapes) parts.emplace_back(DType::kInt64, s);
      split(forward, x.data(), parts);
      double sum = 0.0;
      for (size_t k = 0; k < parts.size(); ++k) {
        std::vector<double> v(dys[k].size());
        if (!v.empty()) std::memcpy(v.data(), parts[k].raw(), v.size() * sizeof(double));
        sum += testing::dot(v, dys[k]);
      }
      return sum;
    };

    const ConcatPlan plan = plan_concat(shapes, c.axis, sizeof(float));
    std::vector<std::vector<float>> dyf;
    std::vector<const float*> pointers;
    std::vector<Tensor> concat_inputs;
    for (size_t k = 0; k < shapes.size(); ++k) {
      dyf.emplace_back(dys[k].begin(), dys[k].end());
      // The last part's gradient is absent when there are several: it reads as zero.
      const bool absent = shapes.size() > 1 && k + 1 == shapes.size();
      pointers.push_back(absent ? nullptr : dyf[k].data());
      Tensor t(DType::kFloat32, shapes[k]);
      for (int64_t i = 0; i < t.numel(); ++i) {
        t.data<float>()[i] = absent ? 0.0f : dyf[k][static_cast<size_t>(i)];
      }
      concat_inputs.push_back(t);
      if (absent) std::fill(dys[k].begin(), dys[k].end(), 0.0);
    }
    const std::vector<double> numeric_present = testing::central_differences(x, loss);
    const Tensor want = reference::concat(concat_inputs, c.axis);
    for (int threads : {1, 2}) {
      ThreadCount scope(threads);
      std::vector<float> dx(n, NAN);
      split_backward(plan, pointers, dx.data());
      EXPECT_EQ(std::memcmp(dx.data(), want.raw(), want.nbytes()), 0) << threads << " threads";
      testing::expect_matches_differences(to_double(dx), numeric_present, 1e-8, "dx");
    }
  }
}

}  // namespace
}  // namespace qforge::kernels
