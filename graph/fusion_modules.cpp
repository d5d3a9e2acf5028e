// The fused conv, linear and norm modules as catalog entries: their inputs by role, their
// quantization contract and their lowering back to standard ONNX ops. graph/fusions.cpp holds
// the patterns that make them.
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

// ---------------------------------------------------------------------------------------------
// Lowering: standard nodes named "<module>/<part>", inserted where the module was.

class Lowering {
 public:
  Lowering(Graph& g, Node& module) : g_(g), module_(module) {}

  Value* add(std::string_view part, std::string op_type, std::vector<Value*> inputs,
             std::map<std::string, AttributeValue, std::less<>> attributes = {}) {
    std::string name = module_.name();
    name.append("/").append(part);
    std::string value = name;
    value.append("_out");
    Node* n = g_.insert_node({.name = g_.find_node(name) ? g_.unique_node_name(name) : name,
                              .op_type = std::move(op_type),
                              .inputs = std::move(inputs),
                              .output_names = {g_.unique_value_name(value)},
                              .attributes = std::move(attributes)},
                             &module_);
    return n->output(0);
  }

  Value* constant(std::string_view part, float v) {
    std::string name = module_.name();
    name.append("/").append(part);
    return g_.add_constant(g_.unique_value_name(name), Tensor::scalar_f32(v));
  }

  Value* ints(std::string_view part, const std::vector<int64_t>& v) {
    std::string name = module_.name();
    name.append("/").append(part);
    return g_.add_constant(g_.unique_value_name(name),
                           Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v));
  }

  // The activation named by the module's attributes, over x.
  Value* activation(Value* x) {
    const std::string kind = module_.attr_string("activation");
    if (kind == "Relu" || kind == "HardSwish" || kind == "Sigmoid") return add(kind, kind, {x});
    if (kind == "LeakyRelu" || kind == "Elu") {
      return add(kind, kind, {x}, {{"alpha", module_.attr_float("alpha")}});
    }
    if (kind == "HardSigmoid") {
      return add(kind, kind, {x},
                 {{"alpha", module_.attr_float("alpha")}, {"beta", module_.attr_float("beta")}});
    }
    if (kind == "Clip") {
      return add(kind, kind,
                 {x, constant("clip_min", module_.attr_float("clip_min")),
                  constant("clip_max", module_.attr_float("clip_max"))});
    }
    if (kind == "Gelu") {
      Value* d = add("Div", "Div", {x, constant("sqrt2", std::sqrt(2.0f))});
      Value* e = add("Erf", "Erf", {d});
      Value* a = add("Add", "Add", {e, constant("one", 1.0f)});
      Value* m = add("Mul", "Mul", {x, a});
      return add("Mul_half", "Mul", {m, constant("half", 0.5f)});
    }
    if (kind == "Silu") return add("Mul", "Mul", {x, add("Sigmoid", "Sigmoid", {x})});
    throw_invalid("lower: " + module_.label() + ": expected a known activation, got '" + kind +
                  "'");
  }

  // Conv then BN from the module's weight, bias and BN roles; the conv alone when the module has
  // no BN. `conv_op`: Conv, or ConvTranspose for the transposed modules (which keep
  // output_padding and output_shape too). Reports both nodes in `lowered`.
  Value* conv_bn(Value* x, Lowered& lowered, const std::string& conv_op = "Conv") {
    const OpSchema& schema = *find_schema(module_.op_type());
    std::map<std::string, AttributeValue, std::less<>> conv_attrs;
    for (const char* key : {"strides", "pads", "dilations", "group", "kernel_shape", "auto_pad",
                            "output_padding", "output_shape"}) {
      auto it = module_.attributes().find(key);
      if (it != module_.attributes().end()) conv_attrs[key] = it->second;
    }
    std::vector<Value*> conv_inputs = {x, role_input(schema, module_, Role::kWeight)};
    if (Value* b = role_input(schema, module_, Role::kBias)) conv_inputs.push_back(b);
    Value* c = add(conv_op, conv_op, std::move(conv_inputs), std::move(conv_attrs));
    lowered.weight_op = c->producer();
    if (!has_batch_norm(schema, module_)) return c;
    Value* y = add(
        "BatchNormalization", "BatchNormalization",
        {c, role_input(schema, module_, Role::kBnGamma), role_input(schema, module_, Role::kBnBeta),
         role_input(schema, module_, Role::kBnMean), role_input(schema, module_, Role::kBnVar)},
        {{"epsilon", module_.attr_float("epsilon", 1e-5f)}});
    lowered.batch_norm = y->producer();
    return y;
  }

  // Gemm or MatMul [+ Add] from inputs X, W, B?.
  Value* linear() {
    Value* x = module_.input(0);
    Value* w = module_.input(1);
    Value* b = module_.input(2);
    if (module_.attr_string("source") == "Gemm") {
      std::vector<Value*> inputs = {x, w};
      if (b) inputs.push_back(b);
      return add("Gemm", "Gemm", std::move(inputs),
                 {{"transB", int64_t{weight_layout(module_) == WeightLayout::kGemm ? 1 : 0}},
                  {"alpha", module_.attr_float("alpha", 1.0f)},
                  {"beta", module_.attr_float("beta", 1.0f)}});
    }
    Value* y = add("MatMul", "MatMul", {x, w});
    return b ? add("Add", "Add", {y, b}) : y;
  }

  // The module's output passes to `y` under its name; the module goes.
  void finish(Value* y) {
    const Value* out = module_.output(0);
    if (out->has_shape()) y->set_type(out->dtype(), *out->shape());
    replace_output(g_, module_, y);
  }

 private:
  Graph& g_;
  Node& module_;
};

void lower_conv_bn(Graph& g, Node& n, Lowered& lowered) {
  Lowering l(g, n);
  l.finish(l.conv_bn(n.input(0), lowered));
}

void lower_conv_bn_act(Graph& g, Node& n, Lowered& lowered) {
  Lowering l(g, n);
  l.finish(l.activation(l.conv_bn(n.input(0), lowered)));
}

void lower_conv_transpose_bn(Graph& g, Node& n, Lowered& lowered) {
  Lowering l(g, n);
  l.finish(l.conv_bn(n.input(0), lowered, "ConvTranspose"));
}

void lower_conv_transpose_bn_act(Graph& g, Node& n, Lowered& lowered) {
  Lowering l(g, n);
  l.finish(l.activation(l.conv_bn(n.input(0), lowered, "ConvTranspose")));
}

void lower_conv_bn_add_act(Graph& g, Node& n, Lowered& lowered) {
  Lowering l(g, n);
  Value* sum = l.add("Add_residual", "Add", {l.conv_bn(n.input(0), lowered), n.input(1)});
  l.finish(l.activation(sum));
}

void lower_stem(Graph& g, Node& n, Lowered& lowered) {
  Lowering l(g, n);
  std::map<std::string, AttributeValue, std::less<>> pool_attrs;
  for (const auto& [key, value] : n.attributes()) {
    if (key.rfind("pool_", 0) == 0) pool_attrs[key.substr(5)] = value;
  }
  Value* act = l.activation(l.conv_bn(n.input(0), lowered));
  l.finish(l.add("MaxPool", "MaxPool", {act}, std::move(pool_attrs)));
}

void lower_linear(Graph& g, Node& n, Lowered& /*lowered*/) {
  Lowering l(g, n);
  l.finish(l.linear());
}

void lower_linear_act(Graph& g, Node& n, Lowered& /*lowered*/) {
  Lowering l(g, n);
  l.finish(l.activation(l.linear()));
}

// LayerNormalization is an op from opset 17: a model of an older opset gets the chain torch.onnx
// writes there (over the last axis, which is what ComposeLayerNorm composes).
void lower_layer_norm(Graph& g, Node& n, Lowered& /*lowered*/) {
  Lowering l(g, n);
  if (g.opset == 0 || g.opset >= 17) {
    l.finish(l.add("LayerNormalization", "LayerNormalization", n.inputs(),
                   {n.attributes().begin(), n.attributes().end()}));
    return;
  }
  const Value* x = n.input(0);
  const int64_t axis = n.attr_int("axis", -1);
  if (!x->has_shape() || (axis != -1 && axis != static_cast<int64_t>(x->shape()->size()) - 1)) {
    throw_unsupported("lower: " + n.label() + ": opset " + std::to_string(g.opset) +
                      " has no LayerNormalization, and only one over the last axis is written "
                      "out");
  }
  const std::map<std::string, AttributeValue, std::less<>> last_axis = {
      {"axes", std::vector<int64_t>{-1}}};
  Value* mean = l.add("ReduceMean", "ReduceMean", {n.input(0)}, last_axis);
  Value* centered = l.add("Sub", "Sub", {n.input(0), mean});
  Value* square = l.add("Pow", "Pow", {centered, l.constant("two", 2.0f)});
  Value* variance = l.add("ReduceMean_1", "ReduceMean", {square}, last_axis);
  Value* shifted =
      l.add("Add", "Add", {variance, l.constant("epsilon", n.attr_float("epsilon", 1e-5f))});
  Value* y = l.add("Div", "Div", {centered, l.add("Sqrt", "Sqrt", {shifted})});
  y = l.add("Mul", "Mul", {y, n.input(1)});
  if (n.input(2)) y = l.add("Add_1", "Add", {y, n.input(2)});
  l.finish(y);
}

// x / sqrt(mean(x²) + ε) · scale written out as Llama's modeling code has torch.onnx write it
// (Pow, ReduceMean with the axes of the model's opset, Add, Sqrt, the reciprocal as Div(1, ·),
// Mul by x, Mul by the scale).
void lower_rms_norm(Graph& g, Node& n, Lowered& /*lowered*/) {
  Lowering l(g, n);
  Value* x = n.input(0);
  Value* square = l.add("Pow", "Pow", {x, l.constant("two", 2.0f)});
  Value* mean = g.opset >= 18 ? l.add("ReduceMean", "ReduceMean", {square, l.ints("axes", {-1})})
                              : l.add("ReduceMean", "ReduceMean", {square},
                                      {{"axes", std::vector<int64_t>{-1}}});
  Value* shifted =
      l.add("Add", "Add", {mean, l.constant("epsilon", n.attr_float("epsilon", 1e-6f))});
  Value* inverse = l.add("Div", "Div", {l.constant("one", 1.0f), l.add("Sqrt", "Sqrt", {shifted})});
  Value* y = l.add("Mul", "Mul", {x, inverse});
  l.finish(l.add("Mul_1", "Mul", {y, n.input(1)}));
}

void lower_instance_norm(Graph& g, Node& n, Lowered& /*lowered*/) {
  Lowering l(g, n);
  l.finish(l.add("InstanceNormalization", "InstanceNormalization", n.inputs(),
                 {n.attributes().begin(), n.attributes().end()}));
}

void lower_group_norm(Graph& g, Node& n, Lowered& /*lowered*/) {
  Lowering l(g, n);
  l.finish(l.add("GroupNormalization", "GroupNormalization", n.inputs(),
                 {n.attributes().begin(), n.attributes().end()}));
}

void lower_adaptive_avg_pool(Graph& g, Node& n, Lowered& /*lowered*/) {
  Lowering l(g, n);
  l.finish(l.add("GlobalAveragePool", "GlobalAveragePool", {n.input(0)}));
}

constexpr std::array<int, 4> kInput0 = {0, -1, -1, -1};
constexpr std::array<int, 4> kInputs01 = {0, 1, -1, -1};
constexpr std::array<int, 4> kNone = {-1, -1, -1, -1};

// Conv modules: X, W, B?, then the BN's four parameters when the conv had a BN after it.
constexpr InputRoles kConvBnRoles = {{{"X", Role::kData},
                                      {"W", Role::kWeight},
                                      {"B", Role::kBias, true},
                                      {"gamma", Role::kBnGamma, true},
                                      {"beta", Role::kBnBeta, true},
                                      {"mean", Role::kBnMean, true},
                                      {"var", Role::kBnVar, true}}};
constexpr InputRoles kConvBnAddRoles = {{{"X", Role::kData},
                                         {"residual", Role::kResidual},
                                         {"W", Role::kWeight},
                                         {"B", Role::kBias, true},
                                         {"gamma", Role::kBnGamma, true},
                                         {"beta", Role::kBnBeta, true},
                                         {"mean", Role::kBnMean, true},
                                         {"var", Role::kBnVar, true}}};
constexpr InputRoles kLinearRoles = {
    {{"X", Role::kData}, {"W", Role::kWeight}, {"B", Role::kBias, true}}};
constexpr InputRoles kNormRoles = {
    {{"X", Role::kData}, {"scale", Role::kOther}, {"bias", Role::kOther, true}}};
constexpr InputRoles kRmsNormRoles = {{{"X", Role::kData}, {"scale", Role::kOther}}};

// Linear weights keep the source's layout, [out, in] or [in, out]: the node's `weight_layout`.
constexpr std::array kModuleSchemas = {
    OpSchema{.op_type = "StemConvBNActMaxPool",
             .min_inputs = 3,
             .max_inputs = 7,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = kConvBnRoles,
             .quantized_inputs = kInput0,
             .folds_batch_norm = true,
             .lower = lower_stem,
             .summary = "X, W, B?[, gamma, beta, mean, var]: Conv -> [BN] -> Act -> MaxPool"},
    OpSchema{.op_type = "ConvBNAddAct",
             .min_inputs = 4,
             .max_inputs = 8,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = kConvBnAddRoles,
             .quantized_inputs = kInputs01,
             .folds_batch_norm = true,
             .lower = lower_conv_bn_add_act,
             .summary = "X, residual, W, B?[, gamma, beta, mean, var]: Conv -> [BN] -> Add -> Act"},
    OpSchema{.op_type = "ConvBNAct",
             .min_inputs = 3,
             .max_inputs = 7,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = kConvBnRoles,
             .quantized_inputs = kInput0,
             .folds_batch_norm = true,
             .lower = lower_conv_bn_act,
             .summary = "X, W, B?[, gamma, beta, mean, var]: Conv -> [BN] -> Act"},
    OpSchema{.op_type = "ConvBN",
             .min_inputs = 3,
             .max_inputs = 7,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = kConvBnRoles,
             .quantized_inputs = kInput0,
             .folds_batch_norm = true,
             .lower = lower_conv_bn,
             .summary = "X, W, B?[, gamma, beta, mean, var]: Conv -> [BN]"},
    // ConvTranspose weights are [C_in, C_out / group, kH, kW]: output channels on axis 1.
    OpSchema{.op_type = "ConvTransposeBNAct",
             .min_inputs = 3,
             .max_inputs = 7,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = kConvBnRoles,
             .quantized_inputs = kInput0,
             .weight_axis = 1,
             .transposed_weight = true,
             .folds_batch_norm = true,
             .lower = lower_conv_transpose_bn_act,
             .summary = "X, W, B?[, gamma, beta, mean, var]: ConvTranspose -> [BN] -> Act"},
    OpSchema{.op_type = "ConvTransposeBN",
             .min_inputs = 3,
             .max_inputs = 7,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = kConvBnRoles,
             .quantized_inputs = kInput0,
             .weight_axis = 1,
             .transposed_weight = true,
             .folds_batch_norm = true,
             .lower = lower_conv_transpose_bn,
             .summary = "X, W, B?[, gamma, beta, mean, var]: ConvTranspose -> [BN]"},
    OpSchema{.op_type = "LinearAct",
             .min_inputs = 3,
             .max_inputs = 3,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = kLinearRoles,
             .quantized_inputs = kInput0,
             .weight_layout_per_node = true,
             .lower = lower_linear_act,
             .summary = "X, W, B?: Gemm | MatMul [+ Add] -> Act"},
    OpSchema{.op_type = "Linear",
             .min_inputs = 3,
             .max_inputs = 3,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = kLinearRoles,
             .quantized_inputs = kInput0,
             .weight_layout_per_node = true,
             .lower = lower_linear,
             .summary = "X, W, B?: Gemm | MatMul [+ Add]"},
    OpSchema{.op_type = "LayerNorm",
             .min_inputs = 2,
             .max_inputs = 3,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = kNormRoles,
             .quantized_inputs = kNone,
             .lower = lower_layer_norm,
             .summary = "X, scale, bias?: LayerNormalization (float input)"},
    OpSchema{.op_type = "RMSNorm",
             .min_inputs = 2,
             .max_inputs = 2,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = kRmsNormRoles,
             .quantized_inputs = kNone,
             .lower = lower_rms_norm,
             .summary = "X, scale: x / sqrt(mean(x²) + epsilon) · scale over the last axis "
                        "(float input)"},
    OpSchema{.op_type = "InstanceNorm",
             .min_inputs = 3,
             .max_inputs = 3,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = {{{"X", Role::kData}, {"scale", Role::kOther}, {"B", Role::kOther}}},
             .quantized_inputs = kNone,
             .lower = lower_instance_norm,
             .summary = "X, scale, B: InstanceNormalization (float input)"},
    OpSchema{.op_type = "GroupNorm",
             .min_inputs = 3,
             .max_inputs = 3,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = {{{"X", Role::kData}, {"scale", Role::kOther}, {"bias", Role::kOther}}},
             .quantized_inputs = kNone,
             .lower = lower_group_norm,
             .summary = "X, scale, bias: GroupNormalization (float input)"},
    OpSchema{.op_type = "AdaptiveAvgPool",
             .min_inputs = 1,
             .max_inputs = 1,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = {{{"X", Role::kData}}},
             .quantized_inputs = kNone,
             .lower = lower_adaptive_avg_pool,
             .summary = "X: GlobalAveragePool"},
};

}  // namespace

std::span<const OpSchema> fusion_module_schemas() {
  return kModuleSchemas;
}

Value* lower_activation(Graph& graph, Node& module, Value* x) {
  return Lowering(graph, module).activation(x);
}

}  // namespace qforge::graph
