// ONNX export: a Graph to ModelProto bytes or a file, checked by onnx::checker. The inverse of
// onnx_import.h for every op a file may hold; qforge-internal ops are refused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "graph/ir.h"

namespace qforge::graph {

struct ExportOptions {
  // Default-domain opset written to the model; unset: the graph's opset, at least 13.
  std::optional<int64_t> opset;
  std::string producer_name = "qforge";
  std::string producer_version = "0.1.0";
  // onnx::checker::check_model on the result, for the opsets libonnx knows (up to 17); a failure
  // is a kInternal error (qforge built a model ONNX rejects) carrying the checker's message.
  bool run_checker = true;
};

// Graph inputs and outputs are written with the dtype and shape their Values hold; libonnx's
// checker requires a shape on each, which imported and resolved graphs have.
// Throws qforge::Error: kUnsupported for a node ONNX cannot express (a catalog-internal op such
// as FusedConv, a model over 2 GiB), kInternal when the checker rejects the result.
std::string serialize_onnx(const Graph& graph, const ExportOptions& options = {});

// serialize_onnx handed to `sink` in pieces of at most 1 MiB, so that the model is never in
// memory twice as bytes; returns the number of bytes. Exceptions from the sink propagate.
using ByteSink = std::function<void(const void* data, size_t nbytes)>;
size_t write_onnx(const Graph& graph, const ByteSink& sink, const ExportOptions& options = {});
// The same, consuming the graph: each constant is released as soon as the message holds a copy
// (graph::Value::release_constant), so that where the graph was its only holder the weights are
// not in memory twice.
size_t write_onnx(std::unique_ptr<Graph> graph, const ByteSink& sink,
                  const ExportOptions& options = {});

// Serializes, then writes through a temporary file in the destination's folder renamed onto
// `path`: a failure leaves no file behind. An unwritable path is a kIo error naming it.
void save_onnx(const Graph& graph, const std::string& path, const ExportOptions& options = {});

}  // namespace qforge::graph
