// Sets the process thread count for one test and restores it after.
#pragma once

#include "runtime/threads.h"

namespace qforge::testing {

class ThreadCount {
 public:
  explicit ThreadCount(int n) : previous_(runtime::num_threads()) { runtime::set_num_threads(n); }
  ~ThreadCount() { runtime::set_num_threads(previous_); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
  int previous_;
};

}  // namespace qforge::testing
