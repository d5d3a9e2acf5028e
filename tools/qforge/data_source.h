// Model inputs for the commands: an ImageFolder preprocessed as the model's metadata and the
// preprocessing flags say, the rows of an .npy array, or the arrays of an .npz keyed by input
// name (multi-input models, integer inputs).
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "kernels/tensor.h"
#include "tools/io/image_folder.h"
#include "tools/io/npy.h"

namespace qforge::cli {

// Preprocessing flags that override the model's metadata. Empty or zero fields were not given.
struct PreprocessOverrides {
  std::string preset;  // "imagenet": the values below, each overridable by its own flag
  std::vector<int> resize;
  std::vector<int> crop;
  float pixel_scale = 0;
  std::vector<float> mean;
  std::vector<float> std;
  std::string channel_order;  // RGB or BGR
  std::string layout;         // NCHW or NHWC

  bool given() const;
  // True when the flags say how pixels are normalised: a preset, --pixel-scale, --mean or --std.
  bool state_normalisation() const;
};

// The array of an .npz that holds the samples' class labels, beside the model inputs' arrays.
inline constexpr const char* kLabelsArray = "labels";

// What `--data` takes, for the commands' help.
inline constexpr const char* kDataFormats =
    "an image folder (root/<class>/<image>, .jpg/.jpeg/.png, as torchvision's ImageFolder; "
    "class folders give labels), an .npy file of model inputs, or an .npz of one array per "
    "model input, keyed by input name (token ids and masks of a text model, say), and "
    "optionally 'labels' (int64, one class per sample)";

// Adds --preset, --resize, --crop, --pixel-scale, --mean, --std, --channel-order and --layout
// to a command that reads image folders, in one "Preprocessing" help group.
void add_preprocess_flags(CLI::App& command, PreprocessOverrides& overrides);

// The preprocessing of `model`'s image input: its qforge.* metadata, overridden by the preset,
// overridden by the other flags, sizes completed from the input shape. Invalid error, naming
// the flags to give, when neither the metadata nor the flags say how pixels are normalised.
io::Preprocess resolve_preprocess(const graph::Graph& model, const PreprocessOverrides& overrides);

class DataSource {
 public:
  // `path` is a folder of images (ImageFolder layout), an .npy file of model inputs, or an .npz
  // holding, for every model input, an array named after it (its dtype and sample shape the
  // input's; every array the same number of rows). A folder with files that are not images says
  // how many it skipped on stderr. Preprocessing flags with an .npy or .npz file are an Invalid
  // error: their rows are model inputs already. Errors name the file and the input at fault.
  static DataSource open(const std::string& path, const graph::Graph& model,
                         const PreprocessOverrides& overrides);

  size_t size() const { return size_; }
  bool labelled() const { return labelled_; }
  // Of the first (for images and .npy, the only) model input, without the batch dim.
  const graph::Shape& sample_shape() const { return sample_shape_; }
  // The model inputs the data feeds: one float32 input for images and .npy, every input for
  // .npz; input k's element type and shape without the batch dim.
  size_t input_count() const { return arrays_.empty() ? 1 : arrays_.size(); }
  kernels::DType input_dtype(size_t k) const;
  graph::Shape input_sample_shape(size_t k) const;
  // Sample `index` of every input into row `at` of `rows` (one batch tensor per input). Invalid
  // error naming the file, input and sample when a float sample holds NaN or Inf.
  void load_sample(size_t index, std::span<kernels::Tensor> rows, size_t at) const;
  // Fills `batch` (rows = count) with samples [begin, begin + count) of an image folder or an
  // .npy (the one float32 input; .npz data loads through load_inputs or load_sample). Invalid
  // error naming the file and the sample when a sample holds NaN or Inf.
  void load(size_t begin, size_t count, kernels::Tensor& batch) const;
  // Samples [begin, begin + count) of every model input, in the model's input order.
  std::vector<kernels::Tensor> load_inputs(size_t begin, size_t count) const;
  std::vector<int64_t> labels(size_t begin, size_t count) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  size_t size_ = 0;
  bool labelled_ = false;
  graph::Shape sample_shape_;
  std::shared_ptr<io::ImageFolder> images_;
  std::shared_ptr<io::NpyReader> npy_;   // rows are read when loaded: memory holds one batch
  std::vector<kernels::Tensor> arrays_;  // .npz: one per model input, read whole
  kernels::Tensor npz_labels_;           // .npz: its 'labels' array, when it holds one
  std::vector<std::string> array_names_;
};

}  // namespace qforge::cli
