// kernels::parallel_for: every chunk runs in the caller's floating-point mode.
#include "kernels/parallel.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::ThreadCount;

// A product of two normal floats whose exact value, 1e-39, is denormal: zero where results are
// flushed. `volatile` keeps it a run-time multiply.
float denormal_product() {
  volatile float a = 1e-20f;
  volatile float b = 1e-19f;
  return a * b;
}

// Whether every chunk of a parallel_for over `n` items flushed the product, and how many threads
// ran chunks.
struct Chunks {
  int flushed = 0;
  int kept = 0;
  size_t threads = 0;
};

Chunks run_chunks(int64_t n) {
  std::atomic<int> flushed{0}, kept{0};
  std::mutex mutex;
  std::set<std::thread::id> threads;
  parallel_for(n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) (denormal_product() == 0.0f ? flushed : kept)++;
    // Enough work per chunk that the other thread takes some.
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    const std::lock_guard<std::mutex> lock(mutex);
    threads.insert(std::this_thread::get_id());
  });
  return {flushed.load(), kept.load(), threads.size()};
}

TEST(ParallelFor, ChunksRunInTheCallersFloatingPointMode) {
  ThreadCount two(2);
  ASSERT_GT(denormal_product(), 0.0f);
  {
    const DenormalsFlushed flushed;
    EXPECT_EQ(denormal_product(), 0.0f);
    // Until the second thread has taken chunks too (a busy machine may leave it asleep).
    Chunks c = run_chunks(64);
    for (int attempt = 0; attempt < 20 && c.threads < 2; ++attempt) c = run_chunks(64);
    EXPECT_EQ(c.flushed, 64);
    EXPECT_EQ(c.kept, 0);
    EXPECT_EQ(c.threads, 2u);
  }
  // The mode ends with the scope, on the caller and on the threads that ran its chunks.
  EXPECT_GT(denormal_product(), 0.0f);
  const Chunks c = run_chunks(64);
  EXPECT_EQ(c.flushed, 0);
  EXPECT_EQ(c.kept, 64);
}

}  // namespace
}  // namespace qforge::kernels
