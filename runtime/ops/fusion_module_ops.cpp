// Runtime forwards of the fusion modules (graph/fusions.h). Conv modules run one convolution with
// the BatchNormalization folded into the output pass (scale/shift computed once here), the
// residual and the activation in that pass too, and the Stem's MaxPool last. Linear modules run the
// Gemm/MatMul kernels, then bias and activation in one pass. The standard kernels are reached
// through SubKernel, so results match the nodes the module replaced.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "graph/catalog.h"
#include "kernels/elementwise.h"
#include "kernels/norm.h"
#include "kernels/parallel.h"
#include "kernels/vector_math.h"
#include "runtime/ops/activation.h"
#include "runtime/ops/ops.h"
#include "runtime/ops/sub_kernel.h"

namespace qforge::runtime::ops {
namespace {

using graph::Node;
using kernels::shape_str;

constexpr int64_t kGrain = 1 << 14;

const InputInfo& module_input(const Node& node, std::span<const InputInfo> inputs, size_t i,
                              const char* what) {
  if (i >= inputs.size() || !inputs[i].present) {
    fail_node(node, std::string("input ") + std::to_string(i) + " (" + what + ")", "none");
  }
  if (inputs[i].dtype != DType::kFloat32) {
    fail_node(node, std::string("float32 ") + what,
              std::string(kernels::dtype_name(inputs[i].dtype)));
  }
  return inputs[i];
}

// ---------------------------------------------------------------------------------------------
// ConvBN, ConvBNAct, ConvBNAddAct, StemConvBNActMaxPool

// Where a conv module's inputs are, from its schema's roles.
struct ConvModuleLayout {
  size_t weight = 1;
  size_t bias = 2;
  std::optional<size_t> residual;         // ConvBNAddAct
  std::array<size_t, 4> batch_norm = {};  // gamma, beta, mean, var
  bool pool = false;
};

ConvModuleLayout conv_layout(const Node& node) {
  const graph::OpSchema& schema = *graph::find_schema(node.op_type());
  auto at = [&](graph::Role role) { return static_cast<size_t>(graph::input_index(schema, role)); };
  ConvModuleLayout l{.weight = at(graph::Role::kWeight),
                     .bias = at(graph::Role::kBias),
                     .batch_norm = {at(graph::Role::kBnGamma), at(graph::Role::kBnBeta),
                                    at(graph::Role::kBnMean), at(graph::Role::kBnVar)},
                     .pool = node.op_type() == "StemConvBNActMaxPool"};
  if (graph::has_role(schema, graph::Role::kResidual)) l.residual = at(graph::Role::kResidual);
  return l;
}

// A module made from a conv without BN ends before the BN roles.
bool has_batch_norm(std::span<const InputInfo> inputs, const ConvModuleLayout& layout) {
  return inputs.size() > layout.batch_norm[0];
}

// The module's BN parameters over `channels`, which must be constants (the kernels fold them
// once, at creation).
kernels::BatchNormParameters constant_batch_norm(const Node& node,
                                                 std::span<const InputInfo> inputs,
                                                 const ConvModuleLayout& layout, int64_t channels) {
  for (size_t i : layout.batch_norm) {
    if (!inputs[i].constant) {
      throw_unsupported("create: " + node.label() +
                        ": expected constant BatchNormalization parameters, got a computed '" +
                        node.input(i)->name() + "'");
    }
  }
  const std::array<size_t, 4>& bn = layout.batch_norm;
  return {.gamma = inputs[bn[0]].constant->data<float>(),
          .beta = inputs[bn[1]].constant->data<float>(),
          .mean = inputs[bn[2]].constant->data<float>(),
          .var = inputs[bn[3]].constant->data<float>(),
          .epsilon = node.attr_float("epsilon", 1e-5f),
          .channels = channels};
}

Attributes conv_attributes(const Node& node, const ActivationSpec& act) {
  Attributes a;
  for (const char* key : {"strides", "pads", "dilations", "group", "kernel_shape", "auto_pad"}) {
    auto it = node.attributes().find(key);
    if (it != node.attributes().end()) a[key] = it->second;
  }
  if (is_clamp(act.kind)) {
    a["clamp_min"] = act.params.min;
    a["clamp_max"] = act.params.max;
  } else if (act.kind != ActivationKind::kNone) {
    // The convolution's output pass applies it (kernels::ConvEpilogue::activation).
    for (const char* key : {"activation", "alpha", "beta"}) {
      auto it = node.attributes().find(key);
      if (it != node.attributes().end()) a[key] = it->second;
    }
  }
  return a;
}

Attributes pool_attributes(const Node& node) {
  Attributes a;
  for (const auto& [key, value] : node.attributes()) {
    if (key.rfind("pool_", 0) == 0) a[key.substr(5)] = value;
  }
  return a;
}

// FusedConv's inputs: X, W, B?, scale, shift, residual?.
std::vector<InputInfo> fused_conv_inputs(const Node& node, std::span<const InputInfo> inputs,
                                         const ConvModuleLayout& layout) {
  const InputInfo& weight = module_input(node, inputs, layout.weight, "W");
  if (weight.shape.empty())
    fail_node(node, "a conv weight W of rank >= 3", shape_str(weight.shape));
  const int64_t channels = weight.shape[0];
  static const char* const kNames[] = {"BN scale", "BN B", "BN mean", "BN var"};
  const bool bn = has_batch_norm(inputs, layout);
  for (size_t i = 0; bn && i < 4; ++i) {
    const InputInfo& p = module_input(node, inputs, layout.batch_norm[i], kNames[i]);
    if (p.shape != Shape{channels}) {
      fail_node(node, std::string(kNames[i]) + " of shape [" + std::to_string(channels) + "]",
                shape_str(p.shape));
    }
  }
  InputInfo per_channel{.present = true, .dtype = DType::kFloat32, .shape = {channels}};
  std::vector<InputInfo> out = {module_input(node, inputs, 0, "X"),
                                weight,
                                layout.bias < inputs.size() ? inputs[layout.bias] : InputInfo{},
                                bn ? per_channel : InputInfo{},
                                bn ? per_channel : InputInfo{},
                                InputInfo{}};
  if (layout.residual) out[5] = module_input(node, inputs, *layout.residual, "residual");
  return out;
}

std::vector<TensorInfo> infer_conv_module(const Node& node, std::span<const InputInfo> inputs) {
  const ConvModuleLayout layout = conv_layout(node);
  const ActivationSpec act = activation_of(node);
  std::vector<TensorInfo> conv = SubKernel::infer("FusedConv", conv_attributes(node, act),
                                                  fused_conv_inputs(node, inputs, layout));
  if (!layout.pool) return conv;
  InputInfo pooled{.present = true, .dtype = DType::kFloat32, .shape = conv[0].shape};
  return SubKernel::infer("MaxPool", pool_attributes(node), std::span(&pooled, 1));
}

class ConvModuleKernel final : public OpKernel {
 public:
  ConvModuleKernel(const Node& node, std::span<const InputInfo> inputs)
      : layout_(conv_layout(node)) {
    // The activation runs in the convolution's output pass.
    const Attributes attributes = conv_attributes(node, activation_of(node));
    std::vector<InputInfo> conv_inputs = fused_conv_inputs(node, inputs, layout_);
    if (!has_batch_norm(inputs, layout_)) {
      conv_.push_back(SubKernel::create("FusedConv", attributes, conv_inputs));
      add_pool(node);
      return;
    }
    const int64_t channels = conv_inputs[1].shape[0];
    scale_ = Tensor(DType::kFloat32, {channels});
    shift_ = Tensor(DType::kFloat32, {channels});
    kernels::batch_norm_fold(constant_batch_norm(node, inputs, layout_, channels), nullptr,
                             kernels::FoldPrecision::kFloat,
                             {.scale = scale_.data<float>(), .shift = shift_.data<float>()});
    conv_inputs[3].constant = &scale_;
    conv_inputs[4].constant = &shift_;
    conv_.push_back(SubKernel::create("FusedConv", attributes, conv_inputs));
    add_pool(node);
  }

  size_t workspace_bytes() const override {
    size_t bytes = conv_[0].workspace_bytes();
    if (!pool_.empty()) bytes = std::max(bytes, pool_[0].workspace_bytes());
    return bytes;
  }
  bool reads_input(size_t index) const override {
    return index != layout_.weight || conv_[0].reads_input(1);
  }

  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const ConvModuleLayout& l = layout_;
    const Tensor conv_in[6] = {
        inputs[0], inputs[l.weight], l.bias < inputs.size() ? inputs[l.bias] : Tensor(),
        scale_,    shift_,           l.residual ? inputs[*l.residual] : Tensor()};
    Tensor& y = layout_.pool ? conv_out_ : outputs[0];
    conv_[0].forward(conv_in, std::span(&y, 1), workspace);
    if (layout_.pool) pool_[0].forward(std::span(&conv_out_, 1), outputs.first(1), workspace);
  }

 private:
  void add_pool(const Node& node) {
    if (!layout_.pool) return;
    const TensorInfo& c = conv_[0].outputs()[0];
    conv_out_ = Tensor(c.dtype, c.shape);
    InputInfo pooled{.present = true, .dtype = c.dtype, .shape = c.shape};
    pool_.push_back(SubKernel::create("MaxPool", pool_attributes(node), std::span(&pooled, 1)));
  }

  ConvModuleLayout layout_;
  Tensor scale_, shift_;
  std::vector<SubKernel> conv_;  // one; a vector because SubKernel has no empty state
  std::vector<SubKernel> pool_;  // the Stem's MaxPool
  Tensor conv_out_;              // the Stem's conv output, the pool's input
};

std::unique_ptr<OpKernel> create_conv_module(const Node& node, std::span<const InputInfo> inputs,
                                             std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ConvModuleKernel>(node, inputs);
}

// ---------------------------------------------------------------------------------------------
// ConvTransposeBN, ConvTransposeBNAct: inputs X, W, B?[, gamma, beta, mean, var]. The
// transposed convolution, then the BN as BatchNormalization runs it (a per-channel scale and
// shift), then the activation, each in one pass over the output.

Attributes conv_transpose_attributes(const Node& node) {
  Attributes a;
  for (const char* key : {"strides", "pads", "dilations", "group", "kernel_shape", "auto_pad",
                          "output_padding", "output_shape"}) {
    auto it = node.attributes().find(key);
    if (it != node.attributes().end()) a[key] = it->second;
  }
  return a;
}

std::vector<InputInfo> conv_transpose_inputs(const Node& node, std::span<const InputInfo> inputs,
                                             const ConvModuleLayout& layout) {
  std::vector<InputInfo> out = {module_input(node, inputs, 0, "X"),
                                module_input(node, inputs, layout.weight, "W")};
  if (inputs.size() > layout.bias) out.push_back(inputs[layout.bias]);
  return out;
}

std::vector<TensorInfo> infer_conv_transpose_module(const Node& node,
                                                    std::span<const InputInfo> inputs) {
  activation_of(node);
  const ConvModuleLayout layout = conv_layout(node);
  std::vector<TensorInfo> out = SubKernel::infer("ConvTranspose", conv_transpose_attributes(node),
                                                 conv_transpose_inputs(node, inputs, layout));
  if (has_batch_norm(inputs, layout)) {
    const int64_t channels = out[0].shape[1];
    static const char* const kNames[] = {"BN scale", "BN B", "BN mean", "BN var"};
    for (size_t i = 0; i < 4; ++i) {
      const InputInfo& p = module_input(node, inputs, layout.batch_norm[i], kNames[i]);
      if (p.shape != Shape{channels}) {
        fail_node(node, std::string(kNames[i]) + " of shape [" + std::to_string(channels) + "]",
                  shape_str(p.shape));
      }
    }
  }
  return out;
}

class ConvTransposeModuleKernel final : public OpKernel {
 public:
  ConvTransposeModuleKernel(const Node& node, std::span<const InputInfo> inputs)
      : layout_(conv_layout(node)), act_(activation_of(node)) {
    const std::vector<InputInfo> conv_inputs = conv_transpose_inputs(node, inputs, layout_);
    conv_inputs_ = conv_inputs.size();
    conv_.push_back(
        SubKernel::create("ConvTranspose", conv_transpose_attributes(node), conv_inputs));
    const Shape& y = conv_[0].outputs()[0].shape;
    channels_ = y[1];
    inner_ = kernels::shape_numel(y) / (y[0] * channels_);
    if (!has_batch_norm(inputs, layout_)) return;
    scale_.resize(static_cast<size_t>(channels_));
    shift_.resize(static_cast<size_t>(channels_));
    kernels::batch_norm_fold(constant_batch_norm(node, inputs, layout_, channels_), nullptr,
                             kernels::FoldPrecision::kDouble,
                             {.scale = scale_.data(), .shift = shift_.data()});
  }
  size_t workspace_bytes() const override { return conv_[0].workspace_bytes(); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const Tensor conv_in[3] = {inputs[0], inputs[layout_.weight],
                               conv_inputs_ > 2 ? inputs[layout_.bias] : Tensor()};
    conv_[0].forward(std::span(conv_in, conv_inputs_), outputs.first(1), workspace);
    float* y = outputs[0].data<float>();
    if (!scale_.empty()) {
      kernels::channel_affine(y, scale_.data(), shift_.data(), outputs[0].dim(0), channels_, inner_,
                              y);
    }
    apply_activation(act_, y, y, outputs[0].numel());
  }

 private:
  ConvModuleLayout layout_;
  ActivationSpec act_;
  std::vector<SubKernel> conv_;  // one; a vector because SubKernel has no empty state
  size_t conv_inputs_ = 0;       // X, W and B when the module has it
  int64_t channels_ = 0;
  int64_t inner_ = 0;
  std::vector<float> scale_, shift_;  // the BN as a per-channel affine map (empty: no BN)
};

std::unique_ptr<OpKernel> create_conv_transpose_module(const Node& node,
                                                       std::span<const InputInfo> inputs,
                                                       std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ConvTransposeModuleKernel>(node, inputs);
}

// ---------------------------------------------------------------------------------------------
// Linear, LinearAct: inputs X, W, B?; `source` Gemm (with transB from weight_layout, alpha, beta)
// or MatMul (then B is added along the last axis).

bool from_gemm(const Node& node) {
  return node.attr_string("source", "MatMul") == "Gemm";
}

Attributes gemm_attributes(const Node& node) {
  return {{"transB", int64_t{graph::weight_layout(node) == graph::WeightLayout::kGemm ? 1 : 0}},
          {"alpha", node.attr_float("alpha", 1.0f)},
          {"beta", node.attr_float("beta", 1.0f)}};
}

std::vector<InputInfo> linear_inputs(const Node& node, std::span<const InputInfo> inputs) {
  std::vector<InputInfo> out = {module_input(node, inputs, 0, "X"),
                                module_input(node, inputs, 1, "W")};
  if (from_gemm(node) && inputs.size() > 2) out.push_back(inputs[2]);
  return out;
}

std::vector<TensorInfo> infer_linear(const Node& node, std::span<const InputInfo> inputs) {
  activation_of(node);
  std::vector<TensorInfo> out = SubKernel::infer(
      from_gemm(node) ? "Gemm" : "MatMul", from_gemm(node) ? gemm_attributes(node) : Attributes{},
      linear_inputs(node, inputs));
  if (!from_gemm(node) && inputs.size() > 2 && inputs[2].present) {
    const InputInfo& b = module_input(node, inputs, 2, "B");
    const int64_t features = out[0].shape.empty() ? 1 : out[0].shape.back();
    const int64_t numel = kernels::shape_numel(b.shape);
    if (numel != 1 && numel != features) {
      fail_node(node, "a bias of 1 or " + std::to_string(features) + " values", shape_str(b.shape));
    }
  }
  return out;
}

class LinearKernel final : public OpKernel {
 public:
  LinearKernel(const Node& node, std::span<const InputInfo> inputs)
      : gemm_(from_gemm(node)), act_(activation_of(node)) {
    linear_.push_back(SubKernel::create(gemm_ ? "Gemm" : "MatMul",
                                        gemm_ ? gemm_attributes(node) : Attributes{},
                                        linear_inputs(node, inputs)));
  }
  size_t workspace_bytes() const override { return linear_[0].workspace_bytes(); }
  bool reads_input(size_t index) const override { return index != 1 || linear_[0].reads_input(1); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const size_t used = gemm_ ? std::min<size_t>(inputs.size(), 3) : 2;
    linear_[0].forward(inputs.first(used), outputs.first(1), workspace);
    float* y = outputs[0].data<float>();
    const int64_t n = outputs[0].numel();
    if (!gemm_ && inputs.size() > 2 && inputs[2].defined()) {
      const float* b = inputs[2].data<float>();
      const int64_t features = inputs[2].numel();
      const int64_t row = outputs[0].shape().empty() ? 1 : outputs[0].shape().back();
      kernels::parallel_for(n / row, std::max<int64_t>(1, kGrain / row),
                            [&](int64_t begin, int64_t end) {
                              for (int64_t r = begin; r < end; ++r) {
                                float* yr = y + r * row;
                                for (int64_t i = 0; i < row; ++i) {
                                  yr[i] = yr[i] + b[features == 1 ? 0 : i];
                                }
                              }
                            });
    }
    apply_activation(act_, y, y, n);
  }

 private:
  bool gemm_;
  ActivationSpec act_;
  std::vector<SubKernel> linear_;
};

std::unique_ptr<OpKernel> create_linear(const Node& node, std::span<const InputInfo> inputs,
                                        std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<LinearKernel>(node, inputs);
}

// ---------------------------------------------------------------------------------------------
// LayerNorm, InstanceNorm, GroupNorm, AdaptiveAvgPool: one standard op each.

std::string standard_op(const Node& node) {
  const std::string& op = node.op_type();
  if (op == "LayerNorm") return "LayerNormalization";
  if (op == "InstanceNorm") return "InstanceNormalization";
  if (op == "GroupNorm") return "GroupNormalization";
  return "GlobalAveragePool";
}

Attributes own_attributes(const Node& node) {
  return {node.attributes().begin(), node.attributes().end()};
}

std::vector<TensorInfo> infer_single(const Node& node, std::span<const InputInfo> inputs) {
  return SubKernel::infer(standard_op(node), own_attributes(node), inputs);
}

class SingleOpKernel final : public OpKernel {
 public:
  SingleOpKernel(const Node& node, std::span<const InputInfo> inputs) {
    op_.push_back(SubKernel::create(standard_op(node), own_attributes(node), inputs));
  }
  size_t workspace_bytes() const override { return op_[0].workspace_bytes(); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    op_[0].forward(inputs, outputs.first(1), workspace);
  }

 private:
  std::vector<SubKernel> op_;
};

std::unique_ptr<OpKernel> create_single(const Node& node, std::span<const InputInfo> inputs,
                                        std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<SingleOpKernel>(node, inputs);
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: x / sqrt(mean(x²) + epsilon) · scale over the last axis, one pass per row.

kernels::LayerNormDims rms_norm_dims(const Node& node, std::span<const InputInfo> inputs) {
  if (inputs.size() != 2 || !inputs[0].present || !inputs[1].present) {
    fail_node(node, "inputs X and scale", std::to_string(inputs.size()) + " inputs");
  }
  const InputInfo& x = inputs[0];
  const InputInfo& scale = inputs[1];
  if (x.dtype != DType::kFloat32 || x.shape.empty()) {
    fail_node(node, "a float input of rank >= 1",
              kernels::dtype_name(x.dtype) + kernels::shape_str(x.shape));
  }
  const int64_t d = x.shape.back();
  if (scale.dtype != DType::kFloat32 || scale.shape != Shape{d}) {
    fail_node(node, "a float scale of shape [" + std::to_string(d) + "]",
              kernels::dtype_name(scale.dtype) + kernels::shape_str(scale.shape));
  }
  return {.rows = kernels::shape_numel(x.shape) / std::max<int64_t>(d, 1),
          .size = d,
          .epsilon = node.attr_float("epsilon", 1e-6f)};
}

std::vector<TensorInfo> infer_rms_norm(const Node& node, std::span<const InputInfo> inputs) {
  rms_norm_dims(node, inputs);
  return {{DType::kFloat32, inputs[0].shape}};
}

class RmsNormKernel final : public OpKernel {
 public:
  explicit RmsNormKernel(kernels::LayerNormDims dims) : dims_(dims) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::rms_norm(dims_, inputs[0].data<float>(), inputs[1].data<float>(),
                      outputs[0].data<float>());
  }

 private:
  kernels::LayerNormDims dims_;
};

std::unique_ptr<OpKernel> create_rms_norm(const Node& node, std::span<const InputInfo> inputs,
                                          std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<RmsNormKernel>(rms_norm_dims(node, inputs));
}

}  // namespace

void register_fusion_module_ops(OpRegistry& registry) {
  registry.add({"RMSNorm", infer_rms_norm, create_rms_norm});
  for (const char* op : {"ConvBN", "ConvBNAct", "ConvBNAddAct", "StemConvBNActMaxPool"}) {
    registry.add({op, infer_conv_module, create_conv_module});
  }
  for (const char* op : {"ConvTransposeBN", "ConvTransposeBNAct"}) {
    registry.add({op, infer_conv_transpose_module, create_conv_transpose_module});
  }
  for (const char* op : {"Linear", "LinearAct"}) registry.add({op, infer_linear, create_linear});
  for (const char* op : {"LayerNorm", "InstanceNorm", "GroupNorm", "AdaptiveAvgPool"}) {
    registry.add({op, infer_single, create_single});
  }
}

std::optional<size_t> conv_residual_written_over(const graph::Node& node,
                                                 std::span<const InputInfo> inputs) {
  if (node.op_type() == "FusedConv") {
    return fused_conv_writes_over_residual(node, inputs) ? std::optional<size_t>(5) : std::nullopt;
  }
  if (node.op_type() != "ConvBNAddAct") return std::nullopt;
  const ConvModuleLayout layout = conv_layout(node);
  if (!layout.residual || layout.pool || *layout.residual >= inputs.size() ||
      !inputs[*layout.residual].present) {
    return std::nullopt;
  }
  const std::vector<InputInfo> conv_inputs = fused_conv_inputs(node, inputs, layout);
  const SubKernel conv =
      SubKernel::describe("FusedConv", conv_attributes(node, activation_of(node)), conv_inputs);
  return fused_conv_writes_over_residual(conv.node(), conv_inputs) ? layout.residual : std::nullopt;
}

}  // namespace qforge::runtime::ops
