// JPEG decoding and the refusal of broken, truncated and oversized images (JPEG and PNG), on
// the files data/generate/preprocess_goldens.py wrote.
#include "tools/io/jpeg.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "tests/support/errors.h"
#include "tests/support/test_support.h"
#include "tools/io/image_folder.h"

namespace qforge::io {
namespace {

using testing::error_of;
using testing::TempDir;

std::string golden(const std::string& name) {
  return std::string(QFORGE_DATA_DIR) + "/golden/preprocess/" + name;
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

Preprocess rgb_model(int width, int height) {
  Preprocess p;
  p.channels = 3;
  p.width = width;
  p.height = height;
  return p;
}

TEST(IoJpeg, ReadsHeaderThenPixels) {
  std::vector<uint8_t> bytes = read_file(golden("rgb420_37x23.jpg"));
  JpegReader reader(bytes, "a.jpg");
  EXPECT_EQ(reader.width(), 37);
  EXPECT_EQ(reader.height(), 23);
  EXPECT_EQ(reader.channels(), 3);
  EXPECT_FALSE(reader.cmyk());
  Image image = reader.read_image();
  EXPECT_EQ(image.pixels.size(), 37u * 23 * 3);

  bytes = read_file(golden("gray_31x29.jpg"));
  image = parse_jpeg(bytes, "g.jpg");
  EXPECT_EQ(image.channels, 1);
  EXPECT_EQ(image.pixels.size(), 31u * 29);
  bytes = read_file(golden("cmyk_26x21.jpg"));
  EXPECT_TRUE(JpegReader(bytes, "c.jpg").cmyk());
  EXPECT_EQ(parse_jpeg(bytes, "c.jpg").channels, 3);
}

TEST(IoJpeg, TruncatedAndCorruptFilesNameTheFile) {
  TempDir dir;
  const std::vector<uint8_t> whole = read_file(golden("rgb420_37x23.jpg"));
  const Preprocess p = rgb_model(37, 23);
  std::vector<float> out(3 * 37 * 23);

  // Cut in the entropy-coded data: libjpeg would fill the rest with gray; PIL refuses it.
  std::vector<uint8_t> cut(whole.begin(), whole.begin() + static_cast<long>(whole.size() * 3 / 4));
  write_file(dir.file("cut.jpg"), cut);
  EXPECT_EQ(error_of(ErrorKind::kInvalid, [&] { load_image(dir.file("cut.jpg"), p, out.data()); }),
            dir.file("cut.jpg") + ": invalid JPEG file (data: Premature end of JPEG file)");

  // Cut inside the headers.
  std::vector<uint8_t> head(whole.begin(), whole.begin() + 40);
  write_file(dir.file("head.jpg"), head);
  std::string message =
      error_of(ErrorKind::kInvalid, [&] { load_image(dir.file("head.jpg"), p, out.data()); });
  EXPECT_EQ(message.rfind(dir.file("head.jpg") + ": invalid JPEG file (header: ", 0), 0u)
      << message;

  // A JPEG start marker followed by garbage.
  std::vector<uint8_t> garbage = {0xFF, 0xD8, 0xFF, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc};
  write_file(dir.file("garbage.jpg"), garbage);
  message =
      error_of(ErrorKind::kInvalid, [&] { load_image(dir.file("garbage.jpg"), p, out.data()); });
  EXPECT_EQ(message.rfind(dir.file("garbage.jpg") + ": invalid JPEG file (", 0), 0u) << message;

  // Neither format, whatever the name says.
  write_file(dir.file("text.jpg"), {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd'});
  message = error_of(ErrorKind::kInvalid, [&] { load_image(dir.file("text.jpg"), p, out.data()); });
  EXPECT_EQ(message.rfind(dir.file("text.jpg") + ": not a JPEG or PNG file", 0), 0u) << message;
}

TEST(IoJpeg, TruncatedPngNamesTheFile) {
  TempDir dir;
  const std::vector<uint8_t> whole = read_file(golden("rgb_37x23.png"));
  std::vector<uint8_t> cut(whole.begin(), whole.begin() + static_cast<long>(whole.size() / 2));
  write_file(dir.file("cut.png"), cut);
  std::vector<float> out(3 * 37 * 23);
  std::string message = error_of(
      ErrorKind::kInvalid, [&] { load_image(dir.file("cut.png"), rgb_model(37, 23), out.data()); });
  EXPECT_EQ(message.rfind(dir.file("cut.png") + ": invalid PNG file (", 0), 0u) << message;
}

// The headers claim 65000 x 65000 (JPEG) and 100000 x 100000 (PNG) pixels: refused before any
// pixel buffer exists, whatever the model's size or the preprocessing.
TEST(IoJpeg, DecompressionBombsAreRefusedBeforeAllocating) {
  const std::string limit =
      " pixels, over qforge's limit of 89478485 (PIL's default MAX_IMAGE_PIXELS); refusing a "
      "likely decompression bomb";
  Preprocess p = rgb_model(224, 224);
  p.resize = {256};
  p.crop = {224};
  std::vector<float> out(3 * 224 * 224);
  const std::string jpeg = golden("bomb.jpg");
  EXPECT_EQ(error_of(ErrorKind::kInvalid, [&] { load_image(jpeg, p, out.data()); }),
            jpeg + ": image header claims 65000×65000 = 4225000000" + limit);
  const std::string png = golden("bomb.png");
  EXPECT_EQ(error_of(ErrorKind::kInvalid, [&] { load_image(png, p, out.data()); }),
            png + ": image header claims 100000×100000 = 10000000000" + limit);
  EXPECT_EQ(error_of(ErrorKind::kInvalid, [&] { decode_png(png); }),
            png + ": image header claims 100000×100000 = 10000000000" + limit);
  // A resize that would make a small image enormous is refused the same way.
  Preprocess huge = rgb_model(9, 9);
  huge.resize = {60000};
  EXPECT_NE(
      error_of(ErrorKind::kInvalid, [&] { load_image(golden("rgb_37x23.png"), huge, out.data()); })
          .find("rgb_37x23.png after --resize: image header claims 96521×60000"),
      std::string::npos);
}

}  // namespace
}  // namespace qforge::io
