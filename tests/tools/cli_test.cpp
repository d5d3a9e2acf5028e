// The qforge program end to end: bad input gives one clear line on stderr, a non-zero exit and
// no output file; good input gives the expected figures.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/support/onnx_models.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using testing::count_lines;
using testing::data_path;
using testing::run_cli;
using testing::TempDir;

const std::string kResnet = data_path("models/resnet_bn.onnx");
const std::string kGoldenInput = data_path("golden/resnet_input.npy");

using testing::expect_one_line_error;

using testing::one_node_model;

TEST(Cli, HelpListsCommands) {
  auto r = run_cli("--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("inspect"), std::string::npos);
  EXPECT_NE(r.out.find("run"), std::string::npos);
  auto run_help = run_cli("run --help");
  EXPECT_EQ(run_help.exit_code, 0);
  EXPECT_NE(run_help.out.find("--batch"), std::string::npos);
}

TEST(Cli, TruncatedModelIsRejected) {
  TempDir dir;
  std::string bytes = testing::read_text(kResnet);
  testing::write_bytes(dir.file("truncated.onnx"), bytes.substr(0, bytes.size() / 3));
  auto r = run_cli("run " + dir.file("truncated.onnx") + " --data " + kGoldenInput + " -o " +
                   dir.file("out.npy"));
  expect_one_line_error(r, "truncated.onnx");
  EXPECT_FALSE(std::filesystem::exists(dir.file("out.npy")));
}

TEST(Cli, GarbageModelIsRejected) {
  TempDir dir;
  testing::write_bytes(dir.file("garbage.onnx"), "this is not a protobuf \xff\xfe\x01 at all");
  auto r = run_cli("inspect " + dir.file("garbage.onnx"));
  expect_one_line_error(r, "garbage.onnx");
}

TEST(Cli, UnknownOpNamesOpNodeAndOpset) {
  TempDir dir;
  testing::write_bytes(dir.file("unknown.onnx"), one_node_model("FancyWarp", "warp_7"));
  auto r = run_cli("run " + dir.file("unknown.onnx") + " --data " + kGoldenInput);
  expect_one_line_error(r, "FancyWarp");
  EXPECT_NE(r.err.find("warp_7"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("opset 17"), std::string::npos) << r.err;
}

TEST(Cli, MissingModelAndDataPaths) {
  TempDir dir;
  expect_one_line_error(run_cli("inspect " + dir.file("absent.onnx")), "absent.onnx");
  auto r = run_cli("run " + kResnet + " --data " + dir.file("absent_dir") + " -o " +
                   dir.file("out.npy"));
  expect_one_line_error(r, "absent_dir");
  EXPECT_FALSE(std::filesystem::exists(dir.file("out.npy")));
}

TEST(Cli, UnwritableOutputLeavesNothing) {
  TempDir dir;
  std::string out = dir.file("no_such_dir/out.npy");
  auto r = run_cli("run " + kResnet + " --data " + kGoldenInput + " -o " + out);
  expect_one_line_error(r, "no_such_dir/out.npy");
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(Cli, ImageOfWrongSizeNamesTheFile) {
  TempDir dir;
  std::filesystem::create_directories(dir.path() / "data/3");
  testing::write_png(dir.file("data/3/a.png"), 32, 32, 3,
                     std::vector<unsigned char>(32 * 32 * 3, 90));
  testing::write_png(dir.file("data/3/b.png"), 28, 28, 3,
                     std::vector<unsigned char>(28 * 28 * 3, 90));
  auto r = run_cli("run " + kResnet + " --data " + dir.file("data") + " -o " + dir.file("out.npy"));
  expect_one_line_error(r, "b.png");
  EXPECT_FALSE(std::filesystem::exists(dir.file("out.npy")));
}

TEST(Cli, ImageWithWrongChannelCountNamesTheFile) {
  // A color image cannot feed a one-channel model (qforge does not turn color into gray); a
  // gray image feeds an RGB model, replicated as PIL's convert("RGB") does.
  TempDir dir;
  testing::write_bytes(dir.file("gray.onnx"), one_node_model("Relu", "relu", {-1, 1, 8, 8}));
  std::filesystem::create_directories(dir.path() / "data/1");
  testing::write_png(dir.file("data/1/color.png"), 8, 8, 3,
                     std::vector<unsigned char>(8 * 8 * 3, 7));
  auto r = run_cli("run " + dir.file("gray.onnx") + " --data " + dir.file("data") +
                   " --pixel-scale 255 -o " + dir.file("out.npy"));
  expect_one_line_error(r, "color.png");
  EXPECT_FALSE(std::filesystem::exists(dir.file("out.npy")));

  std::filesystem::create_directories(dir.path() / "rgb/1");
  testing::write_png(dir.file("rgb/1/a.png"), 32, 32, 3,
                     std::vector<unsigned char>(32 * 32 * 3, 90));
  testing::write_png(dir.file("rgb/1/b.png"), 32, 32, 1, std::vector<unsigned char>(32 * 32, 90));
  r = run_cli("run " + kResnet + " --data " + dir.file("rgb") + " -o " + dir.file("out.npy"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  kernels::Tensor out = io::read_npy(dir.file("out.npy"));
  ASSERT_EQ(out.dim(0), 2);
  const int64_t classes = out.dim(1);
  EXPECT_EQ(std::vector<float>(out.data<float>(), out.data<float>() + classes),
            std::vector<float>(out.data<float>() + classes, out.data<float>() + 2 * classes));
}

TEST(Cli, NpyOfWrongSampleShapeIsRejected) {
  TempDir dir;
  io::write_npy(dir.file("x.npy"), kernels::Tensor(kernels::DType::kFloat32, {2, 3, 16, 16}));
  auto r = run_cli("run " + kResnet + " --data " + dir.file("x.npy"));
  expect_one_line_error(r, "x.npy");
}

TEST(Cli, RunWritesOutputsEqualToGolden) {
  TempDir dir;
  auto r = run_cli("run " + kResnet + " --data " + kGoldenInput + " --batch 3 -o " +
                   dir.file("out.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("images/s"), std::string::npos) << r.out;
  auto got = io::read_npy(dir.file("out.npy"));
  auto ref = io::read_npy(data_path("golden/resnet_bn_output.npy"));
  ASSERT_EQ(got.shape(), ref.shape());
  for (int64_t i = 0; i < ref.numel(); ++i) {
    EXPECT_NEAR(got.data<float>()[i], ref.data<float>()[i], 1e-4) << i;
  }
}

// --profile-nodes N lists the N slowest nodes, slowest first, each with its op kind, its name
// and its output's shape (here from the first batch's plan); N below 1 is refused.
TEST(Cli, RunProfileNodesListsTheSlowestNodes) {
  auto r = run_cli("run " + kResnet + " --data " + kGoldenInput + " --batch 3 --profile-nodes 4");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const size_t header = r.out.find("slowest    4 of ");
  ASSERT_NE(header, std::string::npos) << r.out;
  std::istringstream lines(r.out.substr(header));
  std::string line;
  std::getline(lines, line);
  double previous = std::numeric_limits<double>::infinity();
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(std::getline(lines, line)) << r.out;
    std::istringstream fields(line);
    double ms = 0;
    std::string unit, share, op, name, arrow, shape;
    fields >> ms >> unit >> share >> op >> name >> arrow;
    std::getline(fields, shape);
    EXPECT_EQ(unit, "ms") << line;
    EXPECT_LE(ms, previous) << line;
    previous = ms;
    EXPECT_FALSE(op.empty()) << line;
    EXPECT_EQ(name.front(), '/') << line;  // torch.onnx's node names
    EXPECT_EQ(arrow, "->") << line;
    EXPECT_EQ(shape.rfind(" float32[3, ", 0), 0u) << line;
  }
  EXPECT_FALSE(std::getline(lines, line)) << "more than 4 nodes listed: " << r.out;
  expect_one_line_error(
      run_cli("run " + kResnet + " --data " + kGoldenInput + " --profile-nodes 0"),
      "--profile-nodes");
}

// --transform runs the fused graph (modules, not standard ops) at --batch and computes what the
// model computes: PyTorch's outputs within the equivalence tolerance of the rewrites.
TEST(Cli, RunTransformedMatchesGolden) {
  for (std::string family : {"resnet", "vit", "swin"}) {
    SCOPED_TRACE(family);
    TempDir dir;
    const auto input = io::read_npy(data_path("golden/" + family + "_input.npy"));
    auto r = run_cli("run " + data_path("models/" + family + "_bn.onnx") + " --data " +
                     data_path("golden/" + family + "_input.npy") + " --transform --batch " +
                     std::to_string(input.dim(0)) + " -o " + dir.file("out.npy"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("fusions)"), std::string::npos) << r.out;
    auto got = io::read_npy(dir.file("out.npy"));
    auto ref = io::read_npy(data_path("golden/" + family + "_bn_output.npy"));
    ASSERT_EQ(got.shape(), ref.shape());
    for (int64_t i = 0; i < ref.numel(); ++i) {
      EXPECT_NEAR(got.data<float>()[i], ref.data<float>()[i], 1e-4) << i;
    }
  }
}

// The fused graph is resolved at --batch: samples past the last whole batch are left out, and
// the output says how many.
TEST(Cli, RunTransformedSaysWhatALastPartialBatchLeavesOut) {
  TempDir dir;
  const std::string input = data_path("golden/vit_input.npy");  // 4 samples
  auto r = run_cli("run " + data_path("models/vit_bn.onnx") + " --data " + input +
                   " --transform --batch 3 -o " + dir.file("out.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("(3 samples, batch 3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("the last 1 samples do not fill a batch"), std::string::npos) << r.out;
  EXPECT_EQ(io::read_npy(dir.file("out.npy")).dim(0), 3);
}

TEST(Cli, ValidationAccuracyEqualsPyTorch) {
  auto accuracy = nlohmann::json::parse(testing::read_text(data_path("golden/accuracy.json")));
  for (std::string family : {"resnet", "mobilenet_v3", "efficientnet", "convnext", "vit", "swin"}) {
    for (std::string form : {"_bn", "_folded"}) {
      std::string model = data_path("models/");
      model.append(family).append(form).append(".onnx");
      auto r = run_cli("run " + model + " --data " + data_path("datasets/digits/val"));
      ASSERT_EQ(r.exit_code, 0) << r.err;
      int correct = accuracy[family]["val_correct"];
      int count = accuracy[family]["val_count"];
      std::string expected = "(" + std::to_string(correct) + "/" + std::to_string(count) + ")";
      EXPECT_NE(r.out.find(expected), std::string::npos) << model << ": " << r.out;
    }
  }
}

TEST(Cli, ClassFoldersThroughADetectorRunWithoutTopOne) {
  // The detector's output is [N, cells, 5 + classes]: the images run, top-1 is not given and
  // the line says why.
  auto r = run_cli("run " + data_path("models/yolo_bn.onnx") + " --data " +
                   data_path("datasets/digits/val") + " --limit 16 --batch 8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("(16 samples, batch 8"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("top-1      not computed: the first output is float32[8, 14, 64], not "
                       "[N, classes] float"),
            std::string::npos)
      << r.out;
}

TEST(Cli, ClassFolderBeyondTheModelsClassesIsAnError) {
  // Eleven class folders for a ten-class model: the eleventh folder's label has no output, so
  // top-1 would be wrong; the run says so instead.
  TempDir dir;
  const std::filesystem::path val = data_path("datasets/digits/val");
  for (int c = 0; c <= 10; ++c) {
    const std::string name = (c < 10 ? "c0" : "c") + std::to_string(c);
    const std::filesystem::path sub = std::filesystem::path(dir.file("folders")) / name;
    std::filesystem::create_directories(sub);
    const std::filesystem::path from = val / std::to_string(c % 10);
    const std::filesystem::path image = *std::filesystem::directory_iterator(from);
    std::filesystem::copy_file(image, sub / image.filename());
  }
  auto r = run_cli("run " + kResnet + " --data " + dir.file("folders") + " --batch 11");
  EXPECT_NE(r.exit_code, 0);
  expect_one_line_error(r, "run: label 10 is outside the model's 10 classes");
}

TEST(Cli, InspectPrintsFigures) {
  auto r = run_cli("inspect " + kResnet);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("GMAC"), std::string::npos);
  EXPECT_NE(r.out.find(" per image ("), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("BatchNormalization"), std::string::npos);
  EXPECT_NE(r.out.find("params"), std::string::npos);
}

}  // namespace
}  // namespace qforge
