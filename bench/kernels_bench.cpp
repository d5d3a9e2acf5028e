// Micro benchmarks of the kernels that dominate ResNet, MobileNetV3, EfficientNet, ConvNeXt and
// ViT at batch 8: dense and depthwise convolution, the packed GEMM's micro-kernel, GEMM row
// blocking, LayerNorm and GELU's Erf. Threads follow the process setting (runtime/threads.h);
// run with --benchmark_filter to pick one.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/conv.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/packed_gemm.h"
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

// Threads for every benchmark: the 2 cores the end-to-end comparisons use, or
// QFORGE_BENCH_THREADS (1 gives CPU times that stay comparable on a loaded machine).
void use_two_threads() {
  const char* env = std::getenv("QFORGE_BENCH_THREADS");
  qforge::runtime::set_num_threads(env ? std::max(1, std::atoi(env)) : 2);
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
    ->Args({32, 112, 3, 1})  // EfficientNet-B0 block 1
    ->Args({144, 56, 3, 1})  // EfficientNet-B0 block 2, second
    ->Args({72, 56, 3, 2})   // MobileNetV3-small block 2
    ->Args({480, 14, 5, 1})  // EfficientNet-B0 block 5
    ->Args({672, 14, 5, 2})  // EfficientNet-B0 block 6
    ->Args({576, 7, 5, 1})   // MobileNetV3-small last blocks
    ->Args({88, 28, 3, 1})   // MobileNetV3-small block 3
    ->Args({240, 28, 5, 1})  // 28×28, 5×5
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Dense convolution at batch 8 with its fused epilogue (scale, shift, ReLU), with the constant
// weights prepared once, as the runtime runs ResNet-50's and EfficientNet-B0's layers: args
// {in_channels, in_size, out_channels, kernel, stride, packed GEMM forced (1) or OpenBLAS (0)}.
// Reports multiply-add throughput (2 FLOPs per MAC); the CPU time is the whole process's, which
// stays comparable while other jobs load the machine. QFORGE_BENCH_RESIDUAL=1 adds a residual
// to the epilogue (a bottleneck block's last 1×1); QFORGE_BENCH_COPIES=N cycles through N copies
// of the input, output, residual and prepared weights, so that, as in a network, they come from
// memory rather than from the caches of the previous iteration (8 copies of a ResNet-50 layer
// exceed a 32 MiB L3).
void conv_benchmark(benchmark::State& state, int64_t batch, bool prepare);

void BM_Conv(benchmark::State& state) {
  conv_benchmark(state, 8, true);
}

// The same as a training forward runs it: batch 16 and the weights as they are (they change every
// step), so each call prepares them (Winograd transform, packing) itself; ResNet-18's layers.
void BM_ConvTraining(benchmark::State& state) {
  conv_benchmark(state, 16, false);
}

void conv_benchmark(benchmark::State& state, int64_t batch, bool prepare) {
  use_two_threads();
  ConvGeometry g;
  g.batch = batch;
  g.in_channels = state.range(0);
  g.in_h = g.in_w = state.range(1);
  g.out_channels = state.range(2);
  g.kernel_h = g.kernel_w = state.range(3);
  g.stride_h = g.stride_w = state.range(4);
  g.pad_top = g.pad_left = g.kernel_h / 2;
  g.out_h = (g.in_h + 2 * g.pad_top - g.kernel_h) / g.stride_h + 1;
  g.out_w = (g.in_w + 2 * g.pad_left - g.kernel_w) / g.stride_w + 1;
  ConvPlanOptions options;
  // 1: the packed GEMM, 0: OpenBLAS, 2: the shallow direct path.
  options.gemm = state.range(5) == 2   ? ConvGemm::kShallow
                 : state.range(5) != 0 ? ConvGemm::kPacked
                                       : ConvGemm::kBlas;
  const ConvPlan plan = plan_conv(g, 2, options);
  const auto x = random_floats(static_cast<size_t>(g.batch * g.in_channels * g.in_h * g.in_w), 1);
  const auto w = random_floats(
      static_cast<size_t>(g.out_channels * g.in_channels * g.kernel_h * g.kernel_w), 2);
  const auto b = random_floats(static_cast<size_t>(g.out_channels), 3);
  const auto scale = random_floats(static_cast<size_t>(g.out_channels), 4);
  std::vector<float> prepared(prepare ? conv_prepared_weight_floats(plan) : 0);
  if (prepare) prepare_conv_weights(plan, w.data(), prepared.data());
  std::vector<float> y(static_cast<size_t>(g.batch * g.out_channels * g.out_h * g.out_w));
  std::vector<std::byte> ws(
      conv_workspace_bytes(plan, prepare ? ConvWeightForm::kPrepared : ConvWeightForm::kRaw) + 64);
  ConvEpilogue e;
  e.scale = scale.data();
  e.shift = b.data();
  e.clamp_min = 0.0f;
  const char* copies_env = std::getenv("QFORGE_BENCH_COPIES");
  const int copies = copies_env ? std::max(1, std::atoi(copies_env)) : 1;
  std::vector<std::vector<float>> xs(copies, x), ys(copies, y), ps(copies, prepared);
  const bool residual = std::getenv("QFORGE_BENCH_RESIDUAL") != nullptr;
  std::vector<std::vector<float>> rs(residual ? copies : 0, random_floats(y.size(), 6));
  int turn = 0;
  for (auto _ : state) {
    const int i = turn++ % copies;
    if (residual) e.residual = rs[i].data();
    conv2d(plan, xs[i].data(), w.data(), b.data(), ys[i].data(), ws.data(), e,
           prepared.empty() ? nullptr : ps[i].data());
    benchmark::DoNotOptimize(ys[i].data());
  }
  const double flops =
      2.0 * static_cast<double>(y.size() * g.in_channels * g.kernel_h * g.kernel_w);
  state.counters["GFLOP/s"] = benchmark::Counter(
      flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Conv)
    ->Args({3, 224, 64, 7, 2, 1})  // stem
    ->Args({3, 224, 64, 7, 2, 0})
    ->Args({3, 224, 16, 3, 2, 1})  // MobileNetV3 stem
    ->Args({3, 224, 16, 3, 2, 0})
    ->Args({3, 224, 32, 3, 2, 1})  // EfficientNet-B0 stem
    ->Args({3, 224, 32, 3, 2, 0})
    ->Args({64, 56, 64, 1, 1, 1})  // layer1
    ->Args({64, 56, 64, 1, 1, 0})
    ->Args({64, 56, 64, 3, 1, 1})  // layer1 3×3 (Winograd)
    ->Args({64, 56, 64, 3, 1, 0})
    ->Args({64, 56, 256, 1, 1, 1})  // layer1 expand and downsample
    ->Args({64, 56, 256, 1, 1, 0})
    ->Args({256, 56, 64, 1, 1, 1})  // layer1 reduce
    ->Args({256, 56, 64, 1, 1, 0})
    ->Args({256, 56, 128, 1, 1, 1})  // layer2 first reduce
    ->Args({256, 56, 128, 1, 1, 0})
    ->Args({128, 56, 128, 3, 2, 1})  // layer2 3×3 stride 2
    ->Args({128, 56, 128, 3, 2, 0})
    ->Args({256, 56, 512, 1, 2, 1})  // layer2 downsample
    ->Args({256, 56, 512, 1, 2, 0})
    ->Args({128, 28, 512, 1, 1, 1})  // layer2 expand
    ->Args({128, 28, 512, 1, 1, 0})
    ->Args({512, 28, 128, 1, 1, 1})  // layer2 reduce
    ->Args({512, 28, 128, 1, 1, 0})
    ->Args({128, 28, 128, 3, 1, 1})  // layer2 3×3 (Winograd)
    ->Args({128, 28, 128, 3, 1, 0})
    ->Args({256, 28, 256, 3, 2, 1})  // layer3 3×3 stride 2
    ->Args({256, 28, 256, 3, 2, 0})
    ->Args({256, 14, 1024, 1, 1, 1})  // layer3 expand
    ->Args({256, 14, 1024, 1, 1, 0})
    ->Args({1024, 14, 256, 1, 1, 1})  // layer3 reduce
    ->Args({1024, 14, 256, 1, 1, 0})
    ->Args({512, 28, 1024, 1, 2, 1})  // layer3 downsample
    ->Args({512, 28, 1024, 1, 2, 0})
    ->Args({256, 14, 256, 3, 1, 1})  // layer3 3×3 (Winograd)
    ->Args({256, 14, 256, 3, 1, 0})
    ->Args({512, 14, 512, 3, 2, 1})  // layer4 3×3 stride 2
    ->Args({512, 14, 512, 3, 2, 0})
    ->Args({512, 7, 2048, 1, 1, 1})  // layer4 expand
    ->Args({512, 7, 2048, 1, 1, 0})
    ->Args({2048, 7, 512, 1, 1, 1})  // layer4 reduce
    ->Args({2048, 7, 512, 1, 1, 0})
    ->Args({1024, 14, 2048, 1, 2, 1})  // layer4 downsample
    ->Args({1024, 14, 2048, 1, 2, 0})
    ->Args({512, 7, 512, 3, 1, 1})  // layer4 3×3 (Winograd)
    ->Args({512, 7, 512, 3, 1, 0})
    ->Args({144, 56, 24, 1, 1, 1})  // EfficientNet-B0 projections
    ->Args({144, 56, 24, 1, 1, 0})
    ->Args({240, 28, 40, 1, 1, 1})
    ->Args({240, 28, 40, 1, 1, 0})
    ->Args({480, 14, 80, 1, 1, 1})
    ->Args({480, 14, 80, 1, 1, 0})
    ->Args({672, 14, 112, 1, 1, 1})
    ->Args({672, 14, 112, 1, 1, 0})
    ->Args({1152, 7, 192, 1, 1, 1})
    ->Args({1152, 7, 192, 1, 1, 0})
    ->Args({16, 112, 96, 1, 1, 1})  // EfficientNet-B0 expansions
    ->Args({16, 112, 96, 1, 1, 0})
    ->Args({24, 56, 144, 1, 1, 1})
    ->Args({24, 56, 144, 1, 1, 0})
    ->Args({40, 28, 240, 1, 1, 1})
    ->Args({40, 28, 240, 1, 1, 0})
    ->Args({32, 112, 16, 1, 1, 1})
    ->Args({32, 112, 16, 1, 1, 0})
    ->Args({80, 14, 480, 1, 1, 1})
    ->Args({80, 14, 480, 1, 1, 0})
    ->Args({192, 7, 1152, 1, 1, 1})
    ->Args({192, 7, 1152, 1, 1, 0})
    ->Args({320, 7, 1280, 1, 1, 1})  // EfficientNet-B0 head
    ->Args({320, 7, 1280, 1, 1, 0})
    ->Args({48, 1, 1152, 1, 1, 1})  // EfficientNet-B0 squeeze-excitation
    ->Args({48, 1, 1152, 1, 1, 0})
    ->Args({1152, 1, 48, 1, 1, 1})
    ->Args({1152, 1, 48, 1, 1, 0})
    ->Args({3, 224, 32, 3, 2, 1})  // EfficientNet-B0 stem
    ->Args({3, 224, 32, 3, 2, 0})
    ->Args({3, 224, 32, 3, 2, 2})
    ->Args({3, 224, 16, 3, 2, 2})  // MobileNetV3 stem
    ->Args({16, 56, 72, 1, 1, 1})  // MobileNetV3 expansion
    ->Args({16, 56, 72, 1, 1, 0})
    ->Args({16, 56, 72, 1, 1, 2})
    ->Args({16, 112, 96, 1, 1, 2})  // EfficientNet-B0 16-deep expansion
    ->Args({32, 112, 16, 1, 1, 2})  // EfficientNet-B0 32-deep projection
    ->Args({24, 56, 144, 1, 1, 2})  // EfficientNet-B0 24-deep expansion
    ->Args({20, 1, 480, 1, 1, 1})   // EfficientNet-B0 squeeze-excitation expansion
    ->Args({20, 1, 480, 1, 1, 0})
    ->Args({20, 1, 480, 1, 1, 2})
    ->Args({40, 28, 240, 1, 1, 2})
    ->Args({64, 56, 64, 1, 1, 2})
    ->Args({64, 56, 256, 1, 1, 2})
    ->Args({80, 14, 480, 1, 1, 2})
    ->Args({128, 28, 512, 1, 1, 2})
    ->Args({144, 56, 24, 1, 1, 2})
    ->Args({3, 224, 64, 7, 2, 2})
    ->Args({96, 56, 384, 1, 1, 1})
    ->Args({96, 56, 384, 1, 1, 2})
    ->Args({112, 14, 672, 1, 1, 1})
    ->Args({112, 14, 672, 1, 1, 2})
    ->Args({160, 7, 960, 1, 1, 1})
    ->Args({160, 7, 960, 1, 1, 2})
    ->Args({96, 7, 576, 1, 1, 1})
    ->Args({96, 7, 576, 1, 1, 2})
    ->Args({128, 28, 512, 1, 1, 2})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime();
BENCHMARK(BM_ConvTraining)
    ->Args({3, 224, 64, 7, 2, 1})  // stem
    ->Args({64, 56, 64, 3, 1, 1})
    ->Args({64, 56, 128, 3, 2, 1})
    ->Args({128, 28, 128, 3, 1, 1})
    ->Args({128, 28, 256, 3, 2, 1})
    ->Args({256, 14, 256, 3, 1, 1})
    ->Args({256, 14, 512, 3, 2, 1})
    ->Args({512, 7, 512, 3, 1, 1})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime();

// The packed GEMM's micro-kernel alone, single-threaded, on an L2-resident problem: rows × k
// times k × cols, every micro-tile over the whole depth (args {rows, k, cols}).
void BM_PackedGemmTiles(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  const auto a = random_floats(static_cast<size_t>(m * k), 4);
  std::vector<float> packed(packed_rows_floats(m, k));
  pack_rows(a.data(), k, m, k, packed.data());
  const int64_t col_panels = (n + kPackedCols - 1) / kPackedCols;
  const auto b = random_floats(static_cast<size_t>(col_panels * k * kPackedCols), 5);
  std::vector<float> c(static_cast<size_t>(m * n));
  for (auto _ : state) {
    for (int64_t r0 = 0; r0 < m; r0 += kPackedRows) {
      for (int64_t cp = 0; cp < col_panels; ++cp) {
        packed_gemm_tile(k, packed.data() + r0 * k, b.data() + cp * k * kPackedCols, kPackedCols,
                         std::min(kPackedRows, m - r0), std::min(kPackedCols, n - cp * kPackedCols),
                         nullptr, 0, c.data() + r0 * n + cp * kPackedCols, n, nullptr);
      }
    }
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m * k * n),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_PackedGemmTiles)->Args({252, 256, 256})->Args({70, 64, 256})->Args({252, 256, 64});

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

// A Linear layer as torch.onnx writes it for rank-3 inputs, MatMul(x, W) → Add(·, b), weights
// prepared once: args {rows, k, n, fused}: fused 1 runs matmul_add_row (the runtime's MatMulAdd),
// 0 the MatMul and then the broadcast Add, as the two nodes run. ConvNeXt-T's stage-1 MLP at
// batch 8 (25088 rows) and ViT-B's (1576 rows).
void BM_MatMulAdd(benchmark::State& state) {
  use_two_threads();
  const int64_t rows = state.range(0), k = state.range(1), n = state.range(2);
  const MatMulDims d = *matmul_dims(std::vector<int64_t>{rows, k}, std::vector<int64_t>{k, n});
  const auto a = random_floats(static_cast<size_t>(rows * k), 6);
  const auto w = random_floats(static_cast<size_t>(k * n), 7);
  Tensor bias(DType::kFloat32, {n});
  const auto bias_values = random_floats(static_cast<size_t>(n), 8);
  std::copy(bias_values.begin(), bias_values.end(), bias.data<float>());
  std::vector<float> prepared(matmul_prepared_weight_floats(d));
  prepare_matmul_weights(d, w.data(), prepared.data());
  Tensor y(DType::kFloat32, {rows, n});
  std::vector<std::byte> ws(matmul_workspace_bytes(d, GemmWeightForm::kPrepared) + 64);
  const Shape shapes[] = {{rows, n}, {n}};
  const BroadcastPlan plan = plan_broadcast(shapes);
  for (auto _ : state) {
    if (state.range(3) != 0) {
      matmul_add_row(d, a.data(), w.data(), bias.data<float>(), y.data<float>(), ws.data(),
                     prepared.data());
    } else {
      matmul(d, a.data(), w.data(), y.data<float>(), ws.data(), prepared.data());
      binary(BinaryOp::kAdd, plan, y, bias, y);
    }
    benchmark::DoNotOptimize(y.data<float>());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(rows * k * n),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_MatMulAdd)
    ->ArgsProduct({{25088}, {96}, {384}, {0, 1}})
    ->ArgsProduct({{25088}, {384}, {96}, {0, 1}})
    ->ArgsProduct({{1576}, {768}, {3072}, {0, 1}})
    ->ArgsProduct({{1576}, {3072}, {768}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// gemm() as ViT's Linear layers run it at batch 8 (1576 rows): nn.Linear weights ([n, k],
// transB) and a bias per column. Args {m, k, n, prepared}: prepared 1 packs the weights once
// for the packed micro-kernel (as the runtime does for constant weights), 0 runs OpenBLAS.
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
  std::vector<float> prepared(state.range(3) != 0 ? gemm_prepared_weight_floats(d) : 0);
  if (!prepared.empty()) prepare_gemm_weights(d, b.data(), prepared.data());
  std::vector<float> y(static_cast<size_t>(d.m * d.n));
  std::vector<std::byte> ws(
      gemm_workspace_bytes(d, prepared.empty() ? GemmWeightForm::kRaw : GemmWeightForm::kPrepared) +
      64);
  for (auto _ : state) {
    gemm(d, a.data(), b.data(), bias.data(), y.data(), ws.data(),
         prepared.empty() ? nullptr : prepared.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(d.m * d.k * d.n),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Gemm)
    ->ArgsProduct({{1576}, {768}, {768, 2304, 3072}, {0, 1}})
    ->Args({1576, 3072, 768, 0})
    ->Args({1576, 3072, 768, 1})
    ->Args({8, 576, 1024, 0})  // MobileNetV3-small classifier
    ->Args({8, 576, 1024, 1})
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

// LayerNorm backward (dx, dscale, dbias from x, dy and the saved statistics) on the same shapes.
// Reports GB/s over the two tensors read and the one written.
void BM_LayerNormBackward(benchmark::State& state) {
  use_two_threads();
  LayerNormDims d;
  d.rows = state.range(0);
  d.size = state.range(1);
  d.epsilon = 1e-6f;
  const auto x = random_floats(static_cast<size_t>(d.rows * d.size), 9);
  const auto dy = random_floats(x.size(), 13);
  const auto scale = random_floats(static_cast<size_t>(d.size), 10);
  const auto bias = random_floats(static_cast<size_t>(d.size), 11);
  std::vector<float> y(x.size()), dx(x.size()), mean(static_cast<size_t>(d.rows)),
      inv(static_cast<size_t>(d.rows)), dscale(scale.size()), dbias(scale.size());
  layer_norm(d, x.data(), scale.data(), bias.data(), y.data(), mean.data(), inv.data());
  for (auto _ : state) {
    layer_norm_backward(d, x.data(), scale.data(), mean.data(), inv.data(), dy.data(), dx.data(),
                        dscale.data(), dbias.data());
    benchmark::DoNotOptimize(dx.data());
  }
  state.counters["GB/s"] = benchmark::Counter(12.0 * static_cast<double>(x.size()),
                                              benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(BM_LayerNormBackward)->Args({8 * 56 * 56, 96})->Args({8 * 197, 768})->UseRealTime();

// BatchNormalization in training mode, forward then backward, on a ResNet-18 stage-1 tensor
// (batch 8, 64 channels, 56·56). Reports GB/s over the tensors read and written (x, y; x, dy, dx).
void BM_BatchNormTraining(benchmark::State& state) {
  use_two_threads();
  const BatchNormDims d{8, state.range(0), state.range(1) * state.range(1), 1e-5f};
  const auto c = static_cast<size_t>(d.channels);
  const auto x = random_floats(static_cast<size_t>(d.batch * d.channels * d.inner), 14);
  const auto dy = random_floats(x.size(), 15);
  const auto gamma = random_floats(c, 16);
  const auto beta = random_floats(c, 17);
  std::vector<float> y(x.size()), dx(x.size()), mean(c), inv(c), rm(c, 0.0f), rv(c, 1.0f),
      dgamma(c), dbeta(c);
  for (auto _ : state) {
    batch_norm_training(d, {}, x.data(), gamma.data(), beta.data(), y.data(), mean.data(),
                        inv.data(), rm.data(), rv.data());
    batch_norm_training_backward(d, x.data(), gamma.data(), mean.data(), inv.data(), dy.data(),
                                 dx.data(), dgamma.data(), dbeta.data());
    benchmark::DoNotOptimize(dx.data());
  }
  state.counters["GB/s"] = benchmark::Counter(20.0 * static_cast<double>(x.size()),
                                              benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(BM_BatchNormTraining)->Args({64, 56})->Args({512, 7})->UseRealTime();

// Activation backward dx = dy·f'(x) on ConvNeXt-T's stage-1 MLP activations. Reports GB/s over
// x, dy and dx.
void BM_UnaryBackward(benchmark::State& state) {
  use_two_threads();
  const auto op = static_cast<UnaryOp>(state.range(0));
  const auto x = random_floats(static_cast<size_t>(8 * 56 * 56 * 384), 12);
  const auto dy = random_floats(x.size(), 18);
  std::vector<float> dx(x.size());
  for (auto _ : state) {
    unary_backward_f32(op, UnaryParams{}, x.data(), dy.data(), dx.data(),
                       static_cast<int64_t>(x.size()));
    benchmark::DoNotOptimize(dx.data());
  }
  state.counters["GB/s"] = benchmark::Counter(12.0 * static_cast<double>(x.size()),
                                              benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(BM_UnaryBackward)
    ->Arg(static_cast<int>(UnaryOp::kGeluErf))
    ->Arg(static_cast<int>(UnaryOp::kHardSwish))
    ->Arg(static_cast<int>(UnaryOp::kRelu))
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

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
    ->Arg(static_cast<int>(UnaryOp::kGeluErf))
    ->Arg(static_cast<int>(UnaryOp::kSilu))
    ->Arg(static_cast<int>(UnaryOp::kSigmoid))
    ->Arg(static_cast<int>(UnaryOp::kRelu))
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
