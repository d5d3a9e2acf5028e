// AtomicFile over POSIX calls, so that every failure can report errno; the signal handler's
// table of named temporaries is plain static memory, as an async-signal-safe handler needs.
#include "tools/io/atomic_file.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "kernels/error.h"
#include "tools/io/posix_io.h"

namespace qforge::io {

namespace {

// The directory of the temporary, and the one to fsync after the link or rename so that the
// new name itself survives a crash.
std::string parent_directory(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// Named temporaries the signal handler removes. A slot is free (0), being filled (1) or holds
// a path (2); the handler reads only full slots.
struct TemporarySlot {
  std::atomic<int> state{0};
  char path[PATH_MAX];
};
constexpr int kTemporarySlots = 16;
TemporarySlot g_temporaries[kTemporarySlots];

int register_temporary(const std::string& path) {
  if (path.size() >= PATH_MAX) return -1;
  for (int i = 0; i < kTemporarySlots; ++i) {
    int expected = 0;
    if (!g_temporaries[i].state.compare_exchange_strong(expected, 1)) continue;
    std::memcpy(g_temporaries[i].path, path.c_str(), path.size() + 1);
    g_temporaries[i].state.store(2);
    return i;
  }
  return -1;
}

void unregister_temporary(int slot) {
  if (slot >= 0) g_temporaries[slot].state.store(0);
}

void write_stderr(const char* text) {
  ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

// Whether the signal handler says which signal ended the run (not on an MPI rank other than 0,
// which its launcher stops when rank 0 ends: rank 0 speaks for the run).
std::atomic<bool> g_signal_message{true};

extern "C" void remove_temporaries_and_exit(int signal_number) {
  for (TemporarySlot& slot : g_temporaries) {
    if (slot.state.load() == 2) ::unlink(slot.path);
  }
  if (g_signal_message.load())
    write_stderr(signal_number == SIGINT    ? "qforge: interrupted (SIGINT)\n"
                 : signal_number == SIGTERM ? "qforge: terminated (SIGTERM)\n"
                                            : "qforge: hung up (SIGHUP)\n");
  ::_exit(128 + signal_number);
}

// Why an existing destination cannot be replaced by a regular file ("" when it can).
std::string refused_destination(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return {};
  if (S_ISREG(st.st_mode)) return {};
  if (S_ISLNK(st.st_mode)) {
    std::error_code ec;
    const std::filesystem::path target = std::filesystem::read_symlink(path, ec);
    return "it is a symbolic link" + (ec ? std::string() : " to '" + target.string() + "'") +
           "; qforge does not replace links, name the file itself";
  }
  if (S_ISDIR(st.st_mode)) return "it is a directory";
  if (S_ISCHR(st.st_mode)) return "it is a character device, not a regular file";
  if (S_ISBLK(st.st_mode)) return "it is a block device, not a regular file";
  if (S_ISFIFO(st.st_mode)) return "it is a FIFO, not a regular file";
  if (S_ISSOCK(st.st_mode)) return "it is a socket, not a regular file";
  return "it is not a regular file";
}

}  // namespace

AtomicFile::AtomicFile(std::string path, AtomicFileOptions options) : path_(std::move(path)) {
  if (path_.empty()) throw_io("cannot write '': the output path is empty");
  const std::string refused = refused_destination(path_);
  if (!refused.empty()) throw_io("cannot write '" + path_ + "': " + refused);
  if (options.unnamed) {
    fd_ = ::open(parent_directory(path_).c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
    if (fd_ >= 0) return;
    const int error_number = errno;
    // A file system without O_TMPFILE answers EOPNOTSUPP (EISDIR or EINVAL on old kernels).
    if (error_number != EOPNOTSUPP && error_number != EISDIR && error_number != EINVAL) {
      throw_io("cannot write '" + path_ + "': " + std::strerror(error_number));
    }
  }
  temp_path_ = path_ + ".tmp." + std::to_string(::getpid());
  slot_ = register_temporary(temp_path_);  // before the file exists: no window without it
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
  if (fd_ < 0) {
    const int error_number = errno;
    unregister_temporary(slot_);
    slot_ = -1;
    throw_io("cannot write '" + path_ + "': " + std::strerror(error_number));
  }
}

AtomicFile::~AtomicFile() {
  if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  unregister_temporary(slot_);
  slot_ = -1;
}

void AtomicFile::fail(const std::string& what, int error_number) {
  discard();
  committed_ = true;  // nothing left to clean up
  throw_io("cannot write '" + path_ + "': " + what + std::strerror(error_number));
}

std::string AtomicFile::read_path() const {
  if (!temp_path_.empty() || fd_ < 0) return temp_path_;
  return "/proc/self/fd/" + std::to_string(fd_);
}

void AtomicFile::write(const void* data, size_t nbytes) {
  if (write_error_ != 0) {
    throw_io("cannot write '" + path_ + "': " + std::strerror(write_error_));
  }
  if (fd_ < 0) throw_internal("AtomicFile::write: '" + path_ + "' is already committed");
  const int error_number = write_fully(fd_, data, nbytes);
  if (error_number != 0) {
    write_error_ = error_number;
    fail("", error_number);
  }
}

void AtomicFile::link_into_place() {
  const std::string fd_path = "/proc/self/fd/" + std::to_string(fd_);
  if (::linkat(AT_FDCWD, fd_path.c_str(), AT_FDCWD, path_.c_str(), AT_SYMLINK_FOLLOW) == 0) {
    return;
  }
  if (errno != EEXIST) fail("", errno);
  // A link cannot replace a file: link under a temporary name beside it and rename that onto
  // the destination, which readers then see change in one step.
  temp_path_ = path_ + ".tmp." + std::to_string(::getpid());
  slot_ = register_temporary(temp_path_);
  ::unlink(temp_path_.c_str());  // left by an earlier process of the same id
  if (::linkat(AT_FDCWD, fd_path.c_str(), AT_FDCWD, temp_path_.c_str(), AT_SYMLINK_FOLLOW) != 0) {
    const int error_number = errno;
    temp_path_.clear();  // nothing was made under that name
    fail("", error_number);
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) fail("", errno);
}

void AtomicFile::sync_data() {
  if (write_error_ != 0) {
    throw_io("cannot write '" + path_ + "': " + std::strerror(write_error_));
  }
  if (fd_ < 0) throw_internal("AtomicFile::commit: '" + path_ + "' is already committed");
  if (::fsync(fd_) != 0) fail("", errno);
}

void AtomicFile::put_in_place() {
  if (fd_ < 0) throw_internal("AtomicFile::commit: '" + path_ + "' is already committed");
  if (temp_path_.empty()) {
    link_into_place();
    ::close(fd_);  // the data is on disk (sync_data) and in place
    fd_ = -1;
  } else {
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail("", errno);
    if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
      fail("cannot rename '" + temp_path_ + "' onto it: ", errno);
    }
  }
  committed_ = true;
  unregister_temporary(slot_);
  slot_ = -1;
}

void AtomicFile::sync_directory() const {
  // Best effort: a directory that cannot be opened or synced does not undo a finished rename.
  int dir_fd = ::open(parent_directory(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

void AtomicFile::commit() {
  sync_data();
  put_in_place();
  sync_directory();
}

void commit_together(std::initializer_list<AtomicFile*> files) {
  commit_together(std::span<AtomicFile* const>(files.begin(), files.size()));
}

void commit_together(std::span<AtomicFile* const> files) {
  for (AtomicFile* f : files) {
    if (f) f->sync_data();
  }
  ignore_interrupts();
  for (AtomicFile* f : files) {
    if (f) f->put_in_place();
  }
  for (AtomicFile* f : files) {
    if (f) f->sync_directory();
  }
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

namespace {

// Whether a and b name one file: the same device and inode when both exist, else the same
// path once "." and ".." and symbolic links in the existing part are resolved.
bool same_file(const std::string& a, const std::string& b) {
  struct stat sa {};
  struct stat sb {};
  const bool a_exists = ::stat(a.c_str(), &sa) == 0;
  const bool b_exists = ::stat(b.c_str(), &sb) == 0;
  if (a_exists && b_exists) return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  if (a_exists != b_exists) return false;
  std::error_code ea;
  std::error_code eb;
  const auto ca = std::filesystem::weakly_canonical(std::filesystem::absolute(a, ea), ea);
  const auto cb = std::filesystem::weakly_canonical(std::filesystem::absolute(b, eb), eb);
  return !ea && !eb && ca == cb;
}

std::string described(const NamedPath& p) {
  return "'" + p.path + "' (" + std::string(p.role) + ")";
}

}  // namespace

void check_output_paths(std::string_view stage, std::span<const NamedPath> outputs,
                        std::span<const NamedPath> inputs) {
  const std::string prefix = std::string(stage) + ": output ";
  for (size_t i = 0; i < outputs.size(); ++i) {
    const NamedPath& out = outputs[i];
    if (out.path.empty()) {
      throw_invalid(std::string(stage) + ": " + std::string(out.role) +
                    ": expected a file path, got an empty string");
    }
    for (const NamedPath& in : inputs) {
      if (!in.path.empty() && same_file(out.path, in.path)) {
        throw_invalid(prefix + described(out) + " is the same file as the input " + described(in) +
                      "; it would be overwritten");
      }
    }
    for (size_t j = 0; j < i; ++j) {
      if (same_file(out.path, outputs[j].path)) {
        throw_invalid(prefix + described(out) + " is the same file as output " +
                      described(outputs[j]));
      }
    }
  }
}

void quiet_signal_messages() {
  g_signal_message.store(false);
}

namespace {

// What SIGINT, SIGTERM and SIGHUP do from here on.
void set_interrupt_handler(void (*handler)(int)) {
  struct sigaction action {};
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  for (int signal_number : {SIGINT, SIGTERM, SIGHUP}) {
    sigaction(signal_number, &action, nullptr);
  }
}

}  // namespace

void ignore_interrupts() {
  set_interrupt_handler(SIG_IGN);
}

void install_signal_cleanup() {
  set_interrupt_handler(remove_temporaries_and_exit);
}

}  // namespace qforge::io
