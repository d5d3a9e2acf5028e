// ONNX import: a file or bytes to a Graph, through libonnx's protobuf classes, checker and shape
// inference. Ops outside the catalog are refused with the op, the node and the opset.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "graph/ir.h"

namespace qforge::graph {

struct ImportOptions {
  bool run_checker = true;          // onnx::checker::check_model
  bool run_shape_inference = true;  // onnx::shape_inference for value dtypes and static shapes
};

// Throws qforge::Error: kIo when the file cannot be read, kInvalid for a file that is not a
// valid ONNX model, kUnsupported for valid models qforge cannot run (unknown op, opset < 13,
// external data, subgraphs).
std::unique_ptr<Graph> load_onnx(const std::string& path, const ImportOptions& options = {});
std::unique_ptr<Graph> parse_onnx(std::string_view bytes, const std::string& source_name,
                                  const ImportOptions& options = {});

// ONNX TensorProto data type code to DType (kUnsupported error for others).
DType dtype_from_onnx(int onnx_type, const std::string& where);
int onnx_from_dtype(DType dtype);

}  // namespace qforge::graph
