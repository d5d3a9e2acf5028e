// Models whose weights lie in files beside them (ONNX external data): load_onnx reads them into
// the same graph as the model that holds its weights, ONNX Runtime runs the same files alike, and
// every way such a file can be wrong is one error naming the tensor, the model and the file.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fuzz/seed_models.h"
#include "graph/onnx_import.h"
#include "kernels/error.h"
#include "tests/support/errors.h"
#include "tests/support/onnx_files.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"

namespace qforge::graph {
namespace {

using testing::data_path;
using testing::TempDir;

using testing::externalize;
using testing::read_proto;
using testing::set_entry;

// The two graphs hold the same constants, byte for byte.
void expect_same_constants(const Graph& a, const Graph& b) {
  EXPECT_GT(testing::expect_same_constants(a, b).constants, 0u);
}

class ExternalDataModels : public ::testing::TestWithParam<std::string> {};

TEST_P(ExternalDataModels, LoadAsTheModelThatHoldsItsWeights) {
  const std::string inline_path = data_path("models/" + GetParam() + ".onnx");
  TempDir dir;
  const std::string path = externalize(read_proto(inline_path), dir);
  EXPECT_LT(std::filesystem::file_size(path), std::filesystem::file_size(inline_path) / 4);
  expect_same_constants(*load_onnx(inline_path), *load_onnx(path));
}

// The Constant nodes' tensors of an opset-11 model go through the version converter as well.
INSTANTIATE_TEST_SUITE_P(Bundled, ExternalDataModels,
                         ::testing::Values("resnet_bn", "vit_bn", "yolo_bn_opset11"));

TEST(ExternalData, OnnxRuntimeRunsTheFilesAsTheModelThatHoldsItsWeights) {
  const std::string inline_path = data_path("models/resnet_bn.onnx");
  TempDir dir;
  const std::string path = externalize(read_proto(inline_path), dir);
  const Tensor x = testing::random_f32({2, 3, 32, 32}, 5, -1.0f, 1.0f);
  const std::vector<Tensor> expected = testing::run_ort(inline_path, {x});
  const std::vector<Tensor> got = testing::run_ort(path, {x});
  ASSERT_EQ(expected.size(), 1u);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(got[0].describe(), expected[0].describe());
  EXPECT_EQ(std::memcmp(got[0].raw(), expected[0].raw(), got[0].nbytes()), 0);
}

// A model with one external initializer, whose entries `edit` changes; returns load_onnx's
// error of kind `kind`.
std::string error_with(ErrorKind kind,
                       const std::function<void(onnx::TensorProto&, const TempDir&)>& edit) {
  TempDir dir;
  const std::string path = externalize(read_proto(data_path("models/resnet_bn.onnx")), dir);
  onnx::ModelProto model = read_proto(path);
  onnx::TensorProto* first = nullptr;
  for (auto& t : *model.mutable_graph()->mutable_initializer()) {
    if (t.data_location() == onnx::TensorProto::EXTERNAL) {
      first = &t;
      break;
    }
  }
  EXPECT_NE(first, nullptr);
  edit(*first, dir);
  testing::write_bytes(path, model.SerializeAsString());
  std::string message = testing::error_of(kind, [&] { load_onnx(path); });
  // The temporary folder's name differs from run to run.
  for (size_t at; (at = message.find(dir.path().string())) != std::string::npos;) {
    message.replace(at, dir.path().string().size(), "DIR");
  }
  return message;
}

TEST(ExternalData, EveryFaultOfTheFileOrItsEntriesIsNamed) {
  // The first external tensor of resnet_bn: the stem's weight, 16 x 3 x 7 x 7 floats, at the
  // start of weights.bin.
  const std::string tensor = "import: tensor 'conv1.weight' of 'DIR/model.onnx': ";
  auto edited = [](const std::string& key, const std::string& value) {
    return [key, value](onnx::TensorProto& t, const TempDir&) { set_entry(t, key, value); };
  };
  EXPECT_EQ(error_with(ErrorKind::kIo, edited("location", "missing.bin")),
            tensor + "cannot read external data 'DIR/missing.bin': No such file or directory");
  EXPECT_EQ(error_with(ErrorKind::kIo, edited("location", "parts")),
            tensor + "cannot read external data 'DIR/parts': Is a directory");
  EXPECT_EQ(error_with(ErrorKind::kIo,
                       [](onnx::TensorProto& t, const TempDir& dir) {
                         std::filesystem::create_symlink("/dev/null", dir.file("null.bin"));
                         set_entry(t, "location", "null.bin");
                       }),
            tensor + "cannot read external data 'DIR/null.bin': not a regular file");
  EXPECT_EQ(error_with(ErrorKind::kInvalid, edited("length", "100")),
            tensor +
                "expected 9408 bytes for 2352 float32 values, the external data gives a length of "
                "100");
  EXPECT_EQ(error_with(ErrorKind::kInvalid, edited("offset", "-4")),
            tensor + "external data offset must be a non-negative integer, got '-4'");
  EXPECT_EQ(error_with(ErrorKind::kInvalid, edited("length", "12 bytes")),
            tensor + "external data length must be a non-negative integer, got '12 bytes'");
  EXPECT_EQ(error_with(ErrorKind::kInvalid, edited("location", "")),
            tensor + "external data without a location");
  EXPECT_EQ(error_with(ErrorKind::kInvalid, edited("location", "/etc/hostname")),
            tensor +
                "external data location '/etc/hostname' must be a relative path inside the "
                "model's folder");
  EXPECT_EQ(error_with(ErrorKind::kInvalid, edited("location", "parts/../../weights.bin")),
            tensor +
                "external data location 'parts/../../weights.bin' must be a relative path inside "
                "the model's folder");
  // Past the end of the file: the message gives the file's size.
  uintmax_t size = 0;
  const std::string past =
      error_with(ErrorKind::kInvalid, [&](onnx::TensorProto& t, const TempDir& dir) {
        size = std::filesystem::file_size(dir.file("weights.bin"));
        set_entry(t, "offset", std::to_string(size - 1000));
      });
  EXPECT_EQ(past, tensor + "expected bytes [" + std::to_string(size - 1000) + ", " +
                      std::to_string(size - 1000 + 9408) +
                      ") of external data 'DIR/weights.bin', " + "which holds " +
                      std::to_string(size));
}

TEST(ExternalData, ModelBytesWithoutTheirFileAreRefused) {
  TempDir dir;
  const std::string path = externalize(read_proto(data_path("models/resnet_bn.onnx")), dir);
  EXPECT_EQ(testing::error_of(ErrorKind::kUnsupported,
                              [&] { parse_onnx(testing::read_text(path), "bytes.onnx"); }),
            "import: tensor 'conv1.weight' of 'bytes.onnx': its data lies in an external file, "
            "which is read only when the model is loaded from its own file (its location is "
            "relative to the model's folder)");
}

TEST(ExternalData, BytesHeldInMemoryServeAModelGivenAsBytes) {
  const std::string inline_path = data_path("models/resnet_bn.onnx");
  TempDir dir;
  const std::string path = externalize(read_proto(inline_path), dir);
  const std::string model = testing::read_text(path);
  // Only the data of weights.bin in memory: the tensors in parts/more.bin are refused.
  const std::string weights = testing::read_text(dir.file("weights.bin"));
  ImportOptions options;
  options.external_data_bytes["weights.bin"] = weights;
  const std::string error =
      testing::error_of(ErrorKind::kUnsupported, [&] { parse_onnx(model, "bytes.onnx", options); });
  EXPECT_NE(error.find("' of 'bytes.onnx': its data lies in an external file"), std::string::npos)
      << error;
  const std::string more = testing::read_text(dir.file("parts/more.bin"));
  options.external_data_bytes["parts/more.bin"] = more;
  expect_same_constants(*load_onnx(inline_path), *parse_onnx(model, "bytes.onnx", options));
  // A range past the bytes held is named as for a file.
  const std::string short_weights = weights.substr(0, 100);
  options.external_data_bytes["weights.bin"] = short_weights;
  EXPECT_EQ(
      testing::error_of(ErrorKind::kInvalid, [&] { parse_onnx(model, "bytes.onnx", options); }),
      "import: tensor 'conv1.weight' of 'bytes.onnx': expected bytes [0, 9408) of external "
      "data 'weights.bin', which holds 100");
}

// The importer fuzz target's seed with external weights imports, its weights read from the
// blob the target serves, so that its mutations reach the external data reader.
TEST(ExternalData, TheFuzzSeedReadsItsWeightsFromTheBlob) {
  const std::string blob = fuzz::external_data_blob();
  ImportOptions options;
  options.external_data_bytes[fuzz::kExternalDataLocation] = blob;
  auto g = parse_onnx(fuzz::conv_net_model(/*external=*/true), "seed.onnx", options);
  auto plain = parse_onnx(fuzz::conv_net_model(), "seed.onnx");
  size_t offset = 64;  // w1, w2 and fc_w follow one another from byte 64
  for (const char* name : {"w1", "w2", "fc_w"}) {
    const Tensor& w = g->find_value(name)->constant();
    EXPECT_EQ(w.describe(), plain->find_value(name)->constant().describe()) << name;
    EXPECT_EQ(std::memcmp(w.raw(), blob.data() + offset, w.nbytes()), 0) << name;
    offset += w.nbytes();
  }
  EXPECT_EQ(testing::error_of(ErrorKind::kUnsupported,
                              [] { parse_onnx(fuzz::conv_net_model(true), "seed.onnx"); })
                .find("import: tensor 'w1' of 'seed.onnx': its data lies in an external file"),
            0u);
}

}  // namespace
}  // namespace qforge::graph
