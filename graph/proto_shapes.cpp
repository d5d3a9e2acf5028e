// libonnx's shape inference for import-time rewrites.
#include "graph/proto_shapes.h"

#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

namespace qforge::graph {

std::unordered_map<std::string, std::vector<int64_t>> inferred_dims(onnx::ModelProto& model,
                                                                    bool data_propagation) {
  onnx::ShapeInferenceOptions si{};
  si.check_type = false;
  si.error_mode = 0;
  si.enable_data_propagation = data_propagation;
  try {
    onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(), si);
  } catch (const std::exception&) {
    // The shapes that stay unknown are reported by the rewrite that needs them.
  }
  std::unordered_map<std::string, std::vector<int64_t>> dims;
  const onnx::GraphProto& g = model.graph();
  for (const auto* list : {&g.input(), &g.value_info(), &g.output()}) {
    for (const auto& v : *list) {
      if (!v.type().has_tensor_type() || !v.type().tensor_type().has_shape()) continue;
      std::vector<int64_t>& d = dims[v.name()];
      for (const auto& dim : v.type().tensor_type().shape().dim()) {
        d.push_back(dim.has_dim_value() ? dim.dim_value() : -1);
      }
    }
  }
  for (const auto& t : g.initializer()) {
    dims[t.name()] = std::vector<int64_t>(t.dims().begin(), t.dims().end());
  }
  return dims;
}

}  // namespace qforge::graph
