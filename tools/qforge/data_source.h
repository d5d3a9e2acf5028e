// Model inputs for the commands: an ImageFolder preprocessed as the model's metadata says, or
// the rows of an .npy array.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "kernels/tensor.h"
#include "tools/io/image_folder.h"
#include "tools/io/npy.h"

namespace qforge::cli {

// Preprocessing flags that override the model's metadata.
struct PreprocessOverrides {
  std::vector<float> mean;
  std::vector<float> std;
  std::optional<float> pixel_scale;
};

class DataSource {
 public:
  // `path` is a folder of images (ImageFolder layout) or an .npy file of model inputs.
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
