// Polygraphy `--save-outputs` JSON: the committed fixture (tests/tools/fixtures, made by
// make_polygraphy_fixture.js) read value for value, runner selection, base64 and errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/support/errors.h"
#include "tests/support/test_support.h"
#include "tools/io/polygraphy_json.h"

namespace qforge::io {
namespace {

namespace fs = std::filesystem;
using kernels::DType;

const std::string kFixture =
    (fs::path(QFORGE_DATA_DIR).parent_path() / "tests/tools/fixtures/polygraphy_outputs.json")
        .string();

TEST(IoPolygraphyJson, ReadsTheFirstRunnersFirstIteration) {
  const PolygraphyOutputs out = read_polygraphy_outputs(kFixture);
  EXPECT_EQ(out.runner, "trt-runner-N0-12/03/26-06:50:00");
  EXPECT_EQ(out.runners, 2u);
  EXPECT_EQ(out.iterations, 2u);
  ASSERT_EQ(out.tensors.size(), 2u);
  const auto& q = out.tensors.at("q");
  EXPECT_EQ(q.dtype(), DType::kInt8);
  EXPECT_EQ(q.shape(), (kernels::Shape{2, 3}));
  EXPECT_EQ(std::vector<int8_t>(q.data<int8_t>(), q.data<int8_t>() + 6),
            (std::vector<int8_t>{-128, -1, 0, 1, 5, 127}));
  const auto& y = out.tensors.at("y");  // a bare ndarray, as older Polygraphy writes
  EXPECT_EQ(y.to_float_vector(), (std::vector<float>{0.5f, -1.25f, 3e-8f}));
}

TEST(IoPolygraphyJson, ReadsARunnerByName) {
  const PolygraphyOutputs out =
      read_polygraphy_outputs(kFixture, "onnxrt-runner-N0-12/03/26-06:50:00");
  ASSERT_EQ(out.tensors.count("u"), 1u);
  const auto& u = out.tensors.at("u");
  EXPECT_EQ(u.dtype(), DType::kUInt8);
  EXPECT_EQ(std::vector<uint8_t>(u.data<uint8_t>(), u.data<uint8_t>() + 4),
            (std::vector<uint8_t>{0, 1, 128, 255}));
  const std::string message =
      testing::error_of(ErrorKind::kInvalid, [] { read_polygraphy_outputs(kFixture, "trt"); });
  EXPECT_NE(message.find("no runner 'trt' (the file holds: trt-runner-N0"), std::string::npos)
      << message;
}

TEST(IoPolygraphyJson, Base64FollowsRfc4648) {
  EXPECT_EQ(decode_base64("", "t"), "");
  EXPECT_EQ(decode_base64("Zg==", "t"), "f");
  EXPECT_EQ(decode_base64("Zm8=", "t"), "fo");
  EXPECT_EQ(decode_base64("Zm9v", "t"), "foo");
  EXPECT_EQ(decode_base64("Zm9vYmFy", "t"), "foobar");
  EXPECT_EQ(decode_base64("/+8A", "t"), std::string("\xff\xef\x00", 3));
  testing::error_of(ErrorKind::kInvalid, [] { decode_base64("Zm9", "t"); });
  testing::error_of(ErrorKind::kInvalid, [] { decode_base64("Zm!v", "t"); });
  testing::error_of(ErrorKind::kInvalid, [] { decode_base64("Z===", "t"); });
}

TEST(IoPolygraphyJson, OtherJsonIsRefusedWithTheFileNamed) {
  testing::TempDir dir;
  testing::write_bytes(dir.file("a.json"), "{\"outputs\": {}}");
  const std::string message =
      testing::error_of(ErrorKind::kInvalid, [&] { read_polygraphy_outputs(dir.file("a.json")); });
  EXPECT_NE(message.find("a.json': expected Polygraphy RunResults JSON"), std::string::npos)
      << message;
  testing::write_bytes(dir.file("b.json"), "{\"lst\": [");
  testing::error_of(ErrorKind::kInvalid, [&] { read_polygraphy_outputs(dir.file("b.json")); });
}

}  // namespace
}  // namespace qforge::io
