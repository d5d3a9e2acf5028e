// DataSource over image folders and .npy arrays.
#include "tools/qforge/data_source.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include "tools/io/check_finite.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"
#include "tools/qforge/cli_checks.h"

namespace qforge::cli {
namespace fs = std::filesystem;

bool PreprocessOverrides::given() const {
  return !preset.empty() || !resize.empty() || !crop.empty() || pixel_scale > 0 || !mean.empty() ||
         !std.empty() || !channel_order.empty() || !layout.empty();
}

bool PreprocessOverrides::state_normalisation() const {
  return !preset.empty() || pixel_scale > 0 || !mean.empty() || !std.empty();
}

void add_preprocess_flags(CLI::App& command, PreprocessOverrides& o) {
  const char* group = "Preprocessing (image folders; overrides the model's qforge.* metadata)";
  command
      .add_option("--preset", o.preset,
                  "imagenet: --resize 256 --crop 224 --pixel-scale 255 --mean "
                  "0.485,0.456,0.406 --std 0.229,0.224,0.225, RGB, NCHW (torchvision's "
                  "ImageNet models); the other flags override its values")
      ->check(CLI::IsMember({"imagenet"}))
      ->group(group);
  command
      .add_option("--resize", o.resize,
                  "N: shorter side to N, keeping the aspect ratio; H,W: exactly H×W (PIL "
                  "bilinear with antialiasing, as torchvision's Resize)")
      ->delimiter(',')
      ->check(integer_at_least(1, INT32_MAX))
      ->group(group);
  command
      .add_option("--crop", o.crop,
                  "S or H,W: center crop after --resize, as torchvision's CenterCrop")
      ->delimiter(',')
      ->check(integer_at_least(1, INT32_MAX))
      ->group(group);
  command
      .add_option("--pixel-scale", o.pixel_scale,
                  "divide 8-bit pixels by this before mean/std (default 255)")
      ->check(positive_number())
      ->group(group);
  command.add_option("--mean", o.mean, "per-channel mean, after --pixel-scale (default 0)")
      ->delimiter(',')
      ->group(group);
  command.add_option("--std", o.std, "per-channel std, after --pixel-scale (default 1)")
      ->delimiter(',')
      ->group(group);
  command.add_option("--channel-order", o.channel_order, "RGB (default) or BGR")
      ->transform(CLI::IsMember({"RGB", "BGR"}, CLI::ignore_case))
      ->group(group);
  command.add_option("--layout", o.layout, "NCHW (default) or NHWC: the model input's layout")
      ->transform(CLI::IsMember({"NCHW", "NHWC"}, CLI::ignore_case))
      ->group(group);
}

io::Preprocess resolve_preprocess(const graph::Graph& model, const PreprocessOverrides& o) {
  const graph::Value* input = model.inputs()[0];
  if (!io::has_preprocess_metadata(model.metadata) && !o.state_normalisation()) {
    throw_invalid(
        "data: the model has no qforge.* preprocessing metadata and no preprocessing flags "
        "were given, so how its input '" +
        input->name() +
        "' expects pixels is unknown; give --preset imagenet (torchvision's ImageNet "
        "models), or --resize, --crop, --pixel-scale, --mean and --std (and --channel-order, "
        "--layout when not RGB, NCHW)");
  }
  io::Preprocess p = io::preprocess_from_metadata(model.metadata);
  if (o.preset == "imagenet") {
    p.resize = {256};
    p.crop = {224};
    p.pixel_scale = 255.0f;
    p.mean = {0.485f, 0.456f, 0.406f};
    p.std = {0.229f, 0.224f, 0.225f};
    p.bgr = false;
    p.nhwc = false;
  }
  if (!o.resize.empty()) p.resize = o.resize;
  if (!o.crop.empty()) p.crop = o.crop;
  if (o.pixel_scale > 0) p.pixel_scale = o.pixel_scale;
  if (!o.mean.empty()) p.mean = o.mean;
  if (!o.std.empty()) p.std = o.std;
  if (!o.channel_order.empty()) p.bgr = o.channel_order == "BGR";
  if (!o.layout.empty()) p.nhwc = o.layout == "NHWC";
  graph::Shape model_shape = input->has_shape() ? *input->shape() : graph::Shape{};
  io::fill_input_size(p, model_shape);
  return p;
}

namespace {

bool is_npz_name(const std::string& path) {
  return path.size() >= 4 && path.compare(path.size() - 4, 4, ".npz") == 0;
}

// Each model input's array from the archive, checked against the input; its 'labels' array,
// when it holds one that is no model input's, into `labels` (int64, one per sample).
std::vector<kernels::Tensor> npz_inputs(const std::string& path, const graph::Graph& model,
                                        size_t* rows, kernels::Tensor* labels) {
  std::map<std::string, kernels::Tensor> arrays = io::read_npz(path);
  std::string held;
  for (const auto& [name, array] : arrays) {
    held += (held.empty() ? "'" : ", '") + name + "' " + array.describe();
  }
  std::vector<kernels::Tensor> inputs;
  std::string first_name;
  for (const graph::Value* input : model.inputs()) {
    const std::string where = "data: '" + path + "': model input '" + input->name() + "'";
    auto it = arrays.find(input->name());
    if (it == arrays.end()) {
      throw_invalid(where + " has no array of its name (the archive holds " +
                    (held.empty() ? std::string("nothing") : held) + ")");
    }
    const kernels::Tensor& array = it->second;
    if (array.dtype() != input->dtype()) {
      throw_invalid(where + " takes " + kernels::dtype_name(input->dtype()) + ", the array is " +
                    array.describe());
    }
    if (array.rank() == 0) throw_invalid(where + ": the array is a scalar, expected a batch");
    graph::Shape sample(array.shape().begin() + 1, array.shape().end());
    if (input->has_shape() && !input->shape()->empty()) {
      graph::Shape expected(input->shape()->begin() + 1, input->shape()->end());
      bool match = expected.size() == sample.size();
      for (size_t i = 0; match && i < expected.size(); ++i) {
        match = expected[i] < 0 || expected[i] == sample[i];
      }
      if (!match) {
        throw_invalid(where + " takes samples of shape " + kernels::shape_str(expected) +
                      ", the array holds " + kernels::shape_str(sample));
      }
    }
    const auto count = static_cast<size_t>(array.dim(0));
    if (inputs.empty()) {
      *rows = count;
      first_name = input->name();
    } else if (count != *rows) {
      throw_invalid(where + ": the array holds " + std::to_string(count) + " samples, '" +
                    first_name + "' holds " + std::to_string(*rows));
    }
    inputs.push_back(array);
  }
  const auto it = arrays.find(kLabelsArray);
  if (it != arrays.end() && !model.find_value(kLabelsArray)) {
    const kernels::Tensor& array = it->second;
    if (array.dtype() != kernels::DType::kInt64 || array.rank() != 1 ||
        static_cast<size_t>(array.dim(0)) != *rows) {
      throw_invalid("data: '" + path + "': 'labels' must hold one int64 class label per sample (" +
                    std::to_string(*rows) + "), got " + array.describe());
    }
    *labels = array;
  }
  return inputs;
}

}  // namespace

DataSource DataSource::open(const std::string& path, const graph::Graph& model,
                            const PreprocessOverrides& overrides) {
  std::error_code ec;
  if (is_npz_name(path) && !fs::is_directory(path, ec)) {
    if (overrides.given()) {
      throw_invalid(
          "data: preprocessing flags (--preset, --resize, --crop, --pixel-scale, "
          "--mean, --std, --channel-order, --layout) apply to image folders; '" +
          path + "' is an .npz of model inputs, used as they are");
    }
    DataSource src;
    src.path_ = path;
    src.arrays_ = npz_inputs(path, model, &src.size_, &src.npz_labels_);
    src.labelled_ = src.npz_labels_.defined();
    for (const graph::Value* input : model.inputs()) src.array_names_.push_back(input->name());
    const kernels::Tensor& first = src.arrays_.front();
    src.sample_shape_.assign(first.shape().begin() + 1, first.shape().end());
    return src;
  }
  if (model.inputs().size() != 1) {
    throw_unsupported("data: model has " + std::to_string(model.inputs().size()) +
                      " inputs; an image folder or .npy file feeds single-input models (give an "
                      ".npz with one array per input, keyed by input name)");
  }
  const graph::Value* input = model.inputs()[0];
  graph::Shape model_sample;
  if (input->has_shape() && input->shape()->size() >= 1) {
    model_sample.assign(input->shape()->begin() + 1, input->shape()->end());
  }
  DataSource src;
  src.path_ = path;
  if (!fs::exists(path, ec)) throw_io("data: '" + path + "' does not exist");
  if (fs::is_directory(path, ec)) {
    io::Preprocess pre = resolve_preprocess(model, overrides);
    if (pre.channels <= 0 || pre.height <= 0 || pre.width <= 0) {
      throw_invalid("data: cannot feed images to model input '" + input->name() + "' of shape " +
                    (input->has_shape() ? kernels::shape_str(*input->shape()) : "[?]") +
                    (pre.nhwc ? ": expected N×H×W×C" : ": expected N×C×H×W"));
    }
    src.images_ = std::make_shared<io::ImageFolder>(path, pre);
    if (size_t skipped = src.images_->skipped_files(); skipped > 0) {
      std::fprintf(stderr, "data: '%s': skipped %zu file%s that %s not .jpg, .jpeg or .png\n",
                   path.c_str(), skipped, skipped == 1 ? "" : "s", skipped == 1 ? "is" : "are");
    }
    src.size_ = src.images_->size();
    src.labelled_ = !src.images_->class_names().empty();
    src.sample_shape_ = pre.nhwc ? graph::Shape{pre.height, pre.width, pre.channels}
                                 : graph::Shape{pre.channels, pre.height, pre.width};
    return src;
  }
  if (overrides.given()) {
    throw_invalid(
        "data: preprocessing flags (--preset, --resize, --crop, --pixel-scale, --mean, "
        "--std, --channel-order, --layout) apply to image folders; '" +
        path + "' is an .npy file of model inputs, used as they are");
  }
  src.npy_ = std::make_shared<io::NpyReader>(io::NpyReader::open(path));
  const io::NpyReader& npy = *src.npy_;
  // Float32 rows stream from the file; the token ids of a model that takes int64 (or another
  // dtype the input declares) are read whole, as an .npz's arrays are.
  const bool as_input = npy.dtype() != kernels::DType::kFloat32 && npy.dtype() == input->dtype();
  if (npy.dtype() != kernels::DType::kFloat32 && !as_input) {
    throw_invalid("data: '" + path + "' holds " + kernels::dtype_name(npy.dtype()) +
                  kernels::shape_str(npy.shape()) + ", model input '" + input->name() + "' takes " +
                  kernels::dtype_name(input->dtype()));
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
  if (as_input) {
    src.arrays_ = {io::read_npy(path)};
    src.array_names_ = {input->name()};
    src.npy_.reset();
  }
  return src;
}

void DataSource::load(size_t begin, size_t count, kernels::Tensor& batch) const {
  if (!arrays_.empty()) throw_internal("data: load is for images and .npy rows");
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

std::vector<kernels::Tensor> DataSource::load_inputs(size_t begin, size_t count) const {
  std::vector<kernels::Tensor> inputs;
  if (arrays_.empty()) {
    graph::Shape shape = sample_shape_;
    shape.insert(shape.begin(), static_cast<int64_t>(count));
    inputs.emplace_back(kernels::DType::kFloat32, shape);
    load(begin, count, inputs.back());
    return inputs;
  }
  for (size_t k = 0; k < arrays_.size(); ++k) {
    graph::Shape shape = input_sample_shape(k);
    shape.insert(shape.begin(), static_cast<int64_t>(count));
    inputs.emplace_back(arrays_[k].dtype(), shape);
  }
  for (size_t i = 0; i < count; ++i) load_sample(begin + i, inputs, i);
  return inputs;
}

kernels::DType DataSource::input_dtype(size_t k) const {
  return arrays_.empty() ? kernels::DType::kFloat32 : arrays_.at(k).dtype();
}

graph::Shape DataSource::input_sample_shape(size_t k) const {
  if (arrays_.empty()) return sample_shape_;
  const graph::Shape& s = arrays_.at(k).shape();
  return graph::Shape(s.begin() + 1, s.end());
}

void DataSource::load_sample(size_t index, std::span<kernels::Tensor> rows, size_t at) const {
  if (rows.size() != input_count()) {
    throw_internal("data: " + std::to_string(rows.size()) + " batches for " +
                   std::to_string(input_count()) + " inputs");
  }
  if (arrays_.empty()) {
    graph::Shape one = sample_shape_;
    one.insert(one.begin(), 1);
    const size_t row = static_cast<size_t>(kernels::shape_numel(sample_shape_));
    kernels::Tensor sample =
        kernels::Tensor::wrap(kernels::DType::kFloat32, one, rows[0].data<float>() + at * row);
    load(index, 1, sample);
    return;
  }
  for (size_t k = 0; k < arrays_.size(); ++k) {
    const kernels::Tensor& array = arrays_[k];
    const size_t bytes = array.nbytes() / static_cast<size_t>(array.dim(0));
    const auto* src = static_cast<const std::byte*>(array.raw()) + index * bytes;
    auto* dst = static_cast<std::byte*>(rows[k].raw()) + at * bytes;
    std::memcpy(dst, src, bytes);
    if (array.dtype() == kernels::DType::kFloat32) {
      io::check_finite(
          reinterpret_cast<const float*>(dst), bytes / sizeof(float),
          "data '" + path_ + "', input '" + array_names_[k] + "', sample " + std::to_string(index));
    }
  }
}

std::vector<int64_t> DataSource::labels(size_t begin, size_t count) const {
  if (!labelled_) return {};
  if (npz_labels_.defined()) {
    const int64_t* p = npz_labels_.data<int64_t>();
    return std::vector<int64_t>(p + begin, p + begin + count);
  }
  return images_->labels(begin, count);
}

}  // namespace qforge::cli
