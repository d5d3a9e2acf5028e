// Files written to a temporary name and renamed into place, so that a failure never leaves a
// half-written output (models, checkpoints, .npy files).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace qforge::io {

// Writes to "<path>.tmp.<pid>" in the destination's directory; commit() renames it onto path.
// If commit() is never reached (an exception, an early return) the destructor removes the
// temporary and the destination is left as it was.
class AtomicFile {
 public:
  // Throws an Io error "cannot write '<path>': <reason>" when the temporary cannot be created
  // (missing directory, no permission).
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t nbytes);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // Flushes to disk and renames the temporary onto the path. Called at most once.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  [[noreturn]] void fail(const std::string& what, int error_number);
  void discard() noexcept;

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// Writes bytes to path through an AtomicFile.
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace qforge::io
