// Helpers the runtime graph fusions (epilogues, SiLU, QDQ) share. Internal to runtime/: include it
// from .cpp files only.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <utility>

#include "graph/ir.h"

namespace qforge::runtime {

// The single node that reads `v`, if v has exactly one reader, read once, and is not a graph
// output.
inline graph::Node* sole_consumer(const graph::Value* v) {
  if (v->is_graph_output() || v->consumers().size() != 1) return nullptr;
  graph::Node* n = v->consumers()[0];
  size_t uses = 0;
  for (const graph::Value* in : n->inputs()) uses += in == v;
  return uses == 1 ? n : nullptr;
}

// Replaces `chain` (nodes in graph order, each read only by the next) with the one node `spec`
// describes (its output_names are set here), placed where the chain's last node ran, so every
// input is ready: the last node's output passes its readers and its name to the new node's
// output, and the chain's nodes are removed. Returns the new node.
inline graph::Node* replace_chain(graph::Graph& graph, graph::NodeSpec spec,
                                  std::span<graph::Node* const> chain) {
  graph::Node* last = chain.back();
  graph::Value* out = last->output(0);
  const std::string out_name = out->name();
  spec.output_names = {graph.unique_value_name(out_name + "_fused")};
  graph::Node* node = graph.insert_node(std::move(spec), last);
  node->output(0)->set_type(out->dtype(), *out->shape());
  graph.replace_all_uses(out, node->output(0));
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) graph.remove_node(*it);
  graph.rename_value(node->output(0), out_name);
  return node;
}

}  // namespace qforge::runtime
