// A runtime pass over a resolved graph: QuantizeLinear → DequantizeLinear pairs whose scale and
// zero point are the same constants become one FakeQuant node, so the integer tensor between
// them is never written. Results are bit-identical (kernels::fake_quant_linear).
#pragma once

#include <cstddef>

#include "graph/ir.h"

namespace qforge::runtime {

// Returns the number of pairs fused. The graph must be resolved (static shapes, constants
// folded). A pair fuses when the quantized value has the DequantizeLinear as its only reader
// and is not a graph output, both scales are equal constants (values and per-tensor or
// per-axis form), the zero points are equal constants (an omitted one is a uint8 zero) and a
// per-axis pair uses the same axis.
size_t fuse_qdq(graph::Graph& graph);

}  // namespace qforge::runtime
