// PNG decoding (libpng), the preprocessing pipeline and the ImageFolder scan.
#include "tools/io/image_folder.h"

#include <png.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <tuple>

#include "kernels/error.h"
#include "kernels/parallel.h"
#include "tools/io/jpeg.h"
#include "tools/io/resample.h"

namespace qforge::io {

namespace fs = std::filesystem;

namespace {

// ---- metadata ----

std::string trim(std::string_view s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  size_t e = s.find_last_not_of(" \t");
  return std::string(s.substr(b, e - b + 1));
}

std::vector<std::string> split_commas(std::string_view s) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t comma = s.find(',', start);
    parts.push_back(trim(s.substr(start, comma == std::string_view::npos ? comma : comma - start)));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return parts;
}

[[noreturn]] void bad_metadata(std::string_view key, const std::string& expected,
                               const std::string& value) {
  throw_invalid("model metadata '" + std::string(key) + "': expected " + expected + ", got '" +
                value + "'");
}

std::vector<float> parse_floats(std::string_view key, const std::string& value) {
  std::vector<float> out;
  for (const std::string& part : split_commas(value)) {
    float v = 0;
    auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), v);
    if (part.empty() || ec != std::errc() || end != part.data() + part.size() ||
        !std::isfinite(v)) {
      bad_metadata(key, "comma-separated finite numbers", value);
    }
    out.push_back(v);
  }
  return out;
}

std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

const std::string* find_key(const std::map<std::string, std::string>& metadata,
                            std::string_view key) {
  auto it = metadata.find(std::string(key));
  return it == metadata.end() ? nullptr : &it->second;
}

std::string shape_text(std::span<const int64_t> shape) {
  return kernels::shape_str(shape);
}

// ---- PNG ----

// Everything libpng's callbacks need; lives in the caller's frame.
struct PngSource {
  const unsigned char* data = nullptr;
  size_t size = 0;
  size_t offset = 0;
  char message[256] = {};
};

void read_png_bytes(png_structp png, png_bytep out, size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (src->size - src->offset < n) png_error(png, "unexpected end of file");
  std::memcpy(out, src->data + src->offset, n);
  src->offset += n;
}

void on_png_error(png_structp png, png_const_charp message) {
  auto* src = static_cast<PngSource*>(png_get_error_ptr(png));
  std::snprintf(src->message, sizeof src->message, "%s", message);
  png_longjmp(png, 1);
}

// Ancillary-chunk complaints (an odd iCCP profile, a bad tEXt CRC) do not affect the pixels.
void on_png_warning(png_structp, png_const_charp) {}

// libpng reports errors by longjmp out of its calls. The two functions that call it hold no
// object with a destructor, so the jump skips nothing; the caller owns every resource.
// 16-bit gray keeps its 16 bits (PIL clips it rather than taking the high byte); other 16-bit
// samples keep their high byte.
bool png_read_header(png_structp png, png_infop info, int* stored_color_type, int* bit_depth) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_info(png, info);
  int color_type = png_get_color_type(png, info);
  *stored_color_type = color_type;
  *bit_depth = png_get_bit_depth(png, info);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && *bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (*bit_depth == 16 && color_type != PNG_COLOR_TYPE_GRAY) png_set_strip_16(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  return true;
}

bool png_read_pixels(png_structp png, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  return true;
}

class PngReader {
 public:
  PngReader(std::span<const uint8_t> bytes, const std::string& path) : path_(path) {
    source_.data = bytes.data();
    source_.size = bytes.size();
    if (bytes.size() < 8 || png_sig_cmp(bytes.data(), 0, 8) != 0) {
      throw_invalid(path + ": not a PNG file (expected the PNG signature \\x89PNG\\r\\n\\x1a\\n)");
    }
    png_ = png_create_read_struct(PNG_LIBPNG_VER_STRING, &source_, on_png_error, on_png_warning);
    if (png_) info_ = png_create_info_struct(png_);
    if (!info_) {
      png_destroy_read_struct(&png_, nullptr, nullptr);  // the destructor will not run
      throw_internal(path + ": libpng could not allocate a decoder");
    }
    png_set_read_fn(png_, &source_, read_png_bytes);
  }
  ~PngReader() { png_destroy_read_struct(&png_, info_ ? &info_ : nullptr, nullptr); }
  PngReader(const PngReader&) = delete;
  PngReader& operator=(const PngReader&) = delete;

  // Reads the header; afterwards width(), height() and channels() describe the decoded image.
  void read_header() {
    int bit_depth = 0;
    if (!png_read_header(png_, info_, &stored_color_type_, &bit_depth)) fail();
    // Checked before any pixel buffer is allocated: a header may claim anything.
    check_image_pixels(png_get_image_width(png_, info_), png_get_image_height(png_, info_), path_);
    width_ = static_cast<int>(png_get_image_width(png_, info_));
    height_ = static_cast<int>(png_get_image_height(png_, info_));
    channels_ = png_get_channels(png_, info_);
    gray16_ = stored_color_type_ == PNG_COLOR_TYPE_GRAY && bit_depth == 16;
    const size_t sample_bytes = gray16_ ? 2 : 1;
    if (png_get_rowbytes(png_, info_) != static_cast<size_t>(width_) * channels_ * sample_bytes) {
      throw_internal(path_ + ": libpng row size does not match 8-bit samples");
    }
  }
  int width() const { return width_; }
  int height() const { return height_; }
  int channels() const { return channels_; }
  // As stored in the file: a palette image decodes to RGB but holds indices.
  bool palette() const { return stored_color_type_ == PNG_COLOR_TYPE_PALETTE; }

  Image read_image() {
    Image image{width_, height_, channels_, {}};
    const size_t row_bytes = static_cast<size_t>(width_) * channels_ * (gray16_ ? 2 : 1);
    std::vector<uint8_t> stored(row_bytes * height_);
    std::vector<png_bytep> rows(height_);
    for (int y = 0; y < height_; ++y) rows[y] = stored.data() + row_bytes * y;
    if (!png_read_pixels(png_, rows.data())) fail();
    if (!gray16_) {
      image.pixels = std::move(stored);
      return image;
    }
    // Big-endian 16-bit gray, clipped to 255 as PIL converts its mode "I" to 8 bits.
    image.pixels.resize(stored.size() / 2);
    for (size_t i = 0; i < image.pixels.size(); ++i) {
      int value = stored[2 * i] << 8 | stored[2 * i + 1];
      image.pixels[i] = static_cast<uint8_t>(std::min(value, 255));
    }
    return image;
  }

 private:
  [[noreturn]] void fail() const {
    throw_invalid(path_ + ": invalid PNG file (" + std::string(source_.message) + ")");
  }

  const std::string& path_;
  PngSource source_;
  png_structp png_ = nullptr;
  png_infop info_ = nullptr;
  int width_ = 0, height_ = 0, channels_ = 0;
  int stored_color_type_ = -1;
  bool gray16_ = false;
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) {
    int error_number = errno;
    throw_io("cannot read '" + path + "': " + std::strerror(error_number));
  }
  std::vector<uint8_t> bytes;
  uint8_t buffer[1 << 16];
  size_t got = 0;
  while ((got = std::fread(buffer, 1, sizeof buffer, file)) > 0) {
    bytes.insert(bytes.end(), buffer, buffer + got);
  }
  bool failed = std::ferror(file) != 0;
  int error_number = errno;
  std::fclose(file);
  if (failed) throw_io("cannot read '" + path + "': " + std::strerror(error_number));
  return bytes;
}

const char* channels_name(int channels) {
  switch (channels) {
    case 1:
      return "grayscale";
    case 2:
      return "grayscale+alpha";
    case 3:
      return "RGB";
    case 4:
      return "RGBA";
  }
  return "?";
}

// ---- folder scan ----

// Image files (regular files or links to them, see is_image_name) directly in dir, sorted
// bytewise by name; other regular files are counted in *skipped.
std::vector<std::string> list_images(const fs::path& dir, const std::string& root,
                                     size_t* skipped) {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (!it->is_regular_file(type_ec)) continue;
    std::string name = it->path().filename().string();
    if (is_image_name(name)) {
      names.push_back(std::move(name));
    } else {
      ++*skipped;
    }
  }
  if (ec) throw_io("dataset '" + root + "': cannot list '" + dir.string() + "': " + ec.message());
  std::sort(names.begin(), names.end());
  return names;
}

// Every image under a class folder, as torchvision lists them with sorted(os.walk(dir,
// followlinks=True)): folders ordered by their path, the files of each by name.
std::vector<std::string> list_class_images(const fs::path& class_dir, const std::string& root,
                                           size_t* skipped) {
  std::vector<std::string> dirs = {class_dir.string()};
  std::error_code ec;
  for (fs::recursive_directory_iterator
           it(class_dir, fs::directory_options::follow_directory_symlink, ec),
       end;
       !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (it->is_directory(type_ec)) dirs.push_back(it->path().string());
  }
  if (ec) {
    throw_io("dataset '" + root + "': cannot list '" + class_dir.string() + "': " + ec.message());
  }
  std::sort(dirs.begin(), dirs.end());
  std::vector<std::string> paths;
  for (const std::string& dir : dirs) {
    for (const std::string& name : list_images(dir, root, skipped)) {
      paths.push_back((fs::path(dir) / name).string());
    }
  }
  return paths;
}

const char* const kImageKinds = ".jpg, .jpeg or .png";

}  // namespace

// ---- Preprocess ----

bool has_preprocess_metadata(const std::map<std::string, std::string>& metadata) {
  for (std::string_view key :
       {kMetaPixelScale, kMetaMean, kMetaStd, kMetaChannelOrder, kMetaLayout}) {
    if (find_key(metadata, key)) return true;
  }
  return false;
}

Preprocess preprocess_from_metadata(const std::map<std::string, std::string>& metadata) {
  Preprocess p;
  if (const std::string* v = find_key(metadata, kMetaInputShape)) {
    std::vector<std::string> parts = split_commas(*v);
    if (parts.size() != 3) bad_metadata(kMetaInputShape, "C,H,W such as 3,32,32", *v);
    int dims[3] = {};
    for (int i = 0; i < 3; ++i) {
      const std::string& s = parts[i];
      auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), dims[i]);
      if (s.empty() || ec != std::errc() || end != s.data() + s.size() || dims[i] <= 0) {
        bad_metadata(kMetaInputShape, "C,H,W positive integers such as 3,32,32", *v);
      }
    }
    p.channels = dims[0];
    p.height = dims[1];
    p.width = dims[2];
  }
  if (const std::string* v = find_key(metadata, kMetaPixelScale)) {
    std::vector<float> scale = parse_floats(kMetaPixelScale, *v);
    if (scale.size() != 1 || !(scale[0] > 0))
      bad_metadata(kMetaPixelScale, "one positive number", *v);
    p.pixel_scale = scale[0];
  }
  if (const std::string* v = find_key(metadata, kMetaMean)) p.mean = parse_floats(kMetaMean, *v);
  if (const std::string* v = find_key(metadata, kMetaStd)) p.std = parse_floats(kMetaStd, *v);
  if (const std::string* v = find_key(metadata, kMetaChannelOrder)) {
    std::string order = upper(trim(*v));
    if (order != "RGB" && order != "BGR") bad_metadata(kMetaChannelOrder, "RGB or BGR", *v);
    p.bgr = order == "BGR";
  }
  if (const std::string* v = find_key(metadata, kMetaLayout)) {
    std::string layout = upper(trim(*v));
    if (layout != "NCHW" && layout != "NHWC") {
      throw_unsupported("model metadata '" + std::string(kMetaLayout) + "': layout '" + *v +
                        "' is not supported (expected NCHW or NHWC)");
    }
    p.nhwc = layout == "NHWC";
  }
  return p;
}

Preprocess preprocess_from_metadata(const std::map<std::string, std::string>& metadata,
                                    std::span<const int64_t> model_input_shape) {
  Preprocess p = preprocess_from_metadata(metadata);
  fill_input_size(p, model_input_shape);
  return p;
}

void fill_input_size(Preprocess& p, std::span<const int64_t> model_input_shape) {
  // An empty shape is an input whose shape the model does not state: the metadata must.
  if (!model_input_shape.empty() && model_input_shape.size() != 4) {
    throw_invalid(std::string("model input: expected an ") +
                  (p.nhwc ? "N x H x W x C" : "N x C x H x W") + " image input, got shape " +
                  shape_text(model_input_shape));
  }
  int* fields[3] = {&p.channels, &p.height, &p.width};
  const char* names[3] = {"channels", "height", "width"};
  const int nchw_axis[3] = {1, 2, 3};
  const int nhwc_axis[3] = {3, 1, 2};
  for (int i = 0; i < 3 && !model_input_shape.empty(); ++i) {
    int64_t model_dim = model_input_shape[p.nhwc ? nhwc_axis[i] : nchw_axis[i]];
    if (model_dim <= 0) continue;
    if (*fields[i] == 0) {
      *fields[i] = static_cast<int>(model_dim);
    } else if (*fields[i] != model_dim) {
      throw_invalid("model metadata '" + std::string(kMetaInputShape) + "': " + names[i] + " " +
                    std::to_string(*fields[i]) + " disagrees with the model input shape " +
                    shape_text(model_input_shape));
    }
  }
  if (p.channels == 0 || p.height == 0 || p.width == 0) {
    throw_invalid("model input shape " + shape_text(model_input_shape) +
                  " has dynamic C, H or W and the metadata has no '" +
                  std::string(kMetaInputShape) + "' (expected C,H,W such as 3,32,32)");
  }
}

void check_preprocess(const Preprocess& p) {
  auto bad = [](const std::string& what) { throw_invalid("preprocessing: " + what); };
  if (p.channels != 1 && p.channels != 3) {
    bad("expected 1 or 3 channels, got " + std::to_string(p.channels));
  }
  if (p.height <= 0 || p.width <= 0) {
    bad("expected a positive height and width, got " + std::to_string(p.height) + "x" +
        std::to_string(p.width));
  }
  if (!std::isfinite(p.pixel_scale) || !(p.pixel_scale > 0)) {
    bad("expected a finite positive pixel_scale, got " + std::to_string(p.pixel_scale));
  }
  auto check_list = [&](const std::vector<float>& values, const char* name, bool nonzero) {
    if (values.size() > 1 && values.size() != static_cast<size_t>(p.channels)) {
      bad(std::string("expected 1 or ") + std::to_string(p.channels) + " " + name +
          " values, got " + std::to_string(values.size()));
    }
    for (float v : values) {
      if (!std::isfinite(v) || (nonzero && v == 0)) {
        bad(std::string("expected finite") + (nonzero ? " non-zero " : " ") + name +
            " values, got " + std::to_string(v));
      }
    }
  };
  check_list(p.mean, "mean", false);
  check_list(p.std, "std", true);
  auto check_sizes = [&](const std::vector<int>& sizes, const char* name) {
    if (sizes.size() > 2) {
      bad(std::string("expected 1 or 2 ") + name + " sizes, got " + std::to_string(sizes.size()));
    }
    for (int v : sizes) {
      if (v <= 0)
        bad(std::string("expected positive ") + name + " sizes, got " + std::to_string(v));
    }
  };
  check_sizes(p.resize, "resize");
  check_sizes(p.crop, "crop");
}

// ---- images ----

Image decode_png(const std::string& path) {
  return parse_png(read_bytes(path), path);
}

Image parse_png(std::span<const uint8_t> bytes, const std::string& name) {
  PngReader reader(bytes, name);
  reader.read_header();
  return reader.read_image();
}

Image decode_image(std::span<const uint8_t> bytes, const std::string& name) {
  if (is_jpeg(bytes)) return parse_jpeg(bytes, name);
  if (bytes.size() >= 8 && png_sig_cmp(bytes.data(), 0, 8) == 0) return parse_png(bytes, name);
  throw_invalid(name +
                ": not a JPEG or PNG file (expected the JPEG marker FF D8 FF or the PNG "
                "signature \\x89PNG\\r\\n\\x1a\\n)");
}

bool is_image_name(std::string_view file_name) {
  std::string lower = file_name.size() > 5 ? std::string(file_name.substr(file_name.size() - 5))
                                           : std::string(file_name);
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  auto ends_with = [&](std::string_view suffix) {
    return lower.size() >= suffix.size() &&
           lower.compare(lower.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".jpg") || ends_with(".jpeg") || ends_with(".png");
}

namespace {

// What a decoder knows after the header: the size and the channels it will decode to.
struct ImageHeader {
  int width = 0;
  int height = 0;
  int channels = 0;
  bool palette = false;
};

// Refuses, before decoding, an image that cannot become the model's input: a color image for a
// gray model, or one whose size after resize and crop is not the model's.
void check_header(const ImageHeader& h, const Preprocess& p, const std::string& path) {
  int width = h.width, height = h.height;
  if (!p.resize.empty()) {
    std::tie(width, height) = resized_size(width, height, p.resize);
    check_image_pixels(width, height, path + " after --resize");
  }
  if (!p.crop.empty()) {
    height = p.crop[0];
    width = p.crop.size() == 2 ? p.crop[1] : p.crop[0];
  }
  if (width != p.width || height != p.height) {
    const std::string model_size = std::to_string(p.width) + "×" + std::to_string(p.height);
    std::string message =
        path + ": image is " + std::to_string(h.width) + "×" + std::to_string(h.height);
    if (p.resize.empty() && p.crop.empty()) {
      message += ", the model expects " + model_size +
                 " (width×height); resize and center-crop it with --resize and --crop, e.g. "
                 "--resize " +
                 std::to_string(std::min(p.width, p.height)) + " --crop " +
                 std::to_string(p.height) + "," + std::to_string(p.width);
    } else {
      message += " and " + std::to_string(width) + "×" + std::to_string(height) +
                 " after resize and crop, the model expects " + model_size +
                 " (width×height); check --resize and --crop";
    }
    throw_invalid(message);
  }
  if (p.channels == 1 && (h.palette || h.channels > 2)) {
    const std::string stored = h.palette ? std::string("a palette image (indexed colors)")
                                         : std::string(channels_name(h.channels)) + " (" +
                                               std::to_string(h.channels) + " channels)";
    throw_invalid(path + ": image is " + stored +
                  ", the model expects 1 (grayscale); qforge does not convert color to "
                  "grayscale");
  }
}

// Drops alpha (PIL's convert("RGB") and convert("L") drop it, they do not composite): 2
// channels become 1, 4 become 3.
Image drop_alpha(Image image) {
  if (image.channels != 2 && image.channels != 4) return image;
  const int kept = image.channels - 1;
  const size_t n = static_cast<size_t>(image.width) * image.height;
  for (size_t i = 0; i < n; ++i) {
    for (int c = 0; c < kept; ++c) {
      image.pixels[i * kept + c] = image.pixels[i * image.channels + c];
    }
  }
  image.pixels.resize(n * kept);
  image.channels = kept;
  return image;
}

}  // namespace

void load_image(const std::string& path, const Preprocess& p, float* out) {
  std::vector<uint8_t> bytes = read_bytes(path);
  // A JPEG's decoded pixels, kept from image to image on each thread: a photo's are megabytes,
  // which fresh memory would fault in page by page for every image.
  thread_local std::vector<uint8_t> decoded;
  Image image;
  bool reuse = false;
  if (is_jpeg(bytes)) {
    JpegReader reader(bytes, path);
    check_header({reader.width(), reader.height(), reader.channels(), false}, p, path);
    image = reader.read_image(std::move(decoded));
    reuse = true;
  } else if (bytes.size() >= 8 && png_sig_cmp(bytes.data(), 0, 8) == 0) {
    PngReader reader(bytes, path);
    reader.read_header();
    check_header({reader.width(), reader.height(), reader.channels(), reader.palette()}, p, path);
    image = reader.read_image();
  } else {
    image = decode_image(bytes, path);  // throws naming the file
  }
  image = drop_alpha(std::move(image));
  // The decoded pixels go back to `decoded` once a step has made the image anew.
  const auto replace = [&](Image next) {
    if (reuse) decoded = std::move(image.pixels);
    reuse = false;
    image = std::move(next);
  };
  if (!p.resize.empty()) {
    auto [width, height] = resized_size(image.width, image.height, p.resize);
    // torchvision returns the image itself when the size does not change.
    if (width != image.width || height != image.height) {
      replace(resize_bilinear(image, width, height));
    }
  }
  if (!p.crop.empty()) {
    replace(center_crop(image, p.crop[0], p.crop.size() == 2 ? p.crop[1] : p.crop[0]));
  }
  const size_t plane = static_cast<size_t>(p.height) * p.width;
  const int stride = image.channels;
  for (int c = 0; c < p.channels; ++c) {
    // A gray image for an RGB model is replicated, as convert("RGB") does.
    int source = image.channels == 1 ? 0 : (p.bgr ? 2 - c : c);
    float mean = p.mean.empty() ? 0.0f : p.mean[p.mean.size() == 1 ? 0 : c];
    float stdev = p.std.empty() ? 1.0f : p.std[p.std.size() == 1 ? 0 : c];
    const uint8_t* in = image.pixels.data() + source;
    for (size_t i = 0; i < plane; ++i) {
      float x = static_cast<float>(in[i * stride]) / p.pixel_scale;
      float value = (x - mean) / stdev;
      if (p.nhwc) {
        out[i * p.channels + c] = value;
      } else {
        out[plane * c + i] = value;
      }
    }
  }
  if (reuse) decoded = std::move(image.pixels);
  check_finite(out, plane * p.channels, path + ": preprocessed pixels");
}

// ---- ImageFolder ----

ImageFolder::ImageFolder(std::string root, Preprocess preprocess)
    : root_(std::move(root)), preprocess_(std::move(preprocess)) {
  check_preprocess(preprocess_);
  std::error_code ec;
  fs::file_status status = fs::status(root_, ec);
  if (!fs::exists(status)) {
    throw_io("dataset '" + root_ +
             "': " + (ec ? ec.message() : std::string("No such file or directory")));
  }
  if (!fs::is_directory(status)) throw_invalid("dataset '" + root_ + "': not a folder");

  std::vector<std::string> loose = list_images(root_, root_, &skipped_files_);
  std::vector<std::string> class_dirs;
  for (fs::directory_iterator it(root_, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    std::error_code type_ec;
    if (!name.empty() && name[0] != '.' && it->is_directory(type_ec)) class_dirs.push_back(name);
  }
  if (ec) throw_io("dataset '" + root_ + "': cannot list it: " + ec.message());
  std::sort(class_dirs.begin(), class_dirs.end());

  std::vector<std::vector<std::string>> class_files;
  size_t class_images = 0;
  for (const std::string& name : class_dirs) {
    class_files.push_back(list_class_images(fs::path(root_) / name, root_, &skipped_files_));
    class_images += class_files.back().size();
  }
  if (!loose.empty() && class_images > 0) {
    throw_invalid("dataset '" + root_ + "': holds both image files and class folders with " +
                  "image files (expected one of root/<class>/<file>.jpg or root/<file>.jpg)");
  }
  if (!loose.empty()) {
    for (const std::string& name : loose) {
      paths_.push_back((fs::path(root_) / name).string());
      labels_.push_back(-1);
    }
    return;
  }
  if (class_images == 0) {
    throw_invalid("dataset '" + root_ + "': no " + kImageKinds + " images found");
  }
  class_names_ = class_dirs;
  for (size_t c = 0; c < class_dirs.size(); ++c) {
    for (const std::string& path : class_files[c]) {
      paths_.push_back(path);
      labels_.push_back(static_cast<int>(c));
    }
  }
}

size_t ImageFolder::sample_numel() const {
  return static_cast<size_t>(preprocess_.channels) * preprocess_.height * preprocess_.width;
}

void ImageFolder::check_range(size_t begin, size_t count) const {
  if (begin > paths_.size() || count > paths_.size() - begin) {
    throw_internal("dataset '" + root_ + "': images [" + std::to_string(begin) + ", " +
                   std::to_string(begin + count) + ") out of range for " +
                   std::to_string(paths_.size()) + " images");
  }
}

void ImageFolder::load_batch(size_t begin, size_t count, float* out) const {
  check_range(begin, count);
  const size_t numel = sample_numel();
  std::vector<std::exception_ptr> errors(count);
  kernels::parallel_for(static_cast<int64_t>(count), 1, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      try {
        load_image(paths_[begin + i], preprocess_, out + numel * i);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  });
  for (const std::exception_ptr& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

kernels::Tensor ImageFolder::load_batch(size_t begin, size_t count) const {
  const Preprocess& p = preprocess_;
  const auto n = static_cast<int64_t>(count);
  kernels::Tensor batch(kernels::DType::kFloat32,
                        p.nhwc ? kernels::Shape{n, p.height, p.width, p.channels}
                               : kernels::Shape{n, p.channels, p.height, p.width});
  load_batch(begin, count, batch.data<float>());
  return batch;
}

std::vector<int64_t> ImageFolder::labels(size_t begin, size_t count) const {
  check_range(begin, count);
  return {labels_.begin() + begin, labels_.begin() + begin + count};
}

}  // namespace qforge::io
