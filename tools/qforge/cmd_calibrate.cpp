// `qforge calibrate`: transform at a fixed batch, place Q/DQ points, stream calibration batches
// through the fused graph, pick each point's amax with the chosen calibrator and write the Q/DQ
// ONNX model; then measure the Q/DQ model against the float model (SQNR, cosine, top-1).
#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "quant/calibration.h"
#include "quant/flip_sensitivity.h"
#include "quant/int8.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "quant/smoothquant.h"
#include "runtime/compare.h"
#include "runtime/executor.h"
#include "runtime/memory_budget.h"
#include "runtime/resolve.h"
#include "runtime/session.h"
#include "runtime/threads.h"
#include "runtime/transform_pipeline.h"
#include "tools/io/atomic_file.h"
#include "tools/io/progress.h"
#include "tools/io/resource_usage.h"
#include "tools/io/spill_file.h"
#include "tools/qforge/cli_checks.h"
#include "tools/qforge/commands.h"
#include "tools/qforge/data_source.h"
#include "tools/qforge/report_output.h"

namespace qforge::cli {
namespace {

constexpr quant::Calibrator kMethods[] = {quant::Calibrator::kMax, quant::Calibrator::kPercentile,
                                          quant::Calibrator::kEntropy, quant::Calibrator::kMse};

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
  std::optional<double> smoothquant;  // alpha, when --smoothquant is given
  // Rounding flips injected into the written model (on the first evaluation batch) to measure
  // the output change one flip causes; 0 skips the measurement.
  int64_t flip_injections = 32;
};

// Seed of the flip injections: the figure is reproducible run to run.
constexpr uint64_t kFlipSeed = 0;

// `indices` as whole batches of `batch` and the rest (a partial last batch; may be empty).
std::pair<std::vector<size_t>, std::vector<size_t>> split_whole_batches(
    const std::vector<size_t>& indices, int64_t batch) {
  const auto whole = static_cast<std::ptrdiff_t>(indices.size() / static_cast<size_t>(batch) *
                                                 static_cast<size_t>(batch));
  return {{indices.begin(), indices.begin() + whole}, {indices.begin() + whole, indices.end()}};
}

// `limit` sample indices spread evenly over `size` (all of them when limit is 0 or larger): an
// ImageFolder is sorted by class, so a prefix would miss whole classes.
std::vector<size_t> spread_indices(size_t size, int64_t limit) {
  const size_t n = limit > 0 ? std::min(size, static_cast<size_t>(limit)) : size;
  std::vector<size_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = i * size / n;
  return out;
}

// Calls fn(input, labels, count) for the samples `indices` in batches of `batch`. With `pad` the
// input always has `batch` rows (rows past `count` repeat the last sample, for a model whose
// batch is fixed); without, the last batch has only `count` rows. labels is empty for unlabelled
// data. The caller finishes `progress`.
template <typename Fn>
void for_each_batch(const DataSource& data, const std::vector<size_t>& indices, int64_t batch,
                    bool pad, io::Progress& progress, Fn&& fn) {
  const auto b = static_cast<size_t>(batch);
  const size_t row = static_cast<size_t>(kernels::shape_numel(data.sample_shape()));
  graph::Shape one = data.sample_shape();
  one.insert(one.begin(), 1);
  graph::Shape shape = data.sample_shape();
  shape.insert(shape.begin(), batch);
  kernels::Tensor buffer(kernels::DType::kFloat32, shape);  // reused by every batch
  float* p = buffer.data<float>();
  std::vector<int64_t> labels;
  for (size_t begin = 0; begin < indices.size(); begin += b) {
    const size_t count = std::min(b, indices.size() - begin);
    const kernels::Tensor input =
        pad || count == b ? buffer : buffer.slice_rows(0, static_cast<int64_t>(count));
    labels.clear();
    for (size_t i = 0; i < count; ++i) {
      kernels::Tensor sample = kernels::Tensor::wrap(kernels::DType::kFloat32, one, p + i * row);
      data.load(indices[begin + i], 1, sample);
      if (data.labelled()) labels.push_back(data.labels(indices[begin + i], 1).at(0));
    }
    for (size_t i = count; pad && i < b; ++i) {
      std::memcpy(p + i * row, p + (count - 1) * row, row * sizeof(float));
    }
    fn(input, labels, count);
    progress.advance(count);
  }
}

size_t correct_rows(const kernels::Tensor& logits, const std::vector<int64_t>& labels) {
  if (logits.rank() != 2 || logits.dtype() != kernels::DType::kFloat32) {
    throw_invalid("calibrate: accuracy needs a [N, classes] float output, got " +
                  logits.describe());
  }
  const int64_t classes = logits.dim(1);
  size_t correct = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    const float* row = logits.data<float>() + static_cast<int64_t>(i) * classes;
    correct += std::max_element(row, row + classes) - row == labels[i];
  }
  return correct;
}

// "ConvBNAct layer1.0.conv1" for the first module reading a point, "+N" for the others.
std::string point_module(const graph::Graph& fused, const quant::ActivationPoint& p) {
  if (p.consumers.empty()) return "-";
  const graph::Node* node = fused.find_node(p.consumers[0].node);
  std::string out = node ? node->op_type() : std::string("?");
  out.append(" ").append(p.consumers[0].node);
  if (p.consumers.size() > 1) out.append(" +").append(std::to_string(p.consumers.size() - 1));
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double percent(size_t part, size_t whole) {
  return whole == 0 ? 0.0 : 100.0 * static_cast<double>(part) / static_cast<double>(whole);
}

// JSON has no infinity: an exact match (SQNR +inf) is written as null.
nlohmann::json finite_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

// Output 0 of a run, its first `rows` rows (the rest pad the batch); float32, as the
// comparison and the accuracy need.
kernels::Tensor float_output(std::span<const kernels::Tensor> outputs, size_t rows) {
  const kernels::Tensor& out = outputs[0];
  if (out.dtype() != kernels::DType::kFloat32 || out.rank() == 0) {
    throw_invalid(
        "calibrate: the evaluation compares a float output with a batch axis; output 0 "
        "is " +
        out.describe());
  }
  return out.slice_rows(0, static_cast<int64_t>(rows));
}

// The export transforms the model again; its placement must be the calibrated one.
void check_same_placement(const quant::QuantPlan& calibrated, const quant::QuantPlan& again) {
  bool same = calibrated.activations.size() == again.activations.size() &&
              calibrated.weights.size() == again.weights.size();
  for (size_t i = 0; same && i < again.activations.size(); ++i) {
    same = calibrated.activations[i].tensor == again.activations[i].tensor;
  }
  for (size_t i = 0; same && i < again.weights.size(); ++i) {
    same = calibrated.weights[i].node == again.weights[i].node;
  }
  if (!same) {
    throw_internal(
        "calibrate: transforming the model again for the export placed other Q/DQ "
        "points than calibration did");
  }
}

// The model transformed at `rows` rows, for a partial last batch: a transformer's fused graph has
// the batch folded into its reshapes.
runtime::TransformResult transform_at(const graph::Graph& model, runtime::TransformOptions options,
                                      size_t rows) {
  options.batch = static_cast<int64_t>(rows);
  return runtime::transform_model(model, nullptr, options);
}

// The SmoothQuant pass: max |x| per channel of every smoothable LayerNorm output over the
// calibration samples, then the factors folded into the fused graph. As in calibration, a
// partial last batch runs first through the model transformed at its size, as the last use of
// `model`; then the fused graph's forward pass holds the only copy of the weights and releases
// them as its kernels prepare theirs. The model is then read and transformed again, and the
// factors folded into that graph: `transformed` is replaced and `model` left empty.
quant::SmoothQuantResult smooth_model(const CalibrateOptions& o,
                                      std::unique_ptr<graph::Graph>& model,
                                      const runtime::TransformOptions& transform,
                                      runtime::TransformResult& transformed, const DataSource& data,
                                      const std::vector<size_t>& indices) {
  quant::SmoothQuantSites found = quant::find_smoothquant_sites(*transformed.graph);
  quant::SmoothQuantOptions options;
  options.alpha = *o.smoothquant;
  if (found.sites.empty()) {
    quant::SmoothQuantStats none(*transformed.graph, {});
    return quant::apply_smoothquant(*transformed.graph, none, options, std::move(found.refused));
  }
  std::vector<std::string> site_names;
  for (const quant::SmoothQuantSite& site : found.sites) site_names.push_back(site.layer_norm);
  quant::SmoothQuantStats stats(std::move(transformed.graph), found.sites, true);
  const auto [full_indices, rest_indices] = split_whole_batches(indices, o.batch);
  io::Progress progress("smoothquant", indices.size(), "img");
  if (!rest_indices.empty()) {
    for_each_batch(data, rest_indices, static_cast<int64_t>(rest_indices.size()), false, progress,
                   [&](const kernels::Tensor& input, const std::vector<int64_t>&, size_t count) {
                     const runtime::TransformResult partial =
                         transform_at(*model, transform, count);
                     quant::SmoothQuantStats partial_stats(
                         *partial.graph, quant::find_smoothquant_sites(*partial.graph).sites);
                     partial_stats.observe_batch(input);
                     stats.merge(partial_stats);
                   });
  }
  model.reset();
  for_each_batch(data, full_indices, o.batch, false, progress,
                 [&](const kernels::Tensor& input, const std::vector<int64_t>&, size_t) {
                   stats.observe_batch(input);
                 });
  progress.finish();
  stats.release_forward();

  // `model` is not kept: the smoothed graph is then the only holder of the weights it replaces.
  transformed = runtime::transform_model(*graph::load_onnx(o.model), nullptr, transform);
  found = quant::find_smoothquant_sites(*transformed.graph);
  bool same = found.sites.size() == site_names.size();
  for (size_t i = 0; same && i < site_names.size(); ++i) {
    same = found.sites[i].layer_norm == site_names[i];
  }
  if (!same) {
    throw_internal(
        "calibrate: transforming the model again after the SmoothQuant pass found "
        "other LayerNorms to smooth");
  }
  return quant::apply_smoothquant(*transformed.graph, stats, options, std::move(found.refused));
}

int run_calibrate(const CalibrateOptions& o) {
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
  // Check and open the outputs first: an output that would overwrite an input or the other
  // output, or an unwritable path, fails before any work, and nothing partial is left when a
  // later step fails.
  std::vector<io::NamedPath> outputs = {{"-o", o.output}};
  if (!o.report.empty()) outputs.push_back({"--report", o.report});
  const io::NamedPath inputs[] = {{"model", o.model}, {"--data", o.data}, {"--val", o.val}};
  io::check_output_paths("calibrate", outputs, inputs);
  io::AtomicFile out_file(o.output);
  std::unique_ptr<io::AtomicFile> report_file;
  if (!o.report.empty()) report_file = std::make_unique<io::AtomicFile>(o.report);

  std::unique_ptr<graph::Graph> model = graph::load_onnx(o.model);
  DataSource data = DataSource::open(o.data, *model, {});
  const std::vector<size_t> calib_indices = spread_indices(data.size(), o.limit);
  const size_t total = calib_indices.size();
  if (total == 0) throw_invalid("calibrate: data '" + o.data + "' holds no samples");
  std::optional<DataSource> val;
  if (!o.val.empty()) {
    val.emplace(DataSource::open(o.val, *model, {}));
    if (val->size() == 0) throw_invalid("calibrate: --val data '" + o.val + "' holds no samples");
  }

  runtime::TransformOptions transform;
  transform.batch = o.batch;
  runtime::TransformResult transformed = runtime::transform_model(*model, nullptr, transform);
  // A --batch too large for the machine is refused before any batch is read or run: one plan
  // at --batch runs at a time, fed from a batch buffer of its own; the largest is the float
  // model's own (unfused) plan, which the evaluation runs.
  {
    runtime::PlanMemory need = runtime::estimate_plan_memory(*transformed.graph);
    std::unique_ptr<graph::Graph> float_plan = model->clone();
    runtime::ResolveOptions at_batch;
    at_batch.input_shapes = runtime::input_shapes_for_batch(*model, o.batch);
    runtime::resolve(*float_plan, at_batch);
    const runtime::PlanMemory float_need = runtime::estimate_plan_memory(*float_plan);
    need.arena_bytes = std::max(need.arena_bytes, float_need.arena_bytes) +
                       runtime::input_bytes(*transformed.graph);
    runtime::check_memory_budget("calibrate", need);
  }
  // SmoothQuant comes first, so that every range below is taken on the smoothed model.
  std::optional<quant::SmoothQuantResult> smoothing;
  double smoothquant_seconds = 0;
  if (o.smoothquant) {
    const auto start = std::chrono::steady_clock::now();
    smoothing = smooth_model(o, model, transform, transformed, data, calib_indices);
    smoothquant_seconds = seconds_since(start);
  }
  quant::PlacementOptions placement;
  placement.skip = o.skip;
  const quant::QuantPlan plan = quant::place_qdq(*transformed.graph, placement);
  if (plan.activations.empty() && plan.weights.empty()) {
    throw_invalid("calibrate: model '" + o.model + "' has no Q/DQ point to calibrate");
  }
  std::vector<std::string> point_modules;
  for (const quant::ActivationPoint& p : plan.activations) {
    point_modules.push_back(point_module(*transformed.graph, p));
  }

  // Every sample is used: a partial last batch runs through the model transformed at its own
  // size (a transformer's fused graph has the batch folded into its reshapes) and its
  // statistics merge exactly into the rest, so the scales do not depend on --batch. It runs
  // first, as the last use of the loaded model. Then the fused graph is the only holder of the
  // float weights, and the forward pass releases each as its kernels prepare their own form of
  // it: the weights are not in memory twice. The export below reads them from the file again.
  const auto [full_indices, rest_indices] = split_whole_batches(calib_indices, o.batch);
  quant::CalibrationOptions calibration_options;
  calibration_options.release_weights = true;
  // Released once the amax are known, before the export and the evaluation.
  auto stats_owner = std::make_unique<quant::CalibrationStats>(std::move(transformed.graph), plan,
                                                               calibration_options);
  quant::CalibrationStats& stats = *stats_owner;
  const auto calibration_start = std::chrono::steady_clock::now();
  double first_batch_seconds = -1;  // the first full batch also builds the execution plan
  {
    io::Progress progress("calibrate", total, "img");
    if (!rest_indices.empty()) {
      if (!model) model = graph::load_onnx(o.model);  // the SmoothQuant pass let it go
      const int64_t rows = static_cast<int64_t>(rest_indices.size());
      for_each_batch(data, rest_indices, rows, false, progress,
                     [&](const kernels::Tensor& input, const std::vector<int64_t>&, size_t) {
                       const runtime::TransformResult partial =
                           transform_at(*model, transform, static_cast<size_t>(rows));
                       if (smoothing) quant::fold_smoothing(*partial.graph, *smoothing);
                       quant::CalibrationStats partial_stats(
                           *partial.graph, quant::place_qdq(*partial.graph, placement));
                       partial_stats.observe_batch(input);
                       stats.merge(partial_stats);
                     });
      if (full_indices.empty()) first_batch_seconds = seconds_since(calibration_start);
    }
    model.reset();
    for_each_batch(data, full_indices, o.batch, false, progress,
                   [&](const kernels::Tensor& input, const std::vector<int64_t>&, size_t) {
                     const auto batch_start = std::chrono::steady_clock::now();
                     stats.observe_batch(input);
                     if (first_batch_seconds < 0) first_batch_seconds = seconds_since(batch_start);
                   });
    progress.finish();
  }
  const double calibration_seconds = seconds_since(calibration_start);
  // Everything calibration needs is resident by now.
  const int64_t calibration_peak_bytes = io::peak_resident_bytes();

  struct PointRow {
    const quant::ActivationPoint* point;
    const std::string* module;
    double amax[4];
    bool entropy_fell_back;  // entropy's threshold clipped too much; its column holds max
  };
  std::vector<PointRow> rows;
  quant::ActivationAmax chosen;
  const auto calibrators_start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < plan.activations.size(); ++i) {
    const quant::ActivationPoint& p = plan.activations[i];
    PointRow row{&p, &point_modules[i], {}, false};
    for (quant::Calibrator m : kMethods) {
      if (m == quant::Calibrator::kEntropy) {
        const quant::EntropyChoice e = stats.entropy_choice(p);
        row.amax[static_cast<int>(m)] = e.amax;
        row.entropy_fell_back = e.fell_back_to_max;
        continue;
      }
      row.amax[static_cast<int>(m)] = stats.amax_for(p, m, o.percentile);
    }
    chosen[p.tensor] = static_cast<float>(row.amax[static_cast<int>(*method)]);
    rows.push_back(row);
  }
  const double calibrators_seconds = seconds_since(calibrators_start);
  const auto weight_amax = stats.weight_amax();
  const int64_t batches = stats.batches();
  stats_owner.reset();

  // The export: the model read and transformed again (deterministic: the same graph, checked
  // by its placement), smoothed the same way, lowered with the chosen scales. The bytes go to
  // the output's temporary file at once; it is renamed into place only after the evaluation.
  quant::QdqExportOptions export_options;
  export_options.int8_weights = o.int8_weights;
  quant::QdqCounts counts;
  size_t written_bytes = 0;
  {
    std::unique_ptr<graph::Graph> reloaded = graph::load_onnx(o.model);
    runtime::TransformResult again = runtime::transform_model(*reloaded, nullptr, transform);
    reloaded.reset();
    if (smoothing) quant::fold_smoothing(*again.graph, *smoothing);
    check_same_placement(plan, quant::place_qdq(*again.graph, placement));
    auto qdq = quant::build_qdq_graph(*again.graph, plan, chosen, export_options, &counts);
    again.graph.reset();
    written_bytes = graph::write_onnx(
        std::move(qdq), [&](const void* p, size_t n) { out_file.write(p, n); },
        export_options.onnx);
  }

  // Evaluate exactly what is written: the file, read back. The Q/DQ model's batch
  // is fixed, so the last partial batch is padded with copies of its last sample and the padded
  // rows' outputs are ignored; every sample counts once. One model is in memory at a time: the
  // float model's outputs wait in a temporary file for the Q/DQ model's.
  const DataSource& eval = val ? *val : data;
  const std::vector<size_t> eval_indices = val ? spread_indices(val->size(), 0) : calib_indices;
  const size_t eval_total = eval_indices.size();
  const bool labelled = eval.labelled();
  runtime::SessionOptions one_shape;
  one_shape.executor.release_prepared_constants = true;
  io::FloatSpill expected;
  size_t float_correct = 0;
  {
    runtime::Session reference(graph::load_onnx(o.model), one_shape);
    io::Progress progress("float model", eval_total, "img");
    for_each_batch(
        eval, eval_indices, o.batch, true, progress,
        [&](const kernels::Tensor& input, const std::vector<int64_t>& labels, size_t count) {
          const kernels::Tensor out = float_output(reference.run(input), count);
          expected.append(out.span<float>());
          if (labelled) float_correct += correct_rows(out, labels);
        });
    progress.finish();
  }
  runtime::OutputComparison comparison;
  size_t int8_correct = 0;
  kernels::Tensor first_eval_batch;  // the flip injections run on it
  {
    runtime::Session quantized(graph::load_onnx(out_file.read_path()), one_shape);
    io::Progress progress("Q/DQ model", eval_total, "img");
    for_each_batch(
        eval, eval_indices, o.batch, true, progress,
        [&](const kernels::Tensor& input, const std::vector<int64_t>& labels, size_t count) {
          if (!first_eval_batch.defined()) first_eval_batch = input.clone();
          const kernels::Tensor got = float_output(quantized.run(input), count);
          kernels::Tensor expected_rows(kernels::DType::kFloat32, got.shape());
          expected.read(expected_rows.span<float>());
          comparison.add(expected_rows, got);
          if (labelled) int8_correct += correct_rows(got, labels);
        });
    progress.finish();
  }
  const runtime::ComparisonFigures f = comparison.figures();
  std::optional<quant::FlipSensitivity> flips;
  if (o.flip_injections > 0) {
    flips = quant::flip_sensitivity(*graph::load_onnx(out_file.read_path()), first_eval_batch,
                                    {.injections = o.flip_injections, .seed = kFlipSeed});
  }

  const char* method_name = quant::calibrator_name(*method);
  std::printf("model        %s (transformed at batch %lld: %zu conversions, %zu fusions)\n",
              o.model.c_str(), static_cast<long long>(o.batch), transformed.conversions.applied(),
              transformed.fusions.applied());
  std::string of_all;
  if (total < data.size()) {
    of_all.append(" of ").append(std::to_string(data.size())).append(", spread evenly");
  }
  std::printf("calibration  %s (%zu samples%s in %lld batches of up to %lld, %d threads)\n",
              o.data.c_str(), total, of_all.c_str(), static_cast<long long>(batches),
              static_cast<long long>(o.batch), runtime::num_threads());
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
      1e3 * calibrators_seconds, rows.size(), static_cast<double>(calibration_peak_bytes) / kMiB,
      static_cast<double>(run_peak_bytes) / kMiB);
  std::printf("method       %s", method_name);
  if (*method == quant::Calibrator::kPercentile) std::printf(" (%g%%)", o.percentile);
  std::printf("; scale = amax / 127, zero point 0\n");
  if (smoothing) print_smoothquant(*smoothing);
  std::printf("\nactivation Q/DQ points (%zu); amax by each calibrator, percentile at %g%%\n",
              rows.size(), o.percentile);
  // Names vary in length: figures first so that their columns line up, names last.
  std::printf("  %-10s %10s %11s | %10s %10s %10s  %10s | %s -> %s\n", "method", "amax", "scale",
              "max", "percentile", "entropy", "mse", "module", "tensor");
  size_t fallbacks = 0;
  for (const PointRow& r : rows) {
    const double a = r.amax[static_cast<int>(*method)];
    const bool fell_back = r.entropy_fell_back && *method == quant::Calibrator::kEntropy;
    fallbacks += r.entropy_fell_back;
    std::printf("  %-10s %10.5g %11.5g | %10.5g %10.5g %10.5g%s %10.5g | %s -> %s\n",
                fell_back ? "max*" : method_name, a,
                static_cast<double>(quant::scale_from_amax(static_cast<float>(a))), r.amax[0],
                r.amax[1], r.amax[2], r.entropy_fell_back ? "*" : " ", r.amax[3], r.module->c_str(),
                r.point->tensor.c_str());
  }
  if (fallbacks > 0) {
    std::printf(
        "  * entropy's threshold would clip more than %g%% of this point's values; it takes "
        "max instead\n",
        100 * quant::CalibrationStats::kEntropyMaxClipped);
  }
  std::printf("\nweight quantizers (%zu): per output channel, amax = max |w|%s\n",
              plan.weights.size(), o.int8_weights ? ", stored as int8" : "");
  std::printf("  %5s %9s %10s %10s %-10s | %s\n", "axis", "channels", "min amax", "max amax",
              "batch norm", "module");
  for (const quant::WeightPoint& w : plan.weights) {
    const std::vector<float>& a = weight_amax.at(w.node);
    const auto [lo, hi] = std::minmax_element(a.begin(), a.end());
    std::printf("  %5d %9zu %10.5g %10.5g %-10s | %s %s\n", w.axis, a.size(),
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
  std::printf("\nevaluation   %s (%zu samples, batch %lld; a partial last batch is padded)\n",
              eval_name.c_str(), eval_total, static_cast<long long>(o.batch));
  std::printf("output SQNR  %.2f dB (Q/DQ model vs float model, %zu elements)\n", f.sqnr_db,
              f.elements);
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
  if (f.nonfinite > 0) std::printf("non-finite   %zu output elements\n", f.nonfinite);
  if (flips) {
    std::printf(
        "one flip     moves a sample's output by %.3g (median), %.3g (90th percentile) relative "
        "L2: the rounding difference to expect from any other runtime (%lld injections at "
        "random elements of %lld points, seed %llu)\n",
        flips->median, flips->p90, static_cast<long long>(flips->injections),
        static_cast<long long>(flips->points), static_cast<unsigned long long>(kFlipSeed));
  }

  out_file.commit();
  std::printf(
      "written      %s (%zu activation Q/DQ pairs, %zu weight quantizers, %zu softmax "
      "pairs; static batch %lld, %.1f KiB)\n",
      o.output.c_str(), counts.activation_pairs, counts.weight_quantizers, counts.softmax_pairs,
      static_cast<long long>(o.batch), static_cast<double>(written_bytes) / 1024.0);

  if (report_file) {
    nlohmann::json points = nlohmann::json::array();
    for (const PointRow& r : rows) {
      nlohmann::json by_method;
      for (quant::Calibrator m : kMethods) {
        by_method[quant::calibrator_name(m)] = r.amax[static_cast<int>(m)];
      }
      nlohmann::json consumers = nlohmann::json::array();
      for (const quant::QuantConsumer& c : r.point->consumers) {
        consumers.push_back({{"node", c.node}, {"input", c.input}});
      }
      const double a = r.amax[static_cast<int>(*method)];
      points.push_back({{"module", *r.module},
                        {"tensor", r.point->tensor},
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
    if (flips) {
      evaluation["flip_sensitivity"] = {{"injections", flips->injections},
                                        {"points", flips->points},
                                        {"seed", kFlipSeed},
                                        {"median_relative_l2", flips->median},
                                        {"p90_relative_l2", flips->p90},
                                        {"changes", flips->changes}};
    }
    if (labelled) {
      evaluation["float_top1"] = percent(float_correct, eval_total) / 100.0;
      evaluation["int8_top1"] = percent(int8_correct, eval_total) / 100.0;
    }
    nlohmann::json report{
        {"model", o.model},
        {"output", o.output},
        {"batch", o.batch},
        {"method", method_name},
        {"percentile", o.percentile},
        {"skip", o.skip},
        {"int8_weights", o.int8_weights},
        {"calibration", {{"data", o.data}, {"samples", total}, {"batches", batches}}},
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
          {"peak_rss_bytes_after_calibration", calibration_peak_bytes},
          {"peak_rss_bytes", run_peak_bytes}}}};
    if (smoothing) report["smoothquant"] = smoothquant_json(*smoothing);
    commit_text_file(*report_file, report.dump(2), "report", o.report);
  }
  return 0;
}

}  // namespace

CommandRunner add_calibrate_command(CLI::App& app) {
  auto opts = std::make_shared<CalibrateOptions>();
  auto* cmd = app.add_subcommand(
      "calibrate",
      "Calibrate Q/DQ scales on sample data and write the Q/DQ ONNX model, fixed to --batch; "
      "then compare it with the float model (output SQNR, cosine, top-1)");
  cmd->add_option("model", opts->model, "float ONNX model file")->required()->check(file_path());
  cmd->add_option("--data", opts->data,
                  "calibration data: image folder or .npy file of model inputs")
      ->required();
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
                  "batch the model is transformed, calibrated and evaluated at (default 32); the "
                  "written model is fixed to it. Every sample is used: a partial last batch is "
                  "calibrated as is and padded for the evaluation (padded rows are ignored)")
      ->check(integer_at_least(1));
  cmd->add_option("--threads", opts->threads, "worker threads (default: all cores)")
      ->check(integer_at_least(0, INT_MAX));
  cmd->add_option("--report", opts->report,
                  "write the point table and the evaluation figures as JSON")
      ->check(file_path());
  cmd->add_option("--val", opts->val,
                  "evaluate on this image folder or .npy file (default: the calibration data)");
  cmd->add_flag("--int8-weights", opts->int8_weights,
                "store weights as int8 initializers behind DequantizeLinear");
  cmd->add_option_function<double>(
         "--smoothquant", [opts](const double& alpha) { opts->smoothquant = alpha; },
         "SmoothQuant before calibration with migration strength ALPHA in [0, 1] (0.5 when "
         "given without a value): every LayerNorm feeding only Linear/MHAInProjection weights "
         "moves its per-channel range into them; the float model stays equivalent")
      ->expected(0, 1)
      ->default_str("0.5")
      ->type_name("ALPHA");
  cmd->add_option("--flip-injections", opts->flip_injections,
                  "rounding flips injected one at a time into the written model, on the first "
                  "evaluation batch, to report the output change one flip causes (median and "
                  "90th percentile; default 32, 0 skips it)")
      ->check(CLI::NonNegativeNumber);
  return [opts] { return run_calibrate(*opts); };
}

}  // namespace qforge::cli
