// torchvision's shifted-window attention (Swin V1) in its ONNX form: the packed QKV projection
// (MatMul [E, 3E] + Add → Reshape [N, S, 3, H, D] → Transpose(2, 0, 3, 1, 4) → 3 × Gather) becomes
// MHAInProjection, and the attention core with its relative-position bias and, in shifted
// blocks, the per-window mask becomes SwinAttention. The pad → roll (Slice + Concat per axis) →
// window partition (Reshape/Transpose/Reshape) chain in front becomes SwinWindowPartition, and the
// window reverse → reverse roll → crop chain behind becomes SwinWindowReverse, with window size,
// shift and padding as attributes. Swin V2 (logit scale, cosine attention) is refused with a
// reason naming the node.
#pragma once

#include <span>
#include <vector>

#include "graph/catalog.h"
#include "graph/pattern.h"

namespace qforge::graph {

// Run after ComposeSDPA: unshifted blocks reach SwinAttention through the SDPA it makes.
std::vector<Pattern> swin_conversion_patterns();

}  // namespace qforge::graph
