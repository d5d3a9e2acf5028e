#include "quant/evaluation.h"

#include <algorithm>
#include <memory>
#include <span>
#include <vector>

#include "kernels/error.h"
#include "runtime/session.h"

namespace qforge::quant {
namespace {

size_t correct_rows(const std::string& stage, const kernels::Tensor& logits,
                    const std::vector<int64_t>& labels) {
  if (logits.rank() != 2 || logits.dtype() != kernels::DType::kFloat32) {
    throw_invalid(stage + ": accuracy needs a [N, classes] float output, got " + logits.describe());
  }
  const int64_t classes = logits.dim(1);
  size_t correct = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    const float* row = logits.data<float>() + static_cast<int64_t>(i) * classes;
    correct += std::max_element(row, row + classes) - row == labels[i];
  }
  return correct;
}

// Output 0 of a run, its first `rows` rows (the rest pad the batch); float32, as the
// comparison and the accuracy need.
kernels::Tensor float_output(const std::string& stage, std::span<const kernels::Tensor> outputs,
                             size_t rows) {
  const kernels::Tensor& out = outputs[0];
  if (out.dtype() != kernels::DType::kFloat32 || out.rank() == 0) {
    throw_invalid(stage +
                  ": the evaluation compares a float output with a batch axis; output 0 "
                  "is " +
                  out.describe());
  }
  return out.slice_rows(0, static_cast<int64_t>(rows));
}

}  // namespace

Evaluation evaluate(const ModelLoader& reference, const ModelLoader& quantized,
                    const SampleSource& data, const EvaluationSetup& setup,
                    const ProgressFactory& progress_factory, const FloatStoreFactory& store) {
  if (setup.batch < 1) {
    throw_invalid(setup.stage + ": batch must be at least 1, got " + std::to_string(setup.batch));
  }
  const std::vector<size_t> indices = spread_indices(data.size(), setup.limit);
  if (indices.empty()) throw_invalid(setup.stage + ": the evaluation data holds no samples");
  Evaluation result;
  result.samples = indices.size();
  result.labelled = data.labelled();
  runtime::SessionOptions one_shape;
  one_shape.executor.release_prepared_constants = true;
  std::unique_ptr<FloatStore> expected = store ? store() : std::make_unique<MemoryFloatStore>();
  {
    runtime::Session session(reference(), one_shape);
    const auto progress = make_progress(progress_factory, setup.reference_label, indices.size());
    for_each_batch(
        data, indices, setup.batch, true, *progress,
        [&](const kernels::Tensor& input, const std::vector<int64_t>& labels, size_t count) {
          const kernels::Tensor out = float_output(setup.stage, session.run(input), count);
          expected->append(out.span<float>());
          if (result.labelled) result.reference_correct += correct_rows(setup.stage, out, labels);
        });
    progress->finish();
  }
  runtime::OutputComparison comparison;
  kernels::Tensor first_batch;  // the flip injections run on it
  {
    runtime::Session session(quantized(), one_shape);
    const auto progress = make_progress(progress_factory, setup.quantized_label, indices.size());
    for_each_batch(
        data, indices, setup.batch, true, *progress,
        [&](const kernels::Tensor& input, const std::vector<int64_t>& labels, size_t count) {
          if (!first_batch.defined()) first_batch = input.clone();
          const kernels::Tensor got = float_output(setup.stage, session.run(input), count);
          kernels::Tensor expected_rows(kernels::DType::kFloat32, got.shape());
          expected->read(expected_rows.span<float>());
          comparison.add(expected_rows, got);
          if (result.labelled) result.quantized_correct += correct_rows(setup.stage, got, labels);
        });
    progress->finish();
  }
  result.figures = comparison.figures();
  if (setup.flip_injections > 0) {
    result.flips = flip_sensitivity(*quantized(), first_batch,
                                    {.injections = setup.flip_injections, .seed = setup.flip_seed});
  }
  return result;
}

}  // namespace qforge::quant
