// Static figures of a resolved graph: parameters and multiply-accumulates.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "graph/ir.h"

namespace qforge::runtime {

struct ModelStats {
  int64_t parameters = 0;  // elements of float constants consumed by compute ops
  int64_t macs = 0;        // multiply-accumulates of Conv, Gemm and MatMul for the graph's batch
  std::map<std::string, int64_t> op_counts;
};

ModelStats model_stats(const graph::Graph& resolved);

}  // namespace qforge::runtime
