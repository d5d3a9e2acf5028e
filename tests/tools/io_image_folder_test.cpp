// PNG decoding, preprocessing and the ImageFolder scan, on PNGs written here with libpng.
#include <gtest/gtest.h>
#include <png.h>
#include <tbb/global_control.h>
#include <unistd.h>

#include <atomic>
#include <csetjmp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "tests/support/errors.h"
#include "tests/support/test_support.h"
#include "tools/io/image_folder.h"
#include "tools/io/npy.h"

namespace qforge::io {
namespace {

namespace fs = std::filesystem;

using testing::TempDir;

using testing::error_of;

// What a test PNG holds. samples: row-major, `channels` samples per pixel for the color type,
// one sample per value (16-bit samples as values 0..65535, palette images as indices).
struct PngSpec {
  int width = 0;
  int height = 0;
  int color_type = PNG_COLOR_TYPE_RGB;
  int bit_depth = 8;
  bool interlaced = false;
  std::vector<png_color> palette;
  std::vector<png_byte> palette_alpha;  // tRNS
  std::vector<int> samples;
};

int samples_per_pixel(int color_type) {
  switch (color_type) {
    case PNG_COLOR_TYPE_GRAY:
      return 1;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
      return 2;
    case PNG_COLOR_TYPE_RGB:
      return 3;
    case PNG_COLOR_TYPE_RGB_ALPHA:
      return 4;
    case PNG_COLOR_TYPE_PALETTE:
      return 1;
  }
  return 0;
}

// Packs samples into PNG rows: big-endian 16-bit, MSB-first sub-byte depths.
std::vector<std::vector<png_byte>> pack_rows(const PngSpec& spec) {
  int per_row = spec.width * samples_per_pixel(spec.color_type);
  std::vector<std::vector<png_byte>> rows;
  for (int y = 0; y < spec.height; ++y) {
    std::vector<png_byte> row((per_row * spec.bit_depth + 7) / 8, 0);
    for (int i = 0; i < per_row; ++i) {
      int v = spec.samples[y * per_row + i];
      if (spec.bit_depth == 16) {
        row[2 * i] = static_cast<png_byte>(v >> 8);
        row[2 * i + 1] = static_cast<png_byte>(v & 0xff);
      } else {
        int bit = i * spec.bit_depth;
        row[bit / 8] |= static_cast<png_byte>(v << (8 - spec.bit_depth - bit % 8));
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

// libpng leaves by longjmp on errors; this frame holds no object with a destructor.
bool write_png_rows(std::FILE* file, const PngSpec* spec, png_bytepp rows) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, spec->width, spec->height, spec->bit_depth, spec->color_type,
               spec->interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (!spec->palette.empty()) {
    png_set_PLTE(png, info, spec->palette.data(), static_cast<int>(spec->palette.size()));
  }
  if (!spec->palette_alpha.empty()) {
    png_set_tRNS(png, info, spec->palette_alpha.data(),
                 static_cast<int>(spec->palette_alpha.size()), nullptr);
  }
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

void write_png(const std::string& path, const PngSpec& spec) {
  ASSERT_EQ(spec.samples.size(),
            static_cast<size_t>(spec.width * spec.height * samples_per_pixel(spec.color_type)));
  fs::create_directories(fs::path(path).parent_path());
  std::vector<std::vector<png_byte>> rows = pack_rows(spec);
  std::vector<png_bytep> row_pointers;
  for (auto& row : rows) row_pointers.push_back(row.data());
  std::FILE* file = std::fopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  bool ok = write_png_rows(file, &spec, row_pointers.data());
  std::fclose(file);
  ASSERT_TRUE(ok) << path;
}

// An 8-bit RGB image whose pixel (x, y) is (r0 + x, g0 + y, b0 + x + y).
PngSpec rgb_image(int width, int height, int r0 = 10, int g0 = 100, int b0 = 200) {
  PngSpec spec{width, height, PNG_COLOR_TYPE_RGB, 8, false, {}, {}, {}};
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      spec.samples.push_back((r0 + x) % 256);
      spec.samples.push_back((g0 + y) % 256);
      spec.samples.push_back((b0 + x + y) % 256);
    }
  }
  return spec;
}

PngSpec gray_image(int width, int height, int bit_depth = 8) {
  PngSpec spec{width, height, PNG_COLOR_TYPE_GRAY, bit_depth, false, {}, {}, {}};
  int levels = 1 << bit_depth;
  for (int i = 0; i < width * height; ++i) spec.samples.push_back((i * 7 + 3) % levels);
  return spec;
}

std::vector<int> as_ints(const std::vector<uint8_t>& bytes) {
  return {bytes.begin(), bytes.end()};
}

// The exact float32 formula, written out once as the test's reference.
float reference(int pixel, float scale, float mean, float std_dev) {
  float x = static_cast<float>(pixel) / scale;
  return (x - mean) / std_dev;
}

// ---- decoding ----

TEST(IoPng, DecodesRgbGrayAndAlpha) {
  TempDir dir;
  PngSpec rgb = rgb_image(3, 2);
  write_png(dir.file("rgb.png"), rgb);
  Image image = decode_png(dir.file("rgb.png"));
  EXPECT_EQ(image.width, 3);
  EXPECT_EQ(image.height, 2);
  EXPECT_EQ(image.channels, 3);
  EXPECT_EQ(as_ints(image.pixels), rgb.samples);

  PngSpec gray = gray_image(5, 3);
  write_png(dir.file("gray.png"), gray);
  image = decode_png(dir.file("gray.png"));
  EXPECT_EQ(image.channels, 1);
  EXPECT_EQ(as_ints(image.pixels), gray.samples);

  PngSpec ga{2, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 8, false, {}, {}, {7, 255, 9, 0}};
  write_png(dir.file("ga.png"), ga);
  image = decode_png(dir.file("ga.png"));
  EXPECT_EQ(image.channels, 2);
  EXPECT_EQ(as_ints(image.pixels), ga.samples);

  PngSpec rgba{2, 1, PNG_COLOR_TYPE_RGB_ALPHA, 8, false, {}, {}, {1, 2, 3, 4, 5, 6, 7, 0}};
  write_png(dir.file("rgba.png"), rgba);
  image = decode_png(dir.file("rgba.png"));
  EXPECT_EQ(image.channels, 4);
  EXPECT_EQ(as_ints(image.pixels), rgba.samples);
}

TEST(IoPng, ExpandsLowBitGrayAndPalette) {
  TempDir dir;
  // 2-bit gray levels 0..3 scale to 0, 85, 170, 255.
  PngSpec gray2{4, 1, PNG_COLOR_TYPE_GRAY, 2, false, {}, {}, {0, 1, 2, 3}};
  write_png(dir.file("g2.png"), gray2);
  EXPECT_EQ(as_ints(decode_png(dir.file("g2.png")).pixels), (std::vector<int>{0, 85, 170, 255}));

  PngSpec gray1{3, 1, PNG_COLOR_TYPE_GRAY, 1, false, {}, {}, {1, 0, 1}};
  write_png(dir.file("g1.png"), gray1);
  EXPECT_EQ(as_ints(decode_png(dir.file("g1.png")).pixels), (std::vector<int>{255, 0, 255}));

  PngSpec palette{3,  1,        PNG_COLOR_TYPE_PALETTE,
                  4,  false,    {{10, 20, 30}, {40, 50, 60}, {70, 80, 90}},
                  {}, {2, 0, 1}};
  write_png(dir.file("p.png"), palette);
  Image image = decode_png(dir.file("p.png"));
  EXPECT_EQ(image.channels, 3);
  EXPECT_EQ(as_ints(image.pixels), (std::vector<int>{70, 80, 90, 10, 20, 30, 40, 50, 60}));

  // A palette with transparency decodes to RGBA.
  palette.palette_alpha = {255, 0};
  palette.bit_depth = 8;
  write_png(dir.file("pt.png"), palette);
  image = decode_png(dir.file("pt.png"));
  EXPECT_EQ(image.channels, 4);
  EXPECT_EQ(as_ints(image.pixels),
            (std::vector<int>{70, 80, 90, 255, 10, 20, 30, 255, 40, 50, 60, 0}));
}

TEST(IoPng, SixteenBitKeepsHighByteGrayClipsAndInterlacedMatches) {
  TempDir dir;
  PngSpec rgb16{2,
                1,
                PNG_COLOR_TYPE_RGB,
                16,
                false,
                {},
                {},
                {0x1234, 0xffff, 0x00ff, 0x8000, 0x7fff, 0x0100}};
  write_png(dir.file("rgb16.png"), rgb16);
  Image image = decode_png(dir.file("rgb16.png"));
  EXPECT_EQ(image.channels, 3);
  EXPECT_EQ(as_ints(image.pixels), (std::vector<int>{0x12, 0xff, 0x00, 0x80, 0x7f, 0x01}));

  // 16-bit gray opens in PIL as 32-bit integers, which its 8-bit conversion clips.
  PngSpec gray16{3, 1, PNG_COLOR_TYPE_GRAY, 16, false, {}, {}, {0xabcd, 0x0042, 0x00ff}};
  write_png(dir.file("g16.png"), gray16);
  EXPECT_EQ(as_ints(decode_png(dir.file("g16.png")).pixels), (std::vector<int>{255, 0x42, 255}));
  PngSpec ga16{1, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 16, false, {}, {}, {0xabcd, 0x1234}};
  write_png(dir.file("ga16.png"), ga16);
  EXPECT_EQ(as_ints(decode_png(dir.file("ga16.png")).pixels), (std::vector<int>{0xab, 0x12}));

  PngSpec interlaced = rgb_image(13, 11);
  interlaced.interlaced = true;
  write_png(dir.file("adam7.png"), interlaced);
  EXPECT_EQ(as_ints(decode_png(dir.file("adam7.png")).pixels), interlaced.samples);
}

TEST(IoPng, BrokenFilesNameTheFile) {
  TempDir dir;
  std::string path = dir.file("text.png");
  std::ofstream(path) << "not an image";
  std::string message = error_of(ErrorKind::kInvalid, [&] { decode_png(path); });
  EXPECT_NE(message.find(path + ": not a PNG file"), std::string::npos) << message;

  write_png(dir.file("whole.png"), rgb_image(16, 16));
  std::ifstream in(dir.file("whole.png"), std::ios::binary);
  std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::string cut = dir.file("cut.png");
  std::ofstream(cut, std::ios::binary).write(bytes.data(), 60);
  message = error_of(ErrorKind::kInvalid, [&] { decode_png(cut); });
  EXPECT_NE(message.find(cut + ": invalid PNG file"), std::string::npos) << message;

  std::string missing = dir.file("missing.png");
  EXPECT_EQ(error_of(ErrorKind::kIo, [&] { decode_png(missing); }),
            "cannot read '" + missing + "': No such file or directory");
}

TEST(IoPng, ParsesBytesInMemoryAsFromTheFile) {
  TempDir dir;
  PngSpec rgb = rgb_image(5, 4);
  write_png(dir.file("rgb.png"), rgb);
  std::ifstream in(dir.file("rgb.png"), std::ios::binary);
  std::vector<uint8_t> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  Image image = parse_png(bytes, "in-memory.png");
  EXPECT_EQ(image.width, 5);
  EXPECT_EQ(image.height, 4);
  EXPECT_EQ(image.channels, 3);
  EXPECT_EQ(as_ints(image.pixels), rgb.samples);

  bytes.resize(60);
  std::string message = error_of(ErrorKind::kInvalid, [&] { parse_png(bytes, "in-memory.png"); });
  EXPECT_EQ(message.rfind("in-memory.png: invalid PNG file", 0), 0u) << message;
}

// ---- preprocessing ----

TEST(IoPreprocess, ValuesAreExact) {
  TempDir dir;
  PngSpec spec = rgb_image(4, 3);
  write_png(dir.file("a.png"), spec);
  Preprocess p{3, 3, 4, 255.0f, {0.3054f, 0.3147f, 0.3242f}, {0.3237f, 0.2919f, 0.2437f}, false};
  std::vector<float> out(3 * 3 * 4);
  load_image(dir.file("a.png"), p, out.data());
  for (int c = 0; c < 3; ++c) {
    for (int i = 0; i < 12; ++i) {
      EXPECT_EQ(out[c * 12 + i], reference(spec.samples[i * 3 + c], 255.0f, p.mean[c], p.std[c]))
          << "channel " << c << " pixel " << i;
    }
  }
  // Values checkable by hand: 0 and 255 with mean 0.5, std 0.5 give -1 and 1.
  PngSpec ends{2, 1, PNG_COLOR_TYPE_GRAY, 8, false, {}, {}, {0, 255}};
  write_png(dir.file("ends.png"), ends);
  Preprocess half{1, 1, 2, 255.0f, {0.5f}, {0.5f}, false};
  float two[2];
  load_image(dir.file("ends.png"), half, two);
  EXPECT_EQ(two[0], -1.0f);
  EXPECT_EQ(two[1], 1.0f);
  // Defaults: x = pixel / 255; a custom scale.
  Preprocess plain{1, 1, 2, 1.0f, {}, {}, false};
  load_image(dir.file("ends.png"), plain, two);
  EXPECT_EQ(two[1], 255.0f);
}

TEST(IoPreprocess, ChannelCountMustMatchTheModel) {
  TempDir dir;
  Preprocess rgb{3, 1, 2, 255.0f, {}, {}, false};
  float out[6];
  write_png(dir.file("rgb.png"),
            PngSpec{2, 1, PNG_COLOR_TYPE_RGB, 8, false, {}, {}, {0, 51, 102, 153, 204, 255}});
  load_image(dir.file("rgb.png"), rgb, out);
  EXPECT_EQ(std::vector<float>(out, out + 6),
            (std::vector<float>{0.0f, 0.6f, 0.2f, 0.8f, 0.4f, 1.0f}));
  // BGR reverses the planes.
  Preprocess bgr = rgb;
  bgr.bgr = true;
  load_image(dir.file("rgb.png"), bgr, out);
  EXPECT_EQ(std::vector<float>(out, out + 6),
            (std::vector<float>{0.4f, 1.0f, 0.2f, 0.8f, 0.0f, 0.6f}));

  // Gray, alpha and palette images become RGB for an RGB model as PIL's convert("RGB") makes
  // them: gray replicated, alpha dropped (not composited), palette entries looked up.
  write_png(dir.file("gray.png"), PngSpec{2, 1, PNG_COLOR_TYPE_GRAY, 8, false, {}, {}, {51, 102}});
  write_png(
      dir.file("rgba.png"),
      PngSpec{2, 1, PNG_COLOR_TYPE_RGB_ALPHA, 8, false, {}, {}, {0, 51, 102, 7, 153, 204, 255, 0}});
  PngSpec palette{2, 1, PNG_COLOR_TYPE_PALETTE, 8, false, {}, {}, {0, 1}};
  palette.palette = {{10, 20, 30}, {40, 50, 60}};
  write_png(dir.file("palette.png"), palette);
  write_png(dir.file("ga.png"),
            PngSpec{2, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 8, false, {}, {}, {51, 0, 255, 9}});
  Preprocess plain_rgb{3, 1, 2, 1.0f, {}, {}, false};  // pixel values as they are
  load_image(dir.file("gray.png"), plain_rgb, out);
  EXPECT_EQ(std::vector<float>(out, out + 6), (std::vector<float>{51, 102, 51, 102, 51, 102}));
  load_image(dir.file("rgba.png"), plain_rgb, out);
  EXPECT_EQ(std::vector<float>(out, out + 6), (std::vector<float>{0, 153, 51, 204, 102, 255}));
  load_image(dir.file("palette.png"), plain_rgb, out);
  EXPECT_EQ(std::vector<float>(out, out + 6), (std::vector<float>{10, 40, 20, 50, 30, 60}));
  load_image(dir.file("ga.png"), plain_rgb, out);
  EXPECT_EQ(std::vector<float>(out, out + 6), (std::vector<float>{51, 255, 51, 255, 51, 255}));

  // A gray model takes gray images, alpha dropped; color is not turned into gray.
  Preprocess gray{1, 1, 2, 255.0f, {}, {}, false};
  load_image(dir.file("gray.png"), gray, out);
  EXPECT_EQ(std::vector<float>(out, out + 2), (std::vector<float>{0.2f, 0.4f}));
  load_image(dir.file("ga.png"), gray, out);
  EXPECT_EQ(std::vector<float>(out, out + 2), (std::vector<float>{0.2f, 1.0f}));
  const std::string gray_model =
      ", the model expects 1 (grayscale); qforge does not convert color to grayscale";
  EXPECT_EQ(error_of(ErrorKind::kInvalid, [&] { load_image(dir.file("rgb.png"), gray, out); }),
            dir.file("rgb.png") + ": image is RGB (3 channels)" + gray_model);
  EXPECT_EQ(error_of(ErrorKind::kInvalid, [&] { load_image(dir.file("rgba.png"), gray, out); }),
            dir.file("rgba.png") + ": image is RGBA (4 channels)" + gray_model);
  EXPECT_EQ(error_of(ErrorKind::kInvalid, [&] { load_image(dir.file("palette.png"), gray, out); }),
            dir.file("palette.png") + ": image is a palette image (indexed colors)" + gray_model);
}

TEST(IoPreprocess, WrongSizeNamesFileAndBothSizes) {
  TempDir dir;
  write_png(dir.file("small.png"), rgb_image(28, 28));
  Preprocess p{3, 32, 32, 255.0f, {}, {}, false};
  std::vector<float> out(3 * 32 * 32);
  std::string message =
      error_of(ErrorKind::kInvalid, [&] { load_image(dir.file("small.png"), p, out.data()); });
  EXPECT_NE(message.find(dir.file("small.png") + ": image is 28×28, the model expects 32×32"),
            std::string::npos)
      << message;
  write_png(dir.file("wide.png"), rgb_image(40, 32));
  message = error_of(ErrorKind::kInvalid, [&] { load_image(dir.file("wide.png"), p, out.data()); });
  EXPECT_NE(message.find("image is 40×32, the model expects 32×32 (width×height"),
            std::string::npos)
      << message;
}

TEST(IoPreprocess, FromMetadata) {
  std::map<std::string, std::string> metadata = {{"qforge.input_shape", "3,32,24"},
                                                 {"qforge.pixel_scale", "255"},
                                                 {"qforge.mean", "0.3054,0.3147,0.3242"},
                                                 {"qforge.std", " 0.3237, 0.2919 ,0.2437"},
                                                 {"qforge.channel_order", "BGR"},
                                                 {"qforge.layout", "NCHW"},
                                                 {"other", "ignored"}};
  Preprocess p = preprocess_from_metadata(metadata);
  EXPECT_EQ(p.channels, 3);
  EXPECT_EQ(p.height, 32);
  EXPECT_EQ(p.width, 24);
  EXPECT_EQ(p.pixel_scale, 255.0f);
  EXPECT_EQ(p.mean, (std::vector<float>{0.3054f, 0.3147f, 0.3242f}));
  EXPECT_EQ(p.std, (std::vector<float>{0.3237f, 0.2919f, 0.2437f}));
  EXPECT_TRUE(p.bgr);
  EXPECT_NO_THROW(check_preprocess(p));

  Preprocess defaults = preprocess_from_metadata({});
  EXPECT_EQ(defaults.channels, 0);
  EXPECT_EQ(defaults.pixel_scale, 255.0f);
  EXPECT_TRUE(defaults.mean.empty());
  EXPECT_TRUE(defaults.std.empty());
  EXPECT_FALSE(defaults.bgr);

  // The model's input shape fills what the metadata leaves out.
  const int64_t model_shape[] = {-1, 1, 28, 28};
  Preprocess filled = preprocess_from_metadata({}, model_shape);
  EXPECT_EQ(filled.channels, 1);
  EXPECT_EQ(filled.height, 28);
  EXPECT_EQ(filled.width, 28);
  const int64_t dynamic_hw[] = {1, 3, -1, -1};
  EXPECT_EQ(preprocess_from_metadata(metadata, dynamic_hw).width, 24);
  EXPECT_NE(error_of(ErrorKind::kInvalid, [&] { preprocess_from_metadata({}, dynamic_hw); })
                .find("has dynamic C, H or W"),
            std::string::npos);
  EXPECT_EQ(preprocess_from_metadata(metadata, std::span<const int64_t>()).height, 32);
  const int64_t rank3[] = {3, 32, 32};
  EXPECT_NE(error_of(ErrorKind::kInvalid, [&] { preprocess_from_metadata(metadata, rank3); })
                .find("expected an N x C x H x W image input, got shape [3, 32, 32]"),
            std::string::npos);
  const int64_t other[] = {1, 3, 32, 32};
  EXPECT_NE(error_of(ErrorKind::kInvalid, [&] { preprocess_from_metadata(metadata, other); })
                .find("width 24 disagrees with the model input shape [1, 3, 32, 32]"),
            std::string::npos);
}

TEST(IoPreprocess, BadMetadataNamesTheKey) {
  struct Case {
    const char* key;
    const char* value;
    const char* message;
  };
  for (const Case& c : {
           Case{"qforge.input_shape", "3,32",
                "model metadata 'qforge.input_shape': expected C,H,W"},
           Case{"qforge.input_shape", "3,x,32", "'qforge.input_shape': expected C,H,W positive"},
           Case{"qforge.mean", "0.5,,0.5",
                "model metadata 'qforge.mean': expected comma-separated "
                "finite numbers, got '0.5,,0.5'"},
           Case{"qforge.std", "nan", "model metadata 'qforge.std'"},
           Case{"qforge.pixel_scale", "-1",
                "model metadata 'qforge.pixel_scale': expected one "
                "positive number, got '-1'"},
           Case{"qforge.channel_order", "RGBA", "expected RGB or BGR, got 'RGBA'"},
       }) {
    SCOPED_TRACE(c.key);
    std::string message = error_of(ErrorKind::kInvalid, [&] {
      preprocess_from_metadata({{c.key, c.value}});
    });
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
  }
  EXPECT_TRUE(preprocess_from_metadata({{"qforge.layout", "NHWC"}}).nhwc);
  EXPECT_EQ(error_of(ErrorKind::kUnsupported,
                     [&] {
                       preprocess_from_metadata({{"qforge.layout", "CHWN"}});
                     }),
            "model metadata 'qforge.layout': layout 'CHWN' is not supported (expected NCHW or "
            "NHWC)");
}

TEST(IoPreprocess, CheckRejectsBadFields) {
  Preprocess good{3, 8, 8, 255.0f, {0.5f}, {0.5f, 0.5f, 0.5f}, false};
  EXPECT_NO_THROW(check_preprocess(good));
  Preprocess p = good;
  p.channels = 4;
  EXPECT_NE(error_of(ErrorKind::kInvalid, [&] { check_preprocess(p); })
                .find("expected 1 or 3 channels, got 4"),
            std::string::npos);
  p = good;
  p.std = {1.0f, 0.0f, 1.0f};
  EXPECT_NE(error_of(ErrorKind::kInvalid, [&] { check_preprocess(p); }).find("non-zero std"),
            std::string::npos);
  p = good;
  p.mean = {0.1f, 0.2f};
  EXPECT_NE(error_of(ErrorKind::kInvalid, [&] { check_preprocess(p); })
                .find("expected 1 or 3 mean values, got 2"),
            std::string::npos);
  p = good;
  p.height = 0;
  EXPECT_THROW(check_preprocess(p), Error);
}

// ---- ImageFolder ----

TEST(IoImageFolder, ClassesAndFilesAreSortedByName) {
  TempDir dir;
  // Class names sort bytewise, as Python's sorted() does: "10" < "2" < "B" < "a".
  for (const char* cls : {"a", "2", "10", "B"}) {
    for (const char* name : {"z.png", "b.png", "a10.png", "a9.png"}) {
      write_png(dir.file(std::string(cls) + "/" + name), rgb_image(2, 2));
    }
  }
  std::ofstream(dir.file("a/notes.txt")) << "not an image";
  std::ofstream(dir.file("a/c.gif")) << "not a format qforge reads";
  fs::create_directories(dir.file(".hidden"));
  write_png(dir.file(".hidden/x.png"), rgb_image(2, 2));
  fs::create_directories(dir.file("empty"));  // keeps its class index

  ImageFolder folder(dir.path().string(), Preprocess{3, 2, 2, 255.0f, {}, {}, false});
  EXPECT_TRUE(folder.labelled());
  EXPECT_EQ(folder.class_names(), (std::vector<std::string>{"10", "2", "B", "a", "empty"}));
  ASSERT_EQ(folder.size(), 16u);
  const char* order[] = {"a10.png", "a9.png", "b.png", "z.png"};
  for (size_t i = 0; i < folder.size(); ++i) {
    EXPECT_EQ(folder.label(i), static_cast<int>(i / 4));
    EXPECT_EQ(folder.path(i), dir.file(folder.class_names()[i / 4] + "/" + order[i % 4]));
  }
  EXPECT_EQ(folder.labels(6, 4), (std::vector<int64_t>{1, 1, 2, 2}));
  EXPECT_EQ(folder.skipped_files(), 2u);
}

TEST(IoImageFolder, ListsJpegAndPngInAnyCaseThroughSubfolders) {
  // torchvision's order (checked with ImageFolder on this tree): folders by path, so
  // "sub-x" ('-' < '/') comes before "sub/deeper"; then files by name.
  TempDir dir;
  for (const char* name : {"cat/b.JPG", "cat/a.Png", "cat/sub/a.jpeg", "cat/sub-x/c.jpg",
                           "cat/sub/deeper/d.png", "cat/notes.txt", "cat/sub/e.gif", "dog/x.jpg"}) {
    fs::create_directories(fs::path(dir.file(name)).parent_path());
    std::ofstream(dir.file(name)) << "only the names are read here";
  }
  ImageFolder folder(dir.path().string(), Preprocess{3, 2, 2, 255.0f, {}, {}, false});
  EXPECT_EQ(folder.class_names(), (std::vector<std::string>{"cat", "dog"}));
  std::vector<std::string> paths;
  for (size_t i = 0; i < folder.size(); ++i) paths.push_back(folder.path(i));
  EXPECT_EQ(paths,
            (std::vector<std::string>{dir.file("cat/a.Png"), dir.file("cat/b.JPG"),
                                      dir.file("cat/sub/a.jpeg"), dir.file("cat/sub-x/c.jpg"),
                                      dir.file("cat/sub/deeper/d.png"), dir.file("dog/x.jpg")}));
  EXPECT_EQ(folder.labels(0, 6), (std::vector<int64_t>{0, 0, 0, 0, 0, 1}));
  EXPECT_EQ(folder.skipped_files(), 2u);
  EXPECT_TRUE(is_image_name(".jpeg"));
  EXPECT_FALSE(is_image_name("photo.jpg.txt"));
  EXPECT_FALSE(is_image_name("jpg"));
}

TEST(IoImageFolder, LooseImagesAreUnlabelled) {
  TempDir dir;
  write_png(dir.file("b.png"), rgb_image(2, 2));
  write_png(dir.file("a.PNG"), rgb_image(2, 2));
  fs::create_directories(dir.file("empty_dir"));
  ImageFolder folder(dir.path().string(), Preprocess{3, 2, 2, 255.0f, {}, {}, false});
  EXPECT_FALSE(folder.labelled());
  EXPECT_TRUE(folder.class_names().empty());
  ASSERT_EQ(folder.size(), 2u);
  EXPECT_EQ(folder.path(0), dir.file("a.PNG"));
  EXPECT_EQ(folder.label(1), -1);
  EXPECT_EQ(folder.labels(0, 2), (std::vector<int64_t>{-1, -1}));
}

TEST(IoImageFolder, ScanErrors) {
  TempDir dir;
  Preprocess p{3, 2, 2, 255.0f, {}, {}, false};
  std::string missing = dir.file("missing");
  EXPECT_EQ(error_of(ErrorKind::kIo, [&] { ImageFolder(missing, p); }),
            "dataset '" + missing + "': No such file or directory");
  write_png(dir.file("file.png"), rgb_image(2, 2));
  EXPECT_EQ(error_of(ErrorKind::kInvalid, [&] { ImageFolder(dir.file("file.png"), p); }),
            "dataset '" + dir.file("file.png") + "': not a folder");
  fs::create_directories(dir.file("empty/cls"));
  std::ofstream(dir.file("empty/cls/readme.txt")) << "no images";
  EXPECT_EQ(error_of(ErrorKind::kInvalid, [&] { ImageFolder(dir.file("empty"), p); }),
            "dataset '" + dir.file("empty") + "': no .jpg, .jpeg or .png images found");
  write_png(dir.file("mixed/loose.png"), rgb_image(2, 2));
  write_png(dir.file("mixed/cls/in.png"), rgb_image(2, 2));
  EXPECT_NE(error_of(ErrorKind::kInvalid, [&] { ImageFolder(dir.file("mixed"), p); })
                .find("holds both image files and class folders"),
            std::string::npos);
  Preprocess bad = p;
  bad.channels = 0;
  EXPECT_THROW(ImageFolder(dir.path().string(), bad), Error);
}

TEST(IoImageFolder, LoadBatchMatchesSingleImagesOnAnyThreadCount) {
  TempDir dir;
  for (int i = 0; i < 23; ++i) {
    std::string name = std::string("c").append(std::to_string(i % 3)).append("/");
    name.append(std::to_string(100 + i)).append(".png");  // append: GCC 12 -Wrestrict false alarm
    write_png(dir.file(name), rgb_image(5, 4, i, 3 * i, 7 * i));
  }
  Preprocess p{3, 4, 5, 255.0f, {0.1f, 0.2f, 0.3f}, {0.7f, 0.8f, 0.9f}, false};
  ImageFolder folder(dir.path().string(), p);
  ASSERT_EQ(folder.size(), 23u);
  ASSERT_EQ(folder.sample_numel(), 60u);

  kernels::Tensor batch = folder.load_batch(3, 17);
  EXPECT_EQ(batch.describe(), "float32[17, 3, 4, 5]");
  std::vector<float> one(60);
  for (size_t i = 0; i < 17; ++i) {
    load_image(folder.path(3 + i), p, one.data());
    EXPECT_EQ(std::vector<float>(batch.data<float>() + 60 * i, batch.data<float>() + 60 * (i + 1)),
              one);
  }
  std::vector<float> serial(17 * 60);
  {
    tbb::global_control single(tbb::global_control::max_allowed_parallelism, 1);
    folder.load_batch(3, 17, serial.data());
  }
  EXPECT_EQ(serial, batch.to_float_vector());

  EXPECT_THROW(folder.load_batch(20, 4), Error);
  EXPECT_THROW(folder.labels(23, 1), Error);
  EXPECT_NO_THROW(folder.labels(23, 0));
}

TEST(IoImageFolder, FirstBadImageIsReported) {
  TempDir dir;
  for (int i = 0; i < 8; ++i) {
    bool bad = i == 2 || i == 6;
    write_png(dir.file("img" + std::to_string(i) + ".png"), rgb_image(bad ? 3 : 4, 4));
  }
  ImageFolder folder(dir.path().string(), Preprocess{3, 4, 4, 255.0f, {}, {}, false});
  std::vector<float> out(8 * 48);
  for (int attempt = 0; attempt < 5; ++attempt) {
    EXPECT_EQ(error_of(ErrorKind::kInvalid, [&] { folder.load_batch(0, 8, out.data()); }),
              dir.file("img2.png") +
                  ": image is 3×4, the model expects 4×4 (width×height); resize and center-crop "
                  "it with --resize and --crop, e.g. --resize 4 --crop 4,4");
  }
}

TEST(IoImageFolder, BundledDigitsMatchTheGoldenBatch) {
  // data/README.md: the golden input is these four val images, preprocessed by PyTorch's
  // pipeline in float32 with the model's metadata.
  std::string data = QFORGE_DATA_DIR;
  std::string golden_path = data + "/golden/resnet_input.npy";
  std::string val = data + "/datasets/digits/val";
  if (!fs::exists(golden_path) || !fs::exists(val)) GTEST_SKIP() << "bundled data not present";
  Preprocess p = preprocess_from_metadata({{"qforge.input_shape", "3,32,32"},
                                           {"qforge.mean", "0.3054,0.3147,0.3242"},
                                           {"qforge.std", "0.3237,0.2919,0.2437"}});
  kernels::Tensor golden = read_npy(golden_path);
  ASSERT_EQ(golden.describe(), "float32[4, 3, 32, 32]");
  const char* files[] = {"0/00078.png", "3/00045.png", "5/00035.png", "8/00028.png"};
  std::vector<float> image(3 * 32 * 32);
  for (int i = 0; i < 4; ++i) {
    load_image(val + "/" + files[i], p, image.data());
    const float* expected = golden.data<float>() + image.size() * i;
    EXPECT_EQ(image, std::vector<float>(expected, expected + image.size())) << files[i];
  }
  ImageFolder folder(val, p);
  EXPECT_EQ(folder.class_names().size(), 10u);
  EXPECT_EQ(folder.size(), 360u);
}

}  // namespace
}  // namespace qforge::io
