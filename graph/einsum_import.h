// Einsum on import: every equation of one or more terms without repeated letters becomes the ops
// qforge runs and trains (MatMul, Transpose, ReduceSum, Reshape, Squeeze, Unsqueeze), so that
// the MatMul kernels, fusions and Q/DQ rules apply to it. A diagonal (a letter twice in a term)
// and a sum over the '...' dims are refused naming the node and the equation.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace onnx {
class ModelProto;
}

namespace qforge::graph {

// One node of an Einsum's lowering. An input is an operand's index (0 … terms − 1) or, past
// those, the step before it that makes it (terms + that step's index).
struct EinsumStep {
  std::string op;             // MatMul, Transpose, ReduceSum, Reshape, Squeeze, Unsqueeze, Identity
  std::vector<int> inputs;    // one, two for MatMul
  std::vector<int64_t> ints;  // Transpose's perm, the axes, or Reshape's shape
};

// How `equation` runs, for operands of `ranks` (−1: unknown, which only a term with '...'
// needs): the steps, the last of which makes the output; else an error text ("expected …, got
// …"), `unsupported` telling a valid equation qforge cannot run from an invalid one, and
// `unknown_rank` the operand whose rank was needed.
struct EinsumPlan {
  std::vector<EinsumStep> steps;
  std::string error;
  bool unsupported = false;
  int unknown_rank = -1;
};
EinsumPlan plan_einsum(const std::string& equation, std::span<const int64_t> ranks);

// The plan's steps as text, one "Op[ints](inputs)" per step, for messages and tests.
std::string describe_einsum_plan(const EinsumPlan& plan);

// Replaces every Einsum node of `model` (opset `opset`) by its plan's nodes: the last takes the
// Einsum's output, a MatMul of the last pair keeps its name, the others are named under it.
// Throws Unsupported or Invalid naming the node and the equation where there is no plan.
void rewrite_einsum_nodes(onnx::ModelProto& model, int64_t opset);

}  // namespace qforge::graph
