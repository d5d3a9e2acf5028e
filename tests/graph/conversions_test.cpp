// Conversion patterns: each leaves the outputs unchanged and the op counts as expected; refused
// matches carry their reason; every bundled model still computes the same after conversion.
#include "graph/conversions.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "graph/onnx_import.h"
#include "graph/plan.h"
#include "graph/transform.h"
#include "runtime/session.h"
#include "tests/support/bundled_models.h"
#include "tests/support/derivation_checks.h"
#include "tests/support/float_checks.h"
#include "tests/support/graph_builders.h"
#include "tests/support/pass_tester.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Shape;
using kernels::Tensor;
using testing::OpCounts;

using testing::random_tensor;

Tensor bool_scalar(bool value) {
  Tensor t(DType::kBool, {});
  t.data<uint8_t>()[0] = value ? 1 : 0;
  return t;
}

graph::PlanReport convert(graph::Graph& g) {
  const std::vector<graph::Pattern> patterns = graph::conversion_patterns();
  return graph::run_conversions(g, patterns);
}

std::vector<std::string> reasons_of(const graph::Graph& g, const std::string& pattern) {
  const std::vector<graph::Pattern> patterns = graph::conversion_patterns();
  std::vector<std::string> reasons;
  for (const auto& e : graph::make_plan(g, patterns).entries) {
    if (e.match.pattern == pattern && !e.apply) reasons.push_back(e.reason);
  }
  return reasons;
}

// x -> Relu -> Identity -> Sigmoid -> Identity -> y; x -> Identity -> z (kept: z would alias x).
std::unique_ptr<graph::Graph> identity_graph() {
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{2, 3, 4, 5});
  auto* r = g->add_node({.name = "relu", .op_type = "Relu", .inputs = {x}, .output_names = {"r"}});
  auto* i1 = g->add_node(
      {.name = "id1", .op_type = "Identity", .inputs = {r->output(0)}, .output_names = {"i1"}});
  auto* s = g->add_node(
      {.name = "sig", .op_type = "Sigmoid", .inputs = {i1->output(0)}, .output_names = {"s"}});
  auto* i2 = g->add_node(
      {.name = "id2", .op_type = "Identity", .inputs = {s->output(0)}, .output_names = {"y"}});
  auto* i3 =
      g->add_node({.name = "id3", .op_type = "Identity", .inputs = {x}, .output_names = {"z"}});
  g->mark_output(i2->output(0));
  g->mark_output(i3->output(0));
  return g;
}

TEST(ConversionRemoveIdentity, KeepsOutputsAndNames) {
  auto r = testing::run_pass_test(identity_graph, [](graph::Graph& g) {
    auto report = convert(g);
    EXPECT_EQ(report.find("RemoveIdentity")->applied, 2u);
    EXPECT_EQ(report.find("RemoveIdentity")->skipped, 1u);
  });
  EXPECT_EQ(r.before, (OpCounts{{"Identity", 3}, {"Relu", 1}, {"Sigmoid", 1}}));
  EXPECT_EQ(r.after, (OpCounts{{"Identity", 1}, {"Relu", 1}, {"Sigmoid", 1}}));
  EXPECT_NE(r.transformed->find_node("id3"), nullptr);
  auto reasons = reasons_of(*r.transformed, "RemoveIdentity");
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_EQ(reasons[0], "graph output 'z' would alias graph value 'x'");
}

// Four Dropouts: plain (inference), ratio 0 in training mode, training mode false, and one whose
// mask is read (kept).
std::unique_ptr<graph::Graph> dropout_graph() {
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{3, 7});
  auto* zero = g->add_constant("zero", Tensor::scalar_f32(0.f));
  auto* half = g->add_constant("half", Tensor::scalar_f32(0.5f));
  auto* on = g->add_constant("on", bool_scalar(true));
  auto* off = g->add_constant("off", bool_scalar(false));
  auto* d1 =
      g->add_node({.name = "d1", .op_type = "Dropout", .inputs = {x}, .output_names = {"a"}});
  auto* d2 = g->add_node({.name = "d2",
                          .op_type = "Dropout",
                          .inputs = {d1->output(0), zero, on},
                          .output_names = {"b"}});
  auto* d3 = g->add_node({.name = "d3",
                          .op_type = "Dropout",
                          .inputs = {d2->output(0), half, off},
                          .output_names = {"c", "c_mask"}});
  auto* t = g->add_node(
      {.name = "tanh", .op_type = "Tanh", .inputs = {d3->output(0)}, .output_names = {"y"}});
  g->mark_output(t->output(0));
  auto* d4 = g->add_node(
      {.name = "d4", .op_type = "Dropout", .inputs = {x}, .output_names = {"m", "m_mask"}});
  g->mark_output(d4->output(0));
  g->mark_output(d4->output(1));
  return g;
}

TEST(ConversionRemoveInferenceDropout, RemovesIdentityDropouts) {
  auto r = testing::run_pass_test(dropout_graph, [](graph::Graph& g) { convert(g); });
  EXPECT_EQ(r.before, (OpCounts{{"Dropout", 4}, {"Tanh", 1}}));
  EXPECT_EQ(r.after, (OpCounts{{"Dropout", 1}, {"Tanh", 1}}));
  EXPECT_NE(r.transformed->find_node("d4"), nullptr);
  auto reasons = reasons_of(*r.transformed, "RemoveInferenceDropout");
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_EQ(reasons[0], "output 'm_mask' is used");
}

TEST(ConversionRemoveInferenceDropout, RefusesTrainingDropout) {
  graph::Graph g;
  auto* x = g.add_input("x", DType::kFloat32, Shape{3, 7});
  auto* ratio = g.add_constant("ratio", Tensor::scalar_f32(0.1f));
  auto* on = g.add_constant("on", bool_scalar(true));
  auto* mode = g.add_input("mode", DType::kBool, Shape{});
  auto* d1 = g.add_node(
      {.name = "d1", .op_type = "Dropout", .inputs = {x, ratio, on}, .output_names = {"a"}});
  auto* d2 = g.add_node({.name = "d2",
                         .op_type = "Dropout",
                         .inputs = {d1->output(0), ratio, mode},
                         .output_names = {"b"}});
  g.mark_output(d2->output(0));
  EXPECT_EQ(reasons_of(g, "RemoveInferenceDropout"),
            (std::vector<std::string>{"training_mode is true and ratio is not a constant 0",
                                      "training_mode 'mode' is not a constant boolean"}));
  EXPECT_EQ(convert(g).applied(), 0u);
}

// x [2, 4, 1, 1] -> GlobalAveragePool -> AveragePool(1×1) -> ReduceMean(2, 3) -> Relu -> y,
// plus refused: ReduceMean keepdims=0 (shape changes), GlobalAveragePool over 3×3, AveragePool
// 3×3 with counted padding over 1×1.
std::unique_ptr<graph::Graph> pool_graph() {
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{2, 4, 1, 1});
  auto* x2 = g->add_input("x2", DType::kFloat32, Shape{2, 4, 3, 3});
  auto* gap = g->add_node(
      {.name = "gap", .op_type = "GlobalAveragePool", .inputs = {x}, .output_names = {"p1"}});
  auto* avg = g->add_node({.name = "avg",
                           .op_type = "AveragePool",
                           .inputs = {gap->output(0)},
                           .output_names = {"p2"},
                           .attributes = {{"kernel_shape", std::vector<int64_t>{1, 1}}}});
  auto* mean = g->add_node({.name = "mean",
                            .op_type = "ReduceMean",
                            .inputs = {avg->output(0)},
                            .output_names = {"p3"},
                            .attributes = {{"axes", std::vector<int64_t>{2, 3}}}});
  auto* relu = g->add_node(
      {.name = "relu", .op_type = "Relu", .inputs = {mean->output(0)}, .output_names = {"y"}});
  g->mark_output(relu->output(0));
  auto* flat_mean =
      g->add_node({.name = "flat_mean",
                   .op_type = "ReduceMean",
                   .inputs = {relu->output(0)},
                   .output_names = {"z"},
                   .attributes = {{"axes", std::vector<int64_t>{2, 3}}, {"keepdims", int64_t{0}}}});
  g->mark_output(flat_mean->output(0));
  auto* big = g->add_node(
      {.name = "big", .op_type = "GlobalAveragePool", .inputs = {x2}, .output_names = {"w"}});
  g->mark_output(big->output(0));
  auto* padded = g->add_node({.name = "padded",
                              .op_type = "AveragePool",
                              .inputs = {x},
                              .output_names = {"v"},
                              .attributes = {{"kernel_shape", std::vector<int64_t>{3, 3}},
                                             {"pads", std::vector<int64_t>{1, 1, 1, 1}},
                                             {"count_include_pad", int64_t{1}}}});
  g->mark_output(padded->output(0));
  return g;
}

TEST(ConversionRemoveIdentityPool, RemovesPoolsOverOnePixel) {
  auto r = testing::run_pass_test(pool_graph, [](graph::Graph& g) { convert(g); });
  EXPECT_EQ(
      r.before,
      (OpCounts{{"AveragePool", 2}, {"GlobalAveragePool", 2}, {"ReduceMean", 2}, {"Relu", 1}}));
  EXPECT_EQ(
      r.after,
      (OpCounts{{"AveragePool", 1}, {"GlobalAveragePool", 1}, {"ReduceMean", 1}, {"Relu", 1}}));
  EXPECT_EQ(reasons_of(*r.transformed, "RemoveIdentityPool"),
            (std::vector<std::string>{"output shape [2, 4] differs from input shape [2, 4, 1, 1]",
                                      "input spatial size of [2, 4, 3, 3] is not 1",
                                      "padding counts in the average (count_include_pad=1)"}));
}

// Two heads over x [2, 6, 3, 3] -> GlobalAveragePool:
//   Flatten -> Relu -> Clip(0, 0.4) -> Gemm(transB=1, alpha, beta, C) -> y
//   Flatten -> MatMul(W [6, 4]) -> Add(b) -> z
// and one refused head: Flatten over x itself (3×3 spatial) -> Gemm -> w.
std::unique_ptr<graph::Graph> head_graph() {
  std::mt19937 rng(11);
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{2, 6, 3, 3});
  auto* gap = g->add_node(
      {.name = "gap", .op_type = "GlobalAveragePool", .inputs = {x}, .output_names = {"p"}});
  auto* f1 = g->add_node({.name = "flatten1",
                          .op_type = "Flatten",
                          .inputs = {gap->output(0)},
                          .output_names = {"f1"}});
  auto* relu = g->add_node(
      {.name = "relu", .op_type = "Relu", .inputs = {f1->output(0)}, .output_names = {"r"}});
  auto* lo = g->add_constant("lo", Tensor::scalar_f32(0.f));
  auto* hi = g->add_constant("hi", Tensor::scalar_f32(0.4f));
  auto* clip = g->add_node({.name = "clip",
                            .op_type = "Clip",
                            .inputs = {relu->output(0), lo, hi},
                            .output_names = {"c"}});
  auto* w1 = g->add_constant("w1", random_tensor({5, 6}, rng));
  auto* b1 = g->add_constant("b1", random_tensor({5}, rng));
  auto* gemm =
      g->add_node({.name = "fc",
                   .op_type = "Gemm",
                   .inputs = {clip->output(0), w1, b1},
                   .output_names = {"y"},
                   .attributes = {{"transB", int64_t{1}}, {"alpha", 0.7f}, {"beta", 1.5f}}});
  g->mark_output(gemm->output(0));
  auto* f2 = g->add_node({.name = "flatten2",
                          .op_type = "Flatten",
                          .inputs = {gap->output(0)},
                          .output_names = {"f2"}});
  auto* w2 = g->add_constant("w2", random_tensor({6, 4}, rng));
  auto* mm = g->add_node(
      {.name = "mm", .op_type = "MatMul", .inputs = {f2->output(0), w2}, .output_names = {"mmo"}});
  auto* b2 = g->add_constant("b2", random_tensor({4}, rng));
  auto* add = g->add_node(
      {.name = "add", .op_type = "Add", .inputs = {b2, mm->output(0)}, .output_names = {"z"}});
  g->mark_output(add->output(0));
  auto* f3 = g->add_node(
      {.name = "flatten3", .op_type = "Flatten", .inputs = {x}, .output_names = {"f3"}});
  auto* w3 = g->add_constant("w3", random_tensor({3, 54}, rng));
  auto* gemm3 = g->add_node({.name = "fc3",
                             .op_type = "Gemm",
                             .inputs = {f3->output(0), w3},
                             .output_names = {"w"},
                             .attributes = {{"transB", int64_t{1}}}});
  g->mark_output(gemm3->output(0));
  return g;
}

TEST(ConversionFlattenLinearToConv, HeadsBecomeConv1x1) {
  auto r = testing::run_pass_test(head_graph, [](graph::Graph& g) {
    auto report = convert(g);
    EXPECT_EQ(report.find("FlattenLinearToConv")->applied, 2u);
    EXPECT_EQ(report.find("FlattenLinearToConv")->skipped, 1u);
  });
  EXPECT_EQ(r.before, (OpCounts{{"Add", 1},
                                {"Clip", 1},
                                {"Flatten", 3},
                                {"Gemm", 2},
                                {"GlobalAveragePool", 1},
                                {"MatMul", 1},
                                {"Relu", 1}}));
  EXPECT_EQ(r.after, (OpCounts{{"Clip", 1},
                               {"Conv", 2},
                               {"Flatten", 3},
                               {"Gemm", 1},
                               {"GlobalAveragePool", 1},
                               {"Relu", 1}}));
  // The element-wise ops now run on the 4-D value, before the Conv.
  const graph::Node* conv = r.transformed->find_node("fc_conv");
  ASSERT_NE(conv, nullptr);
  EXPECT_EQ(conv->input(0)->producer()->op_type(), "Clip");
  EXPECT_EQ(conv->input(1)->constant().shape(), (Shape{5, 6, 1, 1}));
  EXPECT_EQ(reasons_of(*r.transformed, "FlattenLinearToConv"),
            (std::vector<std::string>{
                "Flatten input 'x' has shape [2, 6, 3, 3], expected float [N, C, 1, 1]"}));
}

// Each head's 1×1 convolution weight and bias are recorded as derived from the linear's weight
// (transposed or not, scaled by alpha) and biases (scaled by beta, the Add's as is), so that a
// training gradient can go back to them (graph/derivation.h).
TEST(ConversionFlattenLinearToConv, RecordsHowTheConvConstantsWereDerived) {
  auto before = head_graph();
  auto after = head_graph();
  runtime::resolve(*after, {});
  convert(*after);
  std::map<std::string, std::vector<std::string>> sources;
  for (const graph::Derivation& d : after->derivations()) {
    for (const graph::DerivedTerm& t : d.terms) sources[d.derived].push_back(t.source);
  }
  EXPECT_EQ(sources, (std::map<std::string, std::vector<std::string>>{{"fc_conv_weight", {"w1"}},
                                                                      {"fc_conv_bias", {"b1"}},
                                                                      {"mm_conv_weight", {"w2"}},
                                                                      {"mm_conv_bias", {"b2"}}}));
  EXPECT_EQ(testing::expect_derivations_reproduce(*before, *after), 4u);
}

// x [2, 6, 1, 1] -> Flatten -> Dropout -> Relu -> Gemm -> y: the Dropout goes in the first round,
// which lets the head become a Conv in the second.
std::unique_ptr<graph::Graph> chained_graph() {
  std::mt19937 rng(5);
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{2, 6, 1, 1});
  auto* f =
      g->add_node({.name = "flatten", .op_type = "Flatten", .inputs = {x}, .output_names = {"f"}});
  auto* d = g->add_node(
      {.name = "drop", .op_type = "Dropout", .inputs = {f->output(0)}, .output_names = {"d"}});
  auto* relu = g->add_node(
      {.name = "relu", .op_type = "Relu", .inputs = {d->output(0)}, .output_names = {"r"}});
  auto* w = g->add_constant("w", random_tensor({6, 3}, rng));
  auto* gemm = g->add_node(
      {.name = "fc", .op_type = "Gemm", .inputs = {relu->output(0), w}, .output_names = {"y"}});
  g->mark_output(gemm->output(0));
  return g;
}

TEST(ConversionFixedPoint, LaterRoundsMatchWhatEarlierRoundsExposed) {
  auto r = testing::run_pass_test(chained_graph, [](graph::Graph& g) {
    auto report = convert(g);
    EXPECT_EQ(report.iterations, 2u);
    EXPECT_EQ(report.find("RemoveInferenceDropout")->applied, 1u);
    EXPECT_EQ(report.find("FlattenLinearToConv")->applied, 1u);
    EXPECT_EQ(report.skipped(), 0u);
  });
  EXPECT_EQ(r.after, (OpCounts{{"Conv", 1}, {"Flatten", 1}, {"Relu", 1}}));
}

// nn.LayerNorm as torch.onnx writes it before opset 17, over the last axis of `x`: ReduceMean,
// Sub, Pow(·, exponent), ReduceMean, Add ε, Sqrt, Div, Mul γ, Add β (when given). `axis` is the
// axis both ReduceMeans average over; `extra_reader` makes a Relu read the centered value too.
struct WrittenOutNorm {
  std::string stem;
  int64_t axis = -1;
  float exponent = 2.0f;
  bool extra_reader = false;
  Shape gamma_shape;
  bool beta = true;
};

graph::Value* add_written_out_norm(graph::Graph& g, graph::Value* x, const WrittenOutNorm& n,
                                   std::mt19937& rng) {
  const std::string& s = n.stem;
  auto node = [&](const std::string& part, const std::string& op, std::vector<graph::Value*> inputs,
                  std::map<std::string, graph::AttributeValue, std::less<>> attrs = {}) {
    return g
        .add_node({.name = s + "/" + part,
                   .op_type = op,
                   .inputs = std::move(inputs),
                   .output_names = {s + "/" + part + "_out"},
                   .attributes = std::move(attrs)})
        ->output(0);
  };
  const std::map<std::string, graph::AttributeValue, std::less<>> axes = {
      {"axes", std::vector<int64_t>{n.axis}}};
  auto* mean = node("ReduceMean", "ReduceMean", {x}, axes);
  auto* centered = node("Sub", "Sub", {x, mean});
  auto* square =
      node("Pow", "Pow", {centered, g.add_constant(s + "/two", Tensor::scalar_f32(n.exponent))});
  auto* variance = node("ReduceMean_1", "ReduceMean", {square}, axes);
  auto* shifted =
      node("Add", "Add", {variance, g.add_constant(s + "/eps", Tensor::scalar_f32(1e-5f))});
  auto* y = node("Div", "Div", {centered, node("Sqrt", "Sqrt", {shifted})});
  y = node("Mul", "Mul", {y, g.add_constant(s + ".weight", random_tensor(n.gamma_shape, rng))});
  if (n.beta) {
    const Shape bias_shape = {n.gamma_shape.back()};
    y = node("Add_1", "Add", {g.add_constant(s + ".bias", random_tensor(bias_shape, rng)), y});
  }
  g.mark_output(y);
  if (n.extra_reader) g.mark_output(node("Relu", "Relu", {centered}));
  return y;
}

// Five written-out norms: two become LayerNormalization (γ [8] with β, γ [1, 1, 8] without),
// three stay: over axis 1 of an NCHW tensor (ConvNeXt's channels-first form), a cube, and one
// whose centered value a Relu reads too.
std::unique_ptr<graph::Graph> written_out_norms_graph() {
  std::mt19937 rng(13);
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{2, 5, 8});
  auto* c = g->add_input("c", DType::kFloat32, Shape{2, 8, 3, 3});
  add_written_out_norm(*g, x, {.stem = "ln", .gamma_shape = {8}}, rng);
  add_written_out_norm(*g, x, {.stem = "ln_3d_gamma", .gamma_shape = {1, 1, 8}, .beta = false},
                       rng);
  add_written_out_norm(*g, c, {.stem = "channels_first", .axis = 1, .gamma_shape = {8, 1, 1}}, rng);
  add_written_out_norm(*g, x, {.stem = "cube", .exponent = 3.0f, .gamma_shape = {8}}, rng);
  add_written_out_norm(*g, x, {.stem = "shared", .extra_reader = true, .gamma_shape = {8}}, rng);
  return g;
}

TEST(ConversionComposeLayerNorm, WrittenOutNormsBecomeLayerNormalization) {
  auto r = testing::run_pass_test(written_out_norms_graph, [](graph::Graph& g) {
    auto report = convert(g);
    EXPECT_EQ(report.find("ComposeLayerNorm")->applied, 2u);
    EXPECT_EQ(report.find("ComposeLayerNorm")->skipped, 3u);
  });
  EXPECT_EQ(r.after.at("LayerNormalization"), 2u);
  EXPECT_EQ(r.after.at("Pow"), 3u);  // of the three that stay
  const graph::Node* ln = r.transformed->find_node("ln/Div/LayerNormalization");
  ASSERT_NE(ln, nullptr);
  EXPECT_EQ(ln->input(0)->name(), "x");
  EXPECT_EQ(ln->input(1)->name(), "ln.weight");
  EXPECT_EQ(ln->input(2)->name(), "ln.bias");
  EXPECT_EQ(ln->attr_float("epsilon"), 1e-5f);
  EXPECT_EQ(ln->attr_int("axis"), -1);
  EXPECT_EQ(ln->output(0)->name(), "ln/Add_1_out");  // the chain's output keeps its name
  const graph::Node* no_beta = r.transformed->find_node("ln_3d_gamma/Div/LayerNormalization");
  ASSERT_NE(no_beta, nullptr);
  EXPECT_EQ(no_beta->num_inputs(), 2u);
  EXPECT_EQ(no_beta->input(1)->known_shape(), (Shape{8}));
  auto reasons = reasons_of(*r.transformed, "ComposeLayerNorm");
  std::sort(reasons.begin(), reasons.end());
  EXPECT_EQ(reasons, (std::vector<std::string>{
                         "node 'channels_first/Sub' (Sub) does not subtract a mean over the last "
                         "axis of 'c' read by it alone",
                         "node 'cube/Pow' (Pow) is not a square",
                         "the normalized value 'shared/Sub_out' is not a Sub read by the Pow and "
                         "the Div alone"}));
}

// RMSNorms written out over the last axis of x [2, 5, 8] in the forms exporters give them:
// Llama's (Pow, ReduceMean, Add ε, Sqrt, Div(1, ·), Mul(x, ·), Mul(w, ·)), with a Reciprocal
// instead of Div(1, ·), and ONNX's RMSNormalization as imported from opset 23 (Mul(x, x), …,
// Div(x, ·), Mul by a [1, 1, 8] weight). `form` picks one; `weight_axis_0` scales along another
// axis (refused).
enum class RmsForm { kLlama, kReciprocal, kDivide };

graph::Value* add_written_out_rms(graph::Graph& g, graph::Value* x, const std::string& s,
                                  RmsForm form, Shape weight_shape, std::mt19937& rng) {
  auto node = [&](const std::string& part, const std::string& op, std::vector<graph::Value*> inputs,
                  std::map<std::string, graph::AttributeValue, std::less<>> attrs = {}) {
    return g
        .add_node({.name = s + "/" + part,
                   .op_type = op,
                   .inputs = std::move(inputs),
                   .output_names = {s + "/" + part + "_out"},
                   .attributes = std::move(attrs)})
        ->output(0);
  };
  auto scalar = [&](const std::string& part, float v) {
    return g.add_constant(s + "/" + part, Tensor::scalar_f32(v));
  };
  graph::Value* square = form == RmsForm::kDivide ? node("Mul_square", "Mul", {x, x})
                                                  : node("Pow", "Pow", {x, scalar("two", 2.0f)});
  auto* mean = node("ReduceMean", "ReduceMean", {square}, {{"axes", std::vector<int64_t>{-1}}});
  auto* root = node("Sqrt", "Sqrt", {node("Add", "Add", {mean, scalar("eps", 1e-6f)})});
  graph::Value* y = nullptr;
  if (form == RmsForm::kDivide) {
    y = node("Div", "Div", {x, root});
  } else {
    graph::Value* inverse = form == RmsForm::kLlama
                                ? node("Div", "Div", {scalar("one", 1.0f), root})
                                : node("Reciprocal", "Reciprocal", {root});
    y = node("Mul", "Mul", {x, inverse});
  }
  y = node("Mul_1", "Mul", {g.add_constant(s + ".weight", random_tensor(weight_shape, rng)), y});
  g.mark_output(y);
  return y;
}

std::vector<Tensor> run_graph(const graph::Graph& g, const Tensor& input) {
  runtime::Session session(g.clone());
  std::vector<Tensor> out;
  for (const Tensor& t : session.run(input)) out.push_back(t.clone());
  return out;
}

std::unique_ptr<graph::Graph> written_out_rms_graph() {
  std::mt19937 rng(17);
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{2, 5, 8});
  add_written_out_rms(*g, x, "llama", RmsForm::kLlama, {8}, rng);
  add_written_out_rms(*g, x, "reciprocal", RmsForm::kReciprocal, {8}, rng);
  add_written_out_rms(*g, x, "divide", RmsForm::kDivide, {1, 1, 8}, rng);
  add_written_out_rms(*g, x, "per_row", RmsForm::kLlama, {5, 1}, rng);
  return g;
}

// Three forms become RMSNorm modules computing what the chains compute (run_pass_test compares);
// a weight along another axis is refused, saying so.
TEST(ConversionComposeRMSNorm, WrittenOutRmsNormsBecomeModules) {
  auto r = testing::run_pass_test(written_out_rms_graph, [](graph::Graph& g) {
    auto report = convert(g);
    EXPECT_EQ(report.find("ComposeRMSNorm")->applied, 3u);
    EXPECT_EQ(report.find("ComposeRMSNorm")->skipped, 1u);
  });
  EXPECT_EQ(r.after.at("RMSNorm"), 3u);
  EXPECT_EQ(r.after.at("Pow"), 1u);  // the refused one's
  for (const char* stem : {"llama", "reciprocal", "divide"}) {
    const graph::Node* rms = r.transformed->find_node(std::string(stem) + "/Mul_1/RMSNorm");
    ASSERT_NE(rms, nullptr) << stem;
    EXPECT_EQ(rms->input(0)->name(), "x");
    EXPECT_EQ(rms->input(1)->known_shape(), (Shape{8}));
    EXPECT_EQ(rms->attr_float("epsilon"), 1e-6f);
    EXPECT_EQ(rms->output(0)->name(), std::string(stem) + "/Mul_1_out");
  }
  EXPECT_EQ(reasons_of(*r.transformed, "ComposeRMSNorm"),
            (std::vector<std::string>{"node 'per_row/Mul_1' (Mul) does not scale by a constant "
                                      "of the last axis' 8 values"}));
  // The module lowers to the chain again (the model's opset, ReduceMean's axes as an attribute
  // below 18 and an input from 18), computing the same.
  for (int64_t opset : {14, 18}) {
    auto lowered = r.transformed->clone();
    lowered->opset = opset;
    graph::lower_modules(*lowered);
    size_t reduce_inputs = 0;
    for (const graph::Node* n : lowered->nodes()) {
      EXPECT_NE(n->op_type(), "RMSNorm");
      if (n->op_type() == "ReduceMean") reduce_inputs += n->num_inputs();
    }
    EXPECT_EQ(reduce_inputs, opset >= 18 ? 7u : 4u);  // the refused chain's has its attribute
    std::mt19937 probe_rng(3);
    const Tensor probe = random_tensor({2, 5, 8}, probe_rng);
    const auto want = run_graph(*r.transformed, probe);
    const auto got = run_graph(*lowered, probe);
    ASSERT_EQ(want.size(), got.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_LE(testing::relative_max_diff(got[i], want[i]), 1e-6) << "output " << i;
    }
  }
}

// γ [1, 1, 8] is reshaped to [8]: a derivation records it, so that training's gradient goes back.
TEST(ConversionComposeLayerNorm, RecordsTheReshapedScale) {
  auto before = written_out_norms_graph();
  auto after = written_out_norms_graph();
  runtime::resolve(*after, {});
  convert(*after);
  ASSERT_EQ(after->derivations().size(), 1u);
  EXPECT_EQ(after->derivations()[0].terms.at(0).source, "ln_3d_gamma.weight");
  EXPECT_EQ(testing::expect_derivations_reproduce(*before, *after), 1u);
}

class ConversionBundledModel : public ::testing::TestWithParam<std::string> {};

TEST_P(ConversionBundledModel, OutputsUnchanged) {
  const std::string name = GetParam();
  testing::BundledModel model;
  ASSERT_NO_FATAL_FAILURE(testing::load_bundled_model(name, 4, model));
  const std::string& family = model.family;
  auto& plain = model.plain;
  auto converted = plain->clone();
  auto report = convert(*converted);
  for (const graph::Node* n : converted->nodes()) {
    EXPECT_NE(n->op_type(), "Identity") << n->name();
    EXPECT_NE(n->op_type(), "Dropout") << n->name();
  }
  // Every classifier head with a Flatten becomes a 1×1 Conv (MobileNetV3 has two linears in it).
  const std::map<std::string, size_t> heads = {{"resnet", 1},       {"mobilenet_v3", 2},
                                               {"efficientnet", 1}, {"convnext", 1},
                                               {"vit", 0},          {"swin", 1}};
  EXPECT_EQ(report.find("FlattenLinearToConv")->applied, heads.at(family)) << report.to_text();
  testing::expect_same_outputs(*plain, *converted, model.input, report.to_text());
}

INSTANTIATE_TEST_SUITE_P(Conversion, ConversionBundledModel,
                         ::testing::ValuesIn(testing::kBundledModelNames),
                         [](const auto& p) { return p.param; });

}  // namespace
}  // namespace qforge
