// `qforge grad`: one training-mode forward and backward of a classifier with the mean
// cross-entropy against labels; writes the loss and every trainable initializer's gradient as an
// .npz keyed by ONNX initializer name, to check qforge's training against another framework.
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "quant/fake_quant_training.h"
#include "runtime/threads.h"
#include "runtime/training.h"
#include "tools/io/atomic_file.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"
#include "tools/io/resource_usage.h"
#include "tools/qforge/cli_checks.h"
#include "tools/qforge/commands.h"
#include "tools/qforge/data_source.h"
#include "tools/qforge/input_shape.h"

namespace qforge::cli {
namespace {

struct GradOptions {
  std::string model;
  std::string data;
  std::string labels;
  std::string output;
  std::string points;
  int threads = 0;
  int runs = 1;
  bool fake_quant = false;
  InputShapeFlag input_shape;
};

int run_grad(const GradOptions& o) {
  set_threads_from_flag(o.threads);
  if (!o.points.empty() && !o.fake_quant) {
    throw_invalid(
        "grad: --points needs --fake-quant: only a run through fake quant has Q/DQ points");
  }
  std::vector<io::NamedPath> outputs = {{"-o", o.output}};
  if (!o.points.empty()) outputs.push_back({"--points", o.points});
  const io::NamedPath inputs[] = {{"model", o.model}, {"--data", o.data}, {"--labels", o.labels}};
  io::check_output_paths("grad", outputs, inputs);
  std::unique_ptr<graph::Graph> model = load_model_to_run(o.model, o.input_shape, o.data);
  // One batch of every model input: an .npy's rows, or an .npz's arrays keyed by input name.
  std::vector<kernels::Tensor> batch;
  if (o.data.ends_with(".npz")) {
    const DataSource data = DataSource::open(o.data, *model, {});
    batch = data.load_inputs(0, data.size());
  } else {
    batch.push_back(io::read_npy(o.data));
    if (batch[0].rank() < 1) throw_invalid("grad: '" + o.data + "' has no batch axis");
  }
  const int64_t samples = batch.front().dim(0);
  const kernels::Tensor labels = io::read_npy(o.labels);
  if (labels.dtype() != kernels::DType::kInt64) {
    throw_invalid("grad: '" + o.labels + "' must hold int64 labels, got " + labels.describe());
  }
  if (labels.rank() != 1 || labels.dim(0) != samples) {
    throw_invalid("grad: '" + o.labels + "' must hold one label per sample of '" + o.data +
                  "' (int64 [" + std::to_string(samples) + "]), got " + labels.describe());
  }
  quant::MaxCalibratedFakeQuant setup;
  if (o.fake_quant) {
    setup = quant::max_calibrated_fake_quant(*model, batch, {.point_outputs = !o.points.empty()});
  }
  std::unique_ptr<runtime::ClassifierTraining> owned =
      o.fake_quant ? std::move(setup.training)
                   : std::make_unique<runtime::ClassifierTraining>(*model, samples);
  runtime::ClassifierTraining& training = *owned;
  // Through fake quant the gradients are pulled back from the fused graph onto the model's
  // initializers, which needs the model's names; else the model is not needed any more.
  if (!o.fake_quant) model.reset();
  // Every run computes the same gradients (BN's running statistics, which the forward updates,
  // do not enter them); --runs only gives the timing more samples.
  float loss = 0;
  double best_ms = 0;
  for (int run = 0; run < o.runs; ++run) {
    const auto start = std::chrono::steady_clock::now();
    loss = training.forward_backward(batch, {.labels = &labels});
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    best_ms = run == 0 ? ms : std::min(best_ms, ms);
  }
  quant::InitializerGradients fake_quant;
  if (o.fake_quant) fake_quant = quant::initializer_gradients(training, *model);
  std::vector<std::pair<std::string, kernels::Tensor>> gradients =
      o.fake_quant ? std::move(fake_quant.gradients) : training.gradients();
  std::map<std::string, kernels::Tensor> arrays;
  arrays.emplace("loss", kernels::Tensor::scalar_f32(loss));
  for (auto& [name, grad] : gradients) {
    if (name == "loss") {
      throw_invalid("grad: the model has an initializer named 'loss', which the output uses");
    }
    arrays.emplace(name, grad);
  }
  // What each activation quantizer read in the (last) forward, and its amax: the point tensor's
  // value is output k + 1 of the training graph (quant::MaxCalibratedOptions::point_outputs).
  std::map<std::string, kernels::Tensor> point_arrays;
  if (!o.points.empty()) {
    const std::span<const kernels::Tensor> values = training.executor().outputs();
    for (size_t k = 0; k < setup.points.size(); ++k) {
      const std::string& tensor = setup.points[k];
      point_arrays.emplace(tensor, values[k + 1].clone());
      point_arrays.emplace("amax/" + tensor, kernels::Tensor::scalar_f32(setup.amax.at(tensor)));
    }
  }
  // Both files are complete before either is put in place.
  io::AtomicFile output_file(o.output);
  output_file.write(io::encode_npz(arrays));
  std::unique_ptr<io::AtomicFile> points_file;
  if (!o.points.empty()) {
    points_file = std::make_unique<io::AtomicFile>(o.points);
    points_file->write(io::encode_npz(point_arrays));
  }
  io::commit_together({&output_file, points_file.get()});
  std::printf("loss       %.6g (mean cross-entropy over %lld samples)\n", loss,
              static_cast<long long>(samples));
  std::printf("time       %.1f ms forward and backward (%s of %d, %d threads)\n", best_ms,
              o.runs > 1 ? "fastest" : "one run", o.runs, runtime::num_threads());
  std::printf("gradients  %zu written to %s\n", gradients.size(), o.output.c_str());
  if (o.fake_quant) {
    std::printf(
        "           through fake quant, keyed by the model's initializers; %zu pulled back "
        "from the fused graph's derived tensors%s\n",
        fake_quant.pulled_back.size(), fake_quant.pulled_back.empty() ? "" : ":");
    for (const std::string& name : fake_quant.pulled_back)
      std::printf("             %s\n", name.c_str());
    if (!fake_quant.unmapped.empty()) {
      std::printf(
          "           %zu keyed by fused-graph names, with no initializer to pull back to:\n",
          fake_quant.unmapped.size());
      for (const std::string& name : fake_quant.unmapped)
        std::printf("             %s\n", name.c_str());
    }
  }
  if (!o.points.empty()) {
    std::printf("points     %zu activation points' values and amax written to %s\n",
                setup.points.size(), o.points.c_str());
  }
  const runtime::TrainingExecutor& executor = training.executor();
  constexpr double kMiB = 1 << 20;
  std::printf(
      "memory     arena %.1f MiB (activations and gradients placed by liveness; %.1f MiB "
      "unshared), workspace %.1f MiB, peak resident %.1f MiB\n",
      executor.arena_bytes() / kMiB, executor.unshared_bytes() / kMiB,
      executor.workspace_bytes() / kMiB, io::peak_resident_bytes() / kMiB);
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
      ->check(file_path());
  cmd->add_option("--data", o->data,
                  "input batch as .npy (float32, the model's input shape), or as an .npz of one "
                  "array per model input, keyed by input name (token ids, masks)")
      ->required()
      ->check(file_path());
  add_input_shape_option(*cmd, o->input_shape);
  cmd->add_option("--labels", o->labels, "class labels as .npy (int64 [batch])")
      ->required()
      ->check(file_path());
  cmd->add_option("-o,--output", o->output, "gradients .npz: 'loss' and one array per initializer")
      ->required()
      ->check(file_path());
  cmd->add_flag("--fake-quant", o->fake_quant,
                "differentiate through fake quant: the model transformed and its Q/DQ points "
                "placed as calibrate does, activations calibrated with max on this batch, "
                "weights quantized per channel from their current values, BN folding "
                "simulated; the gradients of tensors the transforms derived are pulled back "
                "onto the initializers they came from, so keys and shapes are the model's");
  cmd->add_option("--points", o->points,
                  "with --fake-quant: also write, as an .npz keyed by point tensor, what each "
                  "activation quantizer read in this training forward and the amax it was "
                  "calibrated to ('amax/<tensor>'), to compare with another framework point by "
                  "point")
      ->check(file_path());
  cmd->add_option("--threads", o->threads, "worker threads (default: all cores)")
      ->check(integer_at_least(0, INT_MAX));
  cmd->add_option("--runs", o->runs,
                  "run the forward and backward N times and report the fastest (benchmarks); "
                  "the gradients are the same every run")
      ->check(integer_at_least(1, 1000));
  return [o] { return run_grad(*o); };
}

}  // namespace qforge::cli
