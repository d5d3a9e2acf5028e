// Training a model whose outputs are no logits (a detector's boxes and class scores) by
// distillation of each output (ClassifierTraining::dense, kernels/output_distillation.h): the
// gradients of the weights against central differences of the loss qforge computes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "runtime/session.h"
#include "runtime/training.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using kernels::Tensor;

TEST(DenseDistillation, GradientsMatchCentralDifferencesOfTheLoss) {
  // The bundled detector with its NMS cut off: two outputs, boxes in pixels and class scores.
  auto model = graph::load_onnx(testing::data_path("models/yolo_nms.onnx"));
  const Tensor input = io::read_npy(testing::data_path("golden/yolo_input.npy"));
  runtime::Session float_model(model->clone());
  std::vector<Tensor> teacher;
  for (const Tensor& out : float_model.run(input)) {
    // A teacher a little off the float model's eval-mode outputs.
    Tensor t = out.clone();
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = t.data<float>()[i] * 1.05f + 0.01f;
    teacher.push_back(std::move(t));
  }
  ASSERT_EQ(teacher.size(), 2u);
  runtime::ClassifierTraining training(*model, input.dim(0));
  ASSERT_TRUE(training.dense());
  runtime::ClassifierLoss loss;
  loss.teacher_outputs = teacher;
  const float base = training.forward_backward(input, loss);
  ASSERT_GT(base, 0.0f);

  int checked = 0;
  for (runtime::Parameter& p : training.executor().parameters()) {
    if (!p.trainable() || p.value.numel() < 16) continue;
    // The element of largest gradient in every fourth parameter.
    if (checked++ % 4 != 0) continue;
    const Tensor grad = p.grad.clone();
    const float* g = grad.data<float>();
    const int64_t i = std::max_element(g, g + grad.numel(),
                                       [](float a, float b) { return std::abs(a) < std::abs(b); }) -
                      g;
    float& w = p.value.data<float>()[i];
    const float keep = w;
    const float h = 1e-2f * std::max(std::abs(keep), 0.05f);
    w = keep + h;
    const double up = training.forward_loss(input, loss);
    w = keep - h;
    const double down = training.forward_loss(input, loss);
    w = keep;
    const double numeric = (up - down) / (double(keep + h) - double(keep - h));
    EXPECT_NEAR(g[i], numeric, 0.03 * std::abs(numeric) + 1e-4 * base)
        << p.name << " element " << i;
  }
  EXPECT_GT(checked, 8);
}

TEST(DenseDistillation, LabelsNeedLogits) {
  auto model = graph::load_onnx(testing::data_path("models/yolo_nms.onnx"));
  const Tensor input = io::read_npy(testing::data_path("golden/yolo_input.npy"));
  runtime::ClassifierTraining training(*model, input.dim(0));
  Tensor labels(kernels::DType::kInt64, {input.dim(0)});
  try {
    training.forward_backward(input, labels);
    FAIL() << "labels on a model without logits";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("output 'boxes' must be float32 logits [batch, classes] "
                                         "for labels, got [4, 64, 4]"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace qforge
