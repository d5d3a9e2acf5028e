// `qforge verify`: the teacher-forced check of a Q/DQ model against another runtime's values of
// its tensors (quant/verify.h). Prints a table per point, lists the differing elements, writes
// the same as JSON with --report and exits 1 when any element is a mismatch rather than a
// rounding flip. `--mark-outputs` writes the model with every tensor the check reads as a graph
// output, for runtimes that dump graph outputs (tools/ort_dump.js does it itself).
#include <climits>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "graph/onnx_import.h"
#include "quant/verify.h"
#include "runtime/threads.h"
#include "tools/io/atomic_file.h"
#include "tools/io/npz.h"
#include "tools/io/polygraphy_json.h"
#include "tools/qforge/cli_checks.h"
#include "tools/qforge/commands.h"
#include "tools/qforge/data_source.h"
#include "tools/qforge/input_shape.h"
#include "tools/qforge/report_output.h"

namespace qforge::cli {
namespace {

struct VerifyCommandOptions {
  std::string model;
  std::string reference;
  std::string data;
  std::string runner;
  std::string report;
  std::string mark_outputs;
  double tolerance = 1e-4;
  int64_t limit = 0;
  size_t list = 8;
  int threads = 0;
  PreprocessOverrides preprocess;
  InputShapeFlag input_shape;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_io("cannot read '" + path + "'");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool ends_with(const std::string& s, const char* suffix) {
  const std::string t(suffix);
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

// "[n, c, h, w]" of a flat index in `shape`.
std::string coordinates(int64_t index, const graph::Shape& shape) {
  std::vector<int64_t> c(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    c[d] = index % shape[d];
    index /= shape[d];
  }
  return kernels::shape_str(c);
}

std::string l2_text(const std::optional<double>& v) {
  if (!v) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", *v);
  return buf;
}

nlohmann::json report_json(const VerifyCommandOptions& o, const quant::VerifyResult& r,
                           const std::string& reference_text, size_t samples) {
  nlohmann::json points = nlohmann::json::array();
  for (const quant::PointCheck& p : r.points) {
    nlohmann::json listed = nlohmann::json::array();
    for (const quant::DifferingElement& e : p.listed) {
      listed.push_back({{"element", e.index},
                        {"kind", e.flip ? "flip" : "mismatch"},
                        {"qforge", e.qforge},
                        {"reference", e.reference},
                        {"steps", e.steps},
                        {"boundary_distance", e.boundary_distance}});
    }
    nlohmann::json pre = nullptr;
    if (p.pre_quant_relative_l2) pre = *p.pre_quant_relative_l2;
    points.push_back({{"node", p.node},
                      {"tensor", p.tensor},
                      {"integers", p.integers},
                      {"elements", p.elements},
                      {"flips", p.flips},
                      {"mismatches", p.mismatches},
                      {"max_step_difference", p.max_step_difference},
                      {"max_flip_distance", p.max_flip_distance},
                      {"pre_quant_relative_l2", pre},
                      {"plain_differing", p.plain_differing},
                      {"plain_max_step_difference", p.plain_max_step_difference},
                      {"listed", listed}});
  }
  nlohmann::json outputs = nlohmann::json::array();
  for (const quant::OutputCheck& out : r.outputs) {
    outputs.push_back({{"tensor", out.tensor},
                       {"plain_relative_l2", out.plain_relative_l2},
                       {"teacher_forced_relative_l2", out.teacher_forced_relative_l2}});
  }
  nlohmann::json first = nullptr;
  if (r.first_plain_difference) first = r.points[*r.first_plain_difference].node;
  return {{"model", o.model},
          {"reference", reference_text},
          {"data", o.data},
          {"samples", samples},
          {"flip_tolerance", o.tolerance},
          {"points", points},
          {"outputs", outputs},
          {"flips", r.flips},
          {"mismatches", r.mismatches},
          {"first_plain_difference", first},
          {"passed", r.passed()}};
}

int run_mark_outputs(const VerifyCommandOptions& o) {
  const std::string marked = quant::model_with_points_as_outputs(read_bytes(o.model), o.model);
  io::AtomicFile file(o.mark_outputs);
  file.write(marked);
  io::commit_together({&file});
  std::printf("written      %s (%s with every point's pre-quant and integer tensors as outputs)\n",
              o.mark_outputs.c_str(), o.model.c_str());
  return 0;
}

int run_verify(const VerifyCommandOptions& o) {
  set_threads_from_flag(o.threads);
  // An output that would overwrite an input or the other output fails before any work.
  std::vector<io::NamedPath> outputs;
  if (!o.report.empty()) outputs.push_back({"--report", o.report});
  if (!o.mark_outputs.empty()) outputs.push_back({"--mark-outputs", o.mark_outputs});
  const io::NamedPath inputs[] = {
      {"model", o.model}, {"--reference", o.reference}, {"--data", o.data}};
  io::check_output_paths("verify", outputs, inputs);
  if (!o.mark_outputs.empty()) return run_mark_outputs(o);
  if (o.reference.empty()) throw_invalid("verify: --reference is required (an .npz or a .json)");
  if (o.data.empty()) throw_invalid("verify: --data is required (the inputs the reference ran)");
  if (!(o.tolerance >= 0 && o.tolerance < 0.5)) {
    throw_invalid("verify: --tolerance: expected a number of steps in [0, 0.5), got " +
                  std::to_string(o.tolerance));
  }
  auto model = load_model_to_run(o.model, o.input_shape, o.data);

  quant::ReferenceValues reference;
  std::string reference_text = o.reference;
  if (ends_with(o.reference, ".json")) {
    io::PolygraphyOutputs run = io::read_polygraphy_outputs(o.reference, o.runner);
    reference = std::move(run.tensors);
    reference_text.append(" (Polygraphy runner '").append(run.runner).append("', iteration 1 of ");
    reference_text.append(std::to_string(run.iterations)).append(")");
  } else {
    if (!o.runner.empty()) throw_invalid("verify: --runner applies to Polygraphy JSON only");
    reference = io::read_npz(o.reference);
  }

  // The whole data is one batch: the reference ran it so.
  const DataSource data = DataSource::open(o.data, *model, o.preprocess);
  size_t total = data.size();
  if (o.limit > 0) total = std::min(total, static_cast<size_t>(o.limit));
  if (total == 0) throw_invalid("verify: data '" + o.data + "' holds no samples");
  const graph::Shape& declared = model->inputs()[0]->known_shape();
  if (!declared.empty() && declared[0] > 0) {
    const auto fixed = static_cast<size_t>(declared[0]);
    if (total < fixed) {
      throw_invalid("verify: model '" + o.model + "' has a fixed batch of " +
                    std::to_string(fixed) + ", got " + std::to_string(total) + " samples in '" +
                    o.data + "'");
    }
    total = fixed;
  }
  const std::vector<kernels::Tensor> batch = data.load_inputs(0, total);

  quant::VerifyOptions options;
  options.flip_tolerance = o.tolerance;
  options.listed_per_point = o.list;
  const quant::VerifyResult r = quant::verify_qdq(*model, batch, reference, options);

  std::printf("model        %s (%zu activation Q/DQ points)\n", o.model.c_str(), r.points.size());
  std::printf("reference    %s (%zu tensors)\n", reference_text.c_str(), reference.size());
  std::printf("data         %s (%zu samples, one batch, %d threads)\n", o.data.c_str(), total,
              runtime::num_threads());
  std::printf(
      "flip         a differing integer whose pre-quant x/scale lies within %g of a step "
      "of a .5 boundary\n",
      o.tolerance);
  std::printf(
      "\nteacher-forced, per point in node order: each segment recomputed from the "
      "reference's integers at its inputs\n");
  std::printf("  %10s %7s %10s %6s %12s | %11s %6s | %s -> %s\n", "elements", "flips", "mismatches",
              "max Δ", "pre-quant L2", "plain diff.", "max Δ", "node", "tensor");
  for (const quant::PointCheck& p : r.points) {
    std::printf("  %10lld %7lld %10lld %6lld %12s | %11lld %6lld | %s -> %s\n",
                static_cast<long long>(p.elements), static_cast<long long>(p.flips),
                static_cast<long long>(p.mismatches), static_cast<long long>(p.max_step_difference),
                l2_text(p.pre_quant_relative_l2).c_str(), static_cast<long long>(p.plain_differing),
                static_cast<long long>(p.plain_max_step_difference), p.node.c_str(),
                p.tensor.c_str());
  }
  std::printf(
      "  (max Δ in integer steps; pre-quant L2: relative L2 of qforge's pre-quant values "
      "to the reference's; plain: a forward pass from the inputs alone)\n");

  bool listed_any = false;
  for (const quant::PointCheck& p : r.points) {
    for (const quant::DifferingElement& e : p.listed) {
      if (!listed_any) std::printf("\ndiffering elements (up to %zu per point)\n", o.list);
      listed_any = true;
      const graph::Value* v = model->find_value(p.integers);
      const std::string at =
          v && v->has_shape() && kernels::shape_numel(v->known_shape()) == p.elements
              ? coordinates(e.index, v->known_shape())
              : "";
      std::printf(
          "  %-8s node '%s' element %lld %s: qforge %d, reference %d, x/scale %.7f, %.2g "
          "of a step from the .5 boundary\n",
          e.flip ? "flip" : "MISMATCH", p.node.c_str(), static_cast<long long>(e.index), at.c_str(),
          e.qforge, e.reference, e.steps, e.boundary_distance);
    }
  }

  std::printf("\nplain forward  ");
  if (r.first_plain_difference) {
    const quant::PointCheck& first = r.points[*r.first_plain_difference];
    size_t differing_points = 0;
    for (const quant::PointCheck& p : r.points) differing_points += p.plain_differing > 0;
    std::printf(
        "first difference at node '%s' (%lld elements); %zu of %zu points differ, the "
        "last by %lld elements\n",
        first.node.c_str(), static_cast<long long>(first.plain_differing), differing_points,
        r.points.size(),
        static_cast<long long>(r.points.empty() ? 0 : r.points.back().plain_differing));
  } else {
    std::printf("every point's integers equal the reference's\n");
  }
  for (const quant::OutputCheck& out : r.outputs) {
    std::printf("output       '%s': relative L2 to the reference %.3g plain, %.3g teacher-forced\n",
                out.tensor.c_str(), out.plain_relative_l2, out.teacher_forced_relative_l2);
  }

  if (!o.report.empty()) {
    io::AtomicFile file(o.report);
    commit_text_file(file, report_json(o, r, reference_text, total).dump(2), "report", o.report);
  }
  if (r.passed()) {
    std::printf("verdict      pass: no mismatch; %lld rounding flips\n",
                static_cast<long long>(r.flips));
    return 0;
  }
  size_t points_with = 0;
  const quant::PointCheck* first = nullptr;
  for (const quant::PointCheck& p : r.points) {
    if (p.mismatches == 0) continue;
    ++points_with;
    if (!first) first = &p;
  }
  std::printf(
      "verdict      FAIL: %lld mismatches at %zu points, the first at node '%s'; %lld "
      "rounding flips\n",
      static_cast<long long>(r.mismatches), points_with, first->node.c_str(),
      static_cast<long long>(r.flips));
  return 1;
}

}  // namespace

CommandRunner add_verify_command(CLI::App& app) {
  auto opts = std::make_shared<VerifyCommandOptions>();
  auto* cmd = app.add_subcommand(
      "verify",
      "Check a Q/DQ model point by point against another runtime's values of its tensors");
  cmd->footer(
      "Workflow:\n"
      "  1. Dump the reference runtime's values of every Q/DQ point on some inputs (.npy):\n"
      "       ONNX Runtime:  node tools/ort_dump.js model.qdq.onnx --data inputs.npy -o ref.npz\n"
      "                      (--optimization all|disabled; it marks the tensors itself)\n"
      "       Polygraphy:    polygraphy run model.qdq.onnx --trt --onnx-outputs mark all \\\n"
      "                        --load-inputs inputs.json --save-outputs ref.json\n"
      "       other:         qforge verify model.qdq.onnx --mark-outputs marked.onnx, run\n"
      "                      marked.onnx and save its outputs by name in an .npz\n"
      "  2. qforge verify model.qdq.onnx --reference ref.npz --data inputs.npy\n"
      "  3. Read the table: for every QuantizeLinear, qforge recomputes the segment that feeds\n"
      "     it from the reference's own integers at the segment's inputs (teacher forcing) and\n"
      "     compares integers. 'flips' are elements whose pre-quant x/scale lies within\n"
      "     --tolerance of a .5 boundary: float summation order decides their side, both\n"
      "     runtimes follow ONNX. 'mismatches' are real disagreements; the exit status is 1 when\n"
      "     there is any. 'plain diff.' counts elements that differ in a plain forward pass:\n"
      "     one flip early spreads to many later, which is why end-to-end bounds on deep\n"
      "     models cannot tell a correct runtime from a wrong one.\n"
      "  Runtimes whose kernels sum in another order leave flips farther from the boundary:\n"
      "  ONNX Runtime with its optimisations on (NCHWc convolutions) up to 4e-3 of a step on\n"
      "  the bundled models; check such a runtime with --tolerance 1e-2.");
  cmd->add_option("model", opts->model, "Q/DQ ONNX model")->required()->check(file_path());
  cmd->add_option("--reference", opts->reference,
                  "the other runtime's tensor values by name: .npz (tools/ort_dump.js, "
                  "np.savez) or Polygraphy --save-outputs .json");
  cmd->add_option("--data", opts->data,
                  std::string("the inputs the reference ran, as one batch: ") + kDataFormats);
  add_preprocess_flags(*cmd, opts->preprocess);
  add_input_shape_option(*cmd, opts->input_shape, &opts->preprocess);
  cmd->add_option("--runner", opts->runner,
                  "Polygraphy runner to read (default: the first in the file)");
  cmd->add_option("--tolerance", opts->tolerance,
                  "flip tolerance: distance of x/scale from a .5 boundary, in steps "
                  "(default 1e-4)");
  cmd->add_option("--limit", opts->limit, "use the first N samples")->check(integer_at_least(1));
  cmd->add_option("--list", opts->list, "differing elements listed per point (default 8)");
  cmd->add_option("--report", opts->report, "write the table and listed elements as JSON")
      ->check(file_path());
  cmd->add_option("--mark-outputs", opts->mark_outputs,
                  "write the model with every point's pre-quant and integer tensors as graph "
                  "outputs to this file, and stop")
      ->check(file_path());
  cmd->add_option("--threads", opts->threads, "worker threads (default: all cores)")
      ->check(integer_at_least(0, INT_MAX));
  return [opts] { return run_verify(*opts); };
}

}  // namespace qforge::cli
