// --input-shape C,H,W: the dims after the batch of a model whose input has dynamic ones (height
// and width left symbolic by the exporter), or NAME=D1,D2 for each named input of a model of
// several (a text model's sequence length). One place for the flag and for what it does on
// import, shared by the commands that import a model to run it.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "graph/onnx_import.h"
#include "tools/qforge/data_source.h"

namespace qforge::cli {

struct InputShapeFlag {
  // As given: "D1,D2,…" for the single input, or "NAME=D1,D2,…" (several); empty: not given.
  std::vector<std::string> specs;
  // --no-batch-axis: the model's input is one sample (torchvision's detectors take [3, H, W]).
  bool no_batch_axis = false;
  // The command's preprocessing flags, when it has them: an image folder cropped by --crop or
  // --preset gives the sample shape.
  const PreprocessOverrides* preprocess = nullptr;
};

// Adds --input-shape and --no-batch-axis; `preprocess`, the same command's preprocessing flags
// (or null).
void add_input_shape_option(CLI::App& cmd, InputShapeFlag& flag,
                            const PreprocessOverrides* preprocess = nullptr);

// Import options fixing the model input's dynamic dims after the batch from the flag, else from
// the rows of `data` when it is an .npy file, else, when `data` is an image folder, from the
// crop the preprocessing flags give (3,H,W, or H,W,3 with --layout NHWC); and requiring them
// static: the error names the input, its dynamic dims and the ways to give them.
graph::ImportOptions import_options_for(const InputShapeFlag& flag, const std::string& data);

// graph::load_onnx with those options. A model with a post-processing tail (graph/tail.h) gets a
// note on stderr saying what qforge keeps but does not run, unless note_tail is false; one whose
// input takes a sample without a batch axis (the data's sample rank), a note saying so.
std::unique_ptr<graph::Graph> load_model_to_run(const std::string& path, const InputShapeFlag& flag,
                                                const std::string& data, bool note_tail = true);

// The batch a command runs `model` at: 1 for a model whose file takes one sample without a
// batch axis (the import gave it one, graph/sample_axis.h), else `batch`.
int64_t batch_for(const graph::Graph& model, int64_t batch);

}  // namespace qforge::cli
