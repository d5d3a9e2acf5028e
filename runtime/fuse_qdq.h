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

// Whether `dq` (reading q's output) undoes `q` exactly as a FakeQuant would: fuse_qdq's
// conditions on the pair's parameters (q's input and output resolved; dq's output need not be).
bool fake_quant_pair(const graph::Node& q, const graph::Node& dq);

// After fuse_qdq (and fuse_conv_epilogues): a FakeQuant on one tensor-wide grid that is the only
// reader of a Conv's or FusedConv's output joins that convolution as a FusedConv whose output
// pass applies it to each block it writes (kernels::ConvEpilogue::quant, the same bits), so the
// unquantized output is never written. A grid the FakeQuant kernel would reject stays apart, to
// fail there. Returns the number fused.
size_t fuse_conv_output_quant(graph::Graph& graph);

}  // namespace qforge::runtime
