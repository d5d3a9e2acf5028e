// The gradient exchange a data-parallel QAT step would make, timed on the ranks mpirun starts:
// every rank's gradient (N floats) gathered to every rank through runtime::Communicator (the
// interface calibration uses), then summed on each rank in rank order, the fixed order that
// makes the result independent of how many ranks and which arrived first. Prints one JSON object
// from rank 0: the bytes each rank sends and receives, the median exchange and sum times, and the
// bandwidth they imply, for bench/distributed.py and docs/DISTRIBUTED.md.
//   mpirun -np R qforge_gradient_exchange --floats N [--warmup N] [--runs N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <span>
#include <string>
#include <vector>

#include "tools/dist/processes.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  auto comm = qforge::dist::join(argc, argv);
  int code = 0;
  try {
    size_t floats = 11'689'512;  // resnet18's parameters
    int warmup = 1;
    int runs = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string arg = argv[i];
      if (arg == "--floats") {
        floats = std::stoull(argv[i + 1]);
      } else if (arg == "--warmup") {
        warmup = std::stoi(argv[i + 1]);
      } else if (arg == "--runs") {
        runs = std::stoi(argv[i + 1]);
      } else {
        throw std::invalid_argument("unknown option " + arg);
      }
    }
    std::vector<float> gradient(floats);
    for (size_t i = 0; i < floats; ++i) {
      gradient[i] =
          static_cast<float>((i * 2654435761u + static_cast<size_t>(comm->rank())) % 1000) * 1e-3f;
    }
    std::vector<float> sum(floats);
    std::vector<double> exchange_s, sum_s;
    for (int step = 0; step < warmup + runs; ++step) {
      const auto start = Clock::now();
      const auto all = comm->allgather(std::as_bytes(std::span<const float>(gradient)));
      const double exchanged = seconds_since(start);
      const auto sum_start = Clock::now();
      std::memcpy(sum.data(), all[0].data(), floats * sizeof(float));
      for (size_t r = 1; r < all.size(); ++r) {
        const auto* part = reinterpret_cast<const float*>(all[r].data());
        for (size_t i = 0; i < floats; ++i) sum[i] += part[i];
      }
      const double summed = seconds_since(sum_start);
      if (step >= warmup) {
        exchange_s.push_back(exchanged);
        sum_s.push_back(summed);
      }
    }
    if (comm->is_root()) {
      const double bytes = static_cast<double>(floats) * sizeof(float);
      const double ranks = comm->size();
      const double received = bytes * (ranks - 1);
      const double ex = median(exchange_s);
      std::printf(
          "{\"ranks\": %d, \"floats\": %zu, \"bytes_sent_per_rank\": %.0f, "
          "\"bytes_received_per_rank\": %.0f, \"exchange_s\": %.6f, \"sum_s\": %.6f, "
          "\"received_gb_per_s\": %.3f, \"checksum\": %.6g}\n",
          comm->size(), floats, bytes, received, ex, median(sum_s),
          ex > 0 ? received / ex / 1e9 : 0.0, static_cast<double>(sum[floats / 2]));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qforge_gradient_exchange: %s\n", e.what());
    code = 1;
  }
  return qforge::dist::finish(*comm, code, code != 0);
}
