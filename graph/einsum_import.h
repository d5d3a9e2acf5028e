// Einsum on import: an equation that is a batched matrix product becomes MatMul with Transposes
// around it, so the MatMul kernels, fusions and Q/DQ rules apply; any other equation is refused
// naming the node and the equation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace onnx {
class ModelProto;
}

namespace qforge::graph {

// How one Einsum "A,B->C" runs as C = transpose(MatMul(transpose(A), transpose(B))). A
// permutation is over the letters after the ellipsis (the ellipsis dims stay leading); empty
// when no transpose is needed.
struct EinsumMatMul {
  std::vector<int64_t> perm_a;
  std::vector<int64_t> perm_b;
  std::vector<int64_t> perm_out;
  bool ellipsis_a = false;
  bool ellipsis_b = false;
  size_t letters_a = 0;  // letters after the ellipsis
  size_t letters_b = 0;
};

// The MatMul form of `equation`, or an error text ("expected …, got …") saying why it has none;
// `unsupported` tells a valid equation qforge cannot run from an invalid one.
struct EinsumPlan {
  std::optional<EinsumMatMul> matmul;
  std::string error;
  bool unsupported = false;
};
EinsumPlan plan_einsum_matmul(const std::string& equation);

// Replaces every Einsum node of `model` (opset `opset`) by its MatMul form; throws Unsupported or
// Invalid naming the node and the equation when it has none.
void rewrite_einsum_nodes(onnx::ModelProto& model, int64_t opset);

}  // namespace qforge::graph
