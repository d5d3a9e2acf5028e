#include "tools/io/resource_usage.h"

#include <sys/resource.h>

#include <fstream>
#include <string>

namespace qforge::io {

int64_t peak_resident_bytes() {
  // The high-water mark of this process's own address space (VmHWM, Linux). getrusage's
  // ru_maxrss is not that: Linux carries it across fork and exec, so a process started by a
  // larger one (a Python benchmark driver) would report its parent's peak.
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;  // kB
  }
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace qforge::io
