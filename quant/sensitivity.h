// Which modules cost the most accuracy when quantized: for each quantized module of a calibrated
// model, the Q/DQ model with that module alone kept float (what `--skip <module>` would write,
// with the same scales) measured against the float model, beside the model with every module
// quantized. A module whose skip lowers the KL divergence to float (or raises the output SQNR)
// the most is the first candidate to keep float when PTQ loses too much.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "quant/calibrate_pipeline.h"
#include "quant/evaluation.h"
#include "quant/pipeline_io.h"

namespace qforge::quant {

struct SkipSensitivity {
  std::string module;  // the module node's name, as --skip takes it
  std::string kind;    // its op type
  // What skipping it removes from the plan: activation Q/DQ points (a tensor another quantized
  // module also reads keeps its point), weight quantizers and attention softmax quantizers.
  size_t activation_points = 0;
  size_t weight_quantizers = 0;
  size_t softmax_quantizers = 0;
  Evaluation evaluation;  // the model with this module float, against the float model
};

struct SensitivityAnalysis {
  Evaluation all_quantized;  // every module of the plan quantized, against the float model
  std::vector<SkipSensitivity> modules;  // every quantized module, in graph order
};

// `fused` is the fused graph of `calibrated` (fused_graph_for_export with the same setup), at
// setup.batch; `reference` loads the float model. Each model runs over the samples
// evaluation.limit selects from `data` (no flip injections). The scales are calibrated's: a
// module kept float changes no other point's amax, since calibration observes the float model
// (a scale group takes the largest amax of the points that remain, as --skip would).
SensitivityAnalysis skip_sensitivity(const graph::Graph& fused, const CalibrationResult& calibrated,
                                     const CalibrationSetup& setup, const ModelLoader& reference,
                                     const SampleSource& data, const EvaluationSetup& evaluation,
                                     const ProgressFactory& progress = {});

// The modules to keep float for a target: the first modules of `order` (the costliest first,
// as a SensitivityAnalysis ranks them) kept float one more at a time, each model (what --skip
// of them all writes, with calibrated's scales) measured against `reference` on the samples of
// `evaluation`, until `reached` accepts one. A prefix of one ranking, not a search over
// combinations: another set of as many modules may do better.
struct SkipSearch {
  std::vector<std::string> kept_float;  // the modules kept float, in order
  Evaluation evaluation;                // the model with them float
  bool reached = false;                 // false: even with every module of `order` float
};

// `first`, when given, is the evaluation of the first model (order[0] alone kept float) on
// these samples, as a SensitivityAnalysis measured it: that model is not run again.
SkipSearch skip_until(const graph::Graph& fused, const CalibrationResult& calibrated,
                      const CalibrationSetup& setup, const std::vector<std::string>& order,
                      const std::function<bool(const Evaluation&)>& reached,
                      const ModelLoader& reference, const SampleSource& data,
                      const EvaluationSetup& evaluation, const ProgressFactory& progress = {},
                      const std::optional<Evaluation>& first = {});

}  // namespace qforge::quant
