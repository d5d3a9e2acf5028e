// If nodes. An exporter writes one where the model's code branches on a shape (torch.onnx's
// `squeeze(dim)` of a dim it cannot prove is 1, code under `if x.shape[1] == ...`): once the
// input shapes are fixed, the condition is a constant and the If is the branch it takes.
// Import keeps each branch as a graph attribute (`then_branch`, `else_branch`) whose inputs are
// the enclosing graph's values it reads, which the If node lists after its condition, so that
// the graph's links and order see them; resolution (runtime/resolve.h) folds the condition and
// puts the branch in the If's place. An If whose condition depends on input values is refused
// there, naming the node.
#pragma once

#include <vector>

#include "graph/ir.h"

namespace qforge::graph {

// Replaces `node`, an If, by the nodes of the branch `condition` selects, inserted where the If
// was, and returns them in order. The branch's values take their own names where the graph has
// none of that name (a unique name from them otherwise); the If's outputs keep their names and
// uses. Constants of the branch become constants of the graph.
std::vector<Node*> inline_branch(Graph& graph, Node* node, bool condition);

}  // namespace qforge::graph
