// Fusions listed after the core ones of graph/fusions.h: ActAdd, an activation whose output
// only feeds an Add with a computed tensor of the same shape (both Add inputs quantized).
#pragma once

#include "graph/pattern.h"

namespace qforge::graph {

Pattern act_add_pattern();

}  // namespace qforge::graph
