// One ONNX node in a graph of its own, with the input descriptions its OpDef sees, for tests
// that drive builtin OpDefs directly (inference, kernel creation, forward).
#pragma once

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "graph/ir.h"
#include "runtime/op_registry.h"

namespace qforge::testing {

struct OpInput {
  kernels::Tensor value;  // undefined: an omitted optional input
  bool constant = false;  // an initializer: known when shapes are inferred, pre-processable
};

// Builds node "node" of `op_type` with inputs in0, in1, ... (constants or graph inputs) and
// outputs out0, out1, ...; throws when builtin_ops() has no OpDef for it.
class OneNodeGraph {
 public:
  OneNodeGraph(const std::string& op_type,
               const std::map<std::string, graph::AttributeValue, std::less<>>& attributes,
               const std::vector<OpInput>& inputs, size_t outputs)
      : inputs_(inputs) {
    graph::NodeSpec spec;
    spec.name = "node";
    spec.op_type = op_type;
    spec.attributes = attributes;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const OpInput& in = inputs[i];
      runtime::InputInfo info;
      if (!in.value.defined()) {
        spec.inputs.push_back(nullptr);
        infos_.push_back(info);
        continue;
      }
      std::string name("in");
      name.append(std::to_string(i));
      graph::Value* v = in.constant ? graph_.add_constant(name, in.value)
                                    : graph_.add_input(name, in.value.dtype(), in.value.shape());
      spec.inputs.push_back(v);
      info.present = true;
      info.dtype = in.value.dtype();
      info.shape = in.value.shape();
      info.constant = in.constant ? &v->constant() : nullptr;
      infos_.push_back(info);
    }
    for (size_t i = 0; i < outputs; ++i) {
      std::string name("out");
      name.append(std::to_string(i));
      spec.output_names.push_back(name);
    }
    node_ = graph_.add_node(std::move(spec));
    def_ = runtime::builtin_ops().find(op_type);
    if (!def_) {
      std::string message("no OpDef for ");
      message.append(op_type);
      throw std::runtime_error(message);
    }
  }

  std::vector<runtime::TensorInfo> infer() const { return def_->infer(*node_, infos_); }
  // The node's inference kernel, on the inferred output shapes.
  std::unique_ptr<runtime::OpKernel> create() const {
    std::vector<runtime::TensorInfo> outputs = infer();
    outputs.resize(node_->num_outputs());
    return def_->create(*node_, infos_, outputs);
  }

 protected:
  graph::Graph graph_;
  graph::Node* node_ = nullptr;
  const runtime::OpDef* def_ = nullptr;
  std::vector<OpInput> inputs_;
  std::vector<runtime::InputInfo> infos_;
};

}  // namespace qforge::testing
