// SmoothQuant: factors against hand computations and their zero guards; which LayerNorms are
// smoothed and which are kept (a residual reader); folding keeps the float model equivalent on a
// graph built here (matmul and transposed-gemm weight layouts) and on the bundled ViT; factors
// are bit-identical whatever the batch size and thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "graph/onnx_import.h"
#include "kernels/error.h"
#include "quant/smoothquant.h"
#include "runtime/session.h"
#include "runtime/transform_pipeline.h"
#include "tests/quant/quant_test_models.h"
#include "tests/support/errors.h"
#include "tests/support/graph_builders.h"
#include "tests/support/thread_count.h"
#include "tools/io/image_folder.h"

namespace qforge {
namespace {

using graph::Value;
using kernels::DType;
using kernels::Tensor;
using quant::SmoothQuantOptions;

std::vector<float> factors(std::vector<float> x, std::vector<float> w, double alpha) {
  SmoothQuantOptions options;
  options.alpha = alpha;
  return quant::smoothing_factors(x, w, options);
}

TEST(SmoothQuantFactors, MatchHandComputation) {
  // α = 0.5: sqrt(x / w).
  const auto half = factors({4.0f, 1.0f, 9.0f}, {1.0f, 4.0f, 0.25f}, 0.5);
  EXPECT_FLOAT_EQ(half[0], 2.0f);
  EXPECT_FLOAT_EQ(half[1], 0.5f);
  EXPECT_FLOAT_EQ(half[2], 6.0f);
  // α = 0.75: 4^0.75 = 2.8284271, 1 / 4^0.25 = 0.70710678, 9^0.75 / 0.25^0.25 = 7.3484692.
  const auto three_quarters = factors({4.0f, 1.0f, 9.0f}, {1.0f, 4.0f, 0.25f}, 0.75);
  EXPECT_FLOAT_EQ(three_quarters[0], 2.8284271f);
  EXPECT_FLOAT_EQ(three_quarters[1], 0.70710678f);
  EXPECT_FLOAT_EQ(three_quarters[2], 7.3484692f);
  // The ends: α = 1 is max|x|, α = 0 is 1 / max|w|.
  EXPECT_FLOAT_EQ(factors({3.0f}, {8.0f}, 1.0)[0], 3.0f);
  EXPECT_FLOAT_EQ(factors({3.0f}, {8.0f}, 0.0)[0], 0.125f);
}

TEST(SmoothQuantFactors, ZeroDenormalAndNonFiniteMaximaKeepOne) {
  const float denormal = std::numeric_limits<float>::denorm_min();
  const float inf = std::numeric_limits<float>::infinity();
  const auto s = factors({0.0f, 2.0f, denormal, 2.0f, inf, 2.0f},
                         {2.0f, 0.0f, 2.0f, denormal, 2.0f, std::nanf("")}, 0.5);
  for (size_t j = 0; j < s.size(); ++j) EXPECT_EQ(s[j], 1.0f) << j;
}

TEST(SmoothQuantFactors, ClampedToTheOptionsRange) {
  EXPECT_FLOAT_EQ(factors({1e8f}, {1e-8f}, 0.5)[0], 1e5f);
  EXPECT_FLOAT_EQ(factors({1e-8f}, {1e8f}, 0.5)[0], 1e-5f);
  SmoothQuantOptions narrow;
  narrow.min_factor = 0.5;
  narrow.max_factor = 4.0;
  const std::vector<float> x = {100.0f, 1.0f, 1.0f};
  const std::vector<float> w = {1.0f, 100.0f, 1.0f};
  const auto s = quant::smoothing_factors(x, w, narrow);
  EXPECT_FLOAT_EQ(s[0], 4.0f);
  EXPECT_FLOAT_EQ(s[1], 0.5f);
  EXPECT_FLOAT_EQ(s[2], 1.0f);
}

TEST(SmoothQuantFactors, BadAlphaOrLengthsAreInvalid) {
  SmoothQuantOptions options;
  options.alpha = 1.5;
  const std::vector<float> one = {1.0f};
  const std::vector<float> two = {1.0f, 1.0f};
  EXPECT_NE(
      testing::error_of(ErrorKind::kInvalid, [&] { quant::smoothing_factors(one, one, options); })
          .find("alpha in [0, 1]"),
      std::string::npos);
  options.alpha = 0.5;
  EXPECT_NE(
      testing::error_of(ErrorKind::kInvalid, [&] { quant::smoothing_factors(one, two, options); })
          .find("weight channels"),
      std::string::npos);
}

// x [6, 8] -> LayerNormalization(γ with a wide spread) -> ln1
//   ln1 -> MatMul W [8, 5] -> Add b           (Linear, weight [K, N])
//   ln1 -> Gemm W [4, 8] transB -> Relu       (LinearAct, weight [N, K])
// x -> LayerNormalization -> ln2 -> MatMul W [8, 3]; ln2 -> Add(x) (a residual: kept)
std::unique_ptr<graph::Graph> two_norm_model() {
  testing::GraphBuilder b(7);
  Value* x = b.g->add_input("x", DType::kFloat32, graph::Shape{6, 8});
  auto norm = [&](Value* in) {
    return b.node("LayerNormalization", {in, b.constant({8}, -4.0f, 4.0f), b.constant({8})},
                  {.attributes = {{"axis", int64_t{-1}}, {"epsilon", 1e-5f}}});
  };
  Value* ln1 = norm(x);
  Value* y1 = b.node("Add", {b.node("MatMul", {ln1, b.constant({8, 5})}), b.constant({5})});
  Value* y2 = b.node("Relu", {b.node("Gemm", {ln1, b.constant({4, 8}), b.constant({4})},
                                     {.attributes = {{"transB", int64_t{1}}}})});
  Value* ln2 = norm(x);
  Value* y3 = b.node("MatMul", {ln2, b.constant({8, 3})});
  Value* y4 = b.node("Add", {ln2, x});
  for (Value* y : {y1, y2, y3, y4}) b.g->mark_output(y);
  b.g->opset = 17;
  return std::move(b.g);
}

std::unique_ptr<graph::Graph> fused_of(const graph::Graph& model, int64_t batch) {
  runtime::TransformOptions options;
  options.batch = batch;
  return std::move(runtime::transform_model(model, nullptr, options).graph);
}

std::vector<Tensor> run(const graph::Graph& g, const Tensor& input) {
  runtime::Session session(g.clone());
  std::vector<Tensor> out;
  for (const Tensor& t : session.run(input)) out.push_back(t.clone());
  return out;
}

// Activations with a few large channels, as transformers have.
Tensor outlier_input(graph::Shape shape, uint32_t seed) {
  Tensor t = testing::random_f32(shape, seed, -1.0f, 1.0f);
  const int64_t last = shape.back();
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (i % last == 2) p[i] *= 30.0f;
  }
  return t;
}

TEST(SmoothQuantSites, SmoothsNormsFeedingOnlyLinearModulesAndKeepsResiduals) {
  auto fused = fused_of(*two_norm_model(), 6);
  const quant::SmoothQuantSites found = quant::find_smoothquant_sites(*fused);
  ASSERT_EQ(found.sites.size(), 1u);
  ASSERT_EQ(found.refused.size(), 1u);
  const quant::SmoothQuantSite& site = found.sites[0];
  EXPECT_EQ(site.channels, 8);
  ASSERT_EQ(site.consumers.size(), 2u);
  // Which consumer is which: the Linear keeps [K, N] (input axis 0), the LinearAct from a
  // transposed Gemm keeps [N, K] (input axis 1).
  for (const quant::SmoothQuantConsumer& c : site.consumers) {
    const graph::Node* n = fused->find_node(c.node);
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(c.input_axis, n->op_type() == "Linear" ? 0 : 1) << c.node;
  }
  EXPECT_NE(found.refused[0].reason.find("cannot absorb"), std::string::npos)
      << found.refused[0].reason;
  EXPECT_NE(found.refused[0].reason.find("(Add)"), std::string::npos) << found.refused[0].reason;
}

TEST(SmoothQuantFold, KeepsTheFloatModelEquivalent) {
  auto fused = fused_of(*two_norm_model(), 6);
  const auto before = fused->clone();
  const quant::SmoothQuantSites found = quant::find_smoothquant_sites(*fused);
  quant::SmoothQuantStats stats(*fused, found.sites);
  const Tensor calib = outlier_input({6, 8}, 11);
  stats.observe_batch(calib);
  stats.observe_batch(outlier_input({6, 8}, 12));
  ASSERT_EQ(stats.activation_amax(0).size(), 8u);

  const quant::SmoothQuantResult result = quant::apply_smoothquant(*fused, stats, {});
  ASSERT_EQ(result.smoothed.size(), 1u);
  const quant::SmoothedLayerNorm& s = result.smoothed[0];
  EXPECT_LT(s.min_factor, s.max_factor);
  EXPECT_NO_THROW(fused->check_consistency());

  // γ_j / s_j in the LayerNorm; W[j, :] · s_j (matmul layout) in the Linear.
  const graph::Node* norm_before = before->find_node(s.layer_norm);
  const graph::Node* norm_after = fused->find_node(s.layer_norm);
  const auto gamma0 = norm_before->input(1)->constant().span<float>();
  const auto gamma1 = norm_after->input(1)->constant().span<float>();
  for (size_t j = 0; j < 8; ++j) {
    EXPECT_NEAR(gamma1[j], gamma0[j] / s.factors[j], 1e-6f * std::fabs(gamma0[j])) << j;
  }
  for (const std::string& name : s.consumers) {
    const graph::Node* n0 = before->find_node(name);
    const graph::Node* n1 = fused->find_node(name);
    const Tensor& w0 = n0->input(1)->constant();
    const Tensor& w1 = n1->input(1)->constant();
    const bool kn = n0->op_type() == "Linear";
    for (int64_t r = 0; r < w0.dim(0); ++r) {
      for (int64_t c = 0; c < w0.dim(1); ++c) {
        const float f = s.factors[static_cast<size_t>(kn ? r : c)];
        const float a = w0.data<float>()[r * w0.dim(1) + c];
        EXPECT_FLOAT_EQ(w1.data<float>()[r * w0.dim(1) + c], a * f) << name;
      }
    }
  }

  for (uint32_t seed : {21u, 22u}) {
    const Tensor x = outlier_input({6, 8}, seed);
    const auto ref = run(*before, x);
    const auto got = run(*fused, x);
    ASSERT_EQ(ref.size(), got.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      EXPECT_LE(testing::relative_max_diff(got[i], ref[i]), 1e-4) << "output " << i;
    }
  }
}

TEST(SmoothQuantFold, SharedConstantsAreCopiedNotChanged) {
  // One γ read by the smoothed LayerNorm and the kept one: the kept one must not change.
  auto model = two_norm_model();
  graph::Node* norms[2] = {};
  int k = 0;
  for (graph::Node* n : model->nodes()) {
    if (n->op_type() == "LayerNormalization") norms[k++] = n;
  }
  model->set_input(norms[1], 1, norms[0]->input(1));
  auto fused = fused_of(*model, 6);
  const auto before = fused->clone();
  const quant::SmoothQuantSites found = quant::find_smoothquant_sites(*fused);
  ASSERT_EQ(found.sites.size(), 1u);
  ASSERT_EQ(found.refused.size(), 1u);
  quant::SmoothQuantStats stats(*fused, found.sites);
  stats.observe_batch(outlier_input({6, 8}, 5));
  quant::apply_smoothquant(*fused, stats, {});
  const graph::Node* kept = fused->find_node(found.refused[0].layer_norm);
  const graph::Node* kept_before = before->find_node(found.refused[0].layer_norm);
  EXPECT_EQ(kept->input(1), fused->find_value(kept_before->input(1)->name()));
  EXPECT_EQ(std::memcmp(kept->input(1)->constant().raw(), kept_before->input(1)->constant().raw(),
                        kept->input(1)->constant().nbytes()),
            0);
  const Tensor x = outlier_input({6, 8}, 9);
  const auto ref = run(*before, x);
  const auto got = run(*fused, x);
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_LE(testing::relative_max_diff(got[i], ref[i]), 1e-4) << "output " << i;
  }
}

// GPT-2's Conv1D: x [2, 3, 8] -> LayerNormalization -> Reshape [6, 8] -> Gemm W [8, 5] + b ->
// Reshape [2, 3, 5]. The Reshape keeps the channels on the last axis, so the Linear behind it
// absorbs the factors; one to [2, 24] does not, and the second norm is kept, saying so.
TEST(SmoothQuantSites, SeeThroughReshapesThatKeepTheChannels) {
  testing::GraphBuilder b(9);
  Value* x = b.g->add_input("x", DType::kFloat32, graph::Shape{2, 3, 8});
  auto norm = [&](Value* in) {
    return b.node("LayerNormalization", {in, b.constant({8}, -4.0f, 4.0f), b.constant({8})},
                  {.attributes = {{"axis", int64_t{-1}}, {"epsilon", 1e-5f}}});
  };
  auto shape = [&](std::vector<int64_t> dims) {
    const auto n = static_cast<int64_t>(dims.size());
    return b.g->add_constant(b.g->unique_value_name("shape"),
                             Tensor::from_vector<int64_t>({n}, dims));
  };
  Value* rows = b.node("Reshape", {norm(x), shape({6, 8})});
  Value* y1 = b.node(
      "Reshape", {b.node("Gemm", {rows, b.constant({8, 5}), b.constant({5})}), shape({2, 3, 5})});
  Value* flat = b.node("Reshape", {norm(x), shape({2, 24})});
  Value* y2 = b.node("MatMul", {flat, b.constant({24, 3})});
  for (Value* y : {y1, y2}) b.g->mark_output(y);
  b.g->opset = 17;
  auto fused = fused_of(*b.g, 2);
  const auto before = fused->clone();
  const quant::SmoothQuantSites found = quant::find_smoothquant_sites(*fused);
  ASSERT_EQ(found.sites.size(), 1u);
  ASSERT_EQ(found.sites[0].consumers.size(), 1u);
  EXPECT_EQ(fused->find_node(found.sites[0].consumers[0].node)->op_type(), "Linear");
  EXPECT_EQ(found.sites[0].consumers[0].input_axis, 0);
  ASSERT_EQ(found.refused.size(), 1u);
  EXPECT_NE(found.refused[0].reason.find("does not keep its last axis of 8 channels"),
            std::string::npos)
      << found.refused[0].reason;

  quant::SmoothQuantStats stats(*fused, found.sites);
  stats.observe_batch(outlier_input({2, 3, 8}, 31));
  const quant::SmoothQuantResult result = quant::apply_smoothquant(*fused, stats, {});
  ASSERT_EQ(result.smoothed.size(), 1u);
  EXPECT_LT(result.smoothed[0].min_factor, result.smoothed[0].max_factor);
  const Tensor probe = outlier_input({2, 3, 8}, 32);
  const auto ref = run(*before, probe);
  const auto got = run(*fused, probe);
  ASSERT_EQ(ref.size(), got.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_LE(testing::relative_max_diff(got[i], ref[i]), 1e-4) << "output " << i;
  }
}

TEST(SmoothQuantFold, FactorCountMustMatchTheChannels) {
  auto fused = fused_of(*two_norm_model(), 6);
  const quant::SmoothQuantSites found = quant::find_smoothquant_sites(*fused);
  ASSERT_EQ(found.sites.size(), 1u);
  const std::vector<float> three = {1.0f, 2.0f, 3.0f};
  EXPECT_NE(testing::error_of(ErrorKind::kInvalid,
                              [&] { quant::fold_smoothing(*fused, found.sites[0], three); })
                .find("expected 8 factors, got 3"),
            std::string::npos);
}

// The first `count` digit images (every class), as the model's input.
Tensor digit_images(const graph::Graph& model, int64_t count) {
  const auto& shape = *model.inputs()[0]->shape();
  io::ImageFolder folder(testing::data_path("datasets/digits/train"),
                         io::preprocess_from_metadata(model.metadata, shape));
  const int64_t stride = static_cast<int64_t>(folder.size()) / count;
  Tensor out(DType::kFloat32, {count, shape[1], shape[2], shape[3]});
  const int64_t per = static_cast<int64_t>(folder.sample_numel());
  for (int64_t i = 0; i < count; ++i) {
    folder.load_batch(static_cast<size_t>(i * stride), 1, out.data<float>() + i * per);
  }
  return out;
}

// SmoothQuant statistics over `data` in batches of `batch`, each batch through the model
// transformed at its size; the factors of every smoothed LayerNorm.
std::map<std::string, std::vector<float>> vit_factors(const graph::Graph& model, const Tensor& data,
                                                      int64_t batch) {
  auto fused = fused_of(model, batch);
  const quant::SmoothQuantSites found = quant::find_smoothquant_sites(*fused);
  quant::SmoothQuantStats stats(*fused, found.sites);
  for (int64_t b = 0; b < data.dim(0); b += batch) {
    stats.observe_batch(data.slice_rows(b, std::min(b + batch, data.dim(0))).clone());
  }
  std::map<std::string, std::vector<float>> out;
  for (const auto& s : quant::apply_smoothquant(*fused, stats, {}).smoothed) {
    out[s.layer_norm] = s.factors;
  }
  return out;
}

TEST(SmoothQuantVit, SmoothedModelStaysEquivalent) {
  auto model = graph::load_onnx(testing::data_path("models/vit_bn.onnx"));
  const int64_t batch = 4;
  auto fused = fused_of(*model, batch);
  const auto before = fused->clone();
  const quant::SmoothQuantSites found = quant::find_smoothquant_sites(*fused);
  // Four blocks with two LayerNorms each, one read by the attention's in-projection and one by
  // the MLP; the final LayerNorm feeds a Gather of the class token and stays.
  ASSERT_EQ(found.sites.size(), 8u);
  ASSERT_EQ(found.refused.size(), 1u);
  EXPECT_NE(found.refused[0].reason.find("(Gather)"), std::string::npos) << found.refused[0].reason;
  size_t in_projections = 0;
  for (const quant::SmoothQuantSite& site : found.sites) {
    ASSERT_EQ(site.consumers.size(), 1u) << site.layer_norm;
    in_projections += fused->find_node(site.consumers[0].node)->op_type() == "MHAInProjection";
  }
  EXPECT_EQ(in_projections, 4u);
  quant::SmoothQuantStats stats(*fused, found.sites);
  const Tensor data = digit_images(*model, 8);
  stats.observe_batch(data.slice_rows(0, 4).clone());
  stats.observe_batch(data.slice_rows(4, 8).clone());
  const quant::SmoothQuantResult result = quant::apply_smoothquant(*fused, stats, {});
  EXPECT_EQ(result.smoothed.size(), found.sites.size());
  EXPECT_LT(result.min_factor(), result.max_factor());
  EXPECT_NO_THROW(fused->check_consistency());
  for (int64_t b = 0; b < 8; b += batch) {
    const Tensor x = data.slice_rows(b, b + batch).clone();
    const auto ref = run(*before, x);
    const auto got = run(*fused, x);
    ASSERT_EQ(ref.size(), got.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      EXPECT_LE(testing::relative_max_diff(got[i], ref[i]), 1e-4) << "output " << i;
    }
  }
  // The same factors fold into the model transformed at another batch.
  auto other = fused_of(*model, 1);
  const auto other_before = other->clone();
  quant::fold_smoothing(*other, result);
  const Tensor one = data.slice_rows(0, 1).clone();
  const auto ref = run(*other_before, one);
  const auto got = run(*other, one);
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_LE(testing::relative_max_diff(got[i], ref[i]), 1e-4) << "output " << i;
  }
}

TEST(SmoothQuantVit, FactorsAreBitIdenticalAcrossBatchSizesAndThreads) {
  auto model = graph::load_onnx(testing::data_path("models/vit_bn.onnx"));
  const Tensor data = digit_images(*model, 8);
  std::map<std::string, std::vector<float>> reference, by4, by8_two_threads;
  {
    testing::ThreadCount threads(1);
    reference = vit_factors(*model, data, 1);
    by4 = vit_factors(*model, data, 4);
  }
  {
    testing::ThreadCount threads(2);
    by8_two_threads = vit_factors(*model, data, 8);
  }
  ASSERT_FALSE(reference.empty());
  auto same_bits = [](const std::map<std::string, std::vector<float>>& a,
                      const std::map<std::string, std::vector<float>>& b) {
    if (a.size() != b.size()) return false;
    for (const auto& [name, f] : a) {
      auto it = b.find(name);
      if (it == b.end() || it->second.size() != f.size()) return false;
      if (std::memcmp(f.data(), it->second.data(), f.size() * sizeof(float)) != 0) return false;
    }
    return true;
  };
  EXPECT_TRUE(same_bits(reference, by4));
  EXPECT_TRUE(same_bits(reference, by8_two_threads));
}

}  // namespace
}  // namespace qforge
