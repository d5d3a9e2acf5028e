// Validators and handling shared by qforge's flags. Validators' messages give bounds as people
// write them ("expected an integer >= 1, got '0'"), where CLI11's number ranges print a 309-digit
// double bound.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>

namespace qforge::cli {

// An integer >= min that fits the option's type (int64 for counts, int for --threads).
CLI::Validator integer_at_least(int64_t min, int64_t max = INT64_MAX);
// A finite number > 0 ("expected a number > 0, got '-1'").
CLI::Validator positive_number();
// Sets the process's thread count from --threads (0: all cores, divided among the ranks an MPI
// launcher started on this machine). A count above the machine's cores is clamped to them with a
// note on stderr: more threads only add per-thread workspace.
void set_threads_from_flag(int requested);

// A non-empty path: "-o ''" is an error, not "no output".
CLI::Validator file_path();

}  // namespace qforge::cli
