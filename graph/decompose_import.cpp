// Swish rewritten to Sigmoid and Mul on import.
#include "graph/decompose_import.h"

#include <onnx/onnx_pb.h>

#include <string>

#include "graph/proto_names.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

constexpr int64_t kSwishOpset = 24;

onnx::NodeProto& add_node(google::protobuf::RepeatedPtrField<onnx::NodeProto>& nodes,
                          const std::string& op, const std::string& name, const std::string& a,
                          const std::string& b, const std::string& out) {
  onnx::NodeProto& n = *nodes.Add();
  n.set_op_type(op);
  n.set_name(name);
  n.add_input(a);
  if (!b.empty()) n.add_input(b);
  n.add_output(out);
  return n;
}

// Swish(x) = x · Sigmoid(alpha · x): Sigmoid then Mul(x, ·) as torch.onnx writes SiLU (alpha 1),
// with a Mul by the constant alpha first otherwise. The last Mul keeps the node's name.
void decompose_swish(const onnx::NodeProto& np, const std::string& name, int64_t opset,
                     onnx::GraphProto& g, FreshValueNames& names,
                     google::protobuf::RepeatedPtrField<onnx::NodeProto>& out) {
  const std::string label = "import: node '" + name + "' (Swish)";
  if (opset < kSwishOpset) {
    throw_invalid(label + ": expected opset 24 or later for Swish, got opset " +
                  std::to_string(opset));
  }
  if (np.input_size() != 1 || np.output_size() != 1 || np.input(0).empty()) {
    throw_invalid(label + ": expected one input and one output, got " +
                  std::to_string(np.input_size()) + " and " + std::to_string(np.output_size()));
  }
  float alpha = 1.0f;
  for (const auto& a : np.attribute()) {
    if (a.name() != "alpha") {
      throw_invalid(label + ": expected only attribute 'alpha', got '" + a.name() + "'");
    }
    if (a.type() != onnx::AttributeProto::FLOAT) {
      throw_invalid(label + ": expected attribute 'alpha' a float, got " +
                    onnx::AttributeProto::AttributeType_Name(a.type()));
    }
    alpha = a.f();
  }
  const std::string& x = np.input(0);
  std::string gate_input = x;
  if (alpha != 1.0f) {
    onnx::TensorProto& t = *g.add_initializer();
    t.set_name(names.take(name + "/alpha"));
    t.set_data_type(onnx::TensorProto::FLOAT);
    t.add_float_data(alpha);
    gate_input = names.take(name + "/scaled");
    add_node(out, "Mul", name + "/scale", x, t.name(), gate_input);
  }
  const std::string gate = names.take(name + "/sigmoid");
  add_node(out, "Sigmoid", name + "/sigmoid", gate_input, "", gate);
  add_node(out, "Mul", name, x, gate, np.output(0));
}

}  // namespace

void decompose_newer_ops(onnx::ModelProto& model, int64_t opset) {
  onnx::GraphProto& g = *model.mutable_graph();
  bool any = false;
  for (const auto& np : g.node()) any = any || np.op_type() == "Swish";
  if (!any) return;
  FreshValueNames names(g);
  google::protobuf::RepeatedPtrField<onnx::NodeProto> rewritten;
  int index = 0;
  for (const auto& np : g.node()) {
    const std::string name = proto_node_name(np, index++);
    if (np.op_type() == "Swish" && (np.domain().empty() || np.domain() == "ai.onnx")) {
      decompose_swish(np, name, opset, g, names, rewritten);
    } else {
      *rewritten.Add() = np;
    }
  }
  *g.mutable_node() = std::move(rewritten);
}

}  // namespace qforge::graph
