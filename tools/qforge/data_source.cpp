// DataSource over image folders and .npy arrays.
#include "tools/qforge/data_source.h"

#include <cstring>
#include <filesystem>

#include "tools/io/check_finite.h"
#include "tools/io/npy.h"

namespace qforge::cli {
namespace fs = std::filesystem;

DataSource DataSource::open(const std::string& path, const graph::Graph& model,
                            const PreprocessOverrides& overrides) {
  if (model.inputs().size() != 1) {
    throw_unsupported("data: model has " + std::to_string(model.inputs().size()) +
                      " inputs; --data feeds single-input models");
  }
  const graph::Value* input = model.inputs()[0];
  graph::Shape model_sample;
  if (input->has_shape() && input->shape()->size() >= 1) {
    model_sample.assign(input->shape()->begin() + 1, input->shape()->end());
  }
  DataSource src;
  src.path_ = path;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw_io("data: '" + path + "' does not exist");
  if (fs::is_directory(path, ec)) {
    graph::Shape model_shape = input->has_shape() ? *input->shape() : graph::Shape{};
    io::Preprocess pre = io::preprocess_from_metadata(model.metadata, model_shape);
    if (pre.channels <= 0 || pre.height <= 0 || pre.width <= 0) {
      throw_invalid("data: cannot feed images to model input '" + input->name() + "' of shape " +
                    (input->has_shape() ? kernels::shape_str(*input->shape()) : "[?]") +
                    ": expected N×C×H×W");
    }
    if (!overrides.mean.empty()) pre.mean = overrides.mean;
    if (!overrides.std.empty()) pre.std = overrides.std;
    if (overrides.pixel_scale) pre.pixel_scale = *overrides.pixel_scale;
    src.images_ = std::make_shared<io::ImageFolder>(path, pre);
    src.size_ = src.images_->size();
    src.labelled_ = !src.images_->class_names().empty();
    src.sample_shape_ = {pre.channels, pre.height, pre.width};
    return src;
  }
  src.array_ = io::read_npy(path);
  if (src.array_.dtype() != kernels::DType::kFloat32) {
    throw_invalid("data: '" + path + "' holds " + src.array_.describe() +
                  ", expected float32 model inputs");
  }
  if (src.array_.rank() < 1) throw_invalid("data: '" + path + "' is a scalar, expected a batch");
  src.sample_shape_.assign(src.array_.shape().begin() + 1, src.array_.shape().end());
  if (!model_sample.empty()) {
    bool match = model_sample.size() == src.sample_shape_.size();
    for (size_t i = 0; match && i < model_sample.size(); ++i) {
      match = model_sample[i] < 0 || model_sample[i] == src.sample_shape_[i];
    }
    if (!match) {
      throw_invalid("data: '" + path + "' holds samples of shape " +
                    kernels::shape_str(src.sample_shape_) + ", the model expects " +
                    kernels::shape_str(model_sample));
    }
  }
  io::check_finite(src.array_.data<float>(), static_cast<size_t>(src.array_.numel()),
                   "data '" + path + "'");
  src.size_ = static_cast<size_t>(src.array_.dim(0));
  return src;
}

void DataSource::load(size_t begin, size_t count, kernels::Tensor& batch) const {
  if (images_) {
    images_->load_batch(begin, count, batch.data<float>());
    return;
  }
  const size_t row = static_cast<size_t>(kernels::shape_numel(sample_shape_));
  std::memcpy(batch.data<float>(), array_.data<float>() + begin * row, count * row * sizeof(float));
}

std::vector<int64_t> DataSource::labels(size_t begin, size_t count) const {
  if (!images_ || !labelled_) return {};
  return images_->labels(begin, count);
}

}  // namespace qforge::cli
