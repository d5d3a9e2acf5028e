// Catalog entries for the ONNX ops qforge imports and runs (opset 13 and up semantics; the forms
// that changed up to opset 21 are checked against the model's opset by graph/onnx_import.cpp).
#include "graph/catalog.h"

#include <algorithm>
#include <array>

namespace qforge::graph {
namespace {

constexpr int kMany = 1 << 20;

constexpr std::array kSchemas = {
    // op type, inputs min/max, outputs min/max, since opset
    OpSchema{"Add", 2, 2, 1, 1, 13},
    OpSchema{"ArgMax", 1, 1, 1, 1, 13},
    OpSchema{"AveragePool", 1, 1, 1, 1, 11},
    OpSchema{"BatchNormalization", 5, 5, 1, 3, 15},
    OpSchema{"Cast", 1, 1, 1, 1, 13},
    OpSchema{"Clip", 1, 3, 1, 1, 13},
    OpSchema{"Concat", 1, kMany, 1, 1, 13},
    OpSchema{"Constant", 0, 0, 1, 1, 13},
    OpSchema{"ConstantOfShape", 1, 1, 1, 1, 9},
    OpSchema{"Conv", 2, 3, 1, 1, 11},
    OpSchema{"ConvTranspose", 2, 3, 1, 1, 11},
    OpSchema{"DequantizeLinear", 2, 3, 1, 1, 13},
    OpSchema{"Div", 2, 2, 1, 1, 13},
    OpSchema{"Dropout", 1, 3, 1, 2, 13},
    OpSchema{"Elu", 1, 1, 1, 1, 6},
    OpSchema{"Equal", 2, 2, 1, 1, 13},
    OpSchema{"Erf", 1, 1, 1, 1, 13},
    OpSchema{"Exp", 1, 1, 1, 1, 13},
    OpSchema{"Expand", 2, 2, 1, 1, 13},
    OpSchema{"Flatten", 1, 1, 1, 1, 13},
    OpSchema{"Gather", 2, 2, 1, 1, 13},
    OpSchema{"Gelu", 1, 1, 1, 1, 20},
    OpSchema{"Gemm", 2, 3, 1, 1, 13},
    OpSchema{"Greater", 2, 2, 1, 1, 13},
    // scale and bias per group at opsets 18 to 20, per channel from 21 (runtime/ops/dense_ops.cpp).
    OpSchema{"GroupNormalization", 3, 3, 1, 1, 18},
    OpSchema{"GlobalAveragePool", 1, 1, 1, 1, 1},
    OpSchema{"HardSigmoid", 1, 1, 1, 1, 6},
    OpSchema{"HardSwish", 1, 1, 1, 1, 14},
    OpSchema{"Identity", 1, 1, 1, 1, 13},
    OpSchema{"InstanceNormalization", 3, 3, 1, 1, 6},
    OpSchema{"LayerNormalization", 2, 3, 1, 3, 17},
    OpSchema{"LeakyRelu", 1, 1, 1, 1, 6},
    OpSchema{"Less", 2, 2, 1, 1, 13},
    OpSchema{"Log", 1, 1, 1, 1, 13},
    OpSchema{"MatMul", 2, 2, 1, 1, 13},
    OpSchema{"Max", 1, kMany, 1, 1, 13},
    OpSchema{"MaxPool", 1, 1, 1, 2, 12},
    OpSchema{"Min", 1, kMany, 1, 1, 13},
    OpSchema{"Mod", 2, 2, 1, 1, 13},
    OpSchema{"Mul", 2, 2, 1, 1, 13},
    OpSchema{"Neg", 1, 1, 1, 1, 13},
    OpSchema{"Not", 1, 1, 1, 1, 1},
    OpSchema{"Pad", 2, 4, 1, 1, 13},
    OpSchema{"Pow", 2, 2, 1, 1, 13},
    OpSchema{"PRelu", 2, 2, 1, 1, 16},
    OpSchema{"QuantizeLinear", 2, 3, 1, 1, 13},
    OpSchema{"Range", 3, 3, 1, 1, 11},
    OpSchema{"ReduceMax", 1, 2, 1, 1, 13},   // axes: an attribute, an input from opset 18
    OpSchema{"ReduceMean", 1, 2, 1, 1, 13},  // axes: an attribute, an input from opset 18
    OpSchema{"ReduceSum", 1, 2, 1, 1, 13},   // axes: an input from opset 13
    OpSchema{"Relu", 1, 1, 1, 1, 14},
    OpSchema{"Reshape", 2, 2, 1, 1, 14},
    OpSchema{"Resize", 1, 4, 1, 1, 13},
    OpSchema{"ScatterND", 3, 3, 1, 1, 16},
    OpSchema{"Shape", 1, 1, 1, 1, 15},
    OpSchema{"Sigmoid", 1, 1, 1, 1, 13},
    OpSchema{"Slice", 3, 5, 1, 1, 13},
    OpSchema{"Softmax", 1, 1, 1, 1, 13},
    OpSchema{"Softplus", 1, 1, 1, 1, 1},
    OpSchema{"Split", 1, 2, 1, kMany, 13},
    OpSchema{"Sqrt", 1, 1, 1, 1, 13},
    OpSchema{"Squeeze", 1, 2, 1, 1, 13},
    OpSchema{"Sub", 2, 2, 1, 1, 13},
    OpSchema{"Tanh", 1, 1, 1, 1, 13},
    OpSchema{"Tile", 2, 2, 1, 1, 13},
    OpSchema{"Transpose", 1, 1, 1, 1, 13},
    OpSchema{"Unsqueeze", 2, 2, 1, 1, 13},
    OpSchema{"Where", 3, 3, 1, 1, 16},
    // Runtime-internal: Conv with its BatchNormalization, residual Add and Relu/Clip applied in
    // the output pass (runtime/fuse_epilogues.h).
    OpSchema{"FusedConv", 2, 6, 1, 1, 0, SchemaKind::kInternal},
    // Runtime-internal: QuantizeLinear → DequantizeLinear without the integer tensor
    // (runtime/fuse_qdq.h). Inputs x, scale, zero point; attribute axis.
    OpSchema{"FakeQuant", 3, 3, 1, 1, 0, SchemaKind::kInternal},
    // Runtime-internal, training only: a weight fake-quantized on a scale taken from its own
    // current max |w| (per channel along `axis`, per tensor when axis is -1), optionally with a
    // batch norm folded in first (inputs W, gamma, running var; attribute epsilon). Its second
    // output is the fold factor gamma / sqrt(var + eps) (quant/qdq_export.h, training graph).
    OpSchema{"WeightFakeQuant", 1, 3, 1, 2, 0, SchemaKind::kInternal},
};

constexpr std::array kAttributeRules = {
    // op type, attribute, min, max
    AttributeRule{"ArgMax", "keepdims", 0, 1},
    AttributeRule{"ArgMax", "select_last_index", 0, 1},
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
    AttributeRule{"ReduceMax", "keepdims", 0, 1},
    AttributeRule{"ReduceMax", "noop_with_empty_axes", 0, 1},
    AttributeRule{"ReduceSum", "keepdims", 0, 1},
    AttributeRule{"ReduceSum", "noop_with_empty_axes", 0, 1},
    AttributeRule{"GroupNormalization", "num_groups", 1},
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
  return op_type == "Resize" && (index == 1 || index == 2);
}

std::vector<const OpSchema*> all_schemas() {
  std::vector<const OpSchema*> out;
  for (auto table : {std::span<const OpSchema>(kSchemas), fusion_module_schemas(),
                     attention_module_schemas(), swin_module_schemas(), extra_module_schemas()}) {
    for (const OpSchema& s : table) out.push_back(&s);
  }
  return out;
}

const OpSchema* find_schema(std::string_view op_type) {
  for (auto table : {std::span<const OpSchema>(kSchemas), fusion_module_schemas(),
                     attention_module_schemas(), swin_module_schemas(), extra_module_schemas()}) {
    for (const OpSchema& s : table) {
      if (s.op_type == op_type) return &s;
    }
  }
  return nullptr;
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
