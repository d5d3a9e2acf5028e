// Helpers the runtime graph fusions (epilogues, QDQ) share. Internal to runtime/: include it from
// .cpp files only.
#pragma once

#include <cstddef>

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

}  // namespace qforge::runtime
