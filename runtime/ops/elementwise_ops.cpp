// Runtime bindings of the element-wise ops: unary activations and math, broadcasting binary ops,
// Max and Min of any number of inputs, Equal, Where, Not and Cast. Broadcast layouts are planned
// in create(), so forward allocates nothing.
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/binary_backward.h"
#include "kernels/elementwise.h"
#include "kernels/mask.h"
#include "kernels/shape_ops.h"
#include "runtime/ops/ops.h"

namespace qforge::runtime::ops {
namespace {

using kernels::BinaryOp;
using kernels::BroadcastPlan;
using kernels::UnaryOp;
using kernels::UnaryParams;

std::string dtype_str(DType dtype) {
  return kernels::dtype_name(dtype);
}

const InputInfo& require_input(const graph::Node& node, std::span<const InputInfo> inputs,
                               size_t index) {
  if (index >= inputs.size() || !inputs[index].present) {
    fail_node(node, "input " + std::to_string(index), "none");
  }
  return inputs[index];
}

bool has_input(std::span<const InputInfo> inputs, size_t index) {
  return index < inputs.size() && inputs[index].present;
}

// Runs a kernel, turning its Invalid "expected …, got …" errors into messages naming the node.
template <class Fn>
void run_for_node(const std::string& label, Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalid) throw;
    throw_invalid("run: " + label + ": " + e.what());
  }
}

// Unary ----------------------------------------------------------------------------------------

bool integer_capable(UnaryOp op) {
  return op == UnaryOp::kRelu || op == UnaryOp::kNeg || op == UnaryOp::kClip ||
         op == UnaryOp::kAbs || op == UnaryOp::kSign;
}

template <UnaryOp kOp>
std::vector<TensorInfo> infer_unary(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  if (!kernels::unary_supports(kOp, x.dtype)) {
    fail_node(node, integer_capable(kOp) ? "a float32 or signed integer input" : "a float32 input",
              dtype_str(x.dtype));
  }
  return {{x.dtype, x.shape}};
}

UnaryParams unary_params(UnaryOp op, const graph::Node& node) {
  UnaryParams p;
  switch (op) {
    case UnaryOp::kLeakyRelu:
      p.alpha = node.attr_float("alpha", 0.01f);
      break;
    case UnaryOp::kElu:
      p.alpha = node.attr_float("alpha", 1.0f);
      break;
    case UnaryOp::kHardSigmoid:
      p.alpha = node.attr_float("alpha", 0.2f);
      p.beta = node.attr_float("beta", 0.5f);
      break;
    default:
      break;
  }
  return p;
}

class UnaryKernel final : public OpKernel {
 public:
  UnaryKernel(UnaryOp op, UnaryParams params) : op_(op), params_(params) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::unary(op_, params_, inputs[0], outputs[0]);
    if (mask_) kernels::positive_mask(outputs[0].data<float>(), elements_, mask_);
  }
  // Integer inputs (Neg, Abs, Clip, ReLU of shape arithmetic) have no gradient.
  bool differentiable_input(size_t index) const override {
    return index == 0 && float_input_ && op_ != UnaryOp::kFloor && op_ != UnaryOp::kCeil &&
           op_ != UnaryOp::kRound && op_ != UnaryOp::kSign;
  }
  // ReLU's gradient passes where x > 0, which is where y > 0: it reads its output, so that the
  // input (a normalisation's output, mostly) need not be kept for it.
  BackwardReads backward_reads() const override {
    if (op_ == UnaryOp::kRelu) return {.inputs = BackwardReads::kNothing, .outputs = 1};
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
  // ReLU's record: where y > 0, one bit per element, so that the output (a fake quant's input,
  // mostly, whose own record spares it too) need not be kept.
  Record record() const override {
    if (op_ != UnaryOp::kRelu || elements_ == 0) return {};
    return {.bytes = kernels::mask_bytes(elements_),
            .reads = {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing}};
  }
  void keep_record(std::byte* storage) override { mask_ = reinterpret_cast<uint8_t*>(storage); }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> outputs,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    if (!float_input_ || !grad_data(grad_inputs, 0)) return;
    if (mask_) {
      kernels::masked_gradient(grad_outputs[0].data<float>(), mask_, elements_,
                               grad_inputs[0].data<float>());
      return;
    }
    const Tensor& x = op_ == UnaryOp::kRelu ? outputs[0] : inputs[0];
    kernels::unary_backward_f32(op_, params_, x.data<float>(), grad_outputs[0].data<float>(),
                                grad_inputs[0].data<float>(), x.numel());
  }
  void set_elements(int64_t elements) { elements_ = elements; }
  void set_integer_input() { float_input_ = false; }

 private:
  UnaryOp op_;
  UnaryParams params_;
  bool float_input_ = true;
  int64_t elements_ = 0;     // of a float32 input, else 0
  uint8_t* mask_ = nullptr;  // the kept record
};

template <UnaryOp kOp>
std::unique_ptr<OpKernel> create_unary(const graph::Node& node, std::span<const InputInfo> inputs,
                                       std::span<const TensorInfo> /*outputs*/) {
  auto kernel = std::make_unique<UnaryKernel>(kOp, unary_params(kOp, node));
  if (inputs[0].dtype == DType::kFloat32) {
    kernel->set_elements(kernels::shape_numel(inputs[0].shape));
  } else {
    kernel->set_integer_input();
  }
  return kernel;
}

// Gelu (opset 20): the erf form, or the tanh approximation with approximate "tanh" (the importer
// refuses other values).
std::unique_ptr<OpKernel> create_gelu(const graph::Node& node,
                                      std::span<const InputInfo> /*inputs*/,
                                      std::span<const TensorInfo> /*outputs*/) {
  const bool tanh = node.attr_string("approximate", "none") == "tanh";
  return std::make_unique<UnaryKernel>(tanh ? UnaryOp::kGeluTanh : UnaryOp::kGeluErf,
                                       UnaryParams{});
}

// Clip: min and max are optional scalar inputs 1 and 2, constants or computed at run time.

void set_clip_bound(UnaryParams& p, const Tensor& bound, bool is_min) {
  if (bound.dtype() == DType::kFloat32) {
    (is_min ? p.min : p.max) = bound.data<float>()[0];
    return;
  }
  int64_t v = 0;
  switch (bound.dtype()) {
    case DType::kInt64:
      v = bound.data<int64_t>()[0];
      break;
    case DType::kInt32:
      v = bound.data<int32_t>()[0];
      break;
    case DType::kInt8:
      v = bound.data<int8_t>()[0];
      break;
    default:
      throw_internal("Clip: bound " + bound.describe());
  }
  (is_min ? p.int_min : p.int_max) = v;
}

std::vector<TensorInfo> infer_clip(const graph::Node& node, std::span<const InputInfo> inputs) {
  std::vector<TensorInfo> out = infer_unary<UnaryOp::kClip>(node, inputs);
  for (size_t i = 1; i <= 2; ++i) {
    if (!has_input(inputs, i)) continue;
    const InputInfo& bound = inputs[i];
    if (bound.dtype != out[0].dtype || kernels::shape_numel(bound.shape) != 1) {
      fail_node(
          node,
          std::string(i == 1 ? "min" : "max") + " as one " + dtype_str(out[0].dtype) + " element",
          dtype_str(bound.dtype) + kernels::shape_str(bound.shape));
    }
  }
  return out;
}

class ClipKernel final : public OpKernel {
 public:
  ClipKernel(UnaryParams params, bool dynamic_min, bool dynamic_max)
      : params_(params), dynamic_min_(dynamic_min), dynamic_max_(dynamic_max) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::unary(UnaryOp::kClip, bounds(inputs), inputs[0], outputs[0]);
  }
  // The bounds are not differentiated (PyTorch's clamp with tensor bounds gives them gradients;
  // the exported activations, ReLU6 and friends, carry constants).
  bool differentiable_input(size_t index) const override { return index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::unary_backward_f32(UnaryOp::kClip, bounds(inputs), inputs[0].data<float>(),
                                grad_outputs[0].data<float>(), grad_inputs[0].data<float>(),
                                inputs[0].numel());
  }

 private:
  UnaryParams bounds(std::span<const Tensor> inputs) const {
    UnaryParams p = params_;
    if (dynamic_min_) set_clip_bound(p, inputs[1], true);
    if (dynamic_max_) set_clip_bound(p, inputs[2], false);
    return p;
  }

  UnaryParams params_;
  bool dynamic_min_;
  bool dynamic_max_;
};

std::unique_ptr<OpKernel> create_clip(const graph::Node& node, std::span<const InputInfo> inputs,
                                      std::span<const TensorInfo> /*outputs*/) {
  UnaryParams p;
  // Opsets before 11 carried the bounds as attributes.
  p.min = node.attr_float("min", p.min);
  p.max = node.attr_float("max", p.max);
  bool dynamic[3] = {false, false, false};
  for (size_t i = 1; i <= 2; ++i) {
    if (!has_input(inputs, i)) continue;
    if (inputs[i].constant) {
      set_clip_bound(p, *inputs[i].constant, i == 1);
    } else {
      dynamic[i] = true;
    }
  }
  return std::make_unique<ClipKernel>(p, dynamic[1], dynamic[2]);
}

// Binary ---------------------------------------------------------------------------------------

std::vector<TensorInfo> infer_binary_op(BinaryOp op, const graph::Node& node,
                                        std::span<const InputInfo> inputs) {
  const InputInfo& a = require_input(node, inputs, 0);
  const InputInfo& b = require_input(node, inputs, 1);
  if (!kernels::binary_supports(op, a.dtype, b.dtype)) {
    const char* rule = kernels::binary_is_logical(op)     ? "two bool inputs"
                       : kernels::binary_outputs_bool(op) ? "inputs of one dtype"
                       : op == BinaryOp::kPRelu           ? "a float32 input and a float32 slope"
                       : op == BinaryOp::kPow
                           ? "a float32 base with a float32 or integer exponent, or two int64 "
                             "or int32 inputs"
                           : "two float32, int64 or int32 inputs of one dtype";
    fail_node(node, rule, dtype_str(a.dtype) + " and " + dtype_str(b.dtype));
  }
  const std::vector<Shape> shapes = {a.shape, b.shape};
  std::optional<Shape> out = kernels::broadcast_shape(shapes);
  if (!out) {
    fail_node(node, "shapes that broadcast",
              kernels::shape_str(a.shape) + " and " + kernels::shape_str(b.shape));
  }
  if (op == BinaryOp::kPRelu && *out != a.shape) {
    fail_node(node, "a slope that broadcasts to the input's shape " + kernels::shape_str(a.shape),
              kernels::shape_str(b.shape));
  }
  return {{kernels::binary_outputs_bool(op) ? DType::kBool : a.dtype, *out}};
}

class BinaryKernel final : public OpKernel {
 public:
  BinaryKernel(BinaryOp op, std::span<const InputInfo> inputs, std::string label)
      : op_(op),
        plan_(kernels::plan_broadcast(std::vector<Shape>{inputs[0].shape, inputs[1].shape})),
        label_(std::move(label)),
        differentiable_(inputs[0].dtype == DType::kFloat32 && inputs[1].dtype == DType::kFloat32 &&
                        kernels::binary_backward_supports(op)) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    run_for_node(label_, [&] { kernels::binary(op_, plan_, inputs[0], inputs[1], outputs[0]); });
  }
  // Add, Sub, Mul, Div, PRelu and Pow of float tensors (kernels/binary_backward.h).
  bool differentiable_input(size_t index) const override { return differentiable_ && index <= 1; }
  // Add and Sub read nothing; Div its divisor and its output (the dividend, a convolution's
  // output in a QAT graph's BN-fold simulation, need not be kept); Mul and PRelu both inputs.
  BackwardReads backward_reads() const override {
    switch (op_) {
      case BinaryOp::kAdd:
      case BinaryOp::kSub:
        return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
      case BinaryOp::kDiv:
        return {.inputs = 0b10, .outputs = 0b1};
      default:
        return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
    }
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> outputs,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::binary_backward(
        op_, plan_, inputs[0].data<float>(), inputs[1].data<float>(), grad_outputs[0].data<float>(),
        {grad_data(grad_inputs, 0), grad_data(grad_inputs, 1)}, kernels::GradMode::kOverwrite,
        op_ == BinaryOp::kDiv ? outputs[0].data<float>() : nullptr);
  }

 private:
  BinaryOp op_;
  BroadcastPlan plan_;
  std::string label_;
  bool differentiable_;
};

std::unique_ptr<OpKernel> create_binary_op(BinaryOp op, const graph::Node& node,
                                           std::span<const InputInfo> inputs) {
  return std::make_unique<BinaryKernel>(op, inputs, node.label());
}

template <BinaryOp kOp>
std::vector<TensorInfo> infer_binary(const graph::Node& node, std::span<const InputInfo> inputs) {
  return infer_binary_op(kOp, node, inputs);
}

template <BinaryOp kOp>
std::unique_ptr<OpKernel> create_binary(const graph::Node& node, std::span<const InputInfo> inputs,
                                        std::span<const TensorInfo> /*outputs*/) {
  return create_binary_op(kOp, node, inputs);
}

// Mod picks C fmod semantics with fmod=1, the divisor's sign (Python) with fmod=0.
BinaryOp mod_op(const graph::Node& node) {
  const int64_t fmod = node.attr_int("fmod", 0);
  if (fmod != 0 && fmod != 1) fail_node(node, "fmod 0 or 1", std::to_string(fmod));
  return fmod == 1 ? BinaryOp::kFmod : BinaryOp::kMod;
}

std::vector<TensorInfo> infer_mod(const graph::Node& node, std::span<const InputInfo> inputs) {
  return infer_binary_op(mod_op(node), node, inputs);
}

std::unique_ptr<OpKernel> create_mod(const graph::Node& node, std::span<const InputInfo> inputs,
                                     std::span<const TensorInfo> /*outputs*/) {
  return create_binary_op(mod_op(node), node, inputs);
}

// Max and Min: one or more inputs of one dtype, broadcast together ---------------------------

template <BinaryOp kOp>
std::vector<TensorInfo> infer_extremum(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& first = require_input(node, inputs, 0);
  std::vector<Shape> shapes;
  std::string got;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const InputInfo& in = require_input(node, inputs, i);
    if (!got.empty()) got.append(", ");
    got.append(dtype_str(in.dtype)).append(kernels::shape_str(in.shape));
    shapes.push_back(in.shape);
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!kernels::binary_supports(kOp, first.dtype, inputs[i].dtype)) {
      fail_node(node, "float32, int64 or int32 inputs of one dtype", got);
    }
  }
  std::optional<Shape> out = kernels::broadcast_shape(shapes);
  if (!out) fail_node(node, "shapes that broadcast", got);
  return {{first.dtype, *out}};
}

// y = x_0, then y = op(y, x_i) in place for each further input; the first step reads x_0 and x_1
// straight into y when their broadcast is the output, else x_0 is expanded into y first.
class ExtremumKernel final : public OpKernel {
 public:
  ExtremumKernel(BinaryOp op, std::span<const InputInfo> inputs, const Shape& out_shape)
      : op_(op), float_(inputs[0].dtype == DType::kFloat32) {
    const size_t elem = kernels::dtype_size(inputs[0].dtype);
    if (inputs.size() >= 2 && kernels::broadcast_shape(std::vector<Shape>{
                                  inputs[0].shape, inputs[1].shape}) == out_shape) {
      first_pair_ = kernels::plan_broadcast(std::vector<Shape>{inputs[0].shape, inputs[1].shape});
    } else {
      expand_first_ = kernels::plan_expand(inputs[0].shape, out_shape, elem);
    }
    for (size_t i = first_pair_ ? 2 : 1; i < inputs.size(); ++i) {
      onto_output_.push_back(
          {i, kernels::plan_broadcast(std::vector<Shape>{out_shape, inputs[i].shape})});
    }
    if (float_) {
      for (const InputInfo& in : inputs) {
        to_output_.push_back(kernels::plan_broadcast(std::vector<Shape>{in.shape, out_shape}));
      }
      x_.resize(inputs.size());
      dx_.resize(inputs.size());
    }
  }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    Tensor& y = outputs[0];
    if (first_pair_) {
      kernels::binary(op_, *first_pair_, inputs[0], inputs[1], y);
    } else {
      kernels::strided_copy(expand_first_, inputs[0].raw(), y.raw());
    }
    for (const auto& [index, plan] : onto_output_) {
      kernels::binary(op_, plan, y, inputs[index], y);
    }
  }
  bool differentiable_input(size_t index) const override {
    return float_ && index < to_output_.size();
  }
  size_t backward_workspace_bytes() const override {
    return float_ ? static_cast<size_t>(to_output_[0].numel) * sizeof(float) : 0;
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> outputs,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    for (size_t i = 0; i < inputs.size(); ++i) {
      x_[i] = inputs[i].data<float>();
      dx_[i] = grad_data(grad_inputs, i);
    }
    kernels::extremum_backward({.is_max = op_ == BinaryOp::kMax,
                                .plans = to_output_,
                                .x = x_,
                                .y = outputs[0].data<float>(),
                                .dy = grad_outputs[0].data<float>(),
                                .dx = dx_,
                                .workspace = reinterpret_cast<float*>(workspace)});
  }

 private:
  BinaryOp op_;
  bool float_;
  std::optional<BroadcastPlan> first_pair_;
  kernels::StridedCopyPlan expand_first_;
  std::vector<std::pair<size_t, BroadcastPlan>> onto_output_;
  std::vector<BroadcastPlan> to_output_;  // float inputs: each input against the output
  // backward's operand lists, sized here so that backward allocates nothing
  std::vector<const float*> x_;
  std::vector<float*> dx_;
};

template <BinaryOp kOp>
std::unique_ptr<OpKernel> create_extremum(const graph::Node& /*node*/,
                                          std::span<const InputInfo> inputs,
                                          std::span<const TensorInfo> outputs) {
  return std::make_unique<ExtremumKernel>(kOp, inputs, outputs[0].shape);
}

// Where, Not, Cast -----------------------------------------------------------------------------

std::vector<TensorInfo> infer_where(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& cond = require_input(node, inputs, 0);
  const InputInfo& x = require_input(node, inputs, 1);
  const InputInfo& y = require_input(node, inputs, 2);
  if (cond.dtype != DType::kBool) fail_node(node, "a bool condition", dtype_str(cond.dtype));
  if (x.dtype != y.dtype) {
    fail_node(node, "X and Y of one dtype", dtype_str(x.dtype) + " and " + dtype_str(y.dtype));
  }
  const std::vector<Shape> shapes = {cond.shape, x.shape, y.shape};
  std::optional<Shape> out = kernels::broadcast_shape(shapes);
  if (!out) {
    fail_node(node, "shapes that broadcast",
              kernels::shape_str(cond.shape) + ", " + kernels::shape_str(x.shape) + " and " +
                  kernels::shape_str(y.shape));
  }
  return {{x.dtype, *out}};
}

// Where's gradient: dy where the condition picks X, to X; where it picks Y, to Y; each summed
// over the axes its input was broadcast along (torch.where's).
class WhereKernel final : public OpKernel {
 public:
  WhereKernel(std::span<const InputInfo> inputs, const Shape& out)
      : plan_(kernels::plan_broadcast(
            std::vector<Shape>{inputs[0].shape, inputs[1].shape, inputs[2].shape})),
        mask_plan_{kernels::plan_broadcast(std::vector<Shape>{inputs[0].shape, out, {}}),
                   kernels::plan_broadcast(std::vector<Shape>{inputs[0].shape, {}, out})},
        out_(out),
        float_(inputs[1].dtype == DType::kFloat32) {
    for (size_t i : {size_t{1}, size_t{2}}) {
      reduce_[i - 1] = kernels::plan_broadcast(std::vector<Shape>{inputs[i].shape, out});
    }
  }
  size_t workspace_bytes() const override {
    return float_ ? static_cast<size_t>(kernels::shape_numel(out_)) * sizeof(float) : 0;
  }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::where(plan_, inputs[0], inputs[1], inputs[2], outputs[0]);
  }
  bool differentiable_input(size_t index) const override {
    return float_ && (index == 1 || index == 2);
  }
  BackwardReads backward_reads() const override {
    return {.inputs = 1, .outputs = BackwardReads::kNothing};  // the condition
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    Tensor picked = Tensor::wrap(DType::kFloat32, out_, workspace);
    for (size_t i : {size_t{1}, size_t{2}}) {
      float* dx = grad_data(grad_inputs, i);
      if (!dx) continue;
      // dy where the condition picks input i, 0 elsewhere; then summed to input i's shape.
      if (i == 1) {
        kernels::where(mask_plan_[0], inputs[0], grad_outputs[0], zero_, picked);
      } else {
        kernels::where(mask_plan_[1], inputs[0], zero_, grad_outputs[0], picked);
      }
      kernels::binary_backward(kernels::BinaryOp::kAdd, reduce_[i - 1], nullptr, nullptr,
                               picked.data<float>(), {dx, nullptr});
    }
  }

 private:
  BroadcastPlan plan_;
  BroadcastPlan mask_plan_[2];  // the condition, dy and a scalar 0 (dy first, then second)
  BroadcastPlan reduce_[2];     // X's and Y's shapes against the output's
  Shape out_;
  bool float_;
  Tensor zero_ = Tensor::scalar_f32(0.0f);
};

std::unique_ptr<OpKernel> create_where(const graph::Node& /*node*/,
                                       std::span<const InputInfo> inputs,
                                       std::span<const TensorInfo> outputs) {
  return std::make_unique<WhereKernel>(inputs, outputs[0].shape);
}

std::vector<TensorInfo> infer_not(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  if (x.dtype != DType::kBool) fail_node(node, "a bool input", dtype_str(x.dtype));
  return {{DType::kBool, x.shape}};
}

class NotKernel final : public OpKernel {
 public:
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::logical_not(inputs[0], outputs[0]);
  }
};

std::unique_ptr<OpKernel> create_not(const graph::Node& /*node*/,
                                     std::span<const InputInfo> /*inputs*/,
                                     std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<NotKernel>();
}

// IsNaN and IsInf (detect_negative, detect_positive): a float32 input's elements tested, a bool
// output (torch.isnan, torch.isinf).
std::vector<TensorInfo> infer_float_test(const graph::Node& node,
                                         std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  if (x.dtype != DType::kFloat32) fail_node(node, "a float32 input", dtype_str(x.dtype));
  return {{DType::kBool, x.shape}};
}

class FloatTestKernel final : public OpKernel {
 public:
  // inf: IsInf's test with its two flags; else IsNaN's.
  FloatTestKernel(bool inf, bool negative, bool positive)
      : inf_(inf), negative_(negative), positive_(positive) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    if (inf_) {
      kernels::is_inf(inputs[0], outputs[0], negative_, positive_);
    } else {
      kernels::is_nan(inputs[0], outputs[0]);
    }
  }

 private:
  bool inf_, negative_, positive_;
};

std::unique_ptr<OpKernel> create_float_test(const graph::Node& node,
                                            std::span<const InputInfo> /*inputs*/,
                                            std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<FloatTestKernel>(node.op_type() == "IsInf",
                                           node.attr_int("detect_negative", 1) != 0,
                                           node.attr_int("detect_positive", 1) != 0);
}

// ONNX TensorProto element type codes qforge's tensors can hold.
std::optional<DType> dtype_from_onnx(int64_t code) {
  switch (code) {
    case 1:
      return DType::kFloat32;
    case 2:
      return DType::kUInt8;
    case 3:
      return DType::kInt8;
    case 6:
      return DType::kInt32;
    case 7:
      return DType::kInt64;
    case 9:
      return DType::kBool;
    default:
      return std::nullopt;
  }
}

std::vector<TensorInfo> infer_cast(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  const int64_t to = node.attr_int("to");
  std::optional<DType> dtype = dtype_from_onnx(to);
  if (!dtype) {
    throw_unsupported("shape inference: " + node.label() +
                      ": expected a Cast target of 1 (float), 2 (uint8), 3 (int8), 6 (int32), "
                      "7 (int64) or 9 (bool), got " +
                      std::to_string(to));
  }
  return {{*dtype, x.shape}};
}

// A Cast of float32 to float32 (torch.onnx's for a softmax computed in float32 of a float32
// tensor) passes its gradient through; a Cast to or from an integer has none.
class CastKernel final : public OpKernel {
 public:
  explicit CastKernel(bool float_to_float) : float_to_float_(float_to_float) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::cast(inputs[0], outputs[0]);
  }
  bool differentiable_input(size_t index) const override { return index == 0 && float_to_float_; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    if (float* dx = grad_data(grad_inputs, 0)) {
      std::memcpy(dx, grad_outputs[0].data<float>(), grad_outputs[0].nbytes());
    }
  }

 private:
  bool float_to_float_;
};

std::unique_ptr<OpKernel> create_cast(const graph::Node& /*node*/,
                                      std::span<const InputInfo> inputs,
                                      std::span<const TensorInfo> outputs) {
  return std::make_unique<CastKernel>(inputs[0].dtype == DType::kFloat32 &&
                                      outputs[0].dtype == DType::kFloat32);
}

template <UnaryOp kOp>
OpDef unary_def(const char* op_type) {
  return {op_type, infer_unary<kOp>, create_unary<kOp>};
}

template <BinaryOp kOp>
OpDef binary_def(const char* op_type) {
  return {op_type, infer_binary<kOp>, create_binary<kOp>};
}

}  // namespace

void register_elementwise_ops(OpRegistry& registry) {
  registry.add(unary_def<UnaryOp::kRelu>("Relu"));
  registry.add(unary_def<UnaryOp::kLeakyRelu>("LeakyRelu"));
  registry.add(unary_def<UnaryOp::kElu>("Elu"));
  registry.add(unary_def<UnaryOp::kSigmoid>("Sigmoid"));
  registry.add(unary_def<UnaryOp::kHardSigmoid>("HardSigmoid"));
  registry.add(unary_def<UnaryOp::kHardSwish>("HardSwish"));
  registry.add(unary_def<UnaryOp::kSilu>("Silu"));  // runtime-internal (runtime/fuse_epilogues.h)
  registry.add(unary_def<UnaryOp::kErf>("Erf"));
  registry.add(unary_def<UnaryOp::kTanh>("Tanh"));
  registry.add(unary_def<UnaryOp::kSqrt>("Sqrt"));
  registry.add(unary_def<UnaryOp::kNeg>("Neg"));
  registry.add({"Gelu", infer_unary<UnaryOp::kGeluErf>, create_gelu});
  registry.add(unary_def<UnaryOp::kExp>("Exp"));
  registry.add(unary_def<UnaryOp::kLog>("Log"));
  registry.add(unary_def<UnaryOp::kReciprocal>("Reciprocal"));
  registry.add(unary_def<UnaryOp::kAbs>("Abs"));
  registry.add(unary_def<UnaryOp::kSin>("Sin"));
  registry.add(unary_def<UnaryOp::kCos>("Cos"));
  registry.add(unary_def<UnaryOp::kFloor>("Floor"));
  registry.add(unary_def<UnaryOp::kCeil>("Ceil"));
  registry.add(unary_def<UnaryOp::kRound>("Round"));
  registry.add(unary_def<UnaryOp::kSign>("Sign"));
  registry.add(unary_def<UnaryOp::kSoftplus>("Softplus"));
  registry.add({"Clip", infer_clip, create_clip});
  registry.add(binary_def<BinaryOp::kAdd>("Add"));
  registry.add(binary_def<BinaryOp::kSub>("Sub"));
  registry.add(binary_def<BinaryOp::kMul>("Mul"));
  registry.add(binary_def<BinaryOp::kDiv>("Div"));
  registry.add(binary_def<BinaryOp::kPow>("Pow"));
  registry.add(binary_def<BinaryOp::kEqual>("Equal"));
  registry.add(binary_def<BinaryOp::kGreater>("Greater"));
  registry.add(binary_def<BinaryOp::kLess>("Less"));
  registry.add(binary_def<BinaryOp::kGreaterOrEqual>("GreaterOrEqual"));
  registry.add(binary_def<BinaryOp::kLessOrEqual>("LessOrEqual"));
  registry.add(binary_def<BinaryOp::kAnd>("And"));
  registry.add(binary_def<BinaryOp::kOr>("Or"));
  registry.add(binary_def<BinaryOp::kXor>("Xor"));
  registry.add({"Max", infer_extremum<BinaryOp::kMax>, create_extremum<BinaryOp::kMax>});
  registry.add({"Min", infer_extremum<BinaryOp::kMin>, create_extremum<BinaryOp::kMin>});
  registry.add(binary_def<BinaryOp::kPRelu>("PRelu"));
  registry.add({"Mod", infer_mod, create_mod});
  registry.add({"Where", infer_where, create_where});
  registry.add({"Not", infer_not, create_not});
  registry.add({"IsNaN", infer_float_test, create_float_test});
  registry.add({"IsInf", infer_float_test, create_float_test});
  registry.add({"Cast", infer_cast, create_cast});
}

}  // namespace qforge::runtime::ops
