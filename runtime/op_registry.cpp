// The built-in op registry.
#include "runtime/op_registry.h"

#include <algorithm>

#include "runtime/ops/ops.h"

namespace qforge::runtime {

void OpKernel::backward(std::span<const Tensor> /*inputs*/, std::span<const Tensor> /*outputs*/,
                        std::span<const Tensor> /*grad_outputs*/, std::span<Tensor> /*grad_inputs*/,
                        std::byte* /*workspace*/) {
  throw_internal("OpKernel: backward called on a kernel without one");
}

void OpKernel::forward_round(int /*round*/, std::span<const Tensor> /*inputs*/,
                             std::span<Tensor> /*outputs*/, const double* /*totals*/,
                             double* /*partial*/, int64_t /*total_batch*/) {
  throw_internal("OpKernel: forward_round called on a kernel that sums nothing over the batch");
}

void OpKernel::forward_finish(std::span<const Tensor> /*inputs*/, std::span<Tensor> /*outputs*/,
                              const double* /*totals*/, int64_t /*total_batch*/,
                              bool /*update_state*/) {
  throw_internal("OpKernel: forward_finish called on a kernel that sums nothing over the batch");
}

void OpKernel::backward_round(int /*round*/, std::span<const Tensor> /*inputs*/,
                              std::span<const Tensor> /*outputs*/,
                              std::span<const Tensor> /*grad_outputs*/, const double* /*totals*/,
                              double* /*partial*/, int64_t /*total_batch*/) {
  throw_internal("OpKernel: backward_round called on a kernel that sums nothing over the batch");
}

void OpKernel::backward_finish(std::span<const Tensor> /*inputs*/,
                               std::span<const Tensor> /*outputs*/,
                               std::span<const Tensor> /*grad_outputs*/,
                               std::span<Tensor> /*grad_inputs*/, const double* /*totals*/,
                               int64_t /*total_batch*/) {
  throw_internal("OpKernel: backward_finish called on a kernel that sums nothing over the batch");
}

void OpRegistry::add(OpDef def) {
  if (find(def.op_type)) throw_internal("OpRegistry: op '" + def.op_type + "' registered twice");
  if (!def.infer || !def.create) {
    throw_internal("OpRegistry: op '" + def.op_type + "' lacks infer or create");
  }
  defs_.push_back(std::move(def));
}

const OpDef* OpRegistry::find(std::string_view op_type) const {
  auto it = std::find_if(defs_.begin(), defs_.end(),
                         [&](const OpDef& d) { return d.op_type == op_type; });
  return it == defs_.end() ? nullptr : &*it;
}

std::vector<std::string> OpRegistry::op_types() const {
  std::vector<std::string> out;
  for (const auto& d : defs_) out.push_back(d.op_type);
  std::sort(out.begin(), out.end());
  return out;
}

const OpRegistry& builtin_ops() {
  static const OpRegistry registry = [] {
    OpRegistry r;
    ops::register_conv_ops(r);
    ops::register_matmul_ops(r);
    ops::register_norm_ops(r);
    ops::register_pool_ops(r);
    ops::register_elementwise_ops(r);
    ops::register_shape_ops(r);
    ops::register_quantize_ops(r);
    ops::register_fusion_module_ops(r);
    ops::register_attention_module_ops(r);
    ops::register_swin_ops(r);
    ops::register_act_add_ops(r);
    return r;
  }();
  return registry;
}

void fail_node(const graph::Node& node, const std::string& rule, const std::string& got) {
  throw_invalid("shape inference: " + node.label() + ": expected " + rule + ", got " + got);
}

}  // namespace qforge::runtime
