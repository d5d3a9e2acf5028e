// One quantization-aware training step of a classifier, timed in parts, for bench/qat.py: the
// model set up for training through fake quant as `qforge grad --fake-quant` does (transformed,
// Q/DQ placed, activations calibrated with max on the batch), then per step the forward with the
// mean cross-entropy, the backward and an SGD step (momentum 0.9), each timed. Prints one JSON
// object: the median of each part over the timed steps, the median step, the arena, the setup
// time and the process's peak resident memory.
//   qforge_qat_step MODEL.onnx INPUT.npy LABELS.npy [--threads N] [--warmup N] [--runs N]
//                   [--lr X]
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
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 3 || a.runs < 1 || a.warmup < 0 || a.threads < 1) {
    throw std::invalid_argument(
        "usage: qforge_qat_step MODEL.onnx INPUT.npy LABELS.npy [--threads N] [--warmup N] "
        "[--runs N>=1] [--lr X]");
  }
  a.model = positional[0];
  a.input = positional[1];
  a.labels = positional[2];
  return a;
}

int run(const Args& a) {
  using namespace qforge;
  runtime::set_num_threads(a.threads);
  const auto setup_start = Clock::now();
  const kernels::Tensor input = io::read_npy(a.input);
  const kernels::Tensor labels = io::read_npy(a.labels);
  std::unique_ptr<runtime::ClassifierTraining> training;
  {
    std::unique_ptr<graph::Graph> model = graph::load_onnx(a.model);
    training = quant::max_calibrated_fake_quant_training(*model, input);
  }
  quant::SgdOptions sgd_options;
  sgd_options.lr = a.lr;
  sgd_options.momentum = 0.9;
  quant::Sgd sgd(sgd_options);
  const double setup_s = ms_since(setup_start) / 1e3;

  const runtime::ClassifierLoss loss{.labels = &labels};
  std::vector<double> forward_ms, backward_ms, optimizer_ms, step_ms;
  float last_loss = 0;
  for (int i = 0; i < a.warmup + a.runs; ++i) {
    const auto t0 = Clock::now();
    last_loss = training->forward_loss(input, loss);
    const auto t1 = Clock::now();
    training->backward();
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
  }
  const runtime::TrainingExecutor& executor = training->executor();
  std::printf(
      "{\"forward_ms\": %.3f, \"backward_ms\": %.3f, \"optimizer_ms\": %.3f, \"step_ms\": %.3f, "
      "\"min_step_ms\": %.3f, \"loss\": %.6g, \"runs\": %d, \"threads\": %d, "
      "\"arena_bytes\": %zu, \"unshared_bytes\": %zu, \"workspace_bytes\": %zu, "
      "\"setup_s\": %.3f, \"peak_rss_bytes\": %lld}\n",
      median(forward_ms), median(backward_ms), median(optimizer_ms), median(step_ms),
      *std::min_element(step_ms.begin(), step_ms.end()), last_loss, a.runs, runtime::num_threads(),
      executor.arena_bytes(), executor.unshared_bytes(), executor.workspace_bytes(), setup_s,
      static_cast<long long>(io::peak_resident_bytes()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qforge_qat_step: %s\n", e.what());
    return 1;
  }
}
