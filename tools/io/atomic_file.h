// Output files written through an unnamed temporary (O_TMPFILE) in the destination's directory
// and linked into place on commit, so that no exit, SIGKILL included, leaves a partial output or
// a temporary behind (models, reports, .npy files). Also the checks every command runs on its
// output paths before any work, and the SIGINT/SIGTERM handling that ends a run cleanly.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>

namespace qforge::io {

struct AtomicFileOptions {
  // false: a named temporary "<path>.tmp.<pid>", as on a file system that refuses O_TMPFILE
  // (then chosen automatically). Tests use it to cover that path.
  bool unnamed = true;
};

// The destination changes only on commit(); until then it is left as it was. An existing
// destination that is not a regular file (directory, device, FIFO, socket) or is a symbolic
// link is refused by the constructor: replacing it with a regular file would destroy what it
// was. A named temporary is removed by the destructor and, on SIGINT/SIGTERM, by the handler
// install_signal_cleanup() sets up; only SIGKILL while a named temporary exists can leave one
// (always during the fallback, for a few microseconds of commit() when replacing a file).
class AtomicFile {
 public:
  // Throws an Io error "cannot write '<path>': <reason>" when the temporary cannot be created
  // (missing directory, no permission) or the destination is refused.
  explicit AtomicFile(std::string path, AtomicFileOptions options = {});
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // A failed write (ENOSPC, EIO, EFBIG) is an Io error naming the path; so is every later call.
  void write(const void* data, size_t nbytes);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // Flushes to disk and puts the file at path. Called at most once.
  void commit();
  // commit() in three steps, for commit_together: the data flushed to disk, the file put at
  // path, the directory's entry flushed.
  void sync_data();
  void put_in_place();
  void sync_directory() const;

  const std::string& path() const { return path_; }
  // A path that reads the bytes written so far: "/proc/self/fd/<n>" for an unnamed temporary,
  // the temporary's name otherwise. Valid until commit().
  std::string read_path() const;
  // The named temporary ("" while the temporary is unnamed).
  const std::string& temp_path() const { return temp_path_; }

 private:
  [[noreturn]] void fail(const std::string& what, int error_number);
  void discard() noexcept;
  void link_into_place();

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  int slot_ = -1;        // the signal handler's slot holding temp_path_, or -1
  int write_error_ = 0;  // errno of a failed write; later calls report it again
  bool committed_ = false;
};

// Commits a command's final outputs with as little as possible between the first and the last
// one put in place: every file's data is flushed first, then each is linked (or renamed) into
// place, then the directories are flushed. A SIGKILL can then only fall between two link calls,
// not during a flush to a busy disk. From just before the first file is put in place, SIGINT,
// SIGTERM and SIGHUP are ignored for the rest of the process (ignore_interrupts): such a signal
// can neither split the set nor turn the finished run into a failed one with its outputs in
// place. Checkpoints and other outputs written while the run goes on use AtomicFile::commit.
void commit_together(std::initializer_list<AtomicFile*> files);
void commit_together(std::span<AtomicFile* const> files);
// SIGINT, SIGTERM and SIGHUP ignored from here on (the run has finished its work).
void ignore_interrupts();

// Writes bytes to path through an AtomicFile.
void write_file_atomic(const std::string& path, std::string_view bytes);

// A path a command reads or writes, and how the user named it ("-o", "--report", "model").
struct NamedPath {
  std::string_view role;
  std::string path;
};

// Refuses, before any work: an output given as an empty string, an output that is the same
// file as an input (device and inode, so links and other spellings count), and two outputs
// naming the same file. Invalid errors of the form
// "<stage>: output '<path>' (<role>) is the same file as <the other>".
void check_output_paths(std::string_view stage, std::span<const NamedPath> outputs,
                        std::span<const NamedPath> inputs);

// SIGINT, SIGTERM and SIGHUP remove every named temporary, print one line on stderr and exit
// with 128 + the signal number (130, 143, 129). Called once, at program start.
void install_signal_cleanup();
// The handler then exits without its one line on stderr (an MPI rank other than 0).
void quiet_signal_messages();

}  // namespace qforge::io
