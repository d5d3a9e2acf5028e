#include "tools/qforge/cli_checks.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <string>

#include "runtime/threads.h"

namespace qforge::cli {

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
