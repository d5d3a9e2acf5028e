// Small ONNX models written directly as protobuf, for tests of the qforge program.
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <string>
#include <vector>

namespace qforge::testing {

// A one-node model: input x -> op_type -> y, x and y of `shape` (a negative dim is dynamic).
inline std::string one_node_model(const std::string& op_type, const std::string& node_name,
                                  const std::vector<int64_t>& shape = {1, 4}) {
  onnx::ModelProto model;
  model.set_ir_version(8);
  auto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(17);
  auto* g = model.mutable_graph();
  g->set_name("one_node");
  auto add_io = [&](onnx::ValueInfoProto* v, const char* name) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t d : shape) {
      auto* dim = t->mutable_shape()->add_dim();
      if (d < 0) {
        dim->set_dim_param("N");
      } else {
        dim->set_dim_value(d);
      }
    }
  };
  add_io(g->add_input(), "x");
  add_io(g->add_output(), "y");
  auto* n = g->add_node();
  n->set_op_type(op_type);
  n->set_name(node_name);
  n->add_input("x");
  n->add_output("y");
  return model.SerializeAsString();
}

}  // namespace qforge::testing
