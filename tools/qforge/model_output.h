// The model file a command writes (calibrate, qat) and, with --external-data, the data file
// beside it that holds its weights (ONNX external data: "<output>.data"). Both are written
// through temporaries and put in place together with the command's other outputs.
#pragma once

#include <CLI/CLI.hpp>

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "tools/io/atomic_file.h"

namespace qforge::cli {

// Adds --external-data to a command that writes a model with -o.
void add_external_data_flag(CLI::App& cmd, bool& external_data);

class ModelOutput {
 public:
  // The outputs' paths, for io::check_output_paths before any work: the model and, with
  // external data, its data file.
  static std::vector<io::NamedPath> paths(const std::string& path, bool external_data);

  // Opens the temporaries (an Io error naming an unwritable path).
  ModelOutput(const std::string& path, bool external_data);

  // The data file's name as the model refers to it (graph::ExportOptions::external_data);
  // empty without external data.
  const std::string& data_name() const { return data_name_; }
  graph::ByteSink model_sink();
  graph::ByteSink data_sink();  // empty without external data

  // Where the written model is read back before it is in place, and the import options that
  // find its data file there: `options` (those the model was read with) with that added.
  std::string read_path() const { return model_.read_path(); }
  graph::ImportOptions read_back_options(graph::ImportOptions options = {}) const;

  // Puts the data file, the model and `others` (null ones skipped) in place together
  // (io::commit_together).
  void commit_with(std::initializer_list<io::AtomicFile*> others);
  // "10070.2 KiB", or "12.0 KiB, weights 10058.2 KiB in model.onnx.data".
  std::string size_text(size_t model_bytes) const;

 private:
  io::AtomicFile model_;
  std::unique_ptr<io::AtomicFile> data_;
  std::string data_name_;
  size_t data_bytes_ = 0;
};

}  // namespace qforge::cli
