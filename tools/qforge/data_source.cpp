// DataSource over image folders and .npy arrays.
#include "tools/qforge/data_source.h"

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
  src.npy_ = std::make_shared<io::NpyReader>(io::NpyReader::open(path));
  const io::NpyReader& npy = *src.npy_;
  if (npy.dtype() != kernels::DType::kFloat32) {
    throw_invalid("data: '" + path + "' holds " + kernels::dtype_name(npy.dtype()) +
                  kernels::shape_str(npy.shape()) + ", expected float32 model inputs");
  }
  if (npy.shape().empty()) throw_invalid("data: '" + path + "' is a scalar, expected a batch");
  src.sample_shape_.assign(npy.shape().begin() + 1, npy.shape().end());
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
  src.size_ = static_cast<size_t>(npy.shape()[0]);
  return src;
}

void DataSource::load(size_t begin, size_t count, kernels::Tensor& batch) const {
  if (images_) {
    images_->load_batch(begin, count, batch.data<float>());
    return;
  }
  const size_t row = static_cast<size_t>(kernels::shape_numel(sample_shape_));
  npy_->read_rows(begin, count, batch.data<float>());
  for (size_t i = 0; i < count; ++i) {
    io::check_finite(batch.data<float>() + i * row, row,
                     "data '" + path_ + "', sample " + std::to_string(begin + i));
  }
}

std::vector<int64_t> DataSource::labels(size_t begin, size_t count) const {
  if (!images_ || !labelled_) return {};
  return images_->labels(begin, count);
}

}  // namespace qforge::cli
