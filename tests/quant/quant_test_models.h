// Fused bundled models shared by the placement, calibration and Q/DQ export tests.
#pragma once

#include <memory>
#include <string>

#include "graph/onnx_import.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/test_support.h"

namespace qforge::testing {

// The bundled model `name` (e.g. "resnet_bn"), transformed at `batch` with a fresh plan.
inline std::unique_ptr<graph::Graph> fused_model(const std::string& name, int64_t batch = 1) {
  auto model = graph::load_onnx(data_path("models/" + name + ".onnx"));
  runtime::TransformOptions options;
  options.batch = batch;
  return std::move(runtime::transform_model(*model, nullptr, options).graph);
}

}  // namespace qforge::testing
