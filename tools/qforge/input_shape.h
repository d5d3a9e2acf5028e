// --input-shape C,H,W: the dims after the batch of a model whose input has dynamic ones (height
// and width left symbolic by the exporter). One place for the flag and for what it does on
// import, shared by the commands that import a model to run it.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "graph/onnx_import.h"

namespace qforge::cli {

struct InputShapeFlag {
  std::vector<int64_t> dims;  // empty: not given
};

void add_input_shape_option(CLI::App& cmd, InputShapeFlag& flag);

// Import options fixing the model input's dynamic dims after the batch from the flag, else from
// the rows of `data` when it is an .npy file (empty or an image folder: none), and requiring
// them static: the error names the input, its dynamic dims and these two ways to give them.
graph::ImportOptions import_options_for(const InputShapeFlag& flag, const std::string& data);

// graph::load_onnx with those options.
std::unique_ptr<graph::Graph> load_model_to_run(const std::string& path, const InputShapeFlag& flag,
                                                const std::string& data);

}  // namespace qforge::cli
