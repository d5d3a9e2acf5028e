#include "tools/qforge/cli_checks.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <string>

#include "kernels/error.h"
#include "runtime/threads.h"
#include "tools/qforge/commands.h"

namespace qforge::cli {
namespace {

runtime::SingleProcess one_process;
runtime::Communicator* run_processes = &one_process;
int local_ranks = 1;

}  // namespace

void set_processes(runtime::Communicator& comm, int ranks_on_machine) {
  run_processes = &comm;
  local_ranks = std::max(1, ranks_on_machine);
}

runtime::Communicator& processes() {
  return *run_processes;
}

int ranks_on_this_machine() {
  return local_ranks;
}

void require_one_process(const std::string& command) {
  runtime::Communicator& comm = processes();
  if (comm.size() == 1) return;
  std::string message = command;
  message.append(": runs as one process; started on ")
      .append(std::to_string(comm.size()))
      .append(" ranks (calibrate runs data-parallel)");
  const Error refused(ErrorKind::kUnsupported, message);
  runtime::agree_on_failure(comm, &refused);
}

CLI::Validator integer_at_least(int64_t min, int64_t max) {
  const std::string bound = max == INT64_MAX
                                ? ">= " + std::to_string(min)
                                : "in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
  return CLI::Validator(
      [min, max, bound](std::string& text) -> std::string {
        int64_t value = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, value);
        if (ec == std::errc() && ptr == end && value >= min && value <= max) return {};
        return "expected an integer " + bound + ", got '" + text + "'";
      },
      "INT " + bound);
}

CLI::Validator positive_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double value = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, value);
        if (ec == std::errc() && ptr == end && std::isfinite(value) && value > 0) return {};
        return "expected a number > 0, got '" + text + "'";
      },
      "NUMBER > 0");
}

void set_threads_from_flag(int requested) {
  const int cores = runtime::hardware_threads();
  if (requested == 0 && ranks_on_this_machine() > 1) {
    requested = std::max(1, cores / ranks_on_this_machine());
  }
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
