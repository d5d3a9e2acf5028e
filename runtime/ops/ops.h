// Registration entry points of the built-in op families (runtime/ops/*.cpp).
#pragma once

#include <optional>
#include <span>
#include <vector>

#include "kernels/shape_ops.h"
#include "runtime/op_registry.h"

namespace qforge::runtime::ops {

// The dense family, a file each (runtime/ops/dense_common.h holds what they share):
// Conv, FusedConv, ConvTranspose (conv_ops.cpp).
void register_conv_ops(OpRegistry& registry);
// Gemm, MatMul (matmul_ops.cpp).
void register_matmul_ops(OpRegistry& registry);
// BatchNormalization, LayerNormalization, InstanceNormalization, GroupNormalization
// (norm_ops.cpp).
void register_norm_ops(OpRegistry& registry);
// Softmax, MaxPool, AveragePool, GlobalAveragePool, ReduceMean, ReduceSum, ReduceMax, ReduceL2,
// ArgMax (pool_ops.cpp).
void register_pool_ops(OpRegistry& registry);
// Unary activations and math (Exp, Log, Softplus, …), broadcasting binary ops, Max and Min of
// any number of inputs, Where, Equal, Not, Cast.
void register_elementwise_ops(OpRegistry& registry);
// Shape and data movement: Flatten, Reshape, Transpose, Concat, Split, Slice, Gather, Squeeze,
// Unsqueeze, Pad, Identity, Dropout, Shape, Constant, ConstantOfShape, Range, Expand, ScatterND,
// Resize.
void register_shape_ops(OpRegistry& registry);

// QuantizeLinear, DequantizeLinear and the runtime-internal FakeQuant (runtime/fuse_qdq.h).
void register_quantize_ops(OpRegistry& registry);

// Fused convolutional and linear modules (graph/fusions.h): ConvBN, ConvBNAct, …
void register_fusion_module_ops(OpRegistry& registry);
// Attention modules (graph/attention.h): MHAInProjection, SDPA, SwinAttention, …
void register_attention_module_ops(OpRegistry& registry);
// Swin modules (graph/swin.h): SwinAttention, SwinWindowPartition, SwinWindowReverse.
void register_swin_ops(OpRegistry& registry);
// ActAdd (graph/fusions_extra.h).
void register_act_add_ops(OpRegistry& registry);

// Checks `node` against the form its op has at the model's opset where only the input shapes
// tell the forms apart (GroupNormalization's scale and bias: per group at opsets 18 to 20, per
// channel from 21); resolution calls it before shape inference on graphs that record their
// opset. Throws Invalid naming the node; other ops pass.
void check_opset_form(const graph::Node& node, std::span<const InputInfo> inputs, int64_t opset);

// The range a Slice reads along each axis of its data: starts, ends, axes and steps normalised
// and clamped as the Slice kernel plans its copy (and the executor its views). Throws Invalid
// naming the node when they are not constant integers of one length.
std::vector<kernels::SliceRange> slice_ranges(const graph::Node& node,
                                              std::span<const InputInfo> inputs);

// Whether a FusedConv with a residual input may write its output over that residual, as the
// kernel it gets plans its convolution (kernels::conv_residual_may_alias_output); false for any
// other node.
bool fused_conv_writes_over_residual(const graph::Node& node, std::span<const InputInfo> inputs);

// The residual input a convolution node's kernel may write its output over: a FusedConv's
// (input 5) or a ConvBNAddAct's, where fused_conv_writes_over_residual holds for the FusedConv
// it runs; nullopt for any other node.
std::optional<size_t> conv_residual_written_over(const graph::Node& node,
                                                 std::span<const InputInfo> inputs);

}  // namespace qforge::runtime::ops
