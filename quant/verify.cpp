// Teacher-forced Q/DQ check (quant/verify.h): the model is cut at every activation point (its
// integer output becomes a graph input fed with the reference's integers, and qforge's own
// integers a graph output), so that one forward pass recomputes every segment from the
// reference's values.
#include "quant/verify.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <onnx/onnx_pb.h>

#include "graph/onnx_import.h"
#include "kernels/fake_quant.h"
#include "runtime/executor.h"
#include "runtime/fuse_epilogues.h"
#include "runtime/resolve.h"

namespace qforge::quant {
namespace {

using kernels::DType;
using kernels::Tensor;

// A point's grid, read from its constant scale and zero point.
struct PointGrid {
  std::vector<float> scales;
  std::vector<int32_t> zero_points;  // empty: zero
  int axis = -1;                     // -1: per tensor
  DType dtype = DType::kUInt8;
  int64_t inner = 1;  // elements per channel run (product of the dims after axis)

  kernels::QuantGrid grid() const { return {scales, zero_points, axis < 0 ? 0 : axis, dtype}; }
  size_t channel_of(int64_t index, int64_t channels) const {
    if (axis < 0) return 0;
    return static_cast<size_t>((index / inner) % channels);
  }
};

PointGrid grid_of(const graph::Node& q, const graph::Shape& shape) {
  PointGrid g;
  const graph::Value* scale = q.input(1);
  const graph::Value* zp = q.input(2);
  if (!scale || !scale->is_constant() || (zp && !zp->is_constant())) {
    throw_unsupported("verify: " + q.label() + ": expected a constant scale and zero point");
  }
  g.scales = scale->constant().to_float_vector();
  if (zp) {
    g.dtype = zp->dtype();
    for (int64_t v : zp->constant().to_int64_vector())
      g.zero_points.push_back(static_cast<int32_t>(v));
  } else {
    g.dtype = q.output(0)->dtype();
  }
  if (g.scales.size() > 1) {
    const auto rank = static_cast<int64_t>(shape.size());
    int64_t a = q.attr_int("axis", 1);
    if (a < 0) a += rank;
    g.axis = static_cast<int>(a);
    for (int64_t d = a + 1; d < rank; ++d) g.inner *= shape[static_cast<size_t>(d)];
  }
  return g;
}

int32_t integer_at(const Tensor& t, int64_t i) {
  return t.dtype() == DType::kInt8 ? int32_t{t.data<int8_t>()[i]} : int32_t{t.data<uint8_t>()[i]};
}

std::string describe_point(const graph::Node& q) {
  return q.label() + " output '" + q.output(0)->name() + "'";
}

// The reference's integers of point `q`: its QuantizeLinear output, or a DequantizeLinear
// output of it converted back (q = round(y / scale) + zero point is exact for y = (q − zp)·s).
Tensor reference_integers(const graph::Node& q, const graph::Node* original_q,
                          const ReferenceValues& reference) {
  const graph::Value& out = *q.output(0);
  const graph::Shape& shape = out.known_shape();
  auto check_shape = [&](const Tensor& t, const std::string& name) {
    if (t.shape() != shape) {
      throw_invalid("verify: reference value '" + name + "' of " + q.label() + ": expected shape " +
                    kernels::shape_str(shape) + ", got " + kernels::shape_str(t.shape()));
    }
  };
  if (auto it = reference.find(out.name()); it != reference.end()) {
    check_shape(it->second, out.name());
    if (it->second.dtype() != out.dtype()) {
      throw_invalid("verify: reference value '" + out.name() + "' of " + q.label() + ": expected " +
                    kernels::dtype_name(out.dtype()) + ", got " +
                    kernels::dtype_name(it->second.dtype()));
    }
    return it->second;
  }
  // The DequantizeLinear readers, in the graph as loaded (the resolved one has them too).
  const graph::Node& source = original_q ? *original_q : q;
  for (const graph::Node* dq : source.output(0)->consumers()) {
    if (dq->op_type() != "DequantizeLinear") continue;
    auto it = reference.find(dq->output(0)->name());
    if (it == reference.end()) continue;
    check_shape(it->second, dq->output(0)->name());
    if (it->second.dtype() != DType::kFloat32) {
      throw_invalid("verify: reference value '" + dq->output(0)->name() + "' of " + dq->label() +
                    ": expected float32, got " + kernels::dtype_name(it->second.dtype()));
    }
    const PointGrid g = grid_of(q, shape);
    Tensor ints(g.dtype, shape);
    kernels::quantize_linear(it->second, g.grid(), ints);
    return ints;
  }
  throw_invalid("verify: the reference holds no value for " + describe_point(q) +
                " nor for a DequantizeLinear reading it");
}

double relative_l2(const Tensor& got, const Tensor& ref) {
  const auto a = got.span<float>();
  const auto b = ref.span<float>();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    diff += d * d;
    norm += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  if (norm == 0) return diff == 0 ? 0.0 : INFINITY;
  return std::sqrt(diff / norm);
}

// Compares a point's integers; fills counts and the listed elements.
void compare_point(const PointGrid& g, const Tensor& x, const Tensor& ours, const Tensor& theirs,
                   const VerifyOptions& options, PointCheck& check) {
  const int64_t n = ours.numel();
  const int64_t channels = g.axis < 0 ? 1 : x.dim(g.axis);
  const int32_t lo = g.dtype == DType::kInt8 ? -128 : 0;
  const int32_t hi = g.dtype == DType::kInt8 ? 127 : 255;
  std::vector<DifferingElement> mismatches, flips;
  check.elements = n;
  const float* xs = x.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int32_t a = integer_at(ours, i);
    const int32_t b = integer_at(theirs, i);
    if (a == b) continue;
    const size_t c = g.channel_of(i, channels);
    const int32_t zp = g.zero_points.empty() ? 0 : g.zero_points[c];
    DifferingElement e;
    e.index = i;
    e.qforge = a;
    e.reference = b;
    e.steps = static_cast<double>(xs[i]) / static_cast<double>(g.scales[c]);
    const double boundary = std::floor(e.steps) + 0.5;
    e.boundary_distance = std::abs(e.steps - boundary);
    // The boundary's two neighbours, shifted by the zero point and saturated.
    const auto below = std::clamp(static_cast<int32_t>(std::floor(e.steps)) + zp, lo, hi);
    const auto above = std::clamp(static_cast<int32_t>(std::floor(e.steps)) + 1 + zp, lo, hi);
    e.flip = std::isfinite(e.steps) && e.boundary_distance <= options.flip_tolerance &&
             std::abs(a - b) == 1 && ((a == below && b == above) || (a == above && b == below));
    check.max_step_difference = std::max<int64_t>(check.max_step_difference, std::abs(a - b));
    if (e.flip) {
      ++check.flips;
      check.max_flip_distance = std::max(check.max_flip_distance, e.boundary_distance);
      if (flips.size() < options.listed_per_point) flips.push_back(e);
    } else {
      ++check.mismatches;
      if (mismatches.size() < options.listed_per_point) mismatches.push_back(e);
    }
  }
  check.listed = std::move(mismatches);
  for (const DifferingElement& e : flips) {
    if (check.listed.size() >= options.listed_per_point) break;
    check.listed.push_back(e);
  }
}

std::unique_ptr<graph::Graph> resolved_copy(const graph::Graph& model,
                                            std::span<const Tensor> inputs) {
  if (inputs.size() != model.inputs().size()) {
    throw_invalid("verify: the model takes " + std::to_string(model.inputs().size()) +
                  " inputs, got " + std::to_string(inputs.size()));
  }
  auto g = model.clone();
  runtime::ResolveOptions options;
  for (size_t i = 0; i < inputs.size(); ++i) {
    options.input_shapes[model.inputs()[i]->name()] = inputs[i].shape();
  }
  runtime::resolve(*g, options);
  return g;
}

void mark_output_once(graph::Graph& g, graph::Value* v) {
  if (!v->is_graph_output() && !v->is_graph_input() && !v->is_constant()) g.mark_output(v);
}

// Index of each value among a graph's outputs.
std::map<const graph::Value*, size_t> output_index(const graph::Graph& g) {
  std::map<const graph::Value*, size_t> index;
  for (size_t i = 0; i < g.outputs().size(); ++i) index.emplace(g.outputs()[i], i);
  return index;
}

// The value `v` in a run: a graph input's tensor or an output's.
const Tensor& value_in_run(const graph::Graph& g, const graph::Value* v,
                           std::span<const Tensor> inputs, std::span<const Tensor> outputs,
                           const std::map<const graph::Value*, size_t>& index) {
  for (size_t i = 0; i < g.inputs().size(); ++i) {
    if (g.inputs()[i] == v) return inputs[i];
  }
  return outputs[index.at(v)];
}

}  // namespace

std::vector<const graph::Node*> activation_quantizers(const graph::Graph& resolved) {
  std::vector<const graph::Node*> points;
  for (const graph::Node* n : resolved.nodes()) {
    if (n->op_type() == "QuantizeLinear" && !n->input(0)->is_constant()) points.push_back(n);
  }
  return points;
}

VerifyResult verify_qdq(const graph::Graph& model, std::span<const Tensor> inputs,
                        const ReferenceValues& reference, const VerifyOptions& options) {
  VerifyResult result;

  // Plain forward: every point's pre-quant and integer values kept as outputs.
  auto plain = resolved_copy(model, inputs);
  const std::vector<const graph::Node*> plain_points = activation_quantizers(*plain);
  const size_t original_outputs = plain->outputs().size();
  for (const graph::Node* q : plain_points) {
    mark_output_once(*plain, q->input(0));
    mark_output_once(*plain, q->output(0));
  }
  std::vector<Tensor> plain_values;
  {
    runtime::fuse_conv_epilogues(*plain);
    runtime::Executor executor(*plain);
    for (const Tensor& t : executor.run(inputs)) plain_values.push_back(t.clone());
  }
  const auto plain_index = output_index(*plain);

  // Teacher forcing: each point's integer output is replaced, for its readers, by a graph input
  // holding the reference's integers.
  auto cut = resolved_copy(model, inputs);
  const std::vector<const graph::Node*> points = activation_quantizers(*cut);
  std::vector<Tensor> fed(inputs.begin(), inputs.end());
  std::vector<PointGrid> grids;
  for (const graph::Node* q : points) {
    graph::Value* out = q->output(0);
    const graph::Node* original = model.find_node(q->name());
    fed.push_back(reference_integers(*q, original, reference));
    grids.push_back(grid_of(*q, q->input(0)->known_shape()));
    graph::Value* forced = cut->add_input(cut->unique_value_name(out->name() + ".reference"),
                                          out->dtype(), out->known_shape());
    cut->replace_all_uses(out, forced);
    cut->mark_output(out);
    mark_output_once(*cut, q->input(0));
  }
  runtime::fuse_conv_epilogues(*cut);
  runtime::Executor executor(*cut);
  const std::span<const Tensor> outs = executor.run(fed);
  const auto cut_index = output_index(*cut);

  for (size_t k = 0; k < points.size(); ++k) {
    const graph::Node& q = *points[k];
    PointCheck check;
    check.node = q.name();
    check.tensor = q.input(0)->name();
    check.integers = q.output(0)->name();
    const Tensor& x = value_in_run(*cut, q.input(0), fed, outs, cut_index);
    const Tensor& ours = outs[cut_index.at(q.output(0))];
    const Tensor& theirs = fed[inputs.size() + k];
    compare_point(grids[k], x, ours, theirs, options, check);
    if (auto it = reference.find(check.tensor); it != reference.end() &&
                                                it->second.shape() == x.shape() &&
                                                it->second.dtype() == DType::kFloat32) {
      check.pre_quant_relative_l2 = relative_l2(x, it->second);
    }
    // The same point in the plain pass.
    const graph::Value* plain_out = plain->find_value(check.integers);
    const Tensor& plain_ints = plain_values[plain_index.at(plain_out)];
    for (int64_t i = 0; i < plain_ints.numel(); ++i) {
      const int64_t d = std::abs(integer_at(plain_ints, i) - integer_at(theirs, i));
      if (d == 0) continue;
      ++check.plain_differing;
      check.plain_max_step_difference = std::max(check.plain_max_step_difference, d);
    }
    if (check.plain_differing > 0 && !result.first_plain_difference) {
      result.first_plain_difference = k;
    }
    result.flips += check.flips;
    result.mismatches += check.mismatches;
    result.points.push_back(std::move(check));
  }

  for (size_t i = 0; i < original_outputs; ++i) {
    const graph::Value* v = plain->outputs()[i];
    auto it = reference.find(v->name());
    if (it == reference.end() || v->dtype() != DType::kFloat32) continue;
    const Tensor& p = plain_values[i];
    if (it->second.shape() != p.shape() || it->second.dtype() != DType::kFloat32) {
      throw_invalid("verify: reference value '" + v->name() + "': expected float32" +
                    kernels::shape_str(p.shape()) + ", got " + it->second.describe());
    }
    OutputCheck o;
    o.tensor = v->name();
    o.plain_relative_l2 = relative_l2(p, it->second);
    const graph::Value* tv = cut->find_value(v->name());
    if (tv && cut_index.count(tv)) {
      o.teacher_forced_relative_l2 = relative_l2(outs[cut_index.at(tv)], it->second);
    }
    result.outputs.push_back(std::move(o));
  }
  return result;
}

std::string model_with_points_as_outputs(std::string_view model_bytes,
                                         const std::string& source_name) {
  auto graph = graph::parse_onnx(model_bytes, source_name);
  // Any batch finds the points: the model's own when fixed, else 1. A model with a dynamic batch
  // gets outputs of unknown dims (their rank known), so that they hold at any batch.
  int64_t batch = 1;
  bool dynamic_batch = true;
  if (!graph->inputs().empty() && graph->inputs()[0]->has_shape() &&
      !graph->inputs()[0]->known_shape().empty() && graph->inputs()[0]->known_shape()[0] > 0) {
    batch = graph->inputs()[0]->known_shape()[0];
    dynamic_batch = false;
  }
  runtime::resolve(*graph, {.input_shapes = runtime::input_shapes_for_batch(*graph, batch)});
  onnx::ModelProto proto;
  if (!proto.ParseFromArray(model_bytes.data(), static_cast<int>(model_bytes.size()))) {
    throw_invalid("verify: '" + source_name + "' is not an ONNX model");
  }
  std::set<std::string> present;
  for (const onnx::ValueInfoProto& v : proto.graph().output()) present.insert(v.name());
  auto add = [&](const graph::Value* v) {
    if (v->is_graph_input() || !present.insert(v->name()).second) return;
    onnx::ValueInfoProto* info = proto.mutable_graph()->add_output();
    info->set_name(v->name());
    auto* t = info->mutable_type()->mutable_tensor_type();
    t->set_elem_type(graph::onnx_from_dtype(v->dtype()));
    auto* shape = t->mutable_shape();
    for (int64_t d : v->known_shape()) {
      auto* dim = shape->add_dim();
      if (!dynamic_batch) dim->set_dim_value(d);
    }
  };
  for (const graph::Node* q : activation_quantizers(*graph)) {
    add(q->input(0));
    add(q->output(0));
  }
  return proto.SerializeAsString();
}

}  // namespace qforge::quant
