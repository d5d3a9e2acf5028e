// The arena placement the inference and training executors share: buffers alive at a common
// time never overlap, buffers that are not may share memory; and the training executor's arena
// over forward and backward: smaller than its buffers unshared on a chain, outputs intact after
// backward, and the same gradients step after step over memory that earlier steps left behind.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "graph/ir.h"
#include "runtime/arena_plan.h"
#include "runtime/resolve.h"
#include "runtime/training.h"
#include "tests/support/graph_builders.h"
#include "tests/support/random.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;
using runtime::ArenaBuffer;

TEST(ArenaPlan, BuffersAliveTogetherNeverOverlap) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> time(0, 40), length(0, 8), size(1, 37);
  std::vector<ArenaBuffer> buffers(200);
  for (ArenaBuffer& b : buffers) {
    b.first = time(rng);
    b.last = b.first + length(rng);
    b.bytes = runtime::arena_aligned(static_cast<size_t>(size(rng)) * 100);
  }
  const size_t arena = runtime::place_in_arena(buffers);
  size_t unshared = 0;
  for (size_t i = 0; i < buffers.size(); ++i) {
    const ArenaBuffer& a = buffers[i];
    unshared += a.bytes;
    EXPECT_EQ(a.offset % kernels::kTensorAlignment, 0u);
    EXPECT_LE(a.offset + a.bytes, arena);
    for (size_t j = i + 1; j < buffers.size(); ++j) {
      const ArenaBuffer& b = buffers[j];
      const bool alive_together = a.first <= b.last && b.first <= a.last;
      const bool overlap = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
      EXPECT_FALSE(alive_together && overlap) << i << " and " << j;
    }
  }
  EXPECT_LT(arena, unshared);
}

TEST(ArenaPlan, DisjointLifetimesShareOneOffset) {
  std::vector<ArenaBuffer> buffers = {{.bytes = 128, .first = 0, .last = 1},
                                      {.bytes = 128, .first = 2, .last = 3},
                                      {.bytes = 64, .first = 1, .last = 2}};
  EXPECT_EQ(runtime::place_in_arena(buffers), 192u);
  EXPECT_EQ(buffers[0].offset, buffers[1].offset);
  EXPECT_EQ(buffers[2].offset, 128u);
}

// x → [Mul by w_i (broadcast per channel), Relu] × 6 → y, with a fan-out at the first Relu.
std::unique_ptr<graph::Graph> chain(std::mt19937& rng) {
  auto g = std::make_unique<graph::Graph>();
  graph::Value* v = g->add_input("x", DType::kFloat32, graph::Shape{4, 3, 8, 8});
  graph::Value* first = nullptr;
  for (int i = 0; i < 6; ++i) {
    const std::string n = std::to_string(i);
    graph::Value* w = g->add_constant("w" + n, testing::random_tensor({1, 3, 1, 1}, rng, 0.5, 1.5));
    v = testing::add(*g, "relu" + n, "Relu", {testing::add(*g, "mul" + n, "Mul", {v, w})});
    if (!first) first = v;
  }
  g->mark_output(testing::add(*g, "sum", "Add", {v, first}));
  return g;
}

TEST(TrainingArena, SharesMemoryKeepsOutputsAndRepeatsGradients) {
  std::mt19937 rng(17);
  std::unique_ptr<graph::Graph> g = chain(rng);
  const std::vector<std::string> parameters = runtime::trainable_initializers(*g);
  runtime::ResolveOptions options;
  options.parameters.insert(parameters.begin(), parameters.end());
  runtime::resolve(*g, options);
  runtime::TrainingExecutor executor(*g, runtime::TrainingOptions{parameters});
  EXPECT_LT(executor.arena_bytes(), executor.unshared_bytes());

  const Tensor input = testing::random_tensor({4, 3, 8, 8}, rng, -1, 1);
  const Tensor dy = testing::random_tensor({4, 3, 8, 8}, rng, -1, 1);
  std::vector<std::vector<float>> first_grads;
  for (int step = 0; step < 3; ++step) {
    const Tensor out = executor.forward({&input, 1})[0];
    const std::vector<float> before(out.data<float>(), out.data<float>() + out.numel());
    executor.backward({&dy, 1});
    const std::vector<float> after(out.data<float>(), out.data<float>() + out.numel());
    EXPECT_EQ(before, after) << "step " << step << ": backward overwrote the output";
    std::vector<std::vector<float>> grads;
    for (const runtime::Parameter& p : std::as_const(executor).parameters()) {
      grads.emplace_back(p.grad.data<float>(), p.grad.data<float>() + p.grad.numel());
    }
    if (step == 0) {
      first_grads = grads;
    } else {
      EXPECT_EQ(grads, first_grads) << "step " << step;
    }
  }
}

// x → [Mul by w_i, Relu, FakeQuant] × 4 → Mul → y, or with Softmax (whose backward reads its
// output, the fake quant's input) in place of every Relu. With "Input", x itself passes a fake
// quant first (one that no gradient reaches, so it has no backward) and no activation follows.
std::unique_ptr<graph::Graph> quantized_chain(std::mt19937& rng, const char* activation) {
  auto g = std::make_unique<graph::Graph>();
  graph::Value* v = g->add_input("x", DType::kFloat32, graph::Shape{4, 3, 8, 8});
  Tensor scale(DType::kFloat32, {});
  scale.data<float>()[0] = 0.01f;
  Tensor zero_point(DType::kInt8, {});
  zero_point.data<int8_t>()[0] = 0;
  graph::Value* s = g->add_constant("scale", scale);
  graph::Value* zp = g->add_constant("zero_point", zero_point);
  if (std::string(activation) == "Input") {
    v = testing::add(*g, "fq_input", "FakeQuant", {v, s, zp});
    for (int i = 0; i < 4; ++i) {
      const std::string n = std::to_string(i);
      graph::Value* w =
          g->add_constant("w" + n, testing::random_tensor({1, 3, 1, 1}, rng, 0.5, 1.5));
      v = testing::add(*g, "mul" + n, "Mul", {v, w});
    }
    graph::Value* w = g->add_constant("w_out", testing::random_tensor({1, 3, 1, 1}, rng, 0.5, 1.5));
    g->mark_output(testing::add(*g, "out", "Mul", {v, w}));
    return g;
  }
  for (int i = 0; i < 4; ++i) {
    const std::string n = std::to_string(i);
    graph::Value* w = g->add_constant("w" + n, testing::random_tensor({1, 3, 1, 1}, rng, 0.5, 1.5));
    v = testing::add(*g, "mul" + n, "Mul", {v, w});
    v = testing::add(*g, "act" + n, activation, {v});
    v = testing::add(*g, "fq" + n, "FakeQuant", {v, s, zp});
  }
  graph::Value* w = g->add_constant("w_out", testing::random_tensor({1, 3, 1, 1}, rng, 0.5, 1.5));
  g->mark_output(testing::add(*g, "out", "Mul", {v, w}));
  return g;
}

struct StepResult {
  size_t arena_bytes = 0;
  std::vector<std::vector<float>> values;  // the output, then every parameter gradient, per step
};

StepResult train_chain(const char* activation, bool compact_records) {
  std::mt19937 rng(23);
  std::unique_ptr<graph::Graph> g = quantized_chain(rng, activation);
  const std::vector<std::string> parameters = {"w0", "w1", "w2", "w3", "w_out"};
  runtime::ResolveOptions options;
  options.parameters.insert(parameters.begin(), parameters.end());
  runtime::resolve(*g, options);
  runtime::TrainingOptions training{parameters};
  training.compact_records = compact_records;
  runtime::TrainingExecutor executor(*g, training);
  StepResult result;
  result.arena_bytes = executor.arena_bytes();
  const Tensor input = testing::random_tensor({4, 3, 8, 8}, rng, -1, 1);
  const Tensor dy = testing::random_tensor({4, 3, 8, 8}, rng, -1, 1);
  for (int step = 0; step < 2; ++step) {
    const Tensor out = executor.forward({&input, 1})[0];
    result.values.emplace_back(out.data<float>(), out.data<float>() + out.numel());
    executor.backward({&dy, 1});
    for (runtime::Parameter& p : executor.parameters()) {
      result.values.emplace_back(p.grad.data<float>(), p.grad.data<float>() + p.grad.numel());
      // A small step, so that the second step's fake quants see other values.
      float* w = p.value.data<float>();
      for (int64_t i = 0; i < p.value.numel(); ++i) w[i] *= 0.9f;
    }
  }
  return result;
}

// ReLU keeps a bit per element and the fake quant its integers and a bit, so neither keeps a
// float tensor: the same outputs and gradients, bit for bit, in a smaller arena.
TEST(TrainingArena, RecordsKeepTheBitsInASmallerArena) {
  const StepResult compact = train_chain("Relu", true);
  const StepResult full = train_chain("Relu", false);
  EXPECT_EQ(compact.values, full.values);
  EXPECT_LT(compact.arena_bytes, full.arena_bytes);
}

// A fake quant of the model's input has no backward, but the Mul after it reads its output for
// its weight's gradient: it keeps its integers, and the output is made again from them.
TEST(TrainingArena, AFakeQuantWithoutBackwardKeepsItsIntegers) {
  const StepResult compact = train_chain("Input", true);
  const StepResult full = train_chain("Input", false);
  EXPECT_EQ(compact.values, full.values);
  EXPECT_LT(compact.arena_bytes, full.arena_bytes);
}

// Softmax's backward reads its output, the fake quant's input, which is then kept anyway: the
// fake quant declines its record (it would cost memory and spare nothing), and the arena is the
// one without records.
TEST(TrainingArena, ARecordThatSparesNothingIsDeclined) {
  const StepResult compact = train_chain("Softmax", true);
  const StepResult full = train_chain("Softmax", false);
  EXPECT_EQ(compact.values, full.values);
  EXPECT_EQ(compact.arena_bytes, full.arena_bytes);
}

}  // namespace
}  // namespace qforge
