// Flag errors of the qforge program are one readable line (bounds as people write them), and
// `inspect` reads the fixed-batch models qforge writes.
#include <gtest/gtest.h>

#include <string>

#include "tests/support/batch_models.h"
#include "tests/support/test_support.h"

namespace qforge {
namespace {

using testing::data_path;
using testing::expect_one_line_error;
using testing::run_cli;
using testing::TempDir;

const std::string kResnet = data_path("models/resnet_bn.onnx");
const std::string kGoldenInput = data_path("golden/resnet_input.npy");

TEST(CliFlags, RangeErrorsGiveReadableBounds) {
  struct Case {
    std::string args;
    std::string message;
  };
  const std::string run = "run " + kResnet + " --data " + kGoldenInput;
  for (const Case& c : {
           Case{run + " --batch 0", "--batch: expected an integer >= 1, got '0'"},
           Case{run + " --limit -3", "--limit: expected an integer >= 1, got '-3'"},
           Case{run + " --threads -1",
                "--threads: expected an integer in [0, 2147483647], got '-1'"},
           Case{run + " --warmup x", "--warmup: expected an integer >= 0, got 'x'"},
           Case{run + " --pixel-scale -2", "--pixel-scale: expected a number > 0, got '-2'"},
           Case{"transform " + kResnet + " -o x.onnx --batch 1.5",
                "--batch: expected an integer >= 1, got '1.5'"},
           Case{"plan " + kResnet + " --batch 99999999999999999999",
                "--batch: expected an integer >= 1, got '99999999999999999999'"},
       }) {
    SCOPED_TRACE(c.args);
    auto r = run_cli(c.args);
    EXPECT_EQ(r.exit_code, 2);
    expect_one_line_error(r, c.message);
    EXPECT_LT(r.err.size(), 160u) << r.err;
  }
}

// A model with a fixed batch of 4: inspect resolves it there and gives the same figures per
// image as the model fixed at batch 1.
TEST(CliFlags, InspectReadsAFixedBatchModel) {
  TempDir dir;
  testing::write_with_batch(kResnet, dir.file("fixed4.onnx"), {.size = 4, .param = {}});
  testing::write_with_batch(kResnet, dir.file("fixed1.onnx"), {.size = 1, .param = {}});
  ASSERT_EQ(run_cli("transform " + dir.file("fixed4.onnx") + " --batch 4 -o " + dir.file("b4.onnx"))
                .exit_code,
            0);
  ASSERT_EQ(run_cli("transform " + dir.file("fixed1.onnx") + " --batch 1 -o " + dir.file("b1.onnx"))
                .exit_code,
            0);
  auto b4 = run_cli("inspect " + dir.file("b4.onnx"));
  auto b1 = run_cli("inspect " + dir.file("b1.onnx"));
  ASSERT_EQ(b4.exit_code, 0) << b4.err;
  ASSERT_EQ(b1.exit_code, 0) << b1.err;
  auto line = [](const std::string& out, const std::string& key) {
    const size_t begin = out.find("\n" + key);
    return begin == std::string::npos
               ? std::string("missing")
               : out.substr(begin + 1, out.find('\n', begin + 1) - begin - 1);
  };
  EXPECT_EQ(line(b4.out, "params"), line(b1.out, "params"));
  EXPECT_EQ(line(b4.out, "MACs"), line(b1.out, "MACs") + " (model fixed to batch 4)");
  EXPECT_EQ(b4.out.find("--batch"), std::string::npos) << b4.out;
}

}  // namespace
}  // namespace qforge
