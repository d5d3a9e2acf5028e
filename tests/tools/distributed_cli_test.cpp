// `qforge calibrate` under mpirun against the same command as one process: the written model is
// byte-identical on 2 and 3 ranks (SmoothQuant included, and a partial last batch on the last
// rank), a rank that meets bad data stops every rank with its rank and cause named, a rank killed
// mid-run fails the run without an output file, and the commands that run as one process say so
// once. Built without MPI, qforge --version says so and these runs are skipped with that reason.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using testing::CliResult;
using testing::count_lines;
using testing::data_path;
using testing::leftover_files;
using testing::read_text;
using testing::run_cli;
using testing::TempDir;

const std::string kResnet = data_path("models/resnet_bn.onnx");
const std::string kVit = data_path("models/vit_bn.onnx");
const std::string kTrain = data_path("datasets/digits/train");
const std::string kGoldenInput = data_path("golden/resnet_input.npy");

bool have_mpi() {
  return !std::string(QFORGE_MPIEXEC).empty();
}

// mpirun with as many ranks as asked on this machine's cores (--oversubscribe), as root where
// the tests run as root. In a sanitizer build the ranks check leaks before MPI_Finalize
// (tools/dist/mpi_processes.cpp) with allocation stacks unwound in full, so that what Open MPI
// itself leaks is recognised by its libraries' frames and suppressed
// (scripts/sanitizers/lsan-mpi.supp: Open MPI's libraries only); qforge's own leaks are still
// reported. A build without sanitizers ignores both settings.
std::string launcher() {
  std::string cmd = "ASAN_OPTIONS=\"${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0\" ";
  cmd.append("LSAN_OPTIONS=\"${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=");
  cmd.append(QFORGE_LSAN_MPI_SUPPRESSIONS).append("\" ").append(QFORGE_MPIEXEC);
  cmd.append(" --oversubscribe");
  if (::geteuid() == 0) cmd.append(" --allow-run-as-root");
  return cmd;
}

CliResult run_shell(const std::string& command) {
  TempDir dir;
  const std::string cmd =
      command + " >" + dir.file("out") + " 2>" + dir.file("err") + " </dev/null";
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(dir.file("out"));
  r.err = read_text(dir.file("err"));
  return r;
}

// `qforge <args>` on `ranks` ranks.
CliResult run_ranks(int ranks, const std::string& args) {
  std::string cmd = launcher();
  cmd.append(" -np ").append(std::to_string(ranks)).append(" ").append(QFORGE_CLI);
  return run_shell(cmd.append(" ").append(args));
}

// The lines qforge wrote to stderr ("qforge: ..."); the launcher adds its own report of a rank
// that exited non-zero.
std::vector<std::string> qforge_lines(const std::string& err) {
  std::vector<std::string> lines;
  size_t begin = 0;
  while (begin < err.size()) {
    size_t end = err.find('\n', begin);
    if (end == std::string::npos) end = err.size();
    const std::string line = err.substr(begin, end - begin);
    if (line.rfind("qforge:", 0) == 0) lines.push_back(line);
    begin = end + 1;
  }
  return lines;
}

#define REQUIRE_MPI()                                                                           \
  do {                                                                                          \
    if (!have_mpi()) GTEST_SKIP() << "qforge was built without MPI (no mpirun to start ranks)"; \
  } while (false)

TEST(DistributedCli, VersionSaysWhetherMpiIsBuiltIn) {
  const CliResult r = run_cli("--version");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(have_mpi() ? "with MPI (" : "without MPI"), std::string::npos) << r.out;
}

// The calibration's figures that must not depend on the ranks: every point's amax by every
// method, the weight ranges and the evaluation.
void expect_same_report(const std::string& one_path, const std::string& ranks_path, int ranks) {
  const auto one = nlohmann::json::parse(read_text(one_path));
  const auto many = nlohmann::json::parse(read_text(ranks_path));
  EXPECT_EQ(many["calibration"]["ranks"], ranks);
  EXPECT_EQ(one["calibration"]["ranks"], 1);
  EXPECT_EQ(many["calibration"]["samples"], one["calibration"]["samples"]);
  EXPECT_EQ(many["calibration"]["batches"], one["calibration"]["batches"]);
  EXPECT_EQ(many["activation_points"], one["activation_points"]);
  EXPECT_EQ(many["weight_points"], one["weight_points"]);
  EXPECT_EQ(many["evaluation"]["sqnr_db"], one["evaluation"]["sqnr_db"]);
  if (one.contains("smoothquant")) {
    EXPECT_EQ(many["smoothquant"], one["smoothquant"]);
  }
  EXPECT_GT(many["timing"]["communicated_bytes"].get<double>(), 0.0);
}

// 70 samples in batches of 16: four whole batches shared among the ranks and a partial batch of
// 6 on the last rank, run through the model transformed at 6.
TEST(DistributedCli, CalibrateOnTwoAndThreeRanksWritesTheOneProcessFile) {
  REQUIRE_MPI();
  TempDir dir;
  const std::string common = "calibrate " + kResnet + " --data " + kTrain +
                             " --limit 70 --batch 16 --method percentile --flip-injections 0";
  const CliResult one = run_cli(common + " --threads 1 -o " + dir.file("one.onnx") + " --report " +
                                dir.file("one.json"));
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const std::string expected = read_text(dir.file("one.onnx"));
  ASSERT_FALSE(expected.empty());
  for (int ranks : {2, 3}) {
    const std::string name = "ranks" + std::to_string(ranks);
    const CliResult r = run_ranks(ranks, common + " --threads 1 -o " + dir.file(name + ".onnx") +
                                             " --report " + dir.file(name + ".json"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(read_text(dir.file(name + ".onnx")) == expected) << ranks << " ranks";
    expect_same_report(dir.file("one.json"), dir.file(name + ".json"), ranks);
    // Rank 0 alone prints: the figures once.
    EXPECT_EQ(count_lines(r.out), count_lines(one.out) + 1) << r.out;  // + the ranks line
    EXPECT_NE(r.out.find("on each of " + std::to_string(ranks) + " ranks"), std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("statistics exchanged in"), std::string::npos) << r.out;
  }
}

// SmoothQuant's statistics are merged across the ranks before the factors are folded; a
// transformer's partial last batch (42 = 5 × 8 + 2) runs through its own transform.
TEST(DistributedCli, SmoothQuantOnTwoRanksWritesTheOneProcessFile) {
  REQUIRE_MPI();
  TempDir dir;
  const std::string common = "calibrate " + kVit + " --data " + kTrain +
                             " --limit 42 --batch 8 --smoothquant 0.5 --flip-injections 0 "
                             "--threads 1";
  const CliResult one =
      run_cli(common + " -o " + dir.file("one.onnx") + " --report " + dir.file("one.json"));
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const CliResult two =
      run_ranks(2, common + " -o " + dir.file("two.onnx") + " --report " + dir.file("two.json"));
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_TRUE(read_text(dir.file("two.onnx")) == read_text(dir.file("one.onnx")));
  expect_same_report(dir.file("one.json"), dir.file("two.json"), 2);
  const auto report = nlohmann::json::parse(read_text(dir.file("two.json")));
  EXPECT_FALSE(report["smoothquant"]["smoothed"].empty()) << report["smoothquant"].dump();
}

// 24 rows in batches of 4: rank 0 reads rows 0-11, rank 1 rows 12-23, and row 20 holds a NaN.
// Rank 1's error, as one process reports it, reaches every rank; rank 0 says it once, naming
// rank 1, and writes nothing.
TEST(DistributedCli, BadDataOnOneRankStopsEveryRankNamingIt) {
  REQUIRE_MPI();
  TempDir dir;
  const kernels::Tensor golden = io::read_npy(kGoldenInput);
  kernels::Shape shape = golden.shape();
  shape[0] = 24;
  kernels::Tensor rows(kernels::DType::kFloat32, shape);
  const int64_t row = golden.numel() / golden.dim(0);
  for (int64_t i = 0; i < 24; ++i) {
    std::copy_n(golden.data<float>() + (i % golden.dim(0)) * row, row,
                rows.data<float>() + i * row);
  }
  rows.data<float>()[20 * row + 3] = std::numeric_limits<float>::quiet_NaN();
  io::write_npy(dir.file("nan.npy"), rows);
  const std::string args = "calibrate " + kResnet + " --data " + dir.file("nan.npy") +
                           " --batch 4 --threads 1 -o " + dir.file("out.onnx") + " --report " +
                           dir.file("r.json");
  const CliResult one = run_cli(args);
  testing::expect_one_line_error(one, "NaN");
  const CliResult two = run_ranks(2, args);
  EXPECT_EQ(two.exit_code, 1) << two.err;
  // "qforge: error: <message>" on one process, "qforge: error: rank 1: <message>" on two, once.
  const std::string message = one.err.substr(0, one.err.find('\n'));
  EXPECT_EQ(qforge_lines(two.err),
            std::vector<std::string>{"qforge: error: rank 1: " +
                                     message.substr(std::string("qforge: error: ").size())})
      << two.err;
  EXPECT_EQ(leftover_files(dir, {"nan.npy"}), std::vector<std::string>{});
}

// Rank 1 is killed (SIGKILL) 1.5 s after it starts, long before it could finish: 36,000 images
// (links to the digits), half of them its share, take over 7 s of one thread. The launcher then
// stops rank 0, which waits for rank 1's statistics, and nothing is written.
TEST(DistributedCli, KilledRankFailsTheRunWithoutOutput) {
  REQUIRE_MPI();
  TempDir dir;
  std::vector<std::filesystem::path> digits;
  for (const auto& c : std::filesystem::directory_iterator(kTrain)) {
    for (const auto& f : std::filesystem::directory_iterator(c.path())) digits.push_back(f.path());
  }
  std::sort(digits.begin(), digits.end());
  ASSERT_FALSE(digits.empty());
  const std::filesystem::path images = dir.path() / "images";
  for (int i = 0; i < 36000; ++i) {
    const std::filesystem::path folder = images / std::to_string(i % 4);
    if (i < 4) std::filesystem::create_directories(folder);
    char name[32];
    std::snprintf(name, sizeof name, "%05d.png", i);
    std::filesystem::create_symlink(digits[static_cast<size_t>(i) % digits.size()], folder / name);
  }
  const std::string args = "calibrate " + kResnet + " --data " + images.string() +
                           " --batch 8 --threads 1 --flip-injections 0 -o " + dir.file("out.onnx") +
                           " --report " + dir.file("r.json");
  std::string cmd = launcher();
  cmd.append(" -np 1 ").append(QFORGE_CLI).append(" ").append(args);
  // The launcher started sh as rank 1; it dies of the same signal as the qforge it ran.
  cmd.append(" : -np 1 sh -c 'timeout -s KILL 1.5 ").append(QFORGE_CLI).append(" ").append(args);
  cmd.append("; kill -KILL $$'");
  const CliResult r = run_shell(cmd);
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  // Open MPI's launcher names the rank and the signal.
  EXPECT_NE(r.err.find("rank 1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("signal 9"), std::string::npos) << r.err;
  EXPECT_EQ(leftover_files(dir, {"images"}), std::vector<std::string>{});
}

TEST(DistributedCli, OneProcessCommandsRefuseSeveralRanksOnce) {
  REQUIRE_MPI();
  const CliResult inspect = run_ranks(2, "inspect " + kResnet);
  EXPECT_EQ(inspect.exit_code, 1);
  EXPECT_EQ(qforge_lines(inspect.err).size(), 1u) << inspect.err;
  EXPECT_NE(inspect.err.find("inspect: runs as one process; started on 2 ranks"), std::string::npos)
      << inspect.err;
  EXPECT_TRUE(inspect.out.empty()) << inspect.out;

  TempDir dir;
  const CliResult qat =
      run_ranks(2, "qat " + kResnet + " --data " + kTrain + " --steps 1 -o " + dir.file("q.onnx"));
  EXPECT_EQ(qat.exit_code, 1);
  EXPECT_EQ(qforge_lines(qat.err).size(), 1u) << qat.err;
  EXPECT_NE(qat.err.find("qat: data-parallel training is not implemented yet"), std::string::npos)
      << qat.err;
  EXPECT_EQ(leftover_files(dir), std::vector<std::string>{});
}

}  // namespace
}  // namespace qforge
