// .npz archives: round trips through write_npz / read_npz, a member's errors named, and archives
// that are not .npz refused with the file named.
#include <gtest/gtest.h>
#include <zip.h>

#include <cstring>
#include <map>
#include <string>

#include "tests/support/errors.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"

namespace qforge::io {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::TempDir;

bool same(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

TEST(IoNpz, RoundTripKeepsEveryBit) {
  TempDir dir;
  std::map<std::string, Tensor> tensors;
  tensors["logits"] = Tensor::from_vector<float>({2, 3}, {0.5f, -0.0f, 1e-38f, 3.25f, -7.f, 1e30f});
  tensors["/layer1/Conv_output_0_QuantizeLinear_Output"] =
      Tensor::from_vector<int8_t>({5}, {-128, -1, 0, 1, 127});
  tensors["u"] = Tensor::from_vector<uint8_t>({2, 2}, {0, 1, 128, 255});
  tensors["scalar"] = Tensor::from_vector<int64_t>({}, {-9});
  const std::string path = dir.file("dump.npz");
  write_npz(path, tensors);
  const auto back = read_npz(path);
  ASSERT_EQ(back.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(back.count(name)) << name;
    EXPECT_TRUE(same(back.at(name), t)) << name;
  }
}

// A deflated member, as np.savez_compressed writes, reads the same.
TEST(IoNpz, ReadsDeflatedMembers) {
  TempDir dir;
  const Tensor t = Tensor::from_vector<float>({4}, {1.f, 2.f, 3.f, 4.f});
  const std::string npy = encode_npy(t);
  const std::string path = dir.file("c.npz");
  int code = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code);
  ASSERT_NE(z, nullptr);
  zip_source_t* src = zip_source_buffer(z, npy.data(), npy.size(), 0);
  const zip_int64_t i = zip_file_add(z, "a.npy", src, 0);
  ASSERT_GE(i, 0);
  ASSERT_EQ(zip_set_file_compression(z, static_cast<zip_uint64_t>(i), ZIP_CM_DEFLATE, 9), 0);
  ASSERT_EQ(zip_close(z), 0);
  const auto back = read_npz(path);
  ASSERT_EQ(back.count("a"), 1u);
  EXPECT_TRUE(same(back.at("a"), t));
  // The header alone gives the shape, deflated or not.
  const auto shapes = read_npz_shapes(path);
  ASSERT_EQ(shapes.size(), 1u);
  EXPECT_EQ(shapes.at("a"), kernels::Shape{4});
}

// The shapes from the members' headers are those of the arrays read whole, a 0-d one and an
// empty one included; a member whose data is shorter than its header says is refused, as
// read_npz refuses it, naming the member.
TEST(IoNpz, ShapesComeFromTheHeaders) {
  TempDir dir;
  std::map<std::string, Tensor> tensors;
  tensors["input_ids"] = Tensor(DType::kInt64, {3, 12});
  tensors["mask"] = Tensor(DType::kBool, {3, 1, 12});
  tensors["scalar"] = Tensor::from_vector<float>({}, {1.5f});
  tensors["empty"] = Tensor(DType::kFloat32, {0, 4});
  const std::string path = dir.file("in.npz");
  write_npz(path, tensors);
  const auto shapes = read_npz_shapes(path);
  ASSERT_EQ(shapes.size(), tensors.size());
  for (const auto& [name, t] : tensors) EXPECT_EQ(shapes.at(name), t.shape()) << name;

  std::string npy = encode_npy(Tensor(DType::kFloat32, {2, 3}));
  npy.resize(npy.size() - 4);
  const std::string short_path = dir.file("short.npz");
  int code = 0;
  zip_t* z = zip_open(short_path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code);
  zip_file_add(z, "x.npy", zip_source_buffer(z, npy.data(), npy.size(), 0), 0);
  ASSERT_EQ(zip_close(z), 0);
  const std::string message =
      testing::error_of(ErrorKind::kInvalid, [&] { read_npz_shapes(short_path); });
  EXPECT_NE(message.find("member 'x.npy'"), std::string::npos) << message;
  EXPECT_NE(message.find("expected 24 bytes of data, got 20"), std::string::npos) << message;
}

TEST(IoNpz, ErrorsNameTheFileAndMember) {
  TempDir dir;
  EXPECT_NE(testing::error_of(ErrorKind::kIo, [&] { read_npz(dir.file("none.npz")); })
                .find(dir.file("none.npz")),
            std::string::npos);
  testing::write_bytes(dir.file("text.npz"), "not a zip archive at all");
  EXPECT_NE(testing::error_of(ErrorKind::kInvalid, [&] { read_npz(dir.file("text.npz")); })
                .find("text.npz"),
            std::string::npos);
  // A member that is not an .npy.
  const std::string path = dir.file("bad.npz");
  int code = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code);
  const std::string junk = "plain text, no .npy magic";
  zip_file_add(z, "x.npy", zip_source_buffer(z, junk.data(), junk.size(), 0), 0);
  ASSERT_EQ(zip_close(z), 0);
  const std::string message = testing::error_of(ErrorKind::kInvalid, [&] { read_npz(path); });
  EXPECT_NE(message.find("member 'x.npy'"), std::string::npos) << message;
}

}  // namespace
}  // namespace qforge::io
