// Output paths of the qforge program: nothing that is not a regular file, no input and no other
// output is ever overwritten, a full disk is one line naming the file, and no exit (SIGKILL,
// SIGINT, SIGTERM at any point of `calibrate`) leaves anything next to the target.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/test_support.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using testing::CliProcess;
using testing::data_path;
using testing::expect_one_line_error;
using testing::leftover_files;
using testing::read_text;
using testing::run_cli;
using testing::TempDir;

const std::string kResnet = data_path("models/resnet_bn.onnx");
const std::string kGoldenInput = data_path("golden/resnet_input.npy");  // 12 samples

// Copies of the model and the data in `dir` as m.onnx and d.npy.
void copy_inputs(const TempDir& dir) {
  fs::copy_file(kResnet, dir.file("m.onnx"));
  fs::copy_file(kGoldenInput, dir.file("d.npy"));
}

TEST(CliOutputs, OutputThatIsAnInputIsRefused) {
  TempDir dir;
  copy_inputs(dir);
  fs::create_hard_link(dir.file("m.onnx"), dir.file("same_inode.onnx"));
  const std::string m = dir.file("m.onnx");
  const std::string d = dir.file("d.npy");
  const std::string model_bytes = read_text(m);
  const std::string data_bytes = read_text(d);
  struct Case {
    std::string args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"transform " + m + " -o " + m,
       "transform: output '" + m + "' (-o) is the same file as the input '" + m + "' (model)"},
      {"transform " + m + " -o " + dir.file("same_inode.onnx"),
       "is the same file as the input '" + m + "' (model)"},
      {"run " + m + " --data " + d + " -o " + d,
       "run: output '" + d + "' (-o) is the same file as the input '" + d + "' (--data)"},
      {"plan " + m + " -o " + dir.file("./m.onnx"), "(-o) is the same file as the input"},
      {"calibrate " + m + " --data " + d + " -o " + dir.file("q.onnx") + " --report " + m,
       "calibrate: output '" + m + "' (--report) is the same file as the input '" + m +
           "' (model)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    auto r = run_cli(c.args);
    EXPECT_EQ(r.exit_code, 1);
    expect_one_line_error(r, c.message);
    EXPECT_EQ(read_text(m), model_bytes);
    EXPECT_EQ(read_text(d), data_bytes);
    EXPECT_EQ(leftover_files(dir, {"m.onnx", "d.npy", "same_inode.onnx"}),
              std::vector<std::string>{});
  }
}

TEST(CliOutputs, TwoOutputsNamingOneFileAreRefused) {
  TempDir dir;
  const std::string x = dir.file("x");
  for (const std::string& args : {"transform " + kResnet + " -o " + x + " --report " + x,
                                  "calibrate " + kResnet + " --data " + kGoldenInput + " -o " + x +
                                      " --report " + dir.file("./x")}) {
    SCOPED_TRACE(args);
    auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, 1);
    expect_one_line_error(r, "(--report) is the same file as output '" + x + "' (-o)");
    EXPECT_EQ(leftover_files(dir), std::vector<std::string>{});
  }
}

TEST(CliOutputs, EmptyPathsAreUsageErrors) {
  TempDir dir;
  const std::string out = dir.file("out.onnx");
  for (const std::string& args :
       {"transform " + kResnet + " -o ''", "transform " + kResnet + " -o " + out + " --report ''",
        "calibrate " + kResnet + " --data " + kGoldenInput + " -o ''",
        "calibrate " + kResnet + " --data " + kGoldenInput + " -o " + out + " --report ''",
        "run " + kResnet + " --data " + kGoldenInput + " -o ''", "plan " + kResnet + " -o ''"}) {
    SCOPED_TRACE(args);
    auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, 2);
    expect_one_line_error(r, "expected a file path, got an empty string");
    EXPECT_EQ(leftover_files(dir), std::vector<std::string>{});
  }
}

// A device, a FIFO, a folder or a symbolic link at the output path is refused before any work
// and left as it was (a link is not replaced by a regular file).
TEST(CliOutputs, OutputThatIsNotARegularFileIsRefused) {
  TempDir dir;
  // A device node of our own, like /dev/null (which other processes may have clobbered).
  ASSERT_EQ(::mknod(dir.file("null").c_str(), S_IFCHR | 0666, ::makedev(1, 3)), 0);
  ASSERT_EQ(::mkfifo(dir.file("fifo").c_str(), 0600), 0);
  fs::create_directories(dir.file("folder"));
  testing::write_bytes(dir.file("target.onnx"), "kept");
  fs::create_symlink("target.onnx", dir.file("link.onnx"));
  struct Case {
    std::string path;
    std::string reason;
  };
  for (const Case& c :
       std::vector<Case>{{dir.file("null"), "it is a character device, not a regular file"},
                         {dir.file("fifo"), "it is a FIFO, not a regular file"},
                         {dir.file("folder"), "it is a directory"},
                         {dir.file("link.onnx"), "it is a symbolic link to 'target.onnx'"}}) {
    for (const std::string& args :
         {"transform " + kResnet + " -o " + c.path,
          "calibrate " + kResnet + " --data " + kGoldenInput + " -o " + c.path,
          "run " + kResnet + " --data " + kGoldenInput + " -o " + c.path}) {
      SCOPED_TRACE(args);
      auto r = run_cli(args);
      EXPECT_EQ(r.exit_code, 1);
      expect_one_line_error(r, "cannot write '" + c.path + "': " + c.reason);
    }
  }
  struct stat st {};
  ASSERT_EQ(::stat(dir.file("null").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_TRUE(fs::is_fifo(dir.file("fifo")));
  EXPECT_TRUE(fs::is_symlink(dir.file("link.onnx")));
  EXPECT_EQ(read_text(dir.file("target.onnx")), "kept");
  EXPECT_EQ(leftover_files(dir, {"fifo", "folder", "link.onnx", "null", "target.onnx"}),
            std::vector<std::string>{});
}

// A file-size limit stands in for a full disk: the write fails with EFBIG. Each command says so
// in one line naming the file and exits 1 (calibrate used to abort in std::terminate), and
// leaves nothing.
TEST(CliOutputs, FullDiskIsOneLineNamingTheFile) {
  TempDir dir;
  const std::string out = dir.file("out.onnx");
  for (const std::string& args :
       {"calibrate " + kResnet + " --data " + kGoldenInput + " --batch 4 -o " + out,
        "transform " + kResnet + " -o " + out}) {
    SCOPED_TRACE(args);
    auto r = testing::run_cli_with_file_size_limit(args, 256 * 1024);
    EXPECT_EQ(r.exit_code, 1);
    expect_one_line_error(r, "cannot write '" + out + "': File too large");
    EXPECT_EQ(leftover_files(dir), std::vector<std::string>{});
  }
  // run -o: the 360 validation images' logits take 14 KiB.
  const std::string npy = dir.file("out.npy");
  auto r = testing::run_cli_with_file_size_limit(
      "run " + kResnet + " --data " + data_path("datasets/digits/val") + " -o " + npy, 4096);
  EXPECT_EQ(r.exit_code, 1);
  expect_one_line_error(r, "cannot write '" + npy + "': File too large");
  EXPECT_EQ(leftover_files(dir), std::vector<std::string>{});
}

// calibrate with a report, stopped at several points between the start and the end of a run
// (loading, calibration, export, evaluation): nothing is left next to the targets or in TMPDIR
// (the evaluation's spill file). SIGINT and SIGTERM exit with 130 and 143. The two outputs are
// put in place back to back, model first, with SIGINT and SIGTERM held off (io::commit_together);
// a SIGKILL, which nothing holds off, that lands there or in the exit after it finds the model
// (and the report, once it is in place) whole: the model byte for byte the full run's, the
// report complete.
TEST(CliSignals, CalibrateStoppedAtAnyPointLeavesNothing) {
  TempDir dir;
  const std::string args = "calibrate " + kResnet + " --data " +
                           data_path("datasets/digits/train") + " --limit 512 --batch 32 -o " +
                           dir.file("out.onnx") + " --report " + dir.file("report.json");
  TempDir logs;
  // A full run, to place the signals over its length.
  const auto start = std::chrono::steady_clock::now();
  {
    CliProcess full(args, logs, dir.path().string());
    ASSERT_EQ(full.wait(), 0) << read_text(logs.file("err"));
  }
  const auto length = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(leftover_files(dir, {"out.onnx", "report.json"}), std::vector<std::string>{});
  const std::string full_model = read_text(dir.file("out.onnx"));
  fs::remove(dir.file("out.onnx"));
  fs::remove(dir.file("report.json"));

  int interrupted = 0;
  for (int signal_number : {SIGKILL, SIGINT, SIGTERM}) {
    for (double fraction : {0.05, 0.3, 0.55, 0.8}) {
      SCOPED_TRACE(std::to_string(signal_number) + " at " + std::to_string(fraction));
      // A run that finished before the signal (the first one was slower: the machine was
      // busier) is tried again with the signal at half the delay, up to three times.
      int code = 0;
      for (int attempt = 0; attempt < 4 && code == 0; ++attempt) {
        fs::remove(dir.file("out.onnx"));
        fs::remove(dir.file("report.json"));
        CliProcess run(args, logs, dir.path().string());
        std::this_thread::sleep_for(std::chrono::duration_cast<std::chrono::milliseconds>(
            length * fraction / (1 << attempt)));
        run.signal(signal_number);
        code = run.wait();
      }
      if (code == 0) {
        fs::remove(dir.file("out.onnx"));
        fs::remove(dir.file("report.json"));
        continue;
      }
      ++interrupted;
      EXPECT_EQ(code, 128 + signal_number) << read_text(logs.file("err"));
      std::vector<std::string> left = leftover_files(dir);
      std::sort(left.begin(), left.end());
      if (signal_number == SIGKILL && !left.empty()) {  // killed in or after the commit
        EXPECT_EQ(left.front(), "out.onnx");
        EXPECT_EQ(read_text(dir.file("out.onnx")), full_model);
        if (left.size() > 1) {
          EXPECT_EQ(left, (std::vector<std::string>{"out.onnx", "report.json"}));
          const std::string report = read_text(dir.file("report.json"));
          EXPECT_TRUE(nlohmann::json::accept(report)) << report;
        }
        fs::remove(dir.file("out.onnx"));
        fs::remove(dir.file("report.json"));
        continue;
      }
      EXPECT_EQ(left, std::vector<std::string>{});
      // One line saying so; none when the signal came before qforge's main() (then it ended
      // the process before there was anything to remove).
      const std::string err = read_text(logs.file("err"));
      if (signal_number == SIGINT && !err.empty()) {
        EXPECT_EQ(err, "qforge: interrupted (SIGINT)\n");
      }
      if (signal_number == SIGTERM && !err.empty()) {
        EXPECT_EQ(err, "qforge: terminated (SIGTERM)\n");
      }
    }
  }
  EXPECT_GE(interrupted, 9) << "most signals must arrive while the run is under way";
}

}  // namespace
}  // namespace qforge
