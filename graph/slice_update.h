// Assignments to a strided slice. torch.onnx writes `x[:, :, 1:, 1:] = y` (and the `+=` that
// writes a slice's sum back, as MViT's relative positions do) as a ScatterND whose indices list
// every position of the box: one column per data axis, each an arange expanded over the box
// ([1, 2, 6272, 1568, 4] int64 tensors in MViT-v2-S, 630 MB each). Computed once as constants
// they made that model's import take 5.7 GB and its written file as much; run as a ScatterND they
// took half its forward time.
//
// SliceUpdate(data, updates) is the box itself: the data with the positions start + step·i along
// each of its leading axes replaced by the updates (whose leading dims count the box), the
// axes after it whole. Resolution (runtime/resolve.cpp) makes one of each ScatterND whose
// indices address such a box, without computing them; the runtime kernel is two strided copies,
// with a gradient for both inputs. The lowering writes a box of unit steps as Slices and Concats
// (which run at any batch) and another as the ScatterND, its indices computed from one arange per
// axis: as small as the file it came from.
#pragma once

#include <span>
#include <vector>

#include "graph/catalog.h"
#include "graph/ir.h"

namespace qforge::graph {

// The nodes computing `scatter`'s indices (a ScatterND's input 1) the way torch.onnx writes a
// box's: a Concat along the last axis of columns [I..., 1], each an Expand of a constant to the
// index space I and an Unsqueeze (torch.onnx), or an Expand to [I..., 1] (the lowering), each
// read by the next node alone. Resolution leaves them
// unfolded until it reaches the ScatterND. Empty when the indices are computed otherwise.
std::vector<Node*> box_index_nodes(const Node& scatter);

// Once `scatter`'s inputs are resolved: when its indices (a constant, or box_index_nodes with
// their constants resolved) address a box of its data, with index column k running start_k +
// step_k·i_k (step_k >= 1) along axis k of an index space of the data's leading rank, replaces
// the ScatterND by a SliceUpdate of the same name and output and returns it; null otherwise
// (repeated positions, reversed or permuted axes, indices of another rank).
Node* replace_box_scatter(Graph& graph, Node& scatter);

// The SliceUpdate module's catalog entry.
std::span<const OpSchema> slice_update_schemas();

}  // namespace qforge::graph
