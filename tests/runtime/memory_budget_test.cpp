// The memory a plan needs is known before compiling it, and a plan that needs more than the
// budget is refused with the figures, before its arena or workspace is allocated.
#include "runtime/memory_budget.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "graph/onnx_import.h"
#include "runtime/executor.h"
#include "runtime/resolve.h"
#include "tests/support/errors.h"
#include "tests/support/test_support.h"

namespace qforge::runtime {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

std::unique_ptr<graph::Graph> resnet_at(int64_t batch) {
  auto g = graph::load_onnx(testing::data_path("models/resnet_bn.onnx"));
  ResolveOptions options;
  options.input_shapes = input_shapes_for_batch(*g, batch);
  resolve(*g, options);
  return g;
}

TEST(MemoryBudget, MessageGivesEveryFigureInMiB) {
  PlanMemory need;
  need.arena_bytes = 3000 * kMiB;
  need.workspace_bytes = 2 * kMiB;
  need.weight_bytes = 5 * kMiB;
  EXPECT_NO_THROW(check_memory_budget("run", need, 3007 * kMiB));
  EXPECT_EQ(testing::error_of(ErrorKind::kInvalid,
                              [&] { check_memory_budget("run", need, 3006 * kMiB); }),
            "run: the execution plan needs 3007 MiB (arena 3000 MiB, workspace 2 MiB, weights 5 "
            "MiB), more than the 3006 MiB of memory available; lower --batch");
}

TEST(MemoryBudget, SystemReportsSomeMemory) {
  const std::optional<size_t> available = available_memory_bytes();
  ASSERT_TRUE(available.has_value());  // /proc/meminfo is there on Linux
  EXPECT_GT(*available, 0u);
}

// QFORGE_MEMORY_LIMIT_MIB lowers the budget to the user's figure; a malformed value is an error
// that names the variable.
TEST(MemoryBudget, EnvironmentLimitLowersTheBudget) {
  ASSERT_EQ(::setenv("QFORGE_MEMORY_LIMIT_MIB", "3", 1), 0);
  const std::optional<size_t> limited = available_memory_bytes();
  ASSERT_EQ(::setenv("QFORGE_MEMORY_LIMIT_MIB", "-1", 1), 0);
  const std::string message =
      testing::error_of(ErrorKind::kInvalid, [] { available_memory_bytes(); });
  ::unsetenv("QFORGE_MEMORY_LIMIT_MIB");
  EXPECT_EQ(limited, std::optional<size_t>(3 * kMiB));
  EXPECT_EQ(message, "QFORGE_MEMORY_LIMIT_MIB: expected a whole number of MiB >= 1, got '-1'");
}

// The estimate is the arena the executor then places, and grows with the batch.
TEST(MemoryBudget, EstimateMatchesTheCompiledArena) {
  for (int64_t batch : {1, 3, 8}) {
    auto g = resnet_at(batch);
    const PlanMemory estimate = estimate_plan_memory(*g);
    Executor executor(*g);
    EXPECT_EQ(estimate.arena_bytes, executor.arena_bytes()) << batch;
    EXPECT_GT(estimate.weight_bytes, 100000u);  // the model's float weights (about 1.2 MB)
  }
  EXPECT_GT(estimate_plan_memory(*resnet_at(8)).arena_bytes,
            7 * estimate_plan_memory(*resnet_at(1)).arena_bytes);
}

TEST(MemoryBudget, ExecutorRefusesAPlanOverItsBudget) {
  auto g = resnet_at(4);
  const PlanMemory estimate = estimate_plan_memory(*g);
  ExecutorOptions options;
  options.memory_budget_bytes = estimate.total() - 1;
  const std::string message =
      testing::error_of(ErrorKind::kInvalid, [&] { Executor executor(*g, options); });
  EXPECT_EQ(message.rfind("executor: the execution plan needs ", 0), 0u) << message;
  EXPECT_NE(message.find("lower --batch"), std::string::npos) << message;
  // The workspace counts too, once the kernels have said what they need.
  size_t workspace = 0;
  {
    auto unbounded = resnet_at(4);
    workspace = Executor(*unbounded).workspace_bytes();
  }
  options.memory_budget_bytes = estimate.total() + workspace;
  EXPECT_NO_THROW(Executor(*g, options));
  if (workspace > 0) {
    auto again = resnet_at(4);
    options.memory_budget_bytes = estimate.total() + workspace - 1;
    EXPECT_THROW(Executor(*again, options), Error);
  }
}

}  // namespace
}  // namespace qforge::runtime
