// Q/DQ placement: where a fused graph gets quantizers, read from each module's catalog contract
// (quantized inputs, weight input and axis, the attention softmax quantizer). Placement only
// names tensors and module inputs; calibration fills in ranges and qdq_export builds the graph.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "kernels/tensor.h"

namespace qforge::quant {

// One quantized input of one module node.
struct QuantConsumer {
  std::string node;  // module node name
  int input = 0;     // input index on that node
};

// One activation quantizer: a tensor with a single Q/DQ pair shared by every quantized input it
// feeds (a tensor read by two modules gets one scale, as TensorRT needs for fusion).
struct ActivationPoint {
  std::string tensor;
  std::vector<QuantConsumer> consumers;
  // Points of one scale group share one scale (the group's largest amax): the quantized
  // tensors around a Concat, its output and its inputs, seen through the ops that only move or
  // select elements (MaxPool, nearest Resize, Split, Identity, Tile, ReduceMax), so that
  // TensorRT runs the Concat on INT8 without requantizing. The group is named by its first
  // point's tensor; empty: alone.
  std::string scale_group;
};

// A module's weight, quantized per output channel along `axis` of the weight tensor, or with one
// scale for the whole tensor when not per_channel (`axis` still names the output channels).
struct WeightPoint {
  std::string node;
  std::string module;  // the module kind (op type)
  int input = 0;       // the weight input index
  int axis = 0;
  bool per_channel = true;
  // Batch norm parameters follow the weight and are folded into it at export; the quantizer
  // acts on the folded weight.
  bool folds_batch_norm = false;
  // A transposed convolution's weight [C_in, C_out / group, …]: output channels run along axis
  // 1 within each of `group` groups, and the batch norm folds along them.
  bool transposed = false;
  int64_t group = 1;
};

// The quantizer on the softmax output inside an attention module: a fixed scale, never
// calibrated.
struct SoftmaxPoint {
  std::string node;
  float scale = 1.0f / 127.0f;
};

// A module with a quantization contract that stays float, and why.
struct FloatModule {
  std::string node;
  std::string module;
  std::string reason;
};

struct QuantPlan {
  std::vector<ActivationPoint> activations;  // in graph order of first use
  std::vector<WeightPoint> weights;
  std::vector<SoftmaxPoint> softmax;
  std::vector<FloatModule> float_modules;

  const ActivationPoint* find_activation(const std::string& tensor) const;
};

struct PlacementOptions {
  // Module node names, module kinds or glob patterns over either (`*` matches any run of
  // characters). Every entry must match some module node.
  std::vector<std::string> skip;
  // One scale per weight tensor (WeightPoint::per_channel false) instead of one per output
  // channel, for targets without per-axis weight quantizers.
  bool per_tensor_weights = false;
};

// The amax of `point` with its scale group applied: the largest amax of the group's points
// (its own when alone). Invalid error naming the tensor when a needed amax is missing or not
// finite and >= 0.
float shared_amax(const QuantPlan& plan, const ActivationPoint& point,
                  const std::map<std::string, float>& amax);

// Invalid error naming the entry when a skip entry matches no module node.
QuantPlan place_qdq(const graph::Graph& fused, const PlacementOptions& options = {});

// `*` matches any (possibly empty) run of characters; everything else matches itself.
bool glob_match(std::string_view pattern, std::string_view text);

// The weight the quantizer of `point` sees: the module's weight, with its batch norm folded in
// when point.folds_batch_norm. The folded bias comes back in `folded_bias` when asked for.
kernels::Tensor quantized_weight(const graph::Graph& fused, const WeightPoint& point,
                                 kernels::Tensor* folded_bias = nullptr);

// Max |w| per index of point.axis of quantized_weight (a single entry when not per channel).
std::vector<float> weight_channel_amax(const graph::Graph& fused, const WeightPoint& point);

}  // namespace qforge::quant
