// Image datasets for calibration and QAT: PNG files in the ImageFolder layout, decoded with
// libpng and preprocessed exactly as the model was trained (no resizing, no cropping).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/tensor.h"
#include "tools/io/check_finite.h"

namespace qforge::io {

// ONNX metadata_props keys that describe a model's input preprocessing.
inline constexpr std::string_view kMetaInputShape = "qforge.input_shape";  // "3,32,32" = C,H,W
inline constexpr std::string_view kMetaPixelScale = "qforge.pixel_scale";  // default 255
inline constexpr std::string_view kMetaMean = "qforge.mean";  // "0.5,0.5,0.5"; default 0
inline constexpr std::string_view kMetaStd = "qforge.std";    // "0.2,0.2,0.2"; default 1
inline constexpr std::string_view kMetaChannelOrder = "qforge.channel_order";  // RGB (default)|BGR
inline constexpr std::string_view kMetaLayout = "qforge.layout";  // NCHW (default, only one)

// Turns an 8-bit image into model input: out[c][y][x] = (pixel / pixel_scale - mean[c]) / std[c]
// in float32, NCHW. Channels are in RGB order, or BGR when bgr is set (mean and std are then
// given in the model's BGR order too).
struct Preprocess {
  int channels = 0;  // 1 (grayscale) or 3 (color); 0 until known
  int height = 0;
  int width = 0;
  float pixel_scale = 255.0f;
  std::vector<float> mean;  // one value per channel, or one for all; empty means 0
  std::vector<float> std;   // one value per channel, or one for all; empty means 1
  bool bgr = false;
};

// Reads the kMeta* keys; missing keys keep the defaults above. Without qforge.input_shape,
// channels, height and width stay 0 and must be filled from the model (see the overload).
// Invalid error naming the key for malformed values; Unsupported for a layout other than NCHW.
Preprocess preprocess_from_metadata(const std::map<std::string, std::string>& metadata);
// Same, taking C, H, W from the model's N x C x H x W input shape (dimensions <= 0 are dynamic)
// where the metadata does not give them; where both give a dimension they must agree. An empty
// shape stands for an input without a declared shape. Invalid error when C, H or W stay unknown.
Preprocess preprocess_from_metadata(const std::map<std::string, std::string>& metadata,
                                    std::span<const int64_t> model_input_shape);

// Invalid error naming the field unless channels is 1 or 3, height and width are positive,
// pixel_scale is finite and positive, mean and std hold 0, 1 or `channels` finite values and
// every std is non-zero.
void check_preprocess(const Preprocess& preprocess);

// An 8-bit image, rows of width x channels interleaved bytes. channels: 1 gray, 2 gray+alpha,
// 3 RGB, 4 RGBA.
struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;
  std::vector<uint8_t> pixels;
};

// Decodes any PNG: gray and palette images of 1/2/4 bits expand to 8 bits (palette to RGB, or
// RGBA with a tRNS chunk), 16-bit samples keep their high byte (as PIL does). Io error when the
// file cannot be read; Invalid naming the file when it is not a valid PNG.
Image decode_png(const std::string& path);
// The same for PNG bytes already in memory; `name` is the file name used in error messages.
Image parse_png(std::span<const uint8_t> bytes, const std::string& name);

// Decodes the PNG at path and writes preprocess.channels x height x width floats to out. Gray
// images are replicated to RGB and alpha is dropped; a color image for a 1-channel model, or an
// image of another size ("<file>: image is 28×28, the model expects 32×32"), is an Invalid error.
void load_image(const std::string& path, const Preprocess& preprocess, float* out);

// root/<class>/<name>.png: classes are the subfolders of root (sorted by name, hidden ones
// skipped), images the .png files directly inside each class folder (sorted by name); a class
// folder without images keeps its index. A root that directly holds .png files and no class
// folders with images is an unlabelled set. Sorting is bytewise, as Python's sorted() does.
class ImageFolder {
 public:
  // Scans root. Io error when root is missing or unreadable; Invalid when it is not a folder,
  // holds no images ("dataset 'root': no .png images found"), or mixes loose images with class
  // folders; Invalid from check_preprocess.
  ImageFolder(std::string root, Preprocess preprocess);

  const std::string& root() const { return root_; }
  const Preprocess& preprocess() const { return preprocess_; }
  size_t size() const { return paths_.size(); }
  bool labelled() const { return !class_names_.empty(); }
  const std::vector<std::string>& class_names() const { return class_names_; }  // empty if not
  int label(size_t i) const { return labels_.at(i); }  // -1 in an unlabelled set
  const std::string& path(size_t i) const { return paths_.at(i); }
  // Floats per image: channels x height x width.
  size_t sample_numel() const;

  // Decodes images [begin, begin + count) in parallel into out (count x C x H x W floats). The
  // result does not depend on the thread count; when several images fail, the error of the
  // first one is thrown.
  void load_batch(size_t begin, size_t count, float* out) const;
  // The same as a float32 tensor of shape count x C x H x W.
  kernels::Tensor load_batch(size_t begin, size_t count) const;
  std::vector<int64_t> labels(size_t begin, size_t count) const;

 private:
  void check_range(size_t begin, size_t count) const;

  std::string root_;
  Preprocess preprocess_;
  std::vector<std::string> class_names_;
  std::vector<std::string> paths_;
  std::vector<int> labels_;
};

}  // namespace qforge::io
