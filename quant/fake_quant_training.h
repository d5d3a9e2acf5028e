// Training through fake quant: a fused graph, its Q/DQ plan and calibrated activation ranges set
// up as a classifier training (quant/qdq_export.h's training graph, resolved, its Q/DQ pairs
// run as FakeQuant), and the trained values written back into the fused graph, which the Q/DQ
// export then writes. So what is trained is what is exported.
#pragma once

#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "graph/ir.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "runtime/training.h"

namespace qforge::quant {

// `fused` is a transformed graph at the training batch (runtime::transform_model); it is not
// changed. Activations follow `amax`; weights are quantized from their current values.
std::unique_ptr<runtime::ClassifierTraining> fake_quant_training(const graph::Graph& fused,
                                                                 const QuantPlan& plan,
                                                                 const ActivationAmax& amax);

// The same with options (learned activation scales); scale_parameters names the scale
// parameter of each point when they are learned.
struct FakeQuantTraining {
  std::unique_ptr<runtime::ClassifierTraining> training;
  std::map<std::string, std::string> scale_parameters;
};
FakeQuantTraining fake_quant_training(const graph::Graph& fused, const QuantPlan& plan,
                                      const ActivationAmax& amax,
                                      const TrainingGraphOptions& options);

// Writes every parameter and state tensor of `training` (trained weights, BN running
// statistics) into the constant of the same name in `fused`, whose other constants stay.
// Learned activation scales (scale_parameters) are not constants of the fused graph and are
// skipped; learned_scales reads them.
void store_trained_values(const runtime::TrainingExecutor& training, graph::Graph& fused,
                          const std::map<std::string, std::string>& scale_parameters = {});

// The current value of each learned activation scale, by point tensor.
ActivationScales learned_scales(const runtime::TrainingExecutor& training,
                                const std::map<std::string, std::string>& scale_parameters);

// `qforge grad --fake-quant`'s setup: the model transformed at the batch's size, every
// activation point calibrated with max on that batch, set up for training through fake quant.
std::unique_ptr<runtime::ClassifierTraining> max_calibrated_fake_quant_training(
    const graph::Graph& model, const kernels::Tensor& batch);

// The same, with the amax each point got and, with point_outputs, each point's tensor as an
// output of the training graph after the logits (TrainingGraphOptions::point_outputs), so that
// a forward leaves there the values every activation quantizer read.
struct MaxCalibratedOptions {
  bool point_outputs = false;
};
struct MaxCalibratedFakeQuant {
  std::unique_ptr<runtime::ClassifierTraining> training;
  ActivationAmax amax;              // by point tensor
  std::vector<std::string> points;  // the point tensors, in plan order (outputs 1, 2, …)
};
// `batch`: one tensor per model input, in the model's order, of the same number of samples.
MaxCalibratedFakeQuant max_calibrated_fake_quant(const graph::Graph& model,
                                                 std::span<const kernels::Tensor> batch,
                                                 const MaxCalibratedOptions& options);
inline MaxCalibratedFakeQuant max_calibrated_fake_quant(const graph::Graph& model,
                                                        const kernels::Tensor& batch,
                                                        const MaxCalibratedOptions& options) {
  return max_calibrated_fake_quant(model, {&batch, 1}, options);
}

// The gradients of a training on `model`'s fused graph keyed by the model's initializers: each
// gradient of a constant that a transform derived (a Linear head as a 1×1 convolution's weight
// and bias, packed Q/K/V, a class token expanded to the batch) pulled back onto the initializers
// it came from in their ONNX shapes (graph/derivation.h); the other constants are the
// initializers themselves. Bit-identical for any thread count.
struct InitializerGradients {
  std::vector<std::pair<std::string, kernels::Tensor>> gradients;  // by name, in name order
  std::vector<std::string> pulled_back;  // the fused graph's derived constants, in name order
  // Names in `gradients` that are no trainable initializer of the model: fused-graph constants
  // that no derivation traces back (none on the bundled models).
  std::vector<std::string> unmapped;
};
InitializerGradients initializer_gradients(const runtime::ClassifierTraining& training,
                                           const graph::Graph& model);

// One forward and backward of max_calibrated_fake_quant_training in training mode with the
// mean cross-entropy, its gradients keyed by the model's initializers (initializer_gradients).
runtime::GradientResult fake_quant_gradients(const graph::Graph& model,
                                             const kernels::Tensor& input,
                                             const kernels::Tensor& labels);

}  // namespace qforge::quant
