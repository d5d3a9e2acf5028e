// Models whose file takes one sample without a batch axis (torchvision's detectors read one
// image [3, H, W]): the import gives their input and outputs a leading axis of size 1, so that
// qforge runs, calibrates and trains them at batch 1 as it does batched models and stacks their
// samples' outputs, and the exports take it away again, so that the written model has the
// file's interface.
#pragma once

#include <onnx/onnx_pb.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "graph/ir.h"

namespace qforge::graph {

// Whether `model` (before conversion) takes one sample of `sample_rank` dims without a batch
// axis: it has one input, and that input declares exactly `sample_rank` dims.
bool takes_unbatched_sample(const onnx::ModelProto& model, size_t sample_rank);

// Where the caller says the model's input has no batch axis (ImportOptions::no_batch_axis):
// Invalid error, naming `source`, unless it has one input of declared rank.
void check_unbatched_input(const onnx::ModelProto& model, const std::string& source);

// The model's one input X gets a leading dim of 1 and its readers read X's sample through a
// Squeeze (written for `opset`, the model's own) under a fresh name. Returns X's name.
std::string add_input_batch_axis(onnx::ModelProto& model, int64_t opset);

// Every graph output Y gets a leading dim of 1: its value takes a fresh name and Y becomes an
// Unsqueeze of it (written for `opset`). Returns the outputs' names.
std::vector<std::string> add_output_batch_axes(onnx::ModelProto& model, int64_t opset);

// In a graph written from a model with an added batch axis (the names in `added`, the nodes
// written for `opset`), before its post-processing tail is appended (`reserved`: the names the
// tail defines): each output gets its file's shape back. The Unsqueeze the import added goes
// where it still stands as it added it; where a rewrite has changed it, a Squeeze is written.
void remove_added_output_axes(const AddedBatchAxis& added, onnx::GraphProto& g, int64_t opset,
                              const std::vector<std::string>& reserved);

// Then, the tail appended: the input gets its file's shape back, the Squeeze the import added
// removed where it stands as added (the tail's reads of the sample now read the input), an
// Unsqueeze of the input written otherwise.
void remove_added_input_axis(const AddedBatchAxis& added, onnx::GraphProto& g, int64_t opset);

}  // namespace qforge::graph
