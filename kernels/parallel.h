// The one wrapper through which kernels run in parallel (oneTBB). The thread count is a process
// setting owned by runtime/threads.h; kernels only ask how many threads they may use.
#pragma once

#include <cstdint>

#include <tbb/blocked_range.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>

namespace qforge::kernels {

// Threads the kernels may use now (the process setting, at least 1).
inline int max_threads() {
  return static_cast<int>(
      tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism));
}

// Calls fn(begin, end) on disjoint chunks covering [0, n), at least `grain` items each.
// Chunking is static (simple_partitioner), so for a fixed n, grain the chunks are the same
// however many threads run them: results never depend on the thread count.
template <class Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  if (n <= grain || max_threads() == 1) {
    fn(int64_t{0}, n);
    return;
  }
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, n, grain),
      [&](const tbb::blocked_range<int64_t>& r) { fn(r.begin(), r.end()); },
      tbb::simple_partitioner());
}

}  // namespace qforge::kernels
