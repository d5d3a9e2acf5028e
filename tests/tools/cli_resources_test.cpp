// Resource flags of the qforge program: a thread count above the cores is clamped with a note,
// and a batch whose execution plan needs more memory than the process has is refused with the
// figure, naming --batch, before the memory is allocated (the runs are quick and small).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

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

// `run` prints its peak resident memory and the activation arena of its plan, in MiB; the
// arena lies inside the peak.
TEST(CliResources, RunPrintsItsPeakMemoryAndArena) {
  auto r = run_cli("run " + kResnet + " --data " + kGoldenInput);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string key = "memory     peak resident ";
  const size_t at = r.out.find(key);
  ASSERT_NE(at, std::string::npos) << r.out;
  size_t used = 0;
  const double peak = std::stod(r.out.substr(at + key.size()), &used);
  const std::string rest = r.out.substr(at + key.size() + used);
  const std::string arena_key = " MiB (activation arena ";
  ASSERT_EQ(rest.rfind(arena_key, 0), 0u) << rest;
  const double arena = std::stod(rest.substr(arena_key.size()));
  EXPECT_GT(arena, 0.0);
  EXPECT_GT(peak, arena);
  EXPECT_LT(peak, 1024.0) << r.out;
}

// The peak memory a command prints is its own: spawned (posix_spawn, as Python's subprocess and
// glibc's system() start programs: the child shares the parent's address space until it execs)
// by a process that holds far more (this test, with 512 MiB touched), `qforge grad` on a small
// model reports tens of MiB, not its parent's peak, which Linux carries over into getrusage's
// ru_maxrss.
TEST(CliResources, PeakMemoryIsTheCommandsOwn) {
  std::vector<char> held(512u << 20, 1);
  TempDir dir;
  const std::string out = dir.file("out");
  const std::vector<std::string> args = {QFORGE_CLI,
                                         "grad",
                                         kResnet,
                                         "--data",
                                         data_path("golden/grad/batch_input.npy"),
                                         "--labels",
                                         data_path("golden/grad/batch_labels.npy"),
                                         "-o",
                                         dir.file("g.npz")};
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  const std::string printed = testing::read_text(out);
  const std::string key = "peak resident ";
  const size_t at = printed.find(key);
  ASSERT_NE(at, std::string::npos) << printed;
  const double mib = std::stod(printed.substr(at + key.size()));
  EXPECT_GT(mib, 1.0);
  EXPECT_LT(mib, 256.0) << printed;
  EXPECT_EQ(held[held.size() / 2], 1);
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
