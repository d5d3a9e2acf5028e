// Attention conversions and modules: raw MatMul·scale·Softmax·MatMul into SDPA, the ONNX form
// of nn.MultiheadAttention into MHAInProjection → SDPA → Linear, torchvision's shifted-window
// attention into SwinWindowPartition → MHAInProjection → SwinAttention → Linear →
// SwinWindowReverse.
#pragma once

#include <vector>

#include "graph/pattern.h"

namespace qforge::graph {

std::vector<Pattern> attention_conversion_patterns();
std::vector<Pattern> attention_fusion_patterns();

}  // namespace qforge::graph
