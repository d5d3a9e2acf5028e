// The processes a data-parallel run spans (calibration, and later training), behind one small
// interface: the rank of this process, how many there are, and the two collectives the pipeline
// needs (every rank's bytes to every rank, one rank's bytes to every rank). SingleProcess is the
// run as one process; tools/dist implements the interface on MPI. Statistics travel as bytes
// (ByteWriter, ByteReader) and are merged in rank order, so a result never depends on the order
// messages arrived in. `collectively` turns a failure on one rank into the same error on every
// rank, so that no rank waits for a collective another rank will never reach.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/error.h"

namespace qforge::runtime {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Every rank's `bytes`, indexed by rank, on every rank. Every rank calls it.
  virtual std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> bytes) = 0;
  // `bytes` of rank `root` on every rank (replacing theirs). Every rank calls it.
  virtual void broadcast(std::vector<std::byte>& bytes, int root) = 0;

  bool is_root() const { return rank() == 0; }
  // Set on every rank by `collectively` when some rank failed: the error this rank then threw
  // is the one every rank threw, so the run may end normally on every rank (only rank 0 needs
  // to say why). A failure thrown without it was this rank's alone.
  bool failed_collectively() const { return failed_collectively_; }

 private:
  friend void agree_on_failure(Communicator& comm, const Error* local);
  bool failed_collectively_ = false;
};

// The run as one process: rank 0 of 1; the collectives return this rank's own bytes.
class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> bytes) override;
  void broadcast(std::vector<std::byte>& bytes, int root) override;
};

// Every rank says whether it failed (`local`, null when it did not). When any rank did, every
// rank throws the failure of the lowest failing rank, of its kind, as "rank R: <message>"
// (without the prefix on a single process), and failed_collectively() becomes true.
void agree_on_failure(Communicator& comm, const Error* local);

// Runs `step` on this rank, then agree_on_failure: a qforge::Error, std::bad_alloc or other
// std::exception thrown by `step` on any rank becomes the same error on every rank.
void collectively(Communicator& comm, const std::function<void()>& step);

// Plain values appended as bytes, for the collectives. Both ends are the same program on the
// same kind of machine, so values are written in memory order.
class ByteWriter {
 public:
  template <class T>
  void put(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    append(&value, sizeof(T));
  }
  // The count, then the elements.
  template <class T>
  void put_span(std::span<const T> values) {
    static_assert(std::is_trivially_copyable_v<T>);
    put<uint64_t>(values.size());
    append(values.data(), values.size_bytes());
  }
  void put_string(const std::string& text) {
    put_span(std::span<const char>(text.data(), text.size()));
  }
  const std::vector<std::byte>& bytes() const { return bytes_; }
  std::vector<std::byte> take() { return std::move(bytes_); }

 private:
  void append(const void* data, size_t n) {
    const size_t at = bytes_.size();
    bytes_.resize(at + n);
    if (n) std::memcpy(bytes_.data() + at, data, n);
  }
  std::vector<std::byte> bytes_;
};

// Reads what a ByteWriter wrote, in the same order. Internal error on reading past the end.
class ByteReader {
 public:
  explicit ByteReader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  template <class T>
  T get() {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    std::memcpy(&value, take(sizeof(T)), sizeof(T));
    return value;
  }
  template <class T>
  std::vector<T> get_vector() {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto n = get<uint64_t>();
    if (n > (bytes_.size() - offset_) / (sizeof(T) ? sizeof(T) : 1)) overrun();
    std::vector<T> values(n);
    if (n) std::memcpy(values.data(), take(n * sizeof(T)), n * sizeof(T));
    return values;
  }
  std::string get_string() {
    const std::vector<char> chars = get_vector<char>();
    return {chars.begin(), chars.end()};
  }
  bool at_end() const { return offset_ == bytes_.size(); }

 private:
  const std::byte* take(size_t n) {
    if (n > bytes_.size() - offset_) overrun();
    const std::byte* p = bytes_.data() + offset_;
    offset_ += n;
    return p;
  }
  [[noreturn]] static void overrun() {
    throw_internal("collective: a message from another rank ended early");
  }
  std::span<const std::byte> bytes_;
  size_t offset_ = 0;
};

// The share of `count` items (samples, batches) that `rank` of `size` takes: a contiguous range
// [begin, end), the first count % size ranks one item more.
struct Share {
  size_t begin = 0;
  size_t end = 0;
};
Share share_of(size_t count, int rank, int size);

}  // namespace qforge::runtime
