// Training over a batch cut into shards (runtime/training.h, ShardLayout): the step on shards
// is the whole batch's step (synchronised BN, gradients and loss summed over the shards), and
// its bits depend only on the shards, not on which process holds them (ranks played by threads).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/training.h"
#include "tests/support/errors.h"
#include "tests/support/graph_builders.h"
#include "tests/support/random.h"
#include "tests/support/thread_ranks.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::add;

constexpr int64_t kClasses = 5;

// x [N, 3, 6, 6] → Conv 3×3 → BatchNormalization (batch statistics) → Relu →
// GlobalAveragePool → Flatten → Gemm → logits [N, 5].
std::unique_ptr<graph::Graph> small_bn_classifier() {
  std::mt19937 rng(11);
  auto g = std::make_unique<graph::Graph>();
  graph::Value* x = g->add_input("x", DType::kFloat32, graph::Shape{8, 3, 6, 6});
  graph::Value* w1 = g->add_constant("w1", testing::random_tensor({4, 3, 3, 3}, rng, -0.5, 0.5));
  graph::Value* b1 = g->add_constant("b1", testing::random_tensor({4}, rng, -0.1, 0.1));
  graph::Value* conv = add(
      *g, "conv", "Conv", {x, w1, b1},
      {{"pads", std::vector<int64_t>{1, 1, 1, 1}}, {"kernel_shape", std::vector<int64_t>{3, 3}}});
  graph::Value* gamma = g->add_constant("gamma", testing::random_tensor({4}, rng, 0.5, 1.5));
  graph::Value* beta = g->add_constant("beta", testing::random_tensor({4}, rng, -0.2, 0.2));
  graph::Value* mean = g->add_constant("mean", testing::random_tensor({4}, rng, -0.1, 0.1));
  graph::Value* var = g->add_constant("var", testing::random_tensor({4}, rng, 0.5, 1.5));
  graph::Value* bn = add(*g, "bn", "BatchNormalization", {conv, gamma, beta, mean, var});
  graph::Value* relu = add(*g, "relu", "Relu", {bn});
  graph::Value* pool = add(*g, "pool", "GlobalAveragePool", {relu});
  graph::Value* flat = add(*g, "flat", "Flatten", {pool});
  graph::Value* w2 = g->add_constant("w2", testing::random_tensor({kClasses, 4}, rng, -0.5, 0.5));
  graph::Value* b2 = g->add_constant("b2", testing::random_tensor({kClasses}, rng, -0.1, 0.1));
  g->mark_output(add(*g, "fc", "Gemm", {flat, w2, b2}, {{"transB", int64_t{1}}}));
  return g;
}

struct Batch {
  Tensor input;
  Tensor labels;
};

Batch random_batch(int64_t rows, uint32_t seed) {
  std::mt19937 rng(seed);
  Batch b{testing::random_tensor({rows, 3, 6, 6}, rng, -1, 1), Tensor(DType::kInt64, {rows})};
  for (int64_t i = 0; i < rows; ++i) b.labels.data<int64_t>()[i] = (i * 3 + seed) % kClasses;
  return b;
}

// Every parameter and state value, and every gradient, by name.
std::vector<std::pair<std::string, Tensor>> snapshot(runtime::ClassifierTraining& t) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const runtime::Parameter& p : t.executor().parameters()) {
    out.emplace_back("value " + p.name, p.value.clone());
    if (p.trainable()) out.emplace_back("grad " + p.name, p.grad.clone());
  }
  return out;
}

void sgd_update(runtime::ClassifierTraining& t) {
  for (runtime::Parameter& p : t.executor().parameters()) {
    if (!p.trainable()) continue;
    float* v = p.value.data<float>();
    const float* g = p.grad.data<float>();
    for (int64_t i = 0; i < p.value.numel(); ++i) v[i] -= 0.5f * g[i];
  }
}

// Two steps (with an update between) on `shards` shards of `shard_batch`, this process holding
// shards [first, first + count): the loss of each step and the state after the second.
struct StepRun {
  std::vector<float> losses;
  std::vector<std::pair<std::string, Tensor>> state;
};

StepRun train_two_steps(int64_t shard_batch, runtime::ShardLayout layout) {
  const auto model = small_bn_classifier();
  runtime::ClassifierTraining training(*model, shard_batch);
  if (layout.total > 1) training.set_shards(layout);
  StepRun run;
  for (uint32_t step = 0; step < 2; ++step) {
    const Batch whole = random_batch(shard_batch * layout.total, 100 + step);
    const int64_t first = layout.first * shard_batch;
    const int64_t end = first + layout.count * shard_batch;
    const Tensor input = whole.input.slice_rows(first, end).clone();
    const Tensor labels = whole.labels.slice_rows(first, end).clone();
    run.losses.push_back(training.forward_backward(input, labels));
    if (step == 0) sgd_update(training);
  }
  run.state = snapshot(training);
  return run;
}

void expect_bit_identical(const StepRun& a, const StepRun& b) {
  ASSERT_EQ(a.losses.size(), b.losses.size());
  for (size_t i = 0; i < a.losses.size(); ++i) {
    EXPECT_EQ(std::memcmp(&a.losses[i], &b.losses[i], sizeof(float)), 0)
        << "step " << i << ": " << a.losses[i] << " vs " << b.losses[i];
  }
  ASSERT_EQ(a.state.size(), b.state.size());
  for (size_t k = 0; k < a.state.size(); ++k) {
    const Tensor& x = a.state[k].second;
    const Tensor& y = b.state[k].second;
    ASSERT_EQ(a.state[k].first, b.state[k].first);
    ASSERT_EQ(x.shape(), y.shape()) << a.state[k].first;
    EXPECT_EQ(std::memcmp(x.data<float>(), y.data<float>(), x.numel() * sizeof(float)), 0)
        << a.state[k].first;
  }
}

// The step on two shards of 4 is the step on the batch of 8, up to the order of float sums: BN
// normalises with the whole batch's statistics and updates its running ones once.
TEST(ShardedTraining, TwoShardsTakeTheWholeBatchsStep) {
  const StepRun whole = train_two_steps(8, {});
  const StepRun shards = train_two_steps(4, {.total = 2, .first = 0, .count = 2});
  ASSERT_EQ(whole.state.size(), shards.state.size());
  for (size_t i = 0; i < whole.losses.size(); ++i) {
    EXPECT_NEAR(shards.losses[i], whole.losses[i], 1e-6 * std::abs(whole.losses[i])) << i;
  }
  for (size_t k = 0; k < whole.state.size(); ++k) {
    const Tensor& want = whole.state[k].second;
    const Tensor& got = shards.state[k].second;
    ASSERT_EQ(whole.state[k].first, shards.state[k].first);
    float scale = 0;
    for (float v : want.span<float>()) scale = std::max(scale, std::abs(v));
    for (int64_t i = 0; i < want.numel(); ++i) {
      EXPECT_NEAR(got.data<float>()[i], want.data<float>()[i], 1e-5f * std::max(1.0f, scale))
          << whole.state[k].first << " [" << i << "]";
    }
  }
}

// The bits depend on the shards only: 2 shards on 1 process or on 2, 3 shards on 1 process or
// on 2 (2 + 1) or 3.
TEST(ShardedTraining, RanksPlayedByThreadsGiveTheOneProcessBits) {
  for (int64_t total : {2, 3}) {
    const StepRun one = train_two_steps(4, {.total = total, .first = 0, .count = total});
    for (int ranks = 2; ranks <= total; ++ranks) {
      std::vector<StepRun> runs(static_cast<size_t>(ranks));
      testing::run_on_ranks(ranks, [&](runtime::Communicator& comm) {
        const runtime::Share share =
            runtime::share_of(static_cast<size_t>(total), comm.rank(), comm.size());
        runs[static_cast<size_t>(comm.rank())] =
            train_two_steps(4, {.total = total,
                                .first = static_cast<int64_t>(share.begin),
                                .count = static_cast<int64_t>(share.end - share.begin),
                                .processes = &comm});
      });
      for (const StepRun& r : runs) {
        SCOPED_TRACE(std::to_string(total) + " shards on " + std::to_string(ranks) + " ranks");
        expect_bit_identical(one, r);
      }
    }
  }
}

// A bad label on one process's shard stops every process with the same error, before any of
// them waits in a collective the other never reaches.
TEST(ShardedTraining, BadLabelsOnOneRankStopEveryRank) {
  std::vector<std::string> errors(2);
  testing::run_on_ranks(2, [&](runtime::Communicator& comm) {
    const auto model = small_bn_classifier();
    runtime::ClassifierTraining training(*model, 4);
    training.set_shards({.total = 2, .first = comm.rank(), .count = 1, .processes = &comm});
    Batch b = random_batch(4, 7);
    if (comm.rank() == 1) b.labels.data<int64_t>()[2] = kClasses;
    try {
      training.forward_backward(b.input, b.labels);
    } catch (const Error& e) {
      errors[static_cast<size_t>(comm.rank())] = e.what();
    }
  });
  for (const std::string& e : errors) {
    EXPECT_NE(e.find("rank 1: training: label 2 is 5, outside the model's 5 classes"),
              std::string::npos)
        << e;
  }
}

}  // namespace
}  // namespace qforge
