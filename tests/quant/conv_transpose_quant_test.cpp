// ConvTranspose in the quantization contract: ConvTranspose -> [BN] -> Act fuses into
// ConvTransposeBNAct / ConvTransposeBN (lowering back to the same values, grouped and not); the
// weight point quantizes along axis 1 with the BN folded per output channel group by group (a
// float64 reference fold, element by element); QAT's WeightFakeQuant gives the export's weight
// bit for bit; SiLU after a conv stays with the conv's module when a residual Add follows; and the
// quantized tensors around a Concat form one scale group.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "graph/fusions.h"
#include "graph/plan.h"
#include "kernels/fake_quant.h"
#include "quant/calibration.h"
#include "quant/fake_quant_training.h"
#include "quant/int8.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "runtime/fuse_qdq.h"
#include "runtime/op_registry.h"
#include "runtime/resolve.h"
#include "runtime/session.h"
#include "runtime/training.h"
#include "runtime/transform_pipeline.h"
#include "tests/quant/quant_test_models.h"
#include "tests/support/float_checks.h"
#include "tests/support/graph_builders.h"
#include "tests/support/pass_tester.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Shape;
using graph::Value;
using kernels::Tensor;
using testing::OpCounts;

graph::PlanReport fuse(graph::Graph& g) {
  const std::vector<graph::Pattern> patterns = graph::fusion_patterns();
  return graph::run_fusions(g, patterns);
}

struct Builder : testing::GraphBuilder {
  Builder() : GraphBuilder(11) {}

  // ConvTranspose 3×3, stride 2, pads 1, output_padding 1: [N, in, H, W] -> [N, out, 2H, 2W].
  Value* conv_transpose(Value* x, int64_t in, int64_t out, int64_t group) {
    return node("ConvTranspose", {x, constant({in, out / group, 3, 3}), constant({out})},
                {.attributes = {{"strides", std::vector<int64_t>{2, 2}},
                                {"pads", std::vector<int64_t>{1, 1, 1, 1}},
                                {"output_padding", std::vector<int64_t>{1, 1}},
                                {"group", group}}});
  }
  Value* bn(Value* x, int64_t c) {
    return node(
        "BatchNormalization",
        {x, constant({c}, 0.5f, 1.5f), constant({c}), constant({c}), constant({c}, 0.5f, 1.5f)},
        {.attributes = {{"epsilon", 1e-3f}}});
  }
  std::unique_ptr<graph::Graph> done(Value* y) {
    g->opset = 17;
    g->mark_output(y);
    return std::move(g);
  }
};

const graph::Node* only(const graph::Graph& g, const std::string& op) {
  const graph::Node* found = nullptr;
  for (const graph::Node* n : g.nodes()) {
    if (n->op_type() == op) found = n;
  }
  return found;
}

// x [2, 8, 5, 4] -> ConvTranspose (group) -> BN -> Relu, and a second ConvTranspose alone.
std::unique_ptr<graph::Graph> decoder(int64_t group) {
  Builder b;
  Value* x = b.g->add_input("x", DType::kFloat32, Shape{2, 8, 5, 4});
  Value* y = b.node("Relu", {b.bn(b.conv_transpose(x, 8, 8, group), 8)});
  return b.done(b.conv_transpose(y, 8, 4, 1));
}

TEST(ConvTransposeModules, FuseAndLowerBackToTheSameValues) {
  for (int64_t group : {1, 2, 8}) {
    SCOPED_TRACE("group " + std::to_string(group));
    auto r = testing::run_pass_test([&] { return decoder(group); },
                                    [](graph::Graph& g) {
                                      const graph::PlanReport report = fuse(g);
                                      EXPECT_EQ(report.find("ConvTransposeBNAct")->applied, 1u);
                                      EXPECT_EQ(report.find("ConvTransposeBN")->applied, 1u);
                                    });
    EXPECT_EQ(r.after, (OpCounts{{"ConvTransposeBN", 1}, {"ConvTransposeBNAct", 1}}));
    const graph::Node* m = only(*r.transformed, "ConvTransposeBNAct");
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->attr_string("activation"), "Relu");
    EXPECT_EQ(m->num_inputs(), 7u);
    EXPECT_EQ(m->attr_ints("output_padding"), (std::vector<int64_t>{1, 1}));
    // Group 2 has 4 channels per group on both sides; group 8 is depthwise: both run in INT8.
    EXPECT_FALSE(m->has_attr("int8_unsupported"));
    testing::expect_lowering_equivalent(*r.transformed, 2, 5);
  }
}

std::unique_ptr<graph::Graph> fused_decoder(int64_t group) {
  auto g = decoder(group);
  runtime::resolve(*g, {});
  fuse(*g);
  return g;
}

// The folded weight, element by element in float64: W[ci, j, …] · gamma[co] / sqrt(var[co] + ε)
// with co = (ci / (C_in / group)) · (C_out / group) + j, rounded once to float.
TEST(ConvTransposeQuantization, WeightPointFoldsTheBatchNormAlongAxisOne) {
  for (int64_t group : {1, 2}) {
    SCOPED_TRACE("group " + std::to_string(group));
    auto g = fused_decoder(group);
    const quant::QuantPlan plan = quant::place_qdq(*g);
    ASSERT_EQ(plan.weights.size(), 2u);
    const quant::WeightPoint& w = plan.weights[0];
    EXPECT_EQ(w.module, "ConvTransposeBNAct");
    EXPECT_EQ(w.axis, 1);
    EXPECT_TRUE(w.transposed);
    EXPECT_TRUE(w.folds_batch_norm);
    EXPECT_EQ(w.group, group);
    EXPECT_EQ(plan.weights[1].module, "ConvTransposeBN");
    EXPECT_FALSE(plan.weights[1].folds_batch_norm);

    const graph::Node* n = g->find_node(w.node);
    const Tensor& weight = n->input(1)->constant();
    const float* gamma = n->input(3)->constant().data<float>();
    const float* var = n->input(6)->constant().data<float>();
    const double eps = n->attr_float("epsilon");
    Tensor bias;
    const Tensor folded = quant::quantized_weight(*g, w, &bias);
    const int64_t in_g = weight.dim(0) / group, out_g = weight.dim(1), taps = 9;
    for (int64_t ci = 0; ci < weight.dim(0); ++ci) {
      for (int64_t j = 0; j < out_g; ++j) {
        const int64_t co = ci / in_g * out_g + j;
        const double factor = double(gamma[co]) / std::sqrt(double(var[co]) + eps);
        for (int64_t k = 0; k < taps; ++k) {
          const int64_t at = (ci * out_g + j) * taps + k;
          ASSERT_EQ(folded.data<float>()[at], static_cast<float>(weight.data<float>()[at] * factor))
              << "element " << at;
        }
      }
    }
    EXPECT_EQ(bias.shape(), (Shape{8}));
    // Per channel along axis 1: C_out / group scales.
    EXPECT_EQ(quant::weight_channel_amax(*g, w).size(), static_cast<size_t>(out_g));
  }
}

// QAT's weight quantizer on the transposed layout is the export's weight, bit for bit.
TEST(ConvTransposeQuantization, WeightFakeQuantGivesTheExportedWeight) {
  for (int64_t group : {1, 2}) {
    SCOPED_TRACE("group " + std::to_string(group));
    auto g = fused_decoder(group);
    const quant::QuantPlan plan = quant::place_qdq(*g);
    const quant::WeightPoint& w = plan.weights[0];
    const graph::Node* n = g->find_node(w.node);
    graph::Graph q;
    std::vector<Value*> inputs = {q.add_constant("W", n->input(1)->constant()),
                                  q.add_constant("gamma", n->input(3)->constant()),
                                  q.add_constant("var", n->input(6)->constant())};
    graph::Node* node = q.add_node({.name = "q",
                                    .op_type = "WeightFakeQuant",
                                    .inputs = inputs,
                                    .output_names = {"Wq", "factor"},
                                    .attributes = {{"axis", int64_t{1}},
                                                   {"epsilon", n->attr_float("epsilon")},
                                                   {"transposed", int64_t{1}},
                                                   {"group", group}}});
    const runtime::OpDef* def = runtime::builtin_ops().find("WeightFakeQuant");
    std::vector<runtime::InputInfo> infos;
    std::vector<Tensor> values;
    for (const Value* v : inputs) {
      infos.push_back({true, DType::kFloat32, v->known_shape(), &v->constant()});
      values.push_back(v->constant());
    }
    const std::vector<runtime::TensorInfo> outs = def->infer(*node, infos);
    ASSERT_EQ(outs[1].shape, (Shape{8}));
    std::vector<Tensor> results;
    for (const runtime::TensorInfo& o : outs) results.emplace_back(o.dtype, o.shape);
    def->create(*node, infos, outs)->forward(values, results, nullptr);

    const Tensor weight = quant::quantized_weight(*g, w);
    std::vector<float> scales;
    for (float a : quant::weight_channel_amax(*g, w)) scales.push_back(quant::scale_from_amax(a));
    Tensor expected(DType::kFloat32, weight.shape());
    kernels::fake_quant(weight, {scales, 1}, expected);
    testing::expect_same_bits(results[0].data<float>(), expected.data<float>(),
                              static_cast<size_t>(expected.numel()), "fake-quantized weight");
  }
}

// Runs WeightFakeQuant forward and backward on (W, gamma, var) with dWq = dy and dfactor =
// dfactor; returns Wq, factor, dW and dgamma.
std::vector<Tensor> weight_fake_quant_step(
    const Tensor& w, const Tensor& gamma, const Tensor& var, const Tensor& dy,
    const Tensor& dfactor, std::map<std::string, graph::AttributeValue, std::less<>> attributes) {
  graph::Graph q;
  std::vector<Value*> inputs = {q.add_constant("W", w), q.add_constant("gamma", gamma),
                                q.add_constant("var", var)};
  graph::Node* node = q.add_node({.name = "q",
                                  .op_type = "WeightFakeQuant",
                                  .inputs = inputs,
                                  .output_names = {"Wq", "factor"},
                                  .attributes = std::move(attributes)});
  const runtime::OpDef* def = runtime::builtin_ops().find("WeightFakeQuant");
  std::vector<runtime::InputInfo> infos;
  for (const Value* v : inputs) infos.push_back({true, DType::kFloat32, v->known_shape(), nullptr});
  const std::vector<runtime::TensorInfo> outs = def->infer(*node, infos);
  std::vector<Tensor> results;
  for (const runtime::TensorInfo& o : outs) results.emplace_back(o.dtype, o.shape);
  auto kernel = def->create(*node, infos, outs);
  const std::vector<Tensor> values = {w, gamma, var};
  kernel->forward(values, results, nullptr);
  std::vector<Tensor> grads = {Tensor(DType::kFloat32, w.shape()),
                               Tensor(DType::kFloat32, gamma.shape()), Tensor()};
  const std::vector<Tensor> grad_outputs = {dy, dfactor};
  kernel->backward(values, results, grad_outputs, grads, nullptr);
  return {results[0], results[1], grads[0], grads[1]};
}

// With one group, a transposed weight W [C_in, C_out, k] is the ordinary layout W' = Wᵀ
// [C_out, C_in, k] with its axes swapped: the transposed WeightFakeQuant on W along axis 1 gives,
// bit for bit, the swapped results of the ordinary one on W' along axis 0 (forward, dW, dgamma).
TEST(ConvTransposeQuantization, WeightFakeQuantBackwardIsTheOrdinaryOneOnTheSwappedWeight) {
  std::mt19937 rng(5);
  const int64_t cin = 5, cout = 6, taps = 4;
  const Tensor w = testing::random_tensor({cin, cout, 2, 2}, rng, -1, 1);
  const Tensor gamma = testing::random_tensor({cout}, rng, 0.5f, 1.5f);
  const Tensor var = testing::random_tensor({cout}, rng, 0.5f, 1.5f);
  const Tensor dy = testing::random_tensor({cin, cout, 2, 2}, rng, -1, 1);
  const Tensor dfactor = testing::random_tensor({cout}, rng, -1, 1);
  auto swap = [&](const Tensor& t, int64_t rows, int64_t cols) {
    Tensor out(DType::kFloat32, {cols, rows, 2, 2});
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        for (int64_t k = 0; k < taps; ++k) {
          out.data<float>()[(c * rows + r) * taps + k] = t.data<float>()[(r * cols + c) * taps + k];
        }
      }
    }
    return out;
  };
  const std::vector<Tensor> transposed = weight_fake_quant_step(w, gamma, var, dy, dfactor,
                                                                {{"axis", int64_t{1}},
                                                                 {"epsilon", 1e-3f},
                                                                 {"transposed", int64_t{1}},
                                                                 {"group", int64_t{1}}});
  const std::vector<Tensor> ordinary =
      weight_fake_quant_step(swap(w, cin, cout), gamma, var, swap(dy, cin, cout), dfactor,
                             {{"axis", int64_t{0}}, {"epsilon", 1e-3f}});
  const Tensor wq = swap(ordinary[0], cout, cin);
  const Tensor dw = swap(ordinary[2], cout, cin);
  testing::expect_same_bits(transposed[0].data<float>(), wq.data<float>(),
                            static_cast<size_t>(wq.numel()), "Wq");
  testing::expect_same_bits(transposed[1].data<float>(), ordinary[1].data<float>(),
                            static_cast<size_t>(cout), "factor");
  testing::expect_same_bits(transposed[2].data<float>(), dw.data<float>(),
                            static_cast<size_t>(dw.numel()), "dW");
  testing::expect_same_bits(transposed[3].data<float>(), ordinary[3].data<float>(),
                            static_cast<size_t>(cout), "dgamma");
}

// The UNet's training graph (its ConvTranspose BN folding simulated) with BN frozen computes
// what its exported Q/DQ model computes, up to rounding flips.
TEST(ConvTransposeQuantization, UnetTrainingGraphIsTheExportedModel) {
  const Tensor x = io::read_npy(testing::data_path("golden/unet_input.npy"));
  runtime::TransformOptions options;
  options.batch = x.dim(0);
  auto fused =
      std::move(runtime::transform_model(
                    *graph::load_onnx(testing::data_path("models/unet_bn.onnx")), nullptr, options)
                    .graph);
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  quant::CalibrationStats stats(*fused, plan);
  stats.observe_batch(x);
  const quant::ActivationAmax amax = stats.activation_amax(quant::Calibrator::kMax);
  // fake_quant_training's steps, on a TrainingExecutor: its ClassifierTraining wants logits.
  quant::TrainingGraph t = quant::build_training_graph(*fused, plan, amax, {});
  runtime::ResolveOptions resolve_options;
  resolve_options.parameters.insert(t.parameters.begin(), t.parameters.end());
  resolve_options.parameters.insert(t.state.begin(), t.state.end());
  runtime::resolve(*t.graph, resolve_options);
  runtime::fuse_qdq(*t.graph);
  runtime::TrainingExecutor training(
      *t.graph,
      {.parameters = t.parameters, .state = t.state, .batch_norm_running_statistics = true});
  const Tensor got = training.forward({&x, 1})[0].clone();
  // The ConvTranspose's BN fold is simulated in the training graph, on its layout.
  size_t transposed_folds = 0;
  for (const graph::Node* n : t.graph->nodes()) {
    transposed_folds += n->op_type() == "WeightFakeQuant" && n->attr_int("transposed", 0) == 1;
  }
  EXPECT_EQ(transposed_folds, 1u);
  runtime::Session exported(quant::build_qdq_graph(*fused, plan, amax));
  const Tensor want = exported.run(x)[0];
  ASSERT_EQ(got.shape(), want.shape());
  EXPECT_LE(testing::relative_l2(got, want), 1e-2);
}

// YOLO's bottleneck, x + SiLU(BN(Conv(x))): the SiLU stays with ConvBNAct (ActAdd is skipped),
// and the lowered graph computes what the original does.
TEST(ConvTransposeQuantization, SiluBeforeAResidualAddStaysWithTheConv) {
  auto make = [] {
    Builder b;
    Value* x = b.g->add_input("x", DType::kFloat32, Shape{2, 4, 6, 6});
    Value* c = b.node("Conv", {x, b.constant({4, 4, 3, 3})},
                      {.attributes = {{"pads", std::vector<int64_t>{1, 1, 1, 1}}}});
    Value* bn = b.bn(c, 4);
    Value* silu = b.node("Mul", {bn, b.node("Sigmoid", {bn})});
    return b.done(b.node("Add", {x, silu}));
  };
  auto r = testing::run_pass_test(make, [](graph::Graph& g) {
    const graph::PlanReport report = fuse(g);
    EXPECT_EQ(report.find("ConvBNAct")->applied, 1u);
    EXPECT_EQ(report.find("ActAdd")->applied, 0u);
  });
  EXPECT_EQ(r.after, (OpCounts{{"Add", 1}, {"ConvBNAct", 1}}));
  testing::expect_lowering_equivalent(*r.transformed, 1, 9);
}

// The bundled detector: every Concat's points (its output and its inputs, through Split,
// MaxPool and the nearest Resize) are one scale group, named by its first point, and the group
// shares the largest amax of its members.
TEST(ConcatScaleGroups, PointsAroundEachConcatShareOneGroup) {
  auto g = testing::fused_model("yolo_bn");
  const quant::QuantPlan plan = quant::place_qdq(*g);
  std::map<std::string, const quant::ActivationPoint*> point;
  for (const quant::ActivationPoint& p : plan.activations) point[p.tensor] = &p;
  size_t grouped_concats = 0;
  for (const graph::Node* n : g->nodes()) {
    if (n->op_type() != "Concat") continue;
    std::set<std::string> groups;
    size_t members = 0;
    auto visit = [&](const Value* v) {
      while (v && !point.count(v->name()) && v->producer() &&
             (v->producer()->op_type() == "Split" || v->producer()->op_type() == "MaxPool" ||
              v->producer()->op_type() == "Resize")) {
        v = v->producer()->input(0);
      }
      if (!v || !point.count(v->name())) return;
      groups.insert(point[v->name()]->scale_group);
      ++members;
    };
    visit(n->output(0));
    for (const Value* in : n->inputs()) visit(in);
    if (members < 2) continue;
    ++grouped_concats;
    ASSERT_EQ(groups.size(), 1u) << n->name();
    EXPECT_FALSE(groups.begin()->empty()) << n->name();
  }
  // C2f ×3 and SPPF each join several points; the neck's Concat reads the upsampled P4 (through
  // the nearest Resize) and P3.
  EXPECT_GE(grouped_concats, 4u);

  // shared_amax: the largest of the group, the point's own when alone.
  std::map<std::string, float> amax;
  float value = 1.0f;
  for (const quant::ActivationPoint& p : plan.activations) amax[p.tensor] = value += 0.5f;
  for (const quant::ActivationPoint& p : plan.activations) {
    float want = amax[p.tensor];
    for (const quant::ActivationPoint& q : plan.activations) {
      if (!p.scale_group.empty() && q.scale_group == p.scale_group) {
        want = std::max(want, amax[q.tensor]);
      }
    }
    EXPECT_EQ(quant::shared_amax(plan, p, amax), want) << p.tensor;
  }
}

}  // namespace
}  // namespace qforge
