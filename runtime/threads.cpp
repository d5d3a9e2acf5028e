// Thread control: a tbb::global_control for the process and OpenBLAS pinned to one thread.
#include "runtime/threads.h"

#include <cblas.h>

#include <memory>
#include <mutex>
#include <thread>

#include <tbb/global_control.h>

namespace qforge::runtime {
namespace {

std::mutex g_mutex;
std::unique_ptr<tbb::global_control> g_control;
int g_threads = 0;

}  // namespace

int hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}

void set_num_threads(int n) {
  std::lock_guard lock(g_mutex);
  if (n <= 0) n = hardware_threads();
  g_control.reset();
  g_control = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                    static_cast<size_t>(n));
  openblas_set_num_threads(1);
  g_threads = n;
}

int num_threads() {
  std::lock_guard lock(g_mutex);
  return g_threads ? g_threads : hardware_threads();
}

}  // namespace qforge::runtime
