// QuantizeLinear and DequantizeLinear in the runtime: the ONNX definition on ties, saturation,
// per-axis scales and both zero-point types, and the FakeQuant fusion of a pair (same bits).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/resolve.h"
#include "runtime/session.h"
#include "tests/support/qdq_test_data.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Shape;
using kernels::Tensor;
using testing::channel_of;
using testing::qdq_stress_data;
using testing::reference_quantize;
using testing::same_bits;

// One quantization grid of a test case; an empty zero_points means an omitted zero point.
struct Grid {
  std::vector<float> scales;
  std::vector<int32_t> zero_points;
  DType dtype = DType::kUInt8;  // the zero point's (uint8 when omitted)
  std::optional<int64_t> axis;  // attribute; absent: the default (1)
};

Tensor scale_tensor(const Grid& g) {
  // A per-tensor scale is a scalar, as ONNX writes it.
  Shape shape = g.scales.size() == 1 ? Shape{} : Shape{static_cast<int64_t>(g.scales.size())};
  Tensor t(DType::kFloat32, shape);
  for (size_t i = 0; i < g.scales.size(); ++i) t.data<float>()[i] = g.scales[i];
  return t;
}

Tensor zero_point_tensor(const Grid& g) {
  Shape shape = g.scales.size() == 1 ? Shape{} : Shape{static_cast<int64_t>(g.scales.size())};
  Tensor t(g.dtype, shape);
  for (size_t i = 0; i < g.zero_points.size(); ++i) {
    if (g.dtype == DType::kInt8) {
      t.data<int8_t>()[i] = static_cast<int8_t>(g.zero_points[i]);
    } else {
      t.data<uint8_t>()[i] = static_cast<uint8_t>(g.zero_points[i]);
    }
  }
  return t;
}

enum class Ops { kQuantize, kDequantize, kPair };

// x → [QuantizeLinear] → [DequantizeLinear] → y with constant scale and zero point.
std::unique_ptr<graph::Graph> qdq_graph(Ops ops, const Shape& shape, const Grid& g) {
  auto graph = std::make_unique<graph::Graph>();
  const DType in_dtype = ops == Ops::kDequantize ? g.dtype : DType::kFloat32;
  graph::Value* cur = graph->add_input("x", in_dtype, shape);
  graph::Value* scale = graph->add_constant("scale", scale_tensor(g));
  graph::Value* zp =
      g.zero_points.empty() ? nullptr : graph->add_constant("zero_point", zero_point_tensor(g));
  auto add = [&](const char* op, const char* out) {
    graph::NodeSpec spec;
    spec.name = std::string(op).append("_node");
    spec.op_type = op;
    spec.inputs = {cur, scale};
    if (zp) spec.inputs.push_back(zp);
    spec.output_names = {out};
    if (g.axis) spec.attributes["axis"] = *g.axis;
    cur = graph->add_node(std::move(spec))->output(0);
  };
  if (ops != Ops::kDequantize) add("QuantizeLinear", "q");
  if (ops != Ops::kQuantize) add("DequantizeLinear", "y");
  graph->mark_output(cur);
  return graph;
}

Tensor run_graph(std::unique_ptr<graph::Graph> graph, const Tensor& x, bool fuse = true) {
  runtime::SessionOptions options;
  options.fuse_qdq = fuse;
  runtime::Session session(std::move(graph), options);
  return session.run(x)[0].clone();
}

struct GridRange {
  int32_t lo;
  int32_t hi;
};

GridRange range_of(DType dtype) {
  return dtype == DType::kInt8 ? GridRange{-128, 127} : GridRange{0, 255};
}

int axis_index(const Grid& g, const Shape& shape) {
  if (g.scales.size() == 1) return -1;
  const int64_t a = g.axis.value_or(1);
  return static_cast<int>(a < 0 ? a + static_cast<int64_t>(shape.size()) : a);
}

int64_t read_int(const Tensor& t, int64_t i) {
  return t.dtype() == DType::kInt8 ? t.data<int8_t>()[i] : t.data<uint8_t>()[i];
}

// Checks QuantizeLinear, then DequantizeLinear on its result, element by element against the
// reference, and that the fused and unfused pairs give the same bits.
void check_against_reference(const Shape& shape, const Grid& g, const Tensor& x) {
  const int axis = axis_index(g, shape);
  const GridRange r = range_of(g.dtype);
  const Tensor q = run_graph(qdq_graph(Ops::kQuantize, shape, g), x);
  ASSERT_EQ(q.dtype(), g.dtype);
  ASSERT_EQ(q.shape(), shape);
  const Tensor y = run_graph(qdq_graph(Ops::kDequantize, shape, g), q);
  ASSERT_EQ(y.dtype(), DType::kFloat32);
  int64_t failures = 0;
  for (int64_t i = 0; i < x.numel() && failures < 10; ++i) {
    const auto c = static_cast<size_t>(channel_of(shape, axis, i));
    const int32_t zp = g.zero_points.empty() ? 0 : g.zero_points[c];
    const int32_t want = reference_quantize(x.data<float>()[i], g.scales[c], zp, r.lo, r.hi);
    const float want_y = static_cast<float>(want - zp) * g.scales[c];
    if (read_int(q, i) != want || std::memcmp(&y.data<float>()[i], &want_y, 4) != 0) {
      ADD_FAILURE() << "element " << i << ": x " << x.data<float>()[i] << " scale " << g.scales[c]
                    << " zero point " << zp << ": q " << read_int(q, i) << " (want " << want
                    << "), y " << y.data<float>()[i] << " (want " << want_y << ")";
      ++failures;
    }
  }
  const Tensor fused = run_graph(qdq_graph(Ops::kPair, shape, g), x, true);
  const Tensor unfused = run_graph(qdq_graph(Ops::kPair, shape, g), x, false);
  EXPECT_TRUE(same_bits(unfused, y));
  EXPECT_TRUE(same_bits(fused, unfused));
}

const std::vector<float> kScales = {0.1f, 0.3f, 0.7f, 0.023f, 1.7f, 3.0f / 7.0f, 2.5f};

TEST(QuantizeOps, TiesRoundHalfToEvenPerTensor) {
  const Shape shape = {3, 5, 67};
  for (float s : kScales) {
    for (const Grid& g : {Grid{{s}, {0}, DType::kInt8}, Grid{{s}, {-7}, DType::kInt8},
                          Grid{{s}, {128}, DType::kUInt8}, Grid{{s}, {}, DType::kUInt8},
                          Grid{{s}, {3}, DType::kUInt8}}) {
      int64_t ties = 0;
      const Tensor x = qdq_stress_data(shape, -1, g.scales, false, 17, &ties);
      EXPECT_GT(ties, x.numel() / 2) << "scale " << s;
      SCOPED_TRACE(::testing::Message()
                   << "scale " << s << " dtype " << kernels::dtype_name(g.dtype));
      check_against_reference(shape, g, x);
    }
  }
}

TEST(QuantizeOps, TiesGoToTheEvenIntegerBothSigns) {
  const Grid g{{0.5f}, {0}, DType::kInt8};
  const Tensor x = Tensor::from_vector<float>(
      {10}, {0.25f, -0.25f, 0.75f, -0.75f, 1.25f, -1.25f, 63.75f, -63.75f, 63.25f, -64.25f});
  const Tensor q = run_graph(qdq_graph(Ops::kQuantize, {10}, g), x);
  const std::vector<int8_t> want = {0, 0, 2, -2, 2, -2, 127, -128, 126, -128};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(q.data<int8_t>()[i], want[i]) << i;
}

TEST(QuantizeOps, SaturatesHugeAndInfiniteValues) {
  const float inf = std::numeric_limits<float>::infinity();
  const Tensor x = Tensor::from_vector<float>(
      {8}, {1e30f, -1e30f, inf, -inf, 3.4e38f, -3.4e38f, 1000.0f, -1000.0f});
  for (const Grid& g : {Grid{{0.3f}, {0}, DType::kInt8}, Grid{{0.3f}, {-100}, DType::kInt8},
                        Grid{{0.3f}, {}, DType::kUInt8}, Grid{{0.3f}, {200}, DType::kUInt8}}) {
    const GridRange r = range_of(g.dtype);
    const Tensor q = run_graph(qdq_graph(Ops::kQuantize, {8}, g), x);
    for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(read_int(q, i), i % 2 == 0 ? r.hi : r.lo) << i;
    check_against_reference({8}, g, x);
  }
}

TEST(QuantizeOps, PerAxisOnFirstSecondAndLastAxes) {
  const Shape shape = {4, 3, 5, 6};
  struct Case {
    int64_t axis;
    DType dtype;
  };
  for (const Case& c : {Case{0, DType::kInt8}, Case{1, DType::kUInt8}, Case{3, DType::kInt8},
                        Case{-1, DType::kUInt8}, Case{-4, DType::kUInt8}, Case{2, DType::kInt8}}) {
    const int64_t axis = c.axis < 0 ? c.axis + 4 : c.axis;
    const auto channels = static_cast<size_t>(shape[static_cast<size_t>(axis)]);
    Grid g;
    g.dtype = c.dtype;
    g.axis = c.axis;
    for (size_t k = 0; k < channels; ++k) {
      g.scales.push_back(kScales[k % kScales.size()] * (1.0f + 0.01f * static_cast<float>(k)));
      const int32_t base = c.dtype == DType::kInt8 ? -20 : 100;
      g.zero_points.push_back(base + 9 * static_cast<int32_t>(k));
    }
    SCOPED_TRACE(::testing::Message() << "axis " << c.axis);
    const Tensor x = qdq_stress_data(shape, static_cast<int>(axis), g.scales, false, 5);
    check_against_reference(shape, g, x);
    // No zero point: a uint8 grid at 0.
    Grid no_zp = g;
    no_zp.zero_points.clear();
    no_zp.dtype = DType::kUInt8;
    check_against_reference(shape, no_zp, x);
  }
}

TEST(QuantizeOps, DequantizeEveryIntegerExactly) {
  for (DType dtype : {DType::kInt8, DType::kUInt8}) {
    const int32_t zp = dtype == DType::kInt8 ? -5 : 131;
    const Grid g{{0.37f}, {zp}, dtype};
    Tensor q(dtype, {256});
    for (int i = 0; i < 256; ++i) {
      if (dtype == DType::kInt8) {
        q.data<int8_t>()[i] = static_cast<int8_t>(i - 128);
      } else {
        q.data<uint8_t>()[i] = static_cast<uint8_t>(i);
      }
    }
    const Tensor y = run_graph(qdq_graph(Ops::kDequantize, {256}, g), q);
    for (int64_t i = 0; i < 256; ++i) {
      EXPECT_EQ(y.data<float>()[i], static_cast<float>(read_int(q, i) - zp) * 0.37f) << i;
    }
  }
}

TEST(QuantizeOps, NanMapsToTheZeroPointFusedOrNot) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor x = Tensor::from_vector<float>({2}, {nan, -nan});
  const Grid g{{0.5f}, {-9}, DType::kInt8};
  const Tensor q = run_graph(qdq_graph(Ops::kQuantize, {2}, g), x);
  EXPECT_EQ(q.data<int8_t>()[0], -9);
  EXPECT_EQ(q.data<int8_t>()[1], -9);
  const Tensor fused = run_graph(qdq_graph(Ops::kPair, {2}, g), x, true);
  const Tensor unfused = run_graph(qdq_graph(Ops::kPair, {2}, g), x, false);
  EXPECT_TRUE(same_bits(fused, unfused));
  EXPECT_FALSE(std::signbit(fused.data<float>()[0]));
  EXPECT_EQ(fused.data<float>()[0], 0.0f);
}

size_t count_ops(const graph::Graph& g, const std::string& op) {
  size_t n = 0;
  for (const graph::Node* node : g.nodes()) n += node->op_type() == op;
  return n;
}

TEST(QuantizeOps, FusionReplacesThePairWithFakeQuant) {
  const Shape shape = {2, 3, 4};
  const Grid g{{0.1f, 0.2f, 0.3f}, {1, -2, 3}, DType::kInt8, int64_t{1}};
  for (bool fuse : {true, false}) {
    runtime::SessionOptions options;
    options.fuse_qdq = fuse;
    runtime::Session session(qdq_graph(Ops::kPair, shape, g), options);
    const graph::Graph& resolved = session.resolved_graph_for({shape});
    EXPECT_EQ(count_ops(resolved, "FakeQuant"), fuse ? 1u : 0u);
    EXPECT_EQ(count_ops(resolved, "QuantizeLinear"), fuse ? 0u : 1u);
    EXPECT_EQ(count_ops(resolved, "DequantizeLinear"), fuse ? 0u : 1u);
    ASSERT_EQ(resolved.outputs().size(), 1u);
    EXPECT_EQ(resolved.outputs()[0]->name(), "y");
  }
}

TEST(QuantizeOps, FusionLeavesPairsWithDifferentParametersOrAVisibleInteger) {
  const Shape shape = {2, 8};
  const Grid g{{0.25f}, {3}, DType::kInt8};
  const Tensor x = qdq_stress_data(shape, -1, g.scales, false, 9);
  // DequantizeLinear with another scale: not a fake quantization.
  {
    auto graph = qdq_graph(Ops::kPair, shape, g);
    graph::Node* dq = graph->find_node("DequantizeLinear_node");
    graph->set_input(dq, 1, graph->add_constant("other_scale", Tensor::scalar_f32(0.5f)));
    const Tensor want = run_graph(qdq_graph(Ops::kQuantize, shape, g), x);
    runtime::Session session(std::move(graph));
    EXPECT_EQ(count_ops(session.resolved_graph_for({shape}), "FakeQuant"), 0u);
    const Tensor y = session.run(x)[0];
    for (int64_t i = 0; i < x.numel(); ++i) {
      EXPECT_EQ(y.data<float>()[i], static_cast<float>(read_int(want, i) - 3) * 0.5f) << i;
    }
  }
  // The integer tensor is also a graph output: it must stay.
  {
    auto graph = qdq_graph(Ops::kPair, shape, g);
    graph->mark_output(graph->find_value("q"));
    runtime::Session session(std::move(graph));
    EXPECT_EQ(count_ops(session.resolved_graph_for({shape}), "FakeQuant"), 0u);
    auto outputs = session.run(x);
    ASSERT_EQ(outputs.size(), 2u);
  }
}

// A constant (a weight) behind a QuantizeLinear → DequantizeLinear pair folds as one FakeQuant:
// the value the two folds gave, bit for bit (ties, saturation, infinities, NaN), per tensor and
// per axis, int8 and uint8; a pair whose integer is a graph output stays.
TEST(QuantizeOps, AConstantPairFoldsToTheValueOfItsTwoFolds) {
  const Shape shape = {5, 6};
  const std::vector<Grid> grids = {
      {{0.3f}, {-3}, DType::kInt8},
      {{0.1f, 0.7f, 0.023f, 1.7f, 0.3f}, {0, 9, 250, 3, 128}, DType::kUInt8, int64_t{0}},
      {{0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f}, {1, -2, 3, -4, 5, -6}, DType::kInt8, int64_t{-1}}};
  for (size_t k = 0; k < grids.size(); ++k) {
    const Grid& g = grids[k];
    const int axis =
        g.scales.size() == 1 ? -1 : static_cast<int>(*g.axis < 0 ? *g.axis + 2 : *g.axis);
    const Tensor w = qdq_stress_data(shape, axis, g.scales, false, 40 + static_cast<uint32_t>(k));
    // The two folds as separate kernels compute them.
    const Tensor q = run_graph(qdq_graph(Ops::kQuantize, shape, g), w);
    const Tensor want = run_graph(qdq_graph(Ops::kDequantize, shape, g), q);
    for (bool integer_is_output : {false, true}) {
      graph::Graph graph;
      graph.opset = 13;
      graph::Value* x = graph.add_input("x", DType::kFloat32, shape);
      graph::Value* wv = graph.add_constant("w", w);
      graph::Value* sv = graph.add_constant("scale", scale_tensor(g));
      graph::Value* zv = graph.add_constant("zero_point", zero_point_tensor(g));
      graph::NodeSpec qs{
          .name = "q", .op_type = "QuantizeLinear", .inputs = {wv, sv, zv}, .output_names = {"wq"}};
      graph::NodeSpec ds{.name = "dq", .op_type = "DequantizeLinear", .output_names = {"wdq"}};
      if (g.axis) {
        qs.attributes["axis"] = *g.axis;
        ds.attributes["axis"] = *g.axis;
      }
      graph::Value* wq = graph.add_node(std::move(qs))->output(0);
      ds.inputs = {wq, sv, zv};
      graph::Value* wdq = graph.add_node(std::move(ds))->output(0);
      graph.mark_output(
          graph
              .add_node(
                  {.name = "add", .op_type = "Add", .inputs = {x, wdq}, .output_names = {"y"}})
              ->output(0));
      if (integer_is_output) graph.mark_output(wq);
      const runtime::ResolveStats stats = runtime::resolve(graph, {});
      if (integer_is_output) {  // an output is never folded: both nodes stay
        EXPECT_EQ(stats.folded_nodes, 0u);
        EXPECT_EQ(stats.remaining_nodes, 3u);
        continue;
      }
      EXPECT_EQ(stats.folded_nodes, 2u);
      EXPECT_EQ(stats.remaining_nodes, 1u);
      const graph::Value* folded = graph.find_node("add")->input(1);
      ASSERT_TRUE(folded->is_constant());
      EXPECT_TRUE(same_bits(folded->constant(), want)) << "grid " << k;
    }
  }
}

TEST(QuantizeOps, RejectsMismatchedParameters) {
  const Shape shape = {2, 3};
  auto expect_invalid = [&](std::unique_ptr<graph::Graph> graph, const std::string& needle) {
    try {
      runtime::Session session(std::move(graph));
      session.run(Tensor(DType::kFloat32, shape));
      ADD_FAILURE() << "no error, expected " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  // Three scales on an axis of two.
  expect_invalid(qdq_graph(Ops::kQuantize, shape, Grid{{1, 2, 3}, {}, DType::kUInt8, 0}), "scale");
  // A zero point of the wrong dtype for DequantizeLinear's int8 input.
  {
    auto graph = std::make_unique<graph::Graph>();
    graph::Value* x = graph->add_input("x", DType::kInt8, shape);
    graph::NodeSpec spec;
    spec.op_type = "DequantizeLinear";
    spec.inputs = {x, graph->add_constant("s", Tensor::scalar_f32(1.0f)),
                   graph->add_constant("zp", Tensor(DType::kUInt8, {}))};
    spec.output_names = {"y"};
    graph->mark_output(graph->add_node(std::move(spec))->output(0));
    try {
      runtime::Session session(std::move(graph));
      session.run(Tensor(DType::kInt8, shape));
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("zero point"), std::string::npos) << e.what();
    }
  }
  // A non-positive scale is refused when the kernel runs.
  expect_invalid(qdq_graph(Ops::kQuantize, shape, Grid{{0.0f}, {}, DType::kUInt8}), "scale");
}

}  // namespace
}  // namespace qforge
