// Small ONNX models written directly as protobuf, for tests of the qforge program.
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
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

// A dimension written as the symbolic "N" by node_model.
inline constexpr int64_t kSymbolicDim = std::numeric_limits<int64_t>::min();

// One node of `op_type` reading input x of `input_shape` (kSymbolicDim: "N"; any other value,
// zero and negative ones included, is written as it is) and, when `weight_shape` is given, a
// float initializer w of that shape (zeros) as its second input; integer attributes as given.
// Output y is declared with the input's rank, every dim symbolic. For models that break a rule on
// purpose.
struct NodeModelSpec {
  std::string op_type = "Conv";
  std::string node_name = "conv";
  std::vector<int64_t> input_shape = {kSymbolicDim, 3, 8, 8};
  std::optional<std::vector<int64_t>> weight_shape;
  std::vector<std::pair<std::string, std::vector<int64_t>>> ints_attributes;
  std::vector<std::pair<std::string, int64_t>> int_attributes;
};

inline std::string node_model(const NodeModelSpec& spec) {
  onnx::ModelProto model;
  model.set_ir_version(8);
  auto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(17);
  auto* g = model.mutable_graph();
  g->set_name("node_model");
  auto* x = g->add_input();
  x->set_name("x");
  auto* xt = x->mutable_type()->mutable_tensor_type();
  xt->set_elem_type(onnx::TensorProto::FLOAT);
  for (int64_t d : spec.input_shape) {
    auto* dim = xt->mutable_shape()->add_dim();
    if (d == kSymbolicDim) {
      dim->set_dim_param("N");
    } else {
      dim->set_dim_value(d);
    }
  }
  auto* y = g->add_output();
  y->set_name("y");
  auto* yt = y->mutable_type()->mutable_tensor_type();
  yt->set_elem_type(onnx::TensorProto::FLOAT);
  for (size_t i = 0; i < spec.input_shape.size(); ++i) {
    std::string name = "y";  // appended: GCC 12 warns falsely (-Wrestrict) on "y" + string
    yt->mutable_shape()->add_dim()->set_dim_param(name.append(std::to_string(i)));
  }
  auto* n = g->add_node();
  n->set_op_type(spec.op_type);
  n->set_name(spec.node_name);
  n->add_input("x");
  if (spec.weight_shape) {
    auto* w = g->add_initializer();
    w->set_name("w");
    w->set_data_type(onnx::TensorProto::FLOAT);
    int64_t count = 1;
    for (int64_t d : *spec.weight_shape) {
      w->add_dims(d);
      count *= d;
    }
    w->set_raw_data(std::string(static_cast<size_t>(count) * sizeof(float), '\0'));
    n->add_input("w");
  }
  n->add_output("y");
  for (const auto& [name, values] : spec.ints_attributes) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t v : values) a->add_ints(v);
  }
  for (const auto& [name, value] : spec.int_attributes) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(value);
  }
  return model.SerializeAsString();
}

}  // namespace qforge::testing
