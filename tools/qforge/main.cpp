// qforge: prepares float ONNX models for INT8 deployment. Errors become one line on stderr and
// a non-zero exit: 1 for bad input or failures, 2 for bad usage.
#include <malloc.h>

#include <cstdio>
#include <exception>
#include <iostream>
#include <new>
#include <vector>

#include "kernels/error.h"
#include "tools/io/atomic_file.h"
#include "tools/qforge/commands.h"

int main(int argc, char** argv) {
  // Blocks of 256 KiB and more are mapped, and unmapped when freed. glibc's default threshold
  // rises each time such a block is freed, after which a model's weights (protobuf strings,
  // prepared kernel weights) land on the heap and stay resident after they are freed: the
  // commands that load one model after another would then hold the earlier ones' memory.
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  // An interrupted run removes its temporaries and exits with 128 + the signal number.
  qforge::io::install_signal_cleanup();
  CLI::App app{"qforge: make float ONNX models ready for INT8 deployment", "qforge"};
  app.require_subcommand(1);
  app.footer(
      "Models: ONNX opsets 9 to 21 (9 to 12 converted to 13 on import). A model with dynamic "
      "height and width takes them from --input-shape C,H,W or from the .npy data's rows.");
  app.set_version_flag("--version", "qforge 0.1.0");
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

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    // One line, as for every other error; usage errors exit with 2.
    std::cerr << "qforge: error: " << e.what() << " (see --help)\n";
    return 2;
  }
  try {
    for (auto& [sub, runner] : commands) {
      if (sub->parsed()) return runner();
    }
  } catch (const qforge::Error& e) {
    std::cerr << "qforge: error: " << e.what() << '\n';
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "qforge: error: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "qforge: internal error: " << e.what() << '\n';
    return 1;
  }
  return 2;
}
