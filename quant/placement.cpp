// Placement reads only the catalog contract (graph/catalog.h) and module attributes; no module
// kind is named here.
#include "quant/placement.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "graph/catalog.h"
#include "kernels/error.h"
#include "kernels/fake_quant.h"
#include "kernels/norm.h"

namespace qforge::quant {
namespace {

using graph::Node;
using graph::Value;
using kernels::DType;
using kernels::Tensor;

bool is_float_constant(const Value* v) {
  return v && v->is_constant() && v->dtype() == DType::kFloat32;
}

constexpr graph::Role kBatchNormRoles[] = {graph::Role::kBnGamma, graph::Role::kBnBeta,
                                           graph::Role::kBnMean, graph::Role::kBnVar};

// The export folds the module's BN: its schema says so and the node has the four BN parameters
// as constant vectors.
bool folds_batch_norm(const Node& n, const graph::OpSchema& schema) {
  if (!schema.folds_batch_norm || !graph::has_batch_norm(schema, n)) return false;
  for (graph::Role role : kBatchNormRoles) {
    const Value* v = graph::role_input(schema, n, role);
    if (!is_float_constant(v) || v->constant().rank() != 1) return false;
  }
  return true;
}

// Ops whose output holds only elements of their first input: a quantized value stays a
// quantized value of the same scale through them (TensorRT runs MaxPool, Tile, ReduceMax and
// ReduceMin on INT8 the same way). ReduceSum and ArgMax make new values: a sum needs its own
// range, an index is no activation.
bool passes_quantized_values(const Node& n) {
  const std::string& op = n.op_type();
  if (op == "MaxPool" || op == "Split" || op == "Identity" || op == "Tile" || op == "ReduceMax" ||
      op == "ReduceMin") {
    return true;
  }
  return op == "Resize" && n.attr_string("mode", "nearest") == "nearest";
}

// The activation point a Concat input carries: the input itself, or the tensor it was moved
// from through passes_quantized_values ops.
const Value* point_behind(const Value* v, const std::map<std::string, size_t>& point_of_tensor) {
  while (v) {
    if (point_of_tensor.count(v->name())) return v;
    const Node* p = v->producer();
    if (!p || !passes_quantized_values(*p) || p->num_inputs() == 0) return nullptr;
    v = p->input(0);
  }
  return nullptr;
}

// Concat scale groups: the output and the inputs of every Concat that carry points, merged
// when groups overlap; each group named by its first point in plan order.
void group_concat_scales(const graph::Graph& fused, QuantPlan& plan,
                         const std::map<std::string, size_t>& point_of_tensor) {
  std::vector<size_t> parent(plan.activations.size());
  for (size_t i = 0; i < parent.size(); ++i) parent[i] = i;
  auto root = [&](size_t i) {
    while (parent[i] != i) i = parent[i] = parent[parent[i]];
    return i;
  };
  for (const Node* n : fused.nodes()) {
    if (n->op_type() != "Concat") continue;
    std::vector<size_t> members;
    auto add = [&](const Value* v) {
      const Value* p = point_behind(v, point_of_tensor);
      if (p) members.push_back(point_of_tensor.at(p->name()));
    };
    add(n->output(0));
    for (const Value* in : n->inputs()) add(in);
    for (size_t m : members) {
      const size_t a = root(m), b = root(members[0]);
      if (a != b) parent[std::max(a, b)] = std::min(a, b);
    }
  }
  std::vector<size_t> size(parent.size(), 0);
  for (size_t i = 0; i < parent.size(); ++i) ++size[root(i)];
  for (size_t i = 0; i < parent.size(); ++i) {
    if (size[root(i)] > 1) plan.activations[i].scale_group = plan.activations[root(i)].tensor;
  }
}

float checked_amax(const std::string& tensor, const std::map<std::string, float>& amax) {
  auto it = amax.find(tensor);
  if (it == amax.end() || !std::isfinite(it->second) || it->second < 0) {
    throw_invalid("qdq export: point '" + tensor + "': expected a finite amax >= 0, got " +
                  (it == amax.end() ? std::string("none") : std::to_string(it->second)));
  }
  return it->second;
}

}  // namespace

float shared_amax(const QuantPlan& plan, const ActivationPoint& point,
                  const std::map<std::string, float>& amax) {
  float a = checked_amax(point.tensor, amax);
  if (point.scale_group.empty()) return a;
  for (const ActivationPoint& p : plan.activations) {
    if (p.scale_group == point.scale_group) a = std::max(a, checked_amax(p.tensor, amax));
  }
  return a;
}

const ActivationPoint* QuantPlan::find_activation(const std::string& tensor) const {
  for (const ActivationPoint& p : activations) {
    if (p.tensor == tensor) return &p;
  }
  return nullptr;
}

bool glob_match(std::string_view pattern, std::string_view text) {
  // Iterative matcher with backtracking to the last `*`.
  size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (p < pattern.size() && pattern[p] == text[t]) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

QuantPlan place_qdq(const graph::Graph& fused, const PlacementOptions& options) {
  QuantPlan plan;
  std::vector<bool> skip_used(options.skip.size(), false);
  std::map<std::string, size_t> point_of_tensor;

  for (const Node* n : fused.nodes()) {
    const graph::OpSchema* schema = graph::find_schema(n->op_type());
    if (!schema || schema->kind != graph::SchemaKind::kModule) continue;

    std::string skipped_by;
    for (size_t i = 0; i < options.skip.size(); ++i) {
      const std::string& entry = options.skip[i];
      if (glob_match(entry, n->name()) || glob_match(entry, n->op_type())) {
        skip_used[i] = true;
        if (skipped_by.empty()) skipped_by = entry;
      }
    }
    const std::vector<int> inputs = graph::quantized_inputs(*schema);
    const int weight_input = graph::weight_input(*schema);
    const bool has_weight = is_float_constant(graph::role_input(*schema, *n, graph::Role::kWeight));
    const bool has_softmax = schema->internal_quantizer.scale > 0;
    if (inputs.empty() && !has_weight && !has_softmax) continue;

    if (!skipped_by.empty()) {
      std::string reason = "skipped by '";
      reason.append(skipped_by).append("'");
      plan.float_modules.push_back({n->name(), n->op_type(), std::move(reason)});
      continue;
    }
    if (n->attr_int("int8_unsupported", 0) != 0) {
      plan.float_modules.push_back(
          {n->name(), n->op_type(),
           "int8 unsupported: grouped convolution with channels per group not a multiple of 4"});
      continue;
    }

    for (int index : inputs) {
      const Value* v = n->input(static_cast<size_t>(index));
      if (!v || v->is_constant()) continue;  // constants are not activations
      auto [it, fresh] = point_of_tensor.emplace(v->name(), plan.activations.size());
      if (fresh) plan.activations.push_back({v->name(), {}});
      plan.activations[it->second].consumers.push_back({n->name(), index});
    }
    if (has_weight) {
      const Tensor& w = n->input(static_cast<size_t>(weight_input))->constant();
      WeightPoint wp{.node = n->name(),
                     .module = n->op_type(),
                     .input = weight_input,
                     .axis = graph::weight_axis(*schema, *n),
                     .per_channel = !options.per_tensor_weights,
                     .folds_batch_norm = folds_batch_norm(*n, *schema)};
      wp.transposed = schema->transposed_weight;
      if (wp.transposed) wp.group = n->attr_int("group", 1);
      if (wp.axis < 0 || wp.axis >= w.rank()) {
        throw_invalid("placement: " + n->label() + ": expected a weight axis in [0, " +
                      std::to_string(w.rank()) + "), got " + std::to_string(wp.axis));
      }
      plan.weights.push_back(std::move(wp));
    }
    if (has_softmax) plan.softmax.push_back({n->name(), schema->internal_quantizer.scale});
  }

  group_concat_scales(fused, plan, point_of_tensor);

  for (size_t i = 0; i < options.skip.size(); ++i) {
    if (!skip_used[i]) {
      throw_invalid("placement: skip entry '" + options.skip[i] +
                    "' matches no module node name or kind");
    }
  }
  return plan;
}

Tensor quantized_weight(const graph::Graph& fused, const WeightPoint& point, Tensor* folded_bias) {
  const Node* n = fused.find_node(point.node);
  if (!n)
    throw_invalid("placement: weight point names node '" + point.node + "', not in the graph");
  const Value* wv = n->input(static_cast<size_t>(point.input));
  if (!is_float_constant(wv)) {
    throw_invalid("placement: " + n->label() + ": expected a float constant weight at input " +
                  std::to_string(point.input));
  }
  const Tensor& w = wv->constant();
  const graph::OpSchema* schema = graph::find_schema(n->op_type());
  if (!schema) {
    throw_invalid("placement: weight point names " + n->label() + ", not a module of the catalog");
  }
  const Value* bv = graph::role_input(*schema, *n, graph::Role::kBias);
  if (!point.folds_batch_norm) {
    if (folded_bias && is_float_constant(bv)) *folded_bias = bv->constant();
    return w;
  }
  // y = gamma · (conv(x, W) + B − mean) / sqrt(var + eps) + beta, per output channel (axis 0,
  // or axis 1 within each group for a transposed convolution).
  const int64_t channels = point.transposed ? w.dim(1) * point.group : w.dim(0);
  // Without a conv bias the fold still computes (0 − mean)·factor + beta: a zero bias keeps the
  // sign of a zero shift as the export has always written it.
  const std::vector<float> zero_bias(static_cast<size_t>(channels), 0.0f);
  Tensor bias(DType::kFloat32, {channels});
  std::vector<double> factor(static_cast<size_t>(channels));
  auto parameter = [&](graph::Role role) {
    return graph::role_input(*schema, *n, role)->constant().data<float>();
  };
  kernels::batch_norm_fold({.gamma = parameter(graph::Role::kBnGamma),
                            .beta = parameter(graph::Role::kBnBeta),
                            .mean = parameter(graph::Role::kBnMean),
                            .var = parameter(graph::Role::kBnVar),
                            .epsilon = n->attr_float("epsilon", 1e-5f),
                            .channels = channels},
                           is_float_constant(bv) ? bv->constant().data<float>() : zero_bias.data(),
                           kernels::FoldPrecision::kDouble,
                           {.factor = factor.data(), .shift = bias.data<float>()});
  Tensor folded(DType::kFloat32, w.shape());
  if (point.transposed) {
    kernels::fold_weight_transposed(w.data<float>(), factor.data(), w.dim(0), point.group, w.dim(1),
                                    w.numel() / w.dim(0) / w.dim(1), folded.data<float>());
  } else {
    kernels::fold_weight(w.data<float>(), factor.data(), channels, w.numel() / channels,
                         folded.data<float>());
  }
  if (folded_bias) *folded_bias = bias;
  return folded;
}

std::vector<float> weight_channel_amax(const graph::Graph& fused, const WeightPoint& point) {
  const Tensor w = quantized_weight(fused, point);
  std::vector<float> amax(point.per_channel ? static_cast<size_t>(w.dim(point.axis)) : 1);
  kernels::channel_abs_max(w, point.per_channel ? point.axis : -1, amax);
  return amax;
}

}  // namespace qforge::quant
