// A standard op run inside a module's kernel: the op as a one-node graph of its own, bound
// through the builtin registry, so that a module runs the very kernels (and validation) of the
// nodes it replaced.
#pragma once

#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/op_registry.h"

namespace qforge::runtime::ops {

using Attributes = std::map<std::string, graph::AttributeValue, std::less<>>;

class SubKernel {
 public:
  // Shape inference only (no kernel is made).
  static std::vector<TensorInfo> infer(const std::string& op_type, Attributes attributes,
                                       std::span<const InputInfo> inputs) {
    SubKernel s(op_type, std::move(attributes), inputs);
    return s.outputs_;
  }

  // Infers and creates the kernel; `inputs` carry constants so the kernel may pre-pack them.
  static SubKernel create(const std::string& op_type, Attributes attributes,
                          std::span<const InputInfo> inputs) {
    SubKernel s(op_type, std::move(attributes), inputs);
    s.kernel_ = s.def_->create(*s.node_, inputs, s.outputs_);
    return s;
  }

  // Shape inference only, keeping the one-node graph: node() is the op as the kernel would see
  // it.
  static SubKernel describe(const std::string& op_type, Attributes attributes,
                            std::span<const InputInfo> inputs) {
    return SubKernel(op_type, std::move(attributes), inputs);
  }

  const graph::Node& node() const { return *node_; }
  const std::vector<TensorInfo>& outputs() const { return outputs_; }
  size_t workspace_bytes() const { return kernel_->workspace_bytes(); }
  bool reads_input(size_t index) const { return kernel_->reads_input(index); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs, std::byte* workspace) {
    kernel_->forward(inputs, outputs, workspace);
  }

 private:
  SubKernel(const std::string& op_type, Attributes attributes, std::span<const InputInfo> inputs)
      : graph_(std::make_unique<graph::Graph>()) {
    def_ = builtin_ops().find(op_type);
    if (!def_) throw_internal("module kernel: no runtime definition of " + op_type);
    graph::NodeSpec spec{.name = op_type, .op_type = op_type, .attributes = std::move(attributes)};
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!inputs[i].present) {
        spec.inputs.push_back(nullptr);
        continue;
      }
      std::string name = "input";
      name.append(std::to_string(i));
      spec.inputs.push_back(graph_->add_input(name, inputs[i].dtype, inputs[i].shape));
    }
    spec.output_names = {"output"};
    node_ = graph_->add_node(std::move(spec));
    outputs_ = def_->infer(*node_, inputs);
    outputs_.resize(1);
  }

  std::unique_ptr<graph::Graph> graph_;
  const graph::Node* node_ = nullptr;
  const OpDef* def_ = nullptr;
  std::unique_ptr<OpKernel> kernel_;
  std::vector<TensorInfo> outputs_;
};

}  // namespace qforge::runtime::ops
