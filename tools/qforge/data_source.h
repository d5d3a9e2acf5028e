// Model inputs for the commands: an ImageFolder preprocessed as the model's metadata and the
// preprocessing flags say, or the rows of an .npy array.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
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

// What `--data` takes, for the commands' help.
inline constexpr const char* kDataFormats =
    "an image folder (root/<class>/<image>, .jpg/.jpeg/.png, as torchvision's ImageFolder; "
    "class folders give labels) or an .npy file of model inputs";

// Adds --preset, --resize, --crop, --pixel-scale, --mean, --std, --channel-order and --layout
// to a command that reads image folders, in one "Preprocessing" help group.
void add_preprocess_flags(CLI::App& command, PreprocessOverrides& overrides);

// The preprocessing of `model`'s image input: its qforge.* metadata, overridden by the preset,
// overridden by the other flags, sizes completed from the input shape. Invalid error, naming
// the flags to give, when neither the metadata nor the flags say how pixels are normalised.
io::Preprocess resolve_preprocess(const graph::Graph& model, const PreprocessOverrides& overrides);

class DataSource {
 public:
  // `path` is a folder of images (ImageFolder layout) or an .npy file of model inputs. A folder
  // with files that are not images says how many it skipped on stderr. Preprocessing flags
  // with an .npy file are an Invalid error: its rows are model inputs already.
  static DataSource open(const std::string& path, const graph::Graph& model,
                         const PreprocessOverrides& overrides);

  size_t size() const { return size_; }
  bool labelled() const { return labelled_; }
  const graph::Shape& sample_shape() const { return sample_shape_; }  // without the batch dim
  // Fills `batch` (rows = count) with samples [begin, begin + count). Invalid error naming the
  // file and the sample when an .npy sample holds NaN or Inf.
  void load(size_t begin, size_t count, kernels::Tensor& batch) const;
  std::vector<int64_t> labels(size_t begin, size_t count) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  size_t size_ = 0;
  bool labelled_ = false;
  graph::Shape sample_shape_;
  std::shared_ptr<io::ImageFolder> images_;
  std::shared_ptr<io::NpyReader> npy_;  // rows are read when loaded: memory holds one batch
};

}  // namespace qforge::cli
