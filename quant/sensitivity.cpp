#include "quant/sensitivity.h"

#include <memory>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "quant/placement.h"
#include "quant/qdq_export.h"

namespace qforge::quant {
namespace {

// The module node names that hold a quantizer in `plan`, in graph order.
std::vector<const graph::Node*> quantized_modules(const graph::Graph& fused,
                                                  const QuantPlan& plan) {
  std::set<std::string> names;
  for (const ActivationPoint& p : plan.activations) {
    for (const QuantConsumer& c : p.consumers) names.insert(c.node);
  }
  for (const WeightPoint& w : plan.weights) names.insert(w.node);
  for (const SoftmaxPoint& s : plan.softmax) names.insert(s.node);
  std::vector<const graph::Node*> modules;
  for (const graph::Node* n : fused.nodes()) {
    if (names.count(n->name())) modules.push_back(n);
  }
  return modules;
}

// The plan `fused` gets under setup's placement with `more` modules skipped as well.
QuantPlan plan_skipping(const graph::Graph& fused, const CalibrationSetup& setup,
                        std::span<const std::string> more) {
  PlacementOptions options = placement_options(setup);
  options.skip.insert(options.skip.end(), more.begin(), more.end());
  return place_qdq(fused, options);
}

}  // namespace

SensitivityAnalysis skip_sensitivity(const graph::Graph& fused, const CalibrationResult& calibrated,
                                     const CalibrationSetup& setup, const ModelLoader& reference,
                                     const SampleSource& data, const EvaluationSetup& evaluation,
                                     const ProgressFactory& progress) {
  const QuantPlan& plan = calibrated.plan;
  const std::vector<const graph::Node*> modules = quantized_modules(fused, plan);
  SensitivityAnalysis analysis;
  std::vector<QuantPlan> plans = {plan};
  for (const graph::Node* module : modules) {
    plans.push_back(plan_skipping(fused, setup, std::span(&module->name(), 1)));
    const QuantPlan& kept = plans.back();
    SkipSensitivity s;
    s.module = module->name();
    s.kind = module->op_type();
    s.activation_points = plan.activations.size() - kept.activations.size();
    s.weight_quantizers = plan.weights.size() - kept.weights.size();
    s.softmax_quantizers = plan.softmax.size() - kept.softmax.size();
    analysis.modules.push_back(std::move(s));
  }
  std::vector<ModelLoader> models;
  models.reserve(plans.size());
  for (const QuantPlan& p : plans) {
    models.emplace_back(
        [&fused, &p, &calibrated] { return build_qdq_graph(fused, p, calibrated.amax); });
  }
  // Each variant runs from the all-quantized model's values where it departs from it.
  std::vector<Evaluation> measured = evaluate_variants(
      reference, models.front(), std::span(models).subspan(1), data, evaluation, progress);
  analysis.all_quantized = std::move(measured.front());
  for (size_t i = 0; i < analysis.modules.size(); ++i) {
    analysis.modules[i].evaluation = std::move(measured[i + 1]);
  }
  return analysis;
}

SkipSearch skip_until(const graph::Graph& fused, const CalibrationResult& calibrated,
                      const CalibrationSetup& setup, const std::vector<std::string>& order,
                      const std::function<bool(const Evaluation&)>& reached,
                      const ModelLoader& reference, const SampleSource& data,
                      const EvaluationSetup& evaluation, const ProgressFactory& progress,
                      const std::optional<Evaluation>& first) {
  // Model k keeps the first k + 1 modules of `order` float; each is placed when it is loaded.
  // With `first`, model 0 is known and the runs start at model 1, unless it already reaches.
  std::vector<Evaluation> measured;
  if (first && !order.empty()) measured.push_back(*first);
  if (measured.empty() || !reached(measured.front())) {
    std::vector<ModelLoader> models;
    for (size_t k = measured.size(); k < order.size(); ++k) {
      models.emplace_back([&, k] {
        return build_qdq_graph(fused, plan_skipping(fused, setup, std::span(order).first(k + 1)),
                               calibrated.amax);
      });
    }
    if (!models.empty()) {
      for (Evaluation& e : evaluate_each(reference, models, data, evaluation, progress, reached)) {
        measured.push_back(std::move(e));
      }
    }
  }
  SkipSearch search;
  if (measured.empty()) return search;
  search.kept_float.assign(order.begin(),
                           order.begin() + static_cast<std::ptrdiff_t>(measured.size()));
  search.evaluation = std::move(measured.back());
  search.reached = reached(search.evaluation);
  return search;
}

}  // namespace qforge::quant
