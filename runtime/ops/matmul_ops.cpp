// Gemm and MatMul with broadcasting: shape inference, kernels with their backward.
#include "runtime/ops/activation.h"
#include "runtime/ops/dense_common.h"
#include "runtime/prepared_weights.h"

namespace qforge::runtime::ops {
namespace {

using dense::bool_attr;
using dense::float_input;
using dense::one_output;
using dense::optional_float_input;
using graph::Node;
using kernels::shape_numel;
using kernels::shape_str;

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

// What a GEMM's prepared weights depend on besides the values: the packing of the k × n matrix
// B, transposed or not (kernels::prepare_gemm_weights).
std::array<int64_t, 3> form_of(const kernels::GemmDims& d) {
  return {d.k, d.n, d.trans_b == kernels::Transpose::kYes ? 1 : 0};
}

class GemmKernel final : public OpKernel {
 public:
  // A constant B is packed for the micro-kernel once, here (when that path applies).
  GemmKernel(const kernels::GemmDims& dims, const Tensor* constant_weights) : dims_(dims) {
    const size_t floats = kernels::gemm_prepared_weight_floats(dims_);
    if (constant_weights && floats > 0) {
      const float* b = constant_weights->data<float>();
      prepared_ = prepared_weights(b, floats, form_of(dims_), [&](float* out) {
        kernels::prepare_gemm_weights(dims_, b, out);
      });
    }
  }
  size_t workspace_bytes() const override {
    return kernels::gemm_workspace_bytes(
        dims_, !prepared_ ? kernels::GemmWeightForm::kRaw : kernels::GemmWeightForm::kPrepared);
  }
  bool reads_input(size_t index) const override { return index != 1 || !prepared_; }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const float* c = dims_.bias != kernels::GemmBias::kNone ? inputs[2].data<float>() : nullptr;
    kernels::gemm(dims_, inputs[0].data<float>(), inputs[1].data<float>(), c,
                  outputs[0].data<float>(), workspace, prepared_ ? prepared_->data() : nullptr);
  }
  bool differentiable_input(size_t index) const override {
    return index <= 1 || (index == 2 && dims_.bias != kernels::GemmBias::kNone);
  }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
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
  PreparedWeights prepared_;  // shared with the executor's other readers of the constant
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

// MatMul, and the runtime's MatMulAdd (runtime/fuse_epilogues.h): A, B and a row C of B's width,
// added to every row of the product with the bits of a separate Add.
class MatMulKernel final : public OpKernel {
 public:
  // A constant B shared by every matrix of A (a Linear layer's weight) is packed for the
  // micro-kernel once, here (when that path applies).
  MatMulKernel(kernels::MatMulDims dims, const Tensor* constant_weights, bool add_row = false,
               const ActivationSpec& activation = {})
      : dims_(std::move(dims)), add_row_(add_row) {
    if (activation.kind != ActivationKind::kNone) {
      activation_ = unary_op_of(activation.kind);
      activation_params_ = activation.params;
    }
    const size_t floats = kernels::matmul_prepared_weight_floats(dims_);
    if (constant_weights && floats > 0) {
      const float* b = constant_weights->data<float>();
      prepared_ =
          prepared_weights(b, floats, form_of(kernels::matmul_folded_gemm(dims_)),
                           [&](float* out) { kernels::prepare_matmul_weights(dims_, b, out); });
    }
  }
  size_t workspace_bytes() const override {
    return kernels::matmul_workspace_bytes(
        dims_, !prepared_ ? kernels::GemmWeightForm::kRaw : kernels::GemmWeightForm::kPrepared);
  }
  bool reads_input(size_t index) const override { return index != 1 || !prepared_; }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const float* prepared = prepared_ ? prepared_->data() : nullptr;
    if (add_row_) {
      kernels::matmul_add_row(dims_, inputs[0].data<float>(), inputs[1].data<float>(),
                              inputs[2].data<float>(), outputs[0].data<float>(), workspace,
                              prepared, activation_, activation_params_);
      return;
    }
    kernels::matmul(dims_, inputs[0].data<float>(), inputs[1].data<float>(),
                    outputs[0].data<float>(), workspace, prepared);
  }
  // A and B; MatMulAdd, an inference-only node, has no backward.
  bool differentiable_input(size_t index) const override { return !add_row_ && index <= 1; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
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
  bool add_row_;
  std::optional<kernels::UnaryOp> activation_;  // MatMulAdd's, after the row
  kernels::UnaryParams activation_params_;
  PreparedWeights prepared_;  // shared with the executor's other readers of the constant
};

std::vector<TensorInfo> infer_matmul(const Node& node, std::span<const InputInfo> inputs) {
  return one_output(node, setup_matmul(node, inputs).out_shape);
}

std::unique_ptr<OpKernel> create_matmul(const Node& node, std::span<const InputInfo> inputs,
                                        std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<MatMulKernel>(setup_matmul(node, inputs), inputs[1].constant);
}

// MatMulAdd's row: C holds one value per column of the product ([N], or [1, ..., 1, N] of at
// most the output's rank), so that adding it to every row is the Add it replaced. Its
// `activation` attributes (a module's) name the activation node it also replaced, if any.
kernels::MatMulDims setup_matmul_add(const Node& node, std::span<const InputInfo> inputs) {
  kernels::MatMulDims dims = setup_matmul(node, inputs);
  const InputInfo& c = float_input(node, inputs, 2, "C");
  const bool row = !c.shape.empty() && c.shape.back() == dims.n &&
                   c.shape.size() <= dims.out_shape.size() && shape_numel(c.shape) == dims.n &&
                   !dims.out_shape.empty() && dims.out_shape.back() == dims.n;
  if (!row) {
    fail_node(node, "C of shape [" + std::to_string(dims.n) + "] (one value per output column)",
              shape_str(c.shape));
  }
  return dims;
}

std::vector<TensorInfo> infer_matmul_add(const Node& node, std::span<const InputInfo> inputs) {
  activation_of(node);  // an unknown activation is an error here, before any run
  return one_output(node, setup_matmul_add(node, inputs).out_shape);
}

std::unique_ptr<OpKernel> create_matmul_add(const Node& node, std::span<const InputInfo> inputs,
                                            std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<MatMulKernel>(setup_matmul_add(node, inputs), inputs[1].constant, true,
                                        activation_of(node));
}

}  // namespace

void register_matmul_ops(OpRegistry& registry) {
  registry.add({"Gemm", infer_gemm, create_gemm});
  registry.add({"MatMul", infer_matmul, create_matmul});
  registry.add({"MatMulAdd", infer_matmul_add, create_matmul_add});
}

}  // namespace qforge::runtime::ops
