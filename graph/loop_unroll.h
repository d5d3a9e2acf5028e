// Loops of a constant trip count and the sequence values they build, made plain tensors on import.
// torch.onnx writes `torch.tensor_split` (torchvision's MViT) as a SequenceEmpty, a Loop that
// SequenceInserts one Slice per split index, and SequenceAt reads of the pieces: once the loop is
// unrolled, every sequence is a list of tensors known when the model is read, and the sequence
// ops become the Identity, Concat, Split, Squeeze and Unsqueeze nodes qforge runs.
#pragma once

#include <cstdint>

namespace onnx {
class ModelProto;
}

namespace qforge::graph {

// The most iterations a Loop is unrolled for: each one copies the body into the graph, so a
// longer loop (a decoder's per-token loop, a detector's per-box loop) stays a Loop, kept as
// post-processing (graph/tail.h) or refused; a tensor_split has a handful of indices.
inline constexpr int64_t kMaxUnrolledTrips = 64;

// Unrolls each top-level Loop of `model` (opset `opset`) whose trip count is a constant of at
// most kMaxUnrolledTrips, whose initial condition is true or absent and whose body keeps it true,
// and whose body holds only ops qforge runs and sequence ops (no nested graphs), then replaces
// every sequence value by the list of tensors it holds: SequenceEmpty, SequenceConstruct,
// SequenceInsert and SequenceErase (positions constant) go, SequenceAt (index constant) becomes
// an Identity, SequenceLength a Constant, ConcatFromSequence a Concat (of Unsqueezes with
// new_axis), SplitToSequence (split constant, or the dim declared) a Split (and Squeezes without
// keepdims). Where any sequence cannot be resolved so (an index computed from the inputs, a
// sequence a graph output or read by another op), `model` is left exactly as it was, so that
// import's op check refuses the sequence op naming it. Sequence declarations (value_info) go.
void unroll_loops_and_sequences(onnx::ModelProto& model, int64_t opset);

}  // namespace qforge::graph
