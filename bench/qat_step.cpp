// One quantization-aware training step of a classifier, timed in parts, for bench/qat.py: the
// model set up for training through fake quant as `qforge grad --fake-quant` does (transformed,
// Q/DQ placed, activations calibrated with max on the batch), then per step the forward with the
// mean cross-entropy, the backward and an SGD step (momentum 0.9), each timed. Prints one JSON
// object: the median of each part over the timed steps, the median step, the arena, the setup
// time and the process's peak resident memory. With --shards S (or under mpirun, one shard per
// rank by default) the batch is cut into S shards (runtime::ShardLayout) and each rank computes
// its share, gradients exchanged and summed in shard order: the parts then include the
// exchange (waiting for the other ranks included) and the fold of the shards' gradients, also
// printed apart. Fake quant is calibrated on the first shard's rows in that case.
//   [mpirun -np R] qforge_qat_step MODEL.onnx INPUT.npy LABELS.npy [--threads N] [--warmup N]
//                   [--runs N] [--lr X] [--shards S] [--profile] [--profile-nodes]
//                   [--no-records]
// --no-records keeps the tensors backward reads instead of the kernels' compact records
// (runtime::TrainingOptions::compact_records): the same gradients in a larger arena; its peak
// memory also counts what the executors made first touched (their zeroed workspace) before
// they were replaced, so compare arena_bytes. --profile also prints to
// stderr, per op type, the mean time per step its kernels took in the forward and in the backward
// (the first shard's executor); --profile-nodes the same per node.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "quant/fake_quant_training.h"
#include "quant/optimizer.h"
#include "runtime/threads.h"
#include "runtime/training.h"
#include "tools/dist/processes.h"
#include "tools/io/npy.h"
#include "tools/io/resource_usage.h"

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Args {
  std::string model, input, labels;
  int threads = 2;
  int warmup = 1;
  int runs = 3;
  double lr = 1e-4;
  int shards = 0;  // 0: one per rank
  bool profile = false;
  bool per_node = false;
  bool records = true;
};

Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--threads") {
      a.threads = std::stoi(value());
    } else if (arg == "--warmup") {
      a.warmup = std::stoi(value());
    } else if (arg == "--runs") {
      a.runs = std::stoi(value());
    } else if (arg == "--lr") {
      a.lr = std::stod(value());
    } else if (arg == "--shards") {
      a.shards = std::stoi(value());
    } else if (arg == "--profile") {
      a.profile = true;
    } else if (arg == "--profile-nodes") {
      a.profile = a.per_node = true;
    } else if (arg == "--no-records") {
      a.records = false;
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 3 || a.runs < 1 || a.warmup < 0 || a.threads < 1) {
    throw std::invalid_argument(
        "usage: qforge_qat_step MODEL.onnx INPUT.npy LABELS.npy [--threads N] [--warmup N] "
        "[--runs N>=1] [--lr X] [--shards S] [--profile] [--profile-nodes] [--no-records]");
  }
  a.model = positional[0];
  a.input = positional[1];
  a.labels = positional[2];
  return a;
}

int run(const Args& a, qforge::runtime::Communicator& comm) {
  using namespace qforge;
  runtime::set_num_threads(a.threads);
  const auto setup_start = Clock::now();
  const kernels::Tensor all_input = io::read_npy(a.input);
  const kernels::Tensor all_labels = io::read_npy(a.labels);
  const int64_t shards = a.shards > 0 ? a.shards : comm.size();
  const int64_t batch = all_input.dim(0);
  if (shards < comm.size() || batch % shards != 0) {
    throw std::invalid_argument("--shards must divide the batch and be at least the ranks");
  }
  const int64_t shard_batch = batch / shards;
  const runtime::Share share =
      runtime::share_of(static_cast<size_t>(shards), comm.rank(), comm.size());
  const runtime::ShardLayout layout{.total = shards,
                                    .first = static_cast<int64_t>(share.begin),
                                    .count = static_cast<int64_t>(share.end - share.begin),
                                    .processes = comm.size() > 1 ? &comm : nullptr};
  const kernels::Tensor input =
      all_input.slice_rows(layout.first * shard_batch, (layout.first + layout.count) * shard_batch)
          .clone();
  const kernels::Tensor labels =
      all_labels.slice_rows(layout.first * shard_batch, (layout.first + layout.count) * shard_batch)
          .clone();
  std::unique_ptr<runtime::ClassifierTraining> training;
  {
    std::unique_ptr<graph::Graph> model = graph::load_onnx(a.model);
    training = quant::max_calibrated_fake_quant_training(
        *model, shards > 1 ? all_input.slice_rows(0, shard_batch).clone() : all_input);
  }
  if (!a.records) training->set_compact_records(false);
  if (shards > 1) training->set_shards(layout);
  quant::SgdOptions sgd_options;
  sgd_options.lr = a.lr;
  sgd_options.momentum = 0.9;
  quant::Sgd sgd(sgd_options);
  const double setup_s = ms_since(setup_start) / 1e3;

  const runtime::ClassifierLoss loss{.labels = &labels};
  std::vector<double> forward_ms, backward_ms, optimizer_ms, step_ms, exchange_ms, fold_ms;
  float last_loss = 0;
  training->executor().set_profile(a.profile);
  for (int i = 0; i < a.warmup + a.runs; ++i) {
    if (i == a.warmup) training->executor().reset_profile();
    const double exchanged = training->shard_group().exchange_seconds();
    const double folded = training->shard_group().fold_seconds();
    const auto t0 = Clock::now();
    training->forward_loss(input, loss);
    const auto t1 = Clock::now();
    last_loss = training->backward();
    const auto t2 = Clock::now();
    sgd.step(training->executor().parameters());
    const auto t3 = Clock::now();
    if (i < a.warmup) continue;
    auto ms = [](Clock::time_point x, Clock::time_point y) {
      return std::chrono::duration<double, std::milli>(y - x).count();
    };
    forward_ms.push_back(ms(t0, t1));
    backward_ms.push_back(ms(t1, t2));
    optimizer_ms.push_back(ms(t2, t3));
    step_ms.push_back(ms(t0, t3));
    exchange_ms.push_back(1e3 * (training->shard_group().exchange_seconds() - exchanged));
    fold_ms.push_back(1e3 * (training->shard_group().fold_seconds() - folded));
  }
  if (!comm.is_root()) return 0;
  const runtime::TrainingExecutor& executor = training->executor();
  std::printf(
      "{\"forward_ms\": %.3f, \"backward_ms\": %.3f, \"optimizer_ms\": %.3f, \"step_ms\": %.3f, "
      "\"min_step_ms\": %.3f, \"exchange_ms\": %.3f, \"fold_ms\": %.3f, \"ranks\": %d, "
      "\"shards\": %lld, \"loss\": %.6g, \"runs\": %d, \"threads\": %d, "
      "\"arena_bytes\": %zu, \"unshared_bytes\": %zu, \"workspace_bytes\": %zu, "
      "\"setup_s\": %.3f, \"peak_rss_bytes\": %lld}\n",
      median(forward_ms), median(backward_ms), median(optimizer_ms), median(step_ms),
      *std::min_element(step_ms.begin(), step_ms.end()), median(exchange_ms), median(fold_ms),
      comm.size(), static_cast<long long>(shards), last_loss, a.runs, runtime::num_threads(),
      executor.arena_bytes(), executor.unshared_bytes(), executor.workspace_bytes(), setup_s,
      static_cast<long long>(io::peak_resident_bytes()));
  if (a.profile) {
    // Mean per timed step; a step's parts outside the kernels (loss, gradient set-up) are not
    // in it.
    std::fprintf(stderr, "%-40s %12s %12s %6s\n",
                 a.per_node ? "node (first shard)" : "op (first shard)", "forward ms",
                 "backward ms", "nodes");
    for (const auto& t : executor.profile(a.per_node)) {
      const std::string name = a.per_node ? t.node + " (" + t.op_type + ")" : t.op_type;
      std::fprintf(stderr, "%-40s %12.2f %12.2f %6zu\n", name.c_str(),
                   1e3 * t.forward_seconds / a.runs, 1e3 * t.backward_seconds / a.runs,
                   t.forward_calls / static_cast<size_t>(a.runs));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  auto comm = qforge::dist::join(argc, argv);
  int code = 0;
  try {
    code = run(parse(argc, argv), *comm);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qforge_qat_step: %s\n", e.what());
    code = 1;
  }
  return qforge::dist::finish(*comm, code, code != 0);
}
