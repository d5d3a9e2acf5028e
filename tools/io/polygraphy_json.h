// Polygraphy's `--save-outputs` JSON (a RunResults object): per runner, per iteration, the
// outputs by tensor name, each array base64-encoded in .npy form. `polygraphy run model.onnx
// --trt --onnx-outputs mark all --save-outputs out.json` dumps a TensorRT engine's values this way.
#pragma once

#include <map>
#include <string>

#include "kernels/tensor.h"

namespace qforge::io {

struct PolygraphyOutputs {
  std::string runner;  // the runner they came from
  size_t runners = 0;
  size_t iterations = 0;  // of that runner; the first is read
  std::map<std::string, kernels::Tensor> tensors;
};

// Reads the first iteration of runner `runner` (empty: the first runner in the file). Arrays may
// be wrapped as LazyArray ({"values": ...}) or not. Errors name the file: Io when it cannot be
// read; Invalid when it is not such JSON (naming the runner or tensor at fault), or the runner is
// absent (the runners present listed).
PolygraphyOutputs read_polygraphy_outputs(const std::string& path, const std::string& runner = "");

// RFC 4648 base64 (padding required, no line breaks); `where` names the text in errors.
std::string decode_base64(std::string_view text, const std::string& where);

}  // namespace qforge::io
