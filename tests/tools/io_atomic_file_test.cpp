// AtomicFile: the destination changes only on commit, no temporary is ever left behind, and
// what is at the destination is replaced only when it is a regular file.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "tools/io/atomic_file.h"

namespace qforge::io {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("qforge_io_atomic_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }
  // Names of everything in the folder, to spot leftover temporaries.
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path_))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  fs::path path_;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Runs `child` in a forked process, which exits with 0 when `child` returns, and gives that
// process's exit code; -1, with a failure recorded, when it could not run or did not exit.
int exit_code_of_child(const std::function<void()>& child) {
  const pid_t pid = ::fork();
  if (pid < 0) {
    ADD_FAILURE() << "fork failed";
    return -1;
  }
  if (pid == 0) {
    child();
    ::_exit(0);
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) {
    ADD_FAILURE() << "the child did not exit normally: status " << status;
    return -1;
  }
  return WEXITSTATUS(status);
}

template <class Fn>
std::string io_error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(ErrorKind::kIo)) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no qforge::Error thrown";
  return {};
}

TEST(IoAtomicFile, DestinationChangesOnlyOnCommit) {
  for (bool unnamed : {true, false}) {
    SCOPED_TRACE(unnamed ? "O_TMPFILE" : "named temporary");
    TempDir dir;
    std::string path = dir.file("model.onnx");
    std::ofstream(path) << "old";
    {
      AtomicFile file(path, {.unnamed = unnamed});
      // An unnamed temporary has no name in the folder; the fallback's name is the path's.
      EXPECT_EQ(file.temp_path(), unnamed ? "" : path + ".tmp." + std::to_string(::getpid()));
      EXPECT_EQ(dir.entries().size(), unnamed ? 1u : 2u);
      file.write("new ");
      file.write(std::string_view("contents"));
      EXPECT_EQ(read_text(path), "old");
      EXPECT_EQ(read_text(file.read_path()), "new contents");
      file.commit();
    }
    EXPECT_EQ(read_text(path), "new contents");
    EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.onnx"});
  }
}

TEST(IoAtomicFile, NewFileIsLinkedIntoPlace) {
  TempDir dir;
  {
    AtomicFile file(dir.file("fresh.onnx"));
    file.write("bytes");
    EXPECT_TRUE(dir.entries().empty());
    file.commit();
  }
  EXPECT_EQ(read_text(dir.file("fresh.onnx")), "bytes");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"fresh.onnx"});
}

TEST(IoAtomicFile, NoCommitLeavesDestinationAndRemovesTemporary) {
  for (bool unnamed : {true, false}) {
    SCOPED_TRACE(unnamed ? "O_TMPFILE" : "named temporary");
    TempDir dir;
    std::string path = dir.file("ckpt.bin");
    std::ofstream(path) << "previous";
    try {
      AtomicFile file(path, {.unnamed = unnamed});
      file.write("half of it");
      throw std::runtime_error("failure mid-write");
    } catch (const std::runtime_error&) {
    }
    EXPECT_EQ(read_text(path), "previous");
    EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.bin"});

    { AtomicFile unused(dir.file("fresh.bin"), {.unnamed = unnamed}); }
    EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.bin"});
  }
}

TEST(IoAtomicFile, WriteFileAtomic) {
  TempDir dir;
  std::string bytes("a\0b\n", 4);
  write_file_atomic(dir.file("x.bin"), bytes);
  EXPECT_EQ(read_text(dir.file("x.bin")), bytes);
  write_file_atomic(dir.file("x.bin"), "");
  EXPECT_EQ(read_text(dir.file("x.bin")), "");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"x.bin"});
}

TEST(IoAtomicFile, UnwritablePathsAreIoErrorsNamingThePath) {
  TempDir dir;
  std::string missing = dir.file("no/such/dir/out.onnx");
  EXPECT_EQ(io_error_of([&] { write_file_atomic(missing, "x"); }),
            "cannot write '" + missing + "': No such file or directory");

  std::ofstream(dir.file("plain")) << "a file, not a folder";
  std::string under_file = dir.file("plain/out.onnx");
  EXPECT_EQ(io_error_of([&] { write_file_atomic(under_file, "x"); }),
            "cannot write '" + under_file + "': Not a directory");

  // Permissions do not stop root, so this part only runs for other users.
  if (::geteuid() != 0) {
    fs::create_directories(dir.file("locked"));
    fs::permissions(dir.file("locked"), fs::perms::owner_read | fs::perms::owner_exec);
    std::string locked = dir.file("locked/out.onnx");
    EXPECT_EQ(io_error_of([&] { write_file_atomic(locked, "x"); }),
              "cannot write '" + locked + "': Permission denied");
    fs::permissions(dir.file("locked"), fs::perms::owner_all);
    EXPECT_TRUE(fs::is_empty(dir.file("locked")));
  }
}

// What is at the destination and is not a regular file is refused before anything is written,
// and left as it was: a folder, a FIFO, a device, a symbolic link (not replaced by a file).
TEST(IoAtomicFile, DestinationThatIsNotARegularFileIsRefused) {
  TempDir dir;
  fs::create_directories(dir.file("folder"));
  EXPECT_EQ(io_error_of([&] { AtomicFile file(dir.file("folder")); }),
            "cannot write '" + dir.file("folder") + "': it is a directory");
  ASSERT_EQ(::mkfifo(dir.file("fifo").c_str(), 0600), 0);
  EXPECT_EQ(io_error_of([&] { AtomicFile file(dir.file("fifo")); }),
            "cannot write '" + dir.file("fifo") + "': it is a FIFO, not a regular file");
  // A device node of our own, like /dev/null (which other processes on the machine may have
  // clobbered already).
  ASSERT_EQ(::mknod(dir.file("null").c_str(), S_IFCHR | 0666, ::makedev(1, 3)), 0);
  EXPECT_EQ(
      io_error_of([&] { AtomicFile file(dir.file("null")); }),
      "cannot write '" + dir.file("null") + "': it is a character device, not a regular file");
  std::ofstream(dir.file("target.onnx")) << "kept";
  fs::create_symlink("target.onnx", dir.file("link.onnx"));
  EXPECT_EQ(io_error_of([&] { write_file_atomic(dir.file("link.onnx"), "x"); }),
            "cannot write '" + dir.file("link.onnx") +
                "': it is a symbolic link to 'target.onnx'; qforge does not replace links, name "
                "the file itself");
  EXPECT_TRUE(fs::is_symlink(dir.file("link.onnx")));
  EXPECT_EQ(read_text(dir.file("target.onnx")), "kept");
  EXPECT_EQ(dir.entries(),
            (std::vector<std::string>{"fifo", "folder", "link.onnx", "null", "target.onnx"}));
}

// A failed write is an Io error naming the file, and so is every later call: no internal error
// (which used to end in std::terminate when a destructor wrote again).
TEST(IoAtomicFile, WriteErrorIsReportedOnEveryLaterCall) {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  const int exit_code = exit_code_of_child([&] {
    // A file-size limit of 4 KiB with SIGXFSZ ignored: writes past it fail with EFBIG.
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit limit {
      4096, 4096
    };
    ::setrlimit(RLIMIT_FSIZE, &limit);
    int code = 0;
    std::string big(8192, 'x');
    AtomicFile file(path);
    const std::string expected = "cannot write '" + path + "': File too large";
    try {
      file.write(big);
      code = 10;
    } catch (const Error& e) {
      if (e.what() != expected || e.kind() != ErrorKind::kIo) code = 11;
    }
    for (int i = 0; i < 2 && code == 0; ++i) {
      try {
        i == 0 ? file.write("more") : file.commit();
        code = 12;
      } catch (const Error& e) {
        if (e.what() != expected) code = 13;
      }
    }
    ::_exit(code);
  });
  EXPECT_EQ(exit_code, 0);
  EXPECT_TRUE(dir.entries().empty());
}

// SIGINT and SIGTERM remove a named temporary (the fallback where O_TMPFILE is refused) and
// exit with 128 + the signal number; an unnamed one needs no removal.
TEST(IoAtomicFile, SignalRemovesNamedTemporaryAndExits) {
  for (int signal_number : {SIGINT, SIGTERM}) {
    for (bool unnamed : {true, false}) {
      TempDir dir;
      const std::string path = dir.file("out.bin");
      const int code = exit_code_of_child([&] {
        install_signal_cleanup();
        AtomicFile file(path, {.unnamed = unnamed});
        file.write("partial");
        ::raise(signal_number);  // does not return
      });
      EXPECT_EQ(code, 128 + signal_number);
      EXPECT_TRUE(dir.entries().empty());
    }
  }
}

// Once commit_together has put a command's outputs in place, SIGINT and SIGTERM no longer end
// the run: it finishes with its own exit code and its outputs, complete.
TEST(IoAtomicFile, SignalAfterTheFinalCommitLeavesTheRunFinished) {
  for (int signal_number : {SIGINT, SIGTERM}) {
    TempDir dir;
    const std::string path = dir.file("out.bin");
    const int code = exit_code_of_child([&] {
      install_signal_cleanup();
      AtomicFile file(path);
      file.write("complete");
      commit_together({&file});
      ::raise(signal_number);
    });
    EXPECT_EQ(code, 0) << signal_number;
    EXPECT_EQ(read_text(path), "complete") << signal_number;
    // The same through the span form (a command with a list of outputs: run -o).
    const std::string first = dir.file("a.npy"), second = dir.file("b.npy");
    const int list_code = exit_code_of_child([&] {
      install_signal_cleanup();
      AtomicFile a(first), b(second);
      a.write("a");
      b.write("b");
      const std::vector<AtomicFile*> files{&a, &b};
      commit_together(files);
      ::raise(signal_number);
    });
    EXPECT_EQ(list_code, 0) << signal_number;
    EXPECT_EQ(read_text(first), "a") << signal_number;
    EXPECT_EQ(read_text(second), "b") << signal_number;
  }
}

TEST(IoAtomicFile, OutputsMustDifferFromInputsAndEachOther) {
  TempDir dir;
  std::ofstream(dir.file("m.onnx")) << "model";
  fs::create_hard_link(dir.file("m.onnx"), dir.file("hard.onnx"));
  const NamedPath model{"model", dir.file("m.onnx")};
  auto refusal = [&](std::vector<NamedPath> outputs) {
    try {
      check_output_paths("transform", outputs, std::span(&model, 1));
    } catch (const Error& e) {
      EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(ErrorKind::kInvalid));
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(refusal({{"-o", dir.file("m.onnx")}}),
            "transform: output '" + dir.file("m.onnx") + "' (-o) is the same file as the input '" +
                dir.file("m.onnx") + "' (model); it would be overwritten");
  // Another name for the same inode, and another spelling of the path.
  EXPECT_NE(refusal({{"-o", dir.file("hard.onnx")}}), "");
  EXPECT_NE(refusal({{"-o", dir.file("./m.onnx")}}), "");
  EXPECT_EQ(refusal({{"-o", dir.file("x.onnx")}, {"--report", dir.file("./x.onnx")}}),
            "transform: output '" + dir.file("./x.onnx") + "' (--report) is the same file as " +
                "output '" + dir.file("x.onnx") + "' (-o)");
  EXPECT_EQ(refusal({{"-o", dir.file("x.onnx")}, {"--report", ""}}),
            "transform: --report: expected a file path, got an empty string");
  EXPECT_EQ(refusal({{"-o", dir.file("x.onnx")}, {"--report", dir.file("x.json")}}), "");
}

}  // namespace
}  // namespace qforge::io
