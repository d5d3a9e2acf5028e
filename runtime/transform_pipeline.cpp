// The transformation pipeline: resolve, conversions, fusion plan, lowering and the equivalence
// check of what would be written.
#include "runtime/transform_pipeline.h"

#include "graph/catalog.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <random>

#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "graph/transform.h"
#include "kernels/error.h"
#include "runtime/resolve.h"
#include "runtime/session.h"

namespace qforge::runtime {
namespace {

std::string entry_label(const std::string& source, const graph::Match& m) {
  std::string label = source;
  label.append(": match #");
  label.append(std::to_string(m.id)).append(" (").append(m.pattern).append(")");
  return label;
}

// Refuses a plan that does not belong to this converted graph before anything is applied.
void check_plan_fits(const graph::Graph& graph, const graph::Plan& plan,
                     std::span<const graph::Pattern> patterns, const std::string& source) {
  for (const graph::PlanEntry& e : plan.entries) {
    const bool known = std::any_of(patterns.begin(), patterns.end(), [&](const graph::Pattern& p) {
      return p.name == e.match.pattern;
    });
    if (!known) {
      std::string message = entry_label(source, e.match);
      message.append(": expected a fusion pattern, got '").append(e.match.pattern).append("'");
      throw_invalid(message);
    }
    std::vector<std::string> names{e.match.anchor};
    for (const graph::MatchedNode& n : e.match.nodes) names.push_back(n.name);
    for (const std::string& name : names) {
      if (!graph.find_node(name)) {
        std::string message = entry_label(source, e.match);
        message.append(": node '")
            .append(name)
            .append("' is not in the converted model (a plan made for another model?)");
        throw_invalid(message);
      }
    }
  }
}

// Standard normal samples by Box–Muller over mt19937_64, whose sequence the C++ standard fixes,
// so the sample is the same with every standard library.
void fill_normal(kernels::Tensor& t, std::mt19937_64& rng) {
  auto uniform = [&] { return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53; };
  auto values = t.span<float>();
  for (size_t i = 0; i < values.size(); i += 2) {
    double radius = std::sqrt(-2.0 * std::log(uniform()));
    double angle = 2.0 * std::numbers::pi * uniform();
    values[i] = static_cast<float>(radius * std::cos(angle));
    if (i + 1 < values.size()) values[i + 1] = static_cast<float>(radius * std::sin(angle));
  }
}

void compare_into(const kernels::Tensor& a, const kernels::Tensor& b, const std::string& output,
                  EquivalenceFigures& f) {
  if (b.dtype() == a.dtype() && a.shape() == b.shape() &&
      (a.dtype() == kernels::DType::kInt64 || a.dtype() == kernels::DType::kInt32 ||
       a.dtype() == kernels::DType::kBool)) {
    const auto* x = static_cast<const std::byte*>(a.raw());
    const auto* y = static_cast<const std::byte*>(b.raw());
    const size_t size = kernels::dtype_size(a.dtype());
    f.elements += static_cast<size_t>(a.numel());
    for (int64_t i = 0; i < a.numel(); ++i) {
      f.integer_mismatches += std::memcmp(x + i * size, y + i * size, size) != 0;
    }
    return;
  }
  if (a.dtype() != kernels::DType::kFloat32 || b.dtype() != a.dtype() || a.shape() != b.shape()) {
    std::string message = "equivalence: output '";
    message.append(output)
        .append("': expected float32 or integer outputs of one shape, got ")
        .append(a.describe())
        .append(" vs ")
        .append(b.describe());
    throw_invalid(message);
  }
  auto ra = a.span<float>();
  auto rb = b.span<float>();
  f.elements += ra.size();
  for (size_t i = 0; i < ra.size(); ++i) {
    const double x = ra[i], y = rb[i];
    if (!std::isfinite(x) || !std::isfinite(y)) {
      // Equal infinities agree; NaN never equals anything, so both-NaN is matched explicitly.
      const bool agree = (std::isnan(x) && std::isnan(y)) || x == y;
      f.nonfinite_mismatches += !agree;
      continue;
    }
    f.max_abs_diff = std::max(f.max_abs_diff, std::abs(x - y));
    f.max_abs_reference = std::max(f.max_abs_reference, std::abs(x));
  }
}

}  // namespace

TransformResult plan_model(const graph::Graph& model, const TransformOptions& options) {
  TransformResult r;
  r.graph = model.clone();
  ResolveOptions resolve_options;
  resolve_options.input_shapes = input_shapes_for_batch(model, options.batch);
  resolve(*r.graph, resolve_options);
  const std::vector<graph::Pattern> conversions = graph::all_conversion_patterns();
  r.conversions = graph::run_conversions(*r.graph, conversions, options.conversions);
  const std::vector<graph::Pattern> fusions = graph::all_fusion_patterns();
  r.plan = graph::make_plan(*r.graph, fusions);
  for (const graph::Pattern& p : fusions) r.fusions.patterns.push_back({p.name, 0, 0});
  return r;
}

TransformResult transform_model(const graph::Graph& model, const graph::Plan* plan,
                                const TransformOptions& options) {
  TransformResult r = plan_model(model, options);
  const std::vector<graph::Pattern> fusions = graph::all_fusion_patterns();
  if (plan) {
    check_plan_fits(*r.graph, *plan, fusions, options.plan_source);
    r.plan = *plan;
  }
  r.fusions = graph::apply_plan(*r.graph, r.plan, fusions);
  return r;
}

graph::PlanReport count_plan(const graph::Plan& plan, std::span<const graph::Pattern> patterns) {
  graph::PlanReport report;
  for (const graph::Pattern& p : patterns) report.patterns.push_back({p.name, 0, 0});
  for (const graph::PlanEntry& e : plan.entries) {
    for (graph::PatternCount& c : report.patterns) {
      if (c.pattern != e.match.pattern) continue;
      ++(e.apply ? c.applied : c.skipped);
    }
  }
  return report;
}

std::vector<kernels::Tensor> random_normal_inputs(const graph::Graph& model, int64_t batch,
                                                  uint64_t seed) {
  std::mt19937_64 rng(seed);
  const auto shapes = input_shapes_for_batch(model, batch);
  std::vector<kernels::Tensor> inputs;
  for (const graph::Value* in : model.inputs()) {
    const graph::Shape& shape = shapes.at(in->name());
    if (in->dtype() != kernels::DType::kFloat32 ||
        std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 0; })) {
      std::string message = "sample input: model input '";
      message.append(in->name())
          .append("': expected float32 with only the batch dim dynamic, got ")
          .append(kernels::dtype_name(in->dtype()))
          .append(kernels::shape_str(shape))
          .append("; pass data");
      throw_unsupported(message);
    }
    kernels::Tensor t(kernels::DType::kFloat32, shape);
    fill_normal(t, rng);
    inputs.push_back(std::move(t));
  }
  return inputs;
}

EquivalenceFigures check_equivalence(const graph::Graph& reference, const graph::Graph& candidate,
                                     std::span<const std::vector<kernels::Tensor>> batches,
                                     double tolerance) {
  if (reference.outputs().size() != candidate.outputs().size()) {
    throw_invalid("equivalence: expected " + std::to_string(reference.outputs().size()) +
                  " outputs, got " + std::to_string(candidate.outputs().size()));
  }
  Session ref(reference.clone());
  Session cand(candidate.clone());
  EquivalenceFigures f;
  for (const std::vector<kernels::Tensor>& inputs : batches) {
    // Each session's output views stay valid until that session runs again.
    auto a = ref.run(std::span<const kernels::Tensor>(inputs));
    auto b = cand.run(std::span<const kernels::Tensor>(inputs));
    for (size_t k = 0; k < a.size(); ++k) {
      compare_into(a[k], b[k], reference.outputs()[k]->name(), f);
    }
  }
  f.relative = f.max_abs_diff / std::max(1.0, f.max_abs_reference);
  f.equivalent =
      f.nonfinite_mismatches == 0 && f.integer_mismatches == 0 && f.relative <= tolerance;
  return f;
}

std::map<std::string, size_t> count_modules(const graph::Graph& graph) {
  std::map<std::string, size_t> counts;
  for (const graph::Node* node : graph.nodes()) {
    const graph::OpSchema* schema = graph::find_schema(node->op_type());
    if (schema && schema->kind == graph::SchemaKind::kModule) ++counts[node->op_type()];
  }
  return counts;
}

CheckedExport lower_and_check(const graph::Graph& original, const graph::Graph& fused,
                              std::span<const std::vector<kernels::Tensor>> batches,
                              double tolerance, const BatchExportOptions& batch,
                              const std::string& external_data) {
  CheckedExport out;
  std::unique_ptr<graph::Graph> lowered = fused.clone();
  out.lowered_modules = graph::lower_modules(*lowered);
  out.checked = "lowered graph";
  out.figures = check_equivalence(original, *lowered, batches, tolerance);
  if (!out.figures.equivalent) return out;

  restore_declared_batch(*lowered, batch);
  graph::ExportOptions export_options;
  if (original.opset > 0) export_options.opset = original.opset;
  export_options.external_data = external_data;
  std::string bytes;
  std::string data;
  graph::write_onnx(*lowered, graph::append_to(bytes), export_options, graph::append_to(data));
  graph::ImportOptions import_options;
  if (!external_data.empty()) import_options.external_data_bytes[external_data] = data;
  import_options.data_sample_rank = graph::sample_rank_of(original);
  std::unique_ptr<graph::Graph> reimported =
      graph::parse_onnx(bytes, "lowered model", import_options);
  out.checked = "written model";
  out.figures = check_equivalence(original, *reimported, batches, tolerance);
  if (out.figures.equivalent) {
    out.onnx_bytes = std::move(bytes);
    out.external_data_bytes = std::move(data);
  }
  return out;
}

}  // namespace qforge::runtime
