// ONNX import: a file or bytes to a Graph, through libonnx's protobuf classes, checker and shape
// inference. Opsets 7 to 26 are read: below 13 through libonnx's version converter, above what
// libonnx knows (17) with qforge's own checks in place of its checker. Ops outside the catalog
// are refused with the op, the node and the opset.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "graph/ir.h"

namespace qforge::graph {

// The default-domain opsets qforge imports. Models below kConvertedOpset are converted to it
// with onnx::version_conversion; from it on each op runs in the form of the model's opset.
inline constexpr int64_t kOldestImportedOpset = 7;
inline constexpr int64_t kConvertedOpset = 13;
// The newest opset ONNX Runtime 1.30, the reference runtime of the tests, runs. Versions 22 to 26
// of the catalog's ops add types (ONNX's changelog), and QuantizeLinear's `precision` and
// DequantizeLinear's `output_dtype` (23), both checked; Swish (24) is decomposed on import.
inline constexpr int64_t kNewestImportedOpset = 26;

struct ImportOptions {
  bool run_checker = true;          // onnx::checker::check_model (opsets libonnx knows)
  bool run_shape_inference = true;  // onnx::shape_inference for value dtypes and static shapes
  // The dims of the model's single input after the batch (C, H, W for images). Its dynamic dims
  // take these values before shape inference and opset conversion. With sample_shape_must_match
  // another rank or a static dim that differs is an invalid-input error, else such an input is
  // left as declared (the caller's data checks report it).
  std::optional<Shape> sample_shape;
  bool sample_shape_must_match = true;
  std::string sample_shape_origin = "the sample shape";  // how messages name it
  // Of a model of several inputs: the dims after the batch of each input named here, applied as
  // sample_shape is to the single input (with sample_shape_must_match and sample_shape_origin).
  std::map<std::string, Shape> input_sample_shapes;
  // When set, an input dim after the batch that is still dynamic (after sample_shape) is an
  // invalid-input error naming the input and its dynamic dims; this text ends the message and
  // says how the caller's user gives them.
  std::optional<std::string> require_static_sample;
  // The rank of one sample of the data the model will run on (3 for an image, the rows' rank
  // of an .npy). A model of one input whose declared rank is this, not one more, takes one
  // sample without a batch axis (torchvision's detectors take an image [3, H, W]): the import
  // gives it one of size 1 before anything else (the input is read through a Squeeze), and
  // every output of the network one (an Unsqueeze), so that it runs at batch 1 as a batched
  // model does; graph.added_batch_axis records them and the exports write the file's shapes
  // back. sample_shape then gives the input's dims after that axis.
  std::optional<size_t> data_sample_rank;
  // The model's one input is one sample without a batch axis whatever its rank (the caller's
  // user says so; the data cannot when there is none): as data_sample_rank of that rank. An
  // invalid-input error for a model of another number of inputs or of an input of unknown rank.
  bool no_batch_axis = false;
  // Where to read an external data location from instead of the model's folder (location ->
  // path): a model read back before its data file is in place.
  std::map<std::string, std::string> external_data_paths;
  // External data held in memory (location -> bytes, which must outlive the import): a model
  // checked before either of its files is written. parse_onnx reads these too.
  std::map<std::string, std::string_view> external_data_bytes;
};

// A model whose tensors are FLOAT16 or BFLOAT16 is imported computing in float32: its weights
// (every half and bfloat16 value is a float, so exactly), declared values and type attributes
// (Cast's target…) become float32, and the graph's metadata gets this key ("float16 to float32",
// "bfloat16 to float32" or "float16 and bfloat16 to float32"), which the models written from it
// keep.
inline constexpr std::string_view kUpcastMetadataKey = "qforge.upcast";

// Throws qforge::Error: kIo when the file cannot be read, kInvalid for a file that is not a
// valid ONNX model, kUnsupported for valid models qforge cannot run (unknown op, opset outside
// 7..21, an op the version converter cannot bring to opset 13, subgraphs).
// load_onnx reads the tensors a model keeps in external data files (ONNX's `location`, `offset`
// and `length`, relative to the model's folder); a location outside that folder, a missing or
// short file, or a length that does not match the tensor is an error naming the tensor, the
// model and the file. parse_onnx has no folder: external data is kUnsupported there unless
// options.external_data_bytes holds it.
std::unique_ptr<Graph> load_onnx(const std::string& path, const ImportOptions& options = {});
std::unique_ptr<Graph> parse_onnx(std::string_view bytes, const std::string& source_name,
                                  const ImportOptions& options = {});

// ONNX TensorProto data type code to DType (kUnsupported error for others).
DType dtype_from_onnx(int onnx_type, const std::string& where);
int onnx_from_dtype(DType dtype);

}  // namespace qforge::graph
