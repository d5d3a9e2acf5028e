// Image datasets for calibration and QAT: JPEG and PNG files in torchvision's ImageFolder layout,
// decoded and preprocessed as torchvision's pipeline does on PIL images (convert("RGB"), Resize,
// CenterCrop, ToTensor, Normalize), so that the model sees the pixels it was trained on.
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
#include "tools/io/image.h"

namespace qforge::io {

// ONNX metadata_props keys that describe a model's input preprocessing.
inline constexpr std::string_view kMetaInputShape = "qforge.input_shape";  // "3,32,32" = C,H,W
inline constexpr std::string_view kMetaPixelScale = "qforge.pixel_scale";  // default 255
inline constexpr std::string_view kMetaMean = "qforge.mean";  // "0.5,0.5,0.5"; default 0
inline constexpr std::string_view kMetaStd = "qforge.std";    // "0.2,0.2,0.2"; default 1
inline constexpr std::string_view kMetaChannelOrder = "qforge.channel_order";  // RGB (default)|BGR
inline constexpr std::string_view kMetaLayout = "qforge.layout";  // NCHW (default) or NHWC

// True when the metadata states how pixels are normalised (any of qforge.pixel_scale, mean, std,
// channel_order, layout): a model without it gives no reason to trust the defaults.
bool has_preprocess_metadata(const std::map<std::string, std::string>& metadata);

// Turns an 8-bit image into model input: the image is resized and center-cropped when asked
// (see resample.h), then out[c][y][x] = (pixel / pixel_scale - mean[c]) / std[c] in float32,
// NCHW or NHWC. Channels are in RGB order, or BGR when bgr is set (mean and std are then given
// in the model's BGR order too).
struct Preprocess {
  int channels = 0;  // 1 (grayscale) or 3 (color); 0 until known
  int height = 0;    // the model's input size, which the image must have after resize and crop
  int width = 0;
  float pixel_scale = 255.0f;
  std::vector<float> mean;  // one value per channel, or one for all; empty means 0
  std::vector<float> std;   // one value per channel, or one for all; empty means 1
  bool bgr = false;
  std::vector<int> resize;  // torchvision Resize: empty none, {N} shorter side to N, {H, W}
  std::vector<int> crop;    // torchvision CenterCrop: empty none, {S} S×S, {H, W}
  bool nhwc = false;        // layout of the model input: N×H×W×C instead of N×C×H×W
};

// Reads the kMeta* keys; missing keys keep the defaults above. Without qforge.input_shape,
// channels, height and width stay 0 and must be filled from the model (see
// fill_input_size). Invalid error naming the key for malformed values; Unsupported for a
// layout other than NCHW and NHWC.
Preprocess preprocess_from_metadata(const std::map<std::string, std::string>& metadata);
// Takes C, H, W from the model's input shape (N×C×H×W, or N×H×W×C when p.nhwc; dimensions <= 0
// are dynamic) where p does not give them; where both give a dimension they must agree. An empty
// shape stands for an input without a declared shape. Invalid error when C, H or W stay unknown.
void fill_input_size(Preprocess& p, std::span<const int64_t> model_input_shape);
// Both of the above.
Preprocess preprocess_from_metadata(const std::map<std::string, std::string>& metadata,
                                    std::span<const int64_t> model_input_shape);

// Invalid error naming the field unless channels is 1 or 3, height and width are positive,
// pixel_scale is finite and positive, mean and std hold 0, 1 or `channels` finite values,
// every std is non-zero, and resize and crop hold 0, 1 or 2 positive sizes.
void check_preprocess(const Preprocess& preprocess);

// Decodes any PNG as PIL reads it: gray and palette images of 1/2/4 bits expand to 8 bits
// (palette to RGB, or RGBA with a tRNS chunk), 16-bit color and gray+alpha samples keep their
// high byte, 16-bit gray values are clipped to 255 (PIL's mode "I" converted to 8 bits). Io error
// when the file cannot be read; Invalid naming the file when it is not a valid PNG or holds more
// than kMaxImagePixels.
Image decode_png(const std::string& path);
// The same for PNG bytes already in memory; `name` is the file name used in error messages.
Image parse_png(std::span<const uint8_t> bytes, const std::string& name);

// A PNG or a JPEG (told apart by their first bytes), decoded as above or as JpegReader does.
// Invalid naming the file when it is neither.
Image decode_image(std::span<const uint8_t> bytes, const std::string& name);

// True for the names torchvision's ImageFolder takes that qforge decodes: .jpg, .jpeg, .png in
// any case.
bool is_image_name(std::string_view file_name);

// Decodes the image at path and writes channels x height x width floats (height x width x
// channels when nhwc) to out. For an RGB model every image becomes RGB as PIL's convert("RGB")
// does (gray replicated, alpha dropped, palette looked up); a gray model takes gray images
// (alpha dropped) only. Invalid errors name the file: a color image for a gray model, or an
// image whose size after resize and crop is not the model's ("<file>: image is 28×28, the model
// expects 32×32 ...", checked before decoding, suggesting --resize/--crop).
void load_image(const std::string& path, const Preprocess& preprocess, float* out);

// root/<class>/**/<name>.{jpg,jpeg,png}: classes are the subfolders of root (sorted by name,
// hidden ones skipped), images every image file under each class folder, subfolders included,
// in the order torchvision's ImageFolder lists them (folders by path, then files by name); a
// class folder without images keeps its index. A root that directly holds images and no class
// folders with images is an unlabelled set. Sorting is bytewise, as Python's sorted() does.
// Other files are skipped and counted.
class ImageFolder {
 public:
  // Scans root. Io error when root is missing or unreadable; Invalid when it is not a folder,
  // holds no images ("dataset 'root': no .jpg, .jpeg or .png images found"), or mixes loose
  // images with class folders; Invalid from check_preprocess.
  ImageFolder(std::string root, Preprocess preprocess);

  const std::string& root() const { return root_; }
  const Preprocess& preprocess() const { return preprocess_; }
  size_t size() const { return paths_.size(); }
  bool labelled() const { return !class_names_.empty(); }
  const std::vector<std::string>& class_names() const { return class_names_; }  // empty if not
  int label(size_t i) const { return labels_.at(i); }  // -1 in an unlabelled set
  const std::string& path(size_t i) const { return paths_.at(i); }
  // Files in the scanned folders that are not images (see is_image_name).
  size_t skipped_files() const { return skipped_files_; }
  // Floats per image: channels x height x width.
  size_t sample_numel() const;

  // Decodes images [begin, begin + count) in parallel into out (count x C x H x W floats). The
  // result does not depend on the thread count; when several images fail, the error of the
  // first one is thrown.
  void load_batch(size_t begin, size_t count, float* out) const;
  // The same as a float32 tensor of shape count x C x H x W (count x H x W x C when nhwc).
  kernels::Tensor load_batch(size_t begin, size_t count) const;
  std::vector<int64_t> labels(size_t begin, size_t count) const;

 private:
  void check_range(size_t begin, size_t count) const;

  std::string root_;
  Preprocess preprocess_;
  std::vector<std::string> class_names_;
  std::vector<std::string> paths_;
  std::vector<int> labels_;
  size_t skipped_files_ = 0;
};

}  // namespace qforge::io
