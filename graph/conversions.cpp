// The conversion patterns: removal of identities (Identity, inference Dropout, pools over 1×1)
// and the Flatten → Linear head turned into a 1×1 Conv.
#include "graph/conversions.h"

#include <algorithm>
#include <string>
#include <variant>
#include <vector>

#include "graph/rewrite_util.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

using kernels::DType;
using kernels::shape_str;

bool output_used(const Node& n, size_t i) {
  const Value* v = n.output(i);
  return v && (!v->consumers().empty() || v->is_graph_output());
}

// Removing a node that passes input 0 through keeps a graph output's name by renaming the input
// value, which a graph input (or a value already an output) cannot take.
std::optional<std::string> bypass_refusal(const Node& n) {
  const Value* in = n.input(0);
  const Value* out = n.output(0);
  if (!in) return "input 0 is omitted";
  for (size_t i = 1; i < n.num_outputs(); ++i) {
    if (output_used(n, i)) return "output '" + n.output(i)->name() + "' is used";
  }
  if (out->is_graph_output() && (in->is_graph_input() || in->is_graph_output())) {
    return "graph output '" + out->name() + "' would alias graph value '" + in->name() + "'";
  }
  return std::nullopt;
}

void bypass(Graph& graph, Node* n) {
  Value* in = n->input(0);
  Value* out = n->output(0);
  const bool keep_name = out->is_graph_output();
  const std::string name = out->name();
  graph.replace_all_uses(out, in);
  graph.remove_node(n);
  if (keep_name) graph.rename_value(in, name);
}

Pattern bypass_pattern(std::string name, std::string topology, Step step, SelectFn extra) {
  const std::string role = step.role;
  Pattern p;
  p.name = std::move(name);
  p.kind = PatternKind::kConversion;
  p.topology = std::move(topology);
  p.trunk = {std::move(step)};
  p.select = [role, extra](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& n = *m.node(g, role);
    if (auto refusal = extra(g, m)) return refusal;
    return bypass_refusal(n);
  };
  p.rewrite = [role](Graph& g, const Match& m) { bypass(g, m.node(g, role)); };
  return p;
}

bool extra_inputs_scalar_constants(const Node& n) {
  for (size_t i = 1; i < n.num_inputs(); ++i) {
    if (n.input(i) && !scalar_constant(n.input(i))) return false;
  }
  return n.num_outputs() == 1;
}

// An Add of the chain value and a constant (a bias).
bool add_of_constant(const Node& n) {
  return n.num_inputs() == 2 && is_float_constant(n.input(0)) != is_float_constant(n.input(1));
}

// A bias constant broadcast over [N, out]: a scalar, [out] or [1, out].
bool bias_fits(const Value* b, int64_t out) {
  const auto& s = b->constant().shape();
  const int64_t numel = b->constant().numel();
  if (numel != 1 && numel != out) return false;
  return s.size() <= 1 || (s.size() == 2 && s[0] == 1);
}

std::string shape_of(const Value* v) {
  return v->has_shape() ? shape_str(*v->shape()) : "unknown";
}

}  // namespace

const std::vector<std::string>& unary_elementwise_ops() {
  static const std::vector<std::string> ops = {"Relu",    "Clip",        "LeakyRelu", "Elu",
                                               "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                                               "Erf",     "Neg",         "Sqrt",      "Gelu"};
  return ops;
}

// 0=Identity: its output is replaced by its input.
Pattern remove_identity_pattern() {
  return bypass_pattern("RemoveIdentity", "Identity", one("identity", {"Identity"}),
                        [](const Graph&, const Match&) { return std::optional<std::string>(); });
}

// 0=Cast to the type its input has already: torch.onnx writes one for F.softmax(x, dtype=
// torch.float32) of a float32 x (decoders' attention), which would stand between the softmax and
// the MatMul by V.
Pattern remove_no_op_cast_pattern() {
  auto select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& n = *m.node(g, "cast");
    const Value* in = n.input(0);
    const Value* out = n.output(0);
    if (!in->has_shape() || !out->has_shape()) {
      return "types of '" + in->name() + "' and '" + out->name() + "' are not resolved";
    }
    if (in->dtype() != out->dtype()) {
      return "casts " + std::string(kernels::dtype_name(in->dtype())) + " to " +
             kernels::dtype_name(out->dtype());
    }
    return std::nullopt;
  };
  return bypass_pattern("RemoveNoOpCast", "Cast (to its input's type)", one("cast", {"Cast"}),
                        select);
}

// 0=Dropout(data, ratio?, training_mode?) that passes data through: inference mode, or ratio 0.
Pattern remove_inference_dropout_pattern() {
  auto select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& n = *m.node(g, "dropout");
    const Value* ratio_input = n.input(1);
    const Value* mode_input = n.input(2);
    std::optional<float> ratio = ratio_input ? scalar_constant(ratio_input) : 0.5f;
    if (ratio == 0.0f) return std::nullopt;
    if (!mode_input) return std::nullopt;
    if (!mode_input->is_constant() || mode_input->constant().numel() != 1 ||
        mode_input->dtype() != DType::kBool) {
      return "training_mode '" + mode_input->name() + "' is not a constant boolean";
    }
    if (mode_input->constant().data<uint8_t>()[0] != 0) {
      return std::string("training_mode is true and ratio is not a constant 0");
    }
    return std::nullopt;
  };
  return bypass_pattern("RemoveInferenceDropout", "Dropout (inference)",
                        one("dropout", {"Dropout"}), select);
}

// 0=GlobalAveragePool | AveragePool | ReduceMean whose output equals its input (1×1 spatial).
Pattern remove_identity_pool_pattern() {
  auto select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& n = *m.node(g, "pool");
    const Value* in = n.input(0);
    const Value* out = n.output(0);
    if (!in->has_shape() || !out->has_shape()) {
      return "shapes of '" + in->name() + "' and '" + out->name() + "' are not resolved";
    }
    const Shape& s = *in->shape();
    // ReduceMean with equal shapes averages over axes of size 1 only; a pool also needs 1×1.
    const bool pool = n.op_type() != "ReduceMean";
    if (pool &&
        (s.size() < 3 || std::any_of(s.begin() + 2, s.end(), [](int64_t d) { return d != 1; }))) {
      return "input spatial size of " + shape_str(s) + " is not 1";
    }
    if (s != *out->shape()) {
      return "output shape " + shape_str(*out->shape()) + " differs from input shape " +
             shape_str(s);
    }
    const auto pads = n.attr_ints("pads", {});
    const bool padded = std::any_of(pads.begin(), pads.end(), [](int64_t p) { return p != 0; });
    if (n.op_type() == "AveragePool" && padded && n.attr_int("count_include_pad", 0) != 0) {
      return std::string("padding counts in the average (count_include_pad=1)");
    }
    return std::nullopt;
  };
  return bypass_pattern("RemoveIdentityPool", "GlobalAveragePool | AveragePool | ReduceMean",
                        one("pool", {"GlobalAveragePool", "AveragePool", "ReduceMean"}), select);
}

// 0=Flatten(axis 1) over [N, C, 1, 1], 1..k=element-wise unary ops, k+1=Gemm(A, W, C?) or
// MatMul(A, W), k+2=Add(bias) optional; becomes element-wise ops → Conv 1×1 → Flatten.
Pattern flatten_linear_to_conv_pattern() {
  Pattern p;
  p.name = "FlattenLinearToConv";
  p.kind = PatternKind::kConversion;
  p.topology = "Flatten -> [element-wise]* -> Gemm | MatMul -> [Add]?";
  p.trunk = {one("flatten", {"Flatten"}),
             zero_or_more("elementwise", unary_elementwise_ops(), extra_inputs_scalar_constants),
             one("linear", {"Gemm", "MatMul"}), optional("bias", {"Add"}, add_of_constant)};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& flatten = *m.node(g, "flatten");
    const Node& linear = *m.node(g, "linear");
    const Node* bias = m.node(g, "bias");
    if (flatten.attr_int("axis", 1) != 1) {
      return "Flatten axis is " + std::to_string(flatten.attr_int("axis", 1)) + ", expected 1";
    }
    const Value* x = flatten.input(0);
    if (!x->has_shape() || x->shape()->size() != 4 || (*x->shape())[2] != 1 ||
        (*x->shape())[3] != 1 || x->dtype() != DType::kFloat32) {
      return "Flatten input '" + x->name() + "' has shape " + shape_of(x) +
             ", expected float [N, C, 1, 1]";
    }
    const int64_t channels = (*x->shape())[1];
    const Node& chain_end =
        m.nodes_in(g, "elementwise").empty() ? flatten : *m.nodes_in(g, "elementwise").back();
    if (linear.input(0) != chain_end.output(0)) {
      return "the flattened value is input 1 of " + linear.label() + ", expected input 0";
    }
    const Value* w = linear.input(1);
    if (!is_float_constant(w) || w->constant().rank() != 2) {
      return "weight '" + w->name() + "' is not a constant float matrix";
    }
    const bool gemm = linear.op_type() == "Gemm";
    if (gemm && linear.attr_int("transA", 0) != 0) return std::string("Gemm has transA=1");
    const bool transposed = gemm && linear.attr_int("transB", 0) != 0;
    const auto& ws = w->constant().shape();
    const int64_t in_features = transposed ? ws[1] : ws[0];
    const int64_t out_features = transposed ? ws[0] : ws[1];
    if (in_features != channels) {
      return "weight '" + w->name() + "' has shape " + shape_str(ws) + ", expected " +
             std::to_string(channels) + " input features";
    }
    if (gemm && linear.input(2) &&
        (!is_float_constant(linear.input(2)) || !bias_fits(linear.input(2), out_features))) {
      return "Gemm bias '" + linear.input(2)->name() + "' is not a constant of " +
             std::to_string(out_features) + " values";
    }
    if (bias) {
      const Value* b = is_float_constant(bias->input(0)) ? bias->input(0) : bias->input(1);
      if (!bias_fits(b, out_features)) {
        return "bias '" + b->name() + "' has shape " + shape_str(b->constant().shape()) +
               ", expected [" + std::to_string(out_features) + "]";
      }
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* flatten = m.node(g, "flatten");
    std::vector<Node*> elementwise = m.nodes_in(g, "elementwise");
    Node* linear = m.node(g, "linear");
    Node* bias = m.node(g, "bias");
    Node* last = bias ? bias : linear;

    Value* x = flatten->input(0);
    const Shape x_shape = *x->shape();
    const int64_t batch = x_shape[0], channels = x_shape[1];

    // Conv weight [out, C, 1, 1] and bias [out] from the linear's constants.
    const bool gemm = linear->op_type() == "Gemm";
    const bool transposed = gemm && linear->attr_int("transB", 0) != 0;
    const float alpha = gemm ? linear->attr_float("alpha", 1.0f) : 1.0f;
    const float beta = gemm ? linear->attr_float("beta", 1.0f) : 1.0f;
    const Tensor& w = linear->input(1)->constant();
    const int64_t out_features = transposed ? w.dim(0) : w.dim(1);
    Tensor conv_w(DType::kFloat32, {out_features, channels, 1, 1});
    for (int64_t o = 0; o < out_features; ++o) {
      for (int64_t c = 0; c < channels; ++c) {
        const float v =
            transposed ? w.data<float>()[o * channels + c] : w.data<float>()[c * out_features + o];
        conv_w.data<float>()[o * channels + c] = alpha * v;
      }
    }
    Tensor conv_b(DType::kFloat32, {out_features});
    bool has_bias = false;
    auto add_bias = [&](const Tensor& b, float scale) {
      has_bias = true;
      for (int64_t o = 0; o < out_features; ++o) {
        conv_b.data<float>()[o] += scale * b.data<float>()[b.numel() == 1 ? 0 : o];
      }
    };
    if (gemm && linear->input(2)) add_bias(linear->input(2)->constant(), beta);
    if (bias) {
      const Value* b = is_float_constant(bias->input(0)) ? bias->input(0) : bias->input(1);
      add_bias(b->constant(), 1.0f);
    }

    // New nodes go where the chain ends: every input they read is ready there.
    Value* cur = x;
    for (Node* e : elementwise) {
      NodeSpec spec{.name = e->name() + "_4d",
                    .op_type = e->op_type(),
                    .inputs = e->inputs(),
                    .output_names = {g.unique_value_name(e->output(0)->name() + "_4d")},
                    .attributes = e->attributes(),
                    .domain = e->domain()};
      spec.inputs[0] = cur;
      Node* copy = g.insert_node(std::move(spec), last);
      copy->output(0)->set_type(DType::kFloat32, x_shape);
      cur = copy->output(0);
    }
    Value* weight = g.add_constant(g.unique_value_name(linear->name() + "_conv_weight"), conv_w);
    Value* conv_bias =
        has_bias ? g.add_constant(g.unique_value_name(linear->name() + "_conv_bias"), conv_b)
                 : nullptr;
    // The derivations: conv_w[o, c] = alpha·W[c, o] (W[o, c] when transposed) and conv_b[o] the
    // sum of the scaled biases (a one-value bias broadcast).
    const Value* w_value = linear->input(1);
    g.record_derivation(
        {.derived = weight->name(),
         .shape = weight->known_shape(),
         .terms = {{.source = w_value->name(),
                    .source_shape = w_value->known_shape(),
                    .factor = alpha,
                    .extent = {out_features, channels},
                    .derived_strides = {channels, 1},
                    .source_strides = transposed ? std::vector<int64_t>{channels, 1}
                                                 : std::vector<int64_t>{1, out_features}}}});
    if (conv_bias) {
      Derivation d{.derived = conv_bias->name(), .shape = conv_bias->known_shape(), .terms = {}};
      auto bias_term = [&](const Value* b, float scale) {
        d.terms.push_back({.source = b->name(),
                           .source_shape = b->known_shape(),
                           .factor = scale,
                           .extent = {out_features},
                           .derived_strides = {1},
                           .source_strides = {b->constant().numel() == 1 ? 0 : 1}});
      };
      if (gemm && linear->input(2)) bias_term(linear->input(2), beta);
      if (bias)
        bias_term(is_float_constant(bias->input(0)) ? bias->input(0) : bias->input(1), 1.0f);
      g.record_derivation(std::move(d));
    }
    std::vector<Value*> conv_inputs = {cur, weight};
    if (conv_bias) conv_inputs.push_back(conv_bias);
    Node* conv = g.insert_node({.name = linear->name() + "_conv",
                                .op_type = "Conv",
                                .inputs = std::move(conv_inputs),
                                .output_names = {g.unique_value_name(linear->name() + "_conv_out")},
                                .attributes = {{"kernel_shape", std::vector<int64_t>{1, 1}}}},
                               last);
    conv->output(0)->set_type(DType::kFloat32, {batch, out_features, 1, 1});
    Node* flat = g.insert_node({.name = linear->name() + "_flatten",
                                .op_type = "Flatten",
                                .inputs = {conv->output(0)},
                                .output_names = {g.unique_value_name(linear->name() + "_flat")},
                                .attributes = {{"axis", int64_t{1}}}},
                               last);
    flat->output(0)->set_type(DType::kFloat32, {batch, out_features});

    // The old chain goes; its final value's name and uses pass to the new Flatten.
    Value* old_out = last->output(0);
    const std::string out_name = old_out->name();
    g.replace_all_uses(old_out, flat->output(0));
    if (bias) g.remove_node(bias);
    g.remove_node(linear);
    for (auto it = elementwise.rbegin(); it != elementwise.rend(); ++it) g.remove_node(*it);
    g.remove_node(flatten);
    g.rename_value(flat->output(0), out_name);
  };
  return p;
}

namespace {

// The float constant operand of a binary node (either side), or nullptr.
const Value* constant_operand(const Node& n) {
  if (n.num_inputs() != 2) return nullptr;
  if (is_float_constant(n.input(1))) return n.input(1);
  return is_float_constant(n.input(0)) ? n.input(0) : nullptr;
}

// A ReduceMean over the last axis of its rank-`rank` input alone, keeping it (axes as the
// attribute, or as input 1 from opset 18).
bool mean_over_last_axis(const Node& reduce, size_t rank) {
  if (reduce.op_type() != "ReduceMean" || reduce.attr_int("keepdims", 1) != 1) return false;
  std::vector<int64_t> axes = reduce.attr_ints("axes", {});
  if (const Value* a = reduce.input(1)) {
    if (!a->is_constant() || a->dtype() != DType::kInt64) return false;
    axes = a->constant().to_int64_vector();
  }
  const auto last = static_cast<int64_t>(rank) - 1;
  return axes.size() == 1 && (axes[0] == -1 || axes[0] == last);
}

// A constant of `d` values along the last axis alone (γ or β of a LayerNorm over it).
bool last_axis_vector(const Value* v, int64_t d) {
  if (!is_float_constant(v)) return false;
  const Shape& s = v->constant().shape();
  if (s.empty() || s.back() != d) return false;
  return std::all_of(s.begin(), s.end() - 1, [](int64_t x) { return x == 1; });
}

// `v`, such a constant, as a vector of its `d` values: itself when it is one (torch writes them
// so), else a reshaped copy whose derivation is recorded, so that training's gradient goes back.
Value* as_last_axis_vector(Graph& g, Value* v, int64_t d) {
  if (v->constant().rank() == 1) return v;
  Value* r =
      g.add_constant(g.unique_value_name(v->name() + "_vector"), v->constant().reshaped({d}));
  g.record_derivation({.derived = r->name(),
                       .shape = {d},
                       .terms = {{.source = v->name(),
                                  .source_shape = v->known_shape(),
                                  .extent = {d},
                                  .derived_strides = {1},
                                  .source_strides = {1}}}});
  return r;
}

}  // namespace

// 9 nodes as torch.onnx writes nn.LayerNorm before opset 17: mean = ReduceMean(x),
// c = Sub(x, mean), 0=Pow(c, 2), 1=ReduceMean, 2=Add(·, ε), 3=Sqrt, 4=Div(c, ·), 5=Mul(·, γ),
// 6=Add(·, β)?; becomes one LayerNormalization over the last axis (the Sub and the first
// ReduceMean, read by nothing else, go too).
Pattern compose_layer_norm_pattern() {
  Pattern p;
  p.name = "ComposeLayerNorm";
  p.kind = PatternKind::kConversion;
  p.topology = "Sub -> (Pow -> ReduceMean -> Add -> Sqrt) -> Div -> Mul -> [Add]?";
  Fork fork;
  fork.node = one("normalize", {"Div"});
  fork.branches = {Branch{.input = 0, .chain = {}},
                   Branch{.input = 1,
                          .chain = {one("square", {"Pow"}), one("variance", {"ReduceMean"}),
                                    one("epsilon", {"Add"}), one("std", {"Sqrt"})}}};
  fork.shared_sources = {{0, 1}};
  p.fork = std::move(fork);
  p.trunk = {one("gamma", {"Mul"}), optional("beta", {"Add"})};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& div = *m.node(g, "normalize");
    const Value* centered = div.input(0);
    const Node* sub = centered->producer();
    if (!sub || sub->op_type() != "Sub" || centered->is_graph_output() ||
        centered->consumers().size() != 2) {
      return "the normalized value '" + centered->name() +
             "' is not a Sub read by the Pow and the Div alone";
    }
    const Value* x = sub->input(0);
    const Value* mean = sub->input(1);
    const Node* first_mean = mean->producer();
    if (!x->has_shape() || x->dtype() != DType::kFloat32 || x->shape()->empty()) {
      return "input '" + x->name() + "' has no resolved float shape";
    }
    const size_t rank = x->shape()->size();
    if (!first_mean || first_mean->input(0) != x || !mean_over_last_axis(*first_mean, rank) ||
        mean->consumers().size() != 1 || mean->is_graph_output()) {
      return sub->label() + " does not subtract a mean over the last axis of '" + x->name() +
             "' read by it alone";
    }
    if (!mean_over_last_axis(*m.node(g, "variance"), rank)) {
      return m.node(g, "variance")->label() + " is not a mean over the last axis";
    }
    const Node& square = *m.node(g, "square");
    if (scalar_constant(square.input(1)) != 2.0f) return square.label() + " is not a square";
    const Node& epsilon = *m.node(g, "epsilon");
    const std::optional<float> eps = epsilon.input(0) == m.node(g, "variance")->output(0)
                                         ? scalar_constant(epsilon.input(1))
                                         : std::nullopt;
    if (!eps || !(*eps >= 0)) return epsilon.label() + " does not add a constant ε >= 0";
    const int64_t d = x->shape()->back();
    const Node& gamma = *m.node(g, "gamma");
    if (!last_axis_vector(constant_operand(gamma), d)) {
      return gamma.label() + " does not scale by a constant of the last axis' " +
             std::to_string(d) + " values";
    }
    if (const Node* beta = m.node(g, "beta");
        beta && !last_axis_vector(constant_operand(*beta), d)) {
      return beta->label() + " does not add a constant of the last axis' " + std::to_string(d) +
             " values";
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* div = m.node(g, "normalize");
    Node* gamma = m.node(g, "gamma");
    Node* beta = m.node(g, "beta");
    Node* sub = div->input(0)->producer();
    Node* first_mean = sub->input(1)->producer();
    Node* last = beta ? beta : gamma;
    Value* x = sub->input(0);
    const int64_t d = x->shape()->back();
    // γ and β as vectors of the last axis.
    auto vector_of = [&](const Node* n) {
      return as_last_axis_vector(g, const_cast<Value*>(constant_operand(*n)), d);
    };
    std::vector<Value*> inputs = {x, vector_of(gamma)};
    if (beta) inputs.push_back(vector_of(beta));
    const float eps = *scalar_constant(m.node(g, "epsilon")->input(1));
    Node* norm = g.insert_node({.name = name_with(div->name(), "/LayerNormalization"),
                                .op_type = "LayerNormalization",
                                .inputs = std::move(inputs),
                                .output_names = {g.unique_value_name(
                                    name_with(div->name(), "/LayerNormalization_output"))},
                                .attributes = {{"axis", int64_t{-1}}, {"epsilon", eps}}},
                               last);
    norm->output(0)->set_type(DType::kFloat32, *x->shape());
    // The chain goes; its final value's name and uses pass to the LayerNormalization.
    Value* old_out = last->output(0);
    const std::string out_name = old_out->name();
    g.replace_all_uses(old_out, norm->output(0));
    for (Node* n : {beta, gamma, div, m.node(g, "std"), m.node(g, "epsilon"), m.node(g, "variance"),
                    m.node(g, "square"), sub, first_mean}) {
      if (n) g.remove_node(n);
    }
    g.rename_value(norm->output(0), out_name);
  };
  return p;
}

namespace {

// The nodes of an RMSNorm written out, found from its ReduceMean (see compose_rms_norm_pattern).
struct RmsChain {
  Value* x = nullptr;
  Value* weight = nullptr;  // a constant vector of the last axis
  float epsilon = 0;
  std::vector<Node*> nodes;  // square, mean, epsilon, sqrt, [reciprocal], normalize, scale
  Node* scale = nullptr;
};

std::variant<RmsChain, std::string> rms_chain_of(const Node& mean) {
  RmsChain c;
  const Value* squared = mean.input(0);
  const Node* square = squared->producer();
  if (!square || !((square->op_type() == "Pow" && scalar_constant(square->input(1)) == 2.0f) ||
                   (square->op_type() == "Mul" && square->input(0) == square->input(1)))) {
    return "'" + squared->name() + "' is not a square (Pow(x, 2) or Mul(x, x))";
  }
  c.x = square->input(0);
  if (!c.x->has_shape() || c.x->shape()->empty() || c.x->dtype() != DType::kFloat32) {
    return "input '" + c.x->name() + "' has no resolved float shape";
  }
  if (private_reader(squared) != &mean || !mean_over_last_axis(mean, c.x->shape()->size())) {
    return "it is not the one mean over the last axis of the square '" + squared->name() + "'";
  }
  // A LayerNorm's variance: x is centered by a mean of its own source (ComposeLayerNorm's).
  if (const Node* sub = c.x->producer(); sub && sub->op_type() == "Sub" && sub->input(1) &&
                                         sub->input(1)->producer() &&
                                         sub->input(1)->producer()->op_type() == "ReduceMean" &&
                                         sub->input(1)->producer()->input(0) == sub->input(0)) {
    return "'" + c.x->name() + "' is centered by its mean: a LayerNorm's";
  }
  Node* eps = private_reader(mean.output(0));
  const std::optional<float> epsilon = eps && eps->op_type() == "Add"
                                           ? scalar_constant(other_input(*eps, mean.output(0)))
                                           : std::nullopt;
  if (!epsilon || !(*epsilon >= 0)) return "the mean square is not followed by an Add of ε >= 0";
  c.epsilon = *epsilon;
  Node* root = private_reader(eps->output(0));
  if (!root || root->op_type() != "Sqrt") return eps->label() + " is not followed by a Sqrt";
  c.nodes.push_back(const_cast<Node*>(square));
  c.nodes.push_back(const_cast<Node*>(&mean));
  c.nodes.push_back(eps);
  c.nodes.push_back(root);
  // x / sqrt(·), or x · (1 / sqrt(·)) with the reciprocal a Div of 1 or a Reciprocal.
  Node* next = private_reader(root->output(0));
  Value* normalized = nullptr;
  if (next && next->op_type() == "Div" && next->input(1) == root->output(0) &&
      next->input(0) == c.x) {
    normalized = next->output(0);
  } else if (next && ((next->op_type() == "Div" && next->input(1) == root->output(0) &&
                       scalar_constant(next->input(0)) == 1.0f) ||
                      next->op_type() == "Reciprocal")) {
    Node* times = private_reader(next->output(0));
    if (!times || times->op_type() != "Mul" || other_input(*times, next->output(0)) != c.x) {
      return "the reciprocal root '" + next->output(0)->name() + "' does not multiply '" +
             c.x->name() + "' alone";
    }
    c.nodes.push_back(next);
    next = times;
    normalized = times->output(0);
  } else {
    return "the root '" + root->output(0)->name() + "' does not divide '" + c.x->name() + "'";
  }
  c.nodes.push_back(next);
  c.scale = private_reader(normalized);
  if (!c.scale || c.scale->op_type() != "Mul") {
    return "the normalized '" + normalized->name() + "' is not scaled by one Mul";
  }
  c.weight = other_input(*c.scale, normalized);
  if (!last_axis_vector(c.weight, c.x->shape()->back())) {
    return c.scale->label() + " does not scale by a constant of the last axis' " +
           std::to_string(c.x->shape()->back()) + " values";
  }
  c.nodes.push_back(c.scale);
  return c;
}

}  // namespace

// An RMSNorm as Llama's and T5's modeling code writes it: 0=ReduceMean over the last axis of
// Pow(x, 2) or Mul(x, x), then Add ε, Sqrt, and x divided by the root or multiplied by its
// reciprocal (Div(1, ·) or Reciprocal), then Mul by a weight of the last axis; also
// RMSNormalization as imported from opset 23. Becomes one RMSNorm module (X, scale; epsilon).
Pattern compose_rms_norm_pattern() {
  Pattern p;
  p.name = "ComposeRMSNorm";
  p.kind = PatternKind::kConversion;
  p.topology =
      "(Pow(x, 2) | Mul(x, x)) -> ReduceMean -> Add ε -> Sqrt -> (Div(x, ·) | (Div(1, ·) | "
      "Reciprocal) -> Mul(x, ·)) -> Mul(weight)";
  // Anchored on the mean square's ReduceMean -> Add -> Sqrt, which only norms have; the rest is
  // followed from there.
  p.trunk = {one("mean", {"ReduceMean"}), one("epsilon", {"Add"}), one("root", {"Sqrt"})};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    auto chain = rms_chain_of(*m.node(g, "mean"));
    if (const auto* reason = std::get_if<std::string>(&chain)) return *reason;
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    RmsChain c = std::get<RmsChain>(rms_chain_of(*m.node(g, "mean")));
    Value* weight = as_last_axis_vector(g, c.weight, c.x->shape()->back());
    Value* old = c.scale->output(0);
    const std::string name = old->name();
    Node* norm = g.insert_node({.name = name_with(c.scale->name(), "/RMSNorm"),
                                .op_type = "RMSNorm",
                                .inputs = {c.x, weight},
                                .output_names = {g.unique_value_name(name + "_rms")},
                                .attributes = {{"epsilon", c.epsilon}}},
                               c.scale);
    norm->output(0)->set_type(DType::kFloat32, *old->shape());
    g.replace_all_uses(old, norm->output(0));
    for (auto it = c.nodes.rbegin(); it != c.nodes.rend(); ++it) g.remove_node(*it);
    g.rename_value(norm->output(0), name);
  };
  return p;
}

std::vector<Pattern> conversion_patterns() {
  return {remove_identity_pattern(),          remove_no_op_cast_pattern(),
          remove_inference_dropout_pattern(), remove_identity_pool_pattern(),
          flatten_linear_to_conv_pattern(),   compose_layer_norm_pattern(),
          compose_rms_norm_pattern()};
}

}  // namespace qforge::graph
