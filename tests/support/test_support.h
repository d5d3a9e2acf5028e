// Shared test helpers: temporary folders, running the qforge program, writing small PNGs.
#pragma once

#include <gtest/gtest.h>
#include <png.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace qforge::testing {

// Every bundled model (data/models/<name>.onnx): six families, each with its batch norms kept
// (_bn) and folded into the convolutions (_folded).
inline const std::vector<std::string> kBundledModelNames = {
    "resnet_bn",       "resnet_folded",       "mobilenet_v3_bn", "mobilenet_v3_folded",
    "efficientnet_bn", "efficientnet_folded", "convnext_bn",     "convnext_folded",
    "vit_bn",          "vit_folded",          "swin_bn",         "swin_folded"};

inline std::string data_path(const std::string& relative) {
  return std::string(QFORGE_DATA_DIR) + "/" + relative;
}

// A fresh folder under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "qforge-test-XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `qforge <args>` with stdout and stderr captured.
inline CliResult run_cli(const std::string& args) {
  TempDir dir;
  std::string cmd = std::string(QFORGE_CLI) + " " + args + " >" + dir.file("out") + " 2>" +
                    dir.file("err") + " </dev/null";
  int status = std::system(cmd.c_str());
  CliResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(dir.file("out"));
  r.err = read_text(dir.file("err"));
  return r;
}

// Runs `qforge <args>` as run_cli does, after the shell commands `setup` (limits, traps).
inline CliResult run_cli_after(const std::string& setup, const std::string& args) {
  TempDir dir;
  std::string cmd = setup + "; " + std::string(QFORGE_CLI) + " " + args + " >" + dir.file("out") +
                    " 2>" + dir.file("err") + " </dev/null";
  int status = std::system(cmd.c_str());
  CliResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(dir.file("out"));
  r.err = read_text(dir.file("err"));
  return r;
}

// With writes limited to `max_file_bytes` per file (RLIMIT_FSIZE, SIGXFSZ ignored): a write past
// it fails with EFBIG, as on a full disk. sh's ulimit -f counts 512-byte blocks; the captured
// stdout and stderr stay far below it.
inline CliResult run_cli_with_file_size_limit(const std::string& args, long max_file_bytes) {
  return run_cli_after("trap '' XFSZ; ulimit -f " + std::to_string(max_file_bytes / 512), args);
}

// With the memory qforge may plan for limited to `max_bytes`, whatever the machine has.
inline CliResult run_cli_with_memory_limit(const std::string& args, long max_bytes) {
  // QFORGE_MEMORY_LIMIT_MIB rather than `ulimit -v`: a sanitizer build reserves terabytes of
  // address space for its shadow memory and cannot start under an address-space limit.
  return run_cli_after("export QFORGE_MEMORY_LIMIT_MIB=" + std::to_string(max_bytes >> 20), args);
}

// `qforge <args>` started in the background (stdout and stderr to files in `logs`), to be
// signalled while it runs.
class CliProcess {
 public:
  CliProcess(const std::string& args, const TempDir& logs, const std::string& tmpdir) {
    const std::string cmd = "exec " + std::string(QFORGE_CLI) + " " + args + " >" +
                            logs.file("out") + " 2>" + logs.file("err") + " </dev/null";
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::setenv("TMPDIR", tmpdir.c_str(), 1);
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  ~CliProcess() {
    if (pid_ > 0 && !waited_) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  CliProcess(const CliProcess&) = delete;
  CliProcess& operator=(const CliProcess&) = delete;

  void signal(int signal_number) { ::kill(pid_, signal_number); }
  // The exit code, or 128 + the signal that ended it (as a shell reports it).
  int wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    waited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  bool waited_ = false;
};

// Writes an 8-bit PNG; channels 1 (gray), 3 (RGB) or 4 (RGBA); pixels row-major interleaved.
inline void write_png(const std::string& path, int width, int height, int channels,
                      const std::vector<unsigned char>& pixels) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write " + path);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(f);
    throw std::runtime_error("libpng failed writing " + path);
  }
  png_init_io(png, f);
  int type = channels == 1   ? PNG_COLOR_TYPE_GRAY
             : channels == 3 ? PNG_COLOR_TYPE_RGB
                             : PNG_COLOR_TYPE_RGBA;
  png_set_IHDR(png, info, width, height, 8, type, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < height; ++y) {
    png_write_row(png, const_cast<png_bytep>(pixels.data() + size_t(y) * width * channels));
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(f);
}

// Number of lines in s (a final line without '\n' counts).
inline int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  if (!s.empty() && s.back() != '\n') ++n;
  return n;
}

// The qforge program failed with one line on stderr, "qforge: error: ...", holding must_contain.
inline void expect_one_line_error(const CliResult& r, const std::string& must_contain) {
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_EQ(r.err.rfind("qforge: error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(must_contain), std::string::npos) << r.err;
}

// Names in `dir` other than `keep`: temporaries or partial outputs a run left behind.
inline std::vector<std::string> leftover_files(const TempDir& dir,
                                               const std::vector<std::string>& keep = {}) {
  std::vector<std::string> left;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    const std::string name = entry.path().filename().string();
    bool kept = false;
    for (const std::string& k : keep) kept = kept || k == name;
    if (!kept) left.push_back(name);
  }
  return left;
}

}  // namespace qforge::testing
