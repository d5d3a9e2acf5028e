// Conv, FusedConv (a Conv with its epilogue, runtime/fuse_epilogues.h) and ConvTranspose:
// shape inference, kernels with their backward.
#include <optional>

#include "kernels/conv_depth.h"
#include "runtime/ops/activation.h"
#include "runtime/ops/dense_common.h"

namespace qforge::runtime::ops {
namespace {

using dense::fail_unsupported;
using dense::fill_window_2d;
using dense::float_input;
using dense::ints_str;
using dense::one_output;
using dense::optional_float_input;
using dense::per_axis_attr;
using dense::resolve_window;
using dense::spatial_of;
using dense::Window;
using graph::Node;
using kernels::shape_numel;
using kernels::shape_str;

// ---------------------------------------------------------------------------------------------
// Conv

// Bytes rounded up to 64, and the bytes of `floats` floats so rounded: how the 3-D kernels lay
// their buffers out after the 2-D kernel's workspace.
size_t aligned_bytes(size_t bytes) {
  return (bytes + 63) / 64 * 64;
}
size_t aligned_floats(size_t floats) {
  return aligned_bytes(floats * sizeof(float));
}

// Hands out those regions of a workspace in order, after its first `skip` bytes.
class WorkspaceCarver {
 public:
  WorkspaceCarver(std::byte* workspace, size_t skip) : at_(workspace + aligned_bytes(skip)) {}
  float* take(size_t floats) {
    auto* p = reinterpret_cast<float*>(at_);
    at_ += aligned_floats(floats);
    return p;
  }

 private:
  std::byte* at_;
};

struct ConvSetup {
  // Of a 3-D convolution, the geometry of its height and width planes (batch N, channels C).
  kernels::ConvGeometry geometry;
  std::optional<kernels::ConvDepth> depth;  // of a 3-D convolution (kernels/conv_depth.h)
  Shape out_shape;
};

ConvSetup setup_conv(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  const InputInfo& w = float_input(node, inputs, 1, "W");
  const InputInfo* b = optional_float_input(node, inputs, 2, "B");
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  if (rank < 3) fail_node(node, "input X of rank >= 3 (N, C, spatial...)", shape_str(x.shape));
  if (rank > 5) {
    fail_unsupported(node, "1-D, 2-D or 3-D convolution", "input " + shape_str(x.shape));
  }
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
  const std::span<const int64_t> spatial = spatial_of(x.shape);
  if (rank == 5) {
    // Depth first; the 2-D geometry is that of the height and width planes.
    fill_window_2d(dense::without_first_axis(win), spatial.subspan(1), g);
    s.depth = kernels::ConvDepth{.in = spatial[0],
                                 .out = win.out[0],
                                 .kernel = win.kernel[0],
                                 .stride = win.strides[0],
                                 .dilation = win.dilations[0],
                                 .pad = win.pad_begin[0]};
  } else {
    fill_window_2d(win, spatial, g);
  }
  s.out_shape = {x.shape[0], out_channels};
  s.out_shape.insert(s.out_shape.end(), win.out.begin(), win.out.end());
  return s;
}

// Conv, and the runtime's FusedConv: a Conv whose output pass also applies a per-channel
// scale/shift (an inference BatchNormalization), a residual add, a clamp (Relu, Clip) and then
// another activation (SiLU, HardSwish, Sigmoid, …).
// FusedConv inputs: X, W, B?, scale?, shift?, residual?; attributes: Conv's plus
// clamp_min/clamp_max, a module's `activation` (with its alpha and beta) and an output fake
// quant (quant_scale, quant_zero_point, quant_unsigned: runtime/fuse_qdq.h).
class ConvKernel final : public OpKernel {
 public:
  // Constant weights are brought into the algorithm's form once, here. `fixed`: the clamp and
  // activation of a FusedConv (its pointers unset).
  ConvKernel(const ConvSetup& setup, const Tensor* constant_weights,
             const kernels::ConvEpilogue& fixed, bool fused)
      : plan_(kernels::plan_conv(stacked(setup), kernels::max_threads())),
        backward_plan_(kernels::plan_conv_backward(stacked(setup), kernels::max_threads())),
        plane_(setup.geometry),
        depth_(setup.depth),
        direct_depthwise_(setup.depth && kernels::depthwise_3d_direct(setup.geometry)),
        fixed_(fixed),
        fused_(fused) {
    const size_t floats = kernels::conv_prepared_weight_floats(plan_);
    if (constant_weights && floats > 0 && !direct_depthwise_) {
      prepared_.resize(floats);
      kernels::prepare_conv_weights(plan_, constant_weights->data<float>(), prepared_.data());
    }
  }
  size_t workspace_bytes() const override {
    if (direct_depthwise_) return 0;
    const size_t conv = kernels::conv_workspace_bytes(
        plan_,
        prepared_.empty() ? kernels::ConvWeightForm::kRaw : kernels::ConvWeightForm::kPrepared);
    if (!depth_) return conv;
    // The stacks, the output with the depth before the channels and, for a FusedConv, its
    // residual in that order too.
    return aligned_bytes(conv) + aligned_floats(stack_floats()) +
           (fused_ ? 2 : 1) * aligned_floats(stacked_output_floats());
  }
  bool reads_input(size_t index) const override { return index != 1 || prepared_.empty(); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    auto optional = [&](size_t i) {
      return inputs.size() > i && inputs[i].defined() ? inputs[i].data<float>() : nullptr;
    };
    kernels::ConvEpilogue epilogue = fixed_;
    epilogue.scale = optional(3);
    epilogue.shift = optional(4);
    epilogue.residual = optional(5);
    // A 3-D convolution on the stacks reads its residual into the workspace before writing the
    // output; the direct depthwise kernel, and some 2-D algorithms, read it after.
    const bool reads_residual_after_output =
        direct_depthwise_ || (!depth_ && !kernels::conv_residual_may_alias_output(plan_));
    if (reads_residual_after_output && epilogue.residual &&
        epilogue.residual == outputs[0].data<float>()) {
      throw_internal(
          "FusedConv: the output was placed over the residual, which this "
          "convolution's algorithm reads after writing the output");
    }
    if (direct_depthwise_) {
      kernels::conv3d_depthwise(plane_, *depth_, inputs[0].data<float>(), inputs[1].data<float>(),
                                optional(2), outputs[0].data<float>(), epilogue);
      return;
    }
    const float* prepared = prepared_.empty() ? nullptr : prepared_.data();
    if (!depth_) {
      kernels::conv2d(plan_, inputs[0].data<float>(), inputs[1].data<float>(), optional(2),
                      outputs[0].data<float>(), workspace, epilogue, prepared);
      return;
    }
    const kernels::ConvGeometry& g = plane_;
    const int64_t in_plane = g.in_h * g.in_w;
    const int64_t out_plane = g.out_h * g.out_w;
    WorkspaceCarver carve(workspace, kernels::conv_workspace_bytes(
                                         plan_, prepared ? kernels::ConvWeightForm::kPrepared
                                                         : kernels::ConvWeightForm::kRaw));
    float* stacks = carve.take(stack_floats());
    float* y = carve.take(stacked_output_floats());
    kernels::stack_depth_taps(inputs[0].data<float>(), stacks, g.batch, g.in_channels, in_plane,
                              *depth_);
    if (epilogue.residual) {
      float* residual = carve.take(stacked_output_floats());
      kernels::depth_to_batch(epilogue.residual, residual, g.batch, g.out_channels, depth_->out,
                              out_plane);
      epilogue.residual = residual;
    }
    kernels::conv2d(plan_, stacks, inputs[1].data<float>(), optional(2), y, workspace, epilogue,
                    prepared);
    kernels::batch_to_depth(y, outputs[0].data<float>(), g.batch, g.out_channels, depth_->out,
                            out_plane);
  }

  // Conv's X, W and B; FusedConv, an inference-only node, has no backward.
  bool differentiable_input(size_t index) const override { return !fused_ && index <= 2; }
  size_t backward_workspace_bytes() const override {
    if (direct_depthwise_) {
      return kernels::conv3d_depthwise_backward_workspace_bytes(plane_, *depth_,
                                                                backward_plan_.slots);
    }
    const size_t conv = kernels::conv_backward_workspace_bytes(backward_plan_);
    if (!depth_) return conv;
    // The stacks and their gradient, and dy with the depth before the channels.
    return aligned_bytes(conv) + 2 * aligned_floats(stack_floats()) +
           aligned_floats(stacked_output_floats());
  }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    kernels::ConvGradients grads;
    grads.dx = grad_data(grad_inputs, 0);
    grads.dw = grad_data(grad_inputs, 1);
    grads.dbias = grad_data(grad_inputs, 2);
    if (!depth_) {
      kernels::conv2d_backward(backward_plan_, inputs[0].data<float>(), inputs[1].data<float>(),
                               grad_outputs[0].data<float>(), grads, workspace);
      return;
    }
    if (direct_depthwise_) {
      kernels::conv3d_depthwise_backward(plane_, *depth_, backward_plan_.slots,
                                         inputs[0].data<float>(), inputs[1].data<float>(),
                                         grad_outputs[0].data<float>(), grads, workspace);
      return;
    }
    const kernels::ConvGeometry& g = plane_;
    const int64_t in_plane = g.in_h * g.in_w;
    const int64_t out_plane = g.out_h * g.out_w;
    WorkspaceCarver carve(workspace, kernels::conv_backward_workspace_bytes(backward_plan_));
    float* stacks = carve.take(stack_floats());
    float* stacks_grad = carve.take(stack_floats());
    float* dy = carve.take(stacked_output_floats());
    kernels::stack_depth_taps(inputs[0].data<float>(), stacks, g.batch, g.in_channels, in_plane,
                              *depth_);
    kernels::depth_to_batch(grad_outputs[0].data<float>(), dy, g.batch, g.out_channels, depth_->out,
                            out_plane);
    float* dx = grads.dx;
    if (dx) grads.dx = stacks_grad;
    kernels::conv2d_backward(backward_plan_, stacks, inputs[1].data<float>(), dy, grads, workspace);
    if (dx) {
      kernels::unstack_depth_taps(stacks_grad, dx, g.batch, g.in_channels, in_plane, *depth_);
    }
  }

 private:
  static kernels::ConvGeometry stacked(const ConvSetup& s) {
    return s.depth ? kernels::depth_stacked_geometry(s.geometry, *s.depth) : s.geometry;
  }
  // Of a 3-D convolution: the floats of the stacks [N·D_out, C·kd, H, W] and of the output
  // [N·D_out, O, H', W'].
  size_t stack_floats() const {
    return static_cast<size_t>(plane_.batch * depth_->out * plane_.in_channels * depth_->kernel *
                               plane_.in_h * plane_.in_w);
  }
  size_t stacked_output_floats() const {
    return static_cast<size_t>(plane_.batch * depth_->out * plane_.out_channels * plane_.out_h *
                               plane_.out_w);
  }

  kernels::ConvPlan plan_;
  kernels::ConvBackwardPlan backward_plan_;
  kernels::ConvGeometry plane_;
  std::optional<kernels::ConvDepth> depth_;
  // A depthwise 3-D convolution, which runs on kernels::conv3d_depthwise and its backward.
  bool direct_depthwise_;
  std::vector<float> prepared_;
  kernels::ConvEpilogue fixed_;
  bool fused_;
};

std::vector<TensorInfo> infer_conv(const Node& node, std::span<const InputInfo> inputs) {
  return one_output(node, setup_conv(node, inputs).out_shape);
}

std::unique_ptr<OpKernel> create_conv(const Node& node, std::span<const InputInfo> inputs,
                                      std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ConvKernel>(setup_conv(node, inputs), inputs[1].constant,
                                      kernels::ConvEpilogue{}, false);
}

// A FusedConv's clamp and activation (an Invalid error naming the node for an unknown one).
kernels::ConvEpilogue fused_conv_epilogue(const Node& node) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  kernels::ConvEpilogue e;
  e.clamp_min = node.attr_float("clamp_min", -kInf);
  e.clamp_max = node.attr_float("clamp_max", kInf);
  const ActivationSpec act = activation_of(node);
  if (act.kind != ActivationKind::kNone) {
    e.activation = unary_op_of(act.kind);
    e.activation_params = act.params;
  }
  if (node.has_attr("quant_scale")) {
    kernels::TensorGrid grid;
    grid.scale = node.attr_float("quant_scale", 1.0f);
    grid.zero_point = static_cast<int32_t>(node.attr_int("quant_zero_point", 0));
    grid.dtype =
        node.attr_int("quant_unsigned", 0) != 0 ? kernels::DType::kUInt8 : kernels::DType::kInt8;
    try {
      kernels::check_tensor_grid("output quantizer", grid);
    } catch (const Error& err) {
      fail_node(node, "a valid output quantizer", err.what());
    }
    e.quant = grid;
  }
  return e;
}

std::vector<TensorInfo> infer_fused_conv(const Node& node, std::span<const InputInfo> inputs) {
  fused_conv_epilogue(node);
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
  return std::make_unique<ConvKernel>(setup_conv(node, inputs), inputs[1].constant,
                                      fused_conv_epilogue(node), true);
}

// ---------------------------------------------------------------------------------------------
// ConvTranspose

struct ConvTransposeSetup {
  // Of a 3-D transposed convolution, the geometry of its height and width planes.
  kernels::ConvTransposeGeometry geometry;
  // Of a 3-D one: the depth axis of the convolution whose data gradient it is (in: the output's
  // depth, out: the input's), kernels/conv_depth.h.
  std::optional<kernels::ConvDepth> depth;
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
  if (rank > 5) {
    fail_unsupported(node, "1-D, 2-D or 3-D transposed convolution", "input " + shape_str(x.shape));
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
  const size_t h = axes == 3 ? 1 : 0;  // the height axis (a 3-D one's depth comes first)
  if (axes == 3) {
    s.depth = kernels::ConvDepth{.in = out[0],
                                 .out = in[0],
                                 .kernel = kernel[0],
                                 .stride = strides[0],
                                 .dilation = dilations[0],
                                 .pad = begin[0]};
  }
  g.batch = x.shape[0];
  g.in_channels = x.shape[1];
  g.out_channels = out_channels;
  g.group = group;
  g.in_h = one_d ? 1 : in[h];
  g.in_w = in[last];
  g.out_h = one_d ? 1 : out[h];
  g.out_w = out[last];
  g.kernel_h = one_d ? 1 : kernel[h];
  g.kernel_w = kernel[last];
  g.stride_h = one_d ? 1 : strides[h];
  g.stride_w = strides[last];
  g.dilation_h = one_d ? 1 : dilations[h];
  g.dilation_w = dilations[last];
  g.pad_top = one_d ? 0 : begin[h];
  g.pad_left = begin[last];
  s.out_shape = {x.shape[0], out_channels};
  s.out_shape.insert(s.out_shape.end(), out.begin(), out.end());
  return s;
}

// A 3-D transposed convolution is the data gradient of a 3-D convolution, which runs on stacks
// of its depth taps (kernels/conv_depth.h): the transposed convolution of the stacks' 2-D
// convolution maps the input, its depth moved into the batch, to the stacks, which add back
// into the output's slices; the bias is added after. Its backward reads dy as stacks.
class ConvTransposeKernel final : public OpKernel {
 public:
  explicit ConvTransposeKernel(const ConvTransposeSetup& s)
      : plan_(kernels::plan_conv_transpose(stacked(s), kernels::max_threads())),
        plane_(s.geometry),
        depth_(s.depth) {}
  size_t workspace_bytes() const override {
    const size_t own = kernels::conv_transpose_workspace_bytes(plan_);
    if (!depth_) return own;
    return aligned_bytes(own) + aligned_floats(input_floats()) + aligned_floats(stack_floats());
  }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const float* bias =
        inputs.size() > 2 && inputs[2].defined() ? inputs[2].data<float>() : nullptr;
    if (!depth_) {
      kernels::conv_transpose2d(plan_, inputs[0].data<float>(), inputs[1].data<float>(), bias,
                                outputs[0].data<float>(), workspace);
      return;
    }
    const kernels::ConvTransposeGeometry& g = plane_;
    WorkspaceCarver carve(workspace, kernels::conv_transpose_workspace_bytes(plan_));
    float* x = carve.take(input_floats());
    float* stacks = carve.take(stack_floats());
    kernels::depth_to_batch(inputs[0].data<float>(), x, g.batch, g.in_channels, depth_->out,
                            g.in_h * g.in_w);
    kernels::conv_transpose2d(plan_, x, inputs[1].data<float>(), nullptr, stacks, workspace);
    const int64_t plane = g.out_h * g.out_w;
    float* y = outputs[0].data<float>();
    kernels::unstack_depth_taps(stacks, y, g.batch, g.out_channels, plane, *depth_);
    if (bias) kernels::add_channel_bias(bias, y, g.batch, g.out_channels, depth_->in * plane);
  }
  bool differentiable_input(size_t index) const override { return index <= 2; }
  size_t backward_workspace_bytes() const override {
    const size_t own = kernels::conv_transpose_backward_workspace_bytes(plan_);
    if (!depth_) return own;
    // The input with its depth in the batch and its gradient, and dy as stacks.
    return aligned_bytes(own) + 2 * aligned_floats(input_floats()) + aligned_floats(stack_floats());
  }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    kernels::ConvGradients grads;
    grads.dx = grad_data(grad_inputs, 0);
    grads.dw = grad_data(grad_inputs, 1);
    grads.dbias = grad_data(grad_inputs, 2);
    if (!depth_) {
      kernels::conv_transpose2d_backward(plan_, inputs[0].data<float>(), inputs[1].data<float>(),
                                         grad_outputs[0].data<float>(), grads, workspace);
      return;
    }
    const kernels::ConvTransposeGeometry& g = plane_;
    const int64_t in_plane = g.in_h * g.in_w;
    const int64_t plane = g.out_h * g.out_w;
    WorkspaceCarver carve(workspace, kernels::conv_transpose_backward_workspace_bytes(plan_));
    float* x = carve.take(input_floats());
    float* dx = carve.take(input_floats());
    float* dy = carve.take(stack_floats());
    const float* dy_volume = grad_outputs[0].data<float>();
    kernels::depth_to_batch(inputs[0].data<float>(), x, g.batch, g.in_channels, depth_->out,
                            in_plane);
    kernels::stack_depth_taps(dy_volume, dy, g.batch, g.out_channels, plane, *depth_);
    kernels::ConvGradients stacked;
    stacked.dx = grads.dx ? dx : nullptr;
    stacked.dw = grads.dw;
    kernels::conv_transpose2d_backward(plan_, x, inputs[1].data<float>(), dy, stacked, workspace);
    if (grads.dx) {
      kernels::batch_to_depth(dx, grads.dx, g.batch, g.in_channels, depth_->out, in_plane);
    }
    if (grads.dbias) {
      kernels::conv_bias_gradient(dy_volume, grads.dbias, g.batch, g.out_channels,
                                  depth_->in * plane);
    }
  }

 private:
  // The transposed convolution of the stacks: the input's depth in the batch, the output's
  // channels times the depth taps.
  static kernels::ConvTransposeGeometry stacked(const ConvTransposeSetup& s) {
    kernels::ConvTransposeGeometry g = s.geometry;
    if (s.depth) {
      g.batch *= s.depth->out;
      g.out_channels *= s.depth->kernel;
    }
    return g;
  }
  size_t input_floats() const {
    return static_cast<size_t>(plane_.batch * plane_.in_channels * depth_->out * plane_.in_h *
                               plane_.in_w);
  }
  size_t stack_floats() const {
    return static_cast<size_t>(plane_.batch * depth_->out * plane_.out_channels * depth_->kernel *
                               plane_.out_h * plane_.out_w);
  }

  kernels::ConvTransposePlan plan_;
  kernels::ConvTransposeGeometry plane_;
  std::optional<kernels::ConvDepth> depth_;
};

std::vector<TensorInfo> infer_conv_transpose(const Node& node, std::span<const InputInfo> inputs) {
  return one_output(node, setup_conv_transpose(node, inputs).out_shape);
}

std::unique_ptr<OpKernel> create_conv_transpose(const Node& node, std::span<const InputInfo> inputs,
                                                std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ConvTransposeKernel>(setup_conv_transpose(node, inputs));
}

}  // namespace

void register_conv_ops(OpRegistry& registry) {
  registry.add({"Conv", infer_conv, create_conv});
  registry.add({"ConvTranspose", infer_conv_transpose, create_conv_transpose});
  registry.add({"FusedConv", infer_fused_conv, create_fused_conv});
}

bool fused_conv_writes_over_residual(const Node& node, std::span<const InputInfo> inputs) {
  if (node.op_type() != "FusedConv" || inputs.size() < 6 || !inputs[5].present) return false;
  const ConvSetup setup = setup_conv(node, inputs);
  // On the stacks, the residual is read into the workspace first; the direct depthwise kernel
  // writes each output volume before its epilogue reads the residual.
  if (setup.depth) return !kernels::depthwise_3d_direct(setup.geometry);
  const kernels::ConvPlan plan = kernels::plan_conv(setup.geometry, kernels::max_threads());
  return kernels::conv_residual_may_alias_output(plan);
}

}  // namespace qforge::runtime::ops
