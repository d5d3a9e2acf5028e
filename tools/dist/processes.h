// How this qforge process learns which ranks it runs with. Started by an MPI launcher (mpirun,
// mpiexec, srun: the launcher's environment says so), it joins the launched processes through
// MPI; started alone, it is one process as always, and MPI is not touched. The same header is
// implemented on MPI (mpi_processes.cpp) or, in a build without MPI, by single_processes.cpp,
// which refuses a launch on several ranks; nothing else in qforge knows which.
#pragma once

#include <memory>
#include <string>

#include "runtime/communicator.h"

namespace qforge::dist {

// "with MPI (Open MPI v4.1.4, ...)" or "without MPI", for --version.
std::string build_description();

// The ranks this process belongs to: MPI's world when a launcher started it, else a
// runtime::SingleProcess. Invalid error when a launcher started several ranks and this build has
// no MPI. Call once, before any thread is started.
std::unique_ptr<runtime::Communicator> join(int& argc, char**& argv);

// The processes a launcher started on this machine (1 when started alone): --threads' default
// divides the cores among them.
int ranks_on_this_machine();

// Ends this rank's part of the run with `exit_code`. When the run failed collectively
// (runtime::Communicator::failed_collectively) or succeeded, every rank waits for the others
// (idle, not spinning) and leaves MPI normally; a failure of this rank alone aborts every rank
// of the run, so that none waits for it forever. Returns the code to exit with.
int finish(runtime::Communicator& comm, int exit_code, bool failed_alone);

}  // namespace qforge::dist
