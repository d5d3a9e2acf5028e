// What the running process has used so far, for the figures the commands print.
#pragma once

#include <cstdint>

namespace qforge::io {

// Peak resident set size of this process so far, in bytes: its own, not that of a process it was
// started from (0 where the platform cannot say).
int64_t peak_resident_bytes();

}  // namespace qforge::io
