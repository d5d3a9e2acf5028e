// Fuzz target: ONNX bytes through everything `qforge inspect` does with a model (import with the
// checker and shape inference, resolution at batch 1 with constant folding, statistics). A
// qforge::Error is the expected refusal of a bad model; any other exception, a crash or a
// sanitizer report is a finding. External data at the location "weights.bin" is served from a
// fixed blob in memory (fuzz/seed_models.h), so mutated offsets and lengths reach its reader.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz/seed_models.h"
#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "kernels/error.h"
#include "runtime/model_stats.h"
#include "runtime/resolve.h"
#include "runtime/threads.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  qforge::runtime::set_num_threads(1);  // one input, one thread: runs are reproducible
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qforge;
  static const std::string blob = fuzz::external_data_blob();
  static const graph::ImportOptions import_options = [] {
    graph::ImportOptions o;
    o.external_data_bytes[fuzz::kExternalDataLocation] = blob;
    return o;
  }();
  try {
    auto model = graph::parse_onnx(std::string_view(reinterpret_cast<const char*>(data), size),
                                   "fuzz.onnx", import_options);
    auto resolved = model->clone();
    runtime::ResolveOptions options;
    options.input_shapes = runtime::input_shapes_for_batch(*model, 1);
    runtime::resolve(*resolved, options);
    runtime::model_stats(*model);
    runtime::model_stats(*resolved);
    // Post-processing cut off at import is written back: the model as the exports write it.
    if (model->tail) graph::parse_onnx(graph::serialize_onnx(*model), "written.onnx");
  } catch (const Error&) {
  }
  return 0;
}
