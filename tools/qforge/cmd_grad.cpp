// `qforge grad`: one training-mode forward and backward of a classifier with the mean
// cross-entropy against labels; writes the loss and every trainable initializer's gradient as an
// .npz keyed by ONNX initializer name, to check qforge's training against another framework.
#include <iostream>
#include <map>
#include <memory>

#include "graph/onnx_import.h"
#include "runtime/threads.h"
#include "runtime/training.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"
#include "tools/qforge/commands.h"

namespace qforge::cli {
namespace {

struct GradOptions {
  std::string model;
  std::string data;
  std::string labels;
  std::string output;
  int threads = 0;
};

int run_grad(const GradOptions& o) {
  runtime::set_num_threads(o.threads);
  std::unique_ptr<graph::Graph> model = graph::load_onnx(o.model);
  const kernels::Tensor input = io::read_npy(o.data);
  const kernels::Tensor labels = io::read_npy(o.labels);
  if (labels.dtype() != kernels::DType::kInt64) {
    throw_invalid("grad: '" + o.labels + "' must hold int64 labels, got " + labels.describe());
  }
  runtime::GradientResult result = runtime::cross_entropy_gradients(*model, input, labels);
  std::map<std::string, kernels::Tensor> arrays;
  arrays.emplace("loss", kernels::Tensor::scalar_f32(result.loss));
  for (auto& [name, grad] : result.gradients) {
    if (name == "loss") {
      throw_invalid("grad: the model has an initializer named 'loss', which the output uses");
    }
    arrays.emplace(name, grad);
  }
  io::write_npz(o.output, arrays);
  std::cout << "loss " << result.loss << " (mean cross-entropy over " << input.dim(0)
            << " samples); " << result.gradients.size() << " gradients written to " << o.output
            << '\n';
  return 0;
}

}  // namespace

CommandRunner add_grad_command(CLI::App& app) {
  auto o = std::make_shared<GradOptions>();
  CLI::App* cmd = app.add_subcommand(
      "grad",
      "One training-mode forward and backward (BatchNormalization on batch statistics) with the "
      "mean cross-entropy against int64 labels; writes the loss and the gradient of every "
      "trainable float initializer, keyed by its ONNX name, as an .npz.");
  cmd->add_option("model", o->model, "float ONNX classifier (logits [batch, classes])")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--data", o->data, "input batch as .npy (float32, the model's input shape)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--labels", o->labels, "class labels as .npy (int64 [batch])")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("-o,--output", o->output, "gradients .npz: 'loss' and one array per initializer")
      ->required();
  cmd->add_option("--threads", o->threads, "worker threads (default: all cores)")
      ->check(CLI::Range(0, 4096));
  return [o] { return run_grad(*o); };
}

}  // namespace qforge::cli
