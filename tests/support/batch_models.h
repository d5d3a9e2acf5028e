// Variants of a model file that differ only in how its inputs and outputs declare the batch:
// what a fixed-batch (torch.onnx's default) or unnamed-batch export of the same network gives
// once qforge has resolved it.
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace qforge::testing {

struct BatchDeclaration {
  std::optional<int64_t> size;  // a fixed batch
  std::string param;            // a symbolic batch's name; empty with no size: unknown
};

// Writes `source` to `target` with the leading dimension of every input and output declared as
// `batch`.
inline void write_with_batch(const std::string& source, const std::string& target,
                             const BatchDeclaration& batch) {
  std::ifstream in(source, std::ios::binary);
  onnx::ModelProto model;
  if (!in || !model.ParseFromIstream(&in)) throw std::runtime_error("cannot read " + source);
  auto* g = model.mutable_graph();
  for (auto* list : {g->mutable_input(), g->mutable_output()}) {
    for (auto& v : *list) {
      auto* dim = v.mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(0);
      dim->Clear();
      if (batch.size) {
        dim->set_dim_value(*batch.size);
      } else if (!batch.param.empty()) {
        dim->set_dim_param(batch.param);
      }
    }
  }
  std::ofstream out(target, std::ios::binary);
  if (!out || !model.SerializeToOstream(&out)) throw std::runtime_error("cannot write " + target);
}

// The batch a model file declares for its first input and first output: "N", "8" or "?".
inline std::pair<std::string, std::string> declared_batch_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  onnx::ModelProto model;
  if (!in || !model.ParseFromIstream(&in)) throw std::runtime_error("cannot read " + path);
  auto text = [](const onnx::ValueInfoProto& v) {
    const auto& d = v.type().tensor_type().shape().dim(0);
    return d.has_dim_value()       ? std::to_string(d.dim_value())
           : d.dim_param().empty() ? std::string("?")
                                   : d.dim_param();
  };
  return {text(model.graph().input(0)), text(model.graph().output(0))};
}

}  // namespace qforge::testing
