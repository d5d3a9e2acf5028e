// Shape op backward: the float64 references against central finite differences of the forward
// kernels run on float64 elements (they move 8-byte elements as they move 4-byte ones), the
// float32 kernels against the references, accumulation, and the same bits on 1 and 2 threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "kernels/reference/shape_backward_reference.h"
#include "kernels/reference/shape_reference.h"
#include "kernels/shape_backward.h"
#include "tests/support/float_checks.h"
#include "tests/support/gradient_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::absolute;
using testing::central_differences;
using testing::expect_matches_differences;
using testing::expect_matches_reference;
using testing::expect_same_bits;
using testing::random_values;
using testing::ThreadCount;
using testing::to_double;

std::vector<float> to_float(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}

// An int64 tensor holding the bits of float64 values, for the byte-moving forward kernels.
Tensor double_tensor(const Shape& shape, const std::vector<double>& values) {
  Tensor t(DType::kInt64, shape);
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size() * sizeof(double));
  return t;
}

Tensor index_tensor(const std::vector<int64_t>& values) {
  Tensor t(DType::kInt64, {static_cast<int64_t>(values.size())});
  std::copy(values.begin(), values.end(), t.data<int64_t>());
  return t;
}

struct TransposeCase {
  Shape shape, perm;
};

TEST(TransposeBackward, MatchesReferenceAndDifferences) {
  const TransposeCase cases[] = {{{3, 13}, {1, 0}},
                                 {{2, 3, 5, 7}, {0, 2, 3, 1}},
                                 {{3, 1, 17, 5}, {3, 2, 0, 1}},
                                 {{127, 33}, {1, 0}}};
  for (const TransposeCase& c : cases) {
    const size_t n = static_cast<size_t>(shape_numel(c.shape));
    std::vector<double> x = to_double(random_values(n, 1));
    const std::vector<double> dy = to_double(random_values(n, 2));
    std::vector<double> ref(n), y(n);
    reference::transpose_backward(c.shape, c.perm, dy.data(), ref.data());
    const TransposePlan forward = plan_transpose(c.shape, c.perm, sizeof(double));
    auto loss = [&] {
      transpose(forward, x.data(), y.data());
      return testing::dot(y, dy);
    };
    expect_matches_differences(ref, central_differences(x, loss), 1e-8, "transpose dx");
    const std::vector<float> dyf = to_float(dy);
    std::vector<float> dx(n, NAN);
    transpose_backward(c.shape, c.perm, dyf.data(), dx.data());
    EXPECT_EQ(to_double(dx), ref);
    const std::vector<float> start = random_values(n, 3);
    std::vector<float> added = start;
    transpose_backward(c.shape, c.perm, dyf.data(), added.data(), GradMode::kAccumulate);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(added[i], start[i] + dx[i]) << i;
    EXPECT_EQ(inverse_permutation(inverse_permutation(c.perm)), c.perm);
  }
}

TEST(SliceBackward, MatchesReferenceAndDifferences) {
  struct Axis {
    int64_t start, end, step;
  };
  struct SliceCase {
    Shape shape;
    std::vector<Axis> axes;
  };
  const SliceCase cases[] = {
      {{13, 17}, {{1, 12, 1}, {0, 17, 2}}},
      {{3, 5, 7}, {{0, 3, 1}, {4, -6, -1}, {6, 0, -3}}},
      {{2, 13}, {{0, 2, 1}, {3, 3, 1}}},  // empty
      {{127}, {{-100, 127, 5}}},
  };
  for (const SliceCase& c : cases) {
    std::vector<SliceRange> ranges;
    Shape y_shape;
    for (size_t d = 0; d < c.shape.size(); ++d) {
      ranges.push_back(slice_range(c.shape[d], c.axes[d].start, c.axes[d].end, c.axes[d].step));
      y_shape.push_back(ranges.back().count);
    }
    const size_t n = static_cast<size_t>(shape_numel(c.shape));
    const size_t m = static_cast<size_t>(shape_numel(y_shape));
    std::vector<double> x = to_double(random_values(n, 4));
    const std::vector<double> dy = to_double(random_values(m, 5));
    std::vector<double> ref(n), y(m);
    reference::slice_backward(c.shape, ranges, dy.data(), ref.data());
    const StridedCopyPlan forward = plan_slice(c.shape, ranges, sizeof(double));
    auto loss = [&] {
      strided_copy(forward, x.data(), y.data());
      return testing::dot(y, dy);
    };
    expect_matches_differences(ref, central_differences(x, loss), 1e-8, "slice dx");
    const StridedCopyPlan plan = plan_slice(c.shape, ranges, sizeof(float));
    const std::vector<float> dyf = to_float(dy);
    std::vector<float> dx(n, NAN);
    slice_backward(plan, dyf.data(), dx.data(), static_cast<int64_t>(n));
    EXPECT_EQ(to_double(dx), ref);
    const std::vector<float> start = random_values(n, 6);
    std::vector<float> added = start;
    slice_backward(plan, dyf.data(), added.data(), static_cast<int64_t>(n), GradMode::kAccumulate);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(added[i], start[i] + dx[i]) << i;
  }
}

TEST(ConcatBackward, MatchesReferenceAndDifferences) {
  const std::vector<Shape> shapes = {{3, 2, 5}, {3, 0, 5}, {3, 7, 5}, {3, 1, 5}};
  const int axis = 1;
  const Shape y_shape = {3, 10, 5};
  const size_t m = static_cast<size_t>(shape_numel(y_shape));
  const std::vector<double> dy = to_double(random_values(m, 7));
  std::vector<std::vector<double>> xs, refs;
  for (size_t k = 0; k < shapes.size(); ++k) {
    const size_t n = static_cast<size_t>(shape_numel(shapes[k]));
    xs.push_back(to_double(random_values(n, 8 + static_cast<uint32_t>(k))));
    refs.emplace_back(n);
  }
  std::vector<double*> ref_ptrs;
  for (auto& r : refs) ref_ptrs.push_back(r.data());
  reference::concat_backward(shapes, axis, dy.data(), ref_ptrs);
  const ConcatPlan forward = plan_concat(shapes, axis, sizeof(double));
  for (size_t k = 0; k < shapes.size(); ++k) {
    auto loss = [&] {
      std::vector<Tensor> inputs;
      for (size_t i = 0; i < shapes.size(); ++i) inputs.push_back(double_tensor(shapes[i], xs[i]));
      Tensor y(DType::kInt64, y_shape);
      concat(forward, inputs, y);
      std::vector<double> yv(m);
      std::memcpy(yv.data(), y.raw(), m * sizeof(double));
      return testing::dot(yv, dy);
    };
    expect_matches_differences(refs[k], central_differences(xs[k], loss), 1e-8, "concat dx");
  }
  const ConcatPlan plan = plan_concat(shapes, axis, sizeof(float));
  const std::vector<float> dyf = to_float(dy);
  std::vector<std::vector<float>> dxs;
  for (const Shape& s : shapes) dxs.emplace_back(static_cast<size_t>(shape_numel(s)), NAN);
  std::vector<float*> ptrs = {dxs[0].data(), dxs[1].data(), nullptr, dxs[3].data()};
  concat_backward(plan, dyf.data(), ptrs);
  EXPECT_EQ(to_double(dxs[0]), refs[0]);
  EXPECT_EQ(to_double(dxs[3]), refs[3]);
  for (float v : dxs[2]) EXPECT_TRUE(std::isnan(v)) << "a null gradient is skipped";
  std::vector<float> added = dxs[3];
  std::vector<float*> only_last = {nullptr, nullptr, nullptr, added.data()};
  concat_backward(plan, dyf.data(), only_last, GradMode::kAccumulate);
  for (size_t i = 0; i < added.size(); ++i) ASSERT_EQ(added[i], dxs[3][i] + dxs[3][i]);
}

TEST(GatherBackward, MatchesReferenceAndDifferences) {
  const Shape data_shape = {3, 13, 5};
  const int axis = 1;
  // Repeated and negative indices: their gradients add up in index order.
  const std::vector<int64_t> indices = {4, 0, 12, 4, -1, 7, 4};
  std::vector<int64_t> wrapped = indices;
  for (int64_t& v : wrapped) v = v < 0 ? v + 13 : v;
  const Shape y_shape = {3, static_cast<int64_t>(indices.size()), 5};
  const size_t n = static_cast<size_t>(shape_numel(data_shape));
  const size_t m = static_cast<size_t>(shape_numel(y_shape));
  std::vector<double> x = to_double(random_values(n, 12));
  const std::vector<double> dy = to_double(random_values(m, 13));
  std::vector<double> ref(n), mag(n), y(m);
  reference::gather_backward(data_shape, axis, wrapped, dy.data(), ref.data());
  reference::gather_backward(data_shape, axis, wrapped, absolute(dy).data(), mag.data());
  const Tensor index = index_tensor(indices);
  const GatherPlan forward = plan_gather(data_shape, axis, sizeof(double));
  auto loss = [&] {
    gather(forward, x.data(), index, y.data());
    return testing::dot(y, dy);
  };
  expect_matches_differences(ref, central_differences(x, loss), 1e-8, "gather dx");
  const GatherPlan plan = plan_gather(data_shape, axis, sizeof(float));
  const std::vector<float> dyf = to_float(dy);
  std::vector<float> dx(n, NAN);
  gather_backward(plan, index, dyf.data(), dx.data());
  expect_matches_reference(dx, ref, mag, "gather dx");

  const Tensor bad = index_tensor({0, 13});
  try {
    gather_backward(plan, bad, dyf.data(), dx.data());
    FAIL() << "expected an Invalid error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_STREQ(e.what(), "expected indices in [-13, 12], got 13");
  }
}

TEST(GatherBackward, SameBitsForAnyThreadCount) {
  const Shape data_shape = {64, 50, 33};
  std::vector<int64_t> indices;
  for (int64_t j = 0; j < 200; ++j) indices.push_back((j * 7) % 50);
  const Tensor index = index_tensor(indices);
  const GatherPlan plan = plan_gather(data_shape, 1, sizeof(float));
  const std::vector<float> dy = random_values(static_cast<size_t>(64 * 200 * 33), 14);
  std::vector<float> runs[2];
  for (int threads : {1, 2}) {
    ThreadCount scope(threads);
    runs[threads - 1].assign(static_cast<size_t>(shape_numel(data_shape)), NAN);
    gather_backward(plan, index, dy.data(), runs[threads - 1].data());
  }
  expect_same_bits(runs[0].data(), runs[1].data(), runs[0].size(), "gather dx");
}

// GatherElements' gradient: repeated indices add up along the axis in order; against the
// reference and float64 central differences of the forward, accumulating, and the same bits at 1
// and 2 threads.
TEST(GatherElementsBackward, MatchesReferenceDifferencesAndThreadCounts) {
  const Shape data_shape = {3, 6, 5};
  const Shape index_shape = {2, 9, 4};  // more positions than the axis holds: repeats
  const int axis = 1;
  const size_t n = static_cast<size_t>(shape_numel(data_shape));
  const size_t m = static_cast<size_t>(shape_numel(index_shape));
  const std::vector<float> u = random_values(m, 21, 0.0f, 1.0f);
  std::vector<int64_t> indices(m), wrapped(m);
  for (size_t i = 0; i < m; ++i) {
    indices[i] = std::min<int64_t>(11, static_cast<int64_t>(u[i] * 12)) - 6;  // [-6, 6)
    wrapped[i] = indices[i] < 0 ? indices[i] + 6 : indices[i];
  }
  Tensor index(DType::kInt64, index_shape);
  std::copy(indices.begin(), indices.end(), index.data<int64_t>());
  std::vector<double> x = to_double(random_values(n, 22));
  const std::vector<double> dy = to_double(random_values(m, 23));
  std::vector<double> ref(n), mag(n), y(m);
  reference::gather_elements_backward(data_shape, index_shape, axis, wrapped, dy.data(),
                                      ref.data());
  reference::gather_elements_backward(data_shape, index_shape, axis, wrapped, absolute(dy).data(),
                                      mag.data());
  const GatherElementsPlan forward =
      plan_gather_elements(data_shape, index_shape, axis, sizeof(double));
  auto loss = [&] {
    gather_elements(forward, x.data(), index, y.data());
    return testing::dot(y, dy);
  };
  expect_matches_differences(ref, central_differences(x, loss), 1e-8, "gather_elements dx");
  const GatherElementsPlan plan =
      plan_gather_elements(data_shape, index_shape, axis, sizeof(float));
  const std::vector<float> dyf = to_float(dy);
  std::vector<float> runs[2];
  for (int threads : {1, 2}) {
    ThreadCount scope(threads);
    runs[threads - 1].assign(n, NAN);
    gather_elements_backward(plan, index, dyf.data(), runs[threads - 1].data(),
                             static_cast<int64_t>(n));
  }
  expect_matches_reference(runs[0], ref, mag, "gather_elements dx");
  expect_same_bits(runs[0].data(), runs[1].data(), n, "gather_elements dx");
  std::vector<float> added = runs[0];
  gather_elements_backward(plan, index, dyf.data(), added.data(), static_cast<int64_t>(n),
                           GradMode::kAccumulate);
  // Added onto dx: the reference of twice dy.
  std::vector<double> ref2(n), dy2(m);
  for (size_t i = 0; i < m; ++i) dy2[i] = 2 * dy[i];
  reference::gather_elements_backward(data_shape, index_shape, axis, wrapped, dy2.data(),
                                      ref2.data());
  std::vector<double> mag2(n);
  for (size_t i = 0; i < n; ++i) mag2[i] = 2 * mag[i];
  expect_matches_reference(added, ref2, mag2, "gather_elements dx accumulated");
}

// GatherND against the reference (batch dims 0 and 1, partial and full tuples, negative and
// repeated tuples), and its gradient against central differences of the reference, accumulated
// in order: the same bits at 1 and 2 threads.
TEST(GatherNdBackward, MatchesReferenceDifferencesAndThreadCounts) {
  struct Case {
    Shape data, indices;
    int64_t batch_dims;
  };
  const Case cases[] = {{{4, 3, 5}, {3, 2}, 0},
                        {{2, 6, 3}, {2, 4, 1}, 1},
                        {{3, 4}, {5, 2}, 0},
                        {{2, 3, 4, 700}, {2, 3, 2}, 1}};
  uint32_t seed = 41;
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_str(c.data) + " " + shape_str(c.indices));
    const auto b = static_cast<size_t>(c.batch_dims);
    const int64_t k = c.indices.back();
    Tensor index(DType::kInt64, c.indices);
    const std::vector<float> u =
        random_values(static_cast<size_t>(index.numel()), seed++, 0.0f, 1.0f);
    for (int64_t i = 0; i < index.numel(); ++i) {
      const int64_t dim = c.data[b + static_cast<size_t>(i % k)];
      index.data<int64_t>()[i] =
          std::min<int64_t>(2 * dim - 1, static_cast<int64_t>(u[i] * 2 * dim)) - dim;
    }
    GatherNdPlan plan;
    for (size_t d = 0; d < b; ++d) plan.batch *= c.data[d];
    for (size_t d = b; d + 1 < c.indices.size(); ++d) plan.tuples *= c.indices[d];
    for (int64_t q = 0; q < k; ++q) plan.dims.push_back(c.data[b + static_cast<size_t>(q)]);
    for (size_t d = b + static_cast<size_t>(k); d < c.data.size(); ++d) plan.slice *= c.data[d];
    const Tensor data = testing::random_f32(c.data, seed++, -1.0f, 1.0f);
    const Tensor want = reference::gather_nd(data, index, c.batch_dims);
    Tensor got(DType::kFloat32, want.shape());
    gather_nd(plan, data.raw(), index, got.raw());
    EXPECT_EQ(std::memcmp(got.raw(), want.raw(), got.nbytes()), 0);
    const size_t n = static_cast<size_t>(data.numel()), m = static_cast<size_t>(want.numel());
    const std::vector<float> dy = random_values(m, seed++);
    std::vector<float> dx[2];
    for (int threads : {1, 2}) {
      ThreadCount scope(threads);
      dx[threads - 1].assign(n, NAN);
      gather_nd_backward(plan, index, dy.data(), dx[threads - 1].data(), static_cast<int64_t>(n));
    }
    expect_same_bits(dx[0].data(), dx[1].data(), n, "dx");
    if (n > 1000) continue;  // central differences: two gathers per element
    const std::vector<double> r = to_double(dy);
    std::vector<double> numeric(n);
    for (size_t i = 0; i < n; ++i) {
      Tensor plus = data.clone(), minus = data.clone();
      plus.data<float>()[i] += 0.25f;
      minus.data<float>()[i] -= 0.25f;
      auto loss = [&](const Tensor& d) {
        const Tensor y = reference::gather_nd(d, index, c.batch_dims);
        return testing::dot(to_double(std::vector<float>(y.data<float>(), y.data<float>() + m)), r);
      };
      numeric[i] = (loss(plus) - loss(minus)) / 0.5;
    }
    expect_matches_differences(to_double(dx[0]), numeric, 1e-5, "dx");
  }
}

// ScatterElements forward against the reference's row-major writes (repeated targets: the last
// kept, or summed with add), and its gradients against central differences of the reference:
// the data's dy where nothing was written, the last write of each target its dy, overwritten
// writes 0; the same bits at 1 and 2 threads; the scratch stands in for an unwanted ddata.
TEST(ScatterElementsBackward, MatchesReferenceDifferencesAndThreadCounts) {
  const Shape data_shape = {3, 4, 5};
  const Shape index_shape = {2, 7, 5};  // more writes than the axis holds: repeated targets
  const int axis = 1;
  const size_t n = static_cast<size_t>(shape_numel(data_shape));
  const size_t m = static_cast<size_t>(shape_numel(index_shape));
  const std::vector<float> u = random_values(m, 31, 0.0f, 1.0f);
  Tensor index(DType::kInt64, index_shape);
  for (size_t i = 0; i < m; ++i) {
    index.data<int64_t>()[i] = std::min<int64_t>(7, static_cast<int64_t>(u[i] * 8)) - 4;
  }
  const GatherElementsPlan plan = plan_gather_elements(data_shape, index_shape, axis, 4);
  for (bool add : {false, true}) {
    SCOPED_TRACE(add ? "add" : "none");
    const Tensor data = testing::random_f32(data_shape, 32, -1.0f, 1.0f);
    const Tensor updates = testing::random_f32(index_shape, 33, -1.0f, 1.0f);
    const Tensor want = reference::scatter_elements(data, index, updates, axis, add);
    Tensor got(DType::kFloat32, data_shape);
    scatter_elements(plan, data.raw(), index, updates.raw(), static_cast<int64_t>(n), add,
                     got.raw());
    if (add) {
      for (size_t i = 0; i < n; ++i) {
        EXPECT_NEAR(got.data<float>()[i], want.data<float>()[i], 1e-6) << i;
      }
    } else {
      EXPECT_EQ(std::memcmp(got.raw(), want.raw(), got.nbytes()), 0);
    }
    const std::vector<float> dy = random_values(n, 34);
    std::vector<float> ddata[2], dupdates[2];
    for (int threads : {1, 2}) {
      ThreadCount scope(threads);
      ddata[threads - 1].assign(n, NAN);
      dupdates[threads - 1].assign(m, NAN);
      scatter_elements_backward(plan, index, add, dy.data(), ddata[threads - 1].data(),
                                dupdates[threads - 1].data(), static_cast<int64_t>(n), nullptr);
    }
    expect_same_bits(ddata[0].data(), ddata[1].data(), n, "ddata");
    expect_same_bits(dupdates[0].data(), dupdates[1].data(), m, "dupdates");
    std::vector<float> scratch(n), alone(m, NAN);
    scatter_elements_backward(plan, index, add, dy.data(), nullptr, alone.data(),
                              static_cast<int64_t>(n), scratch.data());
    EXPECT_EQ(alone, dupdates[0]) << "without ddata";
    // Central differences of Σ dy · scatter(data, updates) in float64 through the reference.
    const std::vector<double> r = to_double(dy);
    auto loss_of = [&](const Tensor& d, const Tensor& up) {
      const Tensor y = reference::scatter_elements(d, index, up, axis, add);
      return testing::dot(to_double(std::vector<float>(y.data<float>(), y.data<float>() + n)), r);
    };
    for (int which : {0, 1}) {
      const Tensor& base = which == 0 ? data : updates;
      std::vector<double> numeric(static_cast<size_t>(base.numel()));
      for (int64_t i = 0; i < base.numel(); ++i) {
        Tensor plus = base.clone(), minus = base.clone();
        plus.data<float>()[i] += 0.25f;
        minus.data<float>()[i] -= 0.25f;
        const double lp = which == 0 ? loss_of(plus, updates) : loss_of(data, plus);
        const double lm = which == 0 ? loss_of(minus, updates) : loss_of(data, minus);
        numeric[static_cast<size_t>(i)] = (lp - lm) / 0.5;
      }
      expect_matches_differences(to_double(which == 0 ? ddata[0] : dupdates[0]), numeric, 1e-5,
                                 which == 0 ? "ddata" : "dupdates");
    }
  }
}

}  // namespace
}  // namespace qforge::kernels
