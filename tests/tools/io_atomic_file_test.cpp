// AtomicFile: the destination changes only on commit, and no temporary is ever left behind.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
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
  TempDir dir;
  std::string path = dir.file("model.onnx");
  std::ofstream(path) << "old";
  {
    AtomicFile file(path);
    EXPECT_EQ(file.temp_path(), path + ".tmp." + std::to_string(::getpid()));
    file.write("new ");
    file.write(std::string_view("contents"));
    EXPECT_EQ(read_text(path), "old");
    EXPECT_EQ(read_text(file.temp_path()), "new contents");
    file.commit();
  }
  EXPECT_EQ(read_text(path), "new contents");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.onnx"});
}

TEST(IoAtomicFile, NoCommitLeavesDestinationAndRemovesTemporary) {
  TempDir dir;
  std::string path = dir.file("ckpt.bin");
  std::ofstream(path) << "previous";
  try {
    AtomicFile file(path);
    file.write("half of it");
    throw std::runtime_error("failure mid-write");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(read_text(path), "previous");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.bin"});

  { AtomicFile unused(dir.file("fresh.bin")); }
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.bin"});
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

  // The destination is a folder: the temporary is written, the rename fails, nothing is left.
  fs::create_directories(dir.file("folder"));
  std::string message = io_error_of([&] { write_file_atomic(dir.file("folder"), "x"); });
  EXPECT_EQ(message.rfind("cannot write '" + dir.file("folder") + "': cannot rename", 0), 0u)
      << message;
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"folder", "plain"}));

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

}  // namespace
}  // namespace qforge::io
