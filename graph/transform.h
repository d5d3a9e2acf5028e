// The transformation pipeline: conversions to a fixed point, then one plan of fusions (longest
// first), then, for export, lowering every module back to standard ONNX ops.
#pragma once

#include <vector>

#include "graph/ir.h"
#include "graph/pattern.h"
#include "graph/plan.h"

namespace qforge::graph {

// Every conversion, in the order they are tried.
std::vector<Pattern> all_conversion_patterns();
// Every fusion, longest first.
std::vector<Pattern> all_fusion_patterns();
// Conversions then fusions: the list a plan of the whole transformation is made over.
std::vector<Pattern> all_patterns();

// Replaces every module node by the standard ONNX nodes its schema lowers to. Returns the
// number of modules lowered.
size_t lower_modules(Graph& graph);

}  // namespace qforge::graph
