// Runtime bindings of QuantizeLinear and DequantizeLinear (opset 13 semantics: per tensor or per
// axis, int8 or uint8 zero points) and of FakeQuant, the runtime-internal pair of both that
// runtime/fuse_qdq.h makes. Constant scales and zero points are read once in create().
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/fake_quant.h"
#include "runtime/ops/ops.h"

namespace qforge::runtime::ops {
namespace {

enum class QdqMode { kQuantize, kDequantize, kFake };

std::string dtype_str(DType dtype) {
  return kernels::dtype_name(dtype);
}

bool has_input(std::span<const InputInfo> inputs, size_t index) {
  return index < inputs.size() && inputs[index].present;
}

bool is_int8_grid(DType dtype) {
  return dtype == DType::kInt8 || dtype == DType::kUInt8;
}

// The grid's integer type: the zero point's, else the output_dtype attribute (opset 21), else
// uint8 as the spec prescribes for an omitted zero point.
DType grid_dtype(const graph::Node& node, QdqMode mode, std::span<const InputInfo> inputs) {
  if (mode == QdqMode::kDequantize) return inputs[0].dtype;
  if (has_input(inputs, 2)) return inputs[2].dtype;
  const int64_t code = node.attr_int("output_dtype", 0);
  if (code == 0 || code == 2) return DType::kUInt8;
  if (code == 3) return DType::kInt8;
  throw_unsupported("shape inference: " + node.label() +
                    ": expected output_dtype 2 (uint8) or 3 (int8), got " + std::to_string(code));
}

// Normalised channel axis for a per-axis scale, -1 for a per-tensor one.
int64_t channel_axis(const graph::Node& node, const Shape& x_shape, const Shape& scale_shape) {
  if (node.attr_int("block_size", 0) != 0) {
    throw_unsupported("shape inference: " + node.label() +
                      ": blocked quantization (block_size) is not supported");
  }
  if (scale_shape.size() <= 1 && kernels::shape_numel(scale_shape) == 1) return -1;
  const auto rank = static_cast<int64_t>(x_shape.size());
  const int64_t attr = node.attr_int("axis", 1);
  const int64_t axis = attr < 0 ? attr + rank : attr;
  if (axis < 0 || axis >= rank) {
    fail_node(node, "axis in [" + std::to_string(-rank) + ", " + std::to_string(rank - 1) + "]",
              std::to_string(attr));
  }
  if (scale_shape.size() != 1 || scale_shape[0] != x_shape[static_cast<size_t>(axis)]) {
    fail_node(node,
              "a scale of one element or of " + std::to_string(x_shape[static_cast<size_t>(axis)]) +
                  " (axis " + std::to_string(attr) + " of " + kernels::shape_str(x_shape) + ")",
              kernels::shape_str(scale_shape));
  }
  return axis;
}

template <QdqMode kMode>
std::vector<TensorInfo> infer_qdq(const graph::Node& node, std::span<const InputInfo> inputs) {
  for (size_t i : {size_t{0}, size_t{1}}) {
    if (!has_input(inputs, i)) fail_node(node, "input " + std::to_string(i), "none");
  }
  const InputInfo& x = inputs[0];
  const InputInfo& scale = inputs[1];
  if (kMode == QdqMode::kDequantize ? !is_int8_grid(x.dtype) : x.dtype != DType::kFloat32) {
    fail_node(node, kMode == QdqMode::kDequantize ? "an int8 or uint8 input" : "a float32 input",
              dtype_str(x.dtype));
  }
  if (scale.dtype != DType::kFloat32) fail_node(node, "a float32 scale", dtype_str(scale.dtype));
  channel_axis(node, x.shape, scale.shape);
  const DType grid = grid_dtype(node, kMode, inputs);
  if (has_input(inputs, 2)) {
    const InputInfo& zp = inputs[2];
    if (zp.dtype != grid || !is_int8_grid(zp.dtype)) {
      fail_node(node,
                kMode == QdqMode::kDequantize ? "a zero point of the input's dtype"
                                              : "an int8 or uint8 zero point",
                dtype_str(zp.dtype));
    }
    if (kernels::shape_numel(zp.shape) != kernels::shape_numel(scale.shape)) {
      fail_node(node, "a zero point shaped like the scale " + kernels::shape_str(scale.shape),
                kernels::shape_str(zp.shape));
    }
  }
  if (kMode == QdqMode::kQuantize) return {{grid, x.shape}};
  return {{DType::kFloat32, x.shape}};
}

class QdqKernel final : public OpKernel {
 public:
  QdqKernel(QdqMode mode, DType grid, int axis, bool has_zero_point, size_t channels,
            std::string label)
      : mode_(mode),
        grid_(grid),
        axis_(axis),
        has_zero_point_(has_zero_point),
        zero_points_(has_zero_point ? channels : 0),
        label_(std::move(label)) {}

  void set_constant_scales(const Tensor& scale) { scales_ = scale.to_float_vector(); }
  void set_constant_zero_points(const Tensor& zp) {
    read_zero_points(zp);
    zero_points_known_ = true;
  }

  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::QuantGrid grid;
    grid.scales = scales_.empty() ? inputs[1].span<float>() : std::span<const float>(scales_);
    if (has_zero_point_ && !zero_points_known_) read_zero_points(inputs[2]);
    grid.zero_points = zero_points_;
    grid.axis = axis_;
    grid.dtype = grid_;
    try {
      switch (mode_) {
        case QdqMode::kQuantize:
          kernels::quantize_linear(inputs[0], grid, outputs[0]);
          break;
        case QdqMode::kDequantize:
          kernels::dequantize_linear(inputs[0], grid, outputs[0]);
          break;
        case QdqMode::kFake:
          kernels::fake_quant_linear(inputs[0], grid, outputs[0]);
          break;
      }
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kInvalid) throw;
      throw_invalid(std::string("run: ").append(label_).append(": ").append(e.what()));
    }
  }

 private:
  // Fills the preallocated buffer, so a run-time zero point costs no allocation.
  void read_zero_points(const Tensor& zp) {
    const auto n = static_cast<size_t>(zp.numel());
    if (n != zero_points_.size()) {
      throw_invalid(std::string("run: ")
                        .append(label_)
                        .append(": expected a zero point of ")
                        .append(std::to_string(zero_points_.size()))
                        .append(" elements, got ")
                        .append(zp.describe()));
    }
    for (size_t i = 0; i < n; ++i) {
      zero_points_[i] = zp.dtype() == DType::kInt8 ? zp.data<int8_t>()[i] : zp.data<uint8_t>()[i];
    }
  }

  QdqMode mode_;
  DType grid_;
  int axis_;
  bool has_zero_point_;
  bool zero_points_known_ = false;
  std::vector<float> scales_;  // empty: read from the input at run time
  std::vector<int32_t> zero_points_;
  std::string label_;
};

template <QdqMode kMode>
std::unique_ptr<OpKernel> create_qdq(const graph::Node& node, std::span<const InputInfo> inputs,
                                     std::span<const TensorInfo> /*outputs*/) {
  const int64_t axis = channel_axis(node, inputs[0].shape, inputs[1].shape);
  const bool has_zp = has_input(inputs, 2);
  auto kernel = std::make_unique<QdqKernel>(
      kMode, grid_dtype(node, kMode, inputs), axis < 0 ? 0 : static_cast<int>(axis), has_zp,
      static_cast<size_t>(kernels::shape_numel(inputs[1].shape)), node.label());
  if (inputs[1].constant) kernel->set_constant_scales(*inputs[1].constant);
  if (has_zp && inputs[2].constant) kernel->set_constant_zero_points(*inputs[2].constant);
  return kernel;
}

template <QdqMode kMode>
OpDef qdq_def(const char* op_type) {
  return {op_type, infer_qdq<kMode>, create_qdq<kMode>};
}

}  // namespace

void register_quantize_ops(OpRegistry& registry) {
  registry.add(qdq_def<QdqMode::kQuantize>("QuantizeLinear"));
  registry.add(qdq_def<QdqMode::kDequantize>("DequantizeLinear"));
  registry.add(qdq_def<QdqMode::kFake>("FakeQuant"));
}

}  // namespace qforge::runtime::ops
