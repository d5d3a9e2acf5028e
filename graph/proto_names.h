// Names for nodes and values that an import-time rewrite of a ModelProto adds: a node's name as
// messages give it, and value names that no node, initializer or input of the graph uses.
#pragma once

#include <onnx/onnx_pb.h>

#include <string>
#include <unordered_set>

namespace qforge::graph {

// The node's name, or "<op>_<index>" for an unnamed one (index: its position in the graph), as
// import's messages name it.
inline std::string proto_node_name(const onnx::NodeProto& np, int index) {
  return np.name().empty() ? np.op_type() + "_" + std::to_string(index) : np.name();
}

// "node '<name>' (<op>)", as import's messages name a node.
inline std::string proto_node_label(const onnx::NodeProto& np, int index) {
  return "node '" + proto_node_name(np, index) + "' (" + np.op_type() + ")";
}

// Fresh value names for one graph: `take(base)` gives base, or base_1, base_2… where base is taken.
class FreshValueNames {
 public:
  explicit FreshValueNames(const onnx::GraphProto& g) {
    for (const auto& np : g.node()) {
      for (const auto& v : np.output()) taken_.insert(v);
    }
    for (const auto& t : g.initializer()) taken_.insert(t.name());
    for (const auto& v : g.input()) taken_.insert(v.name());
  }
  std::string take(const std::string& base) {
    std::string name = base;
    for (int i = 1; taken_.count(name); ++i) name = base + "_" + std::to_string(i);
    taken_.insert(name);
    return name;
  }

 private:
  std::unordered_set<std::string> taken_;
};

}  // namespace qforge::graph
