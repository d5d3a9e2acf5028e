// Fusion patterns and fused-module schemas (none yet).
#include "graph/fusions.h"

#include "graph/catalog.h"

namespace qforge::graph {

std::vector<Pattern> fusion_patterns() { return {}; }

std::span<const OpSchema> fusion_module_schemas() { return {}; }

}  // namespace qforge::graph
