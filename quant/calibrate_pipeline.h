// The post-training quantization pipeline as library calls: transform a float model at a fixed
// batch, optional SmoothQuant, Q/DQ placement, the observed calibration pass and amax per point
// (calibrate); the fused graph transformed again for the export (fused_graph_for_export); the
// Q/DQ ONNX model written from it (export_qdq_model). `qforge calibrate` and `qforge qat` are
// thin layers over these; the evaluation is in quant/evaluation.h.
//
// Memory: calibrate holds one copy of the float weights. The model it is given goes after the
// partial last batch has run; the fused graph's forward pass then releases each weight as its
// kernels prepare their own form of it. fused_graph_for_export reads the model again.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "graph/onnx_export.h"
#include "quant/calibrators.h"
#include "quant/pipeline_io.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "quant/smoothquant.h"
#include "runtime/communicator.h"

namespace qforge::quant {

// The four calibrators, in the order of PointCalibration::amax.
inline constexpr std::array<Calibrator, 4> kCalibrators = {
    Calibrator::kMax, Calibrator::kPercentile, Calibrator::kEntropy, Calibrator::kMse};

struct CalibrationSetup {
  // The name of the model in messages (its file, for the command line).
  std::string model_name = "model";
  // The batch the model is transformed and calibrated at; the exported model is fixed to it.
  // Every sample is used: a partial last batch runs through the model transformed at its size.
  int64_t batch = 32;
  // Calibrate on at most this many samples, spread evenly over the source (0: all).
  int64_t limit = 0;
  Calibrator method = Calibrator::kMse;
  double percentile = 99.99;  // of |x|, in (0, 100]; for Calibrator::kPercentile
  // Module node names, kinds or globs kept float (PlacementOptions::skip).
  std::vector<std::string> skip;
  // SmoothQuant before calibration with this migration strength in [0, 1].
  std::optional<double> smoothquant_alpha;
  // One scale per weight tensor (amax = max |w| over the whole batch-norm folded weight) instead
  // of one per output channel.
  bool per_tensor_weights = false;
  // Stage name in the messages of errors (the memory budget, a model without Q/DQ points).
  std::string stage = "calibrate";
};

// Invalid error naming the field when a setup value is out of range.
void check_setup(const CalibrationSetup& setup);

// The placement options the setup implies (skip, weight granularity).
PlacementOptions placement_options(const CalibrationSetup& setup);

// What every calibrator gives one activation point.
struct PointCalibration {
  std::string module;  // "ConvBNAct layer1.0.conv1" for its first reader, "+N" for the others
  std::array<double, 4> amax{};    // by kCalibrators order
  bool entropy_fell_back = false;  // entropy's threshold clipped too much; its amax is max's
  double amax_by(Calibrator method) const { return amax[static_cast<size_t>(method)]; }
};

struct CalibrationTiming {
  double smoothquant_s = 0;  // SmoothQuant's statistics pass
  double calibration_s = 0;  // the calibration pass over the data
  double first_batch_s = 0;  // its first full batch (with building the execution plan)
  double calibrators_s = 0;  // amax of every point by the four calibrators
  // With several ranks: waiting for the other ranks at the end of each pass over the data (the
  // agreement that no rank failed), and exchanging and merging their statistics.
  double waiting_s = 0;
  double communication_s = 0;
  size_t communicated_bytes = 0;  // this rank's statistics, as sent to every other rank
};

struct CalibrationResult {
  QuantPlan plan;
  std::vector<PointCalibration> points;  // one per plan.activations, in that order
  ActivationAmax amax;                   // the chosen method's (entropy guarded) by tensor
  // Max |w| per output channel (a single entry with per-tensor weights) of every weight point's
  // batch-norm folded weight, by module node name.
  std::map<std::string, std::vector<float>> weight_amax;
  std::optional<SmoothQuantResult> smoothing;  // with setup.smoothquant_alpha
  size_t conversions = 0;                      // conversions the transform applied
  size_t fusions = 0;                          // fusions the transform applied
  size_t samples = 0;                          // calibration samples
  int64_t batches = 0;                         // forward passes (a partial last batch counts)
  CalibrationTiming timing;
};

// Optional hooks into calibrate.
struct PipelineHooks {
  ProgressFactory progress;
  // Called once when the calibration pass has ended, before the calibrators run: everything
  // calibration needs is resident then (the command line reads its peak memory here).
  std::function<void()> calibration_pass_ended;
  // The ranks of a data-parallel run (null: this process alone). Each rank reads and runs its
  // share of the samples (runtime::share_of over whole batches, the partial last batch on the
  // last rank); the statistics are merged exactly, so every rank returns the result one process
  // would. A failure on any rank is the same error on every rank (runtime::collectively).
  runtime::Communicator* communicator = nullptr;
};

// Calibrates `model` (a float model as loaded; taken, and released as soon as it is not
// needed) on the samples setup.limit selects from `data`. `reload` reads the model again where
// SmoothQuant needs it. Invalid error when the data holds no sample, a setup value is out of
// range, the model has no Q/DQ point, or the plans at setup.batch exceed the memory budget.
CalibrationResult calibrate(std::unique_ptr<graph::Graph> model, const ModelLoader& reload,
                            const SampleSource& data, const CalibrationSetup& setup,
                            const PipelineHooks& hooks = {});

// `model` (taken) transformed again at setup.batch as calibrate transformed it, with the
// SmoothQuant factors of `result` folded in: the fused graph the plan's points name, holding
// its float weights. Internal error when its placement differs from result.plan. A QAT trainer
// trains this graph and exports it with export_qdq_model.
std::unique_ptr<graph::Graph> fused_graph_for_export(std::unique_ptr<graph::Graph> model,
                                                     const CalibrationSetup& setup,
                                                     const CalibrationResult& result);

// `result` as calibrate would return it with `setup`, whose skip list adds modules to the one
// `result` was calibrated with: the plan `fused` (the fused graph of `result`) places under it,
// and the points, amax and weight ranges of the points that remain, unchanged (calibration
// observes the float model, so keeping a module float changes no other point's statistics).
CalibrationResult with_setup_skips(const CalibrationResult& result, const graph::Graph& fused,
                                   const CalibrationSetup& setup);

struct ExportedModel {
  QdqCounts counts;
  size_t bytes = 0;  // ONNX bytes written
};

// build_qdq_graph(fused, plan, amax), `fused` released before serializing, the model's declared
// batch restored (options.batch), the bytes streamed to `sink` (with options.onnx.external_data,
// the data file's to `data_sink` first).
ExportedModel export_qdq_model(std::unique_ptr<graph::Graph> fused, const QuantPlan& plan,
                               const ActivationAmax& amax, const QdqExportOptions& options,
                               const graph::ByteSink& sink, const graph::ByteSink& data_sink = {});

}  // namespace qforge::quant
