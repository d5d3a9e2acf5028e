// Resource flags of the qforge program: a thread count above the cores is clamped with a note,
// and a batch whose execution plan needs more memory than the process has is refused with the
// figure, naming --batch, before the memory is allocated (the runs are quick and small).
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

#include "tests/support/test_support.h"

namespace qforge {
namespace {

using testing::data_path;
using testing::expect_one_line_error;
using testing::leftover_files;
using testing::run_cli;
using testing::TempDir;

const std::string kResnet = data_path("models/resnet_bn.onnx");
const std::string kGoldenInput = data_path("golden/resnet_input.npy");
// A budget of 3 GiB: enough for any of these runs at a normal batch, far from the
// gigabytes a batch of 100000 needs (about 5.9 GiB for transform's two plans and its sample).
constexpr long kMemoryLimit = 3L << 30;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

TEST(CliResources, ThreadsAboveTheCoresAreClampedWithANote) {
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  for (const std::string& command :
       {"run " + kResnet + " --data " + kGoldenInput, "compare " + kResnet + " " + kResnet}) {
    SCOPED_TRACE(command);
    const auto start = std::chrono::steady_clock::now();
    auto r = run_cli(command + " --threads 100000");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "qforge: note: --threads 100000 is more than the " + std::to_string(cores) +
                         " cores; using " + std::to_string(cores) + "\n");
    EXPECT_NE(r.out.find(std::to_string(cores) + " threads"), std::string::npos) << r.out;
    EXPECT_LT(seconds_since(start), 30.0);
  }
}

TEST(CliResources, TransformBatchTooLargeForMemoryIsRefused) {
  TempDir dir;
  const auto start = std::chrono::steady_clock::now();
  auto r = testing::run_cli_with_memory_limit(
      "transform " + kResnet + " --batch 100000 -o " + dir.file("out.onnx"), kMemoryLimit);
  EXPECT_EQ(r.exit_code, 1);
  expect_one_line_error(r, "transform: the execution plan needs ");
  EXPECT_NE(r.err.find(" MiB of memory available; lower --batch"), std::string::npos) << r.err;
  EXPECT_LT(seconds_since(start), 30.0);
  EXPECT_EQ(leftover_files(dir), std::vector<std::string>{});
  // The same command at a batch that fits runs under the same limit.
  auto fits = testing::run_cli_with_memory_limit(
      "transform " + kResnet + " --batch 4 -o " + dir.file("out.onnx"), kMemoryLimit);
  EXPECT_EQ(fits.exit_code, 0) << fits.err;
}

TEST(CliResources, CalibrateBatchTooLargeForMemoryIsRefused) {
  TempDir dir;
  const auto start = std::chrono::steady_clock::now();
  auto r =
      testing::run_cli_with_memory_limit("calibrate " + kResnet + " --data " + kGoldenInput +
                                             " --batch 100000 --limit 2 -o " + dir.file("out.onnx"),
                                         kMemoryLimit);
  EXPECT_EQ(r.exit_code, 1);
  expect_one_line_error(r, "calibrate: the execution plan needs ");
  EXPECT_NE(r.err.find("lower --batch"), std::string::npos) << r.err;
  EXPECT_LT(seconds_since(start), 30.0);
  EXPECT_EQ(leftover_files(dir), std::vector<std::string>{});
}

}  // namespace
}  // namespace qforge
