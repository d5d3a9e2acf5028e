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
  // When set, initializers of at least external_data_min_bytes are written to a data file
  // beside the model (ONNX external data: each at a 4096-byte offset, with its location, offset
  // and length) instead of into it, so that a model over protobuf's 2 GiB can be written. The
  // file's name, as the model refers to it (relative to the model's folder).
  std::string external_data;
  size_t external_data_min_bytes = 1024;
};

// Graph inputs and outputs are written with the dtype and shape their Values hold; libonnx's
// checker requires a shape on each, which imported and resolved graphs have.
// Throws qforge::Error: kUnsupported for a node ONNX cannot express (a catalog-internal op such
// as FusedConv, a model over 2 GiB), kInternal when the checker rejects the result. The bytes
// are the whole model: options.external_data must be empty (write_onnx takes a data sink).
std::string serialize_onnx(const Graph& graph, const ExportOptions& options = {});

// serialize_onnx handed to `sink` in pieces of at most 1 MiB, so that the model is never in
// memory twice as bytes; returns the number of bytes. Exceptions from the sink propagate.
// With options.external_data, `data_sink` receives the data file's bytes (before the model's).
using ByteSink = std::function<void(const void* data, size_t nbytes)>;
// A sink appending to `bytes` (which must outlive it).
ByteSink append_to(std::string& bytes);
size_t write_onnx(const Graph& graph, const ByteSink& sink, const ExportOptions& options = {},
                  const ByteSink& data_sink = {});
// The same, consuming the graph: each constant is released as soon as the message holds a copy
// (graph::Value::release_constant), so that where the graph was its only holder the weights are
// not in memory twice.
size_t write_onnx(std::unique_ptr<Graph> graph, const ByteSink& sink,
                  const ExportOptions& options = {}, const ByteSink& data_sink = {});

// Serializes, then writes through a temporary file in the destination's folder renamed onto
// `path` (and, with options.external_data, the data file beside it first): a failure leaves no
// file behind. An unwritable path is a kIo error naming it.
void save_onnx(const Graph& graph, const std::string& path, const ExportOptions& options = {});

// The data file name an output model's external data gets by default: its file name with
// ".data" appended ("out/model.onnx" -> "model.onnx.data").
std::string external_data_name(const std::string& model_path);

}  // namespace qforge::graph
