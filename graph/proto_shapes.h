// The shapes libonnx's shape inference gives the values of a ModelProto, for import-time rewrites
// that need an input's rank or dims before qforge resolves the graph.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace onnx {
class ModelProto;
}

namespace qforge::graph {

// Runs libonnx's shape inference on `model` (its value_info grows; a failure leaves what it
// inferred before) and returns the dims of every value whose shape is declared or inferred, and
// of every initializer: -1 where a dim is unknown. `data_propagation`: shapes that shape
// computations (Shape, Gather, Concat) give are followed too.
std::unordered_map<std::string, std::vector<int64_t>> inferred_dims(onnx::ModelProto& model,
                                                                    bool data_propagation);

}  // namespace qforge::graph
