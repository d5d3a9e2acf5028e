// FloatSpill over POSIX calls: mkstemp, then unlink, then sequential write and pread.
#include "tools/io/spill_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/error.h"

namespace qforge::io {

FloatSpill::FloatSpill() {
  const char* tmpdir = std::getenv("TMPDIR");
  directory_ = tmpdir && *tmpdir ? tmpdir : "/tmp";
  std::string pattern = directory_ + "/qforge-spill-XXXXXX";
  std::vector<char> name(pattern.begin(), pattern.end());
  name.push_back('\0');
  fd_ = ::mkstemp(name.data());
  if (fd_ < 0) fail("cannot make a temporary file", errno);
  ::unlink(name.data());
}

FloatSpill::~FloatSpill() {
  if (fd_ >= 0) ::close(fd_);
}

void FloatSpill::fail(const std::string& what, int error_number) const {
  throw_io(what + " in '" + directory_ +
           "' (set TMPDIR to choose another directory): " + std::strerror(error_number));
}

void FloatSpill::append(std::span<const float> values) {
  const char* p = reinterpret_cast<const char*>(values.data());
  size_t left = values.size_bytes();
  off_t offset = static_cast<off_t>(appended_ * sizeof(float));
  while (left > 0) {
    const ssize_t n = ::pwrite(fd_, p, left, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("cannot write a temporary file", n < 0 ? errno : ENOSPC);
    p += n;
    left -= static_cast<size_t>(n);
    offset += n;
  }
  appended_ += values.size();
}

void FloatSpill::rewind() {
  read_ = 0;
}

void FloatSpill::read(std::span<float> values) {
  if (read_ + values.size() > appended_) {
    throw_internal("temporary file: reading " + std::to_string(values.size()) + " values at " +
                   std::to_string(read_) + " of " + std::to_string(appended_));
  }
  char* p = reinterpret_cast<char*>(values.data());
  size_t left = values.size_bytes();
  off_t offset = static_cast<off_t>(read_ * sizeof(float));
  while (left > 0) {
    const ssize_t n = ::pread(fd_, p, left, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("cannot read a temporary file", n < 0 ? errno : EIO);
    p += n;
    left -= static_cast<size_t>(n);
    offset += n;
  }
  read_ += values.size();
}

}  // namespace qforge::io
