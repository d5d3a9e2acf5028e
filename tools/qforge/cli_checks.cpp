#include "tools/qforge/cli_checks.h"

#include <string>

namespace qforge::cli {

CLI::Validator file_path() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        return text.empty() ? "expected a file path, got an empty string" : std::string();
      },
      "PATH");
}

}  // namespace qforge::cli
