#include "tools/qforge/cli_checks.h"

#include <cstdio>
#include <string>

#include "runtime/threads.h"

namespace qforge::cli {

void set_threads_from_flag(int requested) {
  const int cores = runtime::hardware_threads();
  if (requested > cores) {
    std::fprintf(stderr, "qforge: note: --threads %d is more than the %d cores; using %d\n",
                 requested, cores, cores);
    requested = cores;
  }
  runtime::set_num_threads(requested);
}

CLI::Validator file_path() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        return text.empty() ? "expected a file path, got an empty string" : std::string();
      },
      "PATH");
}

}  // namespace qforge::cli
