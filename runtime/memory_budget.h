// The memory a compiled plan needs against the memory the process can still use, so that a
// batch or thread count too large for the machine is one clear error instead of gigabytes
// allocated and touched before the kernel runs out.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

namespace qforge::runtime {

struct PlanMemory {
  size_t arena_bytes = 0;      // activations, placed by liveness
  size_t workspace_bytes = 0;  // the largest kernel scratch (grows with the thread count)
  size_t weight_bytes = 0;     // constants the kernels read and prepare their own forms of
  size_t total() const { return arena_bytes + workspace_bytes + weight_bytes; }
};

// The least of: MemAvailable from /proc/meminfo, the cgroup's memory limit less its usage (v2
// memory.max, v1 memory.limit_in_bytes), the address-space limit (ulimit -v) less what the
// process has mapped, and QFORGE_MEMORY_LIMIT_MIB when it is set (an Invalid error when it is
// not a whole number of MiB >= 1); nullopt when none of them is known.
std::optional<size_t> available_memory_bytes();

// Throws an Invalid error when `need` exceeds `budget` (unset: available_memory_bytes(); no
// check when that is unknown too):
// "<stage>: the execution plan needs N MiB (arena A MiB, workspace W MiB, weights P MiB), more
// than the M MiB of memory available; lower --batch".
void check_memory_budget(const std::string& stage, const PlanMemory& need,
                         std::optional<size_t> budget = std::nullopt);

}  // namespace qforge::runtime
