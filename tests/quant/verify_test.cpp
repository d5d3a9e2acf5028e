// The teacher-forced Q/DQ check and flip injection on a two-point model built in code:
// x → Q1 → DQ1 → Mul(c) → Q2 → DQ2 → y. References are computed here by hand (ONNX's rule in
// float32, ties to even), then altered: a flip, a real mismatch, a reference that is
// self-consistent after a flip (which teacher forcing must not blame on the later point).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "quant/flip_sensitivity.h"
#include "quant/verify.h"
#include "runtime/resolve.h"
#include "tests/support/errors.h"
#include "tests/support/graph_builders.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;

constexpr float kS1 = 0.1f;
constexpr float kS2 = 0.07f;
const std::vector<float> kC = {3.0f, -2.0f, 0.5f, 1.25f};

std::unique_ptr<graph::Graph> two_point_model() {
  auto g = std::make_unique<graph::Graph>();
  g->opset = 13;
  graph::Value* x = g->add_input("x", DType::kFloat32, graph::Shape{2, 4});
  graph::Value* s1 = g->add_constant("s1", Tensor::from_vector<float>({}, {kS1}));
  graph::Value* s2 = g->add_constant("s2", Tensor::from_vector<float>({}, {kS2}));
  graph::Value* zp = g->add_constant("zp", Tensor::from_vector<int8_t>({}, {0}));
  graph::Value* c = g->add_constant("c", Tensor::from_vector<float>({4}, kC));
  auto node = [&](const std::string& name, const std::string& op, std::vector<graph::Value*> in,
                  const std::string& out) {
    return g
        ->add_node({.name = name, .op_type = op, .inputs = std::move(in), .output_names = {out}})
        ->output(0);
  };
  graph::Value* q1 = node("Q1", "QuantizeLinear", {x, s1, zp}, "q1");
  graph::Value* d1 = node("DQ1", "DequantizeLinear", {q1, s1, zp}, "d1");
  graph::Value* m = node("Mul", "Mul", {d1, c}, "m");
  graph::Value* q2 = node("Q2", "QuantizeLinear", {m, s2, zp}, "q2");
  graph::Value* y = node("DQ2", "DequantizeLinear", {q2, s2, zp}, "y");
  g->mark_output(y);
  return g;
}

// x / s1: element 1 lies on a tie in float32 (0.25f / 0.1f rounds to 2.5; in exact arithmetic it
// is 2.4999999627), element 6 at 2.3 steps.
Tensor input() {
  return Tensor::from_vector<float>({2, 4},
                                    {0.11f, 0.25f, -0.3f, 0.52f, 1.7f, -0.9f, 0.23f, 0.04f});
}

int8_t quantize(float v, float s) {
  const float q = std::nearbyint(v / s);  // ties to even in the default rounding mode
  return static_cast<int8_t>(std::min(127.0f, std::max(-128.0f, q)));
}

// The reference a correct runtime computes, from `q1` (x's integers, possibly altered).
quant::ReferenceValues reference_from(const std::vector<int8_t>& q1) {
  std::vector<float> d1(8), m(8), y(8);
  std::vector<int8_t> q2(8);
  for (size_t i = 0; i < 8; ++i) {
    d1[i] = static_cast<float>(q1[i]) * kS1;
    m[i] = d1[i] * kC[i % 4];
    q2[i] = quantize(m[i], kS2);
    y[i] = static_cast<float>(q2[i]) * kS2;
  }
  return {{"q1", Tensor::from_vector<int8_t>({2, 4}, q1)},
          {"d1", Tensor::from_vector<float>({2, 4}, d1)},
          {"m", Tensor::from_vector<float>({2, 4}, m)},
          {"q2", Tensor::from_vector<int8_t>({2, 4}, q2)},
          {"y", Tensor::from_vector<float>({2, 4}, y)}};
}

std::vector<int8_t> exact_q1() {
  std::vector<int8_t> q;
  const Tensor x = input();
  for (float v : x.span<float>()) q.push_back(quantize(v, kS1));
  return q;
}

quant::VerifyResult check(const quant::ReferenceValues& ref) {
  const auto model = two_point_model();
  const Tensor x = input();
  return quant::verify_qdq(*model, std::span(&x, 1), ref);
}

TEST(Verify, AgreeingReferenceHasNoDifference) {
  ASSERT_EQ(exact_q1()[1], 2);  // the tie rounds to even
  const quant::VerifyResult r = check(reference_from(exact_q1()));
  ASSERT_EQ(r.points.size(), 2u);
  EXPECT_EQ(r.points[0].node, "Q1");
  EXPECT_EQ(r.points[1].node, "Q2");
  for (const quant::PointCheck& p : r.points) {
    EXPECT_EQ(p.elements, 8);
    EXPECT_EQ(p.flips + p.mismatches + p.plain_differing, 0) << p.node;
  }
  // Q1's pre-quant value is the input x, which the reference does not hold; Q2's is m.
  EXPECT_FALSE(r.points[0].pre_quant_relative_l2.has_value());
  ASSERT_TRUE(r.points[1].pre_quant_relative_l2.has_value());
  EXPECT_EQ(*r.points[1].pre_quant_relative_l2, 0.0);
  EXPECT_TRUE(r.passed());
  EXPECT_FALSE(r.first_plain_difference);
  ASSERT_EQ(r.outputs.size(), 1u);
  EXPECT_EQ(r.outputs[0].plain_relative_l2, 0.0);
  EXPECT_EQ(r.outputs[0].teacher_forced_relative_l2, 0.0);
}

TEST(Verify, TieOnTheOtherSideIsAFlipAndLaterPointsAreTeacherForced) {
  std::vector<int8_t> q1 = exact_q1();
  q1[1] = 3;  // the reference put the tie on the other side
  const quant::VerifyResult r = check(reference_from(q1));
  ASSERT_EQ(r.points.size(), 2u);
  const quant::PointCheck& p1 = r.points[0];
  EXPECT_EQ(p1.flips, 1);
  EXPECT_EQ(p1.mismatches, 0);
  ASSERT_EQ(p1.listed.size(), 1u);
  EXPECT_EQ(p1.listed[0].index, 1);
  EXPECT_EQ(p1.listed[0].qforge, 2);
  EXPECT_EQ(p1.listed[0].reference, 3);
  EXPECT_TRUE(p1.listed[0].flip);
  EXPECT_LT(p1.listed[0].boundary_distance, 1e-6);
  // Q2 recomputed from the reference's Q1 agrees; the plain pass carries the flip on.
  EXPECT_EQ(r.points[1].flips + r.points[1].mismatches, 0);
  EXPECT_EQ(r.points[1].plain_differing, 1);
  EXPECT_EQ(r.points[1].plain_max_step_difference, 3);  // 0.1·2 / 0.07 = 2.9 steps
  ASSERT_TRUE(r.first_plain_difference);
  EXPECT_EQ(*r.first_plain_difference, 0u);
  EXPECT_TRUE(r.passed());
  EXPECT_EQ(r.outputs[0].teacher_forced_relative_l2, 0.0);
  EXPECT_GT(r.outputs[0].plain_relative_l2, 0.0);
}

TEST(Verify, StepAwayFromABoundaryIsAMismatch) {
  std::vector<int8_t> q1 = exact_q1();
  ASSERT_EQ(q1[6], 2);  // 2.3 steps
  q1[6] = 3;
  const quant::VerifyResult r = check(reference_from(q1));
  EXPECT_EQ(r.points[0].mismatches, 1);
  EXPECT_EQ(r.points[0].flips, 0);
  ASSERT_EQ(r.points[0].listed.size(), 1u);
  EXPECT_EQ(r.points[0].listed[0].index, 6);
  EXPECT_NEAR(r.points[0].listed[0].boundary_distance, 0.2, 1e-6);
  EXPECT_FALSE(r.passed());
  // A tolerance that reaches 0.2 steps calls it a flip.
  const auto model = two_point_model();
  const Tensor x = input();
  const quant::VerifyResult wide =
      quant::verify_qdq(*model, std::span(&x, 1), reference_from(q1), {.flip_tolerance = 0.25});
  EXPECT_EQ(wide.points[0].flips, 1);
  EXPECT_TRUE(wide.passed());
}

TEST(Verify, TwoStepsAtTheSecondPointIsAMismatchThere) {
  quant::ReferenceValues ref = reference_from(exact_q1());
  ref["q2"].data<int8_t>()[5] = static_cast<int8_t>(ref["q2"].data<int8_t>()[5] + 2);
  const quant::VerifyResult r = check(ref);
  EXPECT_EQ(r.points[0].flips + r.points[0].mismatches, 0);
  EXPECT_EQ(r.points[1].mismatches, 1);
  EXPECT_EQ(r.points[1].max_step_difference, 2);
  ASSERT_EQ(r.points[1].listed.size(), 1u);
  EXPECT_EQ(r.points[1].listed[0].index, 5);
}

TEST(Verify, DequantizedValuesStandInForIntegers) {
  std::vector<int8_t> q1 = exact_q1();
  q1[1] = 3;
  quant::ReferenceValues ref = reference_from(q1);
  ref.erase("q1");
  ref.erase("q2");
  ref["y"] = reference_from(q1)["y"];
  const quant::VerifyResult r = check(ref);
  EXPECT_EQ(r.points[0].flips, 1);
  EXPECT_EQ(r.points[1].flips + r.points[1].mismatches, 0);
}

TEST(Verify, MissingOrMisshapenReferenceNamesThePoint) {
  quant::ReferenceValues ref = reference_from(exact_q1());
  ref.erase("q2");
  ref.erase("y");
  EXPECT_NE(testing::error_of(ErrorKind::kInvalid, [&] { check(ref); })
                .find("node 'Q2' (QuantizeLinear) output 'q2'"),
            std::string::npos);
  ref = reference_from(exact_q1());
  ref["q1"] = Tensor(DType::kInt8, {4, 2});
  EXPECT_NE(testing::error_of(ErrorKind::kInvalid, [&] { check(ref); })
                .find("reference value 'q1' of node 'Q1' (QuantizeLinear): expected shape [2, 4]"),
            std::string::npos);
}

TEST(Verify, MarkedModelHasEveryPointAsOutput) {
  auto model = two_point_model();
  runtime::resolve(*model, {});
  const std::string bytes = graph::serialize_onnx(*model);
  const std::string marked = quant::model_with_points_as_outputs(bytes, "two_point.onnx");
  onnx::ModelProto proto;
  ASSERT_TRUE(proto.ParseFromString(marked));
  std::vector<std::string> outputs;
  for (const auto& o : proto.graph().output()) outputs.push_back(o.name());
  EXPECT_EQ(outputs, (std::vector<std::string>{"y", "q1", "m", "q2"}));
  EXPECT_EQ(proto.graph().node_size(), 5);
  // x, the first point's pre-quant value, is the graph input and stays one.
  auto reloaded = graph::parse_onnx(marked, "marked");
  EXPECT_EQ(reloaded->outputs().size(), 4u);
}

// DequantizeLinear(QuantizeLinear(x)) on scale s and zero point zp: nodes "Q" and "DQ", the
// integer "q", the output `out`.
graph::Value* add_qdq(graph::Graph& g, graph::Value* x, graph::Value* s, graph::Value* zp,
                      const std::string& out) {
  graph::Value* q =
      g.add_node(
           {.name = "Q", .op_type = "QuantizeLinear", .inputs = {x, s, zp}, .output_names = {"q"}})
          ->output(0);
  return g
      .add_node({.name = "DQ",
                 .op_type = "DequantizeLinear",
                 .inputs = {q, s, zp},
                 .output_names = {out}})
      ->output(0);
}

// With y = DQ(Q(x)) alone, a flip moves one output element by exactly one step: the change of
// its sample's output is s / ‖y_row‖.
TEST(FlipSensitivity, OneFlipMovesTheOutputByOneStep) {
  auto g = std::make_unique<graph::Graph>();
  g->opset = 13;
  graph::Value* x = g->add_input("x", DType::kFloat32, graph::Shape{3, 5});
  graph::Value* s = g->add_constant("s", Tensor::from_vector<float>({}, {0.05f}));
  graph::Value* zp = g->add_constant("zp", Tensor::from_vector<int8_t>({}, {0}));
  g->mark_output(add_qdq(*g, x, s, zp, "y"));
  std::vector<float> values;
  for (int i = 0; i < 15; ++i) values.push_back(0.013f * static_cast<float>(i * i % 11) - 0.04f);
  const Tensor in = Tensor::from_vector<float>({3, 5}, values);
  std::set<double> expected;
  for (int r = 0; r < 3; ++r) {
    double norm = 0;
    for (int i = 0; i < 5; ++i) {
      const double y = static_cast<double>(std::nearbyint(values[r * 5 + i] / 0.05f)) * 0.05f;
      norm += y * y;
    }
    expected.insert(static_cast<double>(0.05f) / std::sqrt(norm));
  }
  const quant::FlipSensitivity f = quant::flip_sensitivity(*g, in, {.injections = 20, .seed = 3});
  EXPECT_EQ(f.injections, 20);
  EXPECT_EQ(f.points, 1);
  ASSERT_EQ(f.changes.size(), 20u);
  for (double c : f.changes) {
    bool found = false;
    for (double e : expected) found = found || std::abs(c - e) <= 1e-6 * e;
    EXPECT_TRUE(found) << c;
  }
  EXPECT_GE(f.p90, f.median);
  const quant::FlipSensitivity again =
      quant::flip_sensitivity(*g, in, {.injections = 20, .seed = 3});
  EXPECT_EQ(again.changes, f.changes);
}

// A model of two outputs, the first computed in float from the input (no point before it), the
// second y = DQ(Q(x)): a flip leaves output 0 as it was and moves output 1 by one step, and the
// change is output 1's, whether the batch is followed (one pass) or not (a pass per injection).
TEST(FlipSensitivity, MeasuresTheOutputAFlipMovesMost) {
  auto g = std::make_unique<graph::Graph>();
  g->opset = 13;
  graph::Value* x = g->add_input("x", DType::kFloat32, graph::Shape{3, 5});
  graph::Value* s = g->add_constant("s", Tensor::from_vector<float>({}, {0.05f}));
  graph::Value* zp = g->add_constant("zp", Tensor::from_vector<int8_t>({}, {0}));
  g->mark_output(
      g->add_node({.name = "relu", .op_type = "Relu", .inputs = {x}, .output_names = {"r"}})
          ->output(0));
  g->mark_output(add_qdq(*g, x, s, zp, "y"));
  std::vector<float> values;
  for (int i = 0; i < 15; ++i) values.push_back(0.013f * static_cast<float>(i * i % 11) - 0.04f);
  const Tensor in = Tensor::from_vector<float>({3, 5}, values);
  std::vector<double> expected;
  for (int r = 0; r < 3; ++r) {
    double norm = 0;
    for (int i = 0; i < 5; ++i) {
      const double y = static_cast<double>(std::nearbyint(values[r * 5 + i] / 0.05f)) * 0.05f;
      norm += y * y;
    }
    expected.push_back(static_cast<double>(0.05f) / std::sqrt(norm));
  }
  const quant::FlipSensitivity f = quant::flip_sensitivity(*g, in, {.injections = 9, .seed = 3});
  EXPECT_EQ(f.passes, 3);
  ASSERT_EQ(f.changes.size(), 9u);
  for (size_t k = 0; k < f.changes.size(); ++k) {
    EXPECT_NEAR(f.changes[k], expected[k % 3], 1e-6 * expected[k % 3]) << "injection " << k;
  }
  const quant::FlipSensitivity single =
      quant::flip_sensitivity(*g, in, {.injections = 9, .seed = 3, .one_per_pass = true});
  EXPECT_EQ(single.passes, 9);
  EXPECT_EQ(single.changes, f.changes);
}

// A model that sums over its batch mixes the samples: each injection takes a pass of its own, and
// moves the sum of its column by one step.
TEST(FlipSensitivity, AModelThatMixesItsSamplesTakesAPassPerInjection) {
  auto g = std::make_unique<graph::Graph>();
  g->opset = 13;
  graph::Value* x = g->add_input("x", DType::kFloat32, graph::Shape{3, 4});
  graph::Value* s = g->add_constant("s", Tensor::from_vector<float>({}, {0.125f}));
  graph::Value* zp = g->add_constant("zp", Tensor::from_vector<int8_t>({}, {0}));
  graph::Value* axes = g->add_constant("axes", Tensor::from_vector<int64_t>({1}, {0}));
  graph::Value* dq = add_qdq(*g, x, s, zp, "dq");
  g->mark_output(
      g->add_node(
           {.name = "sum", .op_type = "ReduceSum", .inputs = {dq, axes}, .output_names = {"y"}})
          ->output(0));
  // Multiples of the step: the column sums are exact, and so is the step a flip adds to one.
  const std::vector<float> values = {0.25f, 0.5f,   1.0f, -0.75f, 0.125f, 0.375f,
                                     -1.5f, 0.625f, 2.0f, 0.25f,  0.5f,   1.25f};
  const Tensor in = Tensor::from_vector<float>({3, 4}, values);
  const quant::FlipSensitivity f = quant::flip_sensitivity(*g, in, {.injections = 6});
  EXPECT_EQ(f.passes, 6);
  const double norm = std::sqrt(2.375 * 2.375 + 1.125 * 1.125 + 0.0 + 1.125 * 1.125);
  ASSERT_EQ(f.changes.size(), 6u);
  for (double c : f.changes) EXPECT_DOUBLE_EQ(c, 0.125 / norm);
}

// Points where the batch is not the outer axis: tokens first ([3, B, 5], nn.MultiheadAttention's
// layout), then tokens folded with the batch ([3·B, 5]). Every value is a multiple of the step
// and both points share it, so a flip moves one output element by exactly one step: injection
// k, in sample k mod 4, changes that sample's output by s / ‖x_sample‖, whichever point it hit.
TEST(FlipSensitivity, InjectionsFollowTheBatchThroughTransposesAndFolds) {
  using testing::add;
  using testing::int_const;
  auto g = std::make_unique<graph::Graph>();
  g->opset = 13;
  graph::Value* x = g->add_input("x", DType::kFloat32, graph::Shape{4, 3, 5});
  graph::Value* s = g->add_constant("s", Tensor::from_vector<float>({}, {0.125f}));
  graph::Value* zp = g->add_constant("zp", Tensor::from_vector<int8_t>({}, {0}));
  const auto qdq = [&](const std::string& name, graph::Value* v) {
    graph::Value* q = add(*g, name + "_q", "QuantizeLinear", {v, s, zp});
    return add(*g, name + "_dq", "DequantizeLinear", {q, s, zp});
  };
  graph::Value* t =
      add(*g, "tokens_first", "Transpose", {x}, {{"perm", std::vector<int64_t>{1, 0, 2}}});
  graph::Value* rows = add(*g, "fold", "Reshape", {qdq("a", t), int_const(*g, "rows", {12, 5})});
  graph::Value* unfold =
      add(*g, "unfold", "Reshape", {qdq("b", rows), int_const(*g, "tokens", {3, 4, 5})});
  g->mark_output(
      add(*g, "batch_first", "Transpose", {unfold}, {{"perm", std::vector<int64_t>{1, 0, 2}}}));
  std::vector<float> values(60);
  for (size_t i = 0; i < values.size(); ++i) {
    values[i] =
        0.125f * static_cast<float>(static_cast<int>(i * i % 29) - 14 + static_cast<int>(i / 15));
  }
  const Tensor in = Tensor::from_vector<float>({4, 3, 5}, values);
  const quant::FlipSensitivity f = quant::flip_sensitivity(*g, in, {.injections = 16, .seed = 1});
  EXPECT_EQ(f.points, 2);
  EXPECT_EQ(f.passes, 4);
  ASSERT_EQ(f.changes.size(), 16u);
  for (size_t k = 0; k < f.changes.size(); ++k) {
    double norm = 0;
    for (size_t i = 0; i < 15; ++i)
      norm += std::pow(static_cast<double>(values[(k % 4) * 15 + i]), 2);
    EXPECT_DOUBLE_EQ(f.changes[k], 0.125 / std::sqrt(norm)) << "injection " << k;
  }
}

// A model flip_sensitivity may consume gives the figures of the caller's model, whose weights the
// const overload leaves in place (the executor releases the ones its kernels prepare, here a
// Winograd convolution's, from its own copy).
TEST(FlipSensitivity, ConsumedModelGivesTheSameFiguresAndLeavesTheCallersWeights) {
  auto g = std::make_unique<graph::Graph>();
  g->opset = 13;
  graph::Value* x = g->add_input("x", DType::kFloat32, graph::Shape{2, 16, 16, 16});
  graph::Value* s = g->add_constant("s", Tensor::from_vector<float>({}, {0.02f}));
  graph::Value* zp = g->add_constant("zp", Tensor::from_vector<int8_t>({}, {0}));
  std::vector<float> weights(16 * 16 * 9);
  for (size_t i = 0; i < weights.size(); ++i) {
    weights[i] = 0.01f * static_cast<float>(static_cast<int>(i * 7 % 23) - 11);
  }
  graph::Value* w = g->add_constant("w", Tensor::from_vector<float>({16, 16, 3, 3}, weights));
  graph::Value* dq = add_qdq(*g, x, s, zp, "dq");
  std::map<std::string, graph::AttributeValue, std::less<>> pads;
  pads["pads"] = std::vector<int64_t>{1, 1, 1, 1};
  g->mark_output(g->add_node({.name = "conv",
                              .op_type = "Conv",
                              .inputs = {dq, w},
                              .output_names = {"y"},
                              .attributes = pads})
                     ->output(0));
  std::vector<float> values(2 * 16 * 16 * 16);
  for (size_t i = 0; i < values.size(); ++i) {
    values[i] = 0.003f * static_cast<float>(static_cast<int>(i * 13 % 101) - 50);
  }
  const Tensor in = Tensor::from_vector<float>({2, 16, 16, 16}, values);
  const quant::FlipSensitivity kept = quant::flip_sensitivity(*g, in, {.injections = 8});
  EXPECT_EQ(g->find_value("w")->constant().to_float_vector(), weights);
  const quant::FlipSensitivity consumed =
      quant::flip_sensitivity(g->clone(), in, {.injections = 8});
  ASSERT_EQ(kept.changes.size(), 8u);
  EXPECT_EQ(consumed.changes, kept.changes);
  EXPECT_GT(kept.median, 0.0);
}

}  // namespace
}  // namespace qforge
