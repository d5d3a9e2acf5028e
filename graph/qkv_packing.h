// PackParallelQKV: the hand-written attention's three Q/K/V projections of one tensor, each
// split into heads by Reshape [N, S, H, D] -> Transpose(0, 2, 1, 3) in front of an SDPA, packed
// into one MHAInProjection (one GEMM, one per-channel weight quantizer, one input Q/DQ).
#pragma once

#include "graph/pattern.h"

namespace qforge::graph {

Pattern pack_parallel_qkv_pattern();

}  // namespace qforge::graph
