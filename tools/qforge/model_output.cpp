#include "tools/qforge/model_output.h"

#include <cstdio>
#include <vector>

namespace qforge::cli {
namespace {

std::string data_path_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string folder = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  return folder + graph::external_data_name(path);
}

std::string kib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f KiB", static_cast<double>(bytes) / 1024.0);
  return text;
}

}  // namespace

void add_external_data_flag(CLI::App& cmd, bool& external_data) {
  cmd.add_flag("--external-data", external_data,
               "write the weights (tensors of 1 KiB and more) to '<output>.data' beside the model, "
               "as ONNX external data, which models over protobuf's 2 GiB need; keep the two "
               "files together");
}

std::vector<io::NamedPath> ModelOutput::paths(const std::string& path, bool external_data) {
  std::vector<io::NamedPath> out = {{"-o", path}};
  if (external_data) out.push_back({"--external-data", data_path_of(path)});
  return out;
}

ModelOutput::ModelOutput(const std::string& path, bool external_data) : model_(path) {
  if (external_data) {
    data_ = std::make_unique<io::AtomicFile>(data_path_of(path));
    data_name_ = graph::external_data_name(path);
  }
}

graph::ByteSink ModelOutput::model_sink() {
  return [this](const void* p, size_t n) { model_.write(p, n); };
}

graph::ByteSink ModelOutput::data_sink() {
  if (!data_) return {};
  return [this](const void* p, size_t n) {
    data_->write(p, n);
    data_bytes_ += n;
  };
}

graph::ImportOptions ModelOutput::read_back_options(graph::ImportOptions options) const {
  if (data_) options.external_data_paths[data_name_] = data_->read_path();
  return options;
}

void ModelOutput::commit_with(std::initializer_list<io::AtomicFile*> others) {
  std::vector<io::AtomicFile*> files = {data_.get(), &model_};
  files.insert(files.end(), others);
  io::commit_together(files);
}

std::string ModelOutput::size_text(size_t model_bytes) const {
  if (!data_) return kib(model_bytes);
  return kib(model_bytes) + ", weights " + kib(data_bytes_) + " in " + data_name_;
}

}  // namespace qforge::cli
