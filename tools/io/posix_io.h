// Whole transfers over POSIX calls, retried after EINTR and after short counts. Each returns 0,
// or the errno of the failure: ENODATA when the file ends before `n` bytes were read, ENOSPC
// when a write makes no progress.
#pragma once

#include <sys/types.h>

#include <cstddef>

namespace qforge::io {

int write_fully(int fd, const void* data, size_t n);
int pwrite_fully(int fd, const void* data, size_t n, off_t offset);
int pread_fully(int fd, void* out, size_t n, off_t offset);

}  // namespace qforge::io
