// qforge: prepares float ONNX models for INT8 deployment. Errors become one line on stderr and
// a non-zero exit: 1 for bad input or failures, 2 for bad usage.
#include <malloc.h>

#include <cstdio>
#include <exception>
#include <iostream>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "kernels/error.h"
#include "tools/dist/processes.h"
#include "tools/io/atomic_file.h"
#include "tools/qforge/cli_checks.h"
#include "tools/qforge/commands.h"

namespace {

// One line on stderr in one write: std::cerr writes each piece of a `<<` chain at once, and under
// an MPI launcher, which forwards every rank's stderr, pieces of two processes' lines can
// interleave.
void print_line(std::string line) {
  line.push_back('\n');
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace

int main(int argc, char** argv) {
  // Blocks of 256 KiB and more are mapped, and unmapped when freed. glibc's default threshold
  // rises each time such a block is freed, after which a model's weights (protobuf strings,
  // prepared kernel weights) land on the heap and stay resident after they are freed: the
  // commands that load one model after another would then hold the earlier ones' memory.
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  // An interrupted run removes its temporaries and exits with 128 + the signal number.
  qforge::io::install_signal_cleanup();
  // Under an MPI launcher every rank runs this program: rank 0 prints (progress, figures, the
  // error of a run that failed on every rank); the other ranks' stdout goes nowhere.
  std::unique_ptr<qforge::runtime::Communicator> processes;
  try {
    processes = qforge::dist::join(argc, argv);
  } catch (const qforge::Error& e) {
    std::string line = "qforge: error: ";
    print_line(line.append(e.what()));
    return 1;
  }
  qforge::runtime::Communicator& comm = *processes;
  qforge::cli::set_processes(comm, qforge::dist::ranks_on_this_machine());
  if (!comm.is_root() && !std::freopen("/dev/null", "w", stdout)) return 1;
  if (!comm.is_root()) qforge::io::quiet_signal_messages();
  CLI::App app{"qforge: make float ONNX models ready for INT8 deployment", "qforge"};
  app.require_subcommand(1);
  using qforge::graph::kConvertedOpset;
  using qforge::graph::kNewestImportedOpset;
  using qforge::graph::kOldestImportedOpset;
  app.footer("Models: ONNX opsets " + std::to_string(kOldestImportedOpset) + " to " +
             std::to_string(kNewestImportedOpset) + " (" + std::to_string(kOldestImportedOpset) +
             " to " + std::to_string(kConvertedOpset - 1) + " converted to " +
             std::to_string(kConvertedOpset) +
             " on import). A model with dynamic height and width takes them from --input-shape "
             "C,H,W, from the .npy data's rows, or from an image folder's --crop. A model of "
             "several inputs (token ids and a mask, say) takes an .npz of one array per input.");
  app.set_version_flag("--version", "qforge 0.1.0 (" + qforge::dist::build_description() + ")");
  std::vector<std::pair<CLI::App*, qforge::cli::CommandRunner>> commands;
  auto add = [&](qforge::cli::CommandRunner (*add_fn)(CLI::App&)) {
    size_t before = app.get_subcommands({}).size();
    auto runner = add_fn(app);
    commands.emplace_back(app.get_subcommands({})[before], std::move(runner));
  };
  add(qforge::cli::add_inspect_command);
  add(qforge::cli::add_run_command);
  add(qforge::cli::add_compare_command);
  add(qforge::cli::add_plan_command);
  add(qforge::cli::add_transform_command);
  add(qforge::cli::add_calibrate_command);
  add(qforge::cli::add_grad_command);
  add(qforge::cli::add_qat_command);
  add(qforge::cli::add_verify_command);

  // Once this rank's outcome is known, a SIGTERM comes from the launcher ending the ranks still
  // finishing after another rank exited non-zero (rank 0 included: the failure was said already).
  auto finish = [&](int exit_code, bool failed_alone) {
    if (comm.size() > 1) qforge::io::quiet_signal_messages();
    return qforge::dist::finish(comm, exit_code, failed_alone);
  };
  // Parsing gives every rank the same outcome: rank 0 says it.
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) {  // --help, --version
      return finish(app.exit(e), false);
    }
    // One line, as for every other error; usage errors exit with 2.
    std::string line = "qforge: error: ";
    if (comm.is_root()) print_line(line.append(e.what()).append(" (see --help)"));
    return finish(2, false);
  }
  // A failure agreed by every rank is said once, by rank 0; one of this rank's alone is said
  // with its rank and ends every rank (dist::finish).
  auto say = [&](const char* what, const std::string& message) {
    if (comm.failed_collectively() && !comm.is_root()) return;
    std::string rank;
    if (comm.size() > 1 && !comm.failed_collectively()) {
      rank.append("rank ").append(std::to_string(comm.rank())).append(": ");
    }
    std::string line = "qforge: ";
    print_line(line.append(what).append(rank).append(message));
  };
  int code = 2;
  try {
    for (auto& [sub, runner] : commands) {
      if (!sub->parsed()) continue;
      if (sub->get_name() != "calibrate" && sub->get_name() != "qat") {
        qforge::cli::require_one_process(sub->get_name());
      }
      code = runner();
      break;
    }
  } catch (const qforge::Error& e) {
    say("error: ", e.what());
    code = 1;
  } catch (const std::bad_alloc&) {
    say("error: ", "out of memory");
    code = 1;
  } catch (const std::exception& e) {
    say("internal error: ", e.what());
    code = 1;
  }
  return finish(code, code != 0 && !comm.failed_collectively());
}
