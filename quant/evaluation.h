// A quantized model measured against its reference over a sample source: output agreement
// (SQNR, cosine, top-1 agreement, KL divergence of the softmax outputs), accuracy and
// cross-entropy of each when the samples are labelled, and the output change one rounding flip
// causes. Both models run at one fixed batch, setup.batch or the number of samples when fewer (a
// partial last batch is padded with copies of its last sample and the padded rows ignored), one
// model in memory at a time: the reference's outputs wait in a FloatStore for the quantized
// model's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "quant/flip_sensitivity.h"
#include "quant/pipeline_io.h"
#include "runtime/compare.h"

namespace qforge::quant {

struct EvaluationSetup {
  int64_t batch = 32;
  int64_t limit = 0;  // at most this many samples, spread evenly over the source (0: all)
  // Rounding flips injected into the quantized model (on the first evaluation batch) to
  // measure the output change one flip causes; 0 skips the measurement.
  int64_t flip_injections = 32;
  uint64_t flip_seed = 0;
  // Progress bar labels of the two passes.
  std::string reference_label = "float model";
  std::string quantized_label = "Q/DQ model";
  // Stage name in the messages of errors.
  std::string stage = "calibrate";
};

// One output's agreement, for a model of several compared outputs.
struct OutputFigures {
  std::string name;
  runtime::ComparisonFigures figures;
};

struct Evaluation {
  size_t samples = 0;
  // The quantized model's output against the reference's: of a model of one compared output,
  // that output; of several (a detector's boxes and scores), the one of lowest SQNR, with no
  // top-1 agreement (no output is a classifier's then).
  runtime::ComparisonFigures figures;
  // Every compared output in the model's order, when there are several: the float32 outputs
  // that carry the batch on axis 0 (output 0 must be one).
  std::vector<OutputFigures> outputs;
  // Labelled samples and one [N, classes] output: accuracy and cross-entropy apply.
  bool labelled = false;
  size_t reference_correct = 0;  // rows whose argmax is the label (labelled data only)
  size_t quantized_correct = 0;
  // Mean cross-entropy of each model's logits against the labels, in nats (labelled data
  // only): −log softmax(row)[label], averaged over the samples.
  std::optional<double> reference_cross_entropy;
  std::optional<double> quantized_cross_entropy;
  // Mean KL(softmax(reference) ‖ softmax(quantized)) over the samples, in nats, for a
  // [N, classes] output. Like the cross-entropies, computed in double (log-softmax with the
  // row maximum subtracted) and summed in sample order, so a run's figure is reproducible.
  std::optional<double> kl_divergence;
  std::optional<FlipSensitivity> flips;  // when setup.flip_injections > 0
};

// Whether a model output is what top-1 reads: [N, classes] float32 logits.
bool classifier_output(const kernels::Tensor& logits);

// How many of the first labels.size() rows of logits [N, classes] have their largest value (the
// first, on ties) at the label. Invalid errors, prefixed with `stage`: logits that are not a
// classifier output, a label outside [0, classes).
size_t top1_correct(const std::string& stage, const kernels::Tensor& logits,
                    std::span<const int64_t> labels);

// The per-row terms, exposed for the tests: the cross-entropy of one row of logits against a
// label, and KL(softmax(reference) ‖ softmax(quantized)) of one pair of rows, both in nats and
// computed in double.
double row_cross_entropy(std::span<const float> logits, int64_t label);
double row_kl_divergence(std::span<const float> reference, std::span<const float> quantized);

// Runs `reference` then `quantized` (each loaded when its pass starts, run with its weights
// released as its kernels prepare them) over the samples of `data` setup.limit selects, in
// batches of setup.batch, and compares the outputs of the two that are float32 with the batch
// on axis 0 (output 0 must be; Invalid error otherwise). Accuracy needs a model whose one such
// output is [N, classes]. `store` holds the reference outputs
// (in memory when empty).
Evaluation evaluate(const ModelLoader& reference, const ModelLoader& quantized,
                    const SampleSource& data, const EvaluationSetup& setup,
                    const ProgressFactory& progress = {}, const FloatStoreFactory& store = {});

// `reference` run once over the samples, then each of `quantized` in turn (one model in memory
// at a time), each compared with the reference as evaluate compares them (no flip injections;
// the reference outputs are held in memory, and so are the samples, read once, when there are
// several models and the samples take at most 256 MiB). `progress` gets a bar over the reference's
// samples and one over the quantized models. With `stop`, the models after the first whose
// evaluation it accepts are neither loaded nor run.
std::vector<Evaluation> evaluate_each(const ModelLoader& reference,
                                      std::span<const ModelLoader> quantized,
                                      const SampleSource& data, const EvaluationSetup& setup,
                                      const ProgressFactory& progress = {},
                                      const std::function<bool(const Evaluation&)>& stop = {});

// evaluate_each of `base` and then each of `variants`, for variants that compute what the base
// computes up to some node (a Q/DQ model with one module kept float, beside the all-quantized
// one). The base runs whole; each variant runs from the base's values where it departs from
// the base (quant/shared_prefix.h), held for every batch while they take at most
// kKeptSampleBytes, so a variant that departs late costs a short run. A variant that departs
// before an earlier one, or whose cut holds more than that, runs whole. The same figures as
// evaluate_each gives, bit for bit: each node computes what it computes in the whole model.
// One model in memory at a time, besides the base's structure and the values at the cut.
std::vector<Evaluation> evaluate_variants(const ModelLoader& reference, const ModelLoader& base,
                                          std::span<const ModelLoader> variants,
                                          const SampleSource& data, const EvaluationSetup& setup,
                                          const ProgressFactory& progress = {});

}  // namespace qforge::quant
