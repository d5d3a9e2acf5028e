#include "quant/evaluation.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "kernels/error.h"
#include "quant/shared_prefix.h"
#include "runtime/session.h"

namespace qforge::quant {
namespace {

// The outputs of a run the evaluation compares, their first `rows` rows (the rest pad the
// batch of `batch` rows): output 0, which must be float32 with a batch axis, and every other
// float32 output whose axis 0 is the batch.
std::vector<kernels::Tensor> compared_outputs(const std::string& stage,
                                              std::span<const kernels::Tensor> outputs,
                                              int64_t batch, size_t rows) {
  const kernels::Tensor& first = outputs[0];
  if (first.dtype() != kernels::DType::kFloat32 || first.rank() == 0) {
    throw_invalid(stage +
                  ": the evaluation compares a float output with a batch axis; output 0 "
                  "is " +
                  first.describe());
  }
  std::vector<kernels::Tensor> compared;
  for (size_t k = 0; k < outputs.size(); ++k) {
    const kernels::Tensor& out = outputs[k];
    if (!compared_output(k, out.dtype(), out.shape(), batch)) continue;
    compared.push_back(out.slice_rows(0, static_cast<int64_t>(rows)));
  }
  return compared;
}

// The names of the outputs compared_outputs keeps of `model`'s run.
std::vector<std::string> compared_names(const graph::Graph& model,
                                        std::span<const kernels::Tensor> outputs, int64_t batch) {
  std::vector<std::string> names;
  for (size_t k = 0; k < outputs.size(); ++k) {
    if (compared_output(k, outputs[k].dtype(), outputs[k].shape(), batch)) {
      names.push_back(model.outputs()[k]->name());
    }
  }
  return names;
}

// log softmax(row) in double: x − max − log Σ exp(x − max), summed in index order.
void log_softmax(std::span<const float> row, std::vector<double>& out) {
  out.resize(row.size());
  double top = -INFINITY;
  for (float x : row) top = std::max(top, static_cast<double>(x));
  double sum = 0;
  for (float x : row) sum += std::exp(static_cast<double>(x) - top);
  const double log_sum = std::log(sum);
  for (size_t i = 0; i < row.size(); ++i) out[i] = static_cast<double>(row[i]) - top - log_sum;
}

// Running sums of the cross-entropy and KL figures, added row by row in sample order.
struct DivergenceSums {
  double cross_entropy = 0;
  double kl = 0;
  std::vector<double> log_p;
  std::vector<double> log_q;
};

std::span<const float> row_of(const kernels::Tensor& t, int64_t row) {
  const int64_t classes = t.dim(1);
  return {t.data<float>() + row * classes, static_cast<size_t>(classes)};
}

double kl_of_log_probabilities(const std::vector<double>& log_p, const std::vector<double>& log_q) {
  double kl = 0;
  for (size_t i = 0; i < log_p.size(); ++i) kl += std::exp(log_p[i]) * (log_p[i] - log_q[i]);
  return kl;
}

}  // namespace

bool classifier_output(const kernels::Tensor& logits) {
  return logits.rank() == 2 && logits.dtype() == kernels::DType::kFloat32;
}

size_t top1_correct(const std::string& stage, const kernels::Tensor& logits,
                    std::span<const int64_t> labels) {
  if (!classifier_output(logits)) {
    throw_invalid(stage + ": accuracy needs a [N, classes] float output, got " + logits.describe());
  }
  const int64_t classes = logits.dim(1);
  size_t correct = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= classes) {
      throw_invalid(stage + ": label " + std::to_string(labels[i]) + " is outside the model's " +
                    std::to_string(classes) + " classes");
    }
    const float* row = logits.data<float>() + static_cast<int64_t>(i) * classes;
    correct += std::max_element(row, row + classes) - row == labels[i];
  }
  return correct;
}

double row_cross_entropy(std::span<const float> logits, int64_t label) {
  std::vector<double> log_p;
  log_softmax(logits, log_p);
  return -log_p.at(static_cast<size_t>(label));
}

double row_kl_divergence(std::span<const float> reference, std::span<const float> quantized) {
  std::vector<double> log_p, log_q;
  log_softmax(reference, log_p);
  log_softmax(quantized, log_q);
  return kl_of_log_probabilities(log_p, log_q);
}

namespace {

// The reference pass over `indices`, under its own bar: its outputs appended to `expected`. Returns
// the figures each quantized model's evaluation starts from: the samples, whether they count as
// labelled (a classifier output), the reference's correct rows and mean cross-entropy.
Evaluation reference_pass(const ModelLoader& reference, const SampleSource& data,
                          std::span<const size_t> indices, const EvaluationSetup& setup,
                          const ProgressFactory& progress_factory, FloatStore& expected) {
  Evaluation result;
  result.samples = indices.size();
  result.labelled = data.labelled();
  runtime::SessionOptions one_shape;
  one_shape.executor.release_prepared_constants = true;
  runtime::Session session(reference(), one_shape);
  const auto progress = make_progress(progress_factory, setup.reference_label, indices.size());
  std::vector<double> log_p;
  double reference_ce = 0;
  for_each_batch(data, indices, setup.batch, true, *progress,
                 [&](std::span<const kernels::Tensor> inputs, const std::vector<int64_t>& labels,
                     size_t count) {
                   const std::span<const kernels::Tensor> run = session.run(inputs);
                   const int64_t rows = inputs.front().dim(0);
                   const std::vector<kernels::Tensor> compared =
                       compared_outputs(setup.stage, run, rows, count);
                   if (result.outputs.empty() && compared.size() > 1) {
                     for (std::string& name : compared_names(session.graph(), run, rows)) {
                       result.outputs.push_back({.name = std::move(name), .figures = {}});
                     }
                   }
                   for (const kernels::Tensor& out : compared) expected.append(out.span<float>());
                   const kernels::Tensor& out = compared.front();
                   // Class labels say nothing about a dense output (a detector's boxes, a
                   // segmentation map) nor about a model of several: such a model is compared
                   // with the reference only.
                   result.labelled =
                       result.labelled && compared.size() == 1 && classifier_output(out);
                   if (result.labelled) {
                     result.reference_correct += top1_correct(setup.stage, out, labels);
                     for (size_t i = 0; i < labels.size(); ++i) {
                       log_softmax(row_of(out, static_cast<int64_t>(i)), log_p);
                       reference_ce += -log_p[static_cast<size_t>(labels[i])];
                     }
                   }
                 });
  progress->finish();
  if (result.labelled) {
    result.reference_cross_entropy = reference_ce / static_cast<double>(indices.size());
  }
  return result;
}

// A model's outputs for a batch of inputs, the batch's index in the pass given.
using BatchRun =
    std::function<std::span<const kernels::Tensor>(std::span<const kernels::Tensor>, size_t)>;

// A session of `model`, run with its weights released as its kernels prepare them.
std::unique_ptr<runtime::Session> session_of(std::unique_ptr<graph::Graph> model) {
  runtime::SessionOptions one_shape;
  one_shape.executor.release_prepared_constants = true;
  return std::make_unique<runtime::Session>(std::move(model), one_shape);
}

BatchRun whole_model(runtime::Session& session) {
  return
      [&session](std::span<const kernels::Tensor> inputs, size_t) { return session.run(inputs); };
}

// The quantized pass: the outputs `run` gives against the reference's, read from `expected` in
// order, into `result` (figures, top-1, KL, cross-entropy); the first batch's inputs into
// `first_batch` when given.
void quantized_pass(const BatchRun& run, const SampleSource& data, std::span<const size_t> indices,
                    const EvaluationSetup& setup, ProgressBar& progress, FloatStore& expected,
                    Evaluation& result, std::vector<kernels::Tensor>* first_batch,
                    int64_t* first_count) {
  const size_t compared = std::max<size_t>(result.outputs.size(), 1);
  std::vector<runtime::OutputComparison> comparisons(compared);
  size_t batch = 0;
  DivergenceSums sums;
  // Every batch's one compared output is [rows, classes] float.
  bool classifier = compared == 1;
  for_each_batch(
      data, indices, setup.batch, true, progress,
      [&](std::span<const kernels::Tensor> inputs, const std::vector<int64_t>& labels,
          size_t count) {
        if (first_batch && first_batch->empty()) {
          for (const kernels::Tensor& input : inputs) first_batch->push_back(input.clone());
          *first_count = static_cast<int64_t>(count);
        }
        const std::vector<kernels::Tensor> outputs =
            compared_outputs(setup.stage, run(inputs, batch++), inputs.front().dim(0), count);
        if (outputs.size() != compared) {
          throw_invalid(setup.stage + ": the model compared has " + std::to_string(outputs.size()) +
                        " float outputs with a batch axis, its reference " +
                        std::to_string(compared));
        }
        kernels::Tensor expected_rows;
        for (size_t k = 0; k < compared; ++k) {
          expected_rows = kernels::Tensor(kernels::DType::kFloat32, outputs[k].shape());
          expected.read(expected_rows.span<float>());
          comparisons[k].add(expected_rows, outputs[k]);
        }
        if (compared > 1) return;
        const kernels::Tensor& got = outputs.front();
        if (result.labelled) result.quantized_correct += top1_correct(setup.stage, got, labels);
        classifier = classifier && classifier_output(got);
        if (!classifier) return;
        for (int64_t i = 0; i < got.dim(0); ++i) {
          log_softmax(row_of(expected_rows, i), sums.log_p);
          log_softmax(row_of(got, i), sums.log_q);
          sums.kl += kl_of_log_probabilities(sums.log_p, sums.log_q);
          if (result.labelled) {
            sums.cross_entropy += -sums.log_q[static_cast<size_t>(labels[static_cast<size_t>(i)])];
          }
        }
      });
  if (compared == 1) {
    result.figures = comparisons.front().figures();
  } else {
    // The lowest SQNR speaks for the model; top-1 agreement is a classifier's figure.
    for (size_t k = 0; k < compared; ++k) {
      result.outputs[k].figures = comparisons[k].figures();
      if (k == 0 || result.outputs[k].figures.sqnr_db < result.figures.sqnr_db) {
        result.figures = result.outputs[k].figures;
      }
    }
    result.figures.top1_agreement.reset();
    result.figures.rows = 0;
    result.figures.agreeing_rows = 0;
  }
  const auto samples = static_cast<double>(result.samples);
  if (classifier) result.kl_divergence = sums.kl / samples;
  if (result.labelled) result.quantized_cross_entropy = sums.cross_entropy / samples;
}

// `setup` at a batch of no more than `samples`: fewer samples than a batch run as one batch of
// their own, not padded to the batch (a sample's outputs do not depend on the batch it runs in).
EvaluationSetup fitted(const EvaluationSetup& setup, size_t samples) {
  EvaluationSetup fit = setup;
  fit.batch = std::min<int64_t>(setup.batch, static_cast<int64_t>(samples));
  return fit;
}

std::vector<size_t> evaluation_indices(const SampleSource& data, const EvaluationSetup& setup) {
  if (setup.batch < 1) {
    throw_invalid(setup.stage + ": batch must be at least 1, got " + std::to_string(setup.batch));
  }
  std::vector<size_t> indices = spread_indices(data.size(), setup.limit);
  if (indices.empty()) throw_invalid(setup.stage + ": the evaluation data holds no samples");
  return indices;
}

}  // namespace

Evaluation evaluate(const ModelLoader& reference, const ModelLoader& quantized,
                    const SampleSource& data, const EvaluationSetup& requested,
                    const ProgressFactory& progress_factory, const FloatStoreFactory& store) {
  const std::vector<size_t> indices = evaluation_indices(data, requested);
  const EvaluationSetup setup = fitted(requested, indices.size());
  std::unique_ptr<FloatStore> expected = store ? store() : std::make_unique<MemoryFloatStore>();
  Evaluation result = reference_pass(reference, data, indices, setup, progress_factory, *expected);
  std::vector<kernels::Tensor> first_batch;  // flips are injected in its first first_count rows
  int64_t first_count = 0;
  {
    const auto progress = make_progress(progress_factory, setup.quantized_label, indices.size());
    const auto session = session_of(quantized());
    quantized_pass(whole_model(*session), data, indices, setup, *progress, *expected, result,
                   &first_batch, &first_count);
    progress->finish();
  }
  if (setup.flip_injections > 0) {
    result.flips = flip_sensitivity(
        quantized(), first_batch,
        {.injections = setup.flip_injections, .seed = setup.flip_seed, .samples = first_count});
  }
  return result;
}

std::vector<Evaluation> evaluate_each(const ModelLoader& reference,
                                      std::span<const ModelLoader> quantized,
                                      const SampleSource& data, const EvaluationSetup& requested,
                                      const ProgressFactory& progress_factory,
                                      const std::function<bool(const Evaluation&)>& stop) {
  const std::vector<size_t> indices = evaluation_indices(data, requested);
  const EvaluationSetup setup = fitted(requested, indices.size());
  // Every model reads the same samples: they are read once and kept, unless they would take
  // more than kKeptSampleBytes.
  std::optional<KeptSamples> kept;
  if (quantized.size() > 1 && KeptSamples::bytes(data, indices.size()) <= kKeptSampleBytes) {
    kept.emplace(data, indices);
  }
  const SampleSource& samples = kept ? static_cast<const SampleSource&>(*kept) : data;
  MemoryFloatStore expected;
  const Evaluation base =
      reference_pass(reference, samples, indices, setup, progress_factory, expected);
  std::vector<Evaluation> results;
  results.reserve(quantized.size());
  const auto progress = make_progress(progress_factory, setup.quantized_label, quantized.size());
  const std::unique_ptr<ProgressBar> silent = make_progress({}, "", 0);
  for (const ModelLoader& model : quantized) {
    Evaluation result = base;
    MemoryFloatStore replay = expected;  // read from its start for each model
    const auto session = session_of(model());
    quantized_pass(whole_model(*session), samples, indices, setup, *silent, replay, result, nullptr,
                   nullptr);
    results.push_back(std::move(result));
    progress->advance(1);
    if (stop && stop(results.back())) break;
  }
  progress->finish();
  return results;
}

namespace {

// A base model's values at a cut, for every batch of a pass, by name.
using BatchValues = std::vector<std::map<std::string, kernels::Tensor, std::less<>>>;

// The tensors a graph's inputs name, from one batch's values.
std::vector<kernels::Tensor> inputs_from(
    const graph::Graph& g, const std::map<std::string, kernels::Tensor, std::less<>>& values) {
  std::vector<kernels::Tensor> inputs;
  for (const graph::Value* v : g.inputs()) inputs.push_back(values.at(v->name()));
  return inputs;
}

size_t bytes_at(const std::vector<const graph::Value*>& live, size_t batches) {
  size_t bytes = 0;
  for (const graph::Value* v : live) {
    if (!v->has_shape()) return SIZE_MAX;
    bytes +=
        static_cast<size_t>(kernels::shape_numel(*v->shape())) * kernels::dtype_size(v->dtype());
  }
  return bytes * batches;
}

}  // namespace

std::vector<Evaluation> evaluate_variants(const ModelLoader& reference, const ModelLoader& base,
                                          std::span<const ModelLoader> variants,
                                          const SampleSource& data,
                                          const EvaluationSetup& requested,
                                          const ProgressFactory& progress_factory) {
  const std::vector<size_t> indices = evaluation_indices(data, requested);
  const EvaluationSetup setup = fitted(requested, indices.size());
  std::optional<KeptSamples> kept;
  if (KeptSamples::bytes(data, indices.size()) <= kKeptSampleBytes) kept.emplace(data, indices);
  const SampleSource& samples = kept ? static_cast<const SampleSource&>(*kept) : data;
  MemoryFloatStore expected;
  const Evaluation start =
      reference_pass(reference, samples, indices, setup, progress_factory, expected);
  std::vector<Evaluation> results;
  results.reserve(variants.size() + 1);
  const auto progress = make_progress(progress_factory, setup.quantized_label, variants.size() + 1);
  const std::unique_ptr<ProgressBar> silent = make_progress({}, "", 0);
  auto measure = [&](const BatchRun& run) {
    Evaluation result = start;
    MemoryFloatStore replay = expected;  // read from its start for each model
    quantized_pass(run, samples, indices, setup, *silent, replay, result, nullptr, nullptr);
    results.push_back(std::move(result));
    progress->advance(1);
  };

  std::unique_ptr<graph::Graph> base_graph = base();
  {
    const auto session = session_of(base_graph->clone());
    measure(whole_model(*session));
  }
  // Runs from a cut hold the base's values for each batch: the samples must be kept, and the
  // model take its inputs at the batch of the evaluation.
  bool from_cuts = kept.has_value();
  std::vector<std::string> input_names;
  for (const graph::Value* input : base_graph->inputs()) {
    from_cuts = from_cuts && input->has_shape() && !input->shape()->empty() &&
                (*input->shape())[0] == setup.batch;
    input_names.push_back(input->name());
  }
  const SharedPrefix prefix(std::move(base_graph));
  const auto per_batch = static_cast<size_t>(setup.batch);
  const size_t batches = (indices.size() + per_batch - 1) / per_batch;
  // The base's values at `cut` for each batch; empty until a variant first runs from them.
  BatchValues held;
  size_t cut = 0;
  for (const ModelLoader& variant : variants) {
    std::unique_ptr<graph::Graph> graph = variant();
    SharedPrefix::Departure d = prefix.departure(*graph);
    const std::vector<const graph::Value*> at_cut = prefix.live(d.cut);
    if (!from_cuts || !d.rest || d.cut == 0 || d.cut < cut ||
        bytes_at(at_cut, batches) > kKeptSampleBytes) {
      const auto session = session_of(std::move(graph));
      measure(whole_model(*session));
      continue;
    }
    if (held.empty()) {  // the values at cut 0: the input batches themselves
      const std::unique_ptr<ProgressBar> none = make_progress({}, "", 0);
      for_each_batch(
          samples, indices, setup.batch, true, *none,
          [&](std::span<const kernels::Tensor> rows, const std::vector<int64_t>&, size_t) {
            std::map<std::string, kernels::Tensor, std::less<>> values;
            for (size_t k = 0; k < rows.size(); ++k) {
              values.emplace(input_names[k], rows[k].clone());
            }
            held.push_back(std::move(values));
          });
      cut = 0;
    }
    if (d.cut > cut) {
      // The base's nodes from the held cut to this one, as the variant (which computes them
      // alike) holds them; values that pass the segment by are kept as they are.
      auto segment = prefix.segment(*graph, cut, d.cut);
      std::vector<std::string> produced;
      for (const graph::Value* v : segment->outputs()) produced.push_back(v->name());
      std::vector<std::string> live;
      bool complete = true;  // every value of the new cut is produced or held
      for (const graph::Value* v : at_cut) {
        live.push_back(v->name());
        complete =
            complete && (held.front().count(v->name()) ||
                         std::find(produced.begin(), produced.end(), v->name()) != produced.end());
      }
      if (!complete) {  // held again from the inputs when a variant next runs from a cut
        held.clear();
        cut = 0;
        const auto session = session_of(std::move(graph));
        measure(whole_model(*session));
        continue;
      }
      const auto session = session_of(std::move(segment));
      for (auto& values : held) {
        const std::span<const kernels::Tensor> out =
            session->run(inputs_from(session->graph(), values));
        std::map<std::string, kernels::Tensor, std::less<>> next;
        for (size_t i = 0; i < produced.size(); ++i) next.emplace(produced[i], out[i].clone());
        for (const std::string& name : live) {
          if (!next.count(name)) next.emplace(name, std::move(values.at(name)));
        }
        values = std::move(next);
      }
      cut = d.cut;
    }
    graph.reset();
    const auto session = session_of(std::move(d.rest));
    measure([&](std::span<const kernels::Tensor>, size_t batch) {
      return session->run(inputs_from(session->graph(), held.at(batch)));
    });
  }
  progress->finish();
  return results;
}

}  // namespace qforge::quant
