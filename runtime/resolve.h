// Resolution: fixes the graph's input shapes, folds every node whose inputs are constants (the
// shape subgraphs torch.onnx leaves, Swin's pad amounts and window masks) and infers the static
// type and shape of every remaining value.
#pragma once

#include <cstddef>
#include <map>
#include <set>
#include <string>

#include "graph/ir.h"

namespace qforge::runtime {

struct ResolveOptions {
  // Shapes of graph inputs by name; inputs not listed keep the shape in the model, which must
  // then be static.
  std::map<std::string, graph::Shape> input_shapes;
  // Constants that training updates (runtime/training.h). A node that reads one is not folded,
  // since its output follows the parameter's current value, except an Identity whose output is
  // listed too: torch.onnx writes one initializer for parameters of equal value and names the
  // others through Identity nodes, and each such alias stays a parameter of its own.
  std::set<std::string, std::less<>> parameters;
};

struct ResolveStats {
  size_t folded_nodes = 0;
  size_t remaining_nodes = 0;
};

// An input whose fixed leading dimension differs from the one asked is freed first
// (free_fixed_batch): the model is resolved at its own batch and its batch-carrying shape
// constants rewritten, so that every batch resolves.
ResolveStats resolve(graph::Graph& graph, const ResolveOptions& options);

// The input shapes of `graph` with the leading (batch) dimension set to `batch`, whether the
// model leaves it dynamic or fixes it: resolve runs a fixed-batch model at another batch by
// freeing its batch first (runtime/batch_dimension.h).
std::map<std::string, graph::Shape> input_shapes_for_batch(const graph::Graph& graph,
                                                           int64_t batch);

}  // namespace qforge::runtime
