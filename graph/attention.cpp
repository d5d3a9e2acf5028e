// Attention patterns and module schemas (none yet).
#include "graph/attention.h"

#include "graph/catalog.h"

namespace qforge::graph {

std::vector<Pattern> attention_conversion_patterns() { return {}; }
std::vector<Pattern> attention_fusion_patterns() { return {}; }

std::span<const OpSchema> attention_module_schemas() { return {}; }

}  // namespace qforge::graph
