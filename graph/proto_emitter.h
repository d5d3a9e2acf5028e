// Nodes that an import-time rewrite of a ModelProto writes: one node or value at a time under a
// stem (the rewritten node's name), with fresh value names and constants as Constant nodes.
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <string>
#include <vector>

#include "graph/proto_names.h"

namespace qforge::graph {

using Nodes = google::protobuf::RepeatedPtrField<onnx::NodeProto>;

// Emits nodes under one stem, with fresh value names.
class Emitter {
 public:
  Emitter(const std::string& stem, FreshValueNames& names, Nodes& out)
      : stem_(stem), names_(names), out_(out) {}

  // A node `op` named stem/suffix reading `inputs`, its output a fresh value (or `output`).
  onnx::NodeProto& node(const std::string& op, const std::string& suffix,
                        const std::vector<std::string>& inputs, const std::string& output = "") {
    onnx::NodeProto& n = *out_.Add();
    n.set_op_type(op);
    n.set_name(suffix.empty() ? stem_ : stem_ + "/" + suffix);
    for (const auto& i : inputs) n.add_input(i);
    n.add_output(output.empty() ? names_.take(stem_ + "/" + (suffix.empty() ? op : suffix))
                                : output);
    return n;
  }
  std::string value(const std::string& op, const std::string& suffix,
                    const std::vector<std::string>& inputs) {
    return node(op, suffix, inputs).output(0);
  }
  // The int64 scalar size of x's dim `axis` (negative from the back): Shape, then Gather under
  // stem/part, a constant once shapes are resolved.
  std::string dim(const std::string& x, int64_t axis, const std::string& part) {
    const std::string shape = value("Shape", part + "_shape", {x});
    onnx::NodeProto& d = node("Gather", part, {shape, ints(part + "_axis", {axis}, true)});
    int_attribute(d, "axis", 0);
    return d.output(0);
  }
  // Constants as Constant nodes, as exporters write the numbers of a forward: they fold into
  // literals, which training never makes parameters (graph::Value::is_literal).
  std::string floats(const std::string& suffix, float v) {
    onnx::TensorProto& t = constant(suffix);
    t.set_data_type(onnx::TensorProto::FLOAT);
    t.add_float_data(v);
    return out_.rbegin()->output(0);
  }
  std::string ints(const std::string& suffix, const std::vector<int64_t>& v, bool scalar = false) {
    onnx::TensorProto& t = constant(suffix);
    t.set_data_type(onnx::TensorProto::INT64);
    if (!scalar) t.add_dims(static_cast<int64_t>(v.size()));
    for (int64_t x : v) t.add_int64_data(x);
    return out_.rbegin()->output(0);
  }
  static void ints_attribute(onnx::NodeProto& n, const std::string& name,
                             const std::vector<int64_t>& v) {
    onnx::AttributeProto& a = *n.add_attribute();
    a.set_name(name);
    a.set_type(onnx::AttributeProto::INTS);
    for (int64_t x : v) a.add_ints(x);
  }
  static void int_attribute(onnx::NodeProto& n, const std::string& name, int64_t v) {
    onnx::AttributeProto& a = *n.add_attribute();
    a.set_name(name);
    a.set_type(onnx::AttributeProto::INT);
    a.set_i(v);
  }

 private:
  // A Constant node stem/suffix; returns its value attribute's tensor to fill.
  onnx::TensorProto& constant(const std::string& suffix) {
    onnx::NodeProto& n = node("Constant", suffix, {});
    onnx::AttributeProto& a = *n.add_attribute();
    a.set_name("value");
    a.set_type(onnx::AttributeProto::TENSOR);
    return *a.mutable_t();
  }

  const std::string& stem_;
  FreshValueNames& names_;
  Nodes& out_;
};

}  // namespace qforge::graph
