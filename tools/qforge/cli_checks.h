// Validators and handling shared by qforge's flags.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>

namespace qforge::cli {

// Sets the process's thread count from --threads (0: all cores). A count above the machine's
// cores is clamped to them with a note on stderr: more threads only add per-thread workspace.
void set_threads_from_flag(int requested);

// A non-empty path: "-o ''" is an error, not "no output".
CLI::Validator file_path();

}  // namespace qforge::cli
