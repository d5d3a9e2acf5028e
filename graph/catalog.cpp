// Catalog entries for the ONNX ops qforge imports and runs (opset 13 and up semantics; the forms
// that changed up to opset 21 are checked against the model's opset by graph/onnx_import.cpp).
#include "graph/catalog.h"

#include <algorithm>
#include <array>

#include "graph/ir.h"

namespace qforge::graph {
namespace {

constexpr int kMany = 1 << 20;

constexpr Gradient kBackward = Gradient::kBackward;
constexpr Gradient kNone = Gradient::kNone;
// Reasons shared by several ops for having no gradient.
constexpr std::string_view kNoBackward = "no backward kernel: a gradient through it is refused";
constexpr std::string_view kBooleanOutput = "its output is boolean";
constexpr std::string_view kNoInputs = "it has no inputs";
constexpr std::string_view kShapeInput = "its input is a shape";
constexpr std::string_view kPiecewiseConstant =
    "piecewise constant: no gradient passes (PyTorch's is zero)";

constexpr InputRoles kConvRoles = {
    {{"X", Role::kData}, {"W", Role::kWeight}, {"B", Role::kBias, true}}};
constexpr InputRoles kGemmRoles = {
    {{"A", Role::kData}, {"B", Role::kWeight}, {"C", Role::kBias, true}}};
constexpr InputRoles kMatMulRoles = {{{"A", Role::kData}, {"B", Role::kWeight}}};
constexpr InputRoles kBatchNormRoles = {{{"X", Role::kData},
                                         {"scale", Role::kBnGamma},
                                         {"B", Role::kBnBeta},
                                         {"input_mean", Role::kBnMean},
                                         {"input_var", Role::kBnVar}}};

constexpr std::array kSchemas = {
    // op type, inputs min/max, outputs min/max, since opset, how its gradient is defined
    OpSchema{"Abs", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Add", 2, 2, 1, 1, 13, kBackward},
    OpSchema{"And", 2, 2, 1, 1, 7, kNone, kBooleanOutput},
    OpSchema{"ArgMax", 1, 1, 1, 1, 13, kNone, "its output is an index (int64)"},
    OpSchema{"ArgMin", 1, 1, 1, 1, 13, kNone, "its output is an index (int64)"},
    OpSchema{"AveragePool", 1, 1, 1, 1, 11, kBackward},
    OpSchema{
        "BatchNormalization", 5, 5, 1, 3, 15, kBackward, {}, SchemaKind::kOnnx, kBatchNormRoles},
    OpSchema{"Cast", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Ceil", 1, 1, 1, 1, 13, kNone, kPiecewiseConstant},
    OpSchema{"Clip", 1, 3, 1, 1, 13, kBackward},
    OpSchema{"Concat", 1, kMany, 1, 1, 13, kBackward},
    OpSchema{"Constant", 0, 0, 1, 1, 13, kNone, kNoInputs},
    OpSchema{"ConstantOfShape", 1, 1, 1, 1, 9, kNone, kShapeInput},
    OpSchema{"Conv", 2, 3, 1, 1, 11, kBackward, {}, SchemaKind::kOnnx, kConvRoles},
    OpSchema{"ConvTranspose", 2, 3, 1, 1, 11, kBackward, {}, SchemaKind::kOnnx, kConvRoles},
    OpSchema{"Cos", 1, 1, 1, 1, 7, kBackward},
    OpSchema{"CumSum", 2, 2, 1, 1, 11, kBackward},  // axis (input 1) a constant
    OpSchema{"DequantizeLinear", 2, 3, 1, 1, 13, kNone,
             "its data input is an integer grid and its scale a constant of the graph"},
    OpSchema{"DepthToSpace", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Div", 2, 2, 1, 1, 13, kBackward},
    OpSchema{"Dropout", 1, 3, 1, 2, 13, kBackward},
    OpSchema{"Elu", 1, 1, 1, 1, 6, kBackward},
    OpSchema{"Equal", 2, 2, 1, 1, 13, kNone, kBooleanOutput},
    OpSchema{"Erf", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Exp", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Expand", 2, 2, 1, 1, 13, kBackward},
    OpSchema{"Flatten", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Floor", 1, 1, 1, 1, 13, kNone, kPiecewiseConstant},
    OpSchema{"Gather", 2, 2, 1, 1, 13, kBackward},
    OpSchema{"GatherElements", 2, 2, 1, 1, 13, kBackward},
    OpSchema{"GatherND", 2, 2, 1, 1, 13, kBackward},
    OpSchema{"Gelu", 1, 1, 1, 1, 20, kBackward},
    OpSchema{"Gemm", 2, 3, 1, 1, 13, kBackward, {}, SchemaKind::kOnnx, kGemmRoles},
    OpSchema{"Greater", 2, 2, 1, 1, 13, kNone, kBooleanOutput},
    // scale and bias per group at opsets 18 to 20, per channel from 21 (runtime/ops/norm_ops.cpp).
    OpSchema{"GreaterOrEqual", 2, 2, 1, 1, 16, kNone, kBooleanOutput},
    OpSchema{"GridSample", 2, 2, 1, 1, 16, kBackward},  // 4-D; opset 20's mode names too
    OpSchema{"GroupNormalization", 3, 3, 1, 1, 18, kBackward},
    OpSchema{"GlobalAveragePool", 1, 1, 1, 1, 1, kBackward},
    OpSchema{"HardSigmoid", 1, 1, 1, 1, 6, kBackward},
    OpSchema{"HardSwish", 1, 1, 1, 1, 14, kBackward},
    OpSchema{"Identity", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"InstanceNormalization", 3, 3, 1, 1, 6, kBackward},
    OpSchema{"IsInf", 1, 1, 1, 1, 10, kNone, kBooleanOutput},
    OpSchema{"IsNaN", 1, 1, 1, 1, 13, kNone, kBooleanOutput},
    OpSchema{"LayerNormalization", 2, 3, 1, 3, 17, kBackward},
    OpSchema{"LeakyRelu", 1, 1, 1, 1, 6, kBackward},
    OpSchema{"Less", 2, 2, 1, 1, 13, kNone, kBooleanOutput},
    OpSchema{"LessOrEqual", 2, 2, 1, 1, 16, kNone, kBooleanOutput},
    OpSchema{"Log", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"LogSoftmax", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"MatMul", 2, 2, 1, 1, 13, kBackward, {}, SchemaKind::kOnnx, kMatMulRoles},
    OpSchema{"Max", 1, kMany, 1, 1, 13, kBackward},
    OpSchema{"MaxPool", 1, 1, 1, 2, 12, kBackward},
    OpSchema{"Min", 1, kMany, 1, 1, 13, kBackward},
    OpSchema{"Mod", 2, 2, 1, 1, 13, kNone, kNoBackward},
    OpSchema{"Mul", 2, 2, 1, 1, 13, kBackward},
    OpSchema{"Neg", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Not", 1, 1, 1, 1, 1, kNone, kBooleanOutput},
    OpSchema{"OneHot", 3, 3, 1, 1, 11, kNone,
             "its positions follow integer indices, and its off and on values are settings"},
    OpSchema{"Or", 2, 2, 1, 1, 7, kNone, kBooleanOutput},
    OpSchema{"Pad", 2, 4, 1, 1, 13, kBackward},
    OpSchema{"Pow", 2, 2, 1, 1, 13, kBackward},
    OpSchema{"PRelu", 2, 2, 1, 1, 16, kBackward},
    OpSchema{"QuantizeLinear", 2, 3, 1, 1, 13, kNone,
             "its output is an integer grid (training runs Q/DQ pairs as FakeQuant)"},
    OpSchema{"Range", 3, 3, 1, 1, 11, kNone,
             "its inputs are the bounds and step of an index sequence"},
    // The Reduce ops but ReduceSum: axes an attribute, an input from opset 18.
    OpSchema{"ReduceL1", 1, 2, 1, 1, 13, kBackward},
    OpSchema{"ReduceL2", 1, 2, 1, 1, 13, kBackward},
    OpSchema{"ReduceLogSum", 1, 2, 1, 1, 13, kBackward},
    OpSchema{"ReduceLogSumExp", 1, 2, 1, 1, 13, kBackward},
    OpSchema{"ReduceMax", 1, 2, 1, 1, 13, kBackward},
    OpSchema{"ReduceMin", 1, 2, 1, 1, 13, kBackward},
    OpSchema{"ReduceProd", 1, 2, 1, 1, 13, kBackward},
    OpSchema{"ReduceSumSquare", 1, 2, 1, 1, 13, kBackward},
    OpSchema{"ReduceMean", 1, 2, 1, 1, 13, kBackward},
    OpSchema{"ReduceSum", 1, 2, 1, 1, 13, kBackward},  // axes: an input from opset 13
    OpSchema{"Reciprocal", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Relu", 1, 1, 1, 1, 14, kBackward},
    OpSchema{"Reshape", 2, 2, 1, 1, 14, kBackward},
    OpSchema{"Resize", 1, 4, 1, 1, 13, kBackward},
    OpSchema{"Round", 1, 1, 1, 1, 11, kNone, kPiecewiseConstant},
    OpSchema{"ScatterElements", 3, 3, 1, 1, 16, kBackward},  // reduction none or add
    OpSchema{"ScatterND", 3, 3, 1, 1, 16, kBackward},        // reduction none
    OpSchema{"Shape", 1, 1, 1, 1, 15, kNone, "its output is the input's shape, not its values"},
    OpSchema{"Sigmoid", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Sign", 1, 1, 1, 1, 13, kNone, kPiecewiseConstant},
    OpSchema{"Sin", 1, 1, 1, 1, 7, kBackward},
    OpSchema{"Size", 1, 1, 1, 1, 13, kNone, "its output is the input's element count"},
    OpSchema{"Slice", 3, 5, 1, 1, 13, kBackward},
    OpSchema{"Softmax", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Softplus", 1, 1, 1, 1, 1, kBackward},
    OpSchema{"SpaceToDepth", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Split", 1, 2, 1, kMany, 13, kBackward},
    OpSchema{"Sqrt", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Squeeze", 1, 2, 1, 1, 13, kBackward},
    OpSchema{"Sub", 2, 2, 1, 1, 13, kBackward},
    OpSchema{"Tanh", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Tile", 2, 2, 1, 1, 13, kBackward},
    OpSchema{"TopK", 2, 2, 2, 2, 11, kBackward},  // the values' gradient; the indices have none
    OpSchema{"Transpose", 1, 1, 1, 1, 13, kBackward},
    OpSchema{"Trilu", 1, 2, 1, 1, 14, kBackward},
    OpSchema{"Unsqueeze", 2, 2, 1, 1, 13, kBackward},
    OpSchema{"Where", 3, 3, 1, 1, 16, kBackward},
    OpSchema{"Xor", 2, 2, 1, 1, 7, kNone, kBooleanOutput},
    // Runtime-internal: Conv with its BatchNormalization, residual Add and Relu/Clip applied in
    // the output pass (runtime/fuse_epilogues.h).
    OpSchema{"FusedConv", 2, 6, 1, 1, 0, kNone,
             "an inference node made after resolution; training graphs are never fused",
             SchemaKind::kInternal},
    // Runtime-internal: MatMul by a constant matrix with the Add of a constant row after it,
    // the row added to each block of the product (runtime/fuse_epilogues.h).
    OpSchema{"MatMulAdd", 3, 3, 1, 1, 0, kNone,
             "an inference node made after resolution; training graphs are never fused",
             SchemaKind::kInternal},
    // Runtime-internal: x · Sigmoid(x) as one pass (runtime/fuse_epilogues.h).
    OpSchema{"Silu", 1, 1, 1, 1, 0, kBackward, {}, SchemaKind::kInternal},
    // Runtime-internal: QuantizeLinear → DequantizeLinear without the integer tensor
    // (runtime/fuse_qdq.h). Inputs x, scale, zero point; attribute axis.
    OpSchema{"FakeQuant", 3, 3, 1, 1, 0, kBackward, {}, SchemaKind::kInternal},
    // Runtime-internal, training only: a weight fake-quantized on a scale taken from its own
    // current max |w| (per channel along `axis`, per tensor when axis is -1), optionally with a
    // batch norm folded in first (inputs W, gamma, running var; attribute epsilon). Its second
    // output is the fold factor gamma / sqrt(var + eps) (quant/qdq_export.h, training graph).
    OpSchema{"WeightFakeQuant", 1, 3, 1, 2, 0, kBackward, {}, SchemaKind::kInternal},
};

constexpr std::array kAttributeRules = {
    // op type, attribute, min, max
    AttributeRule{"ArgMax", "keepdims", 0, 1},
    AttributeRule{"ArgMin", "keepdims", 0, 1},
    AttributeRule{"IsInf", "detect_negative", 0, 1},
    AttributeRule{"IsInf", "detect_positive", 0, 1},
    AttributeRule{"CumSum", "exclusive", 0, 1},
    AttributeRule{"CumSum", "reverse", 0, 1},
    AttributeRule{"ArgMax", "select_last_index", 0, 1},
    AttributeRule{"ArgMin", "select_last_index", 0, 1},
    AttributeRule{"AveragePool", "kernel_shape", 1},
    AttributeRule{"AveragePool", "strides", 1},
    AttributeRule{"AveragePool", "dilations", 1},
    AttributeRule{"AveragePool", "pads", 0},
    AttributeRule{"AveragePool", "ceil_mode", 0, 1},
    AttributeRule{"AveragePool", "count_include_pad", 0, 1},
    AttributeRule{"Conv", "kernel_shape", 1},
    AttributeRule{"Conv", "strides", 1},
    AttributeRule{"Conv", "dilations", 1},
    AttributeRule{"Conv", "pads", 0},
    AttributeRule{"Conv", "group", 1},
    AttributeRule{"ConvTranspose", "kernel_shape", 1},
    AttributeRule{"ConvTranspose", "strides", 1},
    AttributeRule{"ConvTranspose", "dilations", 1},
    AttributeRule{"ConvTranspose", "pads", 0},
    AttributeRule{"ConvTranspose", "output_padding", 0},
    AttributeRule{"ConvTranspose", "group", 1},
    AttributeRule{"MaxPool", "kernel_shape", 1},
    AttributeRule{"MaxPool", "strides", 1},
    AttributeRule{"MaxPool", "dilations", 1},
    AttributeRule{"MaxPool", "pads", 0},
    AttributeRule{"MaxPool", "ceil_mode", 0, 1},
    AttributeRule{"MaxPool", "storage_order", 0, 1},
    AttributeRule{"ReduceL1", "keepdims", 0, 1},
    AttributeRule{"ReduceL1", "noop_with_empty_axes", 0, 1},
    AttributeRule{"ReduceL2", "keepdims", 0, 1},
    AttributeRule{"ReduceL2", "noop_with_empty_axes", 0, 1},
    AttributeRule{"ReduceLogSum", "keepdims", 0, 1},
    AttributeRule{"ReduceLogSum", "noop_with_empty_axes", 0, 1},
    AttributeRule{"ReduceLogSumExp", "keepdims", 0, 1},
    AttributeRule{"ReduceLogSumExp", "noop_with_empty_axes", 0, 1},
    AttributeRule{"ReduceMax", "keepdims", 0, 1},
    AttributeRule{"ReduceMax", "noop_with_empty_axes", 0, 1},
    AttributeRule{"ReduceMin", "keepdims", 0, 1},
    AttributeRule{"ReduceMin", "noop_with_empty_axes", 0, 1},
    AttributeRule{"ReduceProd", "keepdims", 0, 1},
    AttributeRule{"ReduceProd", "noop_with_empty_axes", 0, 1},
    AttributeRule{"ReduceSum", "keepdims", 0, 1},
    AttributeRule{"ReduceSum", "noop_with_empty_axes", 0, 1},
    AttributeRule{"ReduceSumSquare", "keepdims", 0, 1},
    AttributeRule{"ReduceSumSquare", "noop_with_empty_axes", 0, 1},
    AttributeRule{"GroupNormalization", "num_groups", 1},
    AttributeRule{"DepthToSpace", "blocksize", 1},
    AttributeRule{"SpaceToDepth", "blocksize", 1},
    AttributeRule{"Trilu", "upper", 0, 1},
    AttributeRule{"TopK", "largest", 0, 1},
    AttributeRule{"GridSample", "align_corners", 0, 1},
    AttributeRule{"GatherND", "batch_dims", 0},
    AttributeRule{"TopK", "sorted", 0, 1},
    AttributeRule{"Gemm", "transA", 0, 1},
    AttributeRule{"Gemm", "transB", 0, 1},
};

}  // namespace

std::vector<const AttributeRule*> attribute_rules(std::string_view op_type) {
  std::vector<const AttributeRule*> out;
  for (const AttributeRule& r : kAttributeRules) {
    if (r.op_type == op_type) out.push_back(&r);
  }
  return out;
}

bool has_window_attributes(std::string_view op_type) {
  return op_type == "Conv" || op_type == "MaxPool" || op_type == "AveragePool";
}

bool float_input_is_setting(std::string_view op_type, size_t index) {
  return (op_type == "Resize" && (index == 1 || index == 2)) || (op_type == "Pow" && index == 1);
}

namespace {

// The ONNX and internal ops, then each module family's table.
std::array<std::span<const OpSchema>, 6> schema_tables() {
  return {std::span<const OpSchema>(kSchemas),
          fusion_module_schemas(),
          attention_module_schemas(),
          swin_module_schemas(),
          extra_module_schemas(),
          slice_update_schemas()};
}

}  // namespace

std::vector<const OpSchema*> all_schemas() {
  std::vector<const OpSchema*> out;
  for (std::span<const OpSchema> table : schema_tables()) {
    for (const OpSchema& s : table) out.push_back(&s);
  }
  return out;
}

const OpSchema* find_schema(std::string_view op_type) {
  for (std::span<const OpSchema> table : schema_tables()) {
    for (const OpSchema& s : table) {
      if (s.op_type == op_type) return &s;
    }
  }
  return nullptr;
}

int input_index(const OpSchema& schema, Role role) {
  for (size_t i = 0; i < schema.inputs.size(); ++i) {
    if (schema.inputs[i].role == role) return static_cast<int>(i);
  }
  return -1;
}

bool has_role(const OpSchema& schema, Role role) {
  return input_index(schema, role) >= 0;
}

Value* role_input(const OpSchema& schema, const Node& node, Role role) {
  const int i = input_index(schema, role);
  if (i < 0 || static_cast<size_t>(i) >= node.num_inputs()) return nullptr;
  return node.input(static_cast<size_t>(i));
}

bool has_batch_norm(const OpSchema& schema, const Node& node) {
  for (Role r : {Role::kBnGamma, Role::kBnBeta, Role::kBnMean, Role::kBnVar}) {
    if (!role_input(schema, node, r)) return false;
  }
  return true;
}

WeightLayout weight_layout(const Node& node) {
  return node.attr_string("weight_layout", "matmul") == "gemm" ? WeightLayout::kGemm
                                                               : WeightLayout::kMatMul;
}

int weight_axis(const OpSchema& schema, const Node& node) {
  if (!schema.weight_layout_per_node) return schema.weight_axis;
  return weight_layout(node) == WeightLayout::kGemm ? 0 : 1;
}

std::vector<int> quantized_inputs(const OpSchema& schema) {
  std::vector<int> out;
  for (int i : schema.quantized_inputs) {
    if (i < 0) break;
    out.push_back(i);
  }
  return out;
}

}  // namespace qforge::graph
