// Runtime bindings of the shape and data-movement ops. Inputs that decide an output shape
// (Reshape's shape, Slice's bounds, Pad's pads, …) must be constants by shape inference, which
// they are once resolve() has folded the shape subgraphs torch.onnx exports.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/binary_backward.h"
#include "kernels/elementwise.h"
#include "kernels/grid_sample.h"
#include "kernels/resize.h"
#include "kernels/shape_backward.h"
#include "kernels/shape_ops.h"
#include "runtime/ops/ops.h"

namespace qforge::runtime::ops {
namespace {

using kernels::shape_numel;
using kernels::shape_str;

std::string dtype_str(DType dtype) {
  return kernels::dtype_name(dtype);
}

std::string ints_str(const std::vector<int64_t>& values) {
  return shape_str(values);
}

std::string float_str(float v) {
  std::ostringstream os;
  os << v;
  return os.str();
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

// The values of an integer input that must be known when shapes are inferred.
std::vector<int64_t> constant_ints(const graph::Node& node, std::span<const InputInfo> inputs,
                                   size_t index, const std::string& what) {
  const InputInfo& in = require_input(node, inputs, index);
  if (!in.constant) {
    fail_node(node, what + " (input " + std::to_string(index) + ") as a constant",
              "a value computed at run time");
  }
  if (in.dtype != DType::kInt64 && in.dtype != DType::kInt32) {
    fail_node(node, what + " as int64", dtype_str(in.dtype));
  }
  if (in.shape.size() > 1) fail_node(node, what + " as a 1-D tensor", shape_str(in.shape));
  return in.constant->to_int64_vector();
}

// axis in [-rank, rank) (or [-rank, rank] with `inclusive`), returned in [0, rank).
int64_t normalize_axis(const graph::Node& node, int64_t axis, int64_t rank,
                       bool inclusive = false) {
  const int64_t hi = inclusive ? rank : rank - 1;
  if (axis < -rank || axis > hi) {
    fail_node(node, "an axis in [" + std::to_string(-rank) + ", " + std::to_string(hi) + "]",
              std::to_string(axis));
  }
  return axis < 0 ? axis + rank : axis;
}

std::vector<int64_t> normalize_axes(const graph::Node& node, const std::vector<int64_t>& axes,
                                    int64_t rank) {
  std::vector<int64_t> out;
  for (int64_t a : axes) {
    const int64_t n = normalize_axis(node, a, rank);
    if (std::find(out.begin(), out.end(), n) != out.end()) {
      fail_node(node, "distinct axes", ints_str(axes));
    }
    out.push_back(n);
  }
  return out;
}

template <class Fn>
void run_for_node(const std::string& label, Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalid) throw;
    throw_invalid("run: " + label + ": " + e.what());
  }
}

void copy_bytes(const Tensor& src, Tensor& dst) {
  if (dst.raw() != src.raw() && src.nbytes()) std::memcpy(dst.raw(), src.raw(), src.nbytes());
}

// Ops whose output holds the input's elements in order: Identity, Reshape, Flatten, Squeeze,
// Unsqueeze. The executor usually aliases them; when it does not, they copy.
class CopyKernel final : public OpKernel {
 public:
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    copy_bytes(inputs[0], outputs[0]);
  }
  // The elements keep their order, so the gradient is the output's, in the input's shape.
  bool differentiable_input(size_t index) const override { return index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    if (!grad_inputs[0].defined()) return;
    if (grad_outputs[0].defined()) {
      copy_bytes(grad_outputs[0], grad_inputs[0]);
    } else {
      std::fill_n(grad_inputs[0].data<float>(), grad_inputs[0].numel(), 0.0f);
    }
  }
};

std::unique_ptr<OpKernel> create_copy(const graph::Node& /*node*/,
                                      std::span<const InputInfo> /*inputs*/,
                                      std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<CopyKernel>();
}

std::vector<TensorInfo> infer_identity(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  return {{x.dtype, x.shape}};
}

// Reshape: 0 copies the input dim (unless allowzero), one -1 takes what is left.
std::vector<TensorInfo> infer_reshape(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  const std::vector<int64_t> spec = constant_ints(node, inputs, 1, "the shape");
  const bool allow_zero = node.attr_int("allowzero", 0) != 0;
  Shape out(spec.size());
  int infer_at = -1;
  int64_t known = 1;
  for (size_t i = 0; i < spec.size(); ++i) {
    int64_t d = spec[i];
    if (d == -1) {
      if (infer_at >= 0) fail_node(node, "at most one -1 in the shape", ints_str(spec));
      infer_at = static_cast<int>(i);
      continue;
    }
    if (d < -1) fail_node(node, "shape entries >= -1", ints_str(spec));
    if (d == 0 && !allow_zero) {
      if (i >= x.shape.size()) {
        fail_node(node, "a 0 only where the input " + shape_str(x.shape) + " has a dim",
                  ints_str(spec));
      }
      d = x.shape[i];
    }
    out[i] = d;
    if (__builtin_mul_overflow(known, d, &known)) {
      fail_node(node, "a shape whose element count fits in 64 bits", ints_str(spec));
    }
  }
  const int64_t numel = shape_numel(x.shape);
  if (infer_at >= 0) {
    if (known == 0 || numel % known != 0) {
      fail_node(node,
                "a shape that can hold the " + std::to_string(numel) + " elements of " +
                    shape_str(x.shape),
                ints_str(spec));
    }
    out[static_cast<size_t>(infer_at)] = numel / known;
  } else if (known != numel) {
    fail_node(node,
              "a shape with the " + std::to_string(numel) + " elements of " + shape_str(x.shape),
              ints_str(spec) + " (" + std::to_string(known) + " elements)");
  }
  return {{x.dtype, out}};
}

std::vector<TensorInfo> infer_flatten(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  const auto rank = static_cast<int64_t>(x.shape.size());
  const int64_t axis = normalize_axis(node, node.attr_int("axis", 1), rank, /*inclusive=*/true);
  const auto split = x.shape.begin() + axis;
  return {{x.dtype,
           {shape_numel(std::span(x.shape.begin(), split)),
            shape_numel(std::span(split, x.shape.end()))}}};
}

// Squeeze/Unsqueeze take axes as input 1 from opset 13 and as an attribute before.
std::optional<std::vector<int64_t>> axes_of(const graph::Node& node,
                                            std::span<const InputInfo> inputs) {
  if (has_input(inputs, 1)) return constant_ints(node, inputs, 1, "the axes");
  if (node.has_attr("axes")) return node.attr_ints("axes");
  return std::nullopt;
}

std::vector<TensorInfo> infer_squeeze(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  const auto rank = static_cast<int64_t>(x.shape.size());
  std::optional<std::vector<int64_t>> axes = axes_of(node, inputs);
  std::vector<bool> drop(x.shape.size(), false);
  if (axes && !axes->empty()) {
    for (int64_t a : normalize_axes(node, *axes, rank)) {
      if (x.shape[static_cast<size_t>(a)] != 1) {
        fail_node(node, "dim 1 at squeezed axis " + std::to_string(a) + " of " + shape_str(x.shape),
                  std::to_string(x.shape[static_cast<size_t>(a)]));
      }
      drop[static_cast<size_t>(a)] = true;
    }
  } else {
    for (size_t d = 0; d < x.shape.size(); ++d) drop[d] = x.shape[d] == 1;
  }
  Shape out;
  for (size_t d = 0; d < x.shape.size(); ++d) {
    if (!drop[d]) out.push_back(x.shape[d]);
  }
  return {{x.dtype, out}};
}

std::vector<TensorInfo> infer_unsqueeze(const graph::Node& node,
                                        std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  std::optional<std::vector<int64_t>> axes = axes_of(node, inputs);
  if (!axes) fail_node(node, "axes (input 1)", "none");
  const auto out_rank = static_cast<int64_t>(x.shape.size() + axes->size());
  std::vector<bool> inserted(static_cast<size_t>(out_rank), false);
  for (int64_t a : normalize_axes(node, *axes, out_rank)) inserted[static_cast<size_t>(a)] = true;
  Shape out;
  size_t next = 0;
  for (int64_t d = 0; d < out_rank; ++d) {
    out.push_back(inserted[static_cast<size_t>(d)] ? 1 : x.shape[next++]);
  }
  return {{x.dtype, out}};
}

// Dropout: inference is the identity. Training-mode dropout with a nonzero ratio is refused;
// torchvision exports ratio 0 with training_mode true, which is an identity too.
std::vector<TensorInfo> infer_dropout(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  if (has_input(inputs, 2)) {
    const InputInfo& mode = inputs[2];
    if (!mode.constant) {
      throw_unsupported("shape inference: " + node.label() +
                        ": expected training_mode as a constant, got a value computed at run "
                        "time");
    }
    const bool training = mode.constant->to_int64_vector().at(0) != 0;
    float ratio = 0.5f;  // the ONNX default
    if (has_input(inputs, 1)) {
      const InputInfo& r = inputs[1];
      if (!r.constant || r.dtype != DType::kFloat32) {
        throw_unsupported("shape inference: " + node.label() +
                          ": expected ratio as a float32 constant, got " + dtype_str(r.dtype) +
                          (r.constant ? "" : " computed at run time"));
      }
      ratio = r.constant->data<float>()[0];
    }
    if (training && ratio != 0.0f) {
      throw_unsupported("shape inference: " + node.label() +
                        ": expected inference-mode dropout (training_mode false or ratio 0), "
                        "got training_mode true with ratio " +
                        float_str(ratio));
    }
  }
  return {{x.dtype, x.shape}, {DType::kBool, x.shape}};
}

class DropoutKernel final : public OpKernel {
 public:
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    copy_bytes(inputs[0], outputs[0]);
    if (outputs.size() > 1 && outputs[1].defined()) {
      const uint8_t keep = 1;
      kernels::fill(outputs[1], &keep);
    }
  }
  // Inference dropout, an identity, in training too: the models qforge trains are exported in
  // eval mode, where the ratio no longer applies.
  bool differentiable_input(size_t index) const override { return index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    copy_bytes(grad_outputs[0], grad_inputs[0]);
  }
};

std::unique_ptr<OpKernel> create_dropout(const graph::Node& /*node*/,
                                         std::span<const InputInfo> /*inputs*/,
                                         std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<DropoutKernel>();
}

// Transpose ------------------------------------------------------------------------------------

std::vector<int64_t> transpose_perm(const graph::Node& node, size_t rank) {
  std::vector<int64_t> perm(rank);
  for (size_t i = 0; i < rank; ++i) perm[i] = static_cast<int64_t>(rank - 1 - i);
  perm = node.attr_ints("perm", perm);
  std::vector<bool> seen(rank, false);
  bool valid = perm.size() == rank;
  for (int64_t p : perm) {
    valid = valid && p >= 0 && p < static_cast<int64_t>(rank) && !seen[static_cast<size_t>(p)];
    if (valid) seen[static_cast<size_t>(p)] = true;
  }
  if (!valid) {
    fail_node(node, "perm as a permutation of " + std::to_string(rank) + " axes", ints_str(perm));
  }
  return perm;
}

std::vector<TensorInfo> infer_transpose(const graph::Node& node,
                                        std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  return {{x.dtype, kernels::transposed_shape(x.shape, transpose_perm(node, x.shape.size()))}};
}

class TransposeKernel final : public OpKernel {
 public:
  // inverse: the transpose that takes the output's layout back to the input's (the backward);
  // float_data: whether it has one (integer data has no gradient).
  TransposeKernel(kernels::TransposePlan plan, kernels::TransposePlan inverse, bool float_data)
      : plan_(std::move(plan)), inverse_(std::move(inverse)), differentiable_(float_data) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::transpose(plan_, inputs[0].raw(), outputs[0].raw());
  }
  bool differentiable_input(size_t index) const override { return differentiable_ && index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    float* dx = grad_data(grad_inputs, 0);
    if (!dx) return;
    kernels::transpose(inverse_, grad_outputs[0].raw(), dx);
  }

 private:
  kernels::TransposePlan plan_;
  kernels::TransposePlan inverse_;
  bool differentiable_;
};

std::unique_ptr<OpKernel> create_transpose(const graph::Node& node,
                                           std::span<const InputInfo> inputs,
                                           std::span<const TensorInfo> /*outputs*/) {
  const InputInfo& x = inputs[0];
  const std::vector<int64_t> perm = transpose_perm(node, x.shape.size());
  std::vector<int64_t> inverse(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inverse[static_cast<size_t>(perm[i])] = int64_t(i);
  const size_t element = kernels::dtype_size(x.dtype);
  return std::make_unique<TransposeKernel>(
      kernels::plan_transpose(x.shape, perm, element),
      kernels::plan_transpose(kernels::transposed_shape(x.shape, perm), inverse, element),
      x.dtype == DType::kFloat32);
}

// DepthToSpace and SpaceToDepth (pixel shuffle): one transpose of a 6-D view of the NCHW input,
// on TransposeKernel, whose backward is the inverse transpose.

struct SpaceDepthSetup {
  Shape view;                 // the input viewed in 6 dims
  std::vector<int64_t> perm;  // of the view
  Shape out;
};

SpaceDepthSetup setup_space_depth(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  if (x.shape.size() != 4) fail_node(node, "input of rank 4 (N, C, H, W)", shape_str(x.shape));
  const int64_t b = node.attr_int("blocksize", 0);
  if (b < 1) fail_node(node, "blocksize >= 1", std::to_string(b));
  const int64_t n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3];
  SpaceDepthSetup s;
  if (node.op_type() == "SpaceToDepth") {
    if (b > h || b > w || h % b != 0 || w % b != 0) {
      fail_node(node, "height and width divisible by the blocksize " + std::to_string(b),
                shape_str(x.shape));
    }
    s.view = {n, c, h / b, b, w / b, b};
    s.perm = {0, 3, 5, 1, 2, 4};
    s.out = {n, c * b * b, h / b, w / b};
    return s;
  }
  if (b > c / b || c % (b * b) != 0) {  // b > c / b: b² would exceed the channels
    fail_node(node, "channels divisible by blocksize² " + std::to_string(b) + "²",
              shape_str(x.shape));
  }
  const std::string mode = node.attr_string("mode", "DCR");
  if (mode == "DCR") {
    s.view = {n, b, b, c / (b * b), h, w};
    s.perm = {0, 3, 4, 1, 5, 2};
  } else if (mode == "CRD") {
    s.view = {n, c / (b * b), b, b, h, w};
    s.perm = {0, 1, 4, 2, 5, 3};
  } else {
    fail_node(node, "mode DCR or CRD", mode);
  }
  s.out = {n, c / (b * b), h * b, w * b};
  return s;
}

std::vector<TensorInfo> infer_space_depth(const graph::Node& node,
                                          std::span<const InputInfo> inputs) {
  return {{inputs[0].dtype, setup_space_depth(node, inputs).out}};
}

std::unique_ptr<OpKernel> create_space_depth(const graph::Node& node,
                                             std::span<const InputInfo> inputs,
                                             std::span<const TensorInfo> /*outputs*/) {
  const SpaceDepthSetup s = setup_space_depth(node, inputs);
  std::vector<int64_t> inverse(s.perm.size());
  for (size_t i = 0; i < s.perm.size(); ++i) inverse[static_cast<size_t>(s.perm[i])] = int64_t(i);
  const size_t element = kernels::dtype_size(inputs[0].dtype);
  return std::make_unique<TransposeKernel>(
      kernels::plan_transpose(s.view, s.perm, element),
      kernels::plan_transpose(kernels::transposed_shape(s.view, s.perm), inverse, element),
      inputs[0].dtype == DType::kFloat32);
}

// Slice and Expand: strided copies planned from constant inputs ---------------------------------

class StridedCopyKernel final : public OpKernel {
 public:
  // Backward: Slice's gradient lands on the positions it read, zero elsewhere; Expand's is
  // summed over the axes it broadcast along.
  // Tile runs as an Expand of x viewed as [1, d0, 1, d1, …] to [r0, d0, r1, d1, …], which is
  // the output's layout: its gradient sums the repeats the same way.
  enum class Kind { kSlice, kExpand, kTile };
  StridedCopyKernel(kernels::StridedCopyPlan plan, Kind kind, const InputInfo& x,
                    const Shape& out_shape)
      : plan_(std::move(plan)), kind_(kind), x_numel_(shape_numel(x.shape)) {
    differentiable_ = x.dtype == DType::kFloat32;
    if (kind_ == Kind::kExpand) {
      expand_as_add_ = kernels::plan_broadcast(std::vector<Shape>{x.shape, out_shape});
    }
  }
  // Tile: x viewed as `x_view`, broadcast to `out_view` (same layouts as x and the output).
  StridedCopyKernel(kernels::StridedCopyPlan plan, const InputInfo& x, const Shape& x_view,
                    const Shape& out_view)
      : plan_(std::move(plan)), kind_(Kind::kTile), x_numel_(shape_numel(x.shape)) {
    differentiable_ = x.dtype == DType::kFloat32;
    expand_as_add_ = kernels::plan_broadcast(std::vector<Shape>{x_view, out_view});
  }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::strided_copy(plan_, inputs[0].raw(), outputs[0].raw());
  }
  bool differentiable_input(size_t index) const override { return differentiable_ && index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    if (kind_ == Kind::kSlice) {
      kernels::slice_backward(plan_, grad_outputs[0].data<float>(), grad_inputs[0].data<float>(),
                              x_numel_);
    } else {
      kernels::binary_backward(kernels::BinaryOp::kAdd, expand_as_add_, nullptr, nullptr,
                               grad_outputs[0].data<float>(),
                               {grad_inputs[0].data<float>(), nullptr});
    }
  }

 private:
  kernels::StridedCopyPlan plan_;
  Kind kind_;
  int64_t x_numel_;
  bool differentiable_ = false;
  kernels::BroadcastPlan expand_as_add_;  // Expand: x broadcast to the output, as an Add's a
};

}  // namespace

std::vector<kernels::SliceRange> slice_ranges(const graph::Node& node,
                                              std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  const auto rank = static_cast<int64_t>(x.shape.size());
  const std::vector<int64_t> starts = constant_ints(node, inputs, 1, "starts");
  const std::vector<int64_t> ends = constant_ints(node, inputs, 2, "ends");
  std::vector<int64_t> axes(starts.size());
  for (size_t i = 0; i < axes.size(); ++i) axes[i] = static_cast<int64_t>(i);
  if (has_input(inputs, 3)) axes = constant_ints(node, inputs, 3, "axes");
  std::vector<int64_t> steps(starts.size(), 1);
  if (has_input(inputs, 4)) steps = constant_ints(node, inputs, 4, "steps");
  if (ends.size() != starts.size() || axes.size() != starts.size() ||
      steps.size() != starts.size()) {
    fail_node(node, "starts, ends, axes and steps of one length",
              std::to_string(starts.size()) + ", " + std::to_string(ends.size()) + ", " +
                  std::to_string(axes.size()) + " and " + std::to_string(steps.size()));
  }
  axes = normalize_axes(node, axes, rank);
  std::vector<kernels::SliceRange> ranges;
  for (int64_t d : x.shape) ranges.push_back({0, 1, d});
  for (size_t i = 0; i < axes.size(); ++i) {
    if (steps[i] == 0) fail_node(node, "nonzero steps", ints_str(steps));
    const auto a = static_cast<size_t>(axes[i]);
    ranges[a] = kernels::slice_range(x.shape[a], starts[i], ends[i], steps[i]);
  }
  return ranges;
}

namespace {

std::vector<TensorInfo> infer_slice(const graph::Node& node, std::span<const InputInfo> inputs) {
  Shape out;
  for (const kernels::SliceRange& r : slice_ranges(node, inputs)) out.push_back(r.count);
  return {{inputs[0].dtype, out}};
}

std::unique_ptr<OpKernel> create_slice(const graph::Node& node, std::span<const InputInfo> inputs,
                                       std::span<const TensorInfo> outputs) {
  return std::make_unique<StridedCopyKernel>(
      kernels::plan_slice(inputs[0].shape, slice_ranges(node, inputs),
                          kernels::dtype_size(inputs[0].dtype)),
      StridedCopyKernel::Kind::kSlice, inputs[0], outputs[0].shape);
}

std::vector<TensorInfo> infer_expand(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  const std::vector<int64_t> shape = constant_ints(node, inputs, 1, "the shape");
  for (int64_t d : shape) {
    if (d < 0) fail_node(node, "a shape of nonnegative dims", ints_str(shape));
  }
  const std::vector<Shape> shapes = {x.shape, shape};
  std::optional<Shape> out = kernels::broadcast_shape(shapes);
  if (!out) {
    fail_node(node, "a shape that " + shape_str(x.shape) + " broadcasts with", ints_str(shape));
  }
  return {{x.dtype, *out}};
}

std::unique_ptr<OpKernel> create_expand(const graph::Node& /*node*/,
                                        std::span<const InputInfo> inputs,
                                        std::span<const TensorInfo> outputs) {
  return std::make_unique<StridedCopyKernel>(
      kernels::plan_expand(inputs[0].shape, outputs[0].shape, kernels::dtype_size(inputs[0].dtype)),
      StridedCopyKernel::Kind::kExpand, inputs[0], outputs[0].shape);
}

// Tile -----------------------------------------------------------------------------------------

// repeats (input 1): one value >= 0 per axis of x.
std::vector<int64_t> tile_repeats(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  const std::vector<int64_t> repeats = constant_ints(node, inputs, 1, "the repeats");
  if (repeats.size() != x.shape.size()) {
    fail_node(node,
              std::to_string(x.shape.size()) + " repeats, one per axis of " + shape_str(x.shape),
              ints_str(repeats));
  }
  for (int64_t r : repeats) {
    if (r < 0) fail_node(node, "repeats >= 0", ints_str(repeats));
  }
  return repeats;
}

std::vector<TensorInfo> infer_tile(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  const std::vector<int64_t> repeats = tile_repeats(node, inputs);
  Shape out = x.shape;
  for (size_t d = 0; d < out.size(); ++d) out[d] *= repeats[d];
  return {{x.dtype, out}};
}

std::unique_ptr<OpKernel> create_tile(const graph::Node& node, std::span<const InputInfo> inputs,
                                      std::span<const TensorInfo> /*outputs*/) {
  const InputInfo& x = inputs[0];
  const std::vector<int64_t> repeats = tile_repeats(node, inputs);
  Shape x_view, out_view, strides(2 * x.shape.size(), 0);
  int64_t stride = 1;
  for (size_t d = x.shape.size(); d-- > 0;) {
    strides[2 * d + 1] = stride;
    stride *= x.shape[d];
  }
  for (size_t d = 0; d < x.shape.size(); ++d) {
    x_view.insert(x_view.end(), {1, x.shape[d]});
    out_view.insert(out_view.end(), {repeats[d], x.shape[d]});
  }
  return std::make_unique<StridedCopyKernel>(
      kernels::plan_strided_copy(out_view, strides, 0, kernels::dtype_size(x.dtype)), x, x_view,
      out_view);
}

// Concat ---------------------------------------------------------------------------------------

int64_t concat_axis(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& first = require_input(node, inputs, 0);
  return normalize_axis(node, node.attr_int("axis"), static_cast<int64_t>(first.shape.size()));
}

std::vector<TensorInfo> infer_concat(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& first = require_input(node, inputs, 0);
  const auto axis = static_cast<size_t>(concat_axis(node, inputs));
  Shape out = first.shape;
  out[axis] = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const InputInfo& in = require_input(node, inputs, i);
    if (in.dtype != first.dtype) {
      fail_node(node, "inputs of one dtype",
                dtype_str(first.dtype) + " and " + dtype_str(in.dtype));
    }
    bool match = in.shape.size() == first.shape.size();
    for (size_t d = 0; match && d < in.shape.size(); ++d) {
      match = d == axis || in.shape[d] == first.shape[d];
    }
    if (!match) {
      fail_node(node, "shapes equal except along axis " + std::to_string(axis),
                shape_str(first.shape) + " and " + shape_str(in.shape));
    }
    out[axis] += in.shape[axis];
  }
  return {{first.dtype, out}};
}

class ConcatKernel final : public OpKernel {
 public:
  ConcatKernel(kernels::ConcatPlan plan, size_t inputs, bool float_inputs)
      : plan_(std::move(plan)), grads_(inputs, nullptr), differentiable_(float_inputs) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::concat(plan_, inputs, outputs[0]);
  }
  bool differentiable_input(size_t /*index*/) const override { return differentiable_; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    for (size_t i = 0; i < grads_.size(); ++i) grads_[i] = grad_data(grad_inputs, i);
    kernels::concat_backward(plan_, grad_outputs[0].data<float>(), grads_);
  }

 private:
  kernels::ConcatPlan plan_;
  std::vector<float*> grads_;  // backward's gradient pointers, one per input
  bool differentiable_;
};

std::unique_ptr<OpKernel> create_concat(const graph::Node& node, std::span<const InputInfo> inputs,
                                        std::span<const TensorInfo> /*outputs*/) {
  std::vector<Shape> shapes;
  for (const InputInfo& in : inputs) shapes.push_back(in.shape);
  return std::make_unique<ConcatKernel>(
      kernels::plan_concat(shapes, static_cast<int>(concat_axis(node, inputs)),
                           kernels::dtype_size(inputs[0].dtype)),
      inputs.size(), inputs[0].dtype == DType::kFloat32);
}

// Split ----------------------------------------------------------------------------------------

// The size of each output along the axis: the `split` input (or, before opset 13, attribute),
// else num_outputs parts of ceil(dim / num_outputs) with a smaller last one (opset 18), else
// equal parts, one per output.
std::vector<int64_t> split_sizes(const graph::Node& node, std::span<const InputInfo> inputs,
                                 int64_t dim) {
  const auto outputs = static_cast<int64_t>(node.num_outputs());
  std::vector<int64_t> sizes;
  if (has_input(inputs, 1)) {
    sizes = constant_ints(node, inputs, 1, "the split sizes");
  } else if (node.has_attr("split")) {
    sizes = node.attr_ints("split");
  } else if (node.has_attr("num_outputs")) {
    const int64_t parts = node.attr_int("num_outputs");
    if (parts < 1 || parts != outputs) {
      fail_node(node, "num_outputs equal to the node's " + std::to_string(outputs) + " outputs",
                std::to_string(parts));
    }
    const int64_t each = (dim + parts - 1) / parts;
    for (int64_t i = 0; i < parts; ++i) {
      sizes.push_back(std::clamp<int64_t>(dim - i * each, 0, each));
    }
    return sizes;
  } else {
    if (dim % outputs != 0) {
      fail_node(node,
                "an axis of size divisible by the " + std::to_string(outputs) +
                    " outputs (no split sizes given)",
                std::to_string(dim));
    }
    return std::vector<int64_t>(static_cast<size_t>(outputs), dim / outputs);
  }
  int64_t total = 0;
  for (int64_t v : sizes) {
    if (v < 0) fail_node(node, "nonnegative split sizes", ints_str(sizes));
    total += v;
  }
  if (static_cast<int64_t>(sizes.size()) != outputs || total != dim) {
    fail_node(
        node,
        std::to_string(outputs) + " split sizes summing to the axis size " + std::to_string(dim),
        ints_str(sizes));
  }
  return sizes;
}

int64_t split_axis(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  return normalize_axis(node, node.attr_int("axis", 0), static_cast<int64_t>(x.shape.size()));
}

std::vector<Shape> split_shapes(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  const auto axis = static_cast<size_t>(split_axis(node, inputs));
  std::vector<Shape> shapes;
  for (int64_t size : split_sizes(node, inputs, x.shape[axis])) {
    Shape s = x.shape;
    s[axis] = size;
    shapes.push_back(std::move(s));
  }
  return shapes;
}

std::vector<TensorInfo> infer_split(const graph::Node& node, std::span<const InputInfo> inputs) {
  std::vector<TensorInfo> out;
  for (Shape& s : split_shapes(node, inputs)) out.push_back({inputs[0].dtype, std::move(s)});
  return out;
}

class SplitKernel final : public OpKernel {
 public:
  SplitKernel(kernels::ConcatPlan plan, size_t outputs, bool float_input)
      : plan_(std::move(plan)), grads_(outputs, nullptr), differentiable_(float_input) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::split(plan_, inputs[0].raw(), outputs);
  }
  // The data; the split sizes are integers.
  bool differentiable_input(size_t index) const override { return differentiable_ && index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    for (size_t i = 0; i < grads_.size(); ++i) {
      grads_[i] = i < grad_outputs.size() && grad_outputs[i].defined()
                      ? grad_outputs[i].data<float>()
                      : nullptr;
    }
    kernels::split_backward(plan_, grads_, grad_inputs[0].data<float>());
  }

 private:
  kernels::ConcatPlan plan_;
  std::vector<const float*> grads_;  // backward's output gradients, one per output
  bool differentiable_;
};

std::unique_ptr<OpKernel> create_split(const graph::Node& node, std::span<const InputInfo> inputs,
                                       std::span<const TensorInfo> /*outputs*/) {
  const std::vector<Shape> shapes = split_shapes(node, inputs);
  return std::make_unique<SplitKernel>(
      kernels::plan_concat(shapes, static_cast<int>(split_axis(node, inputs)),
                           kernels::dtype_size(inputs[0].dtype)),
      shapes.size(), inputs[0].dtype == DType::kFloat32);
}

// Resize ---------------------------------------------------------------------------------------

[[noreturn]] void fail_unsupported(const graph::Node& node, const std::string& rule,
                                   const std::string& got) {
  throw_unsupported("shape inference: " + node.label() + ": expected " + rule + ", got " + got);
}

// A 5-D resize [N, C, D, H, W] is separable (nearest picks per axis, linear weighs per axis):
// `depth` resizes [N·C, D, H·W] along D (the other axis at scale 1, which every coordinate
// transform maps onto itself), then `geometry` the N·C·D_out planes [H, W]. Linear weights are
// then applied in two roundings where ONNX Runtime's trilinear sum has one.
struct ResizeSetup {
  kernels::ResizeGeometry geometry;
  std::optional<kernels::ResizeGeometry> depth;
  Shape out_shape;
};

// Resize (opset 13 form: X, roi, scales, sizes) over the spatial axes of an NCHW or NCDHW tensor.
ResizeSetup setup_resize(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  if (x.dtype != DType::kFloat32) fail_unsupported(node, "a float32 input", dtype_str(x.dtype));
  const size_t rank = x.shape.size();
  if (rank != 4 && rank != 5) {
    fail_unsupported(node, "a 4-D NCHW or 5-D NCDHW input (resizing its spatial axes)",
                     shape_str(x.shape));
  }
  kernels::ResizeGeometry g;
  const std::string mode = node.attr_string("mode", "nearest");
  if (mode == "linear") {
    g.mode = kernels::ResizeMode::kLinear;
  } else if (mode != "nearest") {
    fail_unsupported(node, "mode nearest or linear", mode);
  }
  const std::string coordinates = node.attr_string("coordinate_transformation_mode", "half_pixel");
  if (coordinates == "pytorch_half_pixel") {
    g.coordinates = kernels::ResizeCoordinates::kPytorchHalfPixel;
  } else if (coordinates == "align_corners") {
    g.coordinates = kernels::ResizeCoordinates::kAlignCorners;
  } else if (coordinates == "asymmetric") {
    g.coordinates = kernels::ResizeCoordinates::kAsymmetric;
  } else if (coordinates != "half_pixel") {
    fail_unsupported(node,
                     "coordinate_transformation_mode half_pixel, pytorch_half_pixel, "
                     "align_corners or asymmetric",
                     coordinates);
  }
  const std::string nearest = node.attr_string("nearest_mode", "round_prefer_floor");
  if (nearest == "round_prefer_ceil") {
    g.rounding = kernels::NearestRounding::kRoundPreferCeil;
  } else if (nearest == "floor") {
    g.rounding = kernels::NearestRounding::kFloor;
  } else if (nearest == "ceil") {
    g.rounding = kernels::NearestRounding::kCeil;
  } else if (nearest != "round_prefer_floor") {
    fail_node(node, "nearest_mode round_prefer_floor, round_prefer_ceil, floor or ceil", nearest);
  }
  if (node.attr_int("exclude_outside", 0) != 0) {
    fail_unsupported(node, "exclude_outside 0", std::to_string(node.attr_int("exclude_outside")));
  }
  if (node.attr_int("antialias", 0) != 0) {
    fail_unsupported(node, "antialias 0", std::to_string(node.attr_int("antialias")));
  }
  if (node.has_attr("axes")) fail_unsupported(node, "no axes attribute", "axes");
  const std::string policy = node.attr_string("keep_aspect_ratio_policy", "stretch");
  if (policy != "stretch") fail_unsupported(node, "keep_aspect_ratio_policy stretch", policy);

  std::vector<double> scales;
  Shape out = x.shape;
  const bool has_scales = has_input(inputs, 2) && shape_numel(inputs[2].shape) > 0;
  const bool has_sizes = has_input(inputs, 3) && shape_numel(inputs[3].shape) > 0;
  if (has_scales == has_sizes) {
    fail_node(node, "exactly one of scales (input 2) and sizes (input 3)",
              has_scales ? "both" : "neither");
  }
  if (has_scales) {
    const InputInfo& in = inputs[2];
    if (!in.constant) {
      fail_node(node, "scales (input 2) as a constant", "a value computed at run time");
    }
    if (in.dtype != DType::kFloat32 || in.shape.size() != 1 ||
        in.shape[0] != static_cast<int64_t>(rank)) {
      fail_node(node, "scales as " + std::to_string(rank) + " float32 values",
                dtype_str(in.dtype) + shape_str(in.shape));
    }
    const float* v = in.constant->data<float>();
    for (size_t d = 0; d < rank; ++d) {
      if (!(v[d] > 0.0f) || !std::isfinite(v[d])) {
        fail_node(node, "positive finite scales", float_str(v[d]));
      }
      out[d] = static_cast<int64_t>(std::floor(static_cast<double>(x.shape[d]) * v[d]));
    }
    if (v[0] != 1.0f || v[1] != 1.0f) {
      fail_unsupported(node, "scales of 1 on the batch and channel axes",
                       float_str(v[0]) + ", " + float_str(v[1]));
    }
    scales.assign(v + 2, v + rank);
  } else {
    const std::vector<int64_t> sizes = constant_ints(node, inputs, 3, "the sizes");
    if (sizes.size() != rank) fail_node(node, std::to_string(rank) + " sizes", ints_str(sizes));
    for (size_t d = 0; d < rank; ++d) out[d] = sizes[d];
    if (sizes[0] != x.shape[0] || sizes[1] != x.shape[1]) {
      fail_unsupported(node, "sizes keeping the batch and channels of " + shape_str(x.shape),
                       ints_str(sizes));
    }
    for (size_t d = 2; d < rank; ++d) {
      scales.push_back(static_cast<float>(sizes[d]) / static_cast<float>(x.shape[d]));
    }
  }
  for (size_t d = 2; d < rank; ++d) {
    if (x.shape[d] < 1 || out[d] < 1) {
      fail_node(node, "nonempty spatial axes in and out",
                shape_str(x.shape) + " -> " + shape_str(out));
    }
  }
  ResizeSetup s{g, std::nullopt, out};
  const size_t h = rank - 2;  // the height axis
  if (rank == 5) {
    kernels::ResizeGeometry& d = s.depth.emplace(g);
    d.planes = x.shape[0] * x.shape[1];
    d.in_h = x.shape[2];
    d.out_h = out[2];
    d.in_w = d.out_w = x.shape[3] * x.shape[4];
    d.scale_h = static_cast<float>(scales[0]);
    d.scale_w = 1.0f;
  }
  s.geometry.planes = x.shape[0] * x.shape[1] * (rank == 5 ? out[2] : 1);
  s.geometry.in_h = x.shape[h];
  s.geometry.in_w = x.shape[h + 1];
  s.geometry.out_h = out[h];
  s.geometry.out_w = out[h + 1];
  s.geometry.scale_h = static_cast<float>(scales[h - 2]);
  s.geometry.scale_w = static_cast<float>(scales[h - 1]);
  return s;
}

std::vector<TensorInfo> infer_resize(const graph::Node& node, std::span<const InputInfo> inputs) {
  return {{DType::kFloat32, setup_resize(node, inputs).out_shape}};
}

class ResizeKernel final : public OpKernel {
 public:
  explicit ResizeKernel(const ResizeSetup& s) : plan_(kernels::plan_resize(s.geometry)) {
    if (s.depth) depth_plan_ = kernels::plan_resize(*s.depth);
  }
  // A 5-D resize's depth pass [N·C, D_out, H·W].
  size_t workspace_bytes() const override { return depth_floats() * sizeof(float); }
  size_t backward_workspace_bytes() const override { return depth_floats() * sizeof(float); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    if (depth_plan_) {
      auto* d = reinterpret_cast<float*>(workspace);
      kernels::resize(*depth_plan_, inputs[0].data<float>(), d);
      kernels::resize(plan_, d, outputs[0].data<float>());
      return;
    }
    kernels::resize(plan_, inputs[0].data<float>(), outputs[0].data<float>());
  }
  // The data; roi, scales and sizes are constants.
  bool differentiable_input(size_t index) const override { return index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    if (depth_plan_) {
      auto* d = reinterpret_cast<float*>(workspace);
      kernels::resize_backward(plan_, grad_outputs[0].data<float>(), d);
      kernels::resize_backward(*depth_plan_, d, grad_inputs[0].data<float>());
      return;
    }
    kernels::resize_backward(plan_, grad_outputs[0].data<float>(), grad_inputs[0].data<float>());
  }

 private:
  size_t depth_floats() const {
    if (!depth_plan_) return 0;
    const kernels::ResizeGeometry& d = depth_plan_->geometry;
    return static_cast<size_t>(d.planes * d.out_h * d.out_w);
  }

  kernels::ResizePlan plan_;
  std::optional<kernels::ResizePlan> depth_plan_;
};

std::unique_ptr<OpKernel> create_resize(const graph::Node& node, std::span<const InputInfo> inputs,
                                        std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ResizeKernel>(setup_resize(node, inputs));
}

// GridSample (F.grid_sample) ------------------------------------------------------------------

kernels::GridSampleDims setup_grid_sample(const graph::Node& node,
                                          std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  const InputInfo& grid = require_input(node, inputs, 1);
  if (x.dtype != DType::kFloat32 || grid.dtype != DType::kFloat32) {
    fail_node(node, "float32 X and grid", dtype_str(x.dtype) + " and " + dtype_str(grid.dtype));
  }
  if (x.shape.size() != 4) {
    fail_node(node, "X of rank 4 (N, C, H, W); qforge samples two spatial axes",
              shape_str(x.shape));
  }
  if (grid.shape.size() != 4 || grid.shape[0] != x.shape[0] || grid.shape[3] != 2) {
    fail_node(node, "grid [" + std::to_string(x.shape[0]) + ", H_out, W_out, 2]",
              shape_str(grid.shape));
  }
  kernels::GridSampleDims d;
  d.batch = x.shape[0];
  d.channels = x.shape[1];
  d.in_h = x.shape[2];
  d.in_w = x.shape[3];
  d.out_h = grid.shape[1];
  d.out_w = grid.shape[2];
  const std::string mode = node.attr_string("mode", "bilinear");
  if (mode == "bilinear" || mode == "linear") {
    d.mode = kernels::GridMode::kBilinear;
  } else if (mode == "nearest") {
    d.mode = kernels::GridMode::kNearest;
  } else if (mode == "bicubic" || mode == "cubic") {
    throw_unsupported(node.label() + ": mode \"" + mode +
                      "\" is not supported (bilinear or nearest)");
  } else {
    fail_node(node, "mode bilinear, linear or nearest", mode);
  }
  const std::string padding = node.attr_string("padding_mode", "zeros");
  if (padding == "zeros") {
    d.padding = kernels::GridPadding::kZeros;
  } else if (padding == "border") {
    d.padding = kernels::GridPadding::kBorder;
  } else if (padding == "reflection") {
    d.padding = kernels::GridPadding::kReflection;
  } else {
    fail_node(node, "padding_mode zeros, border or reflection", padding);
  }
  d.align_corners = node.attr_int("align_corners", 0) != 0;
  return d;
}

std::vector<TensorInfo> infer_grid_sample(const graph::Node& node,
                                          std::span<const InputInfo> inputs) {
  const kernels::GridSampleDims d = setup_grid_sample(node, inputs);
  return {{DType::kFloat32, {d.batch, d.channels, d.out_h, d.out_w}}};
}

class GridSampleKernel final : public OpKernel {
 public:
  explicit GridSampleKernel(const kernels::GridSampleDims& d) : d_(d) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::grid_sample(d_, inputs[0].data<float>(), inputs[1].data<float>(),
                         outputs[0].data<float>());
  }
  // X, and the grid where the sample moves with it (bilinear; a nearest pixel does not).
  bool differentiable_input(size_t index) const override {
    return index == 0 || (index == 1 && d_.mode == kernels::GridMode::kBilinear);
  }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::grid_sample_backward(d_, inputs[0].data<float>(), inputs[1].data<float>(),
                                  grad_outputs[0].data<float>(), grad_data(grad_inputs, 0),
                                  grad_data(grad_inputs, 1));
  }

 private:
  kernels::GridSampleDims d_;
};

std::unique_ptr<OpKernel> create_grid_sample(const graph::Node& node,
                                             std::span<const InputInfo> inputs,
                                             std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<GridSampleKernel>(setup_grid_sample(node, inputs));
}

// Gather ---------------------------------------------------------------------------------------

// Constant indices must lie in [-dim, dim) (a computed one is checked when the kernel runs).
void check_constant_indices(const graph::Node& node, const InputInfo& indices, int64_t dim) {
  if (!indices.constant) return;
  for (int64_t v : indices.constant->to_int64_vector()) {
    if (v < -dim || v >= dim) {
      fail_node(node, "indices in [" + std::to_string(-dim) + ", " + std::to_string(dim - 1) + "]",
                std::to_string(v));
    }
  }
}

std::vector<TensorInfo> infer_gather(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& data = require_input(node, inputs, 0);
  const InputInfo& indices = require_input(node, inputs, 1);
  if (indices.dtype != DType::kInt64 && indices.dtype != DType::kInt32) {
    fail_node(node, "int64 or int32 indices", dtype_str(indices.dtype));
  }
  const auto rank = static_cast<int64_t>(data.shape.size());
  if (rank == 0) fail_node(node, "data of rank >= 1", shape_str(data.shape));
  const auto axis = static_cast<size_t>(normalize_axis(node, node.attr_int("axis", 0), rank));
  check_constant_indices(node, indices, data.shape[axis]);
  Shape out(data.shape.begin(), data.shape.begin() + static_cast<int64_t>(axis));
  out.insert(out.end(), indices.shape.begin(), indices.shape.end());
  out.insert(out.end(), data.shape.begin() + static_cast<int64_t>(axis) + 1, data.shape.end());
  return {{data.dtype, out}};
}

class GatherKernel final : public OpKernel {
 public:
  GatherKernel(kernels::GatherPlan plan, std::string label, bool float_data)
      : plan_(plan), label_(std::move(label)), differentiable_(float_data) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    run_for_node(label_,
                 [&] { kernels::gather(plan_, inputs[0].raw(), inputs[1], outputs[0].raw()); });
  }
  // The data; the indices are integers.
  bool differentiable_input(size_t index) const override { return differentiable_ && index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::gather_backward(plan_, inputs[1], grad_outputs[0].data<float>(),
                             grad_inputs[0].data<float>());
  }

 private:
  kernels::GatherPlan plan_;
  std::string label_;
  bool differentiable_;
};

std::unique_ptr<OpKernel> create_gather(const graph::Node& node, std::span<const InputInfo> inputs,
                                        std::span<const TensorInfo> /*outputs*/) {
  const InputInfo& data = inputs[0];
  const int64_t axis =
      normalize_axis(node, node.attr_int("axis", 0), static_cast<int64_t>(data.shape.size()));
  return std::make_unique<GatherKernel>(
      kernels::plan_gather(data.shape, static_cast<int>(axis), kernels::dtype_size(data.dtype)),
      node.label(), data.dtype == DType::kFloat32);
}

// GatherElements (torch.gather) ----------------------------------------------------------------

struct GatherElementsSetup {
  int axis = 0;
};

GatherElementsSetup setup_gather_elements(const graph::Node& node,
                                          std::span<const InputInfo> inputs) {
  const InputInfo& data = require_input(node, inputs, 0);
  const InputInfo& indices = require_input(node, inputs, 1);
  if (indices.dtype != DType::kInt64 && indices.dtype != DType::kInt32) {
    fail_node(node, "int64 or int32 indices", dtype_str(indices.dtype));
  }
  const auto rank = static_cast<int64_t>(data.shape.size());
  if (rank == 0) fail_node(node, "data of rank >= 1", shape_str(data.shape));
  if (indices.shape.size() != data.shape.size()) {
    fail_node(node, "indices of the data's rank " + std::to_string(rank), shape_str(indices.shape));
  }
  GatherElementsSetup s;
  s.axis = static_cast<int>(normalize_axis(node, node.attr_int("axis", 0), rank));
  for (size_t d = 0; d < data.shape.size(); ++d) {
    if (static_cast<int>(d) != s.axis && indices.shape[d] > data.shape[d]) {
      fail_node(node, "indices no larger than the data " + shape_str(data.shape) + " off the axis",
                shape_str(indices.shape));
    }
  }
  check_constant_indices(node, indices, data.shape[static_cast<size_t>(s.axis)]);
  return s;
}

std::vector<TensorInfo> infer_gather_elements(const graph::Node& node,
                                              std::span<const InputInfo> inputs) {
  setup_gather_elements(node, inputs);
  return {{inputs[0].dtype, inputs[1].shape}};
}

class GatherElementsKernel final : public OpKernel {
 public:
  GatherElementsKernel(kernels::GatherElementsPlan plan, int64_t data_numel, std::string label,
                       bool float_data)
      : plan_(std::move(plan)),
        data_numel_(data_numel),
        label_(std::move(label)),
        differentiable_(float_data) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    run_for_node(label_, [&] {
      kernels::gather_elements(plan_, inputs[0].raw(), inputs[1], outputs[0].raw());
    });
  }
  // The data; the indices are integers.
  bool differentiable_input(size_t index) const override { return differentiable_ && index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = uint64_t{1} << 1, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    float* dx = grad_data(grad_inputs, 0);
    if (!dx) return;
    run_for_node(label_, [&] {
      kernels::gather_elements_backward(plan_, inputs[1], grad_outputs[0].data<float>(), dx,
                                        data_numel_);
    });
  }

 private:
  kernels::GatherElementsPlan plan_;
  int64_t data_numel_;
  std::string label_;
  bool differentiable_;
};

std::unique_ptr<OpKernel> create_gather_elements(const graph::Node& node,
                                                 std::span<const InputInfo> inputs,
                                                 std::span<const TensorInfo> /*outputs*/) {
  const GatherElementsSetup s = setup_gather_elements(node, inputs);
  const InputInfo& data = inputs[0];
  return std::make_unique<GatherElementsKernel>(
      kernels::plan_gather_elements(data.shape, inputs[1].shape, s.axis,
                                    kernels::dtype_size(data.dtype)),
      shape_numel(data.shape), node.label(), data.dtype == DType::kFloat32);
}

// ScatterElements (torch.scatter, scatter_add) --------------------------------------------------
// On GatherElements' plan: data, indices of its rank (no larger off the axis), updates of the
// indices' shape; reduction none (the last write of a target kept) or add (float32); their
// gradients. mul, max and min are refused naming the node.

struct ScatterElementsSetup {
  kernels::GatherElementsPlan plan;
  int64_t data_numel = 0;
  bool add = false;
};

ScatterElementsSetup setup_scatter_elements(const graph::Node& node,
                                            std::span<const InputInfo> inputs) {
  const GatherElementsSetup g = setup_gather_elements(node, inputs);
  const InputInfo& data = inputs[0];
  const InputInfo& updates = require_input(node, inputs, 2);
  if (updates.dtype != data.dtype || updates.shape != inputs[1].shape) {
    fail_node(node,
              "updates " + dtype_str(data.dtype) + shape_str(inputs[1].shape) +
                  " (the data's type, the indices' shape)",
              dtype_str(updates.dtype) + shape_str(updates.shape));
  }
  ScatterElementsSetup s;
  const std::string reduction = node.attr_string("reduction", "none");
  if (reduction == "add") {
    if (data.dtype != DType::kFloat32) {
      fail_node(node, "float32 data for reduction add", dtype_str(data.dtype));
    }
    s.add = true;
  } else if (reduction != "none") {
    throw_unsupported(node.label() + ": reduction '" + reduction +
                      "' is not supported (none or add)");
  }
  s.plan = kernels::plan_gather_elements(data.shape, inputs[1].shape, g.axis,
                                         kernels::dtype_size(data.dtype));
  s.data_numel = shape_numel(data.shape);
  return s;
}

std::vector<TensorInfo> infer_scatter_elements(const graph::Node& node,
                                               std::span<const InputInfo> inputs) {
  setup_scatter_elements(node, inputs);
  return {{inputs[0].dtype, inputs[0].shape}};
}

class ScatterElementsKernel final : public OpKernel {
 public:
  ScatterElementsKernel(ScatterElementsSetup s, std::string label, bool float_data)
      : s_(std::move(s)), label_(std::move(label)), differentiable_(float_data) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    run_for_node(label_, [&] {
      kernels::scatter_elements(s_.plan, inputs[0].raw(), inputs[1], inputs[2].raw(), s_.data_numel,
                                s_.add, outputs[0].raw());
    });
  }
  // The data and the updates; the indices are integers.
  bool differentiable_input(size_t index) const override {
    return differentiable_ && (index == 0 || index == 2);
  }
  BackwardReads backward_reads() const override {
    return {.inputs = uint64_t{1} << 1, .outputs = BackwardReads::kNothing};
  }
  size_t backward_workspace_bytes() const override {
    return differentiable_ && !s_.add ? static_cast<size_t>(s_.data_numel) * sizeof(float) : 0;
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    float* ddata = grad_data(grad_inputs, 0);
    float* dupdates = grad_data(grad_inputs, 2);
    if (!ddata && !dupdates) return;
    kernels::scatter_elements_backward(s_.plan, inputs[1], s_.add, grad_outputs[0].data<float>(),
                                       ddata, dupdates, s_.data_numel,
                                       reinterpret_cast<float*>(workspace));
  }

 private:
  ScatterElementsSetup s_;
  std::string label_;
  bool differentiable_;
};

std::unique_ptr<OpKernel> create_scatter_elements(const graph::Node& node,
                                                  std::span<const InputInfo> inputs,
                                                  std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ScatterElementsKernel>(setup_scatter_elements(node, inputs), node.label(),
                                                 inputs[0].dtype == DType::kFloat32);
}

// GatherND (TensorFlow's gather_nd, as tf2onnx writes it): int64 index tuples of k
// entries into the dims after batch_dims; float32 with its gradient.

struct GatherNdSetup {
  kernels::GatherNdPlan plan;
  Shape out_shape;
  int64_t data_numel = 0;
};

GatherNdSetup setup_gather_nd(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& data = require_input(node, inputs, 0);
  const InputInfo& indices = require_input(node, inputs, 1);
  if (indices.dtype != DType::kInt64) fail_node(node, "int64 indices", dtype_str(indices.dtype));
  const auto r = static_cast<int64_t>(data.shape.size());
  const auto q = static_cast<int64_t>(indices.shape.size());
  const int64_t b = node.attr_int("batch_dims", 0);
  if (b < 0 || b >= std::min(r, q)) {
    fail_node(node, "batch_dims in [0, " + std::to_string(std::min(r, q) - 1) + "]",
              std::to_string(b));
  }
  const int64_t k = indices.shape.back();
  if (k < 1 || k > r - b) {
    fail_node(node, "index tuples of 1 to " + std::to_string(r - b) + " entries",
              shape_str(indices.shape));
  }
  GatherNdSetup s;
  for (int64_t d = 0; d < b; ++d) {
    if (indices.shape[static_cast<size_t>(d)] != data.shape[static_cast<size_t>(d)]) {
      fail_node(node,
                "indices sharing the data's first " + std::to_string(b) + " dims " +
                    shape_str(data.shape),
                shape_str(indices.shape));
    }
    s.plan.batch *= data.shape[static_cast<size_t>(d)];
  }
  s.plan.elem_size = kernels::dtype_size(data.dtype);
  for (int64_t d = b; d < q - 1; ++d) s.plan.tuples *= indices.shape[static_cast<size_t>(d)];
  for (int64_t d = b; d < b + k; ++d) s.plan.dims.push_back(data.shape[static_cast<size_t>(d)]);
  for (int64_t d = b + k; d < r; ++d) s.plan.slice *= data.shape[static_cast<size_t>(d)];
  s.out_shape.assign(indices.shape.begin(), indices.shape.end() - 1);
  s.out_shape.insert(s.out_shape.end(), data.shape.begin() + b + k, data.shape.end());
  s.data_numel = shape_numel(data.shape);
  return s;
}

std::vector<TensorInfo> infer_gather_nd(const graph::Node& node,
                                        std::span<const InputInfo> inputs) {
  return {{inputs[0].dtype, setup_gather_nd(node, inputs).out_shape}};
}

class GatherNdKernel final : public OpKernel {
 public:
  GatherNdKernel(GatherNdSetup s, std::string label, bool float_data)
      : s_(std::move(s)), label_(std::move(label)), differentiable_(float_data) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    run_for_node(
        label_, [&] { kernels::gather_nd(s_.plan, inputs[0].raw(), inputs[1], outputs[0].raw()); });
  }
  // The data; the indices are integers.
  bool differentiable_input(size_t index) const override { return differentiable_ && index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = uint64_t{1} << 1, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    float* dx = grad_data(grad_inputs, 0);
    if (!dx) return;
    run_for_node(label_, [&] {
      kernels::gather_nd_backward(s_.plan, inputs[1], grad_outputs[0].data<float>(), dx,
                                  s_.data_numel);
    });
  }

 private:
  GatherNdSetup s_;
  std::string label_;
  bool differentiable_;
};

std::unique_ptr<OpKernel> create_gather_nd(const graph::Node& node,
                                           std::span<const InputInfo> inputs,
                                           std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<GatherNdKernel>(setup_gather_nd(node, inputs), node.label(),
                                          inputs[0].dtype == DType::kFloat32);
}

// OneHot (F.one_hot): depth a constant; the output of the values' type. No gradient: its
// positions follow integer indices, and its values are settings.

struct OneHotSetup {
  int64_t outer = 1, depth = 0, inner = 1;
  Shape out_shape;
};

OneHotSetup setup_one_hot(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& indices = require_input(node, inputs, 0);
  if (indices.dtype != DType::kInt64 && indices.dtype != DType::kInt32) {
    fail_node(node, "int64 or int32 indices", dtype_str(indices.dtype));
  }
  const std::vector<int64_t> depth = constant_ints(node, inputs, 1, "depth");
  if (depth.size() != 1 || depth[0] < 1)
    fail_node(node, "depth as one value >= 1", ints_str(depth));
  const InputInfo& values = require_input(node, inputs, 2);
  if (!values.constant || values.shape != Shape{2}) {
    fail_node(node, "values (input 2) as a constant [off, on]",
              values.constant ? shape_str(values.shape) : std::string("a computed value"));
  }
  const auto rank = static_cast<int64_t>(indices.shape.size());
  const auto at = static_cast<size_t>(normalize_axis(node, node.attr_int("axis", -1), rank + 1));
  OneHotSetup s;
  s.depth = depth[0];
  for (size_t d = 0; d < indices.shape.size(); ++d)
    (d < at ? s.outer : s.inner) *= indices.shape[d];
  s.out_shape = indices.shape;
  s.out_shape.insert(s.out_shape.begin() + static_cast<std::ptrdiff_t>(at), s.depth);
  return s;
}

std::vector<TensorInfo> infer_one_hot(const graph::Node& node, std::span<const InputInfo> inputs) {
  return {{inputs[2].dtype, setup_one_hot(node, inputs).out_shape}};
}

class OneHotKernel final : public OpKernel {
 public:
  OneHotKernel(const OneHotSetup& s, DType dtype) : s_(s), dtype_(dtype) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    const size_t esz = kernels::dtype_size(dtype_);
    const auto* values = static_cast<const std::byte*>(inputs[2].raw());
    kernels::one_hot(inputs[0], s_.outer, s_.depth, s_.inner, values, values + esz, esz,
                     outputs[0].raw());
  }

 private:
  OneHotSetup s_;
  DType dtype_;
};

std::unique_ptr<OpKernel> create_one_hot(const graph::Node& node, std::span<const InputInfo> inputs,
                                         std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<OneHotKernel>(setup_one_hot(node, inputs), inputs[2].dtype);
}

// Pad ------------------------------------------------------------------------------------------

kernels::PadPlan pad_plan(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  const auto rank = static_cast<int64_t>(x.shape.size());
  const std::string mode_name = node.attr_string("mode", "constant");
  kernels::PadMode mode = kernels::PadMode::kConstant;
  if (mode_name == "reflect") {
    mode = kernels::PadMode::kReflect;
  } else if (mode_name == "edge") {
    mode = kernels::PadMode::kEdge;
  } else if (mode_name != "constant") {
    throw_unsupported("shape inference: " + node.label() +
                      ": expected mode constant, reflect or edge, got " + mode_name);
  }
  const std::vector<int64_t> pads = constant_ints(node, inputs, 1, "the pads");
  std::vector<int64_t> axes(static_cast<size_t>(rank));
  for (int64_t d = 0; d < rank; ++d) axes[static_cast<size_t>(d)] = d;
  if (has_input(inputs, 3))
    axes = normalize_axes(node, constant_ints(node, inputs, 3, "the axes"), rank);
  if (pads.size() != 2 * axes.size()) {
    fail_node(node, std::to_string(2 * axes.size()) + " pads (begin and end for each axis)",
              ints_str(pads));
  }
  Shape begin(static_cast<size_t>(rank), 0);
  Shape end(static_cast<size_t>(rank), 0);
  for (size_t i = 0; i < axes.size(); ++i) {
    const auto a = static_cast<size_t>(axes[i]);
    begin[a] = pads[i];
    end[a] = pads[axes.size() + i];
    const int64_t out = x.shape[a] + begin[a] + end[a];
    if (out < 0) {
      fail_node(node,
                "pads that leave axis " + std::to_string(a) + " of " + shape_str(x.shape) +
                    " nonnegative",
                ints_str(pads));
    }
    if (mode != kernels::PadMode::kConstant && x.shape[a] == 0 && out > 0) {
      fail_node(node, mode_name + " padding of nonempty axes", shape_str(x.shape));
    }
  }
  if (has_input(inputs, 2)) {
    const InputInfo& value = inputs[2];
    if (value.dtype != x.dtype || shape_numel(value.shape) != 1) {
      fail_node(node, "constant_value as one " + dtype_str(x.dtype) + " element",
                dtype_str(value.dtype) + shape_str(value.shape));
    }
  }
  return kernels::plan_pad(x.shape, begin, end, mode, kernels::dtype_size(x.dtype));
}

std::vector<TensorInfo> infer_pad(const graph::Node& node, std::span<const InputInfo> inputs) {
  return {{inputs[0].dtype, pad_plan(node, inputs).out_shape}};
}

class PadKernel final : public OpKernel {
 public:
  PadKernel(kernels::PadPlan plan, uint64_t constant, bool dynamic_constant, DType dtype)
      : plan_(std::move(plan)), constant_(constant), dynamic_constant_(dynamic_constant) {
    // Constant padding that crops nothing: the gradient is the output's interior, a slice.
    differentiable_ = dtype == DType::kFloat32 && plan_.mode == kernels::PadMode::kConstant &&
                      std::all_of(plan_.pads_begin.begin(), plan_.pads_begin.end(),
                                  [](int64_t p) { return p >= 0; });
    for (size_t a = 0; differentiable_ && a < plan_.in_shape.size(); ++a) {
      differentiable_ = plan_.pads_begin[a] + plan_.in_shape[a] <= plan_.out_shape[a];
    }
    if (differentiable_) {
      std::vector<kernels::SliceRange> interior;
      for (size_t a = 0; a < plan_.in_shape.size(); ++a) {
        interior.push_back({plan_.pads_begin[a], 1, plan_.in_shape[a]});
      }
      interior_ = kernels::plan_slice(plan_.out_shape, interior, sizeof(float));
    }
  }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    const void* value = dynamic_constant_ ? inputs[2].raw() : &constant_;
    kernels::pad(plan_, inputs[0].raw(), value, outputs[0].raw());
  }
  bool differentiable_input(size_t index) const override { return differentiable_ && index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::strided_copy(interior_, grad_outputs[0].raw(), grad_inputs[0].raw());
  }

 private:
  kernels::PadPlan plan_;
  uint64_t constant_;  // the pad value's bytes (zero when omitted)
  bool dynamic_constant_;
  bool differentiable_ = false;
  kernels::StridedCopyPlan interior_;
};

std::unique_ptr<OpKernel> create_pad(const graph::Node& node, std::span<const InputInfo> inputs,
                                     std::span<const TensorInfo> /*outputs*/) {
  uint64_t constant = 0;
  bool dynamic = false;
  if (has_input(inputs, 2)) {
    if (inputs[2].constant) {
      std::memcpy(&constant, inputs[2].constant->raw(), inputs[2].constant->nbytes());
    } else {
      dynamic = true;
    }
  }
  return std::make_unique<PadKernel>(pad_plan(node, inputs), constant, dynamic, inputs[0].dtype);
}

// Shape, Constant, ConstantOfShape, Range -------------------------------------------------------

std::vector<int64_t> shape_values(const graph::Node& node, const Shape& shape) {
  const auto rank = static_cast<int64_t>(shape.size());
  auto clamp_end = [&](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + rank : v, 0, rank); };
  const int64_t start = clamp_end(node.attr_int("start", 0));
  const int64_t end = clamp_end(node.attr_int("end", rank));
  if (end <= start) return {};
  return {shape.begin() + start, shape.begin() + end};
}

std::vector<TensorInfo> infer_shape(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  return {{DType::kInt64, {static_cast<int64_t>(shape_values(node, x.shape).size())}}};
}

// Writes a tensor fixed at create time (Shape's dims, Constant's value).
class ConstantKernel final : public OpKernel {
 public:
  explicit ConstantKernel(Tensor value) : value_(std::move(value)) {}
  void forward(std::span<const Tensor> /*inputs*/, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    copy_bytes(value_, outputs[0]);
  }

 private:
  Tensor value_;
};

std::unique_ptr<OpKernel> create_shape(const graph::Node& node, std::span<const InputInfo> inputs,
                                       std::span<const TensorInfo> /*outputs*/) {
  const std::vector<int64_t> dims = shape_values(node, inputs[0].shape);
  return std::make_unique<ConstantKernel>(
      Tensor::from_vector<int64_t>({static_cast<int64_t>(dims.size())}, dims));
}

// Size: the input's element count, an int64 scalar (torch's numel()); like Shape, it reads the
// input's shape only, so it folds at resolution.
std::vector<TensorInfo> infer_size(const graph::Node& node, std::span<const InputInfo> inputs) {
  require_input(node, inputs, 0);
  return {{DType::kInt64, {}}};
}

std::unique_ptr<OpKernel> create_size(const graph::Node& node, std::span<const InputInfo> inputs,
                                      std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ConstantKernel>(
      Tensor::scalar_i64(kernels::shape_numel(require_input(node, inputs, 0).shape)));
}

Tensor constant_value(const graph::Node& node) {
  if (node.has_attr("value")) return node.attr_tensor("value");
  if (node.has_attr("value_float")) return Tensor::scalar_f32(node.attr_float("value_float"));
  if (node.has_attr("value_int")) return Tensor::scalar_i64(node.attr_int("value_int"));
  if (node.has_attr("value_floats")) {
    std::vector<float> v = node.attr_floats("value_floats", {});
    return Tensor::from_vector<float>({static_cast<int64_t>(v.size())}, v);
  }
  if (node.has_attr("value_ints")) {
    std::vector<int64_t> v = node.attr_ints("value_ints");
    return Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v);
  }
  throw_unsupported(
      "shape inference: " + node.label() +
      ": expected a value, value_float(s) or value_int(s) attribute, got " +
      (node.attributes().empty() ? std::string("none") : node.attributes().begin()->first));
}

std::vector<TensorInfo> infer_constant(const graph::Node& node,
                                       std::span<const InputInfo> /*inputs*/) {
  const Tensor value = constant_value(node);
  return {{value.dtype(), value.shape()}};
}

std::unique_ptr<OpKernel> create_constant(const graph::Node& node,
                                          std::span<const InputInfo> /*inputs*/,
                                          std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ConstantKernel>(constant_value(node));
}

// ConstantOfShape's fill value: the `value` attribute (one element), float32 0 by default.
Tensor fill_value(const graph::Node& node) {
  if (!node.has_attr("value")) return Tensor::scalar_f32(0.0f);
  const Tensor& value = node.attr_tensor("value");
  if (value.numel() != 1) fail_node(node, "a one-element value", value.describe());
  return value;
}

std::vector<TensorInfo> infer_constant_of_shape(const graph::Node& node,
                                                std::span<const InputInfo> inputs) {
  const std::vector<int64_t> shape = constant_ints(node, inputs, 0, "the shape");
  for (int64_t d : shape) {
    if (d < 0) fail_node(node, "a shape of nonnegative dims", ints_str(shape));
  }
  return {{fill_value(node).dtype(), shape}};
}

class FillKernel final : public OpKernel {
 public:
  explicit FillKernel(Tensor value) : value_(std::move(value)) {}
  void forward(std::span<const Tensor> /*inputs*/, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::fill(outputs[0], value_.raw());
  }

 private:
  Tensor value_;
};

std::unique_ptr<OpKernel> create_constant_of_shape(const graph::Node& node,
                                                   std::span<const InputInfo> /*inputs*/,
                                                   std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<FillKernel>(fill_value(node));
}

// Range's length depends on its values, so all three inputs must be constants.
std::vector<TensorInfo> infer_range(const graph::Node& node, std::span<const InputInfo> inputs) {
  const char* names[3] = {"start", "limit", "delta"};
  const InputInfo& start = require_input(node, inputs, 0);
  for (size_t i = 0; i < 3; ++i) {
    const InputInfo& in = require_input(node, inputs, i);
    if (!in.constant) {
      fail_node(node, std::string(names[i]) + " as a constant", "a value computed at run time");
    }
    if (in.dtype != start.dtype || shape_numel(in.shape) != 1) {
      fail_node(node, std::string(names[i]) + " as one " + dtype_str(start.dtype) + " element",
                dtype_str(in.dtype) + shape_str(in.shape));
    }
  }
  int64_t length = 0;
  switch (start.dtype) {
    case DType::kFloat32: {
      const float s = inputs[0].constant->data<float>()[0];
      const float l = inputs[1].constant->data<float>()[0];
      const float d = inputs[2].constant->data<float>()[0];
      if (d == 0.0f || !std::isfinite(s) || !std::isfinite(l) || !std::isfinite(d)) {
        fail_node(node, "finite start and limit and a finite nonzero delta",
                  float_str(s) + ", " + float_str(l) + ", " + float_str(d));
      }
      length = kernels::range_length(double{s}, double{l}, double{d});
      break;
    }
    case DType::kInt64:
    case DType::kInt32: {
      const int64_t s = inputs[0].constant->to_int64_vector()[0];
      const int64_t l = inputs[1].constant->to_int64_vector()[0];
      const int64_t d = inputs[2].constant->to_int64_vector()[0];
      if (d == 0) fail_node(node, "a nonzero delta", "0");
      length = kernels::range_length(s, l, d);
      break;
    }
    default:
      fail_node(node, "float32, int64 or int32 inputs", dtype_str(start.dtype));
  }
  return {{start.dtype, {length}}};
}

class RangeKernel final : public OpKernel {
 public:
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::range(inputs[0], inputs[2], outputs[0]);
  }
};

std::unique_ptr<OpKernel> create_range(const graph::Node& /*node*/,
                                       std::span<const InputInfo> /*inputs*/,
                                       std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<RangeKernel>();
}

// ScatterND ------------------------------------------------------------------------------------

std::vector<TensorInfo> infer_scatter_nd(const graph::Node& node,
                                         std::span<const InputInfo> inputs) {
  const InputInfo& data = require_input(node, inputs, 0);
  const InputInfo& indices = require_input(node, inputs, 1);
  const InputInfo& updates = require_input(node, inputs, 2);
  const std::string reduction = node.attr_string("reduction", "none");
  if (reduction != "none") {
    throw_unsupported("shape inference: " + node.label() + ": expected reduction none, got " +
                      reduction);
  }
  if (indices.dtype != DType::kInt64) fail_node(node, "int64 indices", dtype_str(indices.dtype));
  if (updates.dtype != data.dtype) {
    fail_node(node, "updates of the data's dtype " + dtype_str(data.dtype),
              dtype_str(updates.dtype));
  }
  if (indices.shape.empty() || indices.shape.back() > static_cast<int64_t>(data.shape.size())) {
    fail_node(node,
              "indices of rank >= 1 whose last dim is at most the data rank " +
                  std::to_string(data.shape.size()),
              shape_str(indices.shape));
  }
  Shape expected(indices.shape.begin(), indices.shape.end() - 1);
  expected.insert(expected.end(), data.shape.begin() + indices.shape.back(), data.shape.end());
  if (updates.shape != expected) {
    fail_node(node, "updates of shape " + shape_str(expected), shape_str(updates.shape));
  }
  return {{data.dtype, data.shape}};
}

// The data and the updates have the gradient of a copy; the indices are integers.
class ScatterNdKernel final : public OpKernel {
 public:
  ScatterNdKernel(std::string label, const InputInfo& data, const InputInfo& indices)
      : label_(std::move(label)),
        differentiable_(data.dtype == DType::kFloat32),
        layout_(kernels::scatter_nd_layout(data.shape, indices.shape)) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    run_for_node(label_, [&] { kernels::scatter_nd(inputs[0], inputs[1], inputs[2], outputs[0]); });
  }
  bool differentiable_input(size_t index) const override {
    return differentiable_ && (index == 0 || index == 2);
  }
  BackwardReads backward_reads() const override {
    return {.inputs = uint64_t{1} << 1, .outputs = BackwardReads::kNothing};
  }
  size_t backward_workspace_bytes() const override {
    // One byte per slice of the data (each written whole or not at all).
    return differentiable_ && layout_.slice > 0
               ? static_cast<size_t>(shape_numel(layout_.shape) / layout_.slice)
               : 0;
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    float* ddata = grad_data(grad_inputs, 0);
    float* dupdates = grad_data(grad_inputs, 2);
    if (!ddata && !dupdates) return;
    run_for_node(label_, [&] {
      kernels::scatter_nd_backward(layout_, inputs[1], grad_outputs[0].data<float>(), ddata,
                                   dupdates, reinterpret_cast<uint8_t*>(workspace));
    });
  }

 private:
  std::string label_;
  bool differentiable_;
  kernels::ScatterNdLayout layout_;
};

std::unique_ptr<OpKernel> create_scatter_nd(const graph::Node& node,
                                            std::span<const InputInfo> inputs,
                                            std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ScatterNdKernel>(node.label(), inputs[0], inputs[1]);
}

// SliceUpdate ----------------------------------------------------------------------------------
// The data with a strided box replaced by the updates: what resolution makes of a ScatterND whose
// indices address such a box (graph/slice_update.h). Attributes starts and steps, one per
// leading axis of the box; the box's counts are the updates' leading dims, and the axes after
// it are whole. Every output element is a copy, so the gradient is dy split between the two:
// the updates' is dy read in the box, the data's dy with the box zeroed.

kernels::StridedCopyPlan plan_slice_update(const graph::Node& node,
                                           std::span<const InputInfo> inputs) {
  const InputInfo& data = require_input(node, inputs, 0);
  const InputInfo& updates = require_input(node, inputs, 1);
  const std::vector<int64_t> starts = node.attr_ints("starts");
  const std::vector<int64_t> steps = node.attr_ints("steps");
  if (updates.dtype != data.dtype) {
    fail_node(node, "updates of the data's dtype " + dtype_str(data.dtype),
              dtype_str(updates.dtype));
  }
  if (steps.size() != starts.size() || starts.size() > data.shape.size() ||
      updates.shape.size() != data.shape.size()) {
    fail_node(node,
              "starts and steps of one length, at most the data's rank, and updates of its rank " +
                  std::to_string(data.shape.size()),
              ints_str(starts) + ", " + ints_str(steps) + " and " + shape_str(updates.shape));
  }
  std::vector<kernels::SliceRange> ranges;
  for (size_t k = 0; k < data.shape.size(); ++k) {
    const int64_t count = updates.shape[k];
    if (k >= starts.size()) {
      if (count != data.shape[k]) {
        fail_node(node,
                  "updates whole along axis " + std::to_string(k) + " (size " +
                      std::to_string(data.shape[k]) + ")",
                  shape_str(updates.shape));
      }
      ranges.push_back({0, 1, count});
      continue;
    }
    if (starts[k] < 0 || steps[k] < 1 ||
        (count > 0 && starts[k] + steps[k] * (count - 1) >= data.shape[k])) {
      fail_node(
          node,
          "a box inside the data " + shape_str(data.shape) + " along axis " + std::to_string(k),
          "start " + std::to_string(starts[k]) + ", step " + std::to_string(steps[k]) + ", count " +
              std::to_string(count));
    }
    ranges.push_back({starts[k], steps[k], count});
  }
  return kernels::plan_slice(data.shape, ranges, kernels::dtype_size(data.dtype));
}

std::vector<TensorInfo> infer_slice_update(const graph::Node& node,
                                           std::span<const InputInfo> inputs) {
  plan_slice_update(node, inputs);
  return {{inputs[0].dtype, inputs[0].shape}};
}

class SliceUpdateKernel final : public OpKernel {
 public:
  SliceUpdateKernel(kernels::StridedCopyPlan box, DType dtype)
      : box_(std::move(box)), differentiable_(dtype == DType::kFloat32) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    // The executor may place the output over the data (runtime/executor.cpp, writable_input):
    // then only the box is written.
    if (outputs[0].raw() != inputs[0].raw()) copy_bytes(inputs[0], outputs[0]);
    kernels::strided_scatter(box_, inputs[1].raw(), outputs[0].raw());
  }
  bool differentiable_input(size_t index) const override { return differentiable_ && index < 2; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    if (float* d_data = grad_data(grad_inputs, 0)) {
      std::memcpy(d_data, grad_outputs[0].raw(), grad_outputs[0].nbytes());
      kernels::strided_scatter(box_, nullptr, d_data);
    }
    if (float* d_updates = grad_data(grad_inputs, 1)) {
      kernels::strided_copy(box_, grad_outputs[0].raw(), d_updates);
    }
  }

 private:
  kernels::StridedCopyPlan box_;  // the box's positions in the data, in the updates' order
  bool differentiable_;
};

std::unique_ptr<OpKernel> create_slice_update(const graph::Node& node,
                                              std::span<const InputInfo> inputs,
                                              std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<SliceUpdateKernel>(plan_slice_update(node, inputs), inputs[0].dtype);
}

// Trilu ----------------------------------------------------------------------------------------
// The upper or lower triangle of the last two axes (k, input 1, a constant), any dtype; float32
// with its gradient, the same triangle of dy. Decoder exports build their causal mask with it
// (torch.triu of a full matrix).

struct TriluSetup {
  int64_t matrices = 1, rows = 1, cols = 1, k = 0;
  bool upper = true;
};

TriluSetup setup_trilu(const graph::Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = require_input(node, inputs, 0);
  if (x.shape.size() < 2) fail_node(node, "input 0 of rank >= 2", shape_str(x.shape));
  TriluSetup s;
  if (has_input(inputs, 1)) {
    const std::vector<int64_t> k = constant_ints(node, inputs, 1, "k");
    if (k.size() != 1) fail_node(node, "k (input 1) as one value", ints_str(k));
    s.k = k[0];
  }
  const int64_t upper = node.attr_int("upper", 1);
  if (upper != 0 && upper != 1) fail_node(node, "attribute 'upper' 0 or 1", std::to_string(upper));
  s.upper = upper != 0;
  s.rows = x.shape[x.shape.size() - 2];
  s.cols = x.shape.back();
  s.matrices = shape_numel(x.shape) / std::max<int64_t>(s.rows * s.cols, 1);
  return s;
}

std::vector<TensorInfo> infer_trilu(const graph::Node& node, std::span<const InputInfo> inputs) {
  setup_trilu(node, inputs);
  return {{inputs[0].dtype, inputs[0].shape}};
}

class TriluKernel final : public OpKernel {
 public:
  TriluKernel(const TriluSetup& s, DType dtype) : s_(s), dtype_(dtype) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    run(inputs[0].raw(), outputs[0].raw());
  }
  bool differentiable_input(size_t index) const override {
    return index == 0 && dtype_ == DType::kFloat32;
  }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    if (float* dx = grad_data(grad_inputs, 0)) run(grad_outputs[0].raw(), dx);
  }

 private:
  void run(const void* x, void* y) const {
    kernels::triangle(x, s_.matrices, s_.rows, s_.cols, s_.k, s_.upper, kernels::dtype_size(dtype_),
                      y);
  }
  TriluSetup s_;
  DType dtype_;
};

std::unique_ptr<OpKernel> create_trilu(const graph::Node& node, std::span<const InputInfo> inputs,
                                       std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<TriluKernel>(setup_trilu(node, inputs), inputs[0].dtype);
}

}  // namespace

void register_shape_ops(OpRegistry& registry) {
  registry.add({"Identity", infer_identity, create_copy});
  registry.add({"Reshape", infer_reshape, create_copy});
  registry.add({"Flatten", infer_flatten, create_copy});
  registry.add({"Squeeze", infer_squeeze, create_copy});
  registry.add({"Unsqueeze", infer_unsqueeze, create_copy});
  registry.add({"Dropout", infer_dropout, create_dropout});
  registry.add({"Transpose", infer_transpose, create_transpose});
  registry.add({"DepthToSpace", infer_space_depth, create_space_depth});
  registry.add({"SpaceToDepth", infer_space_depth, create_space_depth});
  registry.add({"Slice", infer_slice, create_slice});
  registry.add({"Expand", infer_expand, create_expand});
  registry.add({"Tile", infer_tile, create_tile});
  registry.add({"Concat", infer_concat, create_concat});
  registry.add({"Split", infer_split, create_split});
  registry.add({"Resize", infer_resize, create_resize});
  registry.add({"GridSample", infer_grid_sample, create_grid_sample});
  registry.add({"Gather", infer_gather, create_gather});
  registry.add({"GatherElements", infer_gather_elements, create_gather_elements});
  registry.add({"ScatterElements", infer_scatter_elements, create_scatter_elements});
  registry.add({"OneHot", infer_one_hot, create_one_hot});
  registry.add({"GatherND", infer_gather_nd, create_gather_nd});
  registry.add({"Pad", infer_pad, create_pad});
  registry.add({"Shape", infer_shape, create_shape});
  registry.add({"Size", infer_size, create_size});
  registry.add({"Constant", infer_constant, create_constant});
  registry.add({"ConstantOfShape", infer_constant_of_shape, create_constant_of_shape});
  registry.add({"Range", infer_range, create_range});
  registry.add({"ScatterND", infer_scatter_nd, create_scatter_nd});
  registry.add({"SliceUpdate", infer_slice_update, create_slice_update});
  registry.add({"Trilu", infer_trilu, create_trilu});
}

}  // namespace qforge::runtime::ops
