// Q/DQ export: the fused graph, its placement and the calibrated ranges → a standard ONNX graph
// with QuantizeLinear → DequantizeLinear in front of every quantized input, per-axis Q/DQ on
// every quantized (batch-norm folded) weight (a scalar scale where the plan's weight point is
// not per channel) and the fixed-scale Q/DQ after the softmax inside
// attention. Scales are amax / 127 float32, zero points int8 0.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "graph/onnx_export.h"
#include "quant/placement.h"
#include "runtime/batch_dimension.h"

namespace qforge::quant {

// Activation amax by tensor name (every point of the plan must have one, finite and >= 0).
using ActivationAmax = std::map<std::string, float>;
// Activation scales by tensor name, where they are not amax / 127: learned in training (LSQ).
using ActivationScales = std::map<std::string, float>;

struct QdqExportOptions {
  // Store quantized weights as int8 initializers behind a DequantizeLinear instead of float
  // weights behind a QuantizeLinear → DequantizeLinear pair.
  bool int8_weights = false;
  // Scales that replace amax / 127 at the points they name (finite and > 0).
  ActivationScales activation_scales;
  // The written model's batch: the one the model declared (export_qdq, save_qdq and
  // quant::export_qdq_model write it, runtime::restore_declared_batch), a fixed one made
  // symbolic with dynamic_batch.
  runtime::BatchExportOptions batch;
  graph::ExportOptions onnx;
};

// Counts of what build_qdq_graph inserted.
struct QdqCounts {
  size_t activation_pairs = 0;
  size_t weight_quantizers = 0;
  size_t softmax_pairs = 0;
  size_t folded_batch_norms = 0;
};

// The lowered Q/DQ graph. Invalid error naming the tensor when a point lacks a finite amax.
std::unique_ptr<graph::Graph> build_qdq_graph(const graph::Graph& fused, const QuantPlan& plan,
                                              const ActivationAmax& amax,
                                              const QdqExportOptions& options = {},
                                              QdqCounts* counts = nullptr);

// build_qdq_graph with the model's declared batch restored (options.batch), serialized (ONNX
// checker on unless options say otherwise).
std::string export_qdq(const graph::Graph& fused, const QuantPlan& plan, const ActivationAmax& amax,
                       const QdqExportOptions& options = {});

// build_qdq_graph, written atomically to `path`.
void save_qdq(const graph::Graph& fused, const QuantPlan& plan, const ActivationAmax& amax,
              const std::string& path, const QdqExportOptions& options = {});

// The graph quantization-aware training runs, from the same fused graph, plan and activation
// ranges as build_qdq_graph: the same activation and softmax Q/DQ pairs at the same scales,
// modules lowered the same way, but
//   - each quantized weight passes through a WeightFakeQuant node that takes its scale from the
//     weight's current value, so the quantizer follows the weight as training updates it and
//     gives bit for bit the integers the export of the updated weights writes;
//   - a batch norm that the export folds stays in the graph, with its folding simulated
//     (Krishnamoorthi 2018, section 3.2; PyTorch's fused ConvBn QAT modules): the weight
//     quantizer sees W·γ/sqrt(running var + eps), the convolution's output is divided by that
//     factor again, the conv bias added, and the BatchNormalization follows. Trained, it
//     normalises with batch statistics; on running statistics (eval or frozen BN) it computes
//     what the exported folded convolution computes, up to float rounding.
struct TrainingGraph {
  std::unique_ptr<graph::Graph> graph;
  // The fused graph's float constants that training updates: weights, biases, BN γ and β,
  // LayerNorm parameters, embeddings and position biases (attention masks, literals and op
  // settings are not).
  std::vector<std::string> parameters;
  // BN running means and variances: updated by the training forward, never differentiated.
  std::vector<std::string> state;
  // With learned scales: the scale constant of each activation point, by point tensor; those
  // constants are parameters too.
  std::map<std::string, std::string> scale_parameters;
};

struct TrainingGraphOptions {
  // Activation scales become parameters (LSQ): FakeQuant gives them the LSQ gradient.
  bool learn_scales = false;
  // Scales that replace amax / 127 (a resumed or continued run's learned ones).
  ActivationScales activation_scales;
  // Every activation point's tensor (what its quantizer reads) also becomes a graph output,
  // after the model's own, in plan order: to compare the values quantizers see with another
  // framework's, point by point.
  bool point_outputs = false;
};

TrainingGraph build_training_graph(const graph::Graph& fused, const QuantPlan& plan,
                                   const ActivationAmax& amax,
                                   const TrainingGraphOptions& options = {});

}  // namespace qforge::quant
