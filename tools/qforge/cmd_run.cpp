// `qforge run`: runs a model over an image folder or an .npy batch; prints images/s, top-1
// accuracy for labelled folders, and optionally the time per op kind.
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "kernels/shape_ops.h"
#include "quant/evaluation.h"
#include "runtime/batch_dimension.h"
#include "runtime/model_stats.h"
#include "runtime/session.h"
#include "runtime/threads.h"
#include "runtime/transform_pipeline.h"
#include "tools/io/atomic_file.h"
#include "tools/io/npy.h"
#include "tools/io/progress.h"
#include "tools/io/resource_usage.h"
#include "tools/qforge/cli_checks.h"
#include "tools/qforge/commands.h"
#include "tools/qforge/data_source.h"
#include "tools/qforge/input_shape.h"

namespace qforge::cli {
namespace {

// The batches' outputs joined along `axis` (their other dims equal).
kernels::Tensor join_along(const std::vector<kernels::Tensor>& parts, int axis) {
  if (parts.size() == 1) return parts[0];
  std::vector<graph::Shape> shapes;
  for (const kernels::Tensor& p : parts) shapes.push_back(p.shape());
  graph::Shape shape = shapes[0];
  shape[static_cast<size_t>(axis)] = 0;
  for (const graph::Shape& s : shapes)
    shape[static_cast<size_t>(axis)] += s[static_cast<size_t>(axis)];
  kernels::Tensor joined(parts[0].dtype(), shape);
  kernels::concat(kernels::plan_concat(shapes, axis, kernels::dtype_size(parts[0].dtype())), parts,
                  joined);
  return joined;
}

struct RunOptions {
  std::string model;
  std::string data;
  std::string output;
  int64_t batch = 0;  // 0: 32, or the model's fixed batch
  int threads = 0;
  int64_t limit = 0;
  bool profile = false;
  int64_t profile_nodes = 0;  // also the N slowest nodes
  bool transform = false;
  int64_t warmup = 0;
  PreprocessOverrides preprocess;
  InputShapeFlag input_shape;
};

// Where output k > 0 goes: "out.npy" -> "out.<k>.npy".
std::string extra_output_path(const std::string& output, size_t k) {
  const auto dot = output.rfind(".npy");
  return (dot == std::string::npos ? output : output.substr(0, dot)) + "." + std::to_string(k) +
         ".npy";
}

int run_run(RunOptions o) {
  set_threads_from_flag(o.threads);
  // Check and open the output first: an output that would overwrite the model or the data, or
  // an unwritable path, fails before any work, and nothing partial is left.
  const io::NamedPath inputs[] = {{"model", o.model}, {"--data", o.data}};
  std::vector<io::NamedPath> output_paths;
  std::vector<std::unique_ptr<io::AtomicFile>> out_files;  // one per model output
  if (!o.output.empty()) {
    output_paths.push_back({"-o", o.output});
    io::check_output_paths("run", output_paths, inputs);
    out_files.push_back(std::make_unique<io::AtomicFile>(o.output));
  }

  runtime::SessionOptions so;
  so.executor.profile = o.profile || o.profile_nodes > 0;
  std::unique_ptr<graph::Graph> loaded = load_model_to_run(o.model, o.input_shape, o.data);
  // Outputs past the first go to "<output>.<k>.npy", checked and opened before running.
  for (size_t k = 1; !o.output.empty() && k < loaded->outputs().size(); ++k) {
    output_paths.push_back({"-o", extra_output_path(o.output, k)});
    io::check_output_paths("run", output_paths, inputs);
    out_files.push_back(std::make_unique<io::AtomicFile>(output_paths.back().path));
  }
  DataSource data = DataSource::open(o.data, *loaded, o.preprocess);
  std::string transformed_note;
  if (o.transform) {
    // The fused graph is resolved at one batch (transformers fold it into their reshapes), so
    // it runs whole batches of that size only.
    runtime::TransformOptions options;
    options.batch = o.batch > 0 ? o.batch : 32;
    if (o.batch <= 0 && loaded->inputs().size() == 1 && loaded->inputs()[0]->has_shape() &&
        !loaded->inputs()[0]->shape()->empty() && loaded->inputs()[0]->shape()->front() > 0) {
      options.batch = loaded->inputs()[0]->shape()->front();  // the model's own batch by default
    }
    runtime::TransformResult t = runtime::transform_model(*loaded, nullptr, options);
    transformed_note = "transformed at batch " + std::to_string(options.batch) + ": " +
                       std::to_string(t.conversions.applied()) + " conversions, " +
                       std::to_string(t.fusions.applied()) + " fusions";
    loaded = std::move(t.graph);
  }
  size_t total = data.size();
  size_t left_out = 0;  // samples past the last whole batch of the transformed graph
  if (o.limit > 0) total = std::min(total, static_cast<size_t>(o.limit));
  if (total == 0) throw_invalid("run: data '" + o.data + "' holds no samples");
  // A model that fixes its batch runs at any other too (resolve frees it); its own is the
  // default.
  const int64_t batch = o.batch > 0 ? o.batch : runtime::fixed_batch(*loaded).value_or(32);
  if (o.transform && total % static_cast<size_t>(batch) != 0) {
    left_out = total % static_cast<size_t>(batch);  // the fused graph runs whole batches only
    total -= left_out;
    if (total == 0) throw_invalid("run: fewer samples than --batch for the transformed graph");
  }
  // The weights are freed as the kernels bring them into their own forms (packed panels,
  // Winograd filters) unless a smaller last batch needs a second plan made from them.
  so.executor.release_prepared_constants = runtime::one_batch_shape(total, batch);
  // Where -o joins the batches: found on the model before its session releases its weights.
  std::vector<std::optional<int>> out_axes(loaded->outputs().size());
  if (!out_files.empty() && total > static_cast<size_t>(batch)) {
    out_axes = runtime::output_batch_axes(*loaded);
  }
  runtime::Session session(std::move(loaded), so);

  const graph::Graph& model = session.graph();
  // Kept only with -o: each output of each batch, in its dtype (float32, or the int64 of an
  // ArgMax), joined at the end along the axis that carries the batch (a sequence model's
  // [T, N, C] along axis 1; axis 0 where the batch cannot be followed).
  std::vector<std::vector<kernels::Tensor>> pieces(model.outputs().size());
  size_t correct = 0;
  std::string not_a_classifier;  // the first output's description when it is not [N, classes]
  double forward_seconds = 0;
  int64_t warmups_left = o.warmup;
  size_t arena_bytes = 0;  // the largest activation arena of the plans compiled
  io::Progress progress("run", total, "img");
  auto wall0 = std::chrono::steady_clock::now();
  for (size_t begin = 0; begin < total; begin += static_cast<size_t>(batch)) {
    size_t count = std::min(static_cast<size_t>(batch), total - begin);
    const std::vector<kernels::Tensor> batch_inputs = data.load_inputs(begin, count);
    std::vector<graph::Shape> shapes;
    for (const kernels::Tensor& input : batch_inputs) shapes.push_back(input.shape());
    // Compilation (first use of a shape) and warm-up passes stay out of the timed region.
    runtime::Executor& executor = session.executor_for(shapes);
    arena_bytes = std::max(arena_bytes, executor.arena_bytes());
    if (warmups_left > 0) {
      for (; warmups_left > 0; --warmups_left) executor.run(batch_inputs);
      executor.reset_profile();
    }
    auto t0 = std::chrono::steady_clock::now();
    auto outputs = executor.run(batch_inputs);
    forward_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (data.labelled() && not_a_classifier.empty()) {
      const kernels::Tensor& logits = outputs[0];
      if (!quant::classifier_output(logits)) {
        // Class folders read by a model that does not classify (a detector, a segmenter): the
        // images run, and the top-1 line says why it is not given.
        not_a_classifier = logits.describe();
      } else {
        correct += quant::top1_correct("run", logits, data.labels(begin, count));
      }
    }
    if (!out_files.empty()) {
      for (size_t k = 0; k < outputs.size(); ++k) {
        const kernels::DType dtype = outputs[k].dtype();
        if (dtype != kernels::DType::kFloat32 && dtype != kernels::DType::kInt64) {
          throw_unsupported("run: -o writes float32 and int64 outputs, output " +
                            std::to_string(k) + " is " + outputs[k].describe());
        }
        if (outputs[k].rank() == 0) {
          throw_unsupported("run: -o stacks outputs along their batch axis, output " +
                            std::to_string(k) + " is a scalar");
        }
        pieces[k].push_back(outputs[k].clone());
      }
    }
    progress.advance(count);
  }
  progress.finish();
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();

  std::printf("model      %s%s%s%s\n", o.model.c_str(), transformed_note.empty() ? "" : " (",
              transformed_note.c_str(), transformed_note.empty() ? "" : ")");
  std::string left_out_note;
  if (left_out > 0) {
    left_out_note =
        "; the last " + std::to_string(left_out) + " samples do not fill a batch and were left out";
  }
  std::printf("data       %s (%zu samples, batch %lld, %d threads%s)\n", o.data.c_str(), total,
              static_cast<long long>(batch), runtime::num_threads(), left_out_note.c_str());
  std::printf("throughput %.1f images/s (forward %.3f s, %.3f ms/batch; wall %.3f s)\n",
              total / forward_seconds, forward_seconds,
              1e3 * forward_seconds / static_cast<double>((total + batch - 1) / batch), wall);
  constexpr double kMiB = 1 << 20;
  std::printf("memory     peak resident %.1f MiB (activation arena %.1f MiB)\n",
              io::peak_resident_bytes() / kMiB, arena_bytes / kMiB);
  if (data.labelled() && not_a_classifier.empty()) {
    std::printf("top-1      %.2f%% (%zu/%zu)\n", 100.0 * correct / total, correct, total);
  } else if (data.labelled()) {
    std::printf("top-1      not computed: the first output is %s, not [N, classes] float\n",
                not_a_classifier.c_str());
  }
  if (o.profile) {
    std::printf("profile    time per op kind over all batches\n");
    double sum = 0;
    auto prof = session.profile();
    for (const auto& t : prof) sum += t.seconds;
    for (const auto& t : prof) {
      std::printf("  %-22s %9.3f ms  %5.1f%%  (%zu nodes)\n", t.op_type.c_str(), 1e3 * t.seconds,
                  sum > 0 ? 100.0 * t.seconds / sum : 0.0, t.calls);
    }
  }
  if (o.profile_nodes > 0) {
    auto prof = session.profile(/*per_node=*/true);
    double sum = 0;
    for (const auto& t : prof) sum += t.seconds;
    const size_t shown = std::min(prof.size(), static_cast<size_t>(o.profile_nodes));
    std::printf("slowest    %zu of %zu nodes, time over all batches\n", shown, prof.size());
    for (size_t i = 0; i < shown; ++i) {
      const auto& t = prof[i];
      std::printf("  %9.3f ms  %5.1f%%  %-18s %s -> %s\n", 1e3 * t.seconds,
                  sum > 0 ? 100.0 * t.seconds / sum : 0.0, t.op_type.c_str(), t.node.c_str(),
                  t.shape.c_str());
    }
  }
  if (!out_files.empty()) {
    for (size_t k = 0; k < pieces.size(); ++k) {
      out_files[k]->write(io::encode_npy(join_along(pieces[k], out_axes[k].value_or(0))));
    }
    std::vector<io::AtomicFile*> files;
    for (auto& file : out_files) files.push_back(file.get());
    io::commit_together(files);
    std::printf("outputs    written to %s\n", o.output.c_str());
  }
  return 0;
}

}  // namespace

CommandRunner add_run_command(CLI::App& app) {
  auto opts = std::make_shared<RunOptions>();
  auto* cmd = app.add_subcommand("run", "Run a model over an image folder or an .npy batch");
  cmd->add_option("model", opts->model, "ONNX model file")->required()->check(file_path());
  cmd->add_option("--data", opts->data, kDataFormats)->required();
  add_input_shape_option(*cmd, opts->input_shape, &opts->preprocess);
  cmd->add_option("-o,--output", opts->output,
                  "write all outputs (float32 or int64) to this .npy file (more: FILE.1.npy, ...), "
                  "the batches joined along each output's batch axis (axis 1 of a sequence "
                  "model's [T, N, C])")
      ->check(file_path());
  cmd->add_option("--batch", opts->batch,
                  "images per forward pass (default 32, or the model's fixed batch)")
      ->check(integer_at_least(1));
  cmd->add_option("--threads", opts->threads, "worker threads (default: all cores)")
      ->check(integer_at_least(0, INT_MAX));
  cmd->add_option("--limit", opts->limit, "use at most this many samples")
      ->check(integer_at_least(1));
  cmd->add_flag("--profile", opts->profile, "print the time spent per op kind");
  cmd->add_option("--profile-nodes", opts->profile_nodes,
                  "print the N slowest nodes: time, op kind, name and output shape")
      ->check(integer_at_least(1));
  cmd->add_flag("--transform", opts->transform,
                "run the transformed graph (conversions and fusions into modules, as `qforge "
                "transform` plans them) at --batch, whole batches only");
  cmd->add_option("--warmup", opts->warmup, "untimed passes over the first batch before timing")
      ->check(integer_at_least(0));
  add_preprocess_flags(*cmd, opts->preprocess);
  return [opts] { return run_run(*opts); };
}

}  // namespace qforge::cli
