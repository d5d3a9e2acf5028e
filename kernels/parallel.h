// The one wrapper through which kernels run in parallel (oneTBB). The thread count is a process
// setting owned by runtime/threads.h; kernels only ask how many threads they may use.
#pragma once

#include <cstdint>

#if defined(__SSE__)
#include <immintrin.h>
#endif

#include <tbb/blocked_range.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>

#if defined(__SANITIZE_THREAD__)
#define QFORGE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define QFORGE_TSAN 1
#endif
#endif
#ifdef QFORGE_TSAN
#include <algorithm>
#include <exception>
#include <thread>
#include <vector>
#endif

namespace qforge::kernels {

// Threads the kernels may use now (the process setting, at least 1).
inline int max_threads() {
  return static_cast<int>(
      tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism));
}

// The calling thread's floating-point control word (MXCSR on x86: rounding, and the denormal
// modes DAZ and FTZ); 0 where there is none to carry.
inline unsigned fp_mode() {
#if defined(__SSE__)
  return _mm_getcsr();
#else
  return 0;
#endif
}

// While alive, the thread runs in `mode`; its own mode comes back after.
class FpModeScope {
 public:
  explicit FpModeScope(unsigned mode) : saved_(fp_mode()) {
#if defined(__SSE__)
    if (mode != saved_) _mm_setcsr(mode);
#endif
    (void)mode;
  }
  ~FpModeScope() {
#if defined(__SSE__)
    if (fp_mode() != saved_) _mm_setcsr(saved_);
#endif
  }
  FpModeScope(const FpModeScope&) = delete;
  FpModeScope& operator=(const FpModeScope&) = delete;

 private:
  unsigned saved_;
};

// While alive, the calling thread, and every chunk its parallel_for runs, reads denormal
// (subnormal) operands as zero and writes zero for denormal results (MXCSR's DAZ and FTZ).
// The convolutions run under it (kernels/conv.h).
class DenormalsFlushed {
 public:
  DenormalsFlushed() : scope_(fp_mode() | kFlushBits) {}

 private:
#if defined(__SSE__)
  static constexpr unsigned kFlushBits = 0x8040;  // FTZ (bit 15) and DAZ (bit 6)
#else
  static constexpr unsigned kFlushBits = 0;
#endif
  FpModeScope scope_;
};

namespace parallel_detail {
// fn(begin, end) in a function of its own, as tbb::parallel_for calls each chunk: inlined into
// its caller instead, fn's own calls (exp_approx in an activation's loop) may stay out of line
// and its loop scalar (GCC 12: Sigmoid on one thread ran 15 times slower than on two).
template <class Fn>
[[gnu::noinline]] void call_chunk(Fn& fn, int64_t begin, int64_t end) {
  fn(begin, end);
}
}  // namespace parallel_detail

// Calls fn(begin, end) on disjoint chunks covering [0, n), at least `grain` items each.
// Chunking is static (simple_partitioner), so for a fixed n, grain the chunks are the same
// however many threads run them: results never depend on the thread count. One chunk, or one
// thread, runs on the calling thread. Every chunk runs in the caller's floating-point mode
// (fp_mode), wherever it runs.
template <class Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  if (n <= grain || max_threads() == 1) {
    parallel_detail::call_chunk(fn, int64_t{0}, n);
    return;
  }
#ifdef QFORGE_TSAN
  // ThreadSanitizer cannot see the synchronisation inside libtbb (the Debian library is not
  // instrumented), so under it every task hand-over would read as a race. The same chunks as
  // simple_partitioner's run instead on threads started and joined here, which it does see:
  // it checks the chunks of every kernel against each other as they really run, concurrently.
  std::vector<tbb::blocked_range<int64_t>> chunks{{0, n, static_cast<size_t>(grain)}};
  for (size_t i = 0; i < chunks.size();) {
    if (chunks[i].is_divisible()) {
      tbb::blocked_range<int64_t> right(chunks[i], tbb::split());
      chunks.push_back(right);
    } else {
      ++i;
    }
  }
  const size_t threads = std::min(chunks.size(), static_cast<size_t>(max_threads()));
  std::vector<std::exception_ptr> errors(threads);
  const unsigned mode = fp_mode();
  auto run_share = [&](size_t t) {
    const FpModeScope in_mode(mode);
    try {
      for (size_t c = t; c < chunks.size(); c += threads) fn(chunks[c].begin(), chunks[c].end());
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  std::vector<std::thread> workers;
  for (size_t t = 1; t < threads; ++t) workers.emplace_back(run_share, t);
  run_share(0);
  for (std::thread& w : workers) w.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
#else
  const unsigned mode = fp_mode();
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, n, grain),
      [&](const tbb::blocked_range<int64_t>& r) {
        const FpModeScope in_mode(mode);
        fn(r.begin(), r.end());
      },
      tbb::simple_partitioner());
#endif
}

}  // namespace qforge::kernels
