// Models whose attributes or declared shapes break the catalog's rules are refused by every
// command with one line naming the node or input, exit 1 and nothing written: before this
// check a stride of 0 killed qforge with SIGFPE inside libonnx's shape inference.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/support/onnx_models.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using testing::expect_one_line_error;
using testing::leftover_files;
using testing::node_model;
using testing::NodeModelSpec;
using testing::run_cli;
using testing::TempDir;

// The bad model as bad.onnx and a [2, 3, 8, 8] batch as data.npy in `dir`.
void write_inputs(const TempDir& dir, const NodeModelSpec& spec) {
  testing::write_bytes(dir.file("bad.onnx"), node_model(spec));
  io::write_npy(dir.file("data.npy"), kernels::Tensor(kernels::DType::kFloat32, {2, 3, 8, 8}));
}

// Every command that reads a model, with -o (and --report) where it writes.
std::vector<std::string> every_command(const TempDir& dir) {
  const std::string m = dir.file("bad.onnx");
  const std::string d = " --data " + dir.file("data.npy");
  return {"inspect " + m,
          "run " + m + d + " -o " + dir.file("out.npy"),
          "run " + m + d + " --transform --batch 2 -o " + dir.file("out.npy"),
          "plan " + m + " -o " + dir.file("plan.json"),
          "transform " + m + " -o " + dir.file("out.onnx") + " --report " + dir.file("r.json"),
          "compare " + m + " " + m + d,
          "calibrate " + m + d + " --batch 2 -o " + dir.file("out.onnx") + " --report " +
              dir.file("r.json")};
}

void expect_refused_everywhere(const NodeModelSpec& spec, const std::string& message) {
  TempDir dir;
  write_inputs(dir, spec);
  for (const std::string& command : every_command(dir)) {
    SCOPED_TRACE(command);
    auto r = run_cli(command);
    EXPECT_EQ(r.exit_code, 1);
    expect_one_line_error(r, message);
    EXPECT_EQ(leftover_files(dir, {"bad.onnx", "data.npy"}), std::vector<std::string>{});
  }
}

TEST(CliValidation, ZeroStrideConvInEveryCommand) {
  NodeModelSpec spec;
  spec.weight_shape = std::vector<int64_t>{4, 3, 3, 3};
  spec.ints_attributes = {{"strides", {0, 0}}};
  expect_refused_everywhere(
      spec, "node 'conv' (Conv): expected attribute 'strides' values >= 1, got [0, 0]");
}

TEST(CliValidation, ZeroStrideMaxPoolInEveryCommand) {
  NodeModelSpec spec;
  spec.op_type = "MaxPool";
  spec.node_name = "pool";
  spec.ints_attributes = {{"kernel_shape", {2, 2}}, {"strides", {0, 2}}};
  expect_refused_everywhere(
      spec, "node 'pool' (MaxPool): expected attribute 'strides' values >= 1, got [0, 2]");
}

TEST(CliValidation, RunRefusesBatchZeroAndNegativeInputDimensions) {
  for (const std::vector<int64_t>& shape :
       {std::vector<int64_t>{0, 3, 8, 8}, std::vector<int64_t>{2, 3, -8, 8}}) {
    TempDir dir;
    NodeModelSpec spec;
    spec.op_type = "Relu";
    spec.node_name = "relu";
    spec.input_shape = shape;
    write_inputs(dir, spec);
    auto r = run_cli("run " + dir.file("bad.onnx") + " --data " + dir.file("data.npy") + " -o " +
                     dir.file("out.npy"));
    EXPECT_EQ(r.exit_code, 1);
    expect_one_line_error(r, "input 'x': expected every dimension >= 1 or symbolic, got [");
    EXPECT_EQ(leftover_files(dir, {"bad.onnx", "data.npy"}), std::vector<std::string>{});
  }
}

TEST(CliValidation, CalibrateRefusesConvWeightWithZeroOutputChannels) {
  TempDir dir;
  NodeModelSpec spec;
  spec.weight_shape = std::vector<int64_t>{0, 3, 3, 3};
  write_inputs(dir, spec);
  auto r = run_cli("calibrate " + dir.file("bad.onnx") + " --data " + dir.file("data.npy") +
                   " --batch 2 -o " + dir.file("out.onnx"));
  EXPECT_EQ(r.exit_code, 1);
  expect_one_line_error(
      r, "node 'conv' (Conv): expected weight 'w' dimensions >= 1, got [0, 3, 3, 3]");
  EXPECT_EQ(leftover_files(dir, {"bad.onnx", "data.npy"}), std::vector<std::string>{});
}

}  // namespace
}  // namespace qforge
