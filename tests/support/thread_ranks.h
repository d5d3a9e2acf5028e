// Ranks of a data-parallel run played by threads of one process, for library tests of the
// pipeline on several ranks without an MPI launcher: run_on_ranks(n, fn) calls fn(comm) on n
// threads, each with a runtime::Communicator whose collectives meet at a barrier.
#pragma once

#include <barrier>
#include <cstddef>
#include <exception>
#include <functional>
#include <span>
#include <thread>
#include <vector>

#include "runtime/communicator.h"

namespace qforge::testing {

class ThreadRank final : public runtime::Communicator {
 public:
  struct Group {
    explicit Group(int n) : sync(n), slots(static_cast<size_t>(n)) {}
    std::barrier<> sync;
    std::vector<std::vector<std::byte>> slots;
  };
  ThreadRank(Group& group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(group_.slots.size()); }
  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> bytes) override {
    group_.slots[static_cast<size_t>(rank_)].assign(bytes.begin(), bytes.end());
    group_.sync.arrive_and_wait();
    std::vector<std::vector<std::byte>> all = group_.slots;
    group_.sync.arrive_and_wait();
    return all;
  }
  void broadcast(std::vector<std::byte>& bytes, int root) override {
    if (rank_ == root) group_.slots[static_cast<size_t>(root)] = bytes;
    group_.sync.arrive_and_wait();
    bytes = group_.slots[static_cast<size_t>(root)];
    group_.sync.arrive_and_wait();
  }

 private:
  Group& group_;
  int rank_;
};

// Calls fn(rank's communicator) on `ranks` threads and waits for them; the first exception a
// rank threw (by rank) is rethrown.
inline void run_on_ranks(int ranks, const std::function<void(runtime::Communicator&)>& fn) {
  ThreadRank::Group group(ranks);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      ThreadRank comm(group, r);
      try {
        fn(comm);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace qforge::testing
