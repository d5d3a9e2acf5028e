// Runtime bindings of QuantizeLinear and DequantizeLinear (opset 13 semantics: per tensor or per
// axis, int8 or uint8 zero points) and of FakeQuant, the runtime-internal pair of both that
// runtime/fuse_qdq.h makes. Constant scales and zero points are read once in create().
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/fake_quant.h"
#include "kernels/mask.h"
#include "kernels/norm.h"
#include "kernels/parallel.h"
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
          if (record_) {
            kernels::fake_quant_linear_record(inputs[0], grid, outputs[0], codes_, pass_);
          } else {
            kernels::fake_quant_linear(inputs[0], grid, outputs[0]);
          }
          break;
      }
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kInvalid) throw;
      throw_invalid(std::string("run: ").append(label_).append(": ").append(e.what()));
    }
  }

  // FakeQuant's straight-through estimator: dx = dy where the integer did not saturate (the
  // scale is a constant of the graph, so it has no gradient here).
  // A scale that training learns (a parameter, so no constant at creation) gets the LSQ
  // gradient (Esser et al. 2019) with LSQ's gradient scale 1/sqrt(N·127), N the elements per
  // scale.
  bool differentiable_input(size_t index) const override {
    return mode_ == QdqMode::kFake && (index == 0 || (index == 1 && scales_.empty()));
  }
  size_t backward_workspace_bytes() const override { return lsq_workspace_floats_ * sizeof(float); }
  void set_input_shape(const Shape& shape, size_t scale_count) {
    shape_ = shape;
    const int64_t elements = kernels::shape_numel(shape);
    lsq_workspace_floats_ =
        static_cast<size_t>(kernels::fake_quant_lsq_workspace_floats(elements, scale_count));
    elements_per_scale_ = elements / static_cast<int64_t>(std::max<size_t>(1, scale_count));
  }

  // A fake quant's output (a convolution's input, which its weight gradient reads) costs one
  // element-wise pass to make again from its input, which the fake quant's own backward keeps.
  bool cheap_to_recompute() const override { return true; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
  // Or, with the scale and zero point constants of the graph: its integers (one byte each) and
  // the straight-through estimator's mask (one bit each) as a record, from which the output is
  // made again, so that neither the input nor the output is kept.
  Record record() const override {
    if (mode_ != QdqMode::kFake || scales_.empty() || (has_zero_point_ && !zero_points_known_)) {
      return {};
    }
    const int64_t n = kernels::shape_numel(shape_);
    if (n == 0) return {};
    return {.bytes = code_bytes() + kernels::mask_bytes(n),
            .reads = {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing},
            .restores_outputs = true};
  }
  void keep_record(std::byte* storage) override {
    record_ = storage;
    codes_ = Tensor::wrap(grid_, shape_, storage);
    pass_ = reinterpret_cast<uint8_t*>(storage + code_bytes());
  }
  void restore_outputs(std::span<Tensor> outputs) const override {
    kernels::dequantize_linear(codes_, constant_grid(), outputs[0]);
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    if (grad_inputs.size() > 1 && grad_inputs[1].defined()) {
      learned_scale_backward(inputs, grad_outputs, grad_inputs, workspace);
      return;
    }
    if (!grad_inputs[0].defined()) return;
    if (record_) {
      Tensor& dx = grad_inputs[0];
      if (!grad_outputs[0].defined()) {
        std::fill_n(dx.data<float>(), dx.numel(), 0.0f);
      } else {
        kernels::masked_gradient(grad_outputs[0].data<float>(), pass_, dx.numel(),
                                 dx.data<float>());
      }
      return;
    }
    const std::span<const float> scales =
        scales_.empty() ? inputs[1].span<float>() : std::span<const float>(scales_);
    if (has_zero_point_ && !zero_points_known_) read_zero_points(inputs[2]);
    const Tensor& x = inputs[0];
    Tensor& dx = grad_inputs[0];
    if (!grad_outputs[0].defined()) {
      std::fill_n(dx.data<float>(), dx.numel(), 0.0f);
      return;
    }
    bool symmetric = grid_ == DType::kInt8;
    for (int32_t z : zero_points_) symmetric = symmetric && z == 0;
    if (symmetric) {
      kernels::fake_quant_backward(x, grad_outputs[0], {scales, scales.size() > 1 ? axis_ : 0}, dx);
      return;
    }
    // An affine grid: the integer round(x / s) + zero point must lie in the grid's range.
    const float lo = grid_ == DType::kInt8 ? -128.0f : 0.0f;
    const float hi = grid_ == DType::kInt8 ? 127.0f : 255.0f;
    int64_t inner = 1;
    int64_t channels = 1;
    if (scales.size() > 1) {
      channels = x.dim(axis_);
      for (int d = axis_ + 1; d < x.rank(); ++d) inner *= x.dim(d);
    }
    const float* xp = x.data<float>();
    const float* dy = grad_outputs[0].data<float>();
    float* out = dx.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      const auto c = static_cast<size_t>((i / inner) % channels);
      const float zp = zero_points_.empty() ? 0.0f : static_cast<float>(zero_points_[c]);
      const float q = std::nearbyint(xp[i] / scales[c]) + zp;
      out[i] = (q >= lo && q <= hi) ? dy[i] : 0.0f;
    }
  }

 private:
  void learned_scale_backward(std::span<const Tensor> inputs, std::span<const Tensor> grad_outputs,
                              std::span<Tensor> grad_inputs, std::byte* workspace) {
    if (has_zero_point_ && !zero_points_known_) read_zero_points(inputs[2]);
    bool symmetric = grid_ == DType::kInt8;
    for (int32_t z : zero_points_) symmetric = symmetric && z == 0;
    if (!symmetric) {
      throw_unsupported("training: " + label_ + ": learned scales need a symmetric int8 grid");
    }
    const std::span<const float> scales = inputs[1].span<float>();
    const kernels::FakeQuantScales fq{scales, scales.size() > 1 ? axis_ : 0};
    Tensor* dx = grad_inputs[0].defined() ? &grad_inputs[0] : nullptr;
    std::span<float> dscale = grad_inputs[1].span<float>();
    if (!grad_outputs[0].defined()) {
      if (dx) std::fill_n(dx->data<float>(), dx->numel(), 0.0f);
      std::fill(dscale.begin(), dscale.end(), 0.0f);
      return;
    }
    const std::span<float> scratch(
        reinterpret_cast<float*>(workspace),
        static_cast<size_t>(kernels::fake_quant_lsq_workspace_floats(inputs[0], fq)));
    kernels::fake_quant_lsq_backward(
        inputs[0], grad_outputs[0], fq,
        {kernels::lsq_grad_scale(elements_per_scale_), kernels::GradMode::kOverwrite}, dx, dscale,
        scratch);
  }

  size_t code_bytes() const {
    return static_cast<size_t>((kernels::shape_numel(shape_) + 63) / 64 * 64);
  }
  kernels::QuantGrid constant_grid() const {
    kernels::QuantGrid grid;
    grid.scales = scales_;
    grid.zero_points = zero_points_;
    grid.axis = axis_;
    grid.dtype = grid_;
    return grid;
  }

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
  size_t lsq_workspace_floats_ = 0;
  int64_t elements_per_scale_ = 1;
  std::vector<int32_t> zero_points_;
  std::string label_;
  Shape shape_;                  // the input's
  std::byte* record_ = nullptr;  // the kept record: codes_, then pass_
  Tensor codes_;
  uint8_t* pass_ = nullptr;
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
  kernel->set_input_shape(inputs[0].shape,
                          static_cast<size_t>(kernels::shape_numel(inputs[1].shape)));
  if (has_zp && inputs[2].constant) kernel->set_constant_zero_points(*inputs[2].constant);
  return kernel;
}

template <QdqMode kMode>
OpDef qdq_def(const char* op_type) {
  return {op_type, infer_qdq<kMode>, create_qdq<kMode>};
}

// WeightFakeQuant(W, [gamma, var]) → (Wq, [factor]): the weight a quantization-aware training
// step quantizes, with its batch norm folded in when gamma and var are given:
//   factor[c] = gamma[c] / sqrt(var[c] + eps)          (double, as the export folds it)
//   folded    = float(W[c, …] · factor[c])
//   scale     = max |folded| / 127 per index of `axis` (one for the tensor when axis = -1)
//   Wq        = fake_quant(folded, scale)
// so Wq is bit for bit the weight the Q/DQ export writes. Backward: the straight-through
// estimator with the scale held constant, dW = dfolded · factor; gamma receives the gradient
// through the fold and through the factor output; the running variance is state (none).
// With attribute `transposed` 1, W is a ConvTranspose weight [C_in, C_out / group, …] (attribute
// `group`): output channel c = group(ci)·C_out/group + j holds W[ci, j, …] for every ci of its
// group, and gamma, var and the factor have C_out values.

// Output channels of a WeightFakeQuant's fold, and the weight elements of each: `rows` runs of
// `row` contiguous elements, the first at first(c), the next `stride` further.
struct FoldLayout {
  bool transposed = false;
  int64_t group = 1;
  int64_t channels = 0;
  int64_t rows = 1;
  int64_t row = 0;
  int64_t stride = 0;

  FoldLayout(const Shape& w, bool transposed_weight, int64_t groups)
      : transposed(transposed_weight), group(groups) {
    const int64_t n = kernels::shape_numel(w);
    if (!transposed) {
      channels = w[0];
      row = channels ? n / channels : 0;
      return;
    }
    const int64_t out_per_group = w[1];
    channels = out_per_group * group;
    rows = w[0] / group;  // input channels per group
    row = w[0] && w[1] ? n / (w[0] * w[1]) : 0;
    stride = out_per_group * row;
  }
  int64_t first(int64_t c) const {
    if (!transposed) return c * row;
    const int64_t out_per_group = channels / group;
    return ((c / out_per_group) * rows * out_per_group + c % out_per_group) * row;
  }
};

FoldLayout fold_layout(const graph::Node& node, const Shape& w) {
  return FoldLayout(w, node.attr_int("transposed", 0) != 0, node.attr_int("group", 1));
}

std::vector<TensorInfo> infer_weight_fake_quant(const graph::Node& node,
                                                std::span<const InputInfo> inputs) {
  const InputInfo& w = inputs[0];
  if (w.dtype != DType::kFloat32 || w.shape.empty()) {
    fail_node(node, "a float32 weight of rank >= 1", kernels::shape_str(w.shape));
  }
  const auto rank = static_cast<int64_t>(w.shape.size());
  const int64_t axis = node.attr_int("axis", 0);
  if (axis < -1 || axis >= rank) {
    fail_node(node, "axis -1 (per tensor) or in [0, " + std::to_string(rank - 1) + "]",
              std::to_string(axis));
  }
  const bool folds = has_input(inputs, 1);
  if (folds != has_input(inputs, 2)) fail_node(node, "gamma and var together", "one of them");
  if (!folds) return {{DType::kFloat32, w.shape}};
  const bool transposed = node.attr_int("transposed", 0) != 0;
  const int64_t group = node.attr_int("group", 1);
  if (transposed && (w.shape.size() < 2 || group < 1 || w.shape[0] % group != 0)) {
    fail_node(node,
              "a transposed weight [C_in, C_out / group, …] with C_in divisible by group " +
                  std::to_string(group),
              kernels::shape_str(w.shape));
  }
  const int64_t channels = fold_layout(node, w.shape).channels;
  for (size_t i : {size_t{1}, size_t{2}}) {
    if (inputs[i].dtype != DType::kFloat32 || kernels::shape_numel(inputs[i].shape) != channels) {
      fail_node(node, "a float32 vector of " + std::to_string(channels) + " (output channels)",
                kernels::shape_str(inputs[i].shape));
    }
  }
  return {{DType::kFloat32, w.shape}, {DType::kFloat32, {channels}}};
}

class WeightFakeQuantKernel final : public OpKernel {
 public:
  WeightFakeQuantKernel(const Shape& shape, int64_t axis, bool folds, float epsilon,
                        FoldLayout layout, std::string label)
      : shape_(shape),
        axis_(axis),
        folds_(folds),
        epsilon_(epsilon),
        layout_(layout),
        label_(std::move(label)) {
    const int64_t channels = axis < 0 ? 1 : shape[static_cast<size_t>(axis)];
    scales_.resize(static_cast<size_t>(channels));
    if (folds) {
      factor_.resize(static_cast<size_t>(layout_.channels));
      inv_std_.resize(static_cast<size_t>(layout_.channels));
      folded_ = Tensor(DType::kFloat32, shape);
      scratch_ = Tensor(DType::kFloat32, shape);
    }
  }

  bool differentiable_input(size_t index) const override { return index <= 1; }

  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    const Tensor& w = inputs[0];
    const Tensor& src = folds_ ? fold(inputs) : w;
    if (folds_) {
      float* f = outputs[1].data<float>();
      for (size_t c = 0; c < factor_.size(); ++c) f[c] = static_cast<float>(factor_[c]);
    }
    channel_amax(src);
    kernels::fake_quant(src, {scales_, static_cast<int>(std::max<int64_t>(axis_, 0))}, outputs[0]);
  }

  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    const Tensor& w = inputs[0];
    const Tensor& src = folds_ ? folded_ : w;
    float* dw = grad_data(grad_inputs, 0);
    float* dgamma = grad_data(grad_inputs, 1);
    if (!dw && !dgamma) return;
    const int64_t n = w.numel();
    // dsrc in dW's storage (or the folded buffer's when only gamma wants it): the STE.
    Tensor dsrc = dw ? grad_inputs[0] : scratch_;
    if (grad_outputs[0].defined()) {
      kernels::fake_quant_backward(src, grad_outputs[0],
                                   {scales_, static_cast<int>(std::max<int64_t>(axis_, 0))}, dsrc);
    } else {
      std::fill_n(dsrc.data<float>(), n, 0.0f);
    }
    if (!folds_) return;
    const float* ds = dsrc.data<float>();
    const float* wp = w.data<float>();
    const float* dfactor = grad_outputs.size() > 1 && grad_outputs[1].defined()
                               ? grad_outputs[1].data<float>()
                               : nullptr;
    const FoldLayout& l = layout_;
    kernels::parallel_for(l.channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const double factor = factor_[static_cast<size_t>(c)];
        // The forward's: a training-mode BN after this node updates the running variance in
        // place before backward runs.
        const double inv_std = inv_std_[static_cast<size_t>(c)];
        double sum = dfactor ? static_cast<double>(dfactor[c]) : 0.0;
        for (int64_t r = 0, at = l.first(c); r < l.rows; ++r, at += l.stride) {
          for (int64_t k = at; k < at + l.row; ++k) sum += static_cast<double>(ds[k]) * wp[k];
          if (dw) {
            for (int64_t k = at; k < at + l.row; ++k) dw[k] = static_cast<float>(ds[k] * factor);
          }
        }
        if (dgamma) dgamma[c] = static_cast<float>(sum * inv_std);
      }
    });
  }

 private:
  const Tensor& fold(std::span<const Tensor> inputs) {
    kernels::batch_norm_fold({.gamma = inputs[1].data<float>(),
                              .var = inputs[2].data<float>(),
                              .epsilon = epsilon_,
                              .channels = layout_.channels},
                             nullptr, kernels::FoldPrecision::kDouble,
                             {.factor = factor_.data(), .inv_std = inv_std_.data()});
    if (layout_.transposed) {
      kernels::fold_weight_transposed(inputs[0].data<float>(), factor_.data(), shape_[0],
                                      layout_.group, shape_[1], layout_.row, folded_.data<float>());
    } else {
      kernels::fold_weight(inputs[0].data<float>(), factor_.data(), layout_.channels, layout_.row,
                           folded_.data<float>());
    }
    return folded_;
  }

  // The scales of the quantizer: max |w| / 127 per channel (or for the whole tensor).
  void channel_amax(const Tensor& src) {
    kernels::channel_abs_max(src, static_cast<int>(axis_), scales_);
    for (float& s : scales_) {
      if (!std::isfinite(s)) {
        throw_invalid("run: " + label_ + ": the weight's range is not finite (max |w| = " +
                      std::to_string(s) + (folds_ ? ", folded with its batch norm)" : ")"));
      }
      s = kernels::symmetric_scale(s);
    }
  }

  Shape shape_;
  int64_t axis_;
  bool folds_;
  float epsilon_;
  FoldLayout layout_;
  std::vector<float> scales_;
  std::vector<double> factor_;
  std::vector<double> inv_std_;  // 1 / sqrt(var + eps) of the last forward
  Tensor folded_;
  Tensor scratch_;  // dfolded when only gamma's gradient is asked for
  std::string label_;
};

std::unique_ptr<OpKernel> create_weight_fake_quant(const graph::Node& node,
                                                   std::span<const InputInfo> inputs,
                                                   std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<WeightFakeQuantKernel>(
      inputs[0].shape, node.attr_int("axis", 0), has_input(inputs, 1),
      node.attr_float("epsilon", 1e-5f), fold_layout(node, inputs[0].shape), node.label());
}

}  // namespace

void register_quantize_ops(OpRegistry& registry) {
  registry.add(qdq_def<QdqMode::kQuantize>("QuantizeLinear"));
  registry.add(qdq_def<QdqMode::kDequantize>("DequantizeLinear"));
  registry.add(qdq_def<QdqMode::kFake>("FakeQuant"));
  registry.add({"WeightFakeQuant", infer_weight_fake_quant, create_weight_fake_quant});
}

}  // namespace qforge::runtime::ops
