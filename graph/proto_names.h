// Names for nodes and values that an import-time rewrite of a ModelProto adds: a node's name as
// messages give it, value names that no node, initializer or input of the graph uses, and the
// renaming of a value's reads.
#pragma once

#include <onnx/onnx_pb.h>

#include <string>
#include <string_view>
#include <unordered_set>

namespace qforge::graph {

// The node's name, or "<op>_<index>" for an unnamed one (index: its position in the graph), as
// import's messages name it.
inline std::string proto_node_name(const onnx::NodeProto& np, int index) {
  return np.name().empty() ? np.op_type() + "_" + std::to_string(index) : np.name();
}

// The node's attribute `name`, or null.
inline const onnx::AttributeProto* find_attribute(const onnx::NodeProto& np,
                                                  std::string_view name) {
  for (const auto& a : np.attribute()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
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
  // Names defined elsewhere (a post-processing tail not in `g`) that take() must not give.
  void reserve(const std::string& name) { taken_.insert(name); }
  std::string take(const std::string& base) {
    std::string name = base;
    for (int i = 1; taken_.count(name); ++i) name = base + "_" + std::to_string(i);
    taken_.insert(name);
    return name;
  }

 private:
  std::unordered_set<std::string> taken_;
};

// Renames the reads of `from` in `np` (its inputs, and its subgraphs' reads from outside them).
inline void rename_reads(onnx::NodeProto& np, const std::string& from, const std::string& to) {
  for (auto& in : *np.mutable_input()) {
    if (in == from) in = to;
  }
  for (auto& a : *np.mutable_attribute()) {
    auto rename_in = [&](onnx::GraphProto& g) {
      for (const auto& t : g.initializer()) {
        if (t.name() == from) return;  // shadowed inside
      }
      for (auto& inner : *g.mutable_node()) rename_reads(inner, from, to);
    };
    if (a.has_g()) rename_in(*a.mutable_g());
    for (auto& g : *a.mutable_graphs()) rename_in(g);
  }
}

}  // namespace qforge::graph
