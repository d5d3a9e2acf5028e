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

namespace qforge::quant {

struct QdqExportOptions {
  // Store quantized weights as int8 initializers behind a DequantizeLinear instead of float
  // weights behind a QuantizeLinear → DequantizeLinear pair.
  bool int8_weights = false;
  graph::ExportOptions onnx;
};

// Activation amax by tensor name (every point of the plan must have one, finite and >= 0).
using ActivationAmax = std::map<std::string, float>;

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

// build_qdq_graph, serialized (ONNX checker on unless options say otherwise).
std::string export_qdq(const graph::Graph& fused, const QuantPlan& plan, const ActivationAmax& amax,
                       const QdqExportOptions& options = {});

// build_qdq_graph, written atomically to `path`.
void save_qdq(const graph::Graph& fused, const QuantPlan& plan, const ActivationAmax& amax,
              const std::string& path, const QdqExportOptions& options = {});

}  // namespace qforge::quant
