// The data-movement kernels against their naive references (kernels/reference) on awkward
// shapes, ranks 0 to 6, negative axes and steps, and every element size.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/reference/shape_reference.h"
#include "kernels/shape_ops.h"
#include "runtime/threads.h"
#include "tests/support/random.h"

namespace qforge::kernels {
namespace {

// Distinct, recognisable values in any dtype (wrapping for the narrow ones).
Tensor iota(DType dtype, const Shape& shape, int64_t first = 1) {
  Tensor t(dtype, shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const int64_t v = first + i;
    switch (dtype) {
      case DType::kFloat32:
        t.data<float>()[i] = static_cast<float>(v) * 0.5f;
        break;
      case DType::kInt64:
        t.data<int64_t>()[i] = v * 1000003;
        break;
      case DType::kInt32:
        t.data<int32_t>()[i] = static_cast<int32_t>(v);
        break;
      case DType::kInt8:
        t.data<int8_t>()[i] = static_cast<int8_t>(v);
        break;
      case DType::kUInt8:
        t.data<uint8_t>()[i] = static_cast<uint8_t>(v);
        break;
      case DType::kBool:
        static_cast<uint8_t*>(t.raw())[i] = static_cast<uint8_t>(v & 1);
        break;
    }
  }
  return t;
}

void expect_same(const Tensor& actual, const Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.dtype(), expected.dtype()) << what;
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  EXPECT_EQ(std::memcmp(actual.raw(), expected.raw(), actual.nbytes()), 0) << what;
}

Tensor run_transpose(const Tensor& x, const std::vector<int64_t>& perm) {
  const TransposePlan plan = plan_transpose(x.shape(), perm, dtype_size(x.dtype()));
  Tensor y(x.dtype(), transposed_shape(x.shape(), perm));
  transpose(plan, x.raw(), y.raw());
  return y;
}

// Slice through the kernel path the Slice op uses: per-axis ranges from ONNX inputs.
Tensor run_slice(const Tensor& x, const std::vector<int64_t>& starts,
                 const std::vector<int64_t>& ends, const std::vector<int64_t>& axes,
                 const std::vector<int64_t>& steps) {
  std::vector<SliceRange> ranges;
  for (int64_t d : x.shape()) ranges.push_back({0, 1, d});
  for (size_t i = 0; i < starts.size(); ++i) {
    int64_t axis = axes.empty() ? static_cast<int64_t>(i) : axes[i];
    if (axis < 0) axis += x.rank();
    const auto a = static_cast<size_t>(axis);
    ranges[a] = slice_range(x.shape()[a], starts[i], ends[i], steps.empty() ? 1 : steps[i]);
  }
  Shape out;
  for (const SliceRange& r : ranges) out.push_back(r.count);
  Tensor y(x.dtype(), out);
  strided_copy(plan_slice(x.shape(), ranges, dtype_size(x.dtype())), x.raw(), y.raw());
  return y;
}

std::vector<std::vector<int64_t>> all_permutations(int rank) {
  std::vector<int64_t> perm(static_cast<size_t>(rank));
  std::iota(perm.begin(), perm.end(), 0);
  std::vector<std::vector<int64_t>> out;
  do {
    out.push_back(perm);
  } while (std::next_permutation(perm.begin(), perm.end()));
  return out;
}

// Transpose ------------------------------------------------------------------------------------

TEST(ShapeTranspose, EveryPermutationUpToRank4MatchesReference) {
  const Shape shapes[] = {{}, {7}, {3, 13}, {1, 7}, {3, 1, 17}, {2, 3, 5, 7}, {7, 1, 13, 3}};
  for (const Shape& shape : shapes) {
    for (const auto& perm : all_permutations(static_cast<int>(shape.size()))) {
      for (DType dtype : {DType::kFloat32, DType::kInt64, DType::kInt8}) {
        const Tensor x = iota(dtype, shape);
        expect_same(run_transpose(x, perm), reference::transpose(x, perm),
                    shape_str(shape) + " perm " + shape_str(perm) + " " + dtype_name(dtype));
      }
    }
  }
}

TEST(ShapeTranspose, Rank6WindowPermutationMatchesReference) {
  // Swin window partition: [B, H/7, 7, W/7, 7, C] with (0, 1, 3, 2, 4, 5), and its reverse.
  const Tensor x = iota(DType::kFloat32, {2, 8, 7, 8, 7, 12});
  const std::vector<int64_t> perm = {0, 1, 3, 2, 4, 5};
  const TransposePlan plan = plan_transpose(x.shape(), perm, 4);
  EXPECT_FALSE(plan.tiled);  // C stays innermost: a copy of contiguous runs
  EXPECT_EQ(plan.copy.dims, (Shape{16, 8, 7, 84}));
  expect_same(run_transpose(x, perm), reference::transpose(x, perm), "window partition");
  const Tensor odd = iota(DType::kInt64, {1, 3, 7, 2, 7, 5});
  expect_same(run_transpose(odd, perm), reference::transpose(odd, perm), "odd window");
  for (const auto& p : all_permutations(6)) {
    if ((p[0] * 7 + p[3] * 3 + p[5]) % 11 != 0) continue;  // a spread-out sample of 720
    const Tensor small = iota(DType::kFloat32, {2, 3, 1, 5, 2, 3});
    expect_same(run_transpose(small, p), reference::transpose(small, p), "rank 6 " + shape_str(p));
  }
}

TEST(ShapeTranspose, TransformerAndChannelsLastPatternsMatchReference) {
  // [B, S, H, D] -> [B, H, S, D]: contiguous runs of D.
  const Tensor bshd = iota(DType::kFloat32, {2, 197, 12, 64});
  const std::vector<int64_t> heads = {0, 2, 1, 3};
  EXPECT_FALSE(plan_transpose(bshd.shape(), heads, 4).tiled);
  expect_same(run_transpose(bshd, heads), reference::transpose(bshd, heads), "BSHD->BHSD");
  // K transposed for Q·Kᵀ: [B, H, S, D] -> [B, H, D, S], tiled.
  const std::vector<int64_t> kt = {0, 1, 3, 2};
  const Tensor bhsd = iota(DType::kFloat32, {2, 3, 49, 33});
  const TransposePlan kt_plan = plan_transpose(bhsd.shape(), kt, 4);
  EXPECT_TRUE(kt_plan.tiled);
  expect_same(run_transpose(bhsd, kt), reference::transpose(bhsd, kt), "BHSD->BHDS");
  // NCHW -> NHWC merges H and W: a [N, C, HW] -> [N, HW, C] tiled transpose.
  const Tensor nchw = iota(DType::kFloat32, {2, 67, 13, 17});
  const std::vector<int64_t> nhwc = {0, 2, 3, 1};
  const TransposePlan plan = plan_transpose(nchw.shape(), nhwc, 4);
  EXPECT_TRUE(plan.tiled);
  EXPECT_EQ(plan.copy.dims, (Shape{2, 221, 67}));
  expect_same(run_transpose(nchw, nhwc), reference::transpose(nchw, nhwc), "NCHW->NHWC");
  // The tiled path with 1- and 8-byte elements, whole 8×8 blocks and ragged edges.
  const std::vector<int64_t> swap_last = {0, 2, 1};
  const Tensor bytes = iota(DType::kInt8, {3, 41, 37});
  expect_same(run_transpose(bytes, swap_last), reference::transpose(bytes, swap_last), "int8");
  const std::vector<int64_t> reverse = {2, 1, 0};
  const Tensor wide = iota(DType::kInt64, {2, 19, 45});
  expect_same(run_transpose(wide, reverse), reference::transpose(wide, reverse), "int64");
  // Swin QKV split: [B·nW, 49, 3, heads, d] with (2, 0, 3, 1, 4).
  const Tensor qkv = iota(DType::kFloat32, {4, 49, 3, 3, 32});
  const std::vector<int64_t> split = {2, 0, 3, 1, 4};
  expect_same(run_transpose(qkv, split), reference::transpose(qkv, split), "QKV split");
}

TEST(ShapeTranspose, ResultsIndependentOfThreadCount) {
  const Tensor x = iota(DType::kFloat32, {3, 130, 257});
  const std::vector<int64_t> perm = {2, 0, 1};
  const Tensor many = run_transpose(x, perm);
  const int previous = runtime::num_threads();
  runtime::set_num_threads(1);
  const Tensor one = run_transpose(x, perm);
  runtime::set_num_threads(previous);
  expect_same(one, many, "threads");
}

// Slice ----------------------------------------------------------------------------------------

TEST(ShapeSlice, ClampingAndNegativeStepsMatchReference) {
  const Tensor x = iota(DType::kFloat32, {7, 13, 3});
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  struct Case {
    std::vector<int64_t> starts, ends, axes, steps;
  };
  const Case cases[] = {
      {{1}, {5}, {}, {}},         {{0, 2}, {kMax, -1}, {0, 1}, {2, 3}},
      {{-1}, {kMin}, {1}, {-1}},                               // the whole axis reversed
      {{-1}, {-kMax}, {0}, {-1}},                              // torch.flip's bounds
      {{3}, {kMax}, {-2}, {1}},                                // torch.roll's halves
      {{0}, {3}, {-2}, {1}},      {{100}, {-100}, {1}, {-4}},  // clamped start, end below 0
      {{5}, {2}, {0}, {1}},                                    // empty
      {{-100}, {100}, {2}, {2}},  {{6, 12, 2}, {0, 0, -kMax}, {0, 1, 2}, {-2, -5, -1}},
      {{1}, {kMax}, {0}, {kMax}},  // a huge step keeps one element
  };
  for (const Case& c : cases) {
    for (DType dtype : {DType::kFloat32, DType::kInt64, DType::kBool}) {
      const Tensor t = iota(dtype, x.shape());
      expect_same(run_slice(t, c.starts, c.ends, c.axes, c.steps),
                  reference::slice(t, c.starts, c.ends, c.axes, c.steps),
                  "starts " + shape_str(c.starts) + " steps " + shape_str(c.steps));
    }
  }
}

TEST(ShapeSlice, RangesFollowOnnxRules) {
  auto r = slice_range(10, -1, std::numeric_limits<int64_t>::min(), -1);
  EXPECT_EQ(r.start, 9);
  EXPECT_EQ(r.count, 10);
  r = slice_range(10, 2, 9, 3);
  EXPECT_EQ(r.start, 2);
  EXPECT_EQ(r.count, 3);  // 2, 5, 8
  r = slice_range(10, 20, 30, 1);
  EXPECT_EQ(r.count, 0);
  r = slice_range(0, 0, 1, 1);
  EXPECT_EQ(r.count, 0);
}

// Concat, Gather, Expand -----------------------------------------------------------------------

TEST(ShapeConcat, EveryAxisMatchesReference) {
  for (DType dtype : {DType::kFloat32, DType::kInt64, DType::kUInt8}) {
    for (int axis = 0; axis < 3; ++axis) {
      Shape a = {3, 5, 7};
      Shape b = a;
      Shape c = a;
      b[static_cast<size_t>(axis)] = 1;
      c[static_cast<size_t>(axis)] = 0;  // empty inputs take part too
      const std::vector<Tensor> inputs = {iota(dtype, a, 1), iota(dtype, b, 200), iota(dtype, c),
                                          iota(dtype, a, 400)};
      std::vector<Shape> shapes;
      for (const Tensor& t : inputs) shapes.push_back(t.shape());
      const Tensor expected = reference::concat(inputs, axis - 3);
      Tensor y(dtype, expected.shape());
      concat(plan_concat(shapes, axis, dtype_size(dtype)), inputs, y);
      expect_same(y, expected, "axis " + std::to_string(axis));
    }
  }
  // Shape-subgraph style: 1-D int64 pieces.
  const std::vector<Tensor> pieces = {Tensor::from_vector<int64_t>({1}, {1}),
                                      Tensor::from_vector<int64_t>({2}, {49, 3}),
                                      Tensor::from_vector<int64_t>({0}, {})};
  Tensor y(DType::kInt64, {3});
  concat(plan_concat(std::vector<Shape>{{1}, {2}, {0}}, 0, 8), pieces, y);
  EXPECT_EQ(y.to_int64_vector(), (std::vector<int64_t>{1, 49, 3}));
}

TEST(ShapeGather, AxesIndexShapesAndNegativeIndicesMatchReference) {
  const Tensor data = iota(DType::kFloat32, {5, 7, 3});
  const Tensor idx64 = Tensor::from_vector<int64_t>({2, 2}, {0, -1, 2, -3});
  const Tensor idx32 = Tensor::from_vector<int32_t>({3}, {1, 1, -2});
  const Tensor scalar = Tensor::scalar_i64(-2);
  for (const Tensor* idx : {&idx64, &idx32, &scalar}) {
    for (int axis = 0; axis < 3; ++axis) {
      const Tensor expected = reference::gather(data, *idx, axis - 3);
      Tensor y(data.dtype(), expected.shape());
      gather(plan_gather(data.shape(), axis, 4), data.raw(), *idx, y.raw());
      expect_same(y, expected, "axis " + std::to_string(axis) + " idx " + idx->describe());
    }
  }
  const Tensor shape_vec = Tensor::from_vector<int64_t>({4}, {1, 56, 56, 96});
  Tensor one(DType::kInt64, {});
  gather(plan_gather(shape_vec.shape(), 0, 8), shape_vec.raw(), Tensor::scalar_i64(2), one.raw());
  EXPECT_EQ(one.to_int64_vector(), (std::vector<int64_t>{56}));
}

TEST(ShapeGather, OutOfRangeIndexIsInvalid) {
  const Tensor data = iota(DType::kFloat32, {5, 2});
  Tensor y(DType::kFloat32, {1, 2});
  try {
    gather(plan_gather(data.shape(), 0, 4), data.raw(), Tensor::from_vector<int64_t>({1}, {5}),
           y.raw());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_EQ(std::string(e.what()), "expected indices in [-5, 4], got 5");
  }
}

// GatherElements along each axis, indices smaller than the data off the axis, int32 and int64,
// negative ones, data of 4 and 8 bytes, against the reference; an index out of range is Invalid.
TEST(ShapeGatherElements, AxesSmallerIndicesAndNegativeIndicesMatchReference) {
  const Tensor data = iota(DType::kFloat32, {5, 7, 3});
  const Tensor data64 = iota(DType::kInt64, {5, 7, 3});
  const Shape index_shapes[] = {{5, 7, 3}, {2, 4, 3}, {4, 9, 1}, {1, 1, 6}};
  uint32_t seed = 5;
  for (const Shape& index_shape : index_shapes) {
    for (int axis = 0; axis < 3; ++axis) {
      Shape shape = index_shape;
      for (int d = 0; d < 3; ++d) {  // off the axis, no larger than the data
        if (d != axis)
          shape[static_cast<size_t>(d)] =
              std::min(shape[static_cast<size_t>(d)], data.shape()[static_cast<size_t>(d)]);
      }
      const int64_t dim = data.shape()[static_cast<size_t>(axis)];
      const std::vector<float> u = qforge::testing::random_values(
          static_cast<size_t>(shape_numel(shape)), seed++, 0.0f, 1.0f);
      Tensor idx64(DType::kInt64, shape), idx32(DType::kInt32, shape);
      for (size_t i = 0; i < u.size(); ++i) {
        const auto v =
            std::min(2 * dim - 1, static_cast<int64_t>(u[i] * 2 * static_cast<float>(dim))) - dim;
        idx64.data<int64_t>()[i] = v;  // in [-dim, dim)
        idx32.data<int32_t>()[i] = static_cast<int32_t>(v);
      }
      for (const Tensor* idx : {&idx64, &idx32}) {
        for (const Tensor* x : {&data, &data64}) {
          const std::string what =
              "axis " + std::to_string(axis) + " idx " + idx->describe() + " data " + x->describe();
          const Tensor expected = reference::gather_elements(*x, *idx, axis);
          Tensor y(x->dtype(), shape);
          gather_elements(
              plan_gather_elements(x->shape(), shape, axis, kernels::dtype_size(x->dtype())),
              x->raw(), *idx, y.raw());
          expect_same(y, expected, what);
        }
      }
    }
  }
  Tensor y(DType::kFloat32, {1, 2});
  try {
    gather_elements(plan_gather_elements(Shape{5, 2}, Shape{1, 2}, 0, 4), data.raw(),
                    Tensor::from_vector<int64_t>({1, 2}, {1, -6}), y.raw());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_EQ(std::string(e.what()), "expected indices in [-5, 4], got -6");
  }
}

// OneHot with the new axis first, in the middle and last: `on` where the position equals the
// index (negative ones from the depth), `off` elsewhere and for indices out of range.
TEST(ShapeOneHot, NewAxisAnywhereNegativeAndOutOfRangeIndices) {
  const Tensor idx = Tensor::from_vector<int64_t>({2, 3}, {0, 3, -1, 4, -5, 2});
  const int64_t depth = 4;
  const float off = -1.0f, on = 5.0f;
  for (int64_t at = 0; at <= 2; ++at) {
    const int64_t outer = at == 0 ? 1 : at == 1 ? 2 : 6, inner = 6 / outer;
    Tensor y(DType::kFloat32, {outer, depth, inner});
    one_hot(idx, outer, depth, inner, &off, &on, sizeof(float), y.raw());
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t k = 0; k < depth; ++k) {
        for (int64_t i = 0; i < inner; ++i) {
          int64_t v = idx.data<int64_t>()[o * inner + i];
          if (v < 0) v += depth;
          EXPECT_EQ(y.data<float>()[(o * depth + k) * inner + i], v == k ? on : off)
              << "axis " << at << " at " << o << "," << k << "," << i;
        }
      }
    }
  }
  const int64_t off64 = 0, on64 = 1LL << 40;
  const Tensor idx32 = Tensor::from_vector<int32_t>({2}, {1, -1});
  Tensor y(DType::kInt64, {2, 3});
  one_hot(idx32, 2, 3, 1, &off64, &on64, sizeof(int64_t), y.raw());
  EXPECT_EQ(y.to_int64_vector(), (std::vector<int64_t>{0, on64, 0, 0, 0, on64}));
}

// A shape whose element count overflows 64 bits (from a malformed file) is refused wherever its
// count is taken, rather than wrapped into a small or negative size.
TEST(ShapeNumel, ACountThatOverflowsIsInvalid) {
  EXPECT_EQ(shape_numel(Shape{int64_t{1} << 31, int64_t{1} << 31}), int64_t{1} << 62);
  try {
    shape_numel(Shape{432345564227567616, 64, 2});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_EQ(std::string(e.what()),
              "shape [432345564227567616, 64, 2] holds more elements than a 64-bit count");
  }
}

TEST(ShapeExpand, BroadcastsBothWaysMatchingReference) {
  struct Case {
    Shape in, shape;
  };
  const Case cases[] = {{{}, {3, 4}},
                        {{3, 1}, {3, 5}},
                        {{1, 5}, {4, 1}},
                        {{7, 1, 13}, {2, 1, 5, 1}},
                        {{1, 49, 1}, {64, 1, 49, 49}},
                        {{3}, {1}},
                        {{2, 1, 3, 1, 5, 1}, {2, 2, 3, 4, 5, 6}}};
  for (const Case& c : cases) {
    for (DType dtype : {DType::kFloat32, DType::kInt64, DType::kBool}) {
      const Tensor x = iota(dtype, c.in);
      const Tensor expected = reference::expand(x, c.shape);
      Tensor y(dtype, expected.shape());
      strided_copy(plan_expand(c.in, expected.shape(), dtype_size(dtype)), x.raw(), y.raw());
      expect_same(y, expected, shape_str(c.in) + " to " + shape_str(c.shape));
    }
  }
}

// Pad ------------------------------------------------------------------------------------------

TEST(ShapePad, ConstantReflectEdgeAndCroppingMatchReference) {
  struct Case {
    Shape shape;
    std::vector<int64_t> pads;  // ONNX layout
  };
  const Case cases[] = {
      {{7}, {2, 3}},
      {{3, 13}, {0, 1, 0, 2}},
      {{1, 3, 5, 7}, {0, 0, 1, 2, 0, 0, 3, 1}},     // NCHW spatial padding
      {{1, 56, 56, 96}, {0, 0, 0, 0, 0, 7, 7, 0}},  // Swin pads H and W of NHWC
      {{2, 5, 6}, {0, -1, 2, 0, -2, -3}},           // negative pads crop
      {{4, 3}, {5, 6, 7, 8}},                       // pads wider than the axis
      {{2, 1, 3, 1, 2, 1}, {0, 1, 0, 2, 0, 1, 1, 0, 1, 0, 1, 2}},
      {{3, 4}, {0, 0, 0, 0}},
  };
  for (const Case& c : cases) {
    const size_t rank = c.shape.size();
    const std::vector<int64_t> begin(c.pads.begin(), c.pads.begin() + static_cast<int64_t>(rank));
    const std::vector<int64_t> end(c.pads.begin() + static_cast<int64_t>(rank), c.pads.end());
    for (PadMode mode : {PadMode::kConstant, PadMode::kReflect, PadMode::kEdge}) {
      for (DType dtype : {DType::kFloat32, DType::kInt64, DType::kInt8}) {
        const Tensor x = iota(dtype, c.shape);
        const PadPlan plan = plan_pad(c.shape, begin, end, mode, dtype_size(dtype));
        const Tensor expected = reference::pad(x, c.pads, mode, -3);
        ASSERT_EQ(plan.out_shape, expected.shape());
        Tensor value(dtype, {});
        if (dtype == DType::kFloat32) value.data<float>()[0] = -3;
        if (dtype == DType::kInt64) value.data<int64_t>()[0] = -3;
        if (dtype == DType::kInt8) value.data<int8_t>()[0] = -3;
        Tensor y(dtype, plan.out_shape);
        pad(plan, x.raw(), value.raw(), y.raw());
        expect_same(y, expected,
                    shape_str(c.shape) + " pads " + shape_str(c.pads) + " mode " +
                        std::to_string(static_cast<int>(mode)));
      }
    }
  }
}

// ScatterND, Range, Fill -----------------------------------------------------------------------

TEST(ShapeScatterNd, ElementsAndSlicesMatchReference) {
  const Tensor data = iota(DType::kFloat32, {4, 5, 3});
  struct Case {
    Shape indices_shape;
    std::vector<int64_t> indices;
  };
  const Case cases[] = {{{2, 3}, {0, 1, 2, 3, -1, 0}},  // single elements
                        {{3, 2}, {1, 1, -1, 4, 0, 0}},  // rows of 3
                        {{2, 1}, {2, -4}},              // [5, 3] slices
                        {{1, 2, 1}, {3, 1}}};
  for (const Case& c : cases) {
    const Tensor indices = Tensor::from_vector<int64_t>(c.indices_shape, c.indices);
    const int64_t k = c.indices_shape.back();
    Shape update_shape(c.indices_shape.begin(), c.indices_shape.end() - 1);
    update_shape.insert(update_shape.end(), data.shape().begin() + k, data.shape().end());
    const Tensor updates = iota(DType::kFloat32, update_shape, 1000);
    Tensor y(DType::kFloat32, data.shape());
    scatter_nd(data, indices, updates, y);
    expect_same(y, reference::scatter_nd(data, indices, updates), shape_str(c.indices_shape));
  }
  // In place, with int64 data as shape subgraphs carry.
  Tensor ids = iota(DType::kInt64, {6});
  scatter_nd(ids, Tensor::from_vector<int64_t>({1, 1}, {2}),
             Tensor::from_vector<int64_t>({1}, {-7}), ids);
  EXPECT_EQ(ids.to_int64_vector()[2], -7);
  Tensor out(DType::kInt64, {6});
  EXPECT_THROW(scatter_nd(ids, Tensor::from_vector<int64_t>({1, 1}, {6}),
                          Tensor::from_vector<int64_t>({1}, {0}), out),
               Error);
}

TEST(ShapeRange, LengthsAndValuesFollowOnnx) {
  EXPECT_EQ(range_length(int64_t{0}, int64_t{10}, int64_t{3}), 4);
  EXPECT_EQ(range_length(int64_t{10}, int64_t{0}, int64_t{-3}), 4);
  EXPECT_EQ(range_length(int64_t{5}, int64_t{5}, int64_t{1}), 0);
  EXPECT_EQ(range_length(int64_t{5}, int64_t{0}, int64_t{1}), 0);
  EXPECT_EQ(range_length(1.0, 2.0, 0.3), 4);
  EXPECT_EQ(range_length(0.0, -1.0, 0.5), 0);
  Tensor y(DType::kInt64, {4});
  range(Tensor::scalar_i64(10), Tensor::scalar_i64(-3), y);
  EXPECT_EQ(y.to_int64_vector(), (std::vector<int64_t>{10, 7, 4, 1}));
  Tensor f(DType::kFloat32, {3});
  range(Tensor::scalar_f32(0.5f), Tensor::scalar_f32(0.25f), f);
  EXPECT_EQ(f.to_float_vector(), (std::vector<float>{0.5f, 0.75f, 1.0f}));
}

TEST(ShapeFill, FillsEveryElementSize) {
  Tensor b(DType::kBool, {3, 5});
  const uint8_t one = 1;
  fill(b, &one);
  EXPECT_EQ(b.to_int64_vector(), std::vector<int64_t>(15, 1));
  Tensor i(DType::kInt64, {7});
  const int64_t v = -42;
  fill(i, &v);
  EXPECT_EQ(i.to_int64_vector(), std::vector<int64_t>(7, -42));
}

// Trilu ----------------------------------------------------------------------------------------

Tensor run_triangle(const Tensor& x, int64_t k, bool upper) {
  const Shape& s = x.shape();
  const int64_t rows = s[s.size() - 2], cols = s.back();
  Tensor y(x.dtype(), s);
  std::memset(y.raw(), 0xAB, y.nbytes());  // every byte written
  triangle(x.raw(), x.numel() / std::max<int64_t>(rows * cols, 1), rows, cols, k, upper,
           dtype_size(x.dtype()), y.raw());
  return y;
}

// Every k from below the first row's columns to past the last one, both triangles, square, wide,
// tall and batched matrices of every element size, at 1 and 2 threads.
TEST(ShapeTrilu, EveryDiagonalMatchesReferenceAtAnyThreadCount) {
  const std::vector<Shape> shapes = {{1, 1}, {5, 5}, {3, 17}, {13, 4}, {2, 3, 7, 6}, {127, 1}};
  const int previous = runtime::num_threads();
  for (DType dtype : {DType::kFloat32, DType::kInt64, DType::kInt32, DType::kUInt8, DType::kBool}) {
    for (const Shape& shape : shapes) {
      const Tensor x = iota(dtype, shape);
      const int64_t rows = shape[shape.size() - 2], cols = shape.back();
      for (int64_t k = -rows - 1; k <= cols + 1; ++k) {
        for (bool upper : {true, false}) {
          const std::string what = std::string(dtype_name(dtype)) + shape_str(shape) + " k " +
                                   std::to_string(k) + (upper ? " upper" : " lower");
          const Tensor want = reference::trilu(x, k, upper);
          for (int threads : {1, 2}) {
            runtime::set_num_threads(threads);
            expect_same(run_triangle(x, k, upper), want, what);
          }
        }
      }
    }
  }
  runtime::set_num_threads(previous);
  // Large enough for several parallel blocks.
  const Tensor big = iota(DType::kFloat32, {4, 300, 301});
  expect_same(run_triangle(big, 3, false), reference::trilu(big, 3, false), "blocks");
}

}  // namespace
}  // namespace qforge::kernels
