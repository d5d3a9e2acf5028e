// dist/processes.h for a build without MPI: always one process.
#include <cstdlib>

#include "kernels/error.h"
#include "tools/dist/processes.h"

namespace qforge::dist {
namespace {

// The world size a launcher announces (Open MPI, PMIx, MPICH/Hydra and Slurm's PMI), or 1.
int launched_size() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) {
    if (const char* v = std::getenv(name)) return std::atoi(v);
  }
  return 1;
}

}  // namespace

std::string build_description() {
  return "without MPI";
}

std::unique_ptr<runtime::Communicator> join(int&, char**&) {
  const int size = launched_size();
  if (size > 1) {
    throw_unsupported("qforge: started on " + std::to_string(size) +
                      " ranks by an MPI launcher, but this build has no MPI (qforge --version "
                      "says so); rebuild with MPI installed, or run one process");
  }
  return std::make_unique<runtime::SingleProcess>();
}

int ranks_on_this_machine() {
  return 1;
}

int finish(runtime::Communicator&, int exit_code, bool) {
  return exit_code;
}

}  // namespace qforge::dist
