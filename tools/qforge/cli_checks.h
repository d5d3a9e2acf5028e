// Validators and handling shared by qforge's flags.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>

namespace qforge::cli {

// A non-empty path: "-o ''" is an error, not "no output".
CLI::Validator file_path();

}  // namespace qforge::cli
