// FloatSpill over POSIX calls: an O_TMPFILE file (or mkstemp, then unlink), pwrite and pread.
#include "tools/io/spill_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/error.h"
#include "tools/io/posix_io.h"

namespace qforge::io {

FloatSpill::FloatSpill() {
  const char* tmpdir = std::getenv("TMPDIR");
  directory_ = tmpdir && *tmpdir ? tmpdir : "/tmp";
  // Unnamed from the start where the file system allows it: no exit can leave it behind.
  fd_ = ::open(directory_.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd_ >= 0) return;
  if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
    fail("cannot make a temporary file", errno);
  }
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
  const int error_number = pwrite_fully(fd_, values.data(), values.size_bytes(),
                                        static_cast<off_t>(appended_ * sizeof(float)));
  if (error_number != 0) fail("cannot write a temporary file", error_number);
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
  const int error_number = pread_fully(fd_, values.data(), values.size_bytes(),
                                       static_cast<off_t>(read_ * sizeof(float)));
  if (error_number != 0) {
    fail("cannot read a temporary file", error_number == ENODATA ? EIO : error_number);
  }
  read_ += values.size();
}

}  // namespace qforge::io
