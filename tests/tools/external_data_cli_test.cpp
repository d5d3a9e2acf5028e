// `--external-data` on calibrate and qat: the weights go to "<output>.data" beside the model,
// which then loads as the same model as the one written without the flag, runs alike in ONNX
// Runtime, and is evaluated (read back before it is in place) with the same figures. A failed run
// leaves neither file; a data file that would overwrite an input is refused before any work.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cstring>
#include <filesystem>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "tests/support/onnx_files.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using testing::data_path;
using testing::run_cli;
using testing::TempDir;

const std::string kResnet = data_path("models/resnet_bn.onnx");
const std::string kTrain = data_path("datasets/digits/train");

// The lines of `out` that start with one of `prefixes`, in order.
std::string lines_starting(const std::string& out, const std::vector<std::string>& prefixes) {
  std::istringstream in(out);
  std::string line, kept;
  while (std::getline(in, line)) {
    for (const std::string& p : prefixes) {
      if (line.rfind(p, 0) == 0) kept.append(line).append("\n");
    }
  }
  return kept;
}

void expect_same_model(const std::string& a, const std::string& b) {
  EXPECT_GT(testing::expect_same_constants(*graph::load_onnx(a), *graph::load_onnx(b)).constants,
            10u);
}

// The bytes of the model's initializers kept in the data file, from the model's entries.
size_t external_bytes(const std::string& path) {
  onnx::ModelProto model;
  EXPECT_TRUE(model.ParseFromString(testing::read_text(path)));
  size_t bytes = 0;
  for (const auto& t : model.graph().initializer()) {
    if (t.data_location() != onnx::TensorProto::EXTERNAL) {
      EXPECT_LT(t.raw_data().size(), 1024u) << t.name() << " stayed in the model";
      continue;
    }
    for (const auto& e : t.external_data()) {
      if (e.key() == "offset") {
        EXPECT_EQ(std::stoull(e.value()) % 4096, 0u) << t.name();
      } else if (e.key() == "length") {
        bytes += std::stoull(e.value());
      } else {
        EXPECT_EQ(e.key(), "location");
        EXPECT_EQ(e.value(), "ext.qdq.onnx.data");
      }
    }
  }
  return bytes;
}

TEST(ExternalDataCli, CalibrateWritesTheSameModelWithItsWeightsBesideIt) {
  TempDir dir;
  const std::string common = "calibrate " + kResnet + " --data " + kTrain + " --limit 32 -o ";
  const std::string plain = dir.file("plain.qdq.onnx");
  const std::string ext = dir.file("ext.qdq.onnx");
  const auto a = run_cli(common + plain);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const auto b = run_cli(common + ext + " --external-data");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  ASSERT_TRUE(std::filesystem::exists(ext + ".data"));
  EXPECT_FALSE(std::filesystem::exists(plain + ".data"));
  EXPECT_LT(std::filesystem::file_size(ext), std::filesystem::file_size(plain) / 10);
  EXPECT_GT(external_bytes(ext), std::filesystem::file_size(plain) * 9 / 10);
  expect_same_model(plain, ext);
  // The evaluation read the written model back, data file included, before either was in place.
  const std::vector<std::string> figures = {"output SQNR", "cosine",      "top-1 agree", "accuracy",
                                            "cross-ent.",  "KL to float", "one flip"};
  EXPECT_EQ(lines_starting(a.out, figures), lines_starting(b.out, figures));
  EXPECT_NE(lines_starting(b.out, {"written"}).find("KiB in ext.qdq.onnx.data)"), std::string::npos)
      << b.out;

  const kernels::Tensor x = testing::random_f32({2, 3, 32, 32}, 11, 0.0f, 1.0f);
  const auto want = testing::run_ort(plain, {x});
  const auto got = testing::run_ort(ext, {x});
  ASSERT_EQ(want.size(), 1u);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(got[0].describe(), want[0].describe());
  EXPECT_EQ(std::memcmp(got[0].raw(), want[0].raw(), got[0].nbytes()), 0);
}

TEST(ExternalDataCli, QatWritesTheSameModelWithItsWeightsBesideIt) {
  TempDir dir;
  const std::string common = "qat " + kResnet + " --data " + kTrain + " --val " +
                             data_path("datasets/digits/val") +
                             " --calib-limit 16 --batch 8 --steps 2 --lr 0.01 -o ";
  const auto a = run_cli(common + dir.file("plain.qdq.onnx"));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const auto b = run_cli(common + dir.file("ext.qdq.onnx") + " --external-data");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  ASSERT_TRUE(std::filesystem::exists(dir.file("ext.qdq.onnx.data")));
  expect_same_model(dir.file("plain.qdq.onnx"), dir.file("ext.qdq.onnx"));
  // The PTQ model (weights held apart in memory) and the written QAT model read back compare
  // alike.
  const std::vector<std::string> rows = {"  float", "  PTQ", "  QAT", "accuracy"};
  EXPECT_EQ(lines_starting(a.out, rows), lines_starting(b.out, rows));
  EXPECT_FALSE(lines_starting(b.out, {"  PTQ"}).empty()) << b.out;
}

TEST(ExternalDataCli, TransformWritesTheSameModelWithItsWeightsBesideIt) {
  TempDir dir;
  const std::string common = "transform " + data_path("models/vit_bn.onnx") + " -o ";
  const auto a = run_cli(common + dir.file("plain.onnx"));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const auto b = run_cli(common + dir.file("ext.onnx") + " --external-data");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  // The check re-imported the written form, weights from the data held in memory.
  EXPECT_NE(b.out.find("(written model vs the original"), std::string::npos) << b.out;
  EXPECT_NE(b.out.find("KiB in ext.onnx.data)"), std::string::npos) << b.out;
  EXPECT_EQ(testing::leftover_files(dir, {"plain.onnx", "ext.onnx", "ext.onnx.data"}),
            std::vector<std::string>{});
  expect_same_model(dir.file("plain.onnx"), dir.file("ext.onnx"));
}

TEST(ExternalDataCli, AFailedRunLeavesNeitherFile) {
  TempDir dir;
  auto input = io::read_npy(data_path("golden/resnet_input.npy"));
  input.data<float>()[5] = std::numeric_limits<float>::quiet_NaN();
  io::write_npy(dir.file("nan.npy"), input);
  const auto r = run_cli("calibrate " + kResnet + " --data " + dir.file("nan.npy") +
                         " --external-data -o " + dir.file("out.onnx"));
  testing::expect_one_line_error(r, "nan.npy");
  EXPECT_EQ(testing::leftover_files(dir, {"nan.npy"}), std::vector<std::string>{});
}

TEST(ExternalDataCli, ADataFileThatWouldOverwriteAnInputIsRefused) {
  TempDir dir;
  std::filesystem::copy_file(kResnet, dir.file("out.onnx.data"));
  const auto r = run_cli("calibrate " + dir.file("out.onnx.data") + " --data " + kTrain +
                         " --limit 8 --external-data -o " + dir.file("out.onnx"));
  testing::expect_one_line_error(r, "(--external-data) is the same file as");
  EXPECT_EQ(testing::leftover_files(dir, {"out.onnx.data"}), std::vector<std::string>{});
  EXPECT_EQ(testing::read_text(dir.file("out.onnx.data")), testing::read_text(kResnet));
}

TEST(ExternalDataExport, SaveWritesBothFilesAndRefusesANameOutsideTheFolder) {
  auto g = graph::load_onnx(data_path("models/vit_bn.onnx"));
  TempDir dir;
  graph::ExportOptions options;
  options.external_data = graph::external_data_name(dir.file("vit.onnx"));
  EXPECT_EQ(options.external_data, "vit.onnx.data");
  graph::save_onnx(*g, dir.file("vit.onnx"), options);
  EXPECT_EQ(testing::leftover_files(dir, {"vit.onnx", "vit.onnx.data"}),
            std::vector<std::string>{});
  auto again = graph::load_onnx(dir.file("vit.onnx"));
  for (const graph::Value* v : g->values()) {
    if (!v->is_constant() || v->consumers().empty()) continue;
    const graph::Value* w = again->find_value(v->name());
    ASSERT_TRUE(w && w->is_constant()) << v->name();
    EXPECT_EQ(std::memcmp(v->constant().raw(), w->constant().raw(), v->constant().nbytes()), 0)
        << v->name();
  }
  options.external_data = "../vit.data";
  try {
    graph::save_onnx(*g, dir.file("again.onnx"), options);
    FAIL() << "expected the name to be refused";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "export: external data file '../vit.data': expected a file name in the model's "
              "folder");
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("again.onnx")));
}

}  // namespace
}  // namespace qforge
