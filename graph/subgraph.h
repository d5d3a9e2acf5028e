// A part of a graph as a graph of its own: some of its nodes, fed by some of its values as graph
// inputs. What runs a model from another run's values at a cut (quant/shared_prefix.h).
#pragma once

#include <memory>
#include <span>

#include "graph/ir.h"

namespace qforge::graph {

// A graph of `nodes` (nodes of `g`, taken in g's order whatever order they come in) whose
// `inputs` (values of g, with their names, types and shapes) are its graph inputs, in that
// order, and `outputs` its outputs, in that order. Constants the nodes read come along (sharing
// their storage); every other value a node reads must be among `inputs` or produced by another
// of `nodes` (kInternal error otherwise), and so must every output. Nodes that no output needs
// are left out. The model-level facts (name, opset, metadata, source path) are g's.
std::unique_ptr<Graph> extract(const Graph& g, std::span<const Node* const> nodes,
                               std::span<const Value* const> inputs,
                               std::span<const Value* const> outputs);

}  // namespace qforge::graph
