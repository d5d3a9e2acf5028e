// dist/processes.h on MPI. A collective's first step (the sizes, where a rank that arrives early
// waits for the others, and the final barrier while rank 0 writes the output) is started
// non-blocking and waited for idly, so that a waiting rank sleeps instead of spinning on a core
// the other ranks need; the payload then moves with the blocking call, which every rank is
// ready for and which MPI progresses at full speed (a non-blocking one progresses only while
// tested).
#include <mpi.h>

#include <time.h>

#include <climits>
#include <cstdlib>

#include "kernels/error.h"
#include "tools/dist/processes.h"

namespace qforge::dist {
namespace {

bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    if (std::getenv(name)) return true;
  }
  return false;
}

// Tests `request` until it completes: at once for a few thousand tries (a collective whose ranks
// are all there completes in microseconds), then every 200 µs.
void wait_idle(MPI_Request& request) {
  int done = 0;
  for (int tries = 0; !done; ++tries) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (!done && tries > 4096) {
      const timespec pause{0, 200'000};
      nanosleep(&pause, nullptr);
    }
  }
}

int to_int_count(uint64_t n) {
  if (n > static_cast<uint64_t>(INT_MAX)) {
    throw_unsupported("collective: a message of " + std::to_string(n) +
                      " bytes is more than MPI's int count allows");
  }
  return static_cast<int>(n);
}

class MpiWorld final : public runtime::Communicator {
 public:
  MpiWorld() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> bytes) override {
    const uint64_t mine = bytes.size();
    std::vector<uint64_t> sizes(static_cast<size_t>(size_));
    MPI_Request request;
    MPI_Iallgather(&mine, 1, MPI_UINT64_T, sizes.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD, &request);
    wait_idle(request);
    std::vector<int> counts(sizes.size());
    std::vector<int> offsets(sizes.size());
    uint64_t total = 0;
    for (size_t r = 0; r < sizes.size(); ++r) {
      counts[r] = to_int_count(sizes[r]);
      offsets[r] = to_int_count(total);
      total += sizes[r];
    }
    to_int_count(total);
    std::vector<std::byte> all(total);
    MPI_Allgatherv(bytes.data(), to_int_count(mine), MPI_BYTE, all.data(), counts.data(),
                   offsets.data(), MPI_BYTE, MPI_COMM_WORLD);
    std::vector<std::vector<std::byte>> out(sizes.size());
    for (size_t r = 0; r < sizes.size(); ++r) {
      out[r].assign(all.begin() + offsets[r], all.begin() + offsets[r] + counts[r]);
    }
    return out;
  }

  void broadcast(std::vector<std::byte>& bytes, int root) override {
    uint64_t n = bytes.size();
    MPI_Request request;
    MPI_Ibcast(&n, 1, MPI_UINT64_T, root, MPI_COMM_WORLD, &request);
    wait_idle(request);
    bytes.resize(n);
    MPI_Bcast(bytes.data(), to_int_count(n), MPI_BYTE, root, MPI_COMM_WORLD);
  }

 private:
  int rank_ = 0;
  int size_ = 1;
};

int local_ranks = 1;

}  // namespace

// LeakSanitizer's check, present in sanitizer builds only (weak: null otherwise).
extern "C" void __lsan_do_leak_check() __attribute__((weak));

std::string build_description() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(version, &length);
  std::string text(version, static_cast<size_t>(length));
  // "Open MPI v4.1.4, package: ..." -> "Open MPI v4.1.4"
  text = text.substr(0, text.find_first_of(",\n"));
  return "with MPI (" + text + ")";
}

std::unique_ptr<runtime::Communicator> join(int& argc, char**& argv) {
  if (!launched_by_mpi()) return std::make_unique<runtime::SingleProcess>();
  int provided = 0;
  // Only the main thread calls MPI; the kernels' worker threads never do.
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &local_ranks);
  MPI_Comm_free(&node);
  return std::make_unique<MpiWorld>();
}

int ranks_on_this_machine() {
  return local_ranks;
}

int finish(runtime::Communicator& comm, int exit_code, bool failed_alone) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return exit_code;
  if (failed_alone && comm.size() > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
  MPI_Request request;
  MPI_Ibarrier(MPI_COMM_WORLD, &request);
  wait_idle(request);
  // In a sanitizer build, leaks are checked here, while Open MPI's state is still reachable
  // from its globals and its components still loaded: after MPI_Finalize has unloaded them the
  // check at exit can no longer tell their allocations from qforge's (scripts/sanitizers/
  // lsan-mpi.supp names what Open MPI leaks before this point).
  if (__lsan_do_leak_check) __lsan_do_leak_check();
  MPI_Finalize();
  return exit_code;
}

}  // namespace qforge::dist
