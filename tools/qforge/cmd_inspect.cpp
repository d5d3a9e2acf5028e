// `qforge inspect`: inputs, outputs, op histogram, parameters and MACs per image (per sample for
// a model whose input is no image: token ids, a feature vector).
#include <cstdio>
#include <iostream>
#include <memory>

#include "graph/onnx_import.h"
#include "graph/tail.h"
#include "runtime/model_stats.h"
#include "runtime/resolve.h"
#include "tools/qforge/commands.h"
#include "tools/qforge/input_shape.h"

namespace qforge::cli {
namespace {

struct InspectOptions {
  std::string model;
  InputShapeFlag input_shape;
};

std::string value_line(const graph::Value& v) {
  std::string shape = "[?]";
  if (v.has_shape()) {
    shape = "[";
    for (size_t i = 0; i < v.shape()->size(); ++i) {
      int64_t d = (*v.shape())[i];
      shape += (i ? ", " : "") + (d < 0 ? std::string("N") : std::to_string(d));
    }
    shape += "]";
  }
  return v.name() + "  " + kernels::dtype_name(v.dtype()) + shape;
}

int run_inspect(const InspectOptions& o) {
  auto model = load_model_to_run(o.model, o.input_shape, "", /*note_tail=*/false);
  std::cout << "model    " << o.model << "\n";
  std::cout << "opset    " << model->opset << "\n";
  for (const auto* in : model->inputs()) std::cout << "input    " << value_line(*in) << "\n";
  for (const auto* out : model->outputs()) std::cout << "output   " << value_line(*out) << "\n";
  if (model->added_batch_axis.any()) {
    std::cout << "batch    none in the file: its input is one sample; qforge runs it with a batch "
                 "axis of 1 (the shapes above) and writes the file's shapes back\n";
  }
  if (model->tail) {
    std::cout << "tail     " << graph::describe_tail(*model->tail)
              << ", written back to the models qforge writes, not run; the outputs above are "
                 "what it reads\n";
  }
  for (const auto& [key, value] : model->metadata) {
    std::cout << "metadata " << key << " = " << value << "\n";
  }

  // Figures per image: resolve a copy at batch 1 (shape subgraphs fold away), or at the
  // model's fixed batch (a model qforge wrote at --batch N) and divide by it.
  int64_t batch = 1;
  for (const auto* in : model->inputs()) {
    if (in->has_shape() && !in->shape()->empty() && (*in->shape())[0] > 0) {
      batch = (*in->shape())[0];
    }
  }
  auto resolved = model->clone();
  runtime::ResolveOptions ro;
  for (const auto* in : model->inputs()) {
    if (!in->has_shape() || in->shape()->empty()) continue;
    const int64_t fixed = (*in->shape())[0];
    if (fixed > 0 && fixed != batch) {
      throw_unsupported("inspect: model '" + o.model + "' has inputs of different fixed batches (" +
                        std::to_string(fixed) + " and " + std::to_string(batch) + ")");
    }
  }
  ro.input_shapes = runtime::input_shapes_for_batch(*model, batch);
  auto fold = runtime::resolve(*resolved, ro);
  auto imported = runtime::model_stats(*model);
  auto stats = runtime::model_stats(*resolved);
  stats.macs /= batch;

  std::cout << "nodes    " << model->nodes().size() << " imported, " << fold.remaining_nodes
            << " after folding " << fold.folded_nodes << " constant nodes\n";
  std::printf("params   %lld (%.2f M)\n", static_cast<long long>(stats.parameters),
              stats.parameters / 1e6);
  // An image: a float32 input of rank 4 (N, C, H, W).
  const graph::Value* first = model->inputs().empty() ? nullptr : model->inputs().front();
  const bool images = first && first->dtype() == kernels::DType::kFloat32 && first->has_shape() &&
                      first->shape()->size() == 4;
  std::printf("MACs     %lld per %s (%.3f GMAC)%s\n", static_cast<long long>(stats.macs),
              images ? "image" : "sample", stats.macs / 1e9,
              batch > 1 ? (" (model fixed to batch " + std::to_string(batch) + ")").c_str() : "");
  std::cout << "ops (imported -> after folding)\n";
  for (const auto& [op, count] : imported.op_counts) {
    auto it = stats.op_counts.find(op);
    std::printf("  %-22s %6lld -> %lld\n", op.c_str(), static_cast<long long>(count),
                static_cast<long long>(it == stats.op_counts.end() ? 0 : it->second));
  }
  return 0;
}

}  // namespace

CommandRunner add_inspect_command(CLI::App& app) {
  auto opts = std::make_shared<InspectOptions>();
  auto* cmd =
      app.add_subcommand("inspect", "Show a model's inputs, outputs, ops, parameters and MACs");
  cmd->add_option("model", opts->model, "ONNX model file")->required();
  add_input_shape_option(*cmd, opts->input_shape);
  return [opts] { return run_inspect(*opts); };
}

}  // namespace qforge::cli
