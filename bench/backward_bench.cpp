// Micro benchmarks of the dense backward kernels at batch 8 (kernels/conv_backward.h,
// gemm_backward.h): convolution data and weight gradients of ResNet-50 and EfficientNet-B0
// layers, and a ViT Linear layer's gradients. Reports multiply-add throughput (2 FLOPs per MAC
// of each gradient computed). Threads as in kernels_bench.cpp.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/conv_backward.h"
#include "kernels/gemm_backward.h"
#include "runtime/threads.h"

namespace {

using namespace qforge::kernels;

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

void use_two_threads() {
  const char* env = std::getenv("QFORGE_BENCH_THREADS");
  qforge::runtime::set_num_threads(env ? std::max(1, std::atoi(env)) : 2);
}

// Convolution backward: args {in_channels, in_size, out_channels, kernel, stride, group,
// gradients: 0 dx and dw, 1 dx only, 2 dw only, batch}.
void BM_ConvBackward(benchmark::State& state) {
  use_two_threads();
  ConvGeometry g;
  g.batch = state.range(7);
  g.in_channels = state.range(0);
  g.in_h = g.in_w = state.range(1);
  g.out_channels = state.range(2);
  g.kernel_h = g.kernel_w = state.range(3);
  g.stride_h = g.stride_w = state.range(4);
  g.group = state.range(5);
  g.pad_top = g.pad_left = g.kernel_h / 2;
  g.out_h = (g.in_h + 2 * g.pad_top - g.kernel_h) / g.stride_h + 1;
  g.out_w = (g.in_w + 2 * g.pad_left - g.kernel_w) / g.stride_w + 1;
  const int which = static_cast<int>(state.range(6));
  const ConvBackwardPlan plan = plan_conv_backward(g, 2);
  const size_t w_size =
      static_cast<size_t>(g.out_channels * (g.in_channels / g.group) * g.kernel_h * g.kernel_w);
  const auto x = random_floats(static_cast<size_t>(g.batch * g.in_channels * g.in_h * g.in_w), 1);
  const auto w = random_floats(w_size, 2);
  const auto dy =
      random_floats(static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w), 3);
  std::vector<float> dx(x.size()), dw(w_size);
  std::vector<std::byte> ws(conv_backward_workspace_bytes(plan) + 64);
  ConvGradients grads;
  if (which != 2) grads.dx = dx.data();
  if (which != 1) grads.dw = dw.data();
  for (auto _ : state) {
    conv2d_backward(plan, x.data(), w.data(), dy.data(), grads, ws.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::DoNotOptimize(dw.data());
  }
  const double macs = static_cast<double>(dy.size()) *
                      static_cast<double>((g.in_channels / g.group) * g.kernel_h * g.kernel_w);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * macs * (which == 0 ? 2.0 : 1.0),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_ConvBackward)
    ->Args({64, 56, 64, 3, 1, 1, 1, 8})      // ResNet-50 stage 1 3×3: dx
    ->Args({64, 56, 64, 3, 1, 1, 2, 8})      // and dw
    ->Args({256, 14, 256, 3, 1, 1, 0, 8})    // ResNet-50 stage 3 3×3
    ->Args({1024, 14, 256, 1, 1, 1, 0, 8})   // ResNet-50 stage 3 1×1
    ->Args({128, 56, 128, 3, 2, 1, 0, 8})    // ResNet-50 stride-2 3×3
    ->Args({96, 112, 96, 3, 2, 96, 0, 8})    // EfficientNet-B0 depthwise stride 2
    ->Args({480, 14, 480, 5, 1, 480, 1, 8})  // EfficientNet-B0 depthwise 5×5: dx
    ->Args({480, 14, 480, 5, 1, 480, 2, 8})  // and dw
    // ResNet-18 at batch 16 (the QAT benchmark's step), dx then dw of each stage's 3×3
    ->Args({64, 56, 64, 3, 1, 1, 1, 16})
    ->Args({64, 56, 64, 3, 1, 1, 2, 16})
    ->Args({128, 28, 128, 3, 1, 1, 1, 16})
    ->Args({128, 28, 128, 3, 1, 1, 2, 16})
    ->Args({256, 14, 256, 3, 1, 1, 1, 16})
    ->Args({256, 14, 256, 3, 1, 1, 2, 16})
    ->Args({512, 7, 512, 3, 1, 1, 1, 16})
    ->Args({512, 7, 512, 3, 1, 1, 2, 16})
    ->Args({256, 14, 512, 3, 2, 1, 1, 16})  // stride-2 entry of stage 4
    ->Args({256, 14, 512, 3, 2, 1, 2, 16})
    ->Args({64, 56, 128, 3, 2, 1, 1, 16})  // stride-2 entry of stage 2
    ->Args({64, 56, 128, 3, 2, 1, 2, 16})
    ->Args({64, 56, 128, 1, 2, 1, 0, 16})  // its 1×1 stride-2 downsample
    ->Args({3, 224, 64, 7, 2, 1, 2, 16})   // the stem: dw only (the input needs no gradient)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Gemm backward as a ViT Linear layer at batch 8 (1576 rows, nn.Linear weights [n, k], transB,
// bias per column): da, db and dc. Args {m, k, n}.
void BM_GemmBackward(benchmark::State& state) {
  use_two_threads();
  GemmDims d;
  d.m = state.range(0);
  d.k = state.range(1);
  d.n = state.range(2);
  d.trans_b = Transpose::kYes;
  d.bias = GemmBias::kRow;
  const auto a = random_floats(static_cast<size_t>(d.m * d.k), 4);
  const auto b = random_floats(static_cast<size_t>(d.k * d.n), 5);
  const auto dy = random_floats(static_cast<size_t>(d.m * d.n), 6);
  std::vector<float> da(a.size()), db(b.size()), dc(static_cast<size_t>(d.n));
  for (auto _ : state) {
    gemm_backward(d, a.data(), b.data(), dy.data(), {da.data(), db.data(), dc.data()});
    benchmark::DoNotOptimize(da.data());
    benchmark::DoNotOptimize(db.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(4.0 * static_cast<double>(d.m * d.k * d.n),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_GemmBackward)
    ->Args({1576, 768, 768})
    ->Args({1576, 768, 3072})
    ->Args({1576, 3072, 768})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
