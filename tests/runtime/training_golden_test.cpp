// Training-mode gradients of the bundled models against PyTorch's (data/generate/grad_goldens.py):
// loss within 1e-5 relative, every parameter's gradient within 1e-4 relative L2, every PyTorch
// parameter present; and the same bits on 1 and 2 threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "graph/onnx_import.h"
#include "quant/optimizer.h"
#include "runtime/session.h"
#include "runtime/training.h"
#include "tests/support/float_checks.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_count.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using testing::data_path;

double l2_norm(const kernels::Tensor& t) {
  double sum = 0;
  for (float v : t.span<float>()) sum += double(v) * v;
  return std::sqrt(sum);
}

runtime::GradientResult gradients_of(const std::string& family) {
  auto model = graph::load_onnx(data_path("models/" + family + "_bn.onnx"));
  auto input = io::read_npy(data_path("golden/grad/batch_input.npy"));
  auto labels = io::read_npy(data_path("golden/grad/batch_labels.npy"));
  return runtime::cross_entropy_gradients(*model, input, labels);
}

class TrainingGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainingGolden, GradientsMatchPyTorch) {
  const std::string family = GetParam();
  const auto golden = io::read_npz(data_path("golden/grad/" + family + "_bn_grads.npz"));
  const runtime::GradientResult result = gradients_of(family);
  const float want_loss = golden.at("loss").data<float>()[0];
  EXPECT_LE(std::abs(result.loss - want_loss), 1e-5 * std::abs(want_loss))
      << "loss " << result.loss << " against PyTorch's " << want_loss;

  // Some gradients are zero by construction: the bias of a BatchNormalization whose output
  // reaches the loss only through an unpadded 1×1 convolution into a BatchNormalization that
  // normalises with batch statistics (a per-channel shift is removed again by the batch mean).
  // PyTorch's values there are rounding noise (MobileNetV3 and EfficientNet: about 1e-8 against
  // a whole-model gradient norm of about 2), so a relative error means nothing: both sides must
  // then be at that noise level, below 1e-6 of the whole gradient's norm.
  double total = 0;
  for (const auto& [name, want] : golden) {
    if (name != "loss") total += std::pow(l2_norm(want), 2);
  }
  const double zero_level = 1e-6 * std::sqrt(total);
  std::map<std::string, const kernels::Tensor*> got;
  for (const auto& [name, grad] : result.gradients) got[name] = &grad;
  for (const auto& [name, want] : golden) {
    if (name == "loss") continue;
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << "no gradient for PyTorch parameter '" << name << "'";
    ASSERT_EQ(it->second->shape(), want.shape()) << name;
    if (l2_norm(want) <= zero_level) {
      EXPECT_LE(l2_norm(*it->second), zero_level) << name << " is zero by construction";
    } else {
      EXPECT_LE(testing::relative_l2(*it->second, want), 1e-4) << name;
    }
  }
}

TEST_P(TrainingGolden, GradientsDoNotDependOnThreads) {
  runtime::GradientResult one, two;
  {
    testing::ThreadCount threads(1);
    one = gradients_of(GetParam());
  }
  {
    testing::ThreadCount threads(2);
    two = gradients_of(GetParam());
  }
  EXPECT_EQ(one.loss, two.loss);
  ASSERT_EQ(one.gradients.size(), two.gradients.size());
  for (size_t i = 0; i < one.gradients.size(); ++i) {
    const kernels::Tensor& a = one.gradients[i].second;
    const kernels::Tensor& b = two.gradients[i].second;
    ASSERT_EQ(a.shape(), b.shape());
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << one.gradients[i].first;
  }
}

// Ten SGD steps on the golden batch from the file's weights: the loss before each step within
// 1e-4 relative of PyTorch's, and every BN running mean and variance after them within 1e-5. Where
// a ReLU input came within 1e-6 of its kink on PyTorch's way (ResNet: one value 8.4e-7 from it at
// step 3, which moves that step's gradients by up to 4%), two correct float32 runs may put it
// on either side; the golden then also holds PyTorch's run with those inputs on the other side
// ("kink/"), and qforge is held to the nearer of the two runs.
TEST_P(TrainingGolden, SgdStepsMatchPyTorch) {
  const std::string family = GetParam();
  const auto golden = io::read_npz(data_path("golden/grad/" + family + "_bn_sgd.npz"));
  std::ifstream settings_file(data_path("golden/grad/sgd.json"));
  const nlohmann::json settings = nlohmann::json::parse(settings_file);
  auto model = graph::load_onnx(data_path("models/" + family + "_bn.onnx"));
  auto input = io::read_npy(data_path("golden/grad/batch_input.npy"));
  auto labels = io::read_npy(data_path("golden/grad/batch_labels.npy"));
  runtime::ClassifierTraining training(*model, input.dim(0));
  quant::Sgd sgd({.lr = settings.at("lr").get<float>(),
                  .momentum = settings.at("momentum").get<float>(),
                  .weight_decay = settings.at("weight_decay").get<float>(),
                  .nesterov = settings.at("nesterov").get<bool>()});
  const int steps = settings.at("steps").get<int>();
  std::vector<float> losses;
  for (int step = 0; step < steps; ++step) {
    losses.push_back(training.forward_backward(input, labels));
    sgd.step(training.executor().parameters());
  }

  // The references: PyTorch's run, and its run with the kinks settled the other way.
  std::vector<std::string> prefixes = {""};
  if (golden.count("kink/loss")) prefixes.push_back("kink/");
  std::vector<double> worst(prefixes.size(), 0.0);
  for (size_t r = 0; r < prefixes.size(); ++r) {
    for (const auto& [name, want] : golden) {
      if (name.rfind(prefixes[r], 0) != 0 || name == "kink/moved") continue;
      const std::string key = name.substr(prefixes[r].size());
      if (key.find('/') != std::string::npos || key == "loss") continue;
      for (const runtime::Parameter& p : training.executor().parameters()) {
        if (p.name == key) worst[r] = std::max(worst[r], testing::relative_l2(p.value, want));
      }
    }
  }
  const size_t nearest =
      static_cast<size_t>(std::min_element(worst.begin(), worst.end()) - worst.begin());
  const std::string& prefix = prefixes[nearest];
  const kernels::Tensor& want_loss = golden.at(prefix + "loss");
  ASSERT_EQ(want_loss.numel(), steps);
  for (int step = 0; step < steps; ++step) {
    const float want = want_loss.data<float>()[step];
    EXPECT_LE(std::abs(losses[step] - want), 1e-4 * std::abs(want))
        << "step " << step << ": loss " << losses[step] << " against PyTorch's " << want
        << (prefix.empty() ? "" : " (kinks settled the other way)");
  }
  for (const auto& [name, want] : golden) {
    if (name.rfind("kink/", 0) == 0 || name == "loss") continue;
    const kernels::Tensor& reference = golden.at(prefix + name);
    const runtime::Parameter* found = nullptr;
    for (const runtime::Parameter& p : training.executor().parameters()) {
      if (p.name == name) found = &p;
    }
    ASSERT_NE(found, nullptr) << "no running statistic '" << name << "'";
    EXPECT_LE(testing::relative_l2(found->value, reference), 1e-5) << prefix << name;
  }
}

// A step that mixes the cross-entropy with distillation, as `qforge qat --distill T
// --distill-weight W --label-smoothing E` trains: (1 − W)·CE + W·T²·KL(teacher ‖ model) at
// temperature T, CE's target smoothed by E, the teacher being the float model in eval mode (BN on
// running statistics) on the same batch, the model training (BN on batch statistics). Against
// PyTorch's F.cross_entropy and F.kl_div (data/generate/distillation_goldens.py): the loss within
// 1e-5 relative, each gradient within 1e-4 relative L2.
TEST(DistillationGolden, MixedLossGradientsMatchPyTorch) {
  const auto golden = io::read_npz(data_path("golden/distill/resnet_bn_grads.npz"));
  std::ifstream settings_file(data_path("golden/distill/settings.json"));
  const nlohmann::json settings = nlohmann::json::parse(settings_file).at("model");
  auto model = graph::load_onnx(data_path("models/resnet_bn.onnx"));
  auto input = io::read_npy(data_path("golden/grad/batch_input.npy"));
  auto labels = io::read_npy(data_path("golden/grad/batch_labels.npy"));
  runtime::Session float_model(model->clone());
  const kernels::Tensor teacher = float_model.run(input)[0].clone();
  // The teacher qforge computes is PyTorch's eval-mode output.
  EXPECT_LE(testing::relative_l2(teacher, golden.at("teacher_logits")), 1e-5);
  runtime::ClassifierTraining training(*model, input.dim(0));
  runtime::ClassifierLoss loss;
  loss.labels = &labels;
  loss.teacher_logits = &teacher;
  loss.temperature = settings.at("temperature").get<float>();
  loss.distill_weight = settings.at("distill_weight").get<float>();
  loss.label_smoothing = settings.at("label_smoothing").get<float>();
  ASSERT_GT(loss.label_smoothing, 0.0f);
  const float got = training.forward_backward(input, loss);
  const float want = golden.at("loss").data<float>()[0];
  EXPECT_LE(std::abs(got - want), 1e-5 * std::abs(want))
      << "loss " << got << " against PyTorch's " << want;
  std::map<std::string, kernels::Tensor> grads;
  for (auto& [name, grad] : training.gradients()) grads.emplace(name, std::move(grad));
  size_t compared = 0;
  for (const auto& [name, want_grad] : golden) {
    if (name == "loss" || name == "teacher_logits") continue;
    auto it = grads.find(name);
    ASSERT_NE(it, grads.end()) << "no gradient for PyTorch parameter '" << name << "'";
    ASSERT_EQ(it->second.shape(), want_grad.shape()) << name;
    EXPECT_LE(testing::relative_l2(it->second, want_grad), 1e-4) << name;
    ++compared;
  }
  EXPECT_EQ(compared, grads.size());
}

INSTANTIATE_TEST_SUITE_P(Bundled, TrainingGolden,
                         ::testing::Values("resnet", "mobilenet_v3", "efficientnet", "convnext",
                                           "vit", "swin"),
                         [](const auto& p) { return p.param; });

}  // namespace
}  // namespace qforge
