// `qforge plan`: resolves a model at one batch, runs the conversions to a fixed point and prints
// the fusion plan over the converted graph (one line per match, counts per pattern), optionally
// saving it as JSON to edit and pass to `qforge transform --plan`.
#include <cstdio>
#include <memory>

#include "graph/onnx_import.h"
#include "graph/transform.h"
#include "runtime/transform_pipeline.h"
#include "tools/io/atomic_file.h"
#include "tools/qforge/cli_checks.h"
#include "tools/qforge/commands.h"
#include "tools/qforge/input_shape.h"
#include "tools/qforge/report_output.h"

namespace qforge::cli {
namespace {

struct PlanOptions {
  std::string model;
  std::string output;
  int64_t batch = 1;
  InputShapeFlag input_shape;
};

int run_plan(const PlanOptions& o) {
  // Check and open the output first: an output that would overwrite the model, or an
  // unwritable path, fails before any work, and nothing partial is left.
  std::unique_ptr<io::AtomicFile> out_file;
  if (!o.output.empty()) {
    const io::NamedPath outputs[] = {{"-o", o.output}};
    const io::NamedPath inputs[] = {{"model", o.model}};
    io::check_output_paths("plan", outputs, inputs);
    out_file = std::make_unique<io::AtomicFile>(o.output);
  }

  std::unique_ptr<graph::Graph> model = load_model_to_run(o.model, o.input_shape, "");
  runtime::TransformOptions options;
  options.batch = o.batch;
  runtime::TransformResult r = runtime::plan_model(*model, options);
  const graph::PlanReport counts = runtime::count_plan(r.plan, graph::all_fusion_patterns());

  std::printf("model        %s (batch %lld)\n", o.model.c_str(), static_cast<long long>(o.batch));
  std::printf("conversions  %zu applied in %zu rounds\n", r.conversions.applied(),
              r.conversions.iterations);
  print_indented(r.conversions.to_text());
  std::printf("matches      %zu (node, pattern, apply, reason)\n", r.plan.entries.size());
  print_indented(r.plan.to_text());
  std::printf("fusions      %zu to apply, %zu skipped\n", counts.applied(), counts.skipped());
  print_indented(counts.to_text());
  if (out_file) {
    commit_text_file(*out_file, r.plan.to_json(), "plan", o.output);
  }
  return 0;
}

}  // namespace

CommandRunner add_plan_command(CLI::App& app) {
  auto opts = std::make_shared<PlanOptions>();
  auto* cmd = app.add_subcommand(
      "plan", "Show the fusion plan of a model after its conversions; optionally save it as JSON");
  cmd->add_option("model", opts->model, "ONNX model file")->required()->check(file_path());
  add_input_shape_option(*cmd, opts->input_shape);
  cmd->add_option("-o,--output", opts->output,
                  "write the plan as JSON (edit 'apply' to turn matches off, then pass it to "
                  "'qforge transform --plan')")
      ->check(file_path());
  cmd->add_option("--batch", opts->batch,
                  "batch the input shapes are resolved at (default 1); node names in the plan "
                  "are those of the model converted at this batch")
      ->check(integer_at_least(1));
  return [opts] { return run_plan(*opts); };
}

}  // namespace qforge::cli
