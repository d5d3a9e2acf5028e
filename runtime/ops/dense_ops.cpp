// The dense op family (ONNX opset 17 semantics): Conv, ConvTranspose, Gemm, MatMul,
// BatchNormalization, LayerNormalization, InstanceNormalization, GroupNormalization (opset 18 and
// 21 forms), MaxPool, AveragePool, GlobalAveragePool, ReduceMean, Softmax. Shape inference
// validates every rule the kernels rely on; kernels get fixed shapes and plans.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kernels/conv.h"
#include "kernels/conv_backward.h"
#include "kernels/conv_transpose.h"
#include "kernels/gemm.h"
#include "kernels/gemm_backward.h"
#include "kernels/norm.h"
#include "kernels/parallel.h"
#include "kernels/pool.h"
#include "kernels/pool_backward.h"
#include "kernels/reduce.h"
#include "kernels/softmax.h"
#include "runtime/ops/ops.h"

namespace qforge::runtime::ops {
namespace {

using graph::Node;
using kernels::shape_numel;
using kernels::shape_str;

// ---------------------------------------------------------------------------------------------
// Validation helpers

[[noreturn]] void fail_unsupported(const Node& node, const std::string& rule,
                                   const std::string& got) {
  throw_unsupported("shape inference: " + node.label() + ": expected " + rule + ", got " + got);
}

std::string ints_str(const std::vector<int64_t>& values) {
  return shape_str(values);
}

const InputInfo& float_input(const Node& node, std::span<const InputInfo> inputs, size_t index,
                             const char* name) {
  if (index >= inputs.size() || !inputs[index].present) {
    fail_node(node, std::string("input ") + std::to_string(index) + " (" + name + ")", "none");
  }
  const InputInfo& info = inputs[index];
  if (info.dtype != DType::kFloat32) {
    fail_unsupported(node, std::string("float32 ") + name,
                     std::string(kernels::dtype_name(info.dtype)));
  }
  return info;
}

const InputInfo* optional_float_input(const Node& node, std::span<const InputInfo> inputs,
                                      size_t index, const char* name) {
  if (index >= inputs.size() || !inputs[index].present) return nullptr;
  return &float_input(node, inputs, index, name);
}

// An output some node reads (or the graph returns); ONNX's omitted outputs are unused values.
bool output_used(const Node& node, size_t index) {
  const graph::Value* v = node.output(index);
  return v && (!v->consumers().empty() || v->is_graph_output());
}

int64_t normalize_axis(const Node& node, int64_t axis, int64_t rank, const char* what) {
  if (axis < -rank || axis >= rank) {
    fail_node(
        node,
        std::string(what) + " in [" + std::to_string(-rank) + ", " + std::to_string(rank) + ")",
        std::to_string(axis));
  }
  return axis < 0 ? axis + rank : axis;
}

int64_t bool_attr(const Node& node, const char* name, int64_t fallback) {
  const int64_t v = node.attr_int(name, fallback);
  if (v != 0 && v != 1)
    fail_node(node, std::string("attribute '") + name + "' 0 or 1", std::to_string(v));
  return v;
}

// Output shapes of single-output float ops.
std::vector<TensorInfo> one_output(const Node& node, Shape shape) {
  std::vector<TensorInfo> out(std::max<size_t>(node.num_outputs(), 1));
  out[0] = {DType::kFloat32, std::move(shape)};
  return out;
}

// ---------------------------------------------------------------------------------------------
// Sliding windows (Conv and the pools): strides, dilations, pads and auto_pad resolved to one
// begin/end pad and one output size per spatial axis.

struct Window {
  std::vector<int64_t> kernel;
  std::vector<int64_t> strides;
  std::vector<int64_t> dilations;
  std::vector<int64_t> pad_begin;
  std::vector<int64_t> pad_end;
  std::vector<int64_t> out;
};

struct WindowRules {
  bool ceil_mode = false;
  bool pads_below_kernel = false;  // pools: a window must hold at least one input position
};

std::vector<int64_t> per_axis_attr(const Node& node, const char* name, size_t count,
                                   int64_t fallback, int64_t minimum) {
  std::vector<int64_t> v = node.attr_ints(name, std::vector<int64_t>(count, fallback));
  if (v.size() != count) {
    fail_node(node,
              std::string("attribute '") + name + "' with " + std::to_string(count) + " values",
              ints_str(v));
  }
  for (int64_t x : v) {
    if (x < minimum) {
      fail_node(node, std::string("attribute '") + name + "' values >= " + std::to_string(minimum),
                ints_str(v));
    }
  }
  return v;
}

Window resolve_window(const Node& node, std::span<const int64_t> in_spatial,
                      std::vector<int64_t> kernel, const WindowRules& rules) {
  const size_t rank = in_spatial.size();
  Window w;
  w.kernel = std::move(kernel);
  w.strides = per_axis_attr(node, "strides", rank, 1, 1);
  w.dilations = per_axis_attr(node, "dilations", rank, 1, 1);
  const std::vector<int64_t> pads = per_axis_attr(node, "pads", 2 * rank, 0, 0);
  const std::string auto_pad = node.attr_string("auto_pad", "NOTSET");
  w.pad_begin.assign(rank, 0);
  w.pad_end.assign(rank, 0);
  w.out.assign(rank, 0);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t in = in_spatial[i];
    const int64_t s = w.strides[i];
    const int64_t extent = (w.kernel[i] - 1) * w.dilations[i] + 1;
    if (auto_pad == "NOTSET") {
      w.pad_begin[i] = pads[i];
      w.pad_end[i] = pads[i + rank];
      const int64_t span = in + w.pad_begin[i] + w.pad_end[i] - extent;
      if (span < 0) {
        w.out[i] = 0;
      } else if (rules.ceil_mode) {
        w.out[i] = (span + s - 1) / s + 1;
        // A last window that would start inside the end padding is dropped.
        if ((w.out[i] - 1) * s >= in + w.pad_begin[i]) --w.out[i];
      } else {
        w.out[i] = span / s + 1;
      }
    } else if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      w.out[i] = (in + s - 1) / s;
      const int64_t total = std::max<int64_t>(0, (w.out[i] - 1) * s + extent - in);
      const int64_t small = total / 2;
      w.pad_begin[i] = auto_pad == "SAME_UPPER" ? small : total - small;
      w.pad_end[i] = total - w.pad_begin[i];
    } else if (auto_pad == "VALID") {
      w.out[i] = in >= extent ? (in - extent) / s + 1 : 0;
    } else {
      fail_node(node, "auto_pad NOTSET, SAME_UPPER, SAME_LOWER or VALID", "'" + auto_pad + "'");
    }
    if (rules.pads_below_kernel && (w.pad_begin[i] >= w.kernel[i] || w.pad_end[i] >= w.kernel[i])) {
      fail_node(node, "pads smaller than kernel_shape " + ints_str(w.kernel),
                "pads " + ints_str(pads));
    }
    if (w.out[i] < 1) {
      fail_node(node, "a window that fits the input " + shape_str(in_spatial),
                "kernel " + ints_str(w.kernel) + " with dilations " + ints_str(w.dilations) +
                    " and pads " + ints_str(pads) + " (output size " + std::to_string(w.out[i]) +
                    ")");
    }
  }
  return w;
}

// Spatial rank 1 maps onto the 2-D kernels with a unit height axis.
template <class Geometry>
void fill_window_2d(const Window& w, std::span<const int64_t> in_spatial, Geometry& g) {
  const bool one_d = in_spatial.size() == 1;
  const size_t x = one_d ? 0 : 1;
  g.in_h = one_d ? 1 : in_spatial[0];
  g.in_w = in_spatial[x];
  g.out_h = one_d ? 1 : w.out[0];
  g.out_w = w.out[x];
  g.kernel_h = one_d ? 1 : w.kernel[0];
  g.kernel_w = w.kernel[x];
  g.stride_h = one_d ? 1 : w.strides[0];
  g.stride_w = w.strides[x];
  g.dilation_h = one_d ? 1 : w.dilations[0];
  g.dilation_w = w.dilations[x];
  g.pad_top = one_d ? 0 : w.pad_begin[0];
  g.pad_left = w.pad_begin[x];
}

std::span<const int64_t> spatial_of(const Shape& shape) {
  return std::span<const int64_t>(shape).subspan(2);
}

// ---------------------------------------------------------------------------------------------
// Conv

struct ConvSetup {
  kernels::ConvGeometry geometry;
  Shape out_shape;
};

ConvSetup setup_conv(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  const InputInfo& w = float_input(node, inputs, 1, "W");
  const InputInfo* b = optional_float_input(node, inputs, 2, "B");
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  if (rank < 3) fail_node(node, "input X of rank >= 3 (N, C, spatial...)", shape_str(x.shape));
  if (rank > 4) fail_unsupported(node, "1-D or 2-D convolution", "input " + shape_str(x.shape));
  if (static_cast<int64_t>(w.shape.size()) != rank) {
    fail_node(node, "weight W of the input's rank " + std::to_string(rank),
              "W " + shape_str(w.shape));
  }
  const int64_t group = node.attr_int("group", 1);
  if (group < 1) fail_node(node, "group >= 1", std::to_string(group));
  const int64_t in_channels = x.shape[1];
  const int64_t out_channels = w.shape[0];
  if (in_channels % group != 0 || w.shape[1] * group != in_channels) {
    fail_node(node,
              "weight input channels W[1] = input channels / group = " +
                  std::to_string(in_channels) + " / " + std::to_string(group),
              "W " + shape_str(w.shape) + " for input " + shape_str(x.shape));
  }
  if (out_channels % group != 0) {
    fail_node(node, "output channels W[0] divisible by group " + std::to_string(group),
              "W " + shape_str(w.shape));
  }
  std::vector<int64_t> kernel(w.shape.begin() + 2, w.shape.end());
  if (node.has_attr("kernel_shape") && node.attr_ints("kernel_shape") != kernel) {
    fail_node(node, "kernel_shape equal to the weight's spatial shape " + ints_str(kernel),
              ints_str(node.attr_ints("kernel_shape")));
  }
  if (b && b->shape != Shape{out_channels}) {
    fail_node(node, "bias B of shape [" + std::to_string(out_channels) + "]", shape_str(b->shape));
  }
  const Window win = resolve_window(node, spatial_of(x.shape), kernel, {});

  ConvSetup s;
  kernels::ConvGeometry& g = s.geometry;
  g.batch = x.shape[0];
  g.in_channels = in_channels;
  g.out_channels = out_channels;
  g.group = group;
  fill_window_2d(win, spatial_of(x.shape), g);
  s.out_shape = {x.shape[0], out_channels};
  s.out_shape.insert(s.out_shape.end(), win.out.begin(), win.out.end());
  return s;
}

// Conv, and the runtime's FusedConv: a Conv whose output pass also applies a per-channel
// scale/shift (an inference BatchNormalization), a residual add and a clamp (Relu, Clip).
// FusedConv inputs: X, W, B?, scale?, shift?, residual?; attributes: Conv's plus
// clamp_min/clamp_max.
class ConvKernel final : public OpKernel {
 public:
  // Constant weights are brought into the algorithm's form once, here.
  ConvKernel(const kernels::ConvGeometry& g, const Tensor* constant_weights, float clamp_min,
             float clamp_max, bool fused)
      : plan_(kernels::plan_conv(g, kernels::max_threads())),
        backward_plan_(kernels::plan_conv_backward(g, kernels::max_threads())),
        clamp_min_(clamp_min),
        clamp_max_(clamp_max),
        fused_(fused) {
    const size_t floats = kernels::conv_prepared_weight_floats(plan_);
    if (constant_weights && floats > 0) {
      prepared_.resize(floats);
      kernels::prepare_conv_weights(plan_, constant_weights->data<float>(), prepared_.data());
    }
  }
  size_t workspace_bytes() const override {
    return kernels::conv_workspace_bytes(plan_, prepared_.empty()
                                                    ? kernels::ConvWeightForm::kRaw
                                                    : kernels::ConvWeightForm::kPrepared);
  }
  bool reads_input(size_t index) const override { return index != 1 || prepared_.empty(); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    auto optional = [&](size_t i) {
      return inputs.size() > i && inputs[i].defined() ? inputs[i].data<float>() : nullptr;
    };
    kernels::ConvEpilogue epilogue;
    epilogue.scale = optional(3);
    epilogue.shift = optional(4);
    epilogue.residual = optional(5);
    epilogue.clamp_min = clamp_min_;
    epilogue.clamp_max = clamp_max_;
    kernels::conv2d(plan_, inputs[0].data<float>(), inputs[1].data<float>(), optional(2),
                    outputs[0].data<float>(), workspace, epilogue,
                    prepared_.empty() ? nullptr : prepared_.data());
  }

  // Conv's X, W and B; FusedConv, an inference-only node, has no backward.
  bool differentiable_input(size_t index) const override { return !fused_ && index <= 2; }
  size_t backward_workspace_bytes() const override {
    return kernels::conv_backward_workspace_bytes(backward_plan_);
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    kernels::ConvGradients grads;
    grads.dx = grad_data(grad_inputs, 0);
    grads.dw = grad_data(grad_inputs, 1);
    grads.dbias = grad_data(grad_inputs, 2);
    kernels::conv2d_backward(backward_plan_, inputs[0].data<float>(), inputs[1].data<float>(),
                             grad_outputs[0].data<float>(), grads, workspace);
  }

 private:
  kernels::ConvPlan plan_;
  kernels::ConvBackwardPlan backward_plan_;
  std::vector<float> prepared_;
  float clamp_min_;
  float clamp_max_;
  bool fused_;
};

std::vector<TensorInfo> infer_conv(const Node& node, std::span<const InputInfo> inputs) {
  return one_output(node, setup_conv(node, inputs).out_shape);
}

std::unique_ptr<OpKernel> create_conv(const Node& node, std::span<const InputInfo> inputs,
                                      std::span<const TensorInfo> /*outputs*/) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  return std::make_unique<ConvKernel>(setup_conv(node, inputs).geometry, inputs[1].constant, -kInf,
                                      kInf, false);
}

std::vector<TensorInfo> infer_fused_conv(const Node& node, std::span<const InputInfo> inputs) {
  ConvSetup s = setup_conv(node, inputs);
  const int64_t channels = s.out_shape[1];
  for (size_t i : {size_t{3}, size_t{4}}) {
    const InputInfo* p = optional_float_input(node, inputs, i, i == 3 ? "scale" : "shift");
    if (p && p->shape != Shape{channels}) {
      fail_node(node,
                "a per-channel epilogue parameter of shape [" + std::to_string(channels) + "]",
                shape_str(p->shape));
    }
  }
  const InputInfo* residual = optional_float_input(node, inputs, 5, "residual");
  if (residual && residual->shape != s.out_shape) {
    fail_node(node, "a residual of the output's shape " + shape_str(s.out_shape),
              shape_str(residual->shape));
  }
  return one_output(node, s.out_shape);
}

std::unique_ptr<OpKernel> create_fused_conv(const Node& node, std::span<const InputInfo> inputs,
                                            std::span<const TensorInfo> /*outputs*/) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  return std::make_unique<ConvKernel>(setup_conv(node, inputs).geometry, inputs[1].constant,
                                      node.attr_float("clamp_min", -kInf),
                                      node.attr_float("clamp_max", kInf), true);
}

// ---------------------------------------------------------------------------------------------
// ConvTranspose

struct ConvTransposeSetup {
  kernels::ConvTransposeGeometry geometry;
  Shape out_shape;
};

// Output size and pads per spatial axis (ONNX ConvTranspose): from pads and output_padding, or
// from output_shape or auto_pad SAME_*, which split the total padding between the two ends.
ConvTransposeSetup setup_conv_transpose(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  const InputInfo& w = float_input(node, inputs, 1, "W");
  const InputInfo* b = optional_float_input(node, inputs, 2, "B");
  const auto rank = static_cast<int64_t>(x.shape.size());
  if (rank < 3) fail_node(node, "input X of rank >= 3 (N, C, spatial...)", shape_str(x.shape));
  if (rank > 4) {
    fail_unsupported(node, "1-D or 2-D transposed convolution", "input " + shape_str(x.shape));
  }
  if (static_cast<int64_t>(w.shape.size()) != rank) {
    fail_node(node, "weight W of the input's rank " + std::to_string(rank),
              "W " + shape_str(w.shape));
  }
  const int64_t group = node.attr_int("group", 1);
  if (group < 1) fail_node(node, "group >= 1", std::to_string(group));
  if (w.shape[0] != x.shape[1] || x.shape[1] % group != 0) {
    fail_node(node,
              "weight W [C_in, C_out / group, kernel...] with C_in = the input's " +
                  std::to_string(x.shape[1]) + " channels, divisible by group " +
                  std::to_string(group),
              "W " + shape_str(w.shape));
  }
  const int64_t out_channels = w.shape[1] * group;
  std::vector<int64_t> kernel(w.shape.begin() + 2, w.shape.end());
  if (node.has_attr("kernel_shape") && node.attr_ints("kernel_shape") != kernel) {
    fail_node(node, "kernel_shape equal to the weight's spatial shape " + ints_str(kernel),
              ints_str(node.attr_ints("kernel_shape")));
  }
  if (b && b->shape != Shape{out_channels}) {
    fail_node(node, "bias B of shape [" + std::to_string(out_channels) + "]", shape_str(b->shape));
  }
  const std::span<const int64_t> in = spatial_of(x.shape);
  const size_t axes = in.size();
  const std::vector<int64_t> strides = per_axis_attr(node, "strides", axes, 1, 1);
  const std::vector<int64_t> dilations = per_axis_attr(node, "dilations", axes, 1, 1);
  const std::vector<int64_t> pads = per_axis_attr(node, "pads", 2 * axes, 0, 0);
  const std::vector<int64_t> output_padding = per_axis_attr(node, "output_padding", axes, 0, 0);
  const std::string auto_pad = node.attr_string("auto_pad", "NOTSET");
  if (auto_pad != "NOTSET" && auto_pad != "SAME_UPPER" && auto_pad != "SAME_LOWER" &&
      auto_pad != "VALID") {
    fail_node(node, "auto_pad NOTSET, SAME_UPPER, SAME_LOWER or VALID", "'" + auto_pad + "'");
  }
  std::vector<int64_t> requested;
  if (node.has_attr("output_shape")) {
    requested = node.attr_ints("output_shape");
    // output_shape may name the spatial dims only or the whole output.
    if (requested.size() == axes + 2) requested.erase(requested.begin(), requested.begin() + 2);
    if (requested.size() != axes) {
      fail_node(node, "output_shape with " + std::to_string(axes) + " spatial dims",
                ints_str(node.attr_ints("output_shape")));
    }
  }
  std::vector<int64_t> begin(axes), out(axes);
  for (size_t i = 0; i < axes; ++i) {
    if (output_padding[i] >= std::max(strides[i], dilations[i])) {
      fail_node(node, "output_padding below the stride or the dilation", ints_str(output_padding));
    }
    const int64_t natural =
        strides[i] * (in[i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1;
    int64_t target = -1;
    if (!requested.empty()) {
      target = requested[i];
    } else if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      target = in[i] * strides[i];
    }
    if (target >= 0) {
      const int64_t total = natural - target;
      if (total < 0) {
        fail_unsupported(node, "an output_shape no larger than " + std::to_string(natural),
                         std::to_string(target));
      }
      begin[i] = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      out[i] = target;
    } else if (auto_pad == "VALID") {
      begin[i] = 0;
      out[i] = natural;
    } else {
      begin[i] = pads[i];
      out[i] = natural - pads[i] - pads[i + axes];
    }
    if (out[i] < 1) {
      fail_node(node, "a positive output size",
                ints_str(out) + " from pads " + ints_str(pads) + " and kernel " + ints_str(kernel));
    }
  }
  ConvTransposeSetup s;
  kernels::ConvTransposeGeometry& g = s.geometry;
  const bool one_d = axes == 1;
  const size_t last = axes - 1;
  g.batch = x.shape[0];
  g.in_channels = x.shape[1];
  g.out_channels = out_channels;
  g.group = group;
  g.in_h = one_d ? 1 : in[0];
  g.in_w = in[last];
  g.out_h = one_d ? 1 : out[0];
  g.out_w = out[last];
  g.kernel_h = one_d ? 1 : kernel[0];
  g.kernel_w = kernel[last];
  g.stride_h = one_d ? 1 : strides[0];
  g.stride_w = strides[last];
  g.dilation_h = one_d ? 1 : dilations[0];
  g.dilation_w = dilations[last];
  g.pad_top = one_d ? 0 : begin[0];
  g.pad_left = begin[last];
  s.out_shape = {x.shape[0], out_channels};
  s.out_shape.insert(s.out_shape.end(), out.begin(), out.end());
  return s;
}

class ConvTransposeKernel final : public OpKernel {
 public:
  explicit ConvTransposeKernel(const kernels::ConvTransposeGeometry& g)
      : plan_(kernels::plan_conv_transpose(g, kernels::max_threads())) {}
  size_t workspace_bytes() const override { return kernels::conv_transpose_workspace_bytes(plan_); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const float* bias =
        inputs.size() > 2 && inputs[2].defined() ? inputs[2].data<float>() : nullptr;
    kernels::conv_transpose2d(plan_, inputs[0].data<float>(), inputs[1].data<float>(), bias,
                              outputs[0].data<float>(), workspace);
  }
  bool differentiable_input(size_t index) const override { return index <= 2; }
  size_t backward_workspace_bytes() const override {
    return kernels::conv_transpose_backward_workspace_bytes(plan_);
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    kernels::ConvGradients grads;
    grads.dx = grad_data(grad_inputs, 0);
    grads.dw = grad_data(grad_inputs, 1);
    grads.dbias = grad_data(grad_inputs, 2);
    kernels::conv_transpose2d_backward(plan_, inputs[0].data<float>(), inputs[1].data<float>(),
                                       grad_outputs[0].data<float>(), grads, workspace);
  }

 private:
  kernels::ConvTransposePlan plan_;
};

std::vector<TensorInfo> infer_conv_transpose(const Node& node, std::span<const InputInfo> inputs) {
  return one_output(node, setup_conv_transpose(node, inputs).out_shape);
}

std::unique_ptr<OpKernel> create_conv_transpose(const Node& node, std::span<const InputInfo> inputs,
                                                std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ConvTransposeKernel>(setup_conv_transpose(node, inputs).geometry);
}

// ---------------------------------------------------------------------------------------------
// Gemm

kernels::GemmDims setup_gemm(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& a = float_input(node, inputs, 0, "A");
  const InputInfo& b = float_input(node, inputs, 1, "B");
  const InputInfo* c = optional_float_input(node, inputs, 2, "C");
  if (a.shape.size() != 2) fail_node(node, "A of rank 2", shape_str(a.shape));
  if (b.shape.size() != 2) fail_node(node, "B of rank 2", shape_str(b.shape));
  kernels::GemmDims d;
  const bool trans_a = bool_attr(node, "transA", 0) != 0;
  const bool trans_b = bool_attr(node, "transB", 0) != 0;
  d.trans_a = trans_a ? kernels::Transpose::kYes : kernels::Transpose::kNo;
  d.trans_b = trans_b ? kernels::Transpose::kYes : kernels::Transpose::kNo;
  d.m = trans_a ? a.shape[1] : a.shape[0];
  d.k = trans_a ? a.shape[0] : a.shape[1];
  const int64_t kb = trans_b ? b.shape[1] : b.shape[0];
  d.n = trans_b ? b.shape[0] : b.shape[1];
  if (kb != d.k) {
    fail_node(node,
              "op(A) [M, K] and op(B) [K, N] with equal K (transA " + std::to_string(trans_a) +
                  ", transB " + std::to_string(trans_b) + ")",
              "A " + shape_str(a.shape) + " and B " + shape_str(b.shape));
  }
  d.alpha = node.attr_float("alpha", 1.0f);
  d.beta = node.attr_float("beta", 1.0f);
  if (c) {
    const Shape& cs = c->shape;
    const int64_t count = shape_numel(cs);
    if (cs.size() > 2) {
      fail_node(node,
                "C of rank <= 2 broadcastable to [" + std::to_string(d.m) + ", " +
                    std::to_string(d.n) + "]",
                shape_str(cs));
    }
    const int64_t rows = cs.size() == 2 ? cs[0] : 1;
    const int64_t cols = cs.empty() ? 1 : cs.back();
    if (count == 1) {
      d.bias = kernels::GemmBias::kScalar;
    } else if (rows == 1 && cols == d.n) {
      d.bias = kernels::GemmBias::kRow;
    } else if (rows == d.m && cols == 1) {
      d.bias = kernels::GemmBias::kColumn;
    } else if (rows == d.m && cols == d.n) {
      d.bias = kernels::GemmBias::kFull;
    } else {
      fail_node(node,
                "C broadcastable to [" + std::to_string(d.m) + ", " + std::to_string(d.n) + "]",
                shape_str(cs));
    }
    if (d.beta == 0.0f) d.bias = kernels::GemmBias::kNone;
  }
  return d;
}

class GemmKernel final : public OpKernel {
 public:
  // A constant B is packed for the micro-kernel once, here (when that path applies).
  GemmKernel(const kernels::GemmDims& dims, const Tensor* constant_weights) : dims_(dims) {
    const size_t floats = kernels::gemm_prepared_weight_floats(dims_);
    if (constant_weights && floats > 0) {
      prepared_.resize(floats);
      kernels::prepare_gemm_weights(dims_, constant_weights->data<float>(), prepared_.data());
    }
  }
  size_t workspace_bytes() const override {
    return kernels::gemm_workspace_bytes(dims_, prepared_.empty()
                                                    ? kernels::GemmWeightForm::kRaw
                                                    : kernels::GemmWeightForm::kPrepared);
  }
  bool reads_input(size_t index) const override { return index != 1 || prepared_.empty(); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const float* c = dims_.bias != kernels::GemmBias::kNone ? inputs[2].data<float>() : nullptr;
    kernels::gemm(dims_, inputs[0].data<float>(), inputs[1].data<float>(), c,
                  outputs[0].data<float>(), workspace,
                  prepared_.empty() ? nullptr : prepared_.data());
  }
  bool differentiable_input(size_t index) const override {
    return index <= 1 || (index == 2 && dims_.bias != kernels::GemmBias::kNone);
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::GemmGradients grads;
    grads.da = grad_data(grad_inputs, 0);
    grads.db = grad_data(grad_inputs, 1);
    grads.dc = grad_data(grad_inputs, 2);
    kernels::gemm_backward(dims_, inputs[0].data<float>(), inputs[1].data<float>(),
                           grad_outputs[0].data<float>(), grads);
  }

 private:
  kernels::GemmDims dims_;
  std::vector<float> prepared_;
};

std::vector<TensorInfo> infer_gemm(const Node& node, std::span<const InputInfo> inputs) {
  const kernels::GemmDims d = setup_gemm(node, inputs);
  return one_output(node, {d.m, d.n});
}

std::unique_ptr<OpKernel> create_gemm(const Node& node, std::span<const InputInfo> inputs,
                                      std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<GemmKernel>(setup_gemm(node, inputs), inputs[1].constant);
}

// ---------------------------------------------------------------------------------------------
// MatMul

kernels::MatMulDims setup_matmul(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& a = float_input(node, inputs, 0, "A");
  const InputInfo& b = float_input(node, inputs, 1, "B");
  if (a.shape.empty() || b.shape.empty()) {
    fail_node(node, "operands of rank >= 1",
              "A " + shape_str(a.shape) + " and B " + shape_str(b.shape));
  }
  auto dims = kernels::matmul_dims(a.shape, b.shape);
  if (!dims) {
    fail_node(node, "A [..., M, K] and B [..., K, N] with equal K and broadcastable batch dims",
              "A " + shape_str(a.shape) + " and B " + shape_str(b.shape));
  }
  return *dims;
}

class MatMulKernel final : public OpKernel {
 public:
  // A constant B shared by every matrix of A (a Linear layer's weight) is packed for the
  // micro-kernel once, here (when that path applies).
  MatMulKernel(kernels::MatMulDims dims, const Tensor* constant_weights) : dims_(std::move(dims)) {
    const size_t floats = kernels::matmul_prepared_weight_floats(dims_);
    if (constant_weights && floats > 0) {
      prepared_.resize(floats);
      kernels::prepare_matmul_weights(dims_, constant_weights->data<float>(), prepared_.data());
    }
  }
  size_t workspace_bytes() const override {
    return kernels::matmul_workspace_bytes(dims_, prepared_.empty()
                                                      ? kernels::GemmWeightForm::kRaw
                                                      : kernels::GemmWeightForm::kPrepared);
  }
  bool reads_input(size_t index) const override { return index != 1 || prepared_.empty(); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    kernels::matmul(dims_, inputs[0].data<float>(), inputs[1].data<float>(),
                    outputs[0].data<float>(), workspace,
                    prepared_.empty() ? nullptr : prepared_.data());
  }
  bool differentiable_input(size_t index) const override { return index <= 1; }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::MatMulGradients grads;
    grads.da = grad_data(grad_inputs, 0);
    grads.db = grad_data(grad_inputs, 1);
    kernels::matmul_backward(dims_, inputs[0].data<float>(), inputs[1].data<float>(),
                             grad_outputs[0].data<float>(), grads);
  }

 private:
  kernels::MatMulDims dims_;
  std::vector<float> prepared_;
};

std::vector<TensorInfo> infer_matmul(const Node& node, std::span<const InputInfo> inputs) {
  return one_output(node, setup_matmul(node, inputs).out_shape);
}

std::unique_ptr<OpKernel> create_matmul(const Node& node, std::span<const InputInfo> inputs,
                                        std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<MatMulKernel>(setup_matmul(node, inputs), inputs[1].constant);
}

// ---------------------------------------------------------------------------------------------
// BatchNormalization (inference)

std::vector<TensorInfo> infer_batch_norm(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  if (x.shape.size() < 2) fail_node(node, "input X of rank >= 2 (N, C, ...)", shape_str(x.shape));
  const int64_t training = node.attr_int("training_mode", 0);
  if (training != 0) {
    fail_unsupported(node, "training_mode 0 (inference)", std::to_string(training));
  }
  const int64_t channels = x.shape[1];
  const char* names[] = {"scale", "B", "input_mean", "input_var"};
  for (size_t i = 1; i <= 4; ++i) {
    const InputInfo& p = float_input(node, inputs, i, names[i - 1]);
    if (p.shape != Shape{channels}) {
      fail_node(node, std::string(names[i - 1]) + " of shape [" + std::to_string(channels) + "]",
                shape_str(p.shape));
    }
  }
  for (size_t i = 1; i < node.num_outputs(); ++i) {
    if (output_used(node, i)) {
      fail_node(node, "only output Y in use when training_mode is 0",
                "output " + std::to_string(i) + " '" + node.output(i)->name() + "' in use");
    }
  }
  std::vector<TensorInfo> out = one_output(node, x.shape);
  for (size_t i = 1; i < out.size(); ++i) out[i] = {DType::kFloat32, {channels}};
  return out;
}

class BatchNormKernel final : public OpKernel {
 public:
  BatchNormKernel(const Shape& x_shape, float epsilon, std::span<const InputInfo> inputs)
      : batch_(x_shape[0]),
        channels_(x_shape[1]),
        inner_(shape_numel(std::span<const int64_t>(x_shape).subspan(2))),
        epsilon_(epsilon) {
    folded_ = std::all_of(inputs.begin() + 1, inputs.begin() + 5,
                          [](const InputInfo& i) { return i.constant != nullptr; });
    if (folded_) {
      scale_.resize(static_cast<size_t>(channels_));
      shift_.resize(static_cast<size_t>(channels_));
      kernels::batch_norm_fold(
          parameters(inputs[1].constant->data<float>(), inputs[2].constant->data<float>(),
                     inputs[3].constant->data<float>(), inputs[4].constant->data<float>()),
          nullptr, kernels::FoldPrecision::kDouble,
          {.scale = scale_.data(), .shift = shift_.data()});
    }
  }
  size_t workspace_bytes() const override {
    return folded_ ? 0 : 2 * kernels::aligned_bytes(static_cast<size_t>(channels_) * sizeof(float));
  }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const float* scale = scale_.data();
    const float* shift = shift_.data();
    if (!folded_) {
      float* s = reinterpret_cast<float*>(workspace);
      float* t = reinterpret_cast<float*>(
          workspace + kernels::aligned_bytes(static_cast<size_t>(channels_) * sizeof(float)));
      kernels::batch_norm_fold(parameters(inputs[1].data<float>(), inputs[2].data<float>(),
                                          inputs[3].data<float>(), inputs[4].data<float>()),
                               nullptr, kernels::FoldPrecision::kDouble, {.scale = s, .shift = t});
      scale = s;
      shift = t;
    }
    kernels::channel_affine(inputs[0].data<float>(), scale, shift, batch_, channels_, inner_,
                            outputs[0].data<float>());
  }

  // Training on running statistics (a frozen BN): y = (x − mean)·γ/sqrt(var + eps) + β is
  // affine per channel, so dX = dY·γ/sqrt(var + eps), dγ = Σ dY·(x − mean)/sqrt(var + eps) and
  // dβ = Σ dY over the batch and the spatial positions, summed in a fixed order per channel.
  bool differentiable_input(size_t index) const override { return index <= 2; }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    const float* x = inputs[0].data<float>();
    const float* gamma = inputs[1].data<float>();
    const float* mean = inputs[3].data<float>();
    const float* var = inputs[4].data<float>();
    const float* dy = grad_outputs[0].data<float>();
    float* dx = grad_data(grad_inputs, 0);
    float* dgamma = grad_data(grad_inputs, 1);
    float* dbeta = grad_data(grad_inputs, 2);
    kernels::parallel_for(channels_, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const float inv_std = 1.0f / std::sqrt(var[c] + epsilon_);
        const float scale = gamma[c] * inv_std;
        double sum_dy = 0;
        double sum_dy_xhat = 0;
        for (int64_t n = 0; n < batch_; ++n) {
          const int64_t base = (n * channels_ + c) * inner_;
          for (int64_t k = base; k < base + inner_; ++k) {
            sum_dy += dy[k];
            sum_dy_xhat += static_cast<double>(dy[k]) * ((x[k] - mean[c]) * inv_std);
            if (dx) dx[k] = dy[k] * scale;
          }
        }
        if (dgamma) dgamma[c] = static_cast<float>(sum_dy_xhat);
        if (dbeta) dbeta[c] = static_cast<float>(sum_dy);
      }
    });
  }

 private:
  kernels::BatchNormParameters parameters(const float* gamma, const float* beta, const float* mean,
                                          const float* var) const {
    return {.gamma = gamma,
            .beta = beta,
            .mean = mean,
            .var = var,
            .epsilon = epsilon_,
            .channels = channels_};
  }

  int64_t batch_;
  int64_t channels_;
  int64_t inner_;
  float epsilon_;
  bool folded_ = false;
  std::vector<float> scale_;
  std::vector<float> shift_;
};

std::unique_ptr<OpKernel> create_batch_norm(const Node& node, std::span<const InputInfo> inputs,
                                            std::span<const TensorInfo> /*outputs*/) {
  infer_batch_norm(node, inputs);
  return std::make_unique<BatchNormKernel>(inputs[0].shape, node.attr_float("epsilon", 1e-5f),
                                           inputs);
}

// BatchNormalization as training runs it: normalised with the batch's statistics (biased
// variance), its running mean and variance (inputs 3 and 4, the training executor's own copies)
// updated in place as PyTorch does with momentum 1 − the ONNX momentum, and a backward to X,
// scale and B. The mean and inverse deviation of the last forward are kept for the backward.
class BatchNormTrainingKernel final : public OpKernel {
 public:
  BatchNormTrainingKernel(const Shape& x_shape, float epsilon, float momentum)
      : dims_{x_shape[0], x_shape[1], shape_numel(std::span<const int64_t>(x_shape).subspan(2)),
              epsilon},
        options_{momentum},
        saved_mean_(static_cast<size_t>(x_shape[1])),
        saved_inv_std_(static_cast<size_t>(x_shape[1])) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    Tensor running_mean = inputs[3];
    Tensor running_var = inputs[4];
    kernels::batch_norm_training(dims_, options_, inputs[0].data<float>(), inputs[1].data<float>(),
                                 inputs[2].data<float>(), outputs[0].data<float>(),
                                 saved_mean_.data(), saved_inv_std_.data(),
                                 running_mean.data<float>(), running_var.data<float>());
  }
  bool differentiable_input(size_t index) const override { return index <= 2; }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::batch_norm_training_backward(dims_, inputs[0].data<float>(), inputs[1].data<float>(),
                                          saved_mean_.data(), saved_inv_std_.data(),
                                          grad_outputs[0].data<float>(), grad_data(grad_inputs, 0),
                                          grad_data(grad_inputs, 1), grad_data(grad_inputs, 2));
  }

 private:
  kernels::BatchNormDims dims_;
  kernels::BatchNormTrainingOptions options_;
  std::vector<float> saved_mean_;
  std::vector<float> saved_inv_std_;
};

std::unique_ptr<OpKernel> create_batch_norm_training(const Node& node,
                                                     std::span<const InputInfo> inputs,
                                                     std::span<const TensorInfo> /*outputs*/) {
  infer_batch_norm(node, inputs);
  const float onnx_momentum = node.attr_float("momentum", 0.9f);
  if (!(onnx_momentum >= 0.0f && onnx_momentum <= 1.0f)) {
    fail_node(node, "momentum in [0, 1]", std::to_string(onnx_momentum));
  }
  return std::make_unique<BatchNormTrainingKernel>(
      inputs[0].shape, node.attr_float("epsilon", 1e-5f), 1.0f - onnx_momentum);
}

// ---------------------------------------------------------------------------------------------
// LayerNormalization

// True when `param` broadcasts unidirectionally (right-aligned) onto `target`.
bool broadcasts_onto(const Shape& param, std::span<const int64_t> target) {
  if (param.size() > target.size()) return false;
  const size_t lead = target.size() - param.size();
  for (size_t i = 0; i < param.size(); ++i) {
    if (param[i] != 1 && param[i] != target[lead + i]) return false;
  }
  return true;
}

// Writes `param` broadcast onto `target` (row-major) into dst.
void expand_onto(const float* param, const Shape& param_shape, std::span<const int64_t> target,
                 float* dst) {
  const size_t rank = target.size();
  const size_t lead = rank - param_shape.size();
  const int64_t total = shape_numel(target);
  for (int64_t i = 0; i < total; ++i) {
    int64_t rest = i;
    int64_t src = 0;
    int64_t stride = 1;
    for (size_t a = rank; a-- > 0;) {
      const int64_t idx = rest % target[a];
      rest /= target[a];
      if (a >= lead) {
        const int64_t dim = param_shape[a - lead];
        if (dim != 1) src += idx * stride;
        stride *= dim;
      }
    }
    dst[i] = param[src];
  }
}

struct LayerNormSetup {
  int64_t axis = 0;
  kernels::LayerNormDims dims;
  Shape inner_shape;
  Shape stat_shape;
};

LayerNormSetup setup_layer_norm(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  const InputInfo& scale = float_input(node, inputs, 1, "Scale");
  const InputInfo* bias = optional_float_input(node, inputs, 2, "B");
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  if (rank < 1) fail_node(node, "input X of rank >= 1", shape_str(x.shape));
  const int64_t stash = node.attr_int("stash_type", 1);
  if (stash != 1)
    fail_unsupported(node, "stash_type 1 (float32 statistics)", std::to_string(stash));
  LayerNormSetup s;
  s.axis = normalize_axis(node, node.attr_int("axis", -1), rank, "axis");
  s.inner_shape.assign(x.shape.begin() + s.axis, x.shape.end());
  if (!broadcasts_onto(scale.shape, s.inner_shape)) {
    fail_node(node, "Scale broadcastable to the normalized shape " + shape_str(s.inner_shape),
              shape_str(scale.shape));
  }
  if (bias && !broadcasts_onto(bias->shape, s.inner_shape)) {
    fail_node(node, "B broadcastable to the normalized shape " + shape_str(s.inner_shape),
              shape_str(bias->shape));
  }
  s.dims.rows = shape_numel(std::span<const int64_t>(x.shape).first(static_cast<size_t>(s.axis)));
  s.dims.size = shape_numel(s.inner_shape);
  s.dims.epsilon = node.attr_float("epsilon", 1e-5f);
  s.stat_shape = x.shape;
  std::fill(s.stat_shape.begin() + s.axis, s.stat_shape.end(), 1);
  return s;
}

std::vector<TensorInfo> infer_layer_norm(const Node& node, std::span<const InputInfo> inputs) {
  const LayerNormSetup s = setup_layer_norm(node, inputs);
  std::vector<TensorInfo> out = one_output(node, inputs[0].shape);
  for (size_t i = 1; i < out.size(); ++i) out[i] = {DType::kFloat32, s.stat_shape};
  return out;
}

class LayerNormKernel final : public OpKernel {
 public:
  LayerNormKernel(LayerNormSetup setup, std::span<const InputInfo> inputs)
      : s_(std::move(setup)),
        saved_mean_(static_cast<size_t>(s_.dims.rows)),
        saved_inv_std_(static_cast<size_t>(s_.dims.rows)) {
    prepare(inputs, 1, scale_);
    if (inputs.size() > 2 && inputs[2].present) prepare(inputs, 2, bias_);
  }
  size_t workspace_bytes() const override {
    const size_t one = kernels::aligned_bytes(static_cast<size_t>(s_.dims.size) * sizeof(float));
    return (scale_.expand_in_forward ? one : 0) + (bias_.expand_in_forward ? one : 0);
  }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const size_t one = kernels::aligned_bytes(static_cast<size_t>(s_.dims.size) * sizeof(float));
    const float* scale = resolve(inputs, 1, scale_, workspace);
    if (scale_.expand_in_forward) workspace += one;
    const float* bias =
        inputs.size() > 2 && inputs[2].defined() ? resolve(inputs, 2, bias_, workspace) : nullptr;
    float* mean =
        outputs.size() > 1 && outputs[1].defined() ? outputs[1].data<float>() : saved_mean_.data();
    float* inv = outputs.size() > 2 && outputs[2].defined() ? outputs[2].data<float>()
                                                            : saved_inv_std_.data();
    kernels::layer_norm(s_.dims, inputs[0].data<float>(), scale, bias, outputs[0].data<float>(),
                        mean, inv);
  }

  // X, and Scale and B where they have the normalised shape (a broadcast one would need its
  // gradient summed back down: not done).
  bool differentiable_input(size_t index) const override {
    return index == 0 || (index == 1 && scale_.full) || (index == 2 && bias_.full);
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> outputs,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    const float* mean =
        outputs.size() > 1 && outputs[1].defined() ? outputs[1].data<float>() : saved_mean_.data();
    const float* inv = outputs.size() > 2 && outputs[2].defined() ? outputs[2].data<float>()
                                                                  : saved_inv_std_.data();
    if (!scale_.full) throw_unsupported("LayerNormalization: backward with a broadcast Scale");
    kernels::layer_norm_backward(s_.dims, inputs[0].data<float>(), inputs[1].data<float>(), mean,
                                 inv, grad_outputs[0].data<float>(), grad_data(grad_inputs, 0),
                                 grad_data(grad_inputs, 1), grad_data(grad_inputs, 2));
  }

 private:
  // A parameter either used in place (already full size), expanded once here (a constant), or
  // expanded into the workspace on every call.
  struct Param {
    Shape shape;
    bool full = true;
    bool expand_in_forward = false;
    std::vector<float> expanded;
  };

  void prepare(std::span<const InputInfo> inputs, size_t index, Param& p) {
    p.shape = inputs[index].shape;
    p.full = shape_numel(p.shape) == s_.dims.size;
    if (p.full) return;
    if (inputs[index].constant) {
      p.expanded.resize(static_cast<size_t>(s_.dims.size));
      expand_onto(inputs[index].constant->data<float>(), p.shape, s_.inner_shape,
                  p.expanded.data());
    } else {
      p.expand_in_forward = true;
    }
  }

  const float* resolve(std::span<const Tensor> inputs, size_t index, const Param& p,
                       std::byte* workspace) const {
    if (p.full) return inputs[index].data<float>();
    if (!p.expand_in_forward) return p.expanded.data();
    float* dst = reinterpret_cast<float*>(workspace);
    expand_onto(inputs[index].data<float>(), p.shape, s_.inner_shape, dst);
    return dst;
  }

  LayerNormSetup s_;
  Param scale_;
  Param bias_;
  // The statistics of the last forward when outputs Mean and InvStdDev are not in use.
  std::vector<float> saved_mean_;
  std::vector<float> saved_inv_std_;
};

std::unique_ptr<OpKernel> create_layer_norm(const Node& node, std::span<const InputInfo> inputs,
                                            std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<LayerNormKernel>(setup_layer_norm(node, inputs), inputs);
}

// ---------------------------------------------------------------------------------------------
// InstanceNormalization and GroupNormalization: one kernel, InstanceNormalization being one
// channel per group. X [N, C, D1, …]; scale and bias per channel, or per group in
// GroupNormalization's opset-18 form (expanded to channels in the workspace on each call).

float norm_epsilon(const Node& node) {
  const float epsilon = node.attr_float("epsilon", 1e-5f);
  if (!(std::isfinite(epsilon) && epsilon >= 0.0f)) {
    fail_node(node, "attribute 'epsilon' finite and >= 0", std::to_string(epsilon));
  }
  return epsilon;
}

struct GroupNormSetup {
  kernels::GroupNormDims dims;
  bool per_group_params = false;  // scale and bias hold one value per group, not per channel
};

GroupNormSetup setup_instance_norm(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "input");
  const InputInfo& scale = float_input(node, inputs, 1, "scale");
  const InputInfo& bias = float_input(node, inputs, 2, "B");
  if (x.shape.size() < 3) {
    fail_node(node, "input of rank >= 3 (N, C, D1, …)", shape_str(x.shape));
  }
  const Shape channels = {x.shape[1]};
  if (scale.shape != channels) {
    fail_node(node, "scale of shape " + shape_str(channels), shape_str(scale.shape));
  }
  if (bias.shape != channels) {
    fail_node(node, "B of shape " + shape_str(channels), shape_str(bias.shape));
  }
  GroupNormSetup s;
  s.dims.batch = x.shape[0];
  s.dims.channels = x.shape[1];
  s.dims.groups = x.shape[1];
  s.dims.inner = shape_numel(std::span<const int64_t>(x.shape).subspan(2));
  s.dims.epsilon = norm_epsilon(node);
  return s;
}

int64_t num_groups(const Node& node) {
  const int64_t groups = node.attr_int("num_groups");
  if (groups < 1) fail_node(node, "attribute 'num_groups' >= 1", std::to_string(groups));
  return groups;
}

// GroupNormalization's scale and bias are [num_groups] at opsets 18 to 20 and [C] from 21.
void check_group_norm_opset_form(const Node& node, std::span<const InputInfo> inputs,
                                 int64_t opset) {
  if (inputs.size() < 3 || !inputs[0].present || !inputs[1].present || !inputs[2].present ||
      inputs[0].shape.size() < 2) {
    return;  // infer reports these
  }
  const bool per_channel = opset >= 21;
  const Shape want = {per_channel ? inputs[0].shape[1] : num_groups(node)};
  const std::string form = per_channel ? " (per channel from opset 21)"
                                       : " (per group at opsets 18 to 20; per channel from 21)";
  for (size_t i : {size_t{1}, size_t{2}}) {
    if (inputs[i].shape != want) {
      fail_node(node,
                std::string(i == 1 ? "scale" : "bias") + " of shape " + shape_str(want) +
                    " at opset " + std::to_string(opset) + form,
                shape_str(inputs[i].shape));
    }
  }
}

GroupNormSetup setup_group_norm(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  const InputInfo& scale = float_input(node, inputs, 1, "scale");
  const InputInfo& bias = float_input(node, inputs, 2, "bias");
  if (x.shape.size() < 2) fail_node(node, "input X of rank >= 2 (N, C, …)", shape_str(x.shape));
  const int64_t groups = num_groups(node);
  const int64_t channels = x.shape[1];
  if (channels % groups != 0) {
    fail_node(node,
              "num_groups dividing the " + std::to_string(channels) + " channels of X " +
                  shape_str(x.shape),
              std::to_string(groups));
  }
  const int64_t stash = node.attr_int("stash_type", 1);
  if (stash != 1) {
    fail_unsupported(node, "stash_type 1 (float32 statistics)", std::to_string(stash));
  }
  const Shape per_group = {groups};
  const Shape per_channel = {channels};
  if ((scale.shape != per_group && scale.shape != per_channel) || bias.shape != scale.shape) {
    fail_node(node,
              "scale and bias both of shape " + shape_str(per_group) + " (opset 18) or " +
                  shape_str(per_channel) + " (opset 21)",
              shape_str(scale.shape) + " and " + shape_str(bias.shape));
  }
  GroupNormSetup s;
  s.dims.batch = x.shape[0];
  s.dims.channels = channels;
  s.dims.groups = groups;
  s.dims.inner = shape_numel(std::span<const int64_t>(x.shape).subspan(2));
  s.dims.epsilon = norm_epsilon(node);
  s.per_group_params = groups != channels && scale.shape == per_group;
  return s;
}

std::vector<TensorInfo> infer_instance_norm(const Node& node, std::span<const InputInfo> inputs) {
  setup_instance_norm(node, inputs);
  return one_output(node, inputs[0].shape);
}

std::vector<TensorInfo> infer_group_norm(const Node& node, std::span<const InputInfo> inputs) {
  setup_group_norm(node, inputs);
  return one_output(node, inputs[0].shape);
}

class GroupNormKernel final : public OpKernel {
 public:
  explicit GroupNormKernel(const GroupNormSetup& setup)
      : s_(setup),
        saved_mean_(static_cast<size_t>(s_.dims.batch * s_.dims.groups)),
        saved_inv_std_(static_cast<size_t>(s_.dims.batch * s_.dims.groups)) {}

  size_t workspace_bytes() const override { return s_.per_group_params ? 2 * channel_bytes() : 0; }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const float* scale = per_channel(inputs[1], workspace, 0);
    const float* bias = per_channel(inputs[2], workspace, 1);
    kernels::group_norm(s_.dims, inputs[0].data<float>(), scale, bias, outputs[0].data<float>(),
                        saved_mean_.data(), saved_inv_std_.data());
  }

  bool differentiable_input(size_t index) const override { return index <= 2; }
  // Plane sums, then (per-group parameters) the expanded scale and the per-channel gradients
  // of scale and bias before they are summed over each group.
  size_t backward_workspace_bytes() const override {
    const size_t sums = kernels::aligned_bytes(
        static_cast<size_t>(kernels::group_norm_backward_workspace(s_.dims)) * sizeof(float));
    return sums + (s_.per_group_params ? 3 * channel_bytes() : 0);
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    float* sums = reinterpret_cast<float*>(workspace);
    workspace += kernels::aligned_bytes(
        static_cast<size_t>(kernels::group_norm_backward_workspace(s_.dims)) * sizeof(float));
    const float* scale = per_channel(inputs[1], workspace, 0);
    float* dscale = grad_data(grad_inputs, 1);
    float* dbias = grad_data(grad_inputs, 2);
    float* group_dscale = dscale;
    float* group_dbias = dbias;
    if (s_.per_group_params) {
      if (dscale) dscale = reinterpret_cast<float*>(workspace + channel_bytes());
      if (dbias) dbias = reinterpret_cast<float*>(workspace + 2 * channel_bytes());
    }
    kernels::group_norm_backward(s_.dims, inputs[0].data<float>(), scale, saved_mean_.data(),
                                 saved_inv_std_.data(), grad_outputs[0].data<float>(),
                                 grad_data(grad_inputs, 0), dscale, dbias, sums);
    if (!s_.per_group_params) return;
    // Each group's parameter gradient: its channels' gradients added in channel order.
    const int64_t per_group = s_.dims.channels / s_.dims.groups;
    const auto sum_groups = [&](const float* channel_grad, float* group_grad) {
      if (!group_grad) return;
      for (int64_t g = 0; g < s_.dims.groups; ++g) {
        float sum = 0.0f;
        for (int64_t k = 0; k < per_group; ++k) sum += channel_grad[g * per_group + k];
        group_grad[g] = sum;
      }
    };
    sum_groups(dscale, group_dscale);
    sum_groups(dbias, group_dbias);
  }

 private:
  size_t channel_bytes() const {
    return kernels::aligned_bytes(static_cast<size_t>(s_.dims.channels) * sizeof(float));
  }
  // The parameter per channel: itself, or its per-group values repeated into channel slot
  // `slot` of the workspace.
  const float* per_channel(const Tensor& param, std::byte* workspace, size_t slot) const {
    if (!s_.per_group_params) return param.data<float>();
    const int64_t per_group = s_.dims.channels / s_.dims.groups;
    float* out = reinterpret_cast<float*>(workspace + slot * channel_bytes());
    const float* in = param.data<float>();
    for (int64_t c = 0; c < s_.dims.channels; ++c) out[c] = in[c / per_group];
    return out;
  }

  GroupNormSetup s_;
  // The statistics of the last forward, which backward reads.
  std::vector<float> saved_mean_;
  std::vector<float> saved_inv_std_;
};

std::unique_ptr<OpKernel> create_instance_norm(const Node& node, std::span<const InputInfo> inputs,
                                               std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<GroupNormKernel>(setup_instance_norm(node, inputs));
}

std::unique_ptr<OpKernel> create_group_norm(const Node& node, std::span<const InputInfo> inputs,
                                            std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<GroupNormKernel>(setup_group_norm(node, inputs));
}

// ---------------------------------------------------------------------------------------------
// Softmax

kernels::SoftmaxDims setup_softmax(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "input");
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  if (rank < 1) fail_node(node, "input of rank >= 1", shape_str(x.shape));
  const int64_t axis = normalize_axis(node, node.attr_int("axis", -1), rank, "axis");
  const std::span<const int64_t> shape(x.shape);
  kernels::SoftmaxDims d;
  d.outer = shape_numel(shape.first(static_cast<size_t>(axis)));
  d.axis_size = x.shape[static_cast<size_t>(axis)];
  d.inner = shape_numel(shape.subspan(static_cast<size_t>(axis) + 1));
  return d;
}

class SoftmaxKernel final : public OpKernel {
 public:
  explicit SoftmaxKernel(const kernels::SoftmaxDims& dims) : dims_(dims) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::softmax(dims_, inputs[0].data<float>(), outputs[0].data<float>());
  }
  bool differentiable_input(size_t index) const override { return index == 0; }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> outputs,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::softmax_backward(dims_, outputs[0].data<float>(), grad_outputs[0].data<float>(),
                              grad_inputs[0].data<float>());
  }

 private:
  kernels::SoftmaxDims dims_;
};

std::vector<TensorInfo> infer_softmax(const Node& node, std::span<const InputInfo> inputs) {
  setup_softmax(node, inputs);
  return one_output(node, inputs[0].shape);
}

std::unique_ptr<OpKernel> create_softmax(const Node& node, std::span<const InputInfo> inputs,
                                         std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<SoftmaxKernel>(setup_softmax(node, inputs));
}

// ---------------------------------------------------------------------------------------------
// MaxPool, AveragePool

struct PoolSetup {
  kernels::PoolGeometry geometry;
  Shape out_shape;
};

PoolSetup setup_pool(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  if (rank < 3) fail_node(node, "input X of rank >= 3 (N, C, spatial...)", shape_str(x.shape));
  if (rank > 4) fail_unsupported(node, "1-D or 2-D pooling", "input " + shape_str(x.shape));
  const size_t spatial = static_cast<size_t>(rank - 2);
  std::vector<int64_t> kernel = node.attr_ints("kernel_shape");
  if (kernel.size() != spatial) {
    fail_node(node, "kernel_shape with " + std::to_string(spatial) + " values", ints_str(kernel));
  }
  for (int64_t k : kernel) {
    if (k < 1) fail_node(node, "kernel_shape values >= 1", ints_str(kernel));
  }
  WindowRules rules;
  rules.ceil_mode = bool_attr(node, "ceil_mode", 0) != 0;
  rules.pads_below_kernel = true;
  const Window win = resolve_window(node, spatial_of(x.shape), std::move(kernel), rules);
  PoolSetup s;
  kernels::PoolGeometry& g = s.geometry;
  g.batch = x.shape[0];
  g.channels = x.shape[1];
  fill_window_2d(win, spatial_of(x.shape), g);
  const bool one_d = spatial == 1;
  g.pad_bottom = one_d ? 0 : win.pad_end[0];
  g.pad_right = win.pad_end[one_d ? 0 : 1];
  s.out_shape = {x.shape[0], x.shape[1]};
  s.out_shape.insert(s.out_shape.end(), win.out.begin(), win.out.end());
  return s;
}

std::vector<TensorInfo> infer_max_pool(const Node& node, std::span<const InputInfo> inputs) {
  PoolSetup s = setup_pool(node, inputs);
  bool_attr(node, "storage_order", 0);
  std::vector<TensorInfo> out = one_output(node, s.out_shape);
  if (out.size() > 1) out[1] = {DType::kInt64, s.out_shape};
  return out;
}

class MaxPoolKernel final : public OpKernel {
 public:
  MaxPoolKernel(const kernels::PoolGeometry& g, bool want_indices, kernels::IndexOrder order)
      : geometry_(g), want_indices_(want_indices), order_(order) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    int64_t* indices = want_indices_ && outputs.size() > 1 && outputs[1].defined()
                           ? outputs[1].data<int64_t>()
                           : nullptr;
    kernels::max_pool2d(geometry_, inputs[0].data<float>(), outputs[0].data<float>(), indices,
                        order_);
  }
  bool differentiable_input(size_t index) const override { return index == 0; }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::max_pool2d_backward(geometry_, inputs[0].data<float>(), grad_outputs[0].data<float>(),
                                 grad_inputs[0].data<float>());
  }

 private:
  kernels::PoolGeometry geometry_;
  bool want_indices_;
  kernels::IndexOrder order_;
};

std::unique_ptr<OpKernel> create_max_pool(const Node& node, std::span<const InputInfo> inputs,
                                          std::span<const TensorInfo> /*outputs*/) {
  infer_max_pool(node, inputs);
  const auto order = node.attr_int("storage_order", 0) == 0 ? kernels::IndexOrder::kRowMajor
                                                            : kernels::IndexOrder::kColumnMajor;
  return std::make_unique<MaxPoolKernel>(setup_pool(node, inputs).geometry, output_used(node, 1),
                                         order);
}

class AveragePoolKernel final : public OpKernel {
 public:
  AveragePoolKernel(const kernels::PoolGeometry& g, kernels::PadCounting counting)
      : geometry_(g), counting_(counting) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::average_pool2d(geometry_, counting_, inputs[0].data<float>(),
                            outputs[0].data<float>());
  }
  bool differentiable_input(size_t index) const override { return index == 0; }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::average_pool2d_backward(geometry_, counting_, grad_outputs[0].data<float>(),
                                     grad_inputs[0].data<float>());
  }

 private:
  kernels::PoolGeometry geometry_;
  kernels::PadCounting counting_;
};

std::vector<TensorInfo> infer_average_pool(const Node& node, std::span<const InputInfo> inputs) {
  PoolSetup s = setup_pool(node, inputs);
  bool_attr(node, "count_include_pad", 0);
  return one_output(node, s.out_shape);
}

std::unique_ptr<OpKernel> create_average_pool(const Node& node, std::span<const InputInfo> inputs,
                                              std::span<const TensorInfo> /*outputs*/) {
  const auto counting = bool_attr(node, "count_include_pad", 0) != 0
                            ? kernels::PadCounting::kIncludePad
                            : kernels::PadCounting::kExcludePad;
  return std::make_unique<AveragePoolKernel>(setup_pool(node, inputs).geometry, counting);
}

// ---------------------------------------------------------------------------------------------
// GlobalAveragePool

std::vector<TensorInfo> infer_global_average_pool(const Node& node,
                                                  std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  if (x.shape.size() < 3) {
    fail_node(node, "input X of rank >= 3 (N, C, spatial...)", shape_str(x.shape));
  }
  Shape out = x.shape;
  std::fill(out.begin() + 2, out.end(), 1);
  return one_output(node, out);
}

class GlobalAveragePoolKernel final : public OpKernel {
 public:
  GlobalAveragePoolKernel(int64_t planes, int64_t plane_size)
      : planes_(planes), plane_size_(plane_size) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::global_average_pool(inputs[0].data<float>(), planes_, plane_size_,
                                 outputs[0].data<float>());
  }
  bool differentiable_input(size_t index) const override { return index == 0; }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::global_average_pool_backward(grad_outputs[0].data<float>(), planes_, plane_size_,
                                          grad_inputs[0].data<float>());
  }

 private:
  int64_t planes_;
  int64_t plane_size_;
};

std::unique_ptr<OpKernel> create_global_average_pool(const Node& node,
                                                     std::span<const InputInfo> inputs,
                                                     std::span<const TensorInfo> /*outputs*/) {
  infer_global_average_pool(node, inputs);
  const Shape& s = inputs[0].shape;
  return std::make_unique<GlobalAveragePoolKernel>(s[0] * s[1], shape_numel(spatial_of(s)));
}

// ---------------------------------------------------------------------------------------------
// ReduceMean: axes as an attribute (opset 13), or as a constant input 1 with
// noop_with_empty_axes (opset 18); the importer checks which form the model's opset has.

struct ReduceSetup {
  std::vector<int64_t> axes;  // normalised, ascending; empty: a copy (noop_with_empty_axes)
  Shape out_shape;
};

std::vector<int64_t> reduce_axes(const Node& node, std::span<const InputInfo> inputs) {
  if (inputs.size() > 1 && inputs[1].present) {
    const InputInfo& axes = inputs[1];
    if (!axes.constant) fail_node(node, "axes (input 1) as a constant", "a computed value");
    if (axes.dtype != DType::kInt64 || axes.shape.size() != 1) {
      fail_node(node, "axes (input 1) as a 1-D int64 tensor",
                kernels::dtype_name(axes.dtype) + shape_str(axes.shape));
    }
    return axes.constant->to_int64_vector();
  }
  if (node.has_attr("axes")) return node.attr_ints("axes");
  return {};
}

// ReduceMean, ReduceSum and ReduceMax: their axes, keepdims and noop_with_empty_axes.
ReduceSetup setup_reduce(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "data");
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  const bool keepdims = bool_attr(node, "keepdims", 1) != 0;
  const std::vector<int64_t> given = reduce_axes(node, inputs);
  ReduceSetup s;
  for (int64_t a : given) s.axes.push_back(normalize_axis(node, a, rank, "axes"));
  if (s.axes.empty() && bool_attr(node, "noop_with_empty_axes", 0) == 0) {
    for (int64_t a = 0; a < rank; ++a) s.axes.push_back(a);
  }
  std::sort(s.axes.begin(), s.axes.end());
  if (std::adjacent_find(s.axes.begin(), s.axes.end()) != s.axes.end()) {
    fail_node(node, "distinct axes", ints_str(given));
  }
  for (int64_t a = 0; a < rank; ++a) {
    const bool reduced = std::binary_search(s.axes.begin(), s.axes.end(), a);
    if (!reduced) {
      s.out_shape.push_back(x.shape[static_cast<size_t>(a)]);
    } else if (keepdims) {
      s.out_shape.push_back(1);
    }
  }
  return s;
}

class ReduceMeanKernel final : public OpKernel {
 public:
  explicit ReduceMeanKernel(const kernels::ReducePlan& plan) : plan_(plan) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::reduce_mean(plan_, inputs[0].data<float>(), outputs[0].data<float>());
  }
  bool differentiable_input(size_t index) const override { return index == 0; }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::reduce_mean_backward(plan_, grad_outputs[0].data<float>(),
                                  grad_inputs[0].data<float>());
  }

 private:
  kernels::ReducePlan plan_;
};

std::vector<TensorInfo> infer_reduce_mean(const Node& node, std::span<const InputInfo> inputs) {
  return one_output(node, setup_reduce(node, inputs).out_shape);
}

std::unique_ptr<OpKernel> create_reduce_mean(const Node& node, std::span<const InputInfo> inputs,
                                             std::span<const TensorInfo> /*outputs*/) {
  const ReduceSetup s = setup_reduce(node, inputs);
  return std::make_unique<ReduceMeanKernel>(kernels::plan_reduce(inputs[0].shape, s.axes));
}

// ReduceSum (axes an input from opset 13) and ReduceMax (from opset 18), on the setup of
// ReduceMean. ReduceMax's gradient goes to the maxima, shared evenly among ties.
class ReduceKernel final : public OpKernel {
 public:
  enum class Kind { kSum, kMax };
  ReduceKernel(const kernels::ReducePlan& plan, Kind kind) : plan_(plan), kind_(kind) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    if (kind_ == Kind::kSum) {
      kernels::reduce_sum(plan_, inputs[0].data<float>(), outputs[0].data<float>());
    } else {
      kernels::reduce_max(plan_, inputs[0].data<float>(), outputs[0].data<float>());
    }
  }
  bool differentiable_input(size_t index) const override { return index == 0; }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> outputs,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    if (kind_ == Kind::kSum) {
      kernels::reduce_sum_backward(plan_, grad_outputs[0].data<float>(),
                                   grad_inputs[0].data<float>());
    } else {
      kernels::reduce_max_backward(plan_, inputs[0].data<float>(), outputs[0].data<float>(),
                                   grad_outputs[0].data<float>(), grad_inputs[0].data<float>());
    }
  }

 private:
  kernels::ReducePlan plan_;
  Kind kind_;
};

std::vector<TensorInfo> infer_reduce(const Node& node, std::span<const InputInfo> inputs) {
  return one_output(node, setup_reduce(node, inputs).out_shape);
}

std::unique_ptr<OpKernel> create_reduce_sum(const Node& node, std::span<const InputInfo> inputs,
                                            std::span<const TensorInfo> /*outputs*/) {
  const ReduceSetup s = setup_reduce(node, inputs);
  return std::make_unique<ReduceKernel>(kernels::plan_reduce(inputs[0].shape, s.axes),
                                        ReduceKernel::Kind::kSum);
}

std::unique_ptr<OpKernel> create_reduce_max(const Node& node, std::span<const InputInfo> inputs,
                                            std::span<const TensorInfo> /*outputs*/) {
  const ReduceSetup s = setup_reduce(node, inputs);
  const Shape& x = inputs[0].shape;
  for (int64_t a : s.axes) {
    if (x[static_cast<size_t>(a)] == 0) {
      fail_node(node, "nonempty reduced axes", shape_str(x));
    }
  }
  return std::make_unique<ReduceKernel>(kernels::plan_reduce(x, s.axes), ReduceKernel::Kind::kMax);
}

// ---------------------------------------------------------------------------------------------
// ArgMax: int64 indices along `axis` (keepdims, select_last_index). Not differentiable: its
// output is an integer, which no gradient reaches.

struct ArgMaxSetup {
  int64_t outer = 1;
  int64_t axis_dim = 1;
  int64_t inner = 1;
  bool select_last = false;
  Shape out_shape;
};

ArgMaxSetup setup_arg_max(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "data");
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  if (rank == 0) fail_node(node, "an input of rank >= 1", "a scalar");
  const int64_t axis = normalize_axis(node, node.attr_int("axis", 0), rank, "axis");
  const bool keepdims = bool_attr(node, "keepdims", 1) != 0;
  ArgMaxSetup s;
  s.select_last = bool_attr(node, "select_last_index", 0) != 0;
  for (int64_t a = 0; a < rank; ++a) {
    const int64_t d = x.shape[static_cast<size_t>(a)];
    if (a < axis) s.outer *= d;
    if (a > axis) s.inner *= d;
    if (a != axis) {
      s.out_shape.push_back(d);
    } else if (keepdims) {
      s.out_shape.push_back(1);
    }
  }
  s.axis_dim = x.shape[static_cast<size_t>(axis)];
  if (s.axis_dim < 1) {
    fail_node(node, std::string("a nonempty axis ").append(std::to_string(axis)),
              shape_str(x.shape));
  }
  return s;
}

std::vector<TensorInfo> infer_arg_max(const Node& node, std::span<const InputInfo> inputs) {
  return {{DType::kInt64, setup_arg_max(node, inputs).out_shape}};
}

class ArgMaxKernel final : public OpKernel {
 public:
  explicit ArgMaxKernel(const ArgMaxSetup& s) : s_(s) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::arg_max(inputs[0].data<float>(), s_.outer, s_.axis_dim, s_.inner, s_.select_last,
                     outputs[0].data<int64_t>());
  }

 private:
  ArgMaxSetup s_;
};

std::unique_ptr<OpKernel> create_arg_max(const Node& node, std::span<const InputInfo> inputs,
                                         std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ArgMaxKernel>(setup_arg_max(node, inputs));
}

}  // namespace

void check_opset_form(const Node& node, std::span<const InputInfo> inputs, int64_t opset) {
  if (node.op_type() == "GroupNormalization") check_group_norm_opset_form(node, inputs, opset);
}

void register_dense_ops(OpRegistry& registry) {
  registry.add({"Conv", infer_conv, create_conv});
  registry.add({"ConvTranspose", infer_conv_transpose, create_conv_transpose});
  registry.add({"FusedConv", infer_fused_conv, create_fused_conv});
  registry.add({"Gemm", infer_gemm, create_gemm});
  registry.add({"MatMul", infer_matmul, create_matmul});
  registry.add(
      {"BatchNormalization", infer_batch_norm, create_batch_norm, create_batch_norm_training});
  registry.add({"LayerNormalization", infer_layer_norm, create_layer_norm});
  registry.add({"InstanceNormalization", infer_instance_norm, create_instance_norm});
  registry.add({"GroupNormalization", infer_group_norm, create_group_norm});
  registry.add({"MaxPool", infer_max_pool, create_max_pool});
  registry.add({"AveragePool", infer_average_pool, create_average_pool});
  registry.add({"GlobalAveragePool", infer_global_average_pool, create_global_average_pool});
  registry.add({"ReduceMean", infer_reduce_mean, create_reduce_mean});
  registry.add({"ReduceSum", infer_reduce, create_reduce_sum});
  registry.add({"ReduceMax", infer_reduce, create_reduce_max});
  registry.add({"ArgMax", infer_arg_max, create_arg_max});
  registry.add({"Softmax", infer_softmax, create_softmax});
}

}  // namespace qforge::runtime::ops
