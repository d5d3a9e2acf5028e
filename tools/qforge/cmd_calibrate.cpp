// `qforge calibrate`: the options, the printed figures and the report over the quantization
// pipeline (quant/calibrate_pipeline.h, quant/evaluation.h): transform at a fixed batch, place
// Q/DQ points, stream calibration batches through the fused graph, pick each point's amax with the
// chosen calibrator and write the Q/DQ ONNX model; then measure the Q/DQ model against the float
// model (SQNR, cosine, top-1).
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "graph/onnx_import.h"
#include "quant/calibrate_pipeline.h"
#include "quant/calibration.h"
#include "quant/evaluation.h"
#include "quant/int8.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "quant/sensitivity.h"
#include "quant/smoothquant.h"
#include "runtime/batch_dimension.h"
#include "runtime/communicator.h"
#include "runtime/threads.h"
#include "tools/io/atomic_file.h"
#include "tools/io/resource_usage.h"
#include "tools/qforge/cli_checks.h"
#include "tools/qforge/commands.h"
#include "tools/qforge/data_source.h"
#include "tools/qforge/input_shape.h"
#include "tools/qforge/model_output.h"
#include "tools/qforge/pipeline_adapters.h"
#include "tools/qforge/report_output.h"

namespace qforge::cli {
namespace {

struct CalibrateOptions {
  std::string model;
  std::string data;
  std::string output;
  // mse: on the bundled models (digits data) it gave the highest output SQNR of the four
  // calibrators for every family, 0.5 to 2.3 dB above max with the same top-1.
  std::string method = "mse";
  double percentile = 99.99;
  std::vector<std::string> skip;
  int64_t limit = 0;
  int64_t batch = 32;
  int threads = 0;
  std::string report;
  std::string val;
  bool int8_weights = false;
  bool external_data = false;
  bool dynamic_batch = false;
  bool per_tensor_weights = false;
  std::optional<double> smoothquant;  // alpha, when --smoothquant is given
  // Rounding flips injected into the written model (on the first evaluation batch) to measure
  // the output change one flip causes; 0 skips the measurement.
  int64_t flip_injections = 32;
  // Samples of the evaluation data for the skip sensitivity of every module, when
  // --sensitivity is given.
  std::optional<int64_t> sensitivity;
  // Targets the model must reach against the float model on the sensitivity samples; modules
  // are kept float, the costliest first, until it does.
  std::optional<double> target_sqnr;  // dB, at least
  std::optional<double> target_kl;    // nats, at most
  PreprocessOverrides preprocess;     // for --data and --val
  InputShapeFlag input_shape;
};

// Seed of the flip injections: the figure is reproducible run to run.
constexpr uint64_t kFlipSeed = 0;

// JSON has no infinity: an exact match (SQNR +inf) is written as null.
nlohmann::json finite_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

// Sensitivity samples when --sensitivity gives none.
constexpr int64_t kSensitivitySamples = 64;

bool target_set(const CalibrateOptions& o) {
  return o.target_sqnr || o.target_kl;
}

bool meets_target(const CalibrateOptions& o, const quant::Evaluation& e) {
  if (o.target_sqnr && !(e.figures.sqnr_db >= *o.target_sqnr)) return false;
  if (o.target_kl && !(e.kl_divergence && *e.kl_divergence <= *o.target_kl)) return false;
  return true;
}

std::string format_figure(const char* format, double v) {
  char text[64];
  std::snprintf(text, sizeof text, format, v);
  return text;
}

// "output SQNR >= 30 dB and KL to float <= 0.001 nats"
std::string target_text(const CalibrateOptions& o) {
  std::string out;
  if (o.target_sqnr) out = format_figure("output SQNR >= %g dB", *o.target_sqnr);
  if (o.target_kl) {
    if (!out.empty()) out += " and ";
    out += format_figure("KL to float <= %g nats", *o.target_kl);
  }
  return out;
}

// "31.27 dB, KL 0.00049 nats"
std::string figures_text(const quant::Evaluation& e) {
  std::string out = format_figure("%.2f dB", e.figures.sqnr_db);
  if (e.kl_divergence) out += format_figure(", KL %.3g nats", *e.kl_divergence);
  return out;
}

// The modules best first: the lowest KL to float when the output is a classifier's (and not
// by_sqnr), else the highest output SQNR; a figure that is not a number last, ties in graph
// order.
std::vector<const quant::SkipSensitivity*> best_first(const quant::SensitivityAnalysis& a,
                                                      bool by_sqnr = false) {
  const bool by_kl = !by_sqnr && a.all_quantized.kl_divergence.has_value();
  // Lower is better.
  auto cost = [by_kl](const quant::Evaluation& e) {
    const double v = by_kl ? *e.kl_divergence : -e.figures.sqnr_db;
    return std::isnan(v) ? std::numeric_limits<double>::infinity() : v;
  };
  std::vector<const quant::SkipSensitivity*> order;
  for (const quant::SkipSensitivity& m : a.modules) order.push_back(&m);
  std::stable_sort(order.begin(), order.end(), [&cost](const auto* x, const auto* y) {
    return cost(x->evaluation) < cost(y->evaluation);
  });
  return order;
}

// What skipping a module removes, as "2 act, 1 weight, 1 softmax".
std::string removed_points(const quant::SkipSensitivity& m) {
  std::string out;
  auto add = [&](size_t n, const char* what) {
    if (n == 0) return;
    if (!out.empty()) out += ", ";
    out += std::to_string(n) + " " + what;
  };
  add(m.activation_points, "act");
  add(m.weight_quantizers, "weight");
  add(m.softmax_quantizers, "softmax");
  // Its inputs read the float tensors, whose points stay for the other modules that read them.
  return out.empty() ? "none (reads float)" : out;
}

void print_sensitivity(const quant::SensitivityAnalysis& a, const std::string& data) {
  const quant::Evaluation& all = a.all_quantized;
  const bool kl = all.kl_divergence.has_value();
  std::printf(
      "\nsensitivity  each of %zu quantized modules kept float in turn (as --skip NAME would "
      "write it, same scales), against the float model on %zu samples of %s; best first\n",
      a.modules.size(), all.samples, data.c_str());
  std::printf("  all quantized: output SQNR %.2f dB", all.figures.sqnr_db);
  if (kl) std::printf(", KL to float %.3g nats", *all.kl_divergence);
  if (all.figures.top1_agreement) {
    std::printf(", top-1 agreement %.2f%%", 100.0 * *all.figures.top1_agreement);
  }
  std::printf("\n  %9s %9s", "SQNR dB", "gain dB");
  if (kl) std::printf(" %10s %8s", "KL nats", "KL cut");
  if (all.figures.top1_agreement) std::printf(" %9s", "top-1 agr");
  std::printf(" | %-22s | %s\n", "points it removes", "module (kind)");
  for (const quant::SkipSensitivity* m : best_first(a)) {
    const quant::Evaluation& e = m->evaluation;
    std::printf("  %9.2f %+9.2f", e.figures.sqnr_db, e.figures.sqnr_db - all.figures.sqnr_db);
    if (kl) {
      // The share of the all-quantized model's KL that keeping this module float removes.
      const double cut =
          *all.kl_divergence > 0 ? 100.0 * (1.0 - *e.kl_divergence / *all.kl_divergence) : 0.0;
      std::printf(" %10.3g %7.1f%%", *e.kl_divergence, cut);
    }
    if (e.figures.top1_agreement) std::printf(" %8.2f%%", 100.0 * *e.figures.top1_agreement);
    std::printf(" | %-22s | %s (%s)\n", removed_points(*m).c_str(), m->module.c_str(),
                m->kind.c_str());
  }
}

// Each compared output's figures, of a model of several.
nlohmann::json outputs_json(const quant::Evaluation& e) {
  nlohmann::json outputs = nlohmann::json::array();
  for (const quant::OutputFigures& out : e.outputs) {
    outputs.push_back({{"name", out.name},
                       {"elements", out.figures.elements},
                       {"sqnr_db", finite_or_null(out.figures.sqnr_db)},
                       {"cosine", out.figures.cosine},
                       {"max_abs_diff", out.figures.max_abs_diff}});
  }
  return outputs;
}

nlohmann::json evaluation_figures_json(const quant::Evaluation& e) {
  nlohmann::json j{{"sqnr_db", finite_or_null(e.figures.sqnr_db)}, {"cosine", e.figures.cosine}};
  if (e.figures.top1_agreement) j["top1_agreement"] = *e.figures.top1_agreement;
  if (e.kl_divergence) j["kl_to_float"] = finite_or_null(*e.kl_divergence);
  if (e.labelled) j["int8_top1"] = percent(e.quantized_correct, e.samples) / 100.0;
  return j;
}

nlohmann::json sensitivity_json(const quant::SensitivityAnalysis& a, const std::string& data) {
  nlohmann::json modules = nlohmann::json::array();
  for (const quant::SkipSensitivity* m : best_first(a)) {
    nlohmann::json j = evaluation_figures_json(m->evaluation);
    j["module"] = m->module;
    j["kind"] = m->kind;
    j["removes"] = {{"activation_points", m->activation_points},
                    {"weight_quantizers", m->weight_quantizers},
                    {"softmax_quantizers", m->softmax_quantizers}};
    modules.push_back(std::move(j));
  }
  return {{"data", data},
          {"samples", a.all_quantized.samples},
          {"all_quantized", evaluation_figures_json(a.all_quantized)},
          {"modules_best_first", modules}};
}

int run_calibrate(CalibrateOptions o) {
  set_threads_from_flag(o.threads);
  const auto method = quant::calibrator_from_name(o.method);
  if (!method) {
    throw_invalid("calibrate: unknown --method '" + o.method +
                  "' (expected max, percentile, entropy or mse)");
  }
  if (!(o.percentile > 0 && o.percentile <= 100)) {
    char value[32];
    std::snprintf(value, sizeof value, "%g", o.percentile);
    std::string message = "calibrate: --percentile must be in (0, 100], got ";
    throw_invalid(message.append(value));
  }
  if (o.smoothquant && !(*o.smoothquant >= 0 && *o.smoothquant <= 1)) {
    char value[32];
    std::snprintf(value, sizeof value, "%g", *o.smoothquant);
    std::string message = "calibrate: --smoothquant alpha must be in [0, 1], got ";
    throw_invalid(message.append(value));
  }
  if (o.target_sqnr && !std::isfinite(*o.target_sqnr)) {
    throw_invalid("calibrate: --target-sqnr must be a finite number of dB");
  }
  if (o.target_kl && !(std::isfinite(*o.target_kl) && *o.target_kl > 0)) {
    throw_invalid("calibrate: --target-kl must be a positive number of nats, got " +
                  format_figure("%g", *o.target_kl));
  }
  if (o.sensitivity && *o.sensitivity < 1) {
    throw_invalid("calibrate: --sensitivity must be at least 1 sample, got " +
                  std::to_string(*o.sensitivity));
  }
  // Check and open the outputs first: an output that would overwrite an input or the other
  // output, or an unwritable path, fails before any work, and nothing partial is left when a
  // later step fails. On several ranks, rank 0 writes the outputs and every rank reads its share
  // of the data; a failure here on any rank stops every rank.
  runtime::Communicator& comm = processes();
  std::unique_ptr<ModelOutput> out_file;
  std::unique_ptr<io::AtomicFile> report_file;
  std::unique_ptr<graph::Graph> model;
  std::string written_batch;
  std::optional<DataSource> data_source;
  std::optional<DataSource> val;
  size_t total = 0;
  runtime::collectively(comm, [&] {
    std::vector<io::NamedPath> outputs = ModelOutput::paths(o.output, o.external_data);
    if (!o.report.empty()) outputs.push_back({"--report", o.report});
    const io::NamedPath inputs[] = {{"model", o.model}, {"--data", o.data}, {"--val", o.val}};
    io::check_output_paths("calibrate", outputs, inputs);
    if (comm.is_root()) {
      out_file = std::make_unique<ModelOutput>(o.output, o.external_data);
      if (!o.report.empty()) report_file = std::make_unique<io::AtomicFile>(o.report);
    }
    model = load_model_to_run(o.model, o.input_shape, o.data);
    o.batch = batch_for(*model, o.batch);
    if (o.target_kl && !model->outputs().empty() && model->outputs()[0]->has_shape() &&
        model->outputs()[0]->shape()->size() != 2) {
      throw_invalid("calibrate: --target-kl needs a [N, classes] model output; '" + o.model +
                    "' output 0 has rank " + std::to_string(model->outputs()[0]->shape()->size()));
    }
    const auto float_outputs =
        std::count_if(model->outputs().begin(), model->outputs().end(),
                      [](const graph::Value* v) { return v->dtype() == kernels::DType::kFloat32; });
    if (o.target_kl && float_outputs > 1) {
      throw_invalid("calibrate: --target-kl needs a classifier's one [N, classes] output; '" +
                    o.model + "' has " + std::to_string(float_outputs) +
                    " float outputs (give --target-sqnr, which reads the lowest of their SQNRs)");
    }
    runtime::check_batch_export(*model, {.dynamic_batch = o.dynamic_batch});  // before any work
    written_batch = runtime::written_batch_text(*model, {.dynamic_batch = o.dynamic_batch});
    data_source.emplace(DataSource::open(o.data, *model, o.preprocess));
    total = quant::spread_indices(data_source->size(), o.limit).size();
    if (total == 0) throw_invalid("calibrate: data '" + o.data + "' holds no samples");
    if (!o.val.empty() && comm.is_root()) {
      val.emplace(DataSource::open(o.val, *model, o.preprocess));
      if (val->size() == 0) throw_invalid("calibrate: --val data '" + o.val + "' holds no samples");
    }
  });
  const DataSource& data = *data_source;

  quant::CalibrationSetup setup;
  setup.model_name = o.model;
  setup.batch = o.batch;
  setup.limit = o.limit;
  setup.method = *method;
  setup.percentile = o.percentile;
  setup.skip = o.skip;
  setup.smoothquant_alpha = o.smoothquant;
  setup.per_tensor_weights = o.per_tensor_weights;
  const quant::ModelLoader reload =
      quant::model_file(o.model, import_options_for(o.input_shape, o.data));
  int64_t calibration_peak_bytes = 0;
  quant::PipelineHooks hooks;
  if (comm.is_root()) hooks.progress = progress_bars();
  hooks.calibration_pass_ended = [&] { calibration_peak_bytes = io::peak_resident_bytes(); };
  hooks.communicator = &comm;
  quant::CalibrationResult calibrated =
      quant::calibrate(std::move(model), reload, DataSamples(data), setup, hooks);
  // Every rank holds the merged statistics now; rank 0 alone writes, evaluates and reports.
  if (!comm.is_root()) return 0;
  const quant::QuantPlan& plan = calibrated.plan;
  const DataSource& eval = val ? *val : data;

  // Each quantized module kept float in turn, against the float model, on samples of the
  // evaluation data; with a target, modules kept float in that ranking's order, the costliest
  // first, until the model reaches it there: they join the skip list, and what follows is the
  // model with them float. The fused graph built for it is the one the export then lowers
  // (a skip changes the placement, not the graph).
  std::unique_ptr<graph::Graph> fused;
  std::optional<quant::SensitivityAnalysis> sensitivity;
  std::optional<quant::SkipSearch> search;
  if (o.sensitivity || target_set(o)) {
    quant::EvaluationSetup each;
    each.batch = o.batch;
    each.limit = o.sensitivity.value_or(kSensitivitySamples);
    each.quantized_label = "sensitivity";
    fused = quant::fused_graph_for_export(reload(), setup, calibrated);
    sensitivity = quant::skip_sensitivity(*fused, calibrated, setup, reload, DataSamples(eval),
                                          each, progress_bars());
    if (o.target_kl && !sensitivity->all_quantized.kl_divergence) {
      throw_invalid("calibrate: --target-kl needs a [N, classes] model output");
    }
    const auto reached = [&o](const quant::Evaluation& e) { return meets_target(o, e); };
    if (target_set(o) && !reached(sensitivity->all_quantized)) {
      // Never every module: a model with nothing quantized is not what calibrate is for.
      // Ranked by the figure the target names (KL when it names both).
      std::vector<std::string> order;
      const auto ranked = best_first(*sensitivity, !o.target_kl);
      for (const quant::SkipSensitivity* m : ranked) order.push_back(m->module);
      order.pop_back();
      each.quantized_label = "target";
      // The first model of the search, the costliest module alone float, was measured above.
      search = quant::skip_until(*fused, calibrated, setup, order, reached, reload,
                                 DataSamples(eval), each, progress_bars(), ranked[0]->evaluation);
      if (!search->reached) {
        throw_invalid("calibrate: " + target_text(o) + " not reached on " +
                      std::to_string(sensitivity->all_quantized.samples) +
                      " samples even with all but one of the " +
                      std::to_string(sensitivity->modules.size()) +
                      " quantized modules kept float (" + figures_text(search->evaluation) +
                      "); lower the target");
      }
      setup.skip.insert(setup.skip.end(), search->kept_float.begin(), search->kept_float.end());
      calibrated = quant::with_setup_skips(calibrated, *fused, setup);
    }
  }

  // The export: the model read and transformed again (unless the sensitivity pass already did),
  // smoothed the same way, lowered with the chosen scales. The bytes go to the output's
  // temporary file at once; it is renamed into place only after the evaluation.
  quant::QdqExportOptions export_options;
  export_options.int8_weights = o.int8_weights;
  export_options.batch.dynamic_batch = o.dynamic_batch;
  export_options.onnx.external_data = out_file->data_name();
  if (!fused) fused = quant::fused_graph_for_export(reload(), setup, calibrated);
  const quant::ExportedModel exported =
      quant::export_qdq_model(std::move(fused), plan, calibrated.amax, export_options,
                              out_file->model_sink(), out_file->data_sink());
  const quant::QdqCounts& counts = exported.counts;

  // Evaluate exactly what is written: the file, read back, against the float model, with the
  // float outputs spilled to a temporary file.
  quant::EvaluationSetup evaluation_setup;
  evaluation_setup.batch = o.batch;
  evaluation_setup.limit = val ? 0 : o.limit;
  evaluation_setup.flip_injections = o.flip_injections;
  evaluation_setup.flip_seed = kFlipSeed;
  const quant::Evaluation measured = quant::evaluate(
      reload,
      quant::model_file(out_file->read_path(),
                        out_file->read_back_options(import_options_for(o.input_shape, o.data))),
      DataSamples(eval), evaluation_setup, progress_bars(), spill_files());
  const runtime::ComparisonFigures& f = measured.figures;
  const std::optional<quant::FlipSensitivity>& flips = measured.flips;
  const size_t eval_total = measured.samples;
  const bool labelled = measured.labelled;
  const size_t float_correct = measured.reference_correct;
  const size_t int8_correct = measured.quantized_correct;
  const int64_t batches = calibrated.batches;
  const double smoothquant_seconds = calibrated.timing.smoothquant_s;
  const double calibration_seconds = calibrated.timing.calibration_s;
  // A rank whose share held no batch has no first batch.
  const double first_batch_seconds = std::max(0.0, calibrated.timing.first_batch_s);
  const double calibrators_seconds = calibrated.timing.calibrators_s;
  const std::optional<quant::SmoothQuantResult>& smoothing = calibrated.smoothing;
  const auto& weight_amax = calibrated.weight_amax;
  const size_t written_bytes = exported.bytes;

  const char* method_name = quant::calibrator_name(*method);
  std::printf("model        %s (transformed at batch %lld: %zu conversions, %zu fusions)\n",
              o.model.c_str(), static_cast<long long>(o.batch), calibrated.conversions,
              calibrated.fusions);
  std::string of_all;
  if (total < data.size()) {
    of_all.append(" of ").append(std::to_string(data.size())).append(", spread evenly");
  }
  std::string ranks;
  if (comm.size() > 1)
    ranks.append(" on each of ").append(std::to_string(comm.size())).append(" ranks");
  std::printf("calibration  %s (%zu samples%s in %lld batches of up to %lld, %d threads%s)\n",
              o.data.c_str(), total, of_all.c_str(), static_cast<long long>(batches),
              static_cast<long long>(o.batch), runtime::num_threads(), ranks.c_str());
  if (comm.size() > 1) {
    std::printf(
        "ranks        rank 0 waited %.3f s for the others; statistics exchanged in %.3f s "
        "(%.1f KiB from each rank)\n",
        calibrated.timing.waiting_s, calibrated.timing.communication_s,
        static_cast<double>(calibrated.timing.communicated_bytes) / 1024.0);
  }
  // All passes over the data count: SmoothQuant's statistics pass and the calibration pass.
  const double data_seconds = smoothquant_seconds + calibration_seconds;
  const double ms_per_batch = 1e3 * data_seconds / static_cast<double>(batches);
  // After the first batch, whose time includes building the execution plan (weights packed,
  // buffers touched for the first time).
  const double ms_per_later_batch =
      batches > 1
          ? 1e3 * (calibration_seconds - first_batch_seconds) / static_cast<double>(batches - 1)
          : 0.0;
  std::printf(
      "time         %.3f s over the data, %.1f ms per batch%s (first %.1f ms, then %.1f ms "
      "each)\n",
      data_seconds, ms_per_batch, smoothing ? " with the SmoothQuant pass" : "",
      1e3 * first_batch_seconds, ms_per_later_batch);
  // Peak resident memory when calibration ended, and over the whole run (the export and the
  // evaluation, which hold one model at a time, included).
  const int64_t run_peak_bytes = io::peak_resident_bytes();
  constexpr double kMiB = 1024.0 * 1024.0;
  std::printf(
      "             calibrators %.1f ms for %zu points x 4 methods; peak memory %.0f MiB "
      "(%.0f MiB with the export and evaluation)\n",
      1e3 * calibrators_seconds, plan.activations.size(),
      static_cast<double>(calibration_peak_bytes) / kMiB,
      static_cast<double>(run_peak_bytes) / kMiB);
  std::printf("method       %s", method_name);
  if (*method == quant::Calibrator::kPercentile) std::printf(" (%g%%)", o.percentile);
  std::printf("; scale = amax / 127, zero point 0\n");
  if (smoothing) print_smoothquant(*smoothing);
  std::printf("\nactivation Q/DQ points (%zu); amax by each calibrator, percentile at %g%%\n",
              plan.activations.size(), o.percentile);
  // Names vary in length: figures first so that their columns line up, names last.
  std::printf("  %-10s %10s %11s | %10s %10s %10s  %10s | %s -> %s\n", "method", "amax", "scale",
              "max", "percentile", "entropy", "mse", "module", "tensor");
  size_t fallbacks = 0;
  for (size_t i = 0; i < plan.activations.size(); ++i) {
    const quant::PointCalibration& r = calibrated.points[i];
    const double a = r.amax_by(*method);
    const bool fell_back = r.entropy_fell_back && *method == quant::Calibrator::kEntropy;
    fallbacks += r.entropy_fell_back;
    std::printf("  %-10s %10.5g %11.5g | %10.5g %10.5g %10.5g%s %10.5g | %s -> %s\n",
                fell_back ? "max*" : method_name, a,
                static_cast<double>(quant::scale_from_amax(static_cast<float>(a))), r.amax[0],
                r.amax[1], r.amax[2], r.entropy_fell_back ? "*" : " ", r.amax[3], r.module.c_str(),
                plan.activations[i].tensor.c_str());
  }
  if (fallbacks > 0) {
    std::printf(
        "  * entropy's threshold would clip more than %g%% of this point's values; it takes "
        "max instead\n",
        100 * quant::CalibrationStats::kEntropyMaxClipped);
  }
  std::printf("\nweight quantizers (%zu): %s, amax = max |w|%s%s\n", plan.weights.size(),
              o.per_tensor_weights ? "per tensor" : "per output channel",
              o.per_tensor_weights ? " over the whole weight" : "",
              o.int8_weights ? ", stored as int8" : "");
  std::printf("  %5s %9s %10s %10s %-10s | %s\n", "axis", "channels", "min amax", "max amax",
              "batch norm", "module");
  for (const quant::WeightPoint& w : plan.weights) {
    const std::vector<float>& a = weight_amax.at(w.node);
    const auto [lo, hi] = std::minmax_element(a.begin(), a.end());
    // Per tensor, one scale covers every channel: no axis.
    const std::string axis = w.per_channel ? std::to_string(w.axis) : "-";
    std::printf("  %5s %9zu %10.5g %10.5g %-10s | %s %s\n", axis.c_str(), a.size(),
                a.empty() ? 0.0 : static_cast<double>(*lo),
                a.empty() ? 0.0 : static_cast<double>(*hi), w.folds_batch_norm ? "folded" : "-",
                w.module.c_str(), w.node.c_str());
  }
  for (const quant::SoftmaxPoint& s : plan.softmax) {
    std::printf("  softmax %s: fixed scale %.6g\n", s.node.c_str(), static_cast<double>(s.scale));
  }
  for (const quant::FloatModule& m : plan.float_modules) {
    std::printf("  float %s %s: %s\n", m.module.c_str(), m.node.c_str(), m.reason.c_str());
  }

  const std::string eval_name = val ? o.val : o.data;
  // The evaluation's batch: --batch, or the number of samples when fewer.
  const auto eval_batch = static_cast<size_t>(
      std::max<int64_t>(1, std::min<int64_t>(o.batch, static_cast<int64_t>(eval_total))));
  std::printf("\nevaluation   %s (%zu sample%s, batch %zu%s)\n", eval_name.c_str(), eval_total,
              eval_total == 1 ? "" : "s", eval_batch,
              eval_total % eval_batch != 0 ? "; a partial last batch is padded" : "");
  if (measured.outputs.empty()) {
    std::printf("output SQNR  %.2f dB (Q/DQ model vs float model, %zu elements)\n", f.sqnr_db,
                f.elements);
  } else {
    std::printf("output SQNR  %.2f dB (Q/DQ model vs float model: the lowest of its %zu outputs)\n",
                f.sqnr_db, measured.outputs.size());
    int width = 0;
    for (const quant::OutputFigures& out : measured.outputs) {
      width = std::max(width, static_cast<int>(out.name.size()));
    }
    for (const quant::OutputFigures& out : measured.outputs) {
      std::printf("  %-*s %8.2f dB, cosine %.6f (%zu elements)\n", width, out.name.c_str(),
                  out.figures.sqnr_db, out.figures.cosine, out.figures.elements);
    }
  }
  std::printf("cosine       %.6f\n", f.cosine);
  if (f.top1_agreement) {
    std::printf("top-1 agree  %.2f%% (%zu/%zu rows with the same argmax)\n",
                100.0 * *f.top1_agreement, f.agreeing_rows, f.rows);
  }
  if (labelled) {
    std::printf("accuracy     float %.2f%% (%zu/%zu), int8 %.2f%% (%zu/%zu)\n",
                percent(float_correct, eval_total), float_correct, eval_total,
                percent(int8_correct, eval_total), int8_correct, eval_total);
  }
  if (measured.quantized_cross_entropy && measured.reference_cross_entropy) {
    std::printf("cross-ent.   float %.4f, int8 %.4f nats (mean over the labelled samples)\n",
                *measured.reference_cross_entropy, *measured.quantized_cross_entropy);
  }
  if (measured.kl_divergence) {
    std::printf("KL to float  %.5f nats (mean KL(float ‖ int8) of the softmax outputs)\n",
                *measured.kl_divergence);
  }
  if (f.nonfinite > 0) std::printf("non-finite   %zu output elements\n", f.nonfinite);
  if (flips) {
    std::printf(
        "one flip     moves a sample's output%s by %.3g (median), %.3g (90th percentile) "
        "relative L2: the rounding difference to expect from any other runtime (%lld injections "
        "at random elements of %lld points in %lld %s, seed %llu)\n",
        measured.outputs.size() > 1 ? " (the one it moves most)" : "", flips->median, flips->p90,
        static_cast<long long>(flips->injections), static_cast<long long>(flips->points),
        static_cast<long long>(flips->passes), flips->passes == 1 ? "pass" : "passes",
        static_cast<unsigned long long>(kFlipSeed));
  }

  if (sensitivity) print_sensitivity(*sensitivity, eval_name);
  if (target_set(o)) {
    const size_t samples = sensitivity->all_quantized.samples;
    if (!search) {
      std::printf("target       %s on %zu samples: met with every module quantized (%s)\n",
                  target_text(o).c_str(), samples,
                  figures_text(sensitivity->all_quantized).c_str());
    } else {
      std::printf(
          "target       %s on %zu samples: met with %zu module%s kept float, the costliest "
          "first (%s); the written model skips %s:\n",
          target_text(o).c_str(), samples, search->kept_float.size(),
          search->kept_float.size() == 1 ? "" : "s", figures_text(search->evaluation).c_str(),
          search->kept_float.size() == 1 ? "it" : "them");
      for (const std::string& m : search->kept_float) std::printf("  %s\n", m.c_str());
    }
  }

  // Both outputs are complete before either is put in place, and they are committed back to
  // back: a signal during the report's preparation leaves neither.
  std::printf(
      "written      %s (%zu activation Q/DQ pairs, %zu weight quantizers, %zu softmax "
      "pairs; %s, %s)\n",
      o.output.c_str(), counts.activation_pairs, counts.weight_quantizers, counts.softmax_pairs,
      written_batch.c_str(), out_file->size_text(written_bytes).c_str());

  if (report_file) {
    nlohmann::json points = nlohmann::json::array();
    for (size_t i = 0; i < plan.activations.size(); ++i) {
      const quant::ActivationPoint& p = plan.activations[i];
      const quant::PointCalibration& r = calibrated.points[i];
      nlohmann::json by_method;
      for (quant::Calibrator m : quant::kCalibrators) {
        by_method[quant::calibrator_name(m)] = r.amax_by(m);
      }
      nlohmann::json consumers = nlohmann::json::array();
      for (const quant::QuantConsumer& c : p.consumers) {
        consumers.push_back({{"node", c.node}, {"input", c.input}});
      }
      const double a = r.amax_by(*method);
      points.push_back({{"module", r.module},
                        {"tensor", p.tensor},
                        {"consumers", consumers},
                        {"method", method_name},
                        {"amax", a},
                        {"scale", quant::scale_from_amax(static_cast<float>(a))},
                        {"amax_by_method", by_method},
                        {"entropy_fell_back_to_max", r.entropy_fell_back}});
    }
    nlohmann::json weights = nlohmann::json::array();
    for (const quant::WeightPoint& w : plan.weights) {
      weights.push_back({{"node", w.node},
                         {"module", w.module},
                         {"axis", w.axis},
                         {"folds_batch_norm", w.folds_batch_norm},
                         {"amax", weight_amax.at(w.node)}});
    }
    nlohmann::json evaluation{{"data", eval_name},       {"samples", eval_total},
                              {"elements", f.elements},  {"sqnr_db", finite_or_null(f.sqnr_db)},
                              {"cosine", f.cosine},      {"max_abs_diff", f.max_abs_diff},
                              {"nonfinite", f.nonfinite}};
    if (f.top1_agreement) evaluation["top1_agreement"] = *f.top1_agreement;
    if (!measured.outputs.empty()) evaluation["outputs"] = outputs_json(measured);
    if (flips) {
      evaluation["flip_sensitivity"] = {{"injections", flips->injections},
                                        {"points", flips->points},
                                        {"passes", flips->passes},
                                        {"seed", kFlipSeed},
                                        {"median_relative_l2", flips->median},
                                        {"p90_relative_l2", flips->p90},
                                        {"changes", flips->changes}};
    }
    if (labelled) {
      evaluation["float_top1"] = percent(float_correct, eval_total) / 100.0;
      evaluation["int8_top1"] = percent(int8_correct, eval_total) / 100.0;
    }
    if (measured.reference_cross_entropy && measured.quantized_cross_entropy) {
      evaluation["float_cross_entropy"] = finite_or_null(*measured.reference_cross_entropy);
      evaluation["int8_cross_entropy"] = finite_or_null(*measured.quantized_cross_entropy);
    }
    if (measured.kl_divergence) evaluation["kl_to_float"] = finite_or_null(*measured.kl_divergence);
    nlohmann::json report{
        {"model", o.model},
        {"output", o.output},
        {"batch", o.batch},
        {"method", method_name},
        {"percentile", o.percentile},
        {"skip", setup.skip},
        {"int8_weights", o.int8_weights},
        {"per_tensor_weights", o.per_tensor_weights},
        {"calibration",
         {{"data", o.data}, {"samples", total}, {"batches", batches}, {"ranks", comm.size()}}},
        {"activation_points", points},
        {"weight_points", weights},
        {"softmax_points", plan.softmax.size()},
        {"float_modules", plan.float_modules.size()},
        {"counts",
         {{"activation_pairs", counts.activation_pairs},
          {"weight_quantizers", counts.weight_quantizers},
          {"softmax_pairs", counts.softmax_pairs},
          {"folded_batch_norms", counts.folded_batch_norms}}},
        {"evaluation", evaluation},
        {"timing",
         {{"smoothquant_s", smoothquant_seconds},
          {"calibration_s", calibration_seconds},
          {"ms_per_batch", ms_per_batch},
          {"first_batch_ms", 1e3 * first_batch_seconds},
          {"ms_per_later_batch", ms_per_later_batch},
          {"calibrators_s", calibrators_seconds},
          {"rank0_waiting_s", calibrated.timing.waiting_s},
          {"communication_s", calibrated.timing.communication_s},
          {"communicated_bytes", calibrated.timing.communicated_bytes},
          {"peak_rss_bytes_after_calibration", calibration_peak_bytes},
          {"peak_rss_bytes", run_peak_bytes}}}};
    if (smoothing) report["smoothquant"] = smoothquant_json(*smoothing);
    if (sensitivity) report["sensitivity"] = sensitivity_json(*sensitivity, eval_name);
    if (target_set(o)) {
      const quant::Evaluation& reached = search ? search->evaluation : sensitivity->all_quantized;
      nlohmann::json target = evaluation_figures_json(reached);
      if (o.target_sqnr) target["target_sqnr_db"] = *o.target_sqnr;
      if (o.target_kl) target["target_kl_to_float"] = *o.target_kl;
      target["kept_float"] = search ? search->kept_float : std::vector<std::string>{};
      target["samples"] = reached.samples;
      report["target"] = target;
    }
    report_file->write(report.dump(2));
    report_file->write("\n");
  }
  out_file->commit_with({report_file.get()});
  if (report_file) std::printf("%-12s written to %s\n", "report", o.report.c_str());
  return 0;
}

}  // namespace

CommandRunner add_calibrate_command(CLI::App& app) {
  auto opts = std::make_shared<CalibrateOptions>();
  auto* cmd = app.add_subcommand(
      "calibrate",
      "Calibrate Q/DQ scales on sample data and write the Q/DQ ONNX model with the batch the "
      "model declares (symbolic stays symbolic, fixed stays at the model's own size, whatever "
      "--batch); then compare it with the float model (output SQNR, cosine, top-1)");
  cmd->add_option("model", opts->model, "float ONNX model file")->required()->check(file_path());
  cmd->add_option("--data", opts->data, std::string("calibration data: ") + kDataFormats)
      ->required();
  add_preprocess_flags(*cmd, opts->preprocess);
  add_input_shape_option(*cmd, opts->input_shape, &opts->preprocess);
  cmd->add_option("-o,--output", opts->output, "Q/DQ ONNX model to write")
      ->required()
      ->check(file_path());
  cmd->add_option("--method", opts->method,
                  "calibrator choosing each activation amax: mse (default), max, percentile or "
                  "entropy");
  cmd->add_option("--percentile", opts->percentile,
                  "percentile of |x| for --method percentile (default 99.99)");
  cmd->add_option("--skip", opts->skip,
                  "comma list of module node names, module kinds or globs to keep float")
      ->delimiter(',');
  cmd->add_option("--limit", opts->limit,
                  "calibrate on at most this many samples, spread evenly over the data (an image "
                  "folder is sorted by class)")
      ->check(integer_at_least(1));
  cmd->add_option("--batch", opts->batch,
                  "batch the model is transformed, calibrated and evaluated at (default 32), "
                  "whatever batch the model fixes; the written model keeps the model's own. "
                  "Every sample is used: a partial last batch is calibrated as is and padded for "
                  "the evaluation (padded rows are ignored)")
      ->check(integer_at_least(1));
  cmd->add_flag("--dynamic-batch", opts->dynamic_batch,
                "write a batch the model fixes as a symbolic one ('batch'), for TensorRT "
                "optimisation profiles");
  cmd->add_option("--threads", opts->threads,
                  "worker threads of each rank (default: the cores, divided among the ranks an MPI "
                  "launcher started on this machine)")
      ->check(integer_at_least(0, INT_MAX));
  cmd->add_option("--report", opts->report,
                  "write the point table and the evaluation figures as JSON")
      ->check(file_path());
  cmd->add_option("--val", opts->val,
                  "evaluate on this image folder or .npy file (default: the calibration data)");
  cmd->add_flag("--int8-weights", opts->int8_weights,
                "store weights as int8 initializers behind DequantizeLinear");
  add_external_data_flag(*cmd, opts->external_data);
  cmd->add_flag("--per-tensor-weights", opts->per_tensor_weights,
                "one scale per weight tensor (amax = max |w| over the whole batch-norm folded "
                "weight) instead of one per output channel, for targets without per-axis weight "
                "quantizers");
  cmd->add_option_function<double>(
         "--smoothquant", [opts](const double& alpha) { opts->smoothquant = alpha; },
         "SmoothQuant before calibration with migration strength ALPHA in [0, 1] (0.5 when "
         "given without a value): every LayerNorm feeding only Linear/MHAInProjection weights "
         "moves its per-channel range into them; the float model stays equivalent")
      ->expected(0, 1)
      ->default_str("0.5")
      ->type_name("ALPHA");
  cmd->add_option("--flip-injections", opts->flip_injections,
                  "rounding flips injected into the written model, one per sample of the first "
                  "evaluation batch in each pass (one per pass in a model that mixes its "
                  "samples), to report the output change one flip causes (median and 90th "
                  "percentile; default 32, 0 skips it)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option_function<int64_t>(
         "--sensitivity", [opts](const int64_t& n) { opts->sensitivity = n; },
         "after the evaluation, keep each quantized module float in turn (what --skip NAME "
         "would write, with the same scales) and measure it against the float model on N "
         "evaluation samples spread evenly over the data (64 when N is not given): a table of "
         "the modules that cost the most, best candidate for --skip first, also in the report")
      ->expected(0, 1)
      ->default_str("64")
      ->type_name("N");
  cmd->add_option_function<double>(
         "--target-sqnr", [opts](const double& db) { opts->target_sqnr = db; },
         "keep modules float, the costliest first (the --sensitivity measurement on its samples, "
         "ranked by SQNR), until the model's output SQNR against the float model reaches DB "
         "there; the written model skips them (they are listed, and in the report's skip list)")
      ->type_name("DB");
  cmd->add_option_function<double>(
         "--target-kl", [opts](const double& nats) { opts->target_kl = nats; },
         "as --target-sqnr, for a mean KL(float ‖ int8) of the softmax outputs at most NATS "
         "(a [N, classes] output; modules ranked by KL); with both, both must hold")
      ->type_name("NATS");
  return [opts] { return run_calibrate(*opts); };
}

}  // namespace qforge::cli
