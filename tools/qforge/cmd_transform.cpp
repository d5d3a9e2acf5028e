// `qforge transform`: conversions, then the fusion plan (given or fresh), then every module
// lowered back to standard ONNX ops; the result is checked against the original model on a
// sample input and written only when it is equivalent.
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "graph/onnx_import.h"
#include "graph/transform.h"
#include "runtime/batch_dimension.h"
#include "runtime/executor.h"
#include "runtime/memory_budget.h"
#include "runtime/transform_pipeline.h"
#include "tools/io/atomic_file.h"
#include "tools/qforge/cli_checks.h"
#include "tools/qforge/commands.h"
#include "tools/qforge/data_source.h"
#include "tools/qforge/input_shape.h"
#include "tools/qforge/model_output.h"
#include "tools/qforge/report_output.h"

namespace qforge::cli {
namespace {

struct TransformCliOptions {
  std::string model;
  std::string plan;
  std::string output;
  std::string report;
  std::string data;
  int64_t batch = 1;
  PreprocessOverrides preprocess;
  InputShapeFlag input_shape;
  bool dynamic_batch = false;
  bool external_data = false;
};

constexpr uint64_t kSampleSeed = 0;

graph::Plan read_plan(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_io("transform: cannot read plan '" + path + "'");
  std::ostringstream text;
  text << in.rdbuf();
  try {
    return graph::Plan::from_json(text.str());
  } catch (const Error& e) {
    std::string message = "transform: plan '";
    message.append(path).append("': ").append(e.what());
    throw Error(e.kind(), message);
  }
}

// The sample both models run on: every whole batch of --data, or one seeded random batch.
std::vector<std::vector<kernels::Tensor>> sample_batches(const TransformCliOptions& o,
                                                         const graph::Graph& model,
                                                         std::string& description) {
  std::vector<std::vector<kernels::Tensor>> batches;
  if (o.data.empty()) {
    batches.push_back(runtime::random_normal_inputs(model, o.batch, kSampleSeed));
    description = "random normal batch of ";
    description.append(std::to_string(o.batch))
        .append(", seed ")
        .append(std::to_string(kSampleSeed));
    return batches;
  }
  DataSource data = DataSource::open(o.data, model, o.preprocess);
  const auto batch = static_cast<size_t>(o.batch);
  const size_t whole = data.size() - data.size() % batch;  // the graph is resolved at one batch
  if (whole == 0) {
    throw_invalid("transform: data '" + o.data + "' holds " + std::to_string(data.size()) +
                  " samples, fewer than --batch " + std::to_string(o.batch));
  }
  for (size_t begin = 0; begin < whole; begin += batch) {
    batches.push_back(data.load_inputs(begin, batch));
  }
  description = o.data;
  description.append(" (")
      .append(std::to_string(whole))
      .append(" samples, batch ")
      .append(std::to_string(o.batch))
      .append(")");
  return batches;
}

nlohmann::json counts_json(const graph::PlanReport& report) {
  nlohmann::json out = nlohmann::json::array();
  for (const graph::PatternCount& c : report.patterns) {
    out.push_back({{"pattern", c.pattern}, {"applied", c.applied}, {"skipped", c.skipped}});
  }
  return out;
}

int run_transform(TransformCliOptions o) {
  // Check and open the outputs first: an output that would overwrite an input or the other
  // output, or an unwritable path, fails before any work. Nothing is at their paths unless the
  // check passes and they are committed.
  std::vector<io::NamedPath> outputs = ModelOutput::paths(o.output, o.external_data);
  if (!o.report.empty()) outputs.push_back({"--report", o.report});
  const io::NamedPath inputs[] = {{"model", o.model}, {"--plan", o.plan}, {"--data", o.data}};
  io::check_output_paths("transform", outputs, inputs);
  ModelOutput out_file(o.output, o.external_data);
  std::unique_ptr<io::AtomicFile> report_file;
  if (!o.report.empty()) report_file = std::make_unique<io::AtomicFile>(o.report);

  std::unique_ptr<graph::Graph> model = load_model_to_run(o.model, o.input_shape, o.data);
  o.batch = batch_for(*model, o.batch);
  runtime::check_batch_export(*model, {.dynamic_batch = o.dynamic_batch});  // before any work
  std::optional<graph::Plan> plan;
  if (!o.plan.empty()) plan = read_plan(o.plan);
  runtime::TransformOptions options;
  options.batch = o.batch;
  if (plan) options.plan_source = "plan '" + o.plan + "'";
  runtime::TransformResult r = runtime::transform_model(*model, plan ? &*plan : nullptr, options);
  // A --batch too large for the machine is refused before the sample batch is made. The check
  // runs the model and its transformed form side by side on the sample.
  runtime::PlanMemory need = runtime::estimate_plan_memory(*r.graph);
  need.arena_bytes = 2 * need.arena_bytes + runtime::input_bytes(*r.graph);
  need.weight_bytes *= 2;
  runtime::check_memory_budget("transform", need);
  std::string sample;
  const auto batches = sample_batches(o, *model, sample);
  const runtime::BatchExportOptions batch_options{.dynamic_batch = o.dynamic_batch};
  runtime::CheckedExport exported =
      runtime::lower_and_check(*model, *r.graph, batches, runtime::kEquivalenceTolerance,
                               batch_options, out_file.data_name());
  const runtime::EquivalenceFigures& f = exported.figures;

  std::printf("model        %s (batch %lld, opset %lld)\n", o.model.c_str(),
              static_cast<long long>(o.batch), static_cast<long long>(model->opset));
  std::printf("conversions  %zu applied in %zu rounds\n", r.conversions.applied(),
              r.conversions.iterations);
  print_indented(r.conversions.to_text());
  std::printf("fusions      %zu applied, %zu skipped (%s)\n", r.fusions.applied(),
              r.fusions.skipped(), plan ? o.plan.c_str() : "fresh plan");
  print_indented(r.fusions.to_text());
  for (const std::string& d : r.fusions.deferred) std::printf("  deferred: %s\n", d.c_str());
  const auto modules = runtime::count_modules(*r.graph);
  std::string module_list;
  for (const auto& [kind, count] : modules) {
    module_list.append(module_list.empty() ? "" : ", ").append(kind).append(" ");
    module_list.append(std::to_string(count));
  }
  std::printf("modules      %s\n", module_list.empty() ? "none" : module_list.c_str());
  std::printf("lowered      %zu modules to standard ONNX ops\n", exported.lowered_modules);
  std::printf("sample       %s\n", sample.c_str());
  std::printf("max |Δ|      %.6g (%s vs the original, %zu elements)\n", f.max_abs_diff,
              exported.checked.c_str(), f.elements);
  std::printf("rel. max |Δ| %.6g (max |Δ| / max(1, max |ref| = %.6g); tolerance %g)\n", f.relative,
              f.max_abs_reference, runtime::kEquivalenceTolerance);
  if (f.nonfinite_mismatches > 0) {
    std::printf("non-finite   %zu elements finite in one model only\n", f.nonfinite_mismatches);
  }
  if (f.integer_mismatches > 0) {
    std::printf("integers     %zu elements of integer outputs differ\n", f.integer_mismatches);
  }
  if (!f.equivalent) {
    char figures[200];
    std::snprintf(figures, sizeof figures,
                  "relative max |Δ| %.6g, max |Δ| %.6g, %zu non-finite mismatches, %zu integer "
                  "mismatches",
                  f.relative, f.max_abs_diff, f.nonfinite_mismatches, f.integer_mismatches);
    std::string message = "transform: the ";
    message.append(exported.checked)
        .append(" is not equivalent to '")
        .append(o.model)
        .append("' (")
        .append(figures)
        .append("; tolerance 1e-05); nothing written");
    throw_internal(message);
  }
  std::printf("verdict      equivalent\n");

  if (!exported.external_data_bytes.empty()) {
    out_file.data_sink()(exported.external_data_bytes.data(), exported.external_data_bytes.size());
  }
  out_file.model_sink()(exported.onnx_bytes.data(), exported.onnx_bytes.size());
  if (report_file) {
    nlohmann::json report{{"model", o.model},
                          {"output", o.output},
                          {"batch", o.batch},
                          {"plan_source", plan ? o.plan : std::string("fresh")},
                          {"conversions", counts_json(r.conversions)},
                          {"fusions", counts_json(r.fusions)},
                          {"deferred", r.fusions.deferred},
                          {"lowered_modules", exported.lowered_modules},
                          {"modules", modules},
                          {"plan", nlohmann::json::parse(r.plan.to_json())},
                          {"equivalence",
                           {{"sample", sample},
                            {"checked", exported.checked},
                            {"elements", f.elements},
                            {"max_abs_diff", f.max_abs_diff},
                            {"max_abs_reference", f.max_abs_reference},
                            {"relative_max_abs_diff", f.relative},
                            {"nonfinite_mismatches", f.nonfinite_mismatches},
                            {"integer_mismatches", f.integer_mismatches},
                            {"tolerance", runtime::kEquivalenceTolerance},
                            {"equivalent", f.equivalent}}}};
    report_file->write(report.dump(2));
    report_file->write("\n");
  }
  out_file.commit_with({report_file.get()});
  std::printf("written      %s (%s, %s)\n", o.output.c_str(),
              runtime::written_batch_text(*model, batch_options).c_str(),
              out_file.size_text(exported.onnx_bytes.size()).c_str());
  if (report_file) std::printf("%-12s written to %s\n", "report", o.report.c_str());
  return 0;
}

}  // namespace

CommandRunner add_transform_command(CLI::App& app) {
  auto opts = std::make_shared<TransformCliOptions>();
  auto* cmd = app.add_subcommand(
      "transform",
      "Apply conversions and fusions, lower the modules back to standard ONNX ops and write the "
      "model once it is checked equivalent to the original. The written model keeps the batch "
      "the model declares (symbolic stays symbolic, fixed stays at the model's own size), its "
      "other dimensions resolved");
  cmd->add_option("model", opts->model, "ONNX model file")->required()->check(file_path());
  cmd->add_option("-o,--output", opts->output, "transformed ONNX model to write")
      ->required()
      ->check(file_path());
  cmd->add_option("--plan", opts->plan,
                  "fusion plan JSON from 'qforge plan -o' at the same --batch (default: a fresh "
                  "plan)");
  cmd->add_option("--report", opts->report,
                  "write a JSON report: counts per pattern, the plan and the equivalence figures")
      ->check(file_path());
  cmd->add_option("--batch", opts->batch,
                  "batch the model is resolved and checked at (default 1), whatever batch it "
                  "fixes; the written model keeps the model's own")
      ->check(integer_at_least(1));
  cmd->add_flag("--dynamic-batch", opts->dynamic_batch,
                "write a batch the model fixes as a symbolic one ('batch'), for TensorRT "
                "optimisation profiles");
  add_external_data_flag(*cmd, opts->external_data);
  cmd->add_option("--data", opts->data,
                  std::string("data to check equivalence on, in whole batches: ") + kDataFormats +
                      " (default: one seeded random normal batch)");
  add_preprocess_flags(*cmd, opts->preprocess);
  add_input_shape_option(*cmd, opts->input_shape, &opts->preprocess);
  return [opts] { return run_transform(*opts); };
}

}  // namespace qforge::cli
