// The batch dimension of a resolved graph: which axis of each value carries the batch, and the
// rewrite that lets a graph resolved at one batch run at any batch (shape constants that carry
// the batch written as -1 or computed from the input's shape). Resolution uses it to run a
// fixed-batch model at another batch; the exports use it to write the batch the model declared.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/resolve.h"

namespace qforge::runtime {

// Along `axis` a value's index is (o · batch + b) · inner + i for sample b: its size there is
// outer × batch × inner (Swin's windows: batch × windows, inner; attention's tokens × batch,
// outer).
struct BatchAxis {
  int axis = 0;
  int64_t outer = 1;
  int64_t inner = 1;
};

// Rewrites `graph`, resolved at `batch` with the batch on axis 0 of every input, so that it
// computes the same per sample at any batch:
//   - a Reshape's shape gets -1 at the axis that carries the batch and its other entries as
//     resolved (-1 is unambiguous there, since every other dimension is fixed);
//   - an Expand's shape gets 1 there (the input already has the batch), a Resize's sizes get the
//     batch read at run time there (Shape → Gather → Concat), a Slice along the batch axis that
//     takes it whole ends at INT64_MAX, a constant repeated along the batch (a class token
//     expanded by a fold) becomes one sample's row expanded to the batch, read at run time from
//     the first input's shape (Shape → Gather → Concat → Expand);
//   - inputs and outputs get -1 at their batch axis, other values lose their resolved shapes.
// Where several axes of a Reshape's output could carry the batch (a batch of 1 leaves this open),
// the one with the fewest rows per sample is taken, the earliest on a tie. Unsupported error
// naming the node where the batch cannot be followed: gathered, split, reduced, padded or
// normalized along its axis, concatenated along it, or reshaped so that no axis carries it whole.
// Returns the batch axis of every value that carries the batch, by name.
std::map<std::string, BatchAxis> free_batch(graph::Graph& graph, int64_t batch);

// The axis that carries the batch in each output of `model` (as loaded, unresolved): a copy
// resolved at batch 2 and followed by free_batch. Where the batch cannot be followed (a model
// that mixes its samples, one that fixes its batch and cannot run at another) or an output
// interleaves other rows with the samples (outer > 1), that output's entry is empty.
std::vector<std::optional<int>> output_batch_axes(const graph::Graph& model);

// When an input of `model` fixes its batch (a number in the file), resolves the model at that
// batch with `options.parameters` kept, then free_batch: the model then resolves at any batch.
// Nothing happens for a model whose inputs' batch is dynamic. Returns whether it freed it.
bool free_fixed_batch(graph::Graph& model, const ResolveOptions& options);

struct BatchExportOptions {
  // Write a fixed batch as a symbolic one ("batch") instead of the model's own size.
  bool dynamic_batch = false;
};

// Unsupported error when `graph`'s file cannot be written as `options` ask, whatever its
// calibration: --dynamic-batch of a model whose file takes one sample without a batch axis, or
// of a fixed-batch file whose post-processing computes its shapes for that batch.
// restore_declared_batch checks it; a command may before any work.
void check_batch_export(const graph::Graph& graph, const BatchExportOptions& options);

// For the exports: `graph` (resolved at its inputs' batch) gets free_batch, then every input and
// output the batch its model declared (graph.declared_batch): a symbolic batch keeps its name, an
// unknown one stays unknown, a fixed one keeps the model's own size, or becomes "batch" with
// options.dynamic_batch. An output the file gave no declaration follows the first input's.
void restore_declared_batch(graph::Graph& graph, const BatchExportOptions& options = {});

// For training: each float constant of `graph` (resolved at a batch above 1) that repeats one
// row along the batch and is only concatenated or broadcast with activations (ViT's class token,
// expanded to the batch by a fold) becomes that row behind an Expand to the batch, so that one
// parameter is trained for every sample, as in the framework it came from (the Expand's backward
// sums the rows' gradients), and the export can expand it to any batch. A float constant of
// batch × k rows (k > 1) that repeats its first k rows for every sample and is only an operand of
// batched MatMuls (DeBERTa's relative-position keys repeated to batch × heads rows, folded at
// resolution) becomes those k rows behind a Tile to the batch, for the same reasons. Returns how
// many.
size_t share_batch_rows(graph::Graph& graph);

// The batch restore_declared_batch writes for `model`'s first input, in words: "symbolic batch
// 'N'", "fixed batch 1", "unknown batch".
std::string written_batch_text(const graph::Graph& model, const BatchExportOptions& options = {});

}  // namespace qforge::runtime
