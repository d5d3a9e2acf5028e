// How much one rounding flip moves a Q/DQ model's output: the integer of one element of one
// activation point moved by one step to the other side of its rounding boundary, the model run
// on from there, and the output of that element's sample compared with the unperturbed one.
// Over a seeded sample of such injections, the median and 90th percentile are the size of
// difference to expect between qforge's fake-quant and any deployed runtime from rounding alone
// (float summation order decides on which side a value near a boundary lands).
//
// Samples do not see each other in a model whose batch runtime::free_batch can follow, so one
// forward pass carries one injection per sample and measures each on its own sample's output:
// 32 injections on a batch of 32 take two passes (the unperturbed one and one with every flip),
// not 33. A model whose batch cannot be followed takes one pass per injection.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "graph/ir.h"
#include "kernels/tensor.h"

namespace qforge::quant {

// Whether model output `index` (of `dtype` and `shape`, run at `batch`) is one the evaluation
// compares and the flips are measured on: output 0, and every other float32 output whose axis 0
// is the batch.
inline bool compared_output(size_t index, kernels::DType dtype, std::span<const int64_t> shape,
                            int64_t batch) {
  return index == 0 || (dtype == kernels::DType::kFloat32 && !shape.empty() && shape[0] == batch);
}

struct FlipSensitivityOptions {
  int64_t injections = 32;
  uint64_t seed = 0;
  // The input's first rows that are distinct samples (the rest repeat one to fill a fixed
  // batch); injections go to these. 0: every row.
  int64_t samples = 0;
  // One injection per pass even where the model's samples are independent: the same draws and
  // the same figures, one pass each (a check of the batched passes).
  bool one_per_pass = false;
};

struct FlipSensitivity {
  int64_t injections = 0;
  int64_t points = 0;  // activation points the injections were drawn from
  int64_t passes = 0;  // forward passes with injections in them
  // Relative L2 change of the flipped sample's part of the outputs, per injection, in draw
  // order: of the output it moved most among those the evaluation compares (output 0 and every
  // other float32 output with the batch on axis 0; a detector's scores move where its first
  // output may not). Where the batch cannot be followed: of the output row that changed most.
  std::vector<double> changes;
  double median = 0;
  double p90 = 0;
};

// Injects options.injections flips into `model` (a Q/DQ graph as loaded; resolved here at the
// inputs' shapes) running `inputs` (a tensor per model input): each draws a point uniformly, then
// an element of it uniformly (where the batch can be followed: injection k goes to sample k mod
// samples, and the element is drawn from that sample's part of the point), moves that element's
// integer one step towards its pre-quant value's other neighbour (saturation permitting) and runs
// the model. Deterministic for a seed, any thread count. Invalid error when the model has no
// activation point.
FlipSensitivity flip_sensitivity(const graph::Graph& model, std::span<const kernels::Tensor> inputs,
                                 const FlipSensitivityOptions& options = {});
inline FlipSensitivity flip_sensitivity(const graph::Graph& model, const kernels::Tensor& input,
                                        const FlipSensitivityOptions& options = {}) {
  return flip_sensitivity(model, {&input, 1}, options);
}
// The same on a model the call consumes: its weights are released as the executor prepares them
// (runtime::ExecutorOptions::release_prepared_constants), so that the model's float weights and
// their prepared copies are never all resident together.
FlipSensitivity flip_sensitivity(std::unique_ptr<graph::Graph> model,
                                 std::span<const kernels::Tensor> inputs,
                                 const FlipSensitivityOptions& options = {});
inline FlipSensitivity flip_sensitivity(std::unique_ptr<graph::Graph> model,
                                        const kernels::Tensor& input,
                                        const FlipSensitivityOptions& options = {}) {
  return flip_sensitivity(std::move(model), {&input, 1}, options);
}

}  // namespace qforge::quant
