#include "quant/calibrate_pipeline.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <optional>
#include <utility>

#include "kernels/error.h"
#include "quant/calibration.h"
#include "runtime/executor.h"
#include "runtime/memory_budget.h"
#include "runtime/resolve.h"
#include "runtime/transform_pipeline.h"

namespace qforge::quant {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// `indices` as whole batches of `batch` and the rest (a partial last batch; may be empty).
std::pair<std::vector<size_t>, std::vector<size_t>> split_whole_batches(
    const std::vector<size_t>& indices, int64_t batch) {
  const auto whole = static_cast<std::ptrdiff_t>(indices.size() / static_cast<size_t>(batch) *
                                                 static_cast<size_t>(batch));
  return {{indices.begin(), indices.begin() + whole}, {indices.begin() + whole, indices.end()}};
}

// This rank's share of split_whole_batches(indices, batch): the whole batches divided in order
// as evenly as runtime::share_of divides them, the partial last batch on the last rank (which
// has no more whole batches than any other).
std::pair<std::vector<size_t>, std::vector<size_t>> rank_batches(
    const std::vector<size_t>& indices, int64_t batch, const runtime::Communicator& comm) {
  auto [full, rest] = split_whole_batches(indices, batch);
  const auto b = static_cast<size_t>(batch);
  const runtime::Share share = runtime::share_of(full.size() / b, comm.rank(), comm.size());
  std::vector<size_t> mine(full.begin() + static_cast<std::ptrdiff_t>(share.begin * b),
                           full.begin() + static_cast<std::ptrdiff_t>(share.end * b));
  if (comm.rank() != comm.size() - 1) rest.clear();
  return {std::move(mine), std::move(rest)};
}

// Merges every other rank's statistics into `stats` (exact in any order: histogram counts are
// integers, maxima are order-free), so that every rank holds what one process would have.
template <class Stats>
void merge_ranks(runtime::Communicator& comm, Stats& stats, CalibrationTiming& timing) {
  if (comm.size() == 1) return;
  const auto start = std::chrono::steady_clock::now();
  runtime::ByteWriter mine;
  stats.write(mine);
  timing.communicated_bytes += mine.bytes().size();
  const std::vector<std::vector<std::byte>> all = comm.allgather(mine.bytes());
  for (size_t r = 0; r < all.size(); ++r) {
    if (static_cast<int>(r) == comm.rank()) continue;
    runtime::ByteReader in(all[r]);
    stats.merge_written(in);
  }
  timing.communication_s += seconds_since(start);
}

// `pass` on this rank, then every rank agrees that no rank failed (time spent waiting there for
// the slowest rank goes to timing.waiting_s).
void pass_on_every_rank(runtime::Communicator& comm, CalibrationTiming& timing,
                        const std::function<void()>& pass) {
  std::optional<std::chrono::steady_clock::time_point> ended;
  runtime::collectively(comm, [&] {
    pass();
    ended = std::chrono::steady_clock::now();
  });
  if (ended) timing.waiting_s += seconds_since(*ended);
}

// "ConvBNAct layer1.0.conv1" for the first module reading a point, "+N" for the others.
std::string point_module(const graph::Graph& fused, const ActivationPoint& p) {
  if (p.consumers.empty()) return "-";
  const graph::Node* node = fused.find_node(p.consumers[0].node);
  std::string out = node ? node->op_type() : std::string("?");
  out.append(" ").append(p.consumers[0].node);
  if (p.consumers.size() > 1) out.append(" +").append(std::to_string(p.consumers.size() - 1));
  return out;
}

std::string format_number(double v) {
  char value[32];
  std::snprintf(value, sizeof value, "%g", v);
  return value;
}

runtime::TransformOptions transform_options(const CalibrationSetup& setup) {
  runtime::TransformOptions transform;
  transform.batch = setup.batch;
  return transform;
}

// The model transformed at `rows` rows, for a partial last batch: a transformer's fused graph has
// the batch folded into its reshapes.
runtime::TransformResult transform_at(const graph::Graph& model, runtime::TransformOptions options,
                                      size_t rows) {
  options.batch = static_cast<int64_t>(rows);
  return runtime::transform_model(model, nullptr, options);
}

// The export transforms the model again; its placement must be the calibrated one.
void check_same_placement(const std::string& stage, const QuantPlan& calibrated,
                          const QuantPlan& again) {
  bool same = calibrated.activations.size() == again.activations.size() &&
              calibrated.weights.size() == again.weights.size();
  for (size_t i = 0; same && i < again.activations.size(); ++i) {
    same = calibrated.activations[i].tensor == again.activations[i].tensor;
  }
  for (size_t i = 0; same && i < again.weights.size(); ++i) {
    same = calibrated.weights[i].node == again.weights[i].node &&
           calibrated.weights[i].per_channel == again.weights[i].per_channel;
  }
  if (!same) {
    throw_internal(stage +
                   ": transforming the model again for the export placed other Q/DQ "
                   "points than calibration did");
  }
}

// A --batch too large for the machine is refused before any batch is read or run: one plan at
// the batch runs at a time, fed from a batch buffer of its own; the largest is the float model's
// own (unfused) plan, which the evaluation runs.
void check_memory(const std::string& stage, const graph::Graph& model, const graph::Graph& fused,
                  int64_t batch) {
  runtime::PlanMemory need = runtime::estimate_plan_memory(fused);
  std::unique_ptr<graph::Graph> float_plan = model.clone();
  runtime::ResolveOptions at_batch;
  at_batch.input_shapes = runtime::input_shapes_for_batch(model, batch);
  runtime::resolve(*float_plan, at_batch);
  const runtime::PlanMemory float_need = runtime::estimate_plan_memory(*float_plan);
  need.arena_bytes =
      std::max(need.arena_bytes, float_need.arena_bytes) + runtime::input_bytes(fused);
  runtime::check_memory_budget(stage, need);
}

// The SmoothQuant pass: max |x| per channel of every smoothable LayerNorm output over the
// calibration samples, then the factors folded into the fused graph. As in calibration, a
// partial last batch runs first through the model transformed at its size, as the last use of
// `model`; then the fused graph's forward pass holds the only copy of the weights and releases
// them as its kernels prepare theirs. The model is then read and transformed again, and the
// factors folded into that graph: `transformed` is replaced and `model` left empty.
SmoothQuantResult smooth_model(const CalibrationSetup& setup, std::unique_ptr<graph::Graph>& model,
                               const ModelLoader& reload, runtime::TransformResult& transformed,
                               const SampleSource& data, const std::vector<size_t>& indices,
                               const ProgressFactory& progress_factory, runtime::Communicator& comm,
                               CalibrationTiming& timing) {
  const runtime::TransformOptions transform = transform_options(setup);
  SmoothQuantSites found = find_smoothquant_sites(*transformed.graph);
  SmoothQuantOptions options;
  options.alpha = *setup.smoothquant_alpha;
  if (found.sites.empty()) {
    SmoothQuantStats none(*transformed.graph, {});
    return apply_smoothquant(*transformed.graph, none, options, std::move(found.refused));
  }
  std::vector<std::string> site_names;
  for (const SmoothQuantSite& site : found.sites) site_names.push_back(site.layer_norm);
  SmoothQuantStats stats(std::move(transformed.graph), found.sites, true);
  // Named references rather than a structured binding: the pass below captures them, which
  // clang 14 refuses for bindings.
  const auto shares = rank_batches(indices, setup.batch, comm);
  const std::vector<size_t>& full_indices = shares.first;
  const std::vector<size_t>& rest_indices = shares.second;
  pass_on_every_rank(comm, timing, [&] {
    const auto progress =
        make_progress(progress_factory, "smoothquant", full_indices.size() + rest_indices.size());
    if (!rest_indices.empty()) {
      for_each_batch(
          data, rest_indices, static_cast<int64_t>(rest_indices.size()), false, *progress,
          [&](std::span<const kernels::Tensor> input, const std::vector<int64_t>&, size_t count) {
            const runtime::TransformResult partial = transform_at(*model, transform, count);
            SmoothQuantStats partial_stats(*partial.graph,
                                           find_smoothquant_sites(*partial.graph).sites);
            partial_stats.observe_batch(input);
            stats.merge(partial_stats);
          });
    }
    model.reset();
    for_each_batch(data, full_indices, setup.batch, false, *progress,
                   [&](std::span<const kernels::Tensor> input, const std::vector<int64_t>&,
                       size_t) { stats.observe_batch(input); });
    progress->finish();
  });
  merge_ranks(comm, stats, timing);
  stats.release_forward();

  // `model` is not kept: the smoothed graph is then the only holder of the weights it replaces.
  transformed = runtime::transform_model(*reload(), nullptr, transform);
  found = find_smoothquant_sites(*transformed.graph);
  bool same = found.sites.size() == site_names.size();
  for (size_t i = 0; same && i < site_names.size(); ++i) {
    same = found.sites[i].layer_norm == site_names[i];
  }
  if (!same) {
    throw_internal(setup.stage +
                   ": transforming the model again after the SmoothQuant pass found "
                   "other norms to smooth");
  }
  return apply_smoothquant(*transformed.graph, stats, options, std::move(found.refused));
}

}  // namespace

void check_setup(const CalibrationSetup& setup) {
  if (setup.batch < 1) {
    throw_invalid(setup.stage + ": batch must be at least 1, got " + std::to_string(setup.batch));
  }
  if (setup.limit < 0) {
    throw_invalid(setup.stage + ": limit must be 0 (all samples) or more, got " +
                  std::to_string(setup.limit));
  }
  if (!(setup.percentile > 0 && setup.percentile <= 100)) {
    throw_invalid(setup.stage + ": percentile must be in (0, 100], got " +
                  format_number(setup.percentile));
  }
  if (setup.smoothquant_alpha &&
      !(*setup.smoothquant_alpha >= 0 && *setup.smoothquant_alpha <= 1)) {
    throw_invalid(setup.stage + ": SmoothQuant alpha must be in [0, 1], got " +
                  format_number(*setup.smoothquant_alpha));
  }
}

PlacementOptions placement_options(const CalibrationSetup& setup) {
  PlacementOptions placement;
  placement.skip = setup.skip;
  placement.per_tensor_weights = setup.per_tensor_weights;
  return placement;
}

CalibrationResult calibrate(std::unique_ptr<graph::Graph> model, const ModelLoader& reload,
                            const SampleSource& data, const CalibrationSetup& setup,
                            const PipelineHooks& hooks) {
  check_setup(setup);
  runtime::SingleProcess alone;
  runtime::Communicator& comm = hooks.communicator ? *hooks.communicator : alone;
  const std::vector<size_t> indices = spread_indices(data.size(), setup.limit);
  if (indices.empty()) throw_invalid(setup.stage + ": the data holds no samples");
  CalibrationResult result;
  result.samples = indices.size();

  const runtime::TransformOptions transform = transform_options(setup);
  runtime::TransformResult transformed = runtime::transform_model(*model, nullptr, transform);
  result.conversions = transformed.conversions.applied();
  result.fusions = transformed.fusions.applied();
  check_memory(setup.stage, *model, *transformed.graph, setup.batch);

  // SmoothQuant comes first, so that every range below is taken on the smoothed model.
  if (setup.smoothquant_alpha) {
    const auto start = std::chrono::steady_clock::now();
    result.smoothing = smooth_model(setup, model, reload, transformed, data, indices,
                                    hooks.progress, comm, result.timing);
    result.timing.smoothquant_s = seconds_since(start);
  }
  const PlacementOptions placement = placement_options(setup);
  result.plan = place_qdq(*transformed.graph, placement);
  const QuantPlan& plan = result.plan;
  if (plan.activations.empty() && plan.weights.empty()) {
    throw_invalid(setup.stage + ": model '" + setup.model_name +
                  "' has no Q/DQ point to calibrate");
  }
  for (const ActivationPoint& p : plan.activations) {
    result.points.push_back({.module = point_module(*transformed.graph, p)});
  }

  // Every sample is used: a partial last batch runs through the model transformed at its own
  // size (a transformer's fused graph has the batch folded into its reshapes) and its
  // statistics merge exactly into the rest, so the scales do not depend on the batch. It runs
  // first, as the last use of the loaded model. Then the fused graph is the only holder of the
  // float weights, and the forward pass releases each as its kernels prepare their own form of
  // it: the weights are not in memory twice. The export reads them from the model again.
  // Named references rather than a structured binding: the pass below captures them, which
  // clang 14 refuses for bindings.
  const auto shares = rank_batches(indices, setup.batch, comm);
  const std::vector<size_t>& full_indices = shares.first;
  const std::vector<size_t>& rest_indices = shares.second;
  CalibrationOptions calibration_options;
  calibration_options.release_weights = true;
  // Released once the amax are known.
  auto stats_owner =
      std::make_unique<CalibrationStats>(std::move(transformed.graph), plan, calibration_options);
  CalibrationStats& stats = *stats_owner;
  const auto calibration_start = std::chrono::steady_clock::now();
  double first_batch_seconds = -1;  // the first full batch also builds the execution plan
  pass_on_every_rank(comm, result.timing, [&] {
    const auto progress =
        make_progress(hooks.progress, "calibrate", full_indices.size() + rest_indices.size());
    if (!rest_indices.empty()) {
      if (!model) model = reload();  // the SmoothQuant pass let it go
      const int64_t rows = static_cast<int64_t>(rest_indices.size());
      for_each_batch(
          data, rest_indices, rows, false, *progress,
          [&](std::span<const kernels::Tensor> input, const std::vector<int64_t>&, size_t) {
            const runtime::TransformResult partial =
                transform_at(*model, transform, static_cast<size_t>(rows));
            if (result.smoothing) fold_smoothing(*partial.graph, *result.smoothing);
            CalibrationStats partial_stats(*partial.graph, place_qdq(*partial.graph, placement));
            partial_stats.observe_batch(input);
            stats.merge(partial_stats);
          });
      if (full_indices.empty()) first_batch_seconds = seconds_since(calibration_start);
    }
    model.reset();
    for_each_batch(
        data, full_indices, setup.batch, false, *progress,
        [&](std::span<const kernels::Tensor> input, const std::vector<int64_t>&, size_t) {
          const auto batch_start = std::chrono::steady_clock::now();
          stats.observe_batch(input);
          if (first_batch_seconds < 0) first_batch_seconds = seconds_since(batch_start);
        });
    progress->finish();
  });
  merge_ranks(comm, stats, result.timing);
  result.timing.calibration_s = seconds_since(calibration_start);
  result.timing.first_batch_s = first_batch_seconds;
  if (hooks.calibration_pass_ended) hooks.calibration_pass_ended();

  const auto calibrators_start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < plan.activations.size(); ++i) {
    const ActivationPoint& p = plan.activations[i];
    PointCalibration& row = result.points[i];
    for (Calibrator m : kCalibrators) {
      if (m == Calibrator::kEntropy) {
        const EntropyChoice e = stats.entropy_choice(p);
        row.amax[static_cast<size_t>(m)] = e.amax;
        row.entropy_fell_back = e.fell_back_to_max;
        continue;
      }
      row.amax[static_cast<size_t>(m)] = stats.amax_for(p, m, setup.percentile);
    }
    result.amax[p.tensor] = static_cast<float>(row.amax_by(setup.method));
  }
  result.timing.calibrators_s = seconds_since(calibrators_start);
  result.weight_amax = stats.weight_amax();
  result.batches = stats.batches();
  return result;
}

std::unique_ptr<graph::Graph> fused_graph_for_export(std::unique_ptr<graph::Graph> model,
                                                     const CalibrationSetup& setup,
                                                     const CalibrationResult& result) {
  // Deterministic: the same graph as calibration's, checked by its placement.
  runtime::TransformResult again =
      runtime::transform_model(*model, nullptr, transform_options(setup));
  model.reset();
  if (result.smoothing) fold_smoothing(*again.graph, *result.smoothing);
  check_same_placement(setup.stage, result.plan, place_qdq(*again.graph, placement_options(setup)));
  return std::move(again.graph);
}

CalibrationResult with_setup_skips(const CalibrationResult& result, const graph::Graph& fused,
                                   const CalibrationSetup& setup) {
  CalibrationResult out = result;
  out.plan = place_qdq(fused, placement_options(setup));
  out.points.clear();
  out.amax.clear();
  out.weight_amax.clear();
  for (const ActivationPoint& p : out.plan.activations) {
    const ActivationPoint* calibrated = result.plan.find_activation(p.tensor);
    if (!calibrated) {
      throw_internal(setup.stage + ": a skip placed a Q/DQ point '" + p.tensor +
                     "' calibration did not");
    }
    PointCalibration row =
        result.points[static_cast<size_t>(calibrated - result.plan.activations.data())];
    row.module = point_module(fused, p);
    out.points.push_back(std::move(row));
    out.amax[p.tensor] = result.amax.at(p.tensor);
  }
  for (const WeightPoint& w : out.plan.weights) {
    out.weight_amax[w.node] = result.weight_amax.at(w.node);
  }
  return out;
}

ExportedModel export_qdq_model(std::unique_ptr<graph::Graph> fused, const QuantPlan& plan,
                               const ActivationAmax& amax, const QdqExportOptions& options,
                               const graph::ByteSink& sink, const graph::ByteSink& data_sink) {
  ExportedModel out;
  auto qdq = build_qdq_graph(*fused, plan, amax, options, &out.counts);
  fused.reset();
  runtime::restore_declared_batch(*qdq, options.batch);
  out.bytes = graph::write_onnx(std::move(qdq), sink, options.onnx, data_sink);
  return out;
}

}  // namespace qforge::quant
