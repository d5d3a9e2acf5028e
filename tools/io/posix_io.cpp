#include "tools/io/posix_io.h"

#include <unistd.h>

#include <cerrno>

namespace qforge::io {
namespace {

// Calls step(done) until `n` bytes moved; step returns what one call moved, or -1 with errno.
template <class Step>
int transfer(size_t n, int no_progress, Step&& step) {
  size_t done = 0;
  while (done < n) {
    const ssize_t moved = step(done);
    if (moved < 0 && errno == EINTR) continue;
    if (moved < 0) return errno;
    if (moved == 0) return no_progress;
    done += static_cast<size_t>(moved);
  }
  return 0;
}

}  // namespace

int write_fully(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  return transfer(n, ENOSPC, [&](size_t done) { return ::write(fd, p + done, n - done); });
}

int pwrite_fully(int fd, const void* data, size_t n, off_t offset) {
  const char* p = static_cast<const char*>(data);
  return transfer(n, ENOSPC, [&](size_t done) {
    return ::pwrite(fd, p + done, n - done, offset + static_cast<off_t>(done));
  });
}

int pread_fully(int fd, void* out, size_t n, off_t offset) {
  char* p = static_cast<char*>(out);
  return transfer(n, ENODATA, [&](size_t done) {
    return ::pread(fd, p + done, n - done, offset + static_cast<off_t>(done));
  });
}

}  // namespace qforge::io
