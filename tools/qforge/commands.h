// Subcommands of the qforge program. Each registers its options on a CLI11 subcommand and runs
// as a thin layer over library calls.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

#include "runtime/communicator.h"

namespace qforge::cli {

// The ranks this run spans: one process unless an MPI launcher started several
// (tools/dist/processes.h). Set once by main before any command runs.
void set_processes(runtime::Communicator& comm, int ranks_on_this_machine);
runtime::Communicator& processes();
int ranks_on_this_machine();
// Invalid error on every rank, agreed (runtime::agree_on_failure), when the run spans several
// ranks: "<command>: runs as one process; started on N ranks".
void require_one_process(const std::string& command);

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
