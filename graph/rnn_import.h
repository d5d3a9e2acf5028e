// RNN, GRU and LSTM on import: each node is unrolled over its sequence (whose length the input's
// shape fixes) into the ops qforge runs, quantizes and trains: one MatMul of the whole sequence by
// the input weights per direction, then per step a MatMul of the hidden state by the recurrent
// weights, the gates' Slices, Sigmoid and Tanh, and the state updates, the outputs gathered by
// Unsqueeze and Concat. Forward, reverse and bidirectional; layouts 0 and 1; the optional bias
// and initial states; GRU's linear_before_reset either way; RNN's Tanh, Relu or Sigmoid.
#pragma once

#include <cstdint>
#include <string>

namespace onnx {
class ModelProto;
}

namespace qforge::graph {

// Longest sequence unrolled: each step is about a dozen nodes per direction.
inline constexpr int64_t kMaxUnrolledSteps = 1024;

// Whether `op` is one of the recurrent ops that unroll_recurrent_nodes rewrites.
bool is_recurrent_op(const std::string& op);

// Unrolls every RNN, GRU and LSTM node of `model` (opset `opset` >= 13, after any conversion;
// the sample shape fixed). Throws Unsupported naming the node for a form it does not unroll
// (peepholes, clip, input_forget, a sequence_lens other than a constant of full lengths, other
// activations, a sequence length that the input's shape does not fix) and Invalid for a
// malformed node.
void unroll_recurrent_nodes(onnx::ModelProto& model, int64_t opset);

}  // namespace qforge::graph
