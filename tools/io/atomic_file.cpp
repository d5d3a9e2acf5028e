// AtomicFile over POSIX calls, so that every failure can report errno.
#include "tools/io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "kernels/error.h"
#include "tools/io/posix_io.h"

namespace qforge::io {

namespace {

// The directory to fsync after the rename, so that the new name itself survives a crash.
std::string parent_directory(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

}  // namespace

AtomicFile::AtomicFile(std::string path)
    : path_(std::move(path)), temp_path_(path_ + ".tmp." + std::to_string(::getpid())) {
  if (path_.empty()) throw_io("cannot write '': the output path is empty");
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd_ < 0) {
    int error_number = errno;
    throw_io("cannot write '" + path_ + "': " + std::strerror(error_number));
  }
}

AtomicFile::~AtomicFile() {
  if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(temp_path_.c_str());
}

void AtomicFile::fail(const std::string& what, int error_number) {
  discard();
  committed_ = true;  // nothing left to clean up
  throw_io("cannot write '" + path_ + "': " + what + std::strerror(error_number));
}

void AtomicFile::write(const void* data, size_t nbytes) {
  if (fd_ < 0) throw_internal("AtomicFile::write: '" + path_ + "' is already committed");
  const int error_number = write_fully(fd_, data, nbytes);
  if (error_number != 0) fail("", error_number);
}

void AtomicFile::commit() {
  if (fd_ < 0) throw_internal("AtomicFile::commit: '" + path_ + "' is already committed");
  if (::fsync(fd_) != 0) fail("", errno);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("", errno);
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    fail("cannot rename '" + temp_path_ + "' onto it: ", errno);
  }
  committed_ = true;
  // Best effort: a directory that cannot be opened or synced does not undo a finished rename.
  int dir_fd = ::open(parent_directory(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

}  // namespace qforge::io
