// Fusion patterns and the fused modules they make for convolutional and linear layers, each a
// catalog entry with its quantization contract and its lowering back to standard ONNX ops.
//
// Module nodes (domain "qforge") keep their parts: inputs are the data inputs first (the
// quantized ones), then the constant parameters (conv W, conv B or omitted, BN gamma, beta,
// mean, var; Linear W, B or omitted); attributes are the conv's own, BN `epsilon`, and
// `activation` with `alpha`, `beta`, `clip_min`, `clip_max`. BN stays BN: folding happens in the
// runtime kernel, never in the graph.
//
// BN is optional in every conv module, as in the module guide (`Conv -> [BN] -> Act`): a
// BN-folded export's Conv -> Act is a ConvBNAct whose inputs end after W, B? and which has no
// `epsilon`; nothing is invented for the missing BN.
#include "graph/fusions.h"

#include <array>
#include <cmath>
#include <limits>
#include <optional>

#include "graph/catalog.h"
#include "graph/fusions_extra.h"
#include "graph/rewrite_util.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

constexpr char kDomain[] = "qforge";

bool near(std::optional<float> got, float want) {
  return got && std::fabs(*got - want) <= 1e-4f * std::fabs(want);
}

// ---------------------------------------------------------------------------------------------
// Activations: one node, or the multi-node GELU (Erf form) and SiLU that read their input twice.

const std::vector<std::string>& single_node_activations() {
  static const std::vector<std::string> ops = {"Relu",      "Clip",        "LeakyRelu", "Elu",
                                               "HardSwish", "HardSigmoid", "Sigmoid",   "Gelu"};
  return ops;
}

std::optional<Activation> single_activation(Node* n) {
  Activation a;
  a.kind = n->op_type();
  a.nodes = {n};
  a.output = n->output(0);
  if (n->num_outputs() != 1) return std::nullopt;
  if (a.kind == "Clip") {
    for (size_t i : {size_t{1}, size_t{2}}) {
      if (!n->input(i)) continue;
      std::optional<float> bound = scalar_constant(n->input(i));
      if (!bound) return std::nullopt;
      (i == 1 ? a.clip_min : a.clip_max) = *bound;
    }
  } else if (a.kind == "LeakyRelu") {
    a.alpha = n->attr_float("alpha", 0.01f);
  } else if (a.kind == "Elu") {
    a.alpha = n->attr_float("alpha", 1.0f);
  } else if (a.kind == "HardSigmoid") {
    a.alpha = n->attr_float("alpha", 0.2f);
    a.beta = n->attr_float("beta", 0.5f);
  } else if (a.kind == "Gelu") {
    // The ONNX op (opset 20) in its erf form is the modules' Gelu; the tanh form is not.
    if (n->attr_string("approximate", "none") != "none") return std::nullopt;
  } else if (std::find(single_node_activations().begin(), single_node_activations().end(),
                       a.kind) == single_node_activations().end()) {
    return std::nullopt;
  }
  return a;
}

// x -> Div(√2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5), x read by the Div and the first Mul only.
std::optional<Activation> gelu_after(const Value* x) {
  if (x->consumers().size() != 2 || x->is_graph_output()) return std::nullopt;
  Node* div = nullptr;
  Node* mul_x = nullptr;
  for (Node* c : x->consumers()) {
    if (c->op_type() == "Div" && c->input(0) == x) div = c;
    if (c->op_type() == "Mul") mul_x = c;
  }
  if (!div || !mul_x || !near(scalar_constant(div->input(1)), std::sqrt(2.0f))) return std::nullopt;
  Node* erf = private_reader(div->output(0));
  if (!erf || erf->op_type() != "Erf") return std::nullopt;
  Node* add = private_reader(erf->output(0));
  if (!add || add->op_type() != "Add" ||
      !near(scalar_constant(other_input(*add, erf->output(0))), 1))
    return std::nullopt;
  if (private_reader(add->output(0)) != mul_x || other_input(*mul_x, add->output(0)) != x)
    return std::nullopt;
  Node* half = private_reader(mul_x->output(0));
  if (!half || half->op_type() != "Mul" ||
      !near(scalar_constant(other_input(*half, mul_x->output(0))), 0.5f)) {
    return std::nullopt;
  }
  Activation a;
  a.kind = "Gelu";
  a.nodes = {div, erf, add, mul_x, half};
  a.output = half->output(0);
  return a;
}

// x -> Sigmoid -> Mul(x), x read by those two only.
std::optional<Activation> silu_after(const Value* x) {
  if (x->consumers().size() != 2 || x->is_graph_output()) return std::nullopt;
  Node* sigmoid = nullptr;
  Node* mul = nullptr;
  for (Node* c : x->consumers()) {
    if (c->op_type() == "Sigmoid") sigmoid = c;
    if (c->op_type() == "Mul") mul = c;
  }
  if (!sigmoid || !mul || private_reader(sigmoid->output(0)) != mul ||
      other_input(*mul, sigmoid->output(0)) != x) {
    return std::nullopt;
  }
  Activation a;
  a.kind = "Silu";
  a.nodes = {sigmoid, mul};
  a.output = mul->output(0);
  return a;
}

std::optional<Activation> activation_after(const Value* x) {
  if (!x) return std::nullopt;
  if (Node* n = private_reader(x)) {
    if (auto a = single_activation(n)) return a;
  }
  if (auto a = gelu_after(x)) return a;
  return silu_after(x);
}

bool feeds_activation(const Node& n) {
  return activation_after(n.output(0)).has_value();
}

void set_activation_attributes(NodeSpec& spec, const Activation& a) {
  spec.attributes["activation"] = a.kind;
  if (a.kind == "LeakyRelu" || a.kind == "Elu" || a.kind == "HardSigmoid") {
    spec.attributes["alpha"] = a.alpha;
  }
  if (a.kind == "HardSigmoid") spec.attributes["beta"] = a.beta;
  if (a.kind == "Clip") {
    spec.attributes["clip_min"] = a.clip_min;
    spec.attributes["clip_max"] = a.clip_max;
  }
}

// ---------------------------------------------------------------------------------------------
// Shared match conditions

bool conv_with_constant_weights(const Node& n) {
  return n.num_outputs() == 1 && is_float_constant(n.input(1)) &&
         (!n.input(2) || is_float_constant(n.input(2)));
}

bool inference_batch_norm(const Node& n) {
  if (n.attr_int("training_mode", 0) != 0) return false;
  for (size_t i = 1; i <= 4; ++i) {
    if (!is_float_constant(n.input(i)) || n.input(i)->constant().rank() != 1) return false;
  }
  for (size_t i = 1; i < n.num_outputs(); ++i) {
    const Value* v = n.output(i);
    if (v && (!v->consumers().empty() || v->is_graph_output())) return false;
  }
  return true;
}

// The Add's input that is not `chain`: a computed tensor of the sum's shape.
const Value* residual_of(const Node& add, const Value* chain) {
  const Value* other = other_input(add, chain);
  if (!other || other->is_constant() || other == chain) return nullptr;
  if (!other->has_shape() || !add.output(0)->has_shape() || !chain->has_shape() ||
      *other->shape() != *add.output(0)->shape() || *chain->shape() != *other->shape()) {
    return nullptr;
  }
  return other;
}

bool conv_with_constant_weights(const Node& n);

// An Add with a BN or Conv output at one input and a residual at the other.
bool residual_add(const Node& n) {
  if (n.num_inputs() != 2) return false;
  for (const Value* in : n.inputs()) {
    const Node* p = in ? in->producer() : nullptr;
    if (!p || !residual_of(n, in)) continue;
    if (p->op_type() == "BatchNormalization") return true;
    if (p->op_type() == "Conv" && conv_with_constant_weights(*p)) return true;
  }
  return false;
}

// Gemm(A, W, C?) without transA, or MatMul(A, W), with a constant 2-D weight.
bool linear_with_constant_weight(const Node& n) {
  if (n.num_outputs() != 1 || !is_float_constant(n.input(1)) || n.input(1)->constant().rank() != 2)
    return false;
  if (n.op_type() == "Gemm") {
    return n.attr_int("transA", 0) == 0 && (!n.input(2) || is_float_constant(n.input(2)));
  }
  return true;
}

int64_t linear_out_features(const Node& n) {
  const auto& s = n.input(1)->constant().shape();
  const bool transposed = n.op_type() == "Gemm" && n.attr_int("transB", 0) != 0;
  return transposed ? s[0] : s[1];
}

// An Add of a MatMul's output and a constant bias of [out] or [1, out] (or a scalar).
bool matmul_bias(const Node& add) {
  if (add.num_inputs() != 2) return false;
  const bool first = is_float_constant(add.input(0));
  if (first == is_float_constant(add.input(1))) return false;
  const Value* bias = first ? add.input(0) : add.input(1);
  const Node* mm = (first ? add.input(1) : add.input(0))->producer();
  if (!mm || mm->op_type() != "MatMul" || !linear_with_constant_weight(*mm)) return false;
  const auto& s = bias->constant().shape();
  const int64_t numel = bias->constant().numel();
  return (numel == 1 || numel == linear_out_features(*mm)) &&
         (s.size() <= 1 || (s.size() == 2 && s[0] == 1));
}

// The last node of a linear layer: its bias Add when a MatMul has one.
const Node& linear_end(const Node& linear) {
  if (linear.op_type() == "MatMul") {
    const Node* add = private_reader(linear.output(0));
    if (add && add->op_type() == "Add" && matmul_bias(*add)) return *add;
  }
  return linear;
}

// ---------------------------------------------------------------------------------------------
// Rewriting: one module node replaces a chain, at the chain's end, under the chain's output name.

std::string module_name(const Graph& g, const Node& first, std::string_view module) {
  std::string stem = first.name();
  stem.append("/").append(module);
  return g.find_node(stem) ? g.unique_node_name(stem) : stem;
}

// Inserts `spec` before `last`, moves the uses of `out` onto it, removes `chain` (data-flow
// order) and gives the module's output the old name.
Node* replace_chain(Graph& g, NodeSpec spec, const std::vector<Node*>& chain, Value* out) {
  const std::string out_name = out->name();
  std::string temp = out_name;
  temp.append("_module");
  spec.output_names = {g.unique_value_name(temp)};
  spec.domain = kDomain;
  Node* module = g.insert_node(std::move(spec), chain.back());
  if (out->has_shape()) module->output(0)->set_type(out->dtype(), *out->shape());
  g.replace_all_uses(out, module->output(0));
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) g.remove_node(*it);
  g.rename_value(module->output(0), out_name);
  return module;
}

// TensorRT runs a grouped conv in INT8 only with channels per group multiples of 4 (the module
// guide); depthwise convs are the exception.
bool int8_unsupported(const Node& conv) {
  const int64_t group = conv.attr_int("group", 1);
  if (group <= 1) return false;
  const auto& w = conv.input(1)->constant().shape();
  const int64_t out_per_group = w[0] / group;
  const int64_t in_per_group = w[1];
  if (in_per_group == 1) return false;  // depthwise
  return in_per_group % 4 != 0 || out_per_group % 4 != 0;
}

// Conv and BN attributes and parameters: [W, B?, gamma, beta, mean, var], or [W, B?] without BN.
void add_conv_bn_parts(NodeSpec& spec, const Node& conv, const Node* bn) {
  spec.attributes = conv.attributes();
  if (bn) spec.attributes["epsilon"] = bn->attr_float("epsilon", 1e-5f);
  if (int8_unsupported(conv)) spec.attributes["int8_unsupported"] = int64_t{1};
  const OpSchema& conv_schema = *find_schema(conv.op_type());
  spec.inputs.push_back(role_input(conv_schema, conv, Role::kWeight));
  spec.inputs.push_back(role_input(conv_schema, conv, Role::kBias));
  if (!bn) return;
  const OpSchema& bn_schema = *find_schema("BatchNormalization");
  for (Role r : {Role::kBnGamma, Role::kBnBeta, Role::kBnMean, Role::kBnVar}) {
    spec.inputs.push_back(role_input(bn_schema, *bn, r));
  }
}

// The last node of a conv chain's Conv -> [BN] part.
Node* conv_chain_end(Node* conv, Node* bn) {
  return bn ? bn : conv;
}

// The nodes of the Conv -> [BN] part, in data-flow order.
std::vector<Node*> conv_chain(Node* conv, Node* bn) {
  if (bn) return {conv, bn};
  return {conv};
}

std::vector<Node*> with_activation(std::vector<Node*> chain, const Activation& a) {
  for (Node* n : a.nodes) chain.push_back(n);
  return chain;
}

// Refusals shared by the conv patterns: conv weights and BN channel counts must agree.
std::optional<std::string> conv_bn_refusal(const Node& conv, const Node* bn) {
  const int64_t channels = conv.input(1)->constant().dim(0);
  for (size_t i = 1; bn && i <= 4; ++i) {
    if (bn->input(i)->constant().numel() != channels) {
      return bn->label() + ": parameter '" + bn->input(i)->name() + "' has " +
             std::to_string(bn->input(i)->constant().numel()) + " values, expected " +
             std::to_string(channels);
    }
  }
  if (conv.input(0) == nullptr || conv.input(0)->dtype() != DType::kFloat32) {
    return conv.label() + ": input is not float";
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Patterns

// 0=Conv(graph input X, W, B?), 1=BatchNormalization (optional), 2=Act, 3=MaxPool.
Pattern stem_pattern() {
  Pattern p;
  p.name = "StemConvBNActMaxPool";
  p.kind = PatternKind::kFusion;
  p.topology = "Conv(graph input) -> [BatchNormalization] -> Act -> MaxPool";
  p.trunk = {
      one("conv", {"Conv"},
          [](const Node& n) {
            return conv_with_constant_weights(n) && n.input(0)->is_graph_input();
          }),
      optional("bn", {"BatchNormalization"}, inference_batch_norm),
      one("act", single_node_activations(),
          [](const Node& n) { return single_activation(const_cast<Node*>(&n)).has_value(); }),
      one("pool", {"MaxPool"}, [](const Node& n) { return n.num_outputs() == 1; })};
  p.select = [](const Graph& g, const Match& m) {
    return conv_bn_refusal(*m.node(g, "conv"), m.node(g, "bn"));
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* conv = m.node(g, "conv");
    Node* bn = m.node(g, "bn");
    Node* act = m.node(g, "act");
    Node* pool = m.node(g, "pool");
    NodeSpec spec{.name = module_name(g, *conv, "StemConvBNActMaxPool"),
                  .op_type = "StemConvBNActMaxPool",
                  .inputs = {conv->input(0)}};
    add_conv_bn_parts(spec, *conv, bn);
    set_activation_attributes(spec, *single_activation(act));
    for (const auto& [key, value] : pool->attributes()) {
      std::string name = "pool_";
      name.append(key);
      spec.attributes[name] = value;
    }
    std::vector<Node*> chain = conv_chain(conv, bn);
    chain.push_back(act);
    chain.push_back(pool);
    replace_chain(g, std::move(spec), chain, pool->output(0));
  };
  return p;
}

// 0=Conv, 1=BatchNormalization (optional), 2=Add(·, residual) with the residual either input,
// 3=Act. A trunk rather than a fork: the downward link accepts the chain's output at either Add
// input.
Pattern conv_bn_add_act_pattern() {
  Pattern p;
  p.name = "ConvBNAddAct";
  p.kind = PatternKind::kFusion;
  p.topology = "Conv -> [BatchNormalization] -> Add(residual) -> Act";
  p.trunk = {
      one("conv", {"Conv"}, conv_with_constant_weights),
      optional("bn", {"BatchNormalization"}, inference_batch_norm),
      one("add", {"Add"}, [](const Node& n) { return residual_add(n) && feeds_activation(n); }),
      optional("act", single_node_activations())};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    Node* conv = m.node(g, "conv");
    Node* bn = m.node(g, "bn");
    const Node& add = *m.node(g, "add");
    if (auto refusal = conv_bn_refusal(*conv, bn)) return refusal;
    if (!residual_of(add, conv_chain_end(conv, bn)->output(0))) {
      return add.label() + ": the other input is not a computed tensor of the sum's shape";
    }
    if (!activation_after(add.output(0))) return add.label() + ": no activation follows";
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* conv = m.node(g, "conv");
    Node* bn = m.node(g, "bn");
    Node* add = m.node(g, "add");
    const Activation act = *activation_after(add->output(0));
    Value* residual = const_cast<Value*>(residual_of(*add, conv_chain_end(conv, bn)->output(0)));
    NodeSpec spec{.name = module_name(g, *conv, "ConvBNAddAct"),
                  .op_type = "ConvBNAddAct",
                  .inputs = {conv->input(0), residual}};
    add_conv_bn_parts(spec, *conv, bn);
    set_activation_attributes(spec, act);
    std::vector<Node*> chain = conv_chain(conv, bn);
    chain.push_back(add);
    replace_chain(g, std::move(spec), with_activation(chain, act), act.output);
  };
  return p;
}

// The BN reading a conv's output privately, if any.
const Node* batch_norm_after(const Node& conv) {
  const Node* n = private_reader(conv.output(0));
  return n && n->op_type() == "BatchNormalization" && inference_batch_norm(*n) ? n : nullptr;
}

// Refusals of the transposed conv patterns: BN channel counts must be the output channels,
// C_out = W[1] · group.
std::optional<std::string> conv_transpose_refusal(const Node& conv, const Node* bn) {
  const Tensor& w = conv.input(1)->constant();
  if (w.rank() < 3) return conv.label() + ": weight is not a convolution's";
  const int64_t channels = w.dim(1) * conv.attr_int("group", 1);
  for (size_t i = 1; bn && i <= 4; ++i) {
    if (bn->input(i)->constant().numel() != channels) {
      return bn->label() + ": parameter '" + bn->input(i)->name() + "' has " +
             std::to_string(bn->input(i)->constant().numel()) + " values, expected " +
             std::to_string(channels);
    }
  }
  if (conv.input(0) == nullptr || conv.input(0)->dtype() != DType::kFloat32) {
    return conv.label() + ": input is not float";
  }
  return std::nullopt;
}

// As int8_unsupported for a ConvTranspose: weight [C_in, C_out / group, …].
bool transposed_int8_unsupported(const Node& conv) {
  const int64_t group = conv.attr_int("group", 1);
  if (group <= 1) return false;
  const auto& w = conv.input(1)->constant().shape();
  const int64_t in_per_group = w[0] / group;
  const int64_t out_per_group = w[1];
  if (in_per_group == 1 && out_per_group == 1) return false;  // depthwise
  return in_per_group % 4 != 0 || out_per_group % 4 != 0;
}

// A conv module's node: the conv's input, its weight and bias, the BN's parameters if any.
NodeSpec conv_spec(const Graph& g, const Node& conv, const Node* bn, std::string_view module) {
  NodeSpec spec{.name = module_name(g, conv, module),
                .op_type = std::string(module),
                .inputs = {conv.input(0)}};
  add_conv_bn_parts(spec, conv, bn);
  return spec;
}

NodeSpec conv_transpose_spec(const Graph& g, const Node& conv, const Node* bn,
                             std::string_view module) {
  NodeSpec spec = conv_spec(g, conv, bn, module);
  spec.attributes.erase("int8_unsupported");
  if (transposed_int8_unsupported(conv)) spec.attributes["int8_unsupported"] = int64_t{1};
  return spec;
}

// A convolution op and the modules it fuses into: Conv, and ConvTranspose (a decoder's
// upsampling layer, which TensorRT runs with its BN and activation as one layer too).
struct ConvFamily {
  std::string_view op_type;
  std::string_view act_module;  // with an activation
  std::string_view bn_module;   // without
  std::optional<std::string> (*refusal)(const Node& conv, const Node* bn);
  NodeSpec (*spec)(const Graph& g, const Node& conv, const Node* bn, std::string_view module);
};

constexpr ConvFamily kConv{"Conv", "ConvBNAct", "ConvBN", conv_bn_refusal, conv_spec};
constexpr ConvFamily kConvTranspose{"ConvTranspose", "ConvTransposeBNAct", "ConvTransposeBN",
                                    conv_transpose_refusal, conv_transpose_spec};

// 0=conv, 1=BatchNormalization (optional), 2..=Act (one node, or GELU/SiLU, whose nodes are found
// from the chain's output because they read it twice). Without BN the conv itself must feed the
// activation.
Pattern conv_bn_act_pattern(const ConvFamily& family) {
  const ConvFamily* f = &family;
  Pattern p;
  p.name = std::string(f->act_module);
  p.kind = PatternKind::kFusion;
  p.topology = std::string(f->op_type) + " -> [BatchNormalization] -> Act";
  p.trunk = {one("conv", {std::string(f->op_type)},
                 [](const Node& n) {
                   return conv_with_constant_weights(n) &&
                          (batch_norm_after(n) || feeds_activation(n));
                 }),
             optional("bn", {"BatchNormalization"},
                      [](const Node& n) { return inference_batch_norm(n) && feeds_activation(n); }),
             optional("act", single_node_activations())};
  p.select = [f](const Graph& g, const Match& m) -> std::optional<std::string> {
    Node* conv = m.node(g, "conv");
    Node* bn = m.node(g, "bn");
    if (auto refusal = f->refusal(*conv, bn)) return refusal;
    const Node* end = conv_chain_end(conv, bn);
    if (!activation_after(end->output(0))) return end->label() + ": no activation follows";
    return std::nullopt;
  };
  p.rewrite = [f](Graph& g, const Match& m) {
    Node* conv = m.node(g, "conv");
    Node* bn = m.node(g, "bn");
    const Activation act = *activation_after(conv_chain_end(conv, bn)->output(0));
    NodeSpec spec = f->spec(g, *conv, bn, f->act_module);
    set_activation_attributes(spec, act);
    replace_chain(g, std::move(spec), with_activation(conv_chain(conv, bn), act), act.output);
  };
  return p;
}

// 0=conv, 1=BatchNormalization (optional): a conv that no longer pattern claimed, with its BN.
Pattern conv_bn_pattern(const ConvFamily& family) {
  const ConvFamily* f = &family;
  Pattern p;
  p.name = std::string(f->bn_module);
  p.kind = PatternKind::kFusion;
  p.topology = std::string(f->op_type) + " -> [BatchNormalization]";
  p.trunk = {one("conv", {std::string(f->op_type)}, conv_with_constant_weights),
             optional("bn", {"BatchNormalization"}, inference_batch_norm)};
  p.select = [f](const Graph& g, const Match& m) {
    return f->refusal(*m.node(g, "conv"), m.node(g, "bn"));
  };
  p.rewrite = [f](Graph& g, const Match& m) {
    Node* conv = m.node(g, "conv");
    Node* bn = m.node(g, "bn");
    replace_chain(g, f->spec(g, *conv, bn, f->bn_module), conv_chain(conv, bn),
                  conv_chain_end(conv, bn)->output(0));
  };
  return p;
}

// Linear attributes: the weight's layout as the source had it (weight_layout "gemm": [out, in],
// Gemm transB=1; "matmul": [in, out]), the source op, Gemm's alpha and beta.
NodeSpec linear_spec(const Graph& g, const Node& linear, const Node* bias_add,
                     std::string_view module) {
  NodeSpec spec{.name = module_name(g, linear, module), .op_type = std::string(module)};
  const bool gemm = linear.op_type() == "Gemm";
  const bool transposed = gemm && linear.attr_int("transB", 0) != 0;
  spec.attributes["weight_layout"] = std::string(transposed ? "gemm" : "matmul");
  spec.attributes["source"] = linear.op_type();
  if (gemm) {
    spec.attributes["alpha"] = linear.attr_float("alpha", 1.0f);
    spec.attributes["beta"] = linear.attr_float("beta", 1.0f);
  }
  Value* bias = gemm ? linear.input(2) : nullptr;
  if (bias_add) {
    bias = is_float_constant(bias_add->input(0)) ? bias_add->input(0) : bias_add->input(1);
  }
  spec.inputs = {linear.input(0), linear.input(1), bias};
  return spec;
}

std::optional<std::string> linear_refusal(const Node& linear) {
  const Value* x = linear.input(0);
  if (!x->has_shape() || x->dtype() != DType::kFloat32) {
    return linear.label() + ": input '" + x->name() + "' is not a float tensor of known shape";
  }
  if (linear.op_type() == "MatMul" && x->shape()->size() < 2) {
    return linear.label() + ": input '" + x->name() + "' is a vector";
  }
  return std::nullopt;
}

// 0=Gemm | MatMul (constant weight), 1=Add(bias) optional after a MatMul, 2..=Act.
Pattern linear_act_pattern() {
  Pattern p;
  p.name = "LinearAct";
  p.kind = PatternKind::kFusion;
  p.topology = "Gemm | MatMul -> [Add(bias)]? -> Act";
  p.trunk = {one("linear", {"Gemm", "MatMul"},
                 [](const Node& n) {
                   return linear_with_constant_weight(n) && feeds_activation(linear_end(n));
                 }),
             optional("bias", {"Add"}, matmul_bias), optional("act", single_node_activations())};
  p.select = [](const Graph& g, const Match& m) -> std::optional<std::string> {
    const Node& linear = *m.node(g, "linear");
    if (auto refusal = linear_refusal(linear)) return refusal;
    if (!activation_after(linear_end(linear).output(0))) {
      return linear.label() + ": no activation follows";
    }
    return std::nullopt;
  };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* linear = m.node(g, "linear");
    Node* bias = m.node(g, "bias");
    Node* end = bias ? bias : linear;
    const Activation act = *activation_after(end->output(0));
    NodeSpec spec = linear_spec(g, *linear, bias, "LinearAct");
    set_activation_attributes(spec, act);
    std::vector<Node*> chain = {linear};
    if (bias) chain.push_back(bias);
    replace_chain(g, std::move(spec), with_activation(chain, act), act.output);
  };
  return p;
}

// 0=Gemm | MatMul (constant weight), 1=Add(bias) optional after a MatMul.
Pattern linear_pattern() {
  Pattern p;
  p.name = "Linear";
  p.kind = PatternKind::kFusion;
  p.topology = "Gemm | MatMul -> [Add(bias)]?";
  p.trunk = {one("linear", {"Gemm", "MatMul"}, linear_with_constant_weight),
             optional("bias", {"Add"}, matmul_bias)};
  p.select = [](const Graph& g, const Match& m) { return linear_refusal(*m.node(g, "linear")); };
  p.rewrite = [](Graph& g, const Match& m) {
    Node* linear = m.node(g, "linear");
    Node* bias = m.node(g, "bias");
    NodeSpec spec = linear_spec(g, *linear, bias, "Linear");
    std::vector<Node*> chain = {linear};
    if (bias) chain.push_back(bias);
    replace_chain(g, std::move(spec), chain, chain.back()->output(0));
  };
  return p;
}

// 0=LayerNormalization (only its first output read).
Pattern layer_norm_pattern() {
  Pattern p;
  p.name = "LayerNorm";
  p.kind = PatternKind::kFusion;
  p.topology = "LayerNormalization";
  p.trunk = {one("norm", {"LayerNormalization"}, [](const Node& n) {
    for (size_t i = 1; i < n.num_outputs(); ++i) {
      const Value* v = n.output(i);
      if (v && (!v->consumers().empty() || v->is_graph_output())) return false;
    }
    return true;
  })};
  p.rewrite = [](Graph& g, const Match& m) {
    Node* norm = m.node(g, "norm");
    NodeSpec spec{.name = module_name(g, *norm, "LayerNorm"),
                  .op_type = "LayerNorm",
                  .inputs = norm->inputs(),
                  .attributes = norm->attributes()};
    replace_chain(g, std::move(spec), {norm}, norm->output(0));
  };
  return p;
}

// 0=InstanceNormalization | GroupNormalization. A normalisation takes a float input, as
// LayerNorm does: TensorRT runs normalisation layers in float, so a Q/DQ pair in front would
// only add a requantization.
Pattern channel_norm_pattern(const char* module, const char* op_type) {
  Pattern p;
  p.name = module;
  p.kind = PatternKind::kFusion;
  p.topology = op_type;
  p.trunk = {one("norm", {op_type})};
  p.rewrite = [module](Graph& g, const Match& m) {
    Node* norm = m.node(g, "norm");
    NodeSpec spec{.name = module_name(g, *norm, module),
                  .op_type = module,
                  .inputs = norm->inputs(),
                  .attributes = norm->attributes()};
    replace_chain(g, std::move(spec), {norm}, norm->output(0));
  };
  return p;
}

// 0=GlobalAveragePool.
Pattern adaptive_avg_pool_pattern() {
  Pattern p;
  p.name = "AdaptiveAvgPool";
  p.kind = PatternKind::kFusion;
  p.topology = "GlobalAveragePool";
  p.trunk = {one("pool", {"GlobalAveragePool"})};
  p.rewrite = [](Graph& g, const Match& m) {
    Node* pool = m.node(g, "pool");
    NodeSpec spec{.name = module_name(g, *pool, "AdaptiveAvgPool"),
                  .op_type = "AdaptiveAvgPool",
                  .inputs = pool->inputs()};
    replace_chain(g, std::move(spec), {pool}, pool->output(0));
  };
  return p;
}

}  // namespace

std::vector<Pattern> fusion_patterns() {
  return {stem_pattern(),
          conv_bn_add_act_pattern(),
          conv_bn_act_pattern(kConv),
          conv_bn_act_pattern(kConvTranspose),
          linear_act_pattern(),
          conv_bn_pattern(kConv),
          conv_bn_pattern(kConvTranspose),
          linear_pattern(),
          layer_norm_pattern(),
          channel_norm_pattern("InstanceNorm", "InstanceNormalization"),
          channel_norm_pattern("GroupNorm", "GroupNormalization"),
          adaptive_avg_pool_pattern(),
          act_add_pattern()};
}

std::optional<Activation> match_activation(const Value* x) {
  return activation_after(x);
}

std::optional<Activation> match_single_activation(Node& node) {
  return single_activation(&node);
}

void write_activation_attributes(NodeSpec& spec, const Activation& activation) {
  set_activation_attributes(spec, activation);
}

}  // namespace qforge::graph
