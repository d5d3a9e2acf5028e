// Memory figures read from /proc and the cgroup file system.
#include "runtime/memory_budget.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "kernels/error.h"

namespace qforge::runtime {
namespace {

// The first number in a file ("max" and missing files give nullopt).
std::optional<size_t> read_number(const char* path) {
  std::ifstream in(path);
  unsigned long long value = 0;
  if (!(in >> value)) return std::nullopt;
  return static_cast<size_t>(value);
}

std::optional<size_t> mem_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  unsigned long long kib = 0;
  std::string unit;
  while (in >> key >> kib) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return static_cast<size_t>(kib) * 1024;
  }
  return std::nullopt;
}

// A cgroup's limit less its usage, when it sets one (v2, then v1).
std::optional<size_t> cgroup_room() {
  for (const auto& [limit_path, usage_path] :
       {std::pair{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
        std::pair{"/sys/fs/cgroup/memory/memory.limit_in_bytes",
                  "/sys/fs/cgroup/memory/memory.usage_in_bytes"}}) {
    const std::optional<size_t> limit = read_number(limit_path);
    if (!limit || *limit >= (size_t{1} << 60)) continue;  // "max", or v1's "no limit"
    const size_t usage = read_number(usage_path).value_or(0);
    return *limit > usage ? *limit - usage : 0;
  }
  return std::nullopt;
}

// The address-space limit (RLIMIT_AS, `ulimit -v`) less the process's mapped size: every
// mapping counts against it as soon as it is made, touched or not.
std::optional<size_t> address_space_room() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_AS, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return std::nullopt;
  const std::optional<size_t> pages = read_number("/proc/self/statm");  // total program size
  const size_t mapped = pages.value_or(0) * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const auto cap = static_cast<size_t>(limit.rlim_cur);
  return cap > mapped ? cap - mapped : 0;
}

std::string mib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.0f", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return text;
}

// QFORGE_MEMORY_LIMIT_MIB: a budget of the user's own, below what the machine reports (a
// machine shared with other jobs, a container whose limit /proc does not show).
std::optional<size_t> configured_limit() {
  const char* value = std::getenv("QFORGE_MEMORY_LIMIT_MIB");
  if (!value || !*value) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const unsigned long long mib = std::strtoull(value, &end, 10);
  if (*end != '\0' || errno != 0 || mib == 0 || mib > (SIZE_MAX >> 20) || value[0] == '-') {
    throw_invalid(std::string("QFORGE_MEMORY_LIMIT_MIB: expected a whole number of MiB >= 1, "
                              "got '") +
                  value + "'");
  }
  return static_cast<size_t>(mib) << 20;
}

}  // namespace

std::optional<size_t> available_memory_bytes() {
  std::optional<size_t> least;
  for (const std::optional<size_t>& room :
       {mem_available(), cgroup_room(), address_space_room(), configured_limit()}) {
    if (room && (!least || *room < *least)) least = room;
  }
  return least;
}

void check_memory_budget(const std::string& stage, const PlanMemory& need,
                         std::optional<size_t> budget) {
  if (!budget) budget = available_memory_bytes();
  if (!budget || need.total() <= *budget) return;
  throw_invalid(stage + ": the execution plan needs " + mib(need.total()) + " MiB (arena " +
                mib(need.arena_bytes) + " MiB, workspace " + mib(need.workspace_bytes) +
                " MiB, weights " + mib(need.weight_bytes) + " MiB), more than the " + mib(*budget) +
                " MiB of memory available; lower --batch");
}

}  // namespace qforge::runtime
