// The whole float transformation as library calls: resolve a copy of the model at one batch,
// run the conversions to a fixed point, plan and apply the fusions, lower the modules back to
// standard ONNX and check that the result still computes what the model computes. It lives in
// runtime/ because resolution (constant folding) and the equivalence check execute graphs.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "graph/pattern.h"
#include "graph/plan.h"
#include "kernels/tensor.h"
#include "runtime/batch_dimension.h"

namespace qforge::runtime {

// Float rewrites must keep every output within this relative distance of the original.
inline constexpr double kEquivalenceTolerance = 1e-5;

struct TransformOptions {
  // The batch the input shapes are resolved at; the transformed graph's shapes are static at it.
  int64_t batch = 1;
  graph::ConversionOptions conversions;
  // Where a given plan came from (e.g. its file), named in the errors about its entries.
  std::string plan_source = "plan";
};

struct TransformResult {
  // Resolved and converted; fused too when the plan was applied. Modules are not lowered.
  std::unique_ptr<graph::Graph> graph;
  graph::PlanReport conversions;  // what each conversion pattern applied, over all rounds
  graph::Plan plan;               // the fusion plan, over the converted graph's node names
  graph::PlanReport fusions;      // per fusion pattern; every count zero when only planned
};

// Clones `model`, resolves it at options.batch, runs every conversion to a fixed point and
// plans the fusions on the result, without applying them.
TransformResult plan_model(const graph::Graph& model, const TransformOptions& options);

// plan_model, then applies `plan` (the fresh plan when null). A given plan is checked against
// the converted graph first: Invalid error naming the entry when its pattern is not a fusion or
// one of its nodes (applied or not) is not in the graph, so a plan made for another model or
// another batch's conversions is refused rather than silently ignored.
TransformResult transform_model(const graph::Graph& model, const graph::Plan* plan,
                                const TransformOptions& options);

// A plan's entries counted per pattern without applying them: applied = apply on, skipped = off.
graph::PlanReport count_plan(const graph::Plan& plan, std::span<const graph::Pattern> patterns);

// Seeded standard-normal float32 inputs of the model's input shapes at `batch`: the sample a
// transformation is checked on when the user gives no data.
std::vector<kernels::Tensor> random_normal_inputs(const graph::Graph& model, int64_t batch,
                                                  uint64_t seed = 0);

struct EquivalenceFigures {
  size_t elements = 0;
  // Elements finite in one output and not (or a different non-finite) in the other.
  size_t nonfinite_mismatches = 0;
  // Elements of integer outputs (indices, counts), compared exactly, that differ.
  size_t integer_mismatches = 0;
  double max_abs_diff = 0;       // max |reference - candidate| over every output
  double max_abs_reference = 0;  // max |reference|
  double relative = 0;           // max_abs_diff / max(1, max_abs_reference)
  bool equivalent = true;        // relative <= tolerance, no non-finite or integer mismatch
};

// Runs `reference` and `candidate` (unresolved or resolved graphs with the same interface) on
// every batch of inputs and compares all outputs. Invalid error when an output's shape or dtype
// differs, naming the output.
EquivalenceFigures check_equivalence(const graph::Graph& reference, const graph::Graph& candidate,
                                     std::span<const std::vector<kernels::Tensor>> batches,
                                     double tolerance = kEquivalenceTolerance);

// Module nodes of a transformed graph by kind (ConvBNAct: 5, SDPA: 12, …).
std::map<std::string, size_t> count_modules(const graph::Graph& graph);

struct CheckedExport {
  std::string onnx_bytes;  // the serialized lowered model; empty when a check failed
  // With an external data name: the data file's bytes, which onnx_bytes refers to.
  std::string external_data_bytes;
  size_t lowered_modules = 0;
  // The last check that ran: the re-imported bytes when the in-memory lowered graph passed,
  // else the in-memory lowered graph.
  EquivalenceFigures figures;
  std::string checked;  // "lowered graph" or "written model": what `figures` measured
};

// Lowers `fused`, checks the lowered graph against `original` on `batches`, restores the
// batch the model declared (restore_declared_batch with `batch`), serializes it at the
// original's opset, re-imports those bytes and checks them too. Writing is left to the caller so
// that nothing is written unless `figures.equivalent`.
// With `external_data` (a file name), the weights are serialized as external data in that file
// (graph::ExportOptions::external_data) and re-imported from memory.
CheckedExport lower_and_check(const graph::Graph& original, const graph::Graph& fused,
                              std::span<const std::vector<kernels::Tensor>> batches,
                              double tolerance = kEquivalenceTolerance,
                              const BatchExportOptions& batch = {},
                              const std::string& external_data = {});

}  // namespace qforge::runtime
