// Micro benchmarks of the kernels that dominate MobileNetV3, EfficientNet, ConvNeXt and ViT at
// batch 8: depthwise convolution, GEMM row blocking, LayerNorm and GELU's Erf. Threads follow
// the process setting (runtime/threads.h); run with --benchmark_filter to pick one.
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/conv.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
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

// Threads for every benchmark: the 2 cores the end-to-end comparisons use.
void use_two_threads() {
  qforge::runtime::set_num_threads(2);
}

// Depthwise K×K convolution, batch 8: args {channels, size, kernel, stride}. Reports multiply-add
// throughput (2 FLOPs per tap).
void BM_Depthwise(benchmark::State& state) {
  use_two_threads();
  ConvGeometry g;
  g.batch = 8;
  g.in_channels = g.out_channels = g.group = state.range(0);
  g.in_h = g.in_w = state.range(1);
  g.kernel_h = g.kernel_w = state.range(2);
  g.stride_h = g.stride_w = state.range(3);
  g.pad_top = g.pad_left = g.kernel_h / 2;
  g.out_h = (g.in_h + 2 * g.pad_top - g.kernel_h) / g.stride_h + 1;
  g.out_w = (g.in_w + 2 * g.pad_left - g.kernel_w) / g.stride_w + 1;
  const ConvPlan plan = plan_conv(g, 2);
  const auto x = random_floats(static_cast<size_t>(g.batch * g.in_channels * g.in_h * g.in_w), 1);
  const auto w = random_floats(static_cast<size_t>(g.out_channels * g.kernel_h * g.kernel_w), 2);
  const auto b = random_floats(static_cast<size_t>(g.out_channels), 3);
  std::vector<float> y(static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w));
  std::vector<std::byte> ws(conv_workspace_bytes(plan) + 64);
  for (auto _ : state) {
    conv2d(plan, x.data(), w.data(), b.data(), y.data(), ws.data(), {});
    benchmark::DoNotOptimize(y.data());
  }
  const double flops = 2.0 * static_cast<double>(y.size() * g.kernel_h * g.kernel_w);
  state.counters["GFLOP/s"] = benchmark::Counter(
      flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Depthwise)
    ->Args({96, 56, 7, 1})   // ConvNeXt-T stage 1
    ->Args({768, 7, 7, 1})   // ConvNeXt-T stage 4
    ->Args({96, 112, 3, 2})  // EfficientNet-B0 block 2
    ->Args({480, 14, 5, 1})  // EfficientNet-B0 block 5
    ->Args({672, 14, 5, 2})  // EfficientNet-B0 block 6
    ->Args({576, 7, 5, 1})   // MobileNetV3-small last blocks
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// One sgemm call of `rows` rows against a [k, n] weight, single-threaded: how much a larger
// row block saves on OpenBLAS's per-call packing of the weights. Args {rows, k, n}.
void BM_SgemmRowBlock(benchmark::State& state) {
  const int64_t rows = state.range(0), k = state.range(1), n = state.range(2);
  const auto a = random_floats(static_cast<size_t>(rows * k), 4);
  const auto b = random_floats(static_cast<size_t>(k * n), 5);
  std::vector<float> c(static_cast<size_t>(rows * n));
  qforge::runtime::set_num_threads(1);
  for (auto _ : state) {
    sgemm(Transpose::kNo, Transpose::kNo, rows, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f,
          c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(rows * k * n),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_SgemmRowBlock)
    ->ArgsProduct({{64, 256, 512}, {768}, {768, 3072}})
    ->Args({64, 3072, 768})
    ->Args({256, 3072, 768})
    ->Args({512, 3072, 768})
    ->Args({64, 96, 384})  // ConvNeXt-T stage 1 MLP, below the big-block weight threshold
    ->Args({256, 96, 384})
    ->Args({64, 384, 96})
    ->Args({256, 384, 96})
    ->Unit(benchmark::kMillisecond);

// gemm() as ViT's Linear layers run it at batch 8 (1576 rows). Args {m, k, n}.
void BM_Gemm(benchmark::State& state) {
  use_two_threads();
  GemmDims d;
  d.m = state.range(0);
  d.k = state.range(1);
  d.n = state.range(2);
  d.trans_b = Transpose::kYes;
  d.bias = GemmBias::kRow;
  const auto a = random_floats(static_cast<size_t>(d.m * d.k), 6);
  const auto b = random_floats(static_cast<size_t>(d.k * d.n), 7);
  const auto bias = random_floats(static_cast<size_t>(d.n), 8);
  std::vector<float> y(static_cast<size_t>(d.m * d.n));
  std::vector<std::byte> ws(gemm_workspace_bytes(d) + 64);
  for (auto _ : state) {
    gemm(d, a.data(), b.data(), bias.data(), y.data(), ws.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(d.m * d.k * d.n),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Gemm)
    ->Args({1576, 768, 768})
    ->Args({1576, 768, 3072})
    ->Args({1576, 3072, 768})
    ->Args({8, 576, 1024})  // MobileNetV3-small classifier
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// LayerNorm over the channels of ConvNeXt-T stage 1 (8·56·56 rows of 96). Reports GB/s moved.
void BM_LayerNorm(benchmark::State& state) {
  use_two_threads();
  LayerNormDims d;
  d.rows = state.range(0);
  d.size = state.range(1);
  d.epsilon = 1e-6f;
  const auto x = random_floats(static_cast<size_t>(d.rows * d.size), 9);
  const auto scale = random_floats(static_cast<size_t>(d.size), 10);
  const auto bias = random_floats(static_cast<size_t>(d.size), 11);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    layer_norm(d, x.data(), scale.data(), bias.data(), y.data(), nullptr, nullptr);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GB/s"] = benchmark::Counter(8.0 * static_cast<double>(x.size()),
                                              benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(BM_LayerNorm)->Args({8 * 56 * 56, 96})->Args({8 * 197, 768})->UseRealTime();

// Element-wise unary ops on ConvNeXt-T's stage-1 MLP activations (8·56·56·384 values).
void BM_Unary(benchmark::State& state) {
  use_two_threads();
  const auto op = static_cast<UnaryOp>(state.range(0));
  const auto x = random_floats(static_cast<size_t>(8 * 56 * 56 * 384), 12);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    unary_f32(op, UnaryParams{}, x.data(), y.data(), static_cast<int64_t>(x.size()));
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GB/s"] = benchmark::Counter(8.0 * static_cast<double>(x.size()),
                                              benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Unary)
    ->Arg(static_cast<int>(UnaryOp::kErf))
    ->Arg(static_cast<int>(UnaryOp::kSigmoid))
    ->Arg(static_cast<int>(UnaryOp::kRelu))
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
