#include "quant/fake_quant_training.h"

#include <set>

#include "graph/derivation.h"
#include "kernels/error.h"
#include "quant/calibration.h"
#include "runtime/fuse_qdq.h"
#include "runtime/resolve.h"
#include "runtime/transform_pipeline.h"

namespace qforge::quant {

std::unique_ptr<runtime::ClassifierTraining> fake_quant_training(const graph::Graph& fused,
                                                                 const QuantPlan& plan,
                                                                 const ActivationAmax& amax) {
  return fake_quant_training(fused, plan, amax, {}).training;
}

FakeQuantTraining fake_quant_training(const graph::Graph& fused, const QuantPlan& plan,
                                      const ActivationAmax& amax,
                                      const TrainingGraphOptions& options) {
  TrainingGraph t = build_training_graph(fused, plan, amax, options);
  runtime::ResolveOptions resolve_options;
  resolve_options.parameters.insert(t.parameters.begin(), t.parameters.end());
  resolve_options.parameters.insert(t.state.begin(), t.state.end());
  runtime::resolve(*t.graph, resolve_options);
  runtime::fuse_qdq(*t.graph);
  FakeQuantTraining result;
  result.scale_parameters = std::move(t.scale_parameters);
  runtime::TrainingOptions training_options{std::move(t.parameters), std::move(t.state)};
  // The quantizer points marked after the model's outputs are no outputs of the model.
  training_options.model_outputs = fused.outputs().size();
  result.training = std::make_unique<runtime::ClassifierTraining>(std::move(t.graph),
                                                                  std::move(training_options));
  return result;
}

void store_trained_values(const runtime::TrainingExecutor& training, graph::Graph& fused,
                          const std::map<std::string, std::string>& scale_parameters) {
  std::set<std::string> scales;
  for (const auto& [tensor, name] : scale_parameters) scales.insert(name);
  for (const runtime::Parameter& p : training.parameters()) {
    if (scales.count(p.name)) continue;
    graph::Value* v = fused.find_value(p.name);
    if (!v || !v->is_constant()) {
      throw_internal("training: parameter '" + p.name + "' is not a constant of the fused graph");
    }
    v->set_constant(p.value.clone());
  }
}

ActivationScales learned_scales(const runtime::TrainingExecutor& training,
                                const std::map<std::string, std::string>& scale_parameters) {
  ActivationScales out;
  for (const auto& [tensor, name] : scale_parameters) {
    for (const runtime::Parameter& p : training.parameters()) {
      if (p.name == name) out[tensor] = p.value.data<float>()[0];
    }
  }
  return out;
}

std::unique_ptr<runtime::ClassifierTraining> max_calibrated_fake_quant_training(
    const graph::Graph& model, const kernels::Tensor& batch) {
  return max_calibrated_fake_quant(model, batch, {}).training;
}

MaxCalibratedFakeQuant max_calibrated_fake_quant(const graph::Graph& model,
                                                 std::span<const kernels::Tensor> batch,
                                                 const MaxCalibratedOptions& options) {
  if (batch.empty() || batch.front().rank() < 1) {
    throw_invalid("grad: the input batch has no batch axis");
  }
  runtime::TransformOptions transform;
  transform.batch = batch.front().dim(0);
  runtime::TransformResult transformed = runtime::transform_model(model, nullptr, transform);
  const QuantPlan plan = place_qdq(*transformed.graph);
  if (plan.activations.empty() && plan.weights.empty()) {
    throw_invalid("grad: --fake-quant: the model has no Q/DQ point");
  }
  ActivationAmax amax;
  {
    CalibrationStats stats(*transformed.graph, plan);
    stats.observe_batch(batch);
    amax = stats.activation_amax(Calibrator::kMax);
  }
  TrainingGraphOptions graph_options;
  graph_options.point_outputs = options.point_outputs;
  MaxCalibratedFakeQuant result;
  result.training = fake_quant_training(*transformed.graph, plan, amax, graph_options).training;
  result.amax = std::move(amax);
  if (options.point_outputs) {
    for (const ActivationPoint& p : plan.activations) result.points.push_back(p.tensor);
  }
  return result;
}

InitializerGradients initializer_gradients(const runtime::ClassifierTraining& training,
                                           const graph::Graph& model) {
  graph::PulledBackGradients pulled =
      graph::pull_back_gradients(training.graph().derivations(), training.gradients());
  InitializerGradients result;
  result.gradients = std::move(pulled.gradients);
  result.pulled_back = std::move(pulled.derived);
  const std::vector<std::string> names = runtime::trainable_initializers(model);
  const std::set<std::string> initializers(names.begin(), names.end());
  for (const auto& [name, grad] : result.gradients) {
    if (!initializers.count(name)) result.unmapped.push_back(name);
  }
  return result;
}

runtime::GradientResult fake_quant_gradients(const graph::Graph& model,
                                             const kernels::Tensor& input,
                                             const kernels::Tensor& labels) {
  auto training = max_calibrated_fake_quant_training(model, input);
  runtime::GradientResult result;
  result.loss = training->forward_backward(input, labels);
  result.gradients = initializer_gradients(*training, model).gradients;
  return result;
}

}  // namespace qforge::quant
