// Whole-model gradients through fake quant (`qforge grad --fake-quant`,
// quant::fake_quant_gradients) against PyTorch 1.13's on the bundled models
// (data/generate/fake_quant_model_goldens.py): PyTorch's torch.fake_quantize_per_tensor_affine /
// _per_channel_affine at the Q/DQ points qforge places, at the amax qforge's max calibration picks,
// BN folding simulated, on the golden batch.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "graph/onnx_import.h"
#include "quant/calibration.h"
#include "quant/fake_quant_training.h"
#include "quant/placement.h"
#include "runtime/training.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/float_checks.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using kernels::Tensor;
using testing::data_path;

double l2_norm(const Tensor& t) {
  double sum = 0;
  for (float v : t.span<float>()) sum += double(v) * v;
  return std::sqrt(sum);
}

bool is_amax_key(const std::string& key) {
  return key.rfind("amax/", 0) == 0;
}

// A parameter's gradient in PyTorch's own run (not the loss, an amax, an aligned or a variant
// entry).
bool is_parameter_key(const std::string& key) {
  return key != "loss" && !is_amax_key(key) && key.rfind("aligned/", 0) != 0 &&
         key.rfind("variant", 0) != 0;
}

struct FamilyRun {
  std::map<std::string, Tensor> golden;
  runtime::GradientResult result;
};

// One model load per family: the amax of qforge's max calibration on the batch must be the
// golden's at every point within 1e-5 relative (so both sides quantize with the same scales: the
// golden holds the Release build's amax bit for bit; a build with another compiler or floating-
// point contraction, such as the sanitizer build, differs in the last bit), then the gradients
// through fake quant, as `qforge grad --fake-quant` computes them.
FamilyRun run_family(const std::string& family) {
  FamilyRun run;
  run.golden = io::read_npz(data_path("golden/fake_quant/" + family + "_bn_grads.npz"));
  auto model = graph::load_onnx(data_path("models/" + family + "_bn.onnx"));
  const Tensor input = io::read_npy(data_path("golden/grad/batch_input.npy"));
  const Tensor labels = io::read_npy(data_path("golden/grad/batch_labels.npy"));

  runtime::TransformOptions transform;
  transform.batch = input.dim(0);
  auto transformed = runtime::transform_model(*model, nullptr, transform);
  const quant::QuantPlan plan = quant::place_qdq(*transformed.graph);
  quant::CalibrationStats stats(*transformed.graph, plan);
  stats.observe_batch(input);
  const quant::ActivationAmax amax = stats.activation_amax(quant::Calibrator::kMax);
  size_t golden_points = 0;
  for (const auto& [key, value] : run.golden) golden_points += is_amax_key(key);
  EXPECT_EQ(amax.size(), golden_points) << "activation points";
  for (const auto& [tensor, a] : amax) {
    auto it = run.golden.find("amax/" + tensor);
    if (it == run.golden.end()) {
      ADD_FAILURE() << "the golden has no point at '" << tensor << "'";
      continue;
    }
    const float want = it->second.data<float>()[0];
    EXPECT_LE(std::abs(a - want), 1e-5f * want) << "amax at " << tensor;
  }

  run.result = quant::fake_quant_gradients(*model, input, labels);
  return run;
}

// Every PyTorch parameter has a gradient of its shape, and nothing else has one.
void expect_same_parameters(const FamilyRun& run) {
  std::set<std::string> got;
  for (const auto& [name, grad] : run.result.gradients) {
    got.insert(name);
    auto it = run.golden.find(name);
    if (it == run.golden.end() || !is_parameter_key(name)) {
      ADD_FAILURE() << "gradient of '" << name << "', which PyTorch has no parameter for";
      continue;
    }
    EXPECT_EQ(grad.shape(), it->second.shape()) << name;
  }
  for (const auto& [name, want] : run.golden) {
    if (!is_parameter_key(name)) continue;
    EXPECT_TRUE(got.count(name)) << "no gradient for PyTorch parameter '" << name << "'";
  }
}

// The references qforge may be held to, each a whole PyTorch run: PyTorch's own, and where the
// golden has them, that run with its rounding-level ties settled as qforge settles them (the
// "aligned/" entries: integers within 1e-4 of a step from a .5 boundary, max-pool windows whose
// two largest values are within 1e-6 relative; the script checks both; such an integer also
// comes from the quantizers' own arithmetic: qforge divides by the scale as ONNX's
// QuantizeLinear does, torch.fake_quantize multiplies by its inverse, and a value whose quotient
// is exactly 11.5 has a product of 11.499999), and "variant<N>/"
// references from other machines (PyTorch, like qforge, settles a near-tie one way on one CPU and
// the other way on another: its MobileNetV3 loss is 0.11646 on one machine and 0.11325 on an
// AVX-512 one; MobileNetV3's variant2 and ViT's variant1 are an AMD EPYC machine's runs, aligned
// to qforge with the depthwise kernels' fused multiply-add chains). One such value moves these
// models far: ResNet's single integer and two windows move PyTorch's own loss by 1.1e-2 and its
// gradients by up to 0.23 relative L2, MobileNetV3's one integer its gradients by 9.4e-3, ViT's
// by 7.3e-4.
std::vector<std::map<std::string, Tensor>> references_of(const FamilyRun& run) {
  std::map<std::string, std::map<std::string, Tensor>> by_prefix;
  for (const auto& [key, value] : run.golden) {
    if (is_amax_key(key) || key == "aligned/flips" || key == "aligned/pool_ties") continue;
    const size_t slash = key.find('/');
    const std::string prefix = slash == std::string::npos ? "" : key.substr(0, slash + 1);
    by_prefix[prefix][key.substr(prefix.size())] = value;
  }
  std::vector<std::map<std::string, Tensor>> references;
  for (auto& [prefix, reference] : by_prefix) references.push_back(std::move(reference));
  return references;
}

// The largest relative L2 of a gradient from the reference's, gradients zero by construction
// left out (as in training_golden_test.cpp: a BN bias whose gradient is zero by construction holds
// rounding noise on both sides; both must then stay below 1e-6 of the whole gradient's norm).
struct Comparison {
  double worst = 0;
  std::string worst_name;
  std::vector<std::pair<std::string, double>> errors;  // every compared parameter
  std::vector<std::string> not_zero;                   // zero by construction, but not here
};

Comparison compare(const runtime::GradientResult& result,
                   const std::map<std::string, Tensor>& reference) {
  double total = 0;
  for (const auto& [name, want] : reference) {
    if (name != "loss") total += std::pow(l2_norm(want), 2);
  }
  const double zero_level = 1e-6 * std::sqrt(total);
  std::map<std::string, const Tensor*> got;
  for (const auto& [name, grad] : result.gradients) got[name] = &grad;
  Comparison c;
  for (const auto& [name, want] : reference) {
    if (name == "loss") continue;
    auto it = got.find(name);
    if (it == got.end() || it->second->shape() != want.shape()) continue;  // reported apart
    if (l2_norm(want) <= zero_level) {
      if (l2_norm(*it->second) > zero_level) c.not_zero.push_back(name);
      continue;
    }
    const double error = testing::relative_l2(*it->second, want);
    c.errors.emplace_back(name, error);
    if (error > c.worst) {
      c.worst = error;
      c.worst_name = name;
    }
  }
  return c;
}

class FakeQuantModelGolden : public ::testing::TestWithParam<std::string> {};

// The loss and every gradient within 1e-2 relative (L2) of the nearest reference: the issue's
// slack for a rounding flip. The references remove the measured flips (against the nearest:
// loss within 3e-7, gradients within 1.1e-4 in the Release builds measured; the README has each
// family's figures); a build that rounds another value the other way (the sanitizer build moves
// ViT's loss by 1.4e-4) has the slack.
TEST_P(FakeQuantModelGolden, GradientsMatchPyTorch) {
  const FamilyRun run = run_family(GetParam());
  expect_same_parameters(run);
  const std::vector<std::map<std::string, Tensor>> references = references_of(run);
  ASSERT_FALSE(references.empty());
  size_t nearest = 0;
  std::vector<Comparison> comparisons;
  for (size_t i = 0; i < references.size(); ++i) {
    ASSERT_EQ(references[i].size(), run.result.gradients.size() + 1)
        << "parameters and the loss of reference " << i;
    comparisons.push_back(compare(run.result, references[i]));
    if (comparisons[i].worst < comparisons[nearest].worst) nearest = i;
  }
  const std::map<std::string, Tensor>& reference = references[nearest];
  const Comparison& c = comparisons[nearest];
  const float want_loss = reference.at("loss").data<float>()[0];
  EXPECT_LE(std::abs(run.result.loss - want_loss), 1e-2 * std::abs(want_loss))
      << "loss " << run.result.loss << " against PyTorch's " << want_loss;
  for (const std::string& name : c.not_zero) ADD_FAILURE() << name << " is zero by construction";
  for (const auto& [name, error] : c.errors) EXPECT_LE(error, 1e-2) << name;
  std::printf(
      "%s: loss %.7g (PyTorch %.7g, reference %zu of %zu), largest gradient relative L2 "
      "%.3g (%s)\n",
      GetParam().c_str(), run.result.loss, want_loss, nearest + 1, references.size(), c.worst,
      c.worst_name.c_str());
}

INSTANTIATE_TEST_SUITE_P(Bundled, FakeQuantModelGolden,
                         ::testing::Values("resnet", "mobilenet_v3", "efficientnet", "convnext",
                                           "vit", "swin"),
                         [](const auto& p) { return p.param; });

}  // namespace
}  // namespace qforge
