// The op catalog: every op qforge knows, declared once. ONNX ops carry their arity; fused
// modules (made by fusions and conversions) also name their inputs by role and carry their
// quantization contract and how they lower back to standard ONNX ops. The importer refuses what is
// not here and what only qforge's passes make; the runtime binds one OpDef to each entry; quant/
// reads the contract.
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
class Value;

// What a lowering reports about the nodes it made, for quant/ to find them again without
// looking for op types: the tensor the module's internal quantizer (OpSchema::internal_quantizer)
// reads, and for the conv modules the Conv or ConvTranspose that applies the Role::kWeight input
// and the BatchNormalization the BN roles became (null when the node had no BN).
struct Lowered {
  Value* internal_quantizer_input = nullptr;
  Node* weight_op = nullptr;
  Node* batch_norm = nullptr;
};

// Replaces a module node in `graph` by standard ONNX nodes computing the same outputs (same
// output value names), filling `lowered`.
using LowerFn = void (*)(Graph& graph, Node& node, Lowered& lowered);

// What an input of an op or module is. quant/ and runtime/ find inputs by role (input_index,
// role_input), never by position.
enum class Role : unsigned char {
  kNone,      // no input: ends a schema's list
  kData,      // an activation the op computes on
  kResidual,  // an activation added to the result (ConvBNAddAct)
  kWeight,    // the weight: quantized per channel along the schema's weight axis
  kBias,      // added to the weight's product
  kBnGamma,   // a BatchNormalization after the weight's op: scale,
  kBnBeta,    //   bias,
  kBnMean,    //   running mean,
  kBnVar,     //   running variance
  kMask,      // an additive attention mask: a setting, never trained
  kOther,     // anything else (a relative position bias, a pool's window…)
};

struct InputRole {
  std::string_view name;
  Role role = Role::kNone;
  bool optional = false;  // the input may be absent (an empty name, or past the last input)
};

// An op's inputs in order, by name and role; unused slots have Role::kNone.
using InputRoles = std::array<InputRole, 8>;

// A fixed-scale quantizer inside a module (the softmax's, at 1/127): the Q/DQ export puts it on
// the tensor the module's lowering reports.
struct InternalQuantizer {
  std::string_view name;  // what it quantizes, for messages
  float scale = 0;        // 0: the module has none
};

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
  // Every module's inputs, and those of the ONNX ops quant/ and runtime/ look into (Conv,
  // ConvTranspose, Gemm, MatMul, BatchNormalization).
  InputRoles inputs = {};
  // Module contract (DESIGN.md, Quantization): inputs that get a Q/DQ pair in front (-1 ends
  // the list); the Role::kWeight input is quantized per channel along weight_axis.
  std::array<int, 4> quantized_inputs = {-1, -1, -1, -1};
  int weight_axis = 0;
  // The weight is a transposed convolution's [C_in, C_out / group, kernel…] (weight_axis 1):
  // its output channels run along axis 1 within each group, and a batch norm folds along them.
  bool transposed_weight = false;
  // The weight's layout varies per node and the node's `weight_layout` attribute says which
  // (graph::weight_layout); the layout then gives the axis and weight_axis is unused.
  bool weight_layout_per_node = false;
  // The export folds the module's BN (the four BN roles, when the node has them) into its weight
  // and bias (kernels::batch_norm_fold); QAT folds it the same way.
  bool folds_batch_norm = false;
  InternalQuantizer internal_quantizer = {};
  LowerFn lower = nullptr;  // modules only
  std::string_view summary = {};
};

const OpSchema* find_schema(std::string_view op_type);

// The position of the schema's input in `role` (the first, for kData), or -1.
int input_index(const OpSchema& schema, Role role);
bool has_role(const OpSchema& schema, Role role);
// The schema's Role::kWeight input, or -1.
inline int weight_input(const OpSchema& schema) {
  return input_index(schema, Role::kWeight);
}
// `node`'s input in `role`: null when the schema has no such role or the node omits it.
Value* role_input(const OpSchema& schema, const Node& node, Role role);
// The node carries the batch norm its schema may take: all four BN role inputs are present.
bool has_batch_norm(const OpSchema& schema, const Node& node);

// A 2-D weight's layout where it varies per node (OpSchema::weight_layout_per_node: Linear,
// LinearAct, MHAInProjection): the node's `weight_layout` attribute, "matmul" (W [in, out], the
// default) or "gemm" (W [out, in], Gemm's transB = 1).
enum class WeightLayout : unsigned char { kMatMul, kGemm };
WeightLayout weight_layout(const Node& node);
// The output-channel axis `node`'s weight is quantized along.
int weight_axis(const OpSchema& schema, const Node& node);

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
// scales, which shape inference needs as constants; Pow's exponent, a literal such as the 2 of a
// written-out LayerNorm's variance, whose gradient a^b·ln a is NaN at a negative base): training
// never makes them parameters.
bool float_input_is_setting(std::string_view op_type, size_t index);
// Every entry: ONNX ops, internal ops, then each module family's table.
std::vector<const OpSchema*> all_schemas();
std::vector<int> quantized_inputs(const OpSchema& schema);

// Module tables, one per family file (graph/fusion_modules.cpp, graph/attention.cpp).
std::span<const OpSchema> fusion_module_schemas();
std::span<const OpSchema> attention_module_schemas();
std::span<const OpSchema> swin_module_schemas();   // graph/swin.cpp
std::span<const OpSchema> extra_module_schemas();  // graph/fusions_extra.cpp
std::span<const OpSchema> slice_update_schemas();  // graph/slice_update.cpp

}  // namespace qforge::graph
