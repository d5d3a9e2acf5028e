// The op catalog: every op qforge knows, declared once. ONNX ops carry their arity; fused
// modules (made by fusions and conversions) also carry their quantization contract and how
// they lower back to standard ONNX ops. The importer refuses what is not here and what only
// qforge's passes make; the runtime binds one OpDef to each entry; quant/ reads the contract.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string_view>
#include <vector>

namespace qforge::graph {

class Graph;
class Node;

// Replaces a module node in `graph` by standard ONNX nodes computing the same outputs (same
// output value names).
using LowerFn = void (*)(Graph& graph, Node& node);

enum class SchemaKind : unsigned char {
  kOnnx,      // a standard ONNX op, read from files and written back
  kModule,    // a fused or converted module (ConvBNAct, SDPA, …): lowered before export
  kInternal,  // a runtime-only node (FusedConv): never read, never exported
};

// How a unit's gradient is defined. Training reads it (runtime/training.h names the reason when
// a gradient would pass through a unit without one), and tests/runtime/catalog_harness_test.cpp
// holds every entry to it: a unit with a backward has one bound in the runtime, checked against
// finite differences; one without says why and has none bound.
enum class Gradient : unsigned char {
  kUndeclared,       // the default of a new row: the harness fails until it says
  kBackward,         // the runtime kernel's backward (OpKernel::backward)
  kThroughLowering,  // modules: training lowers them and differentiates the standard ops
  kNone,             // no gradient; OpSchema::no_gradient_reason says why
};

struct OpSchema {
  std::string_view op_type;
  int min_inputs;
  int max_inputs;
  int min_outputs;
  int max_outputs;
  int since_opset;  // earliest default-domain opset whose semantics qforge implements
  Gradient gradient = Gradient::kUndeclared;
  std::string_view no_gradient_reason = {};  // with Gradient::kNone
  SchemaKind kind = SchemaKind::kOnnx;
  // Module contract (DESIGN.md, Quantization): inputs that get a Q/DQ pair in front (-1 ends
  // the list), the weight input quantized per channel and its channel axis (-1: none).
  std::array<int, 4> quantized_inputs = {-1, -1, -1, -1};
  int weight_input = -1;
  int weight_axis = 0;
  LowerFn lower = nullptr;  // modules only
  std::string_view summary = {};
  // The weight is a transposed convolution's [C_in, C_out / group, kernel…] (weight_axis 1):
  // its output channels run along axis 1 within each group, and a batch norm folds along them.
  bool transposed_weight = false;
};

const OpSchema* find_schema(std::string_view op_type);

// A bound on an integer attribute of an ONNX op (an INT, or every value of an INTS), checked on
// import before libonnx's shape inference or any kernel reads it: a stride, dilation, group or
// kernel size below 1 would divide by zero or index outside a window.
struct AttributeRule {
  std::string_view op_type;
  std::string_view attribute;
  int64_t min;
  int64_t max = std::numeric_limits<int64_t>::max();
};
// The rules of `op_type` (empty when it has none).
std::vector<const AttributeRule*> attribute_rules(std::string_view op_type);
// Ops whose spatial attributes (kernel_shape, strides, dilations: one value per spatial axis;
// pads: two) must agree in length with each other and with the weight (Conv, pools).
bool has_window_attributes(std::string_view op_type);
// Float inputs that set how an op works rather than carry values through it (Resize's roi and
// scales): shape inference needs them as constants, so training never makes them parameters.
bool float_input_is_setting(std::string_view op_type, size_t index);
// Every entry: ONNX ops, internal ops, then each module family's table.
std::vector<const OpSchema*> all_schemas();
std::vector<int> quantized_inputs(const OpSchema& schema);

// Module tables, one per family file (graph/fusions.cpp, graph/attention.cpp).
std::span<const OpSchema> fusion_module_schemas();
std::span<const OpSchema> attention_module_schemas();
std::span<const OpSchema> swin_module_schemas();   // graph/swin.cpp
std::span<const OpSchema> extra_module_schemas();  // graph/fusions_extra.cpp

}  // namespace qforge::graph
