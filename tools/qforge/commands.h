// Subcommands of the qforge program. Each registers its options on a CLI11 subcommand and runs
// as a thin layer over library calls.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace qforge::cli {

// Registers a subcommand; returns the function main runs when it was chosen (its exit code).
using CommandRunner = std::function<int()>;
CommandRunner add_inspect_command(CLI::App& app);
CommandRunner add_run_command(CLI::App& app);
CommandRunner add_compare_command(CLI::App& app);
CommandRunner add_plan_command(CLI::App& app);
CommandRunner add_transform_command(CLI::App& app);
CommandRunner add_calibrate_command(CLI::App& app);
CommandRunner add_grad_command(CLI::App& app);
CommandRunner add_qat_command(CLI::App& app);
CommandRunner add_verify_command(CLI::App& app);

}  // namespace qforge::cli
