// Calibration observers: HistogramObserver::observe on activation-like tensors (ReLU output:
// about half exact zeros, the rest half-normal), per element, at 1 and 2 threads.
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>

#include "kernels/tensor.h"
#include "quant/observers.h"
#include "runtime/threads.h"

namespace {

using qforge::kernels::DType;
using qforge::kernels::Tensor;

Tensor relu_like(int64_t n, uint32_t seed) {
  Tensor t(DType::kFloat32, {n});
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  float* p = t.data<float>();
  for (int64_t i = 0; i < n; ++i) p[i] = std::max(0.0f, normal(rng));
  return t;
}

void BM_HistogramObserve(benchmark::State& state) {
  qforge::runtime::set_num_threads(static_cast<int>(state.range(1)));
  const Tensor x = relu_like(state.range(0), 1);
  qforge::quant::HistogramObserver obs;
  for (auto _ : state) obs.observe(x);
  state.SetItemsProcessed(state.iterations() * state.range(0));
  qforge::runtime::set_num_threads(0);
}
BENCHMARK(BM_HistogramObserve)
    ->Args({8 * 256 * 56 * 56, 1})
    ->Args({8 * 256 * 56 * 56, 2})
    ->Args({8 * 512 * 7 * 7, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
