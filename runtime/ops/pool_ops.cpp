// Softmax, LogSoftmax, MaxPool, AveragePool, GlobalAveragePool, every Reduce op, CumSum, ArgMax and
// TopK: shape inference, kernels with their backward (ArgMax has none: its output is an integer;
// nor has CumSum of integers; TopK's gradient is its values').
#include <optional>

#include "runtime/ops/dense_common.h"

namespace qforge::runtime::ops {
namespace {

using dense::bool_attr;
using dense::fail_unsupported;
using dense::fill_window_2d;
using dense::float_input;
using dense::ints_str;
using dense::normalize_axis;
using dense::one_output;
using dense::output_used;
using dense::resolve_window;
using dense::spatial_of;
using dense::Window;
using dense::WindowRules;
using graph::Node;
using kernels::shape_numel;
using kernels::shape_str;

// ---------------------------------------------------------------------------------------------
// Softmax and LogSoftmax (the axis' default -1, opset 13's form)

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

// Softmax, or with `log` LogSoftmax; each backward reads only the output.
class SoftmaxKernel final : public OpKernel {
 public:
  SoftmaxKernel(const kernels::SoftmaxDims& dims, bool log) : dims_(dims), log_(log) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    if (log_) return kernels::log_softmax(dims_, inputs[0].data<float>(), outputs[0].data<float>());
    kernels::softmax(dims_, inputs[0].data<float>(), outputs[0].data<float>());
  }
  bool differentiable_input(size_t index) const override { return index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kEverything};
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> outputs,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    const float* y = outputs[0].data<float>();
    const float* dy = grad_outputs[0].data<float>();
    float* dx = grad_inputs[0].data<float>();
    if (log_) return kernels::log_softmax_backward(dims_, y, dy, dx);
    kernels::softmax_backward(dims_, y, dy, dx);
  }

 private:
  kernels::SoftmaxDims dims_;
  bool log_;
};

std::vector<TensorInfo> infer_softmax(const Node& node, std::span<const InputInfo> inputs) {
  setup_softmax(node, inputs);
  return one_output(node, inputs[0].shape);
}

template <bool kLog>
std::unique_ptr<OpKernel> create_softmax(const Node& node, std::span<const InputInfo> inputs,
                                         std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<SoftmaxKernel>(setup_softmax(node, inputs), kLog);
}

// ---------------------------------------------------------------------------------------------
// MaxPool, AveragePool

// A 3-D pool is separable: the window is a box, so its maximum (or its sum, and the count of
// taps an average divides by) is that over the depth taps of each height-width position, then
// over the planes. `depth` pools [N, C, D, H·W] along D (a 2-D pool of one-column windows);
// `geometry` then pools the N·C·D_out planes [H, W]. The average's two divisions round twice
// where ONNX Runtime's one does once.
struct PoolSetup {
  kernels::PoolGeometry geometry;
  std::optional<kernels::PoolGeometry> depth;
  Shape out_shape;
};

PoolSetup setup_pool(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  if (rank < 3) fail_node(node, "input X of rank >= 3 (N, C, spatial...)", shape_str(x.shape));
  if (rank > 5) fail_unsupported(node, "1-D, 2-D or 3-D pooling", "input " + shape_str(x.shape));
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
  if (spatial == 3) {
    const std::span<const int64_t> in = spatial_of(x.shape);
    kernels::PoolGeometry d;
    d.batch = x.shape[0];
    d.channels = x.shape[1];
    d.in_h = in[0];
    d.in_w = in[1] * in[2];
    d.out_h = win.out[0];
    d.out_w = d.in_w;
    d.kernel_h = win.kernel[0];
    d.stride_h = win.strides[0];
    d.dilation_h = win.dilations[0];
    d.pad_top = win.pad_begin[0];
    d.pad_bottom = win.pad_end[0];
    s.depth = d;
    const Window plane = dense::without_first_axis(win);
    g.channels = x.shape[1] * win.out[0];
    fill_window_2d(plane, in.subspan(1), g);
    g.pad_bottom = plane.pad_end[0];
    g.pad_right = plane.pad_end[1];
  } else {
    fill_window_2d(win, spatial_of(x.shape), g);
    const bool one_d = spatial == 1;
    g.pad_bottom = one_d ? 0 : win.pad_end[0];
    g.pad_right = win.pad_end[one_d ? 0 : 1];
  }
  s.out_shape = {x.shape[0], x.shape[1]};
  s.out_shape.insert(s.out_shape.end(), win.out.begin(), win.out.end());
  return s;
}

std::vector<TensorInfo> infer_max_pool(const Node& node, std::span<const InputInfo> inputs) {
  PoolSetup s = setup_pool(node, inputs);
  bool_attr(node, "storage_order", 0);
  if (s.depth && output_used(node, 1)) {
    fail_unsupported(node, "MaxPool's Indices output of a 1-D or 2-D pool",
                     "a 3-D pool of " + shape_str(inputs[0].shape));
  }
  std::vector<TensorInfo> out = one_output(node, s.out_shape);
  if (out.size() > 1) out[1] = {DType::kInt64, s.out_shape};
  return out;
}

// The floats of a 3-D pool's depth pass output [N, C, D_out, H·W] (0 for other pools).
size_t depth_floats(const std::optional<kernels::PoolGeometry>& depth) {
  return depth ? static_cast<size_t>(depth->batch * depth->channels * depth->out_h * depth->out_w)
               : 0;
}

class MaxPoolKernel final : public OpKernel {
 public:
  MaxPoolKernel(const PoolSetup& s, bool want_indices, kernels::IndexOrder order)
      : geometry_(s.geometry), depth_(s.depth), want_indices_(want_indices), order_(order) {}
  size_t workspace_bytes() const override { return depth_floats(depth_) * sizeof(float); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    if (depth_) {  // over the depth taps into the workspace, then over the planes
      auto* d = reinterpret_cast<float*>(workspace);
      kernels::max_pool2d(*depth_, inputs[0].data<float>(), d, nullptr, order_);
      kernels::max_pool2d(geometry_, d, outputs[0].data<float>(), nullptr, order_);
      return;
    }
    int64_t* indices = want_indices_ && outputs.size() > 1 && outputs[1].defined()
                           ? outputs[1].data<int64_t>()
                           : nullptr;
    kernels::max_pool2d(geometry_, inputs[0].data<float>(), outputs[0].data<float>(), indices,
                        order_);
    if (taps_) kernels::max_pool2d_taps(geometry_, inputs[0].data<float>(), taps_);
  }
  bool differentiable_input(size_t index) const override { return index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
  // Or, as a record: which tap of each window receives the gradient, one byte per output (a
  // quarter of the input's elements at stride 2), so that the input need not be kept.
  Record record() const override {
    if (depth_ || !kernels::max_pool2d_has_taps(geometry_)) return {};
    const int64_t outputs =
        geometry_.batch * geometry_.channels * geometry_.out_h * geometry_.out_w;
    if (outputs == 0) return {};
    return {.bytes = static_cast<size_t>(outputs),
            .reads = {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing}};
  }
  void keep_record(std::byte* storage) override { taps_ = reinterpret_cast<uint8_t*>(storage); }
  size_t backward_workspace_bytes() const override {
    return 2 * depth_floats(depth_) * sizeof(float);
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    if (depth_) {  // the depth pass again, then the planes' backward and the depth's
      auto* d = reinterpret_cast<float*>(workspace);
      float* dd = d + depth_floats(depth_);
      kernels::max_pool2d(*depth_, inputs[0].data<float>(), d, nullptr, order_);
      kernels::max_pool2d_backward(geometry_, d, grad_outputs[0].data<float>(), dd);
      kernels::max_pool2d_backward(*depth_, inputs[0].data<float>(), dd,
                                   grad_inputs[0].data<float>());
      return;
    }
    if (taps_) {
      kernels::max_pool2d_backward_from_taps(geometry_, taps_, grad_outputs[0].data<float>(),
                                             grad_inputs[0].data<float>());
      return;
    }
    kernels::max_pool2d_backward(geometry_, inputs[0].data<float>(), grad_outputs[0].data<float>(),
                                 grad_inputs[0].data<float>());
  }

 private:
  kernels::PoolGeometry geometry_;
  std::optional<kernels::PoolGeometry> depth_;
  bool want_indices_;
  kernels::IndexOrder order_;
  uint8_t* taps_ = nullptr;  // the kept record
};

std::unique_ptr<OpKernel> create_max_pool(const Node& node, std::span<const InputInfo> inputs,
                                          std::span<const TensorInfo> /*outputs*/) {
  infer_max_pool(node, inputs);
  const auto order = node.attr_int("storage_order", 0) == 0 ? kernels::IndexOrder::kRowMajor
                                                            : kernels::IndexOrder::kColumnMajor;
  return std::make_unique<MaxPoolKernel>(setup_pool(node, inputs), output_used(node, 1), order);
}

class AveragePoolKernel final : public OpKernel {
 public:
  AveragePoolKernel(const PoolSetup& s, kernels::PadCounting counting)
      : geometry_(s.geometry), depth_(s.depth), counting_(counting) {}
  size_t workspace_bytes() const override { return depth_floats(depth_) * sizeof(float); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    if (depth_) {  // over the depth taps into the workspace, then over the planes
      auto* d = reinterpret_cast<float*>(workspace);
      kernels::average_pool2d(*depth_, counting_, inputs[0].data<float>(), d);
      kernels::average_pool2d(geometry_, counting_, d, outputs[0].data<float>());
      return;
    }
    kernels::average_pool2d(geometry_, counting_, inputs[0].data<float>(),
                            outputs[0].data<float>());
  }
  bool differentiable_input(size_t index) const override { return index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
  size_t backward_workspace_bytes() const override { return depth_floats(depth_) * sizeof(float); }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    if (depth_) {
      auto* dd = reinterpret_cast<float*>(workspace);
      kernels::average_pool2d_backward(geometry_, counting_, grad_outputs[0].data<float>(), dd);
      kernels::average_pool2d_backward(*depth_, counting_, dd, grad_inputs[0].data<float>());
      return;
    }
    kernels::average_pool2d_backward(geometry_, counting_, grad_outputs[0].data<float>(),
                                     grad_inputs[0].data<float>());
  }

 private:
  kernels::PoolGeometry geometry_;
  std::optional<kernels::PoolGeometry> depth_;
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
  return std::make_unique<AveragePoolKernel>(setup_pool(node, inputs), counting);
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
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
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
// `integers`: int64 and int32 data too (ReduceMax and ReduceMin of sizes and counts; ReduceSum,
// ReduceProd, ReduceL1 and ReduceSumSquare of a mask's tokens).
ReduceSetup setup_reduce(const Node& node, std::span<const InputInfo> inputs,
                         bool integers = false) {
  const bool integer_data = integers && !inputs.empty() && inputs[0].present &&
                            (inputs[0].dtype == DType::kInt64 || inputs[0].dtype == DType::kInt32);
  const InputInfo& x = integer_data ? inputs[0] : float_input(node, inputs, 0, "data");
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
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
  }
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

// ReduceSum (axes an input from opset 13) and the other Reduce ops (axes an input from opset 18),
// on the setup of ReduceMean. ReduceMax's and ReduceMin's gradient goes to the extrema, shared
// evenly among ties; ReduceL2's is dy · x / ‖x‖, 0 where the norm is 0; ReduceL1's dy · sign(x);
// ReduceProd's dy times the product of the other values.
class ReduceKernel final : public OpKernel {
 public:
  enum class Kind { kSum, kMax, kMin, kL1, kL2, kSumSquare, kProd, kLogSum, kLogSumExp };
  // dtype: float32, or for the kinds of takes_integers also int64 and int32 (sizes and counts;
  // no gradient).
  ReduceKernel(const kernels::ReducePlan& plan, Kind kind, DType dtype)
      : plan_(plan), kind_(kind), dtype_(dtype) {}
  static constexpr bool takes_integers(Kind kind) {
    return kind == Kind::kSum || kind == Kind::kMax || kind == Kind::kMin || kind == Kind::kL1 ||
           kind == Kind::kSumSquare || kind == Kind::kProd;
  }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    if (dtype_ == DType::kInt64) return integer<int64_t>(inputs[0], outputs[0]);
    if (dtype_ == DType::kInt32) return integer<int32_t>(inputs[0], outputs[0]);
    const float* x = inputs[0].data<float>();
    float* y = outputs[0].data<float>();
    switch (kind_) {
      case Kind::kSum:
        return kernels::reduce_sum(plan_, x, y);
      case Kind::kMax:
        return kernels::reduce_max(plan_, x, y);
      case Kind::kMin:
        return kernels::reduce_min(plan_, x, y);
      case Kind::kL1:
        return kernels::reduce_l1(plan_, x, y);
      case Kind::kL2:
        return kernels::reduce_l2(plan_, x, y);
      case Kind::kSumSquare:
        return kernels::reduce_sum_square(plan_, x, y);
      case Kind::kProd:
        return kernels::reduce_prod(plan_, x, y);
      case Kind::kLogSum:
        return kernels::reduce_log_sum(plan_, x, y);
      case Kind::kLogSumExp:
        return kernels::reduce_log_sum_exp(plan_, x, y);
    }
  }
  bool differentiable_input(size_t index) const override {
    return index == 0 && dtype_ == DType::kFloat32;
  }
  BackwardReads backward_reads() const override {
    // Input 0 (x) and output 0 (y), as each backward reads them.
    switch (kind_) {
      case Kind::kSum:
        return {.inputs = BackwardReads::kNothing, .outputs = BackwardReads::kNothing};
      case Kind::kL1:
      case Kind::kSumSquare:
      case Kind::kLogSum:
        return {.inputs = 1, .outputs = BackwardReads::kNothing};
      default:
        return {.inputs = 1, .outputs = 1};
    }
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> outputs,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    const float* dy = grad_outputs[0].data<float>();
    float* dx = grad_inputs[0].data<float>();
    if (kind_ == Kind::kSum) return kernels::reduce_sum_backward(plan_, dy, dx);
    const float* x = inputs[0].data<float>();
    switch (kind_) {
      case Kind::kL1:
        return kernels::reduce_l1_backward(plan_, x, dy, dx);
      case Kind::kSumSquare:
        return kernels::reduce_sum_square_backward(plan_, x, dy, dx);
      case Kind::kLogSum:
        return kernels::reduce_log_sum_backward(plan_, x, dy, dx);
      default:
        break;
    }
    const float* y = outputs[0].data<float>();
    switch (kind_) {
      case Kind::kMax:
      case Kind::kMin:
        return kernels::reduce_max_backward(plan_, x, y, dy, dx);
      case Kind::kL2:
        return kernels::reduce_l2_backward(plan_, x, y, dy, dx);
      case Kind::kProd:
        return kernels::reduce_prod_backward(plan_, x, y, dy, dx);
      default:
        return kernels::reduce_log_sum_exp_backward(plan_, x, y, dy, dx);
    }
  }

 private:
  template <class T>
  void integer(const Tensor& x, Tensor& y) const {
    switch (kind_) {
      case Kind::kSum:
        return kernels::reduce_sum(plan_, x.data<T>(), y.data<T>());
      case Kind::kMax:
        return kernels::reduce_max(plan_, x.data<T>(), y.data<T>());
      case Kind::kMin:
        return kernels::reduce_min(plan_, x.data<T>(), y.data<T>());
      case Kind::kL1:
        return kernels::reduce_l1(plan_, x.data<T>(), y.data<T>());
      case Kind::kSumSquare:
        return kernels::reduce_sum_square(plan_, x.data<T>(), y.data<T>());
      case Kind::kProd:
        return kernels::reduce_prod(plan_, x.data<T>(), y.data<T>());
      default:
        throw_internal("ReduceKernel: integer data for a float-only reduction");
    }
  }

  kernels::ReducePlan plan_;
  Kind kind_;
  DType dtype_;
};

// CumSum: running sums along one axis (input 1, a constant scalar), of float32 (with its
// gradient), int32 or int64 (RoBERTa's position ids count the tokens of the mask this way).
struct CumSumSetup {
  int64_t outer = 1, n = 1, inner = 1;
  bool exclusive = false, reverse = false;
};

CumSumSetup setup_cumsum(const Node& node, std::span<const InputInfo> inputs) {
  if (inputs.empty() || !inputs[0].present) fail_node(node, "input 0", "none");
  const InputInfo& x = inputs[0];
  if (x.dtype != DType::kFloat32 && x.dtype != DType::kInt32 && x.dtype != DType::kInt64) {
    fail_node(node, "float32, int32 or int64 data", kernels::dtype_name(x.dtype));
  }
  if (x.shape.empty()) fail_node(node, "data of rank >= 1", shape_str(x.shape));
  if (inputs.size() < 2 || !inputs[1].present || !inputs[1].constant) {
    fail_node(node, "axis (input 1) as a constant", "a computed value");
  }
  const InputInfo& axis = inputs[1];
  if ((axis.dtype != DType::kInt64 && axis.dtype != DType::kInt32) || axis.constant->numel() != 1 ||
      axis.shape.size() > 1) {
    fail_node(node, "axis (input 1) as one int32 or int64 value",
              kernels::dtype_name(axis.dtype) + shape_str(axis.shape));
  }
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  const auto a =
      static_cast<size_t>(normalize_axis(node, axis.constant->to_int64_vector()[0], rank, "axis"));
  CumSumSetup s;
  for (size_t d = 0; d < a; ++d) s.outer *= x.shape[d];
  s.n = x.shape[a];
  for (size_t d = a + 1; d < x.shape.size(); ++d) s.inner *= x.shape[d];
  s.exclusive = bool_attr(node, "exclusive", 0) != 0;
  s.reverse = bool_attr(node, "reverse", 0) != 0;
  return s;
}

class CumSumKernel final : public OpKernel {
 public:
  CumSumKernel(const CumSumSetup& s, DType dtype) : s_(s), dtype_(dtype) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    switch (dtype_) {
      case DType::kFloat32:
        run(inputs[0].data<float>(), outputs[0].data<float>());
        break;
      case DType::kInt32:
        run(inputs[0].data<int32_t>(), outputs[0].data<int32_t>());
        break;
      default:
        run(inputs[0].data<int64_t>(), outputs[0].data<int64_t>());
        break;
    }
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
    float* dx = grad_data(grad_inputs, 0);
    if (!dx) return;
    kernels::cumulative_sum_backward(grad_outputs[0].data<float>(), s_.outer, s_.n, s_.inner,
                                     s_.exclusive, s_.reverse, dx);
  }

 private:
  template <typename T>
  void run(const T* x, T* y) const {
    kernels::cumulative_sum(x, s_.outer, s_.n, s_.inner, s_.exclusive, s_.reverse, y);
  }
  CumSumSetup s_;
  DType dtype_;
};

std::vector<TensorInfo> infer_cumsum(const Node& node, std::span<const InputInfo> inputs) {
  setup_cumsum(node, inputs);
  std::vector<TensorInfo> out(std::max<size_t>(node.num_outputs(), 1));
  out[0] = {inputs[0].dtype, inputs[0].shape};
  return out;
}

std::unique_ptr<OpKernel> create_cumsum(const Node& node, std::span<const InputInfo> inputs,
                                        std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<CumSumKernel>(setup_cumsum(node, inputs), inputs[0].dtype);
}

std::vector<TensorInfo> infer_reduce(const Node& node, std::span<const InputInfo> inputs) {
  return one_output(node, setup_reduce(node, inputs).out_shape);
}

// ReduceSum, ReduceMax, ReduceMin, ReduceL1, ReduceSumSquare and ReduceProd: of float32 data, or
// of int64 and int32 (the output in its type).
std::vector<TensorInfo> infer_reduce_integers(const Node& node, std::span<const InputInfo> inputs) {
  std::vector<TensorInfo> out = one_output(node, setup_reduce(node, inputs, true).out_shape);
  out[0].dtype = inputs[0].dtype;
  return out;
}

// The Reduce ops on their setup; a maximum or minimum over an empty axis has no value.
template <ReduceKernel::Kind kKind>
std::unique_ptr<OpKernel> create_reduce(const Node& node, std::span<const InputInfo> inputs,
                                        std::span<const TensorInfo> /*outputs*/) {
  constexpr bool kExtremum = kKind == ReduceKernel::Kind::kMax || kKind == ReduceKernel::Kind::kMin;
  const ReduceSetup s = setup_reduce(node, inputs, ReduceKernel::takes_integers(kKind));
  const Shape& x = inputs[0].shape;
  if constexpr (kExtremum) {
    for (int64_t a : s.axes) {
      if (x[static_cast<size_t>(a)] == 0) {
        fail_node(node, "nonempty reduced axes", shape_str(x));
      }
    }
  }
  return std::make_unique<ReduceKernel>(kernels::plan_reduce(x, s.axes), kKind, inputs[0].dtype);
}

// ---------------------------------------------------------------------------------------------
// ArgMax and ArgMin: int64 indices along `axis` (keepdims, select_last_index). Not
// differentiable: their output is an integer, which no gradient reaches.

struct ArgMaxSetup {
  int64_t outer = 1;
  int64_t axis_dim = 1;
  int64_t inner = 1;
  bool select_last = false;
  Shape out_shape;
};

ArgMaxSetup setup_arg_max(const Node& node, std::span<const InputInfo> inputs) {
  if (inputs.empty() || !inputs[0].present) fail_node(node, "input 0", "none");
  const InputInfo& x = inputs[0];
  if (x.dtype != DType::kFloat32 && x.dtype != DType::kInt32 && x.dtype != DType::kInt64) {
    fail_node(node, "float32, int32 or int64 data", kernels::dtype_name(x.dtype));
  }
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
  // min: ArgMin's index of the smallest value.
  ArgMaxKernel(const ArgMaxSetup& s, DType dtype, bool min) : s_(s), dtype_(dtype), min_(min) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    switch (dtype_) {
      case DType::kFloat32:
        run(inputs[0].data<float>(), outputs[0]);
        break;
      case DType::kInt32:
        run(inputs[0].data<int32_t>(), outputs[0]);
        break;
      default:
        run(inputs[0].data<int64_t>(), outputs[0]);
        break;
    }
  }

 private:
  template <typename T>
  void run(const T* x, Tensor& y) const {
    if (min_) {
      kernels::arg_min(x, s_.outer, s_.axis_dim, s_.inner, s_.select_last, y.data<int64_t>());
    } else {
      kernels::arg_max(x, s_.outer, s_.axis_dim, s_.inner, s_.select_last, y.data<int64_t>());
    }
  }
  ArgMaxSetup s_;
  DType dtype_;
  bool min_;
};

std::unique_ptr<OpKernel> create_arg_max(const Node& node, std::span<const InputInfo> inputs,
                                         std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ArgMaxKernel>(setup_arg_max(node, inputs), inputs[0].dtype,
                                        node.op_type() == "ArgMin");
}

// ---------------------------------------------------------------------------------------------
// TopK (opset 11's form: K a constant input, axis, largest, sorted): the values, best first, and
// their int64 indices; the gradient of the values goes back to the positions they came from.
// sorted = 0 leaves the order to the runtime; qforge sorts either way.

struct TopKSetup {
  int64_t outer = 1, n = 1, inner = 1, k = 0;
  bool largest = true;
  Shape out_shape;
};

TopKSetup setup_top_k(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  if (rank == 0) fail_node(node, "an input of rank >= 1", "a scalar");
  if (inputs.size() < 2 || !inputs[1].present || !inputs[1].constant) {
    fail_node(node, "K (input 1) as a constant", "a computed value");
  }
  const InputInfo& k = inputs[1];
  if (k.dtype != DType::kInt64 || k.constant->numel() != 1) {
    fail_node(node, "K (input 1) as one int64 value",
              kernels::dtype_name(k.dtype) + shape_str(k.shape));
  }
  const auto axis =
      static_cast<size_t>(normalize_axis(node, node.attr_int("axis", -1), rank, "axis"));
  TopKSetup s;
  s.k = k.constant->to_int64_vector()[0];
  s.n = x.shape[axis];
  if (s.k < 0 || s.k > s.n) {
    fail_node(node, "K in [0, " + std::to_string(s.n) + "] (the axis' size)", std::to_string(s.k));
  }
  s.largest = bool_attr(node, "largest", 1) != 0;
  bool_attr(node, "sorted", 1);
  for (size_t a = 0; a < axis; ++a) s.outer *= x.shape[a];
  for (size_t a = axis + 1; a < x.shape.size(); ++a) s.inner *= x.shape[a];
  s.out_shape = x.shape;
  s.out_shape[axis] = s.k;
  return s;
}

std::vector<TensorInfo> infer_top_k(const Node& node, std::span<const InputInfo> inputs) {
  const TopKSetup s = setup_top_k(node, inputs);
  return {{DType::kFloat32, s.out_shape}, {DType::kInt64, s.out_shape}};
}

class TopKKernel final : public OpKernel {
 public:
  explicit TopKKernel(const TopKSetup& s) : s_(s) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    kernels::top_k(inputs[0].data<float>(), s_.outer, s_.n, s_.inner, s_.k, s_.largest,
                   outputs[0].data<float>(), outputs[1].data<int64_t>());
  }
  bool differentiable_input(size_t index) const override { return index == 0; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kNothing, .outputs = uint64_t{1} << 1};  // the indices
  }
  void backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> outputs,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    float* dx = grad_data(grad_inputs, 0);
    if (!dx) return;
    if (grad_outputs.empty() || !grad_outputs[0].defined()) {  // no gradient reached the values
      std::fill_n(dx, s_.outer * s_.n * s_.inner, 0.0f);
      return;
    }
    kernels::top_k_backward(outputs[1].data<int64_t>(), grad_outputs[0].data<float>(), s_.outer,
                            s_.n, s_.inner, s_.k, dx);
  }

 private:
  TopKSetup s_;
};

std::unique_ptr<OpKernel> create_top_k(const Node& node, std::span<const InputInfo> inputs,
                                       std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<TopKKernel>(setup_top_k(node, inputs));
}

}  // namespace

void register_pool_ops(OpRegistry& registry) {
  registry.add({"MaxPool", infer_max_pool, create_max_pool});
  registry.add({"AveragePool", infer_average_pool, create_average_pool});
  registry.add({"GlobalAveragePool", infer_global_average_pool, create_global_average_pool});
  registry.add({"ReduceMean", infer_reduce_mean, create_reduce_mean});
  registry.add({"ReduceSum", infer_reduce_integers, create_reduce<ReduceKernel::Kind::kSum>});
  registry.add({"ReduceMax", infer_reduce_integers, create_reduce<ReduceKernel::Kind::kMax>});
  registry.add({"ReduceL2", infer_reduce, create_reduce<ReduceKernel::Kind::kL2>});
  registry.add({"ReduceMin", infer_reduce_integers, create_reduce<ReduceKernel::Kind::kMin>});
  registry.add({"ReduceL1", infer_reduce_integers, create_reduce<ReduceKernel::Kind::kL1>});
  registry.add(
      {"ReduceSumSquare", infer_reduce_integers, create_reduce<ReduceKernel::Kind::kSumSquare>});
  registry.add({"ReduceProd", infer_reduce_integers, create_reduce<ReduceKernel::Kind::kProd>});
  registry.add({"ReduceLogSum", infer_reduce, create_reduce<ReduceKernel::Kind::kLogSum>});
  registry.add({"ReduceLogSumExp", infer_reduce, create_reduce<ReduceKernel::Kind::kLogSumExp>});
  registry.add({"CumSum", infer_cumsum, create_cumsum});
  registry.add({"ArgMax", infer_arg_max, create_arg_max});
  registry.add({"ArgMin", infer_arg_max, create_arg_max});
  registry.add({"TopK", infer_top_k, create_top_k});
  registry.add({"Softmax", infer_softmax, create_softmax<false>});
  registry.add({"LogSoftmax", infer_softmax, create_softmax<true>});
}

}  // namespace qforge::runtime::ops
