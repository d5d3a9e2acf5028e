// The post-processing tail of an ONNX file (graph::Tail): detection models end in ops whose
// output shape depends on the values (NonMaxSuppression, NonZero, TopK of a count found at run
// time, Loop) or in plugins of other domains (TensorRT's EfficientNMS_TRT). qforge plans static
// shapes and runs none of them, so the import cuts them off: the graph ends at the tensors they
// read (the scores and boxes a detector computes), which every command runs, calibrates and
// trains, and the exports write the tail back after the graph's nodes, byte for byte as the file
// had it, so the written model computes the file's outputs.
//
// The tail is every node from such an op on (every node reading a value one of them defines,
// an If's branches' reads included), and the shape computations only those nodes read (Constant
// nodes, and nodes whose every output is an integer or bool tensor). The computations it shares
// with the graph that resolution would fold (of integers, or of floats from integers and
// constants only: a Cast of a size) are copied into it under new names, as are the Constant
// values and initializers it shares, so that what the tail reads is computed tensors, which
// follow the batch, not shapes folded at one batch.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "graph/ir.h"

namespace onnx {
class GraphProto;
class ModelProto;
}  // namespace onnx

namespace qforge::graph {

// The ops that start a tail (in the default domain); every op of another domain starts one too.
bool starts_tail(const std::string& domain, const std::string& op_type);

// Which nodes of `gp` form its tail, by index; all false where it has none. An If or Loop whose
// branches hold such an op starts one.
std::vector<bool> tail_nodes(const onnx::GraphProto& gp);

// Moves the tail out of `model` (its nodes, the initializers only it reads, its value_info and
// the outputs it computes) and makes the values it reads graph outputs; nullptr (and the model
// unchanged) where there is none. Initializers it shares with the remaining nodes, and the values
// of Constant nodes before it that it reads, are copied into it under a new name, so that
// rewrites of the graph's weights never reach it and no constant becomes an output.
std::shared_ptr<const Tail> cut_tail(onnx::ModelProto& model);

// For the exports: appends `graph.tail` (when set) to `model`, written from `graph`: its nodes,
// initializers and value_info, the opsets of its domains, and the file's outputs in their order.
// kInternal error naming the value where a value it reads is not in the graph.
void append_tail(const Graph& graph, onnx::ModelProto& model);

// "the post-processing from node 'nms' (NonMaxSuppression) on: 57 nodes (Gather, NonZero…)".
std::string describe_tail(const Tail& tail);

}  // namespace qforge::graph
