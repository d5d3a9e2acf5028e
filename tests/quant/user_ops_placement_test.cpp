// Q/DQ placement around Tile, ReduceMax, ReduceMin, ReduceSum and ArgMax, as TensorRT runs them:
// Tile, ReduceMax and ReduceMin only move or select a quantized tensor's values, so a Concat they
// feed shares one scale with the points behind them, as it does through MaxPool; ReduceSum makes
// new values and ArgMax indices, so the point behind them keeps its own scale; none of the five
// gets a pair.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "graph/fusions.h"
#include "graph/plan.h"
#include "quant/placement.h"
#include "tests/support/graph_builders.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Shape;
using graph::Value;

TEST(UserOpsPlacement, TileReduceMaxAndReduceMinJoinTheConcatGroupReduceSumAndArgMaxDoNot) {
  testing::GraphBuilder b(5);
  Value* x = b.g->add_input("x", DType::kFloat32, Shape{1, 4, 6, 6});
  auto conv = [&](Value* in, int64_t in_channels) {
    return b.node("Conv", {in, b.constant({4, in_channels, 3, 3}), b.constant({4})},
                  {.attributes = {{"pads", std::vector<int64_t>{1, 1, 1, 1}}}});
  };
  Value* p = conv(x, 4);
  Value* q = conv(x, 4);
  Value* r = conv(x, 4);
  Value* m = conv(x, 4);
  std::vector<Value*> outputs = {conv(p, 4), conv(q, 4), conv(r, 4), conv(m, 4)};
  Value* tiled = b.node("Tile", {p, testing::int_const(*b.g, "repeats", {1, 2, 1, 1})});
  Value* max = b.node("ReduceMax", {q}, {.attributes = {{"axes", std::vector<int64_t>{1}}}});
  Value* min = b.node("ReduceMin", {m}, {.attributes = {{"axes", std::vector<int64_t>{1}}}});
  Value* sum = b.node("ReduceSum", {r, testing::int_const(*b.g, "axes", {1})});
  Value* arg = b.node("ArgMax", {r}, {.attributes = {{"axis", int64_t{1}}}});
  Value* joined = b.node("Concat", {tiled, max, min, sum}, {.attributes = {{"axis", int64_t{1}}}});
  outputs.push_back(conv(joined, 11));
  outputs.push_back(arg);
  b.g->opset = 17;
  for (Value* out : outputs) b.g->mark_output(out);

  // The fusions replace the Conv nodes; the tensors keep their names.
  const std::string p_name = p->name(), q_name = q->name(), r_name = r->name();
  const std::string m_name = m->name();
  const std::string joined_name = joined->name();
  const std::vector<graph::Pattern> patterns = graph::fusion_patterns();
  graph::run_fusions(*b.g, patterns);
  const quant::QuantPlan plan = quant::place_qdq(*b.g);
  std::vector<std::pair<std::string, std::string>> points;
  for (const quant::ActivationPoint& point : plan.activations) {
    points.emplace_back(point.tensor, point.scale_group);
  }
  const std::vector<std::pair<std::string, std::string>> want = {
      {"x", ""},    {p_name, p_name}, {q_name, p_name},
      {r_name, ""}, {m_name, p_name}, {joined_name, p_name},
  };
  EXPECT_EQ(points, want);
}

}  // namespace
}  // namespace qforge
