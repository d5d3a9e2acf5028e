// Fuzz target: ONNX bytes through everything `qforge inspect` does with a model (import with the
// checker and shape inference, resolution at batch 1 with constant folding, statistics), the
// export's write-back of post-processing, and the batch axis import gives a model of one sample. A
// qforge::Error is the expected refusal of a bad model; any other exception, a crash or a
// sanitizer report is a finding. External data at the location "weights.bin" is served from a
// fixed blob in memory (fuzz/seed_models.h), so mutated offsets and lengths reach its reader.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

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
    // Taken as one sample without a batch axis (data whose samples have the input's rank), the
    // model gets one at import and loses it at export: what is written reads back as what the
    // model written without it does (the same input shape, the same outputs).
    if (model->inputs().size() == 1 && model->inputs()[0]->has_shape()) {
      graph::ImportOptions one_sample = import_options;
      one_sample.data_sample_rank = model->inputs()[0]->shape()->size();
      const auto batched = graph::parse_onnx(
          std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.onnx", one_sample);
      const auto plain =
          graph::parse_onnx(graph::serialize_onnx(*model), "written.onnx", import_options);
      const auto written =
          graph::parse_onnx(graph::serialize_onnx(*batched), "written.onnx", import_options);
      std::vector<std::string> plain_outputs, written_outputs;
      for (const graph::Value* v : plain->outputs()) plain_outputs.push_back(v->name());
      for (const graph::Value* v : written->outputs()) written_outputs.push_back(v->name());
      if (written->inputs().size() != 1 || plain->inputs().size() != 1 ||
          written->inputs()[0]->shape() != plain->inputs()[0]->shape() ||
          written_outputs != plain_outputs) {
        throw std::logic_error("the batch axis added at import is not taken away at export");
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
