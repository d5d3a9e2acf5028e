// Fusion patterns and the fused modules they make for convolutional and linear layers
// (ConvBN, ConvBNAct, ConvBNAddAct, StemConvBNActMaxPool, LinearAct, Linear, LayerNorm,
// AdaptiveAvgPool, ActAdd).
#pragma once

#include <vector>

#include "graph/pattern.h"

namespace qforge::graph {

// Longest first, as fusions must be listed.
std::vector<Pattern> fusion_patterns();

}  // namespace qforge::graph
