// `qforge calibrate` and `qforge qat` under mpirun against the same command as one process: the
// written model is byte-identical on 2 and 3 ranks (calibration with SmoothQuant and a partial
// last batch on the last rank; QAT with the same shards, and resumed from a checkpoint on
// another number of ranks), a rank that meets bad data stops every rank with its rank and cause
// named, a rank killed mid-run fails the run without an output file, and the commands that run
// as one process say so once. Built without MPI, qforge --version says so and these runs are
// skipped with that reason.
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

// Each launch keeps Open MPI's session directory in a folder of its own: two launches that
// start at once (ctest -j2) otherwise race to create the same /tmp/ompi.<host>.<uid> ("File
// exists", and orte_init fails).
CliResult run_shell(const std::string& command) {
  TempDir dir;
  const std::string cmd = "OMPI_MCA_orte_tmpdir_base='" + dir.path().string() + "' " + command +
                          " >" + dir.file("out") + " 2>" + dir.file("err") + " </dev/null";
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

// `qforge <args>` on 2 ranks, rank 1 killed (SIGKILL) 1.5 s after it starts: the run fails, and
// Open MPI's launcher names the rank and the signal.
void expect_run_fails_when_rank1_is_killed(const std::string& args) {
  std::string cmd = launcher();
  cmd.append(" -np 1 ").append(QFORGE_CLI).append(" ").append(args);
  // The launcher started sh as rank 1; it dies of the same signal as the qforge it ran.
  cmd.append(" : -np 1 sh -c 'timeout -s KILL 1.5 ").append(QFORGE_CLI).append(" ").append(args);
  cmd.append("; kill -KILL $$'");
  const CliResult r = run_shell(cmd);
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.err.find("rank 1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("signal 9"), std::string::npos) << r.err;
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
  expect_run_fails_when_rank1_is_killed(args);
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
}

// A short QAT run of the bundled ResNet (BN trained on batch statistics for 3 steps, then
// frozen): 16 calibration samples, batch 8.
std::string qat_args(const std::string& out, int steps = 4) {
  return "qat " + kResnet + " --data " + kTrain + " --calib-limit 16 --batch 8 --steps " +
         std::to_string(steps) + " --lr 1e-3 --optimizer adamw --freeze-bn-after 3 --threads 1" +
         " -o " + out;
}

// Data-parallel QAT writes what one process writes with the same shards: 2 shards on 2 ranks;
// 4 shards on 3 ranks (2 + 1 + 1), with distillation, learned scales and augmentation drawn per
// sample. The report says how the batch was cut.
TEST(DistributedCli, QatOnRanksWritesTheOneProcessBytes) {
  REQUIRE_MPI();
  TempDir dir;
  const CliResult one = run_cli(qat_args(dir.file("one.onnx")) + " --shards 2");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const CliResult two =
      run_ranks(2, qat_args(dir.file("two.onnx")) + " --report " + dir.file("two.json"));
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_EQ(read_text(dir.file("one.onnx")), read_text(dir.file("two.onnx")));
  EXPECT_NE(two.out.find("training     4 steps of 8 in 2 shards of 4 on 2 ranks"),
            std::string::npos)
      << two.out;
  const auto report = nlohmann::json::parse(read_text(dir.file("two.json")));
  EXPECT_EQ(report["shards"], 2);
  EXPECT_EQ(report["ranks"], 2);

  const std::string extra = " --shards 4 --distill 2 --augment flip,crop --learn-scales";
  const CliResult one4 = run_cli(qat_args(dir.file("one4.onnx")) + extra);
  ASSERT_EQ(one4.exit_code, 0) << one4.err;
  const CliResult three = run_ranks(3, qat_args(dir.file("three.onnx")) + extra);
  ASSERT_EQ(three.exit_code, 0) << three.err;
  EXPECT_EQ(read_text(dir.file("one4.onnx")), read_text(dir.file("three.onnx")));
  // Other shards are another run (the sums are cut elsewhere), not the same bits.
  EXPECT_NE(read_text(dir.file("one4.onnx")), read_text(dir.file("one.onnx")));
}

// A model of two int64 inputs (token ids and an attention mask, from an .npz with labels): its
// calibration and its QAT, the batch's shards sliced from both inputs, on 2 ranks write the one
// process's bytes.
TEST(DistributedCli, TextModelOnRanksWritesTheOneProcessBytes) {
  REQUIRE_MPI();
  TempDir dir;
  const std::string model = data_path("models/text/text_encoder_opset17.onnx");
  const std::string data = data_path("golden/text/text_inputs.npz");
  const std::string calibrate = "calibrate " + model + " --data " + data + " --batch 4 -o ";
  CliResult one = run_cli(calibrate + dir.file("one.qdq.onnx"));
  ASSERT_EQ(one.exit_code, 0) << one.err;
  CliResult two = run_ranks(2, calibrate + dir.file("two.qdq.onnx"));
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_EQ(read_text(dir.file("one.qdq.onnx")), read_text(dir.file("two.qdq.onnx")));
  const std::string qat = "qat " + model + " --data " + data + " --batch 4 --steps 4 -o ";
  one = run_cli(qat + dir.file("one.qat.onnx") + " --shards 2");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  two = run_ranks(2, qat + dir.file("two.qat.onnx"));
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_EQ(read_text(dir.file("one.qat.onnx")), read_text(dir.file("two.qat.onnx")));
}

// A checkpoint written on 2 ranks resumes on 1 (its shards carried in the checkpoint), and one
// written by 1 process on 2 shards resumes on 2 ranks: both give the uninterrupted run's bytes.
TEST(DistributedCli, QatCheckpointsResumeOnAnotherRankCount) {
  REQUIRE_MPI();
  TempDir dir;
  const CliResult whole = run_ranks(2, qat_args(dir.file("whole.onnx")));
  ASSERT_EQ(whole.exit_code, 0) << whole.err;

  const std::string c2 = " --checkpoint " + dir.file("c2.npz");
  const CliResult stop2 = run_ranks(2, qat_args(dir.file("a.onnx")) + c2 + " --stop-after 2");
  ASSERT_EQ(stop2.exit_code, 0) << stop2.err;
  EXPECT_FALSE(std::filesystem::exists(dir.file("a.onnx")));
  const CliResult on1 = run_cli(qat_args(dir.file("on1.onnx")) + " --resume " + dir.file("c2.npz"));
  ASSERT_EQ(on1.exit_code, 0) << on1.err;
  EXPECT_NE(on1.out.find("in 2 shards of 4 (179 per epoch, resumed at step 2)"), std::string::npos)
      << on1.out;
  EXPECT_EQ(read_text(dir.file("whole.onnx")), read_text(dir.file("on1.onnx")));

  const std::string c1 = " --checkpoint " + dir.file("c1.npz");
  const CliResult stop1 =
      run_cli(qat_args(dir.file("b.onnx")) + " --shards 2" + c1 + " --stop-after 2");
  ASSERT_EQ(stop1.exit_code, 0) << stop1.err;
  const CliResult on2 =
      run_ranks(2, qat_args(dir.file("on2.onnx")) + " --resume " + dir.file("c1.npz"));
  ASSERT_EQ(on2.exit_code, 0) << on2.err;
  EXPECT_EQ(read_text(dir.file("whole.onnx")), read_text(dir.file("on2.onnx")));

  // Resuming with other shards than the checkpoint's is refused, naming both.
  const CliResult other =
      run_cli(qat_args(dir.file("c.onnx")) + " --shards 4 --resume " + dir.file("c1.npz"));
  EXPECT_EQ(other.exit_code, 1);
  EXPECT_NE(other.err.find("qat: the checkpoint was written with --shards 2, the run has 4"),
            std::string::npos)
      << other.err;
}

// Fewer shards than ranks: one line, before any work, and nothing written.
TEST(DistributedCli, QatNeedsAShardPerRank) {
  REQUIRE_MPI();
  TempDir dir;
  const CliResult r = run_ranks(2, qat_args(dir.file("q.onnx")) + " --shards 1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(qforge_lines(r.err),
            std::vector<std::string>{"qforge: error: rank 0: qat: 1 shards cannot be spread "
                                     "over 2 ranks: give --shards at least 2 (a divisor of "
                                     "--batch)"})
      << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(leftover_files(dir), std::vector<std::string>{});
}

// Rank 1 of a long QAT run is killed (SIGKILL) 1.5 s after it starts, mid-training: the launcher
// stops rank 0, which waits in the step's exchange, and neither the model, the log nor the
// report is written.
TEST(DistributedCli, KilledRankFailsQatWithoutOutput) {
  REQUIRE_MPI();
  TempDir dir;
  const std::string args = qat_args(dir.file("out.onnx"), 100000) + " --log " +
                           dir.file("l.jsonl") + " --report " + dir.file("r.json");
  expect_run_fails_when_rank1_is_killed(args);
  EXPECT_EQ(leftover_files(dir), std::vector<std::string>{});
}

}  // namespace
}  // namespace qforge
