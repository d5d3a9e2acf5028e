// Batch norm folding is computed in one place, kernels::batch_norm_fold: every site that folds a
// BatchNormalization gives that function's values bit for bit (Q/DQ placement and export,
// WeightFakeQuant, the Conv epilogue fusion, the conv modules' output pass, the
// BatchNormalization kernel), and the function itself matches the formulas it documents.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "kernels/norm.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "runtime/executor.h"
#include "runtime/fuse_epilogues.h"
#include "runtime/op_registry.h"
#include "runtime/resolve.h"
#include "tests/support/float_checks.h"
#include "tests/support/random.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Shape;
using graph::Value;
using kernels::BatchNormParameters;
using kernels::FoldPrecision;
using kernels::Tensor;
using testing::expect_same_bits;
using testing::random_tensor;

constexpr float kEpsilon = 1e-3f;
constexpr int64_t kChannels = 6;

// A BN's parameters, with a zero mean and a −0 beta on channel 0 (the signs a fold must keep).
struct BatchNorm {
  Tensor gamma, beta, mean, var;

  explicit BatchNorm(std::mt19937& rng)
      : gamma(random_tensor({kChannels}, rng, -1.5f, 1.5f)),
        beta(random_tensor({kChannels}, rng)),
        mean(random_tensor({kChannels}, rng)),
        var(random_tensor({kChannels}, rng, 0.1f, 2.0f)) {
    mean.data<float>()[0] = 0.0f;
    beta.data<float>()[0] = -0.0f;
  }
  BatchNormParameters parameters() const {
    return {.gamma = gamma.data<float>(),
            .beta = beta.data<float>(),
            .mean = mean.data<float>(),
            .var = var.data<float>(),
            .epsilon = kEpsilon,
            .channels = kChannels};
  }
  std::vector<Value*> add_to(graph::Graph& g) const {
    return {g.add_constant("gamma", gamma), g.add_constant("beta", beta),
            g.add_constant("mean", mean), g.add_constant("var", var)};
  }
};

struct Fold {
  std::vector<double> factor = std::vector<double>(kChannels);
  std::vector<double> inv_std = std::vector<double>(kChannels);
  std::vector<float> scale = std::vector<float>(kChannels);
  std::vector<float> shift = std::vector<float>(kChannels);
};

Fold fold(const BatchNorm& bn, const float* conv_bias, FoldPrecision precision) {
  Fold f;
  kernels::batch_norm_fold(bn.parameters(), conv_bias, precision,
                           {.factor = f.factor.data(),
                            .inv_std = f.inv_std.data(),
                            .scale = f.scale.data(),
                            .shift = f.shift.data()});
  return f;
}

void expect_same(const Tensor& t, const std::vector<float>& expected, const std::string& what) {
  ASSERT_EQ(t.numel(), static_cast<int64_t>(expected.size())) << what;
  expect_same_bits(t.data<float>(), expected.data(), expected.size(), what);
}

std::map<std::string, graph::AttributeValue, std::less<>> conv_attributes() {
  return {{"kernel_shape", std::vector<int64_t>{3, 3}}, {"pads", std::vector<int64_t>{1, 1, 1, 1}}};
}

Tensor run(graph::Graph& g, const Tensor& x) {
  runtime::resolve(g, {});
  runtime::Executor e(g);
  return e.run(std::span(&x, 1))[0].clone();
}

TEST(BatchNormFold, ComputesTheDocumentedFormulas) {
  std::mt19937 rng(3);
  const BatchNorm bn(rng);
  const Tensor bias = random_tensor({kChannels}, rng);
  const Fold d = fold(bn, bias.data<float>(), FoldPrecision::kDouble);
  const Fold plain = fold(bn, nullptr, FoldPrecision::kDouble);
  const Fold f = fold(bn, nullptr, FoldPrecision::kFloat);
  for (int64_t c = 0; c < kChannels; ++c) {
    const double g = bn.gamma.data<float>()[c], b = bn.beta.data<float>()[c];
    const double m = bn.mean.data<float>()[c], v = bn.var.data<float>()[c];
    const double inv_std = 1.0 / std::sqrt(v + double{kEpsilon});
    EXPECT_NEAR(d.factor[c], g * inv_std, 1e-15 * std::abs(g * inv_std)) << c;
    EXPECT_NEAR(d.inv_std[c], inv_std, 1e-15 * inv_std) << c;
    EXPECT_EQ(d.scale[c], static_cast<float>(d.factor[c])) << c;
    EXPECT_NEAR(d.shift[c], (bias.data<float>()[c] - m) * g * inv_std + b, 1e-6) << c;
    EXPECT_NEAR(plain.shift[c], b - m * g * inv_std, 1e-6) << c;
    EXPECT_NEAR(f.scale[c], g * inv_std, 1e-6 * std::abs(g * inv_std)) << c;
    EXPECT_EQ(f.factor[c], static_cast<double>(f.scale[c])) << c;
    EXPECT_NEAR(f.shift[c], b - m * g * inv_std, 1e-5) << c;
  }
  // Channel 0: mean 0, beta −0. Without a bias the shift is beta − 0·factor = −0; with a zero
  // bias it is (0 − 0)·factor + beta = +0.
  const std::vector<float> zero(kChannels, 0.0f);
  EXPECT_TRUE(std::signbit(plain.shift[0]));
  EXPECT_FALSE(std::signbit(fold(bn, zero.data(), FoldPrecision::kDouble).shift[0]));
}

TEST(BatchNormFold, WeightFoldScalesEachOutputChannel) {
  std::mt19937 rng(4);
  const BatchNorm bn(rng);
  const Fold d = fold(bn, nullptr, FoldPrecision::kDouble);
  // [6, 5, 3, 3]: channel c is the c-th run of 45 values.
  const Tensor w = random_tensor({kChannels, 5, 3, 3}, rng);
  std::vector<float> folded(static_cast<size_t>(w.numel()));
  kernels::fold_weight(w.data<float>(), d.factor.data(), kChannels, 45, folded.data());
  for (int64_t i = 0; i < w.numel(); ++i) {
    ASSERT_EQ(folded[i], static_cast<float>(w.data<float>()[i] * d.factor[i / 45])) << i;
  }
  // Transposed, 2 groups: [4 in, 3 out per group, 2 taps]; element (ci, j, k) is output
  // channel ci / 2 · 3 + j.
  const Tensor wt = random_tensor({4, 3, 2}, rng);
  std::vector<float> folded_t(static_cast<size_t>(wt.numel()));
  kernels::fold_weight_transposed(wt.data<float>(), d.factor.data(), 4, 2, 3, 2, folded_t.data());
  for (int64_t i = 0; i < wt.numel(); ++i) {
    const int64_t ci = i / 6, j = i / 2 % 3;
    ASSERT_EQ(folded_t[i], static_cast<float>(wt.data<float>()[i] * d.factor[ci / 2 * 3 + j])) << i;
  }
}

// x → ConvBN(W, B?, gamma, beta, mean, var) → y, as the fusions make it.
std::unique_ptr<graph::Graph> conv_bn_module(const BatchNorm& bn, const Tensor& w,
                                             const Tensor* bias) {
  auto g = std::make_unique<graph::Graph>();
  std::vector<Value*> inputs = {g->add_input("x", DType::kFloat32, Shape{2, 5, 7, 6}),
                                g->add_constant("w", w),
                                bias ? g->add_constant("b", *bias) : nullptr};
  for (Value* p : bn.add_to(*g)) inputs.push_back(p);
  auto attributes = conv_attributes();
  attributes["epsilon"] = kEpsilon;
  graph::Node* n = g->add_node({.name = "block",
                                .op_type = "ConvBN",
                                .inputs = inputs,
                                .output_names = {"y"},
                                .attributes = attributes,
                                .domain = "qforge"});
  g->mark_output(n->output(0));
  return g;
}

TEST(BatchNormFold, PlacementAndExportWriteTheFold) {
  std::mt19937 rng(5);
  const BatchNorm bn(rng);
  const Tensor w = random_tensor({kChannels, 5, 3, 3}, rng);
  const Tensor bias = random_tensor({kChannels}, rng);
  const std::vector<float> zero(kChannels, 0.0f);
  for (const Tensor* b : {&bias, static_cast<const Tensor*>(nullptr)}) {
    SCOPED_TRACE(b ? "with a conv bias" : "without a conv bias");
    auto g = conv_bn_module(bn, w, b);
    runtime::resolve(*g, {});
    const quant::QuantPlan plan = quant::place_qdq(*g);
    ASSERT_EQ(plan.weights.size(), 1u);
    ASSERT_TRUE(plan.weights[0].folds_batch_norm);
    const Fold d = fold(bn, b ? b->data<float>() : zero.data(), FoldPrecision::kDouble);
    std::vector<float> folded(static_cast<size_t>(w.numel()));
    kernels::fold_weight(w.data<float>(), d.factor.data(), kChannels, 45, folded.data());

    Tensor placed_bias;
    expect_same(quant::quantized_weight(*g, plan.weights[0], &placed_bias), folded,
                "placement's weight");
    expect_same(placed_bias, d.shift, "placement's bias");

    auto exported = quant::build_qdq_graph(*g, plan, {{"x", 2.0f}}, {});
    const Value* exported_weight = exported->find_value("w_folded");
    const Value* exported_bias = exported->find_value("w_folded_bias");
    ASSERT_TRUE(exported_weight && exported_bias);
    expect_same(exported_weight->constant(), folded, "exported weight");
    expect_same(exported_bias->constant(), d.shift, "exported bias");
  }
}

TEST(BatchNormFold, WeightFakeQuantGivesTheFactor) {
  std::mt19937 rng(6);
  const BatchNorm bn(rng);
  const Fold d = fold(bn, nullptr, FoldPrecision::kDouble);
  graph::Graph g;
  const std::vector<Value*> inputs = {g.add_constant("W", random_tensor({kChannels, 4}, rng)),
                                      g.add_constant("gamma", bn.gamma),
                                      g.add_constant("var", bn.var)};
  graph::Node* node = g.add_node({.name = "q",
                                  .op_type = "WeightFakeQuant",
                                  .inputs = inputs,
                                  .output_names = {"Wq", "factor"},
                                  .attributes = {{"axis", int64_t{0}}, {"epsilon", kEpsilon}}});
  const runtime::OpDef* def = runtime::builtin_ops().find("WeightFakeQuant");
  std::vector<runtime::InputInfo> infos;
  std::vector<Tensor> values;
  for (const Value* v : inputs) {
    infos.push_back({true, DType::kFloat32, v->known_shape(), &v->constant()});
    values.push_back(v->constant());
  }
  const std::vector<runtime::TensorInfo> outs = def->infer(*node, infos);
  std::vector<Tensor> results;
  for (const runtime::TensorInfo& o : outs) results.emplace_back(o.dtype, o.shape);
  def->create(*node, infos, outs)->forward(values, results, nullptr);
  std::vector<float> factor(d.factor.begin(), d.factor.end());
  expect_same(results[1], factor, "WeightFakeQuant's factor");
}

TEST(BatchNormFold, EpilogueFusionTakesTheFloatFold) {
  std::mt19937 rng(7);
  const BatchNorm bn(rng);
  graph::Graph g;
  Value* x = g.add_input("x", DType::kFloat32, Shape{1, 5, 7, 6});
  graph::Node* conv =
      g.add_node({.name = "conv",
                  .op_type = "Conv",
                  .inputs = {x, g.add_constant("w", random_tensor({6, 5, 3, 3}, rng))},
                  .output_names = {"c"},
                  .attributes = conv_attributes()});
  std::vector<Value*> bn_inputs = {conv->output(0)};
  for (Value* p : bn.add_to(g)) bn_inputs.push_back(p);
  graph::Node* norm = g.add_node({.name = "bn",
                                  .op_type = "BatchNormalization",
                                  .inputs = bn_inputs,
                                  .output_names = {"n"},
                                  .attributes = {{"epsilon", kEpsilon}}});
  graph::Node* relu = g.add_node(
      {.name = "relu", .op_type = "Relu", .inputs = {norm->output(0)}, .output_names = {"y"}});
  g.mark_output(relu->output(0));
  runtime::resolve(g, {});
  ASSERT_EQ(runtime::fuse_conv_epilogues(g), 1u);
  const graph::Node* fused = nullptr;
  for (const graph::Node* n : g.nodes()) {
    if (n->op_type() == "FusedConv") fused = n;
  }
  ASSERT_TRUE(fused);
  const Fold f = fold(bn, nullptr, FoldPrecision::kFloat);
  expect_same(fused->input(3)->constant(), f.scale, "fused scale");
  expect_same(fused->input(4)->constant(), f.shift, "fused shift");
}

// The conv module's output pass is FusedConv with the float fold's scale and shift.
TEST(BatchNormFold, ConvModuleRunsTheFloatFold) {
  std::mt19937 rng(8);
  const BatchNorm bn(rng);
  const Tensor w = random_tensor({kChannels, 5, 3, 3}, rng);
  const Tensor bias = random_tensor({kChannels}, rng);
  const Tensor x = random_tensor({2, 5, 7, 6}, rng);
  auto module = conv_bn_module(bn, w, &bias);

  const Fold f = fold(bn, nullptr, FoldPrecision::kFloat);
  graph::Graph reference;
  auto attributes = conv_attributes();
  attributes["clamp_min"] = -std::numeric_limits<float>::infinity();
  attributes["clamp_max"] = std::numeric_limits<float>::infinity();
  const Tensor scale = Tensor::from_vector<float>({kChannels}, f.scale);
  const Tensor shift = Tensor::from_vector<float>({kChannels}, f.shift);
  graph::Node* n = reference.add_node(
      {.name = "conv",
       .op_type = "FusedConv",
       .inputs = {reference.add_input("x", DType::kFloat32, Shape{2, 5, 7, 6}),
                  reference.add_constant("w", w), reference.add_constant("b", bias),
                  reference.add_constant("scale", scale), reference.add_constant("shift", shift)},
       .output_names = {"y"},
       .attributes = attributes});
  reference.mark_output(n->output(0));
  const Tensor expected = run(reference, x);
  const Tensor y = run(*module, x);
  expect_same(y, std::vector<float>(expected.data<float>(), expected.data<float>() + y.numel()),
              "ConvBN output");
}

// ConvTransposeBN and BatchNormalization run the double fold as a per-channel affine map.
TEST(BatchNormFold, ConvTransposeModuleAndBatchNormRunTheDoubleFold) {
  std::mt19937 rng(9);
  const BatchNorm bn(rng);
  const Tensor w = random_tensor({5, kChannels, 3, 3}, rng);
  const Tensor x = random_tensor({2, 5, 4, 3}, rng);
  const Fold d = fold(bn, nullptr, FoldPrecision::kDouble);

  graph::Graph plain;
  graph::Node* ct = plain.add_node(
      {.name = "ct",
       .op_type = "ConvTranspose",
       .inputs = {plain.add_input("x", DType::kFloat32, x.shape()), plain.add_constant("w", w)},
       .output_names = {"y"},
       .attributes = conv_attributes()});
  plain.mark_output(ct->output(0));
  const Tensor conv_out = run(plain, x);
  const int64_t inner = conv_out.numel() / (conv_out.dim(0) * kChannels);
  std::vector<float> expected(static_cast<size_t>(conv_out.numel()));
  kernels::channel_affine(conv_out.data<float>(), d.scale.data(), d.shift.data(), conv_out.dim(0),
                          kChannels, inner, expected.data());

  graph::Graph module;
  std::vector<Value*> inputs = {module.add_input("x", DType::kFloat32, x.shape()),
                                module.add_constant("w", w), nullptr};
  for (Value* p : bn.add_to(module)) inputs.push_back(p);
  auto attributes = conv_attributes();
  attributes["epsilon"] = kEpsilon;
  graph::Node* m = module.add_node({.name = "block",
                                    .op_type = "ConvTransposeBN",
                                    .inputs = inputs,
                                    .output_names = {"y"},
                                    .attributes = attributes,
                                    .domain = "qforge"});
  module.mark_output(m->output(0));
  expect_same(run(module, x), expected, "ConvTransposeBN output");

  graph::Graph norm;
  std::vector<Value*> bn_inputs = {norm.add_input("x", DType::kFloat32, conv_out.shape())};
  for (Value* p : bn.add_to(norm)) bn_inputs.push_back(p);
  graph::Node* b = norm.add_node({.name = "bn",
                                  .op_type = "BatchNormalization",
                                  .inputs = bn_inputs,
                                  .output_names = {"y"},
                                  .attributes = {{"epsilon", kEpsilon}}});
  norm.mark_output(b->output(0));
  expect_same(run(norm, conv_out), expected, "BatchNormalization output");
}

}  // namespace
}  // namespace qforge
