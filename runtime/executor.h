// The executor: a resolved graph compiled once into a plan (order, one kernel per node, buffers
// placed by liveness in one arena). A forward pass after the first allocates nothing.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/memory_budget.h"
#include "runtime/op_registry.h"

namespace qforge::runtime {

struct ExecutorOptions {
  bool profile = false;  // time every node (adds two clock reads per node)
  // Weights that every kernel reading them keeps in a prepared form of its own (Winograd
  // filters, packed GEMM panels) are released from the graph while the plan is compiled, one
  // node at a time (graph::Value::release_constant), so that the model's float weights and
  // their prepared copies are never all resident together. Their memory is freed when nothing
  // else shares it (the graph is the caller's only copy of the model); the graph keeps their
  // types and shapes but can no longer be exported or compiled again.
  bool release_prepared_constants = false;
  // The memory the plan may take (arena, workspace, weights); unset: the memory available to
  // the process (runtime/memory_budget.h). A plan that needs more is refused before its arena
  // and workspace are allocated.
  std::optional<size_t> memory_budget_bytes;
};

struct OpTime {
  std::string op_type;
  // Per node: the node's name, its first output's shape and element count; empty per type.
  std::string node;
  std::string shape;
  int64_t output_elements = 0;
  double seconds = 0;
  size_t calls = 0;
};

// Called after the producer of a tapped value ran, with a view of the value.
using TapFn = std::function<void(const Tensor& value)>;

// The memory a plan of `graph` (resolved) needs for its arena and weights, planned without
// allocating anything; the workspace is known only once the kernels are bound (0 here).
PlanMemory estimate_plan_memory(const graph::Graph& graph);
// The bytes of the graph's inputs at their shapes (a batch the caller holds).
size_t input_bytes(const graph::Graph& graph);

class Executor {
 public:
  // `graph` must be resolved (runtime/resolve.h); it must outlive the executor.
  explicit Executor(const graph::Graph& graph, ExecutorOptions options = {});
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  const std::vector<TensorInfo>& input_infos() const { return input_infos_; }
  const std::vector<TensorInfo>& output_infos() const { return output_infos_; }

  // Copies `inputs` (graph input order, exact shapes) into the plan and runs every node.
  // Returns views of the outputs, valid until the next run.
  std::span<const Tensor> run(std::span<const Tensor> inputs);

  // Observes a value after its producer runs (a graph input: after it is copied in).
  void add_tap(const std::string& value_name, TapFn fn);
  void clear_taps();

  size_t arena_bytes() const { return arena_bytes_; }
  size_t workspace_bytes() const { return workspace_.size(); }
  size_t kernel_count() const { return steps_.size(); }
  // Per op type (or, with per_node, per node), in descending time; empty unless
  // options.profile.
  std::vector<OpTime> profile(bool per_node = false) const;
  void reset_profile();

 private:
  struct Step {
    const graph::Node* node = nullptr;
    std::unique_ptr<OpKernel> kernel;  // null for a view that aliases its input
    size_t inputs_begin = 0, inputs_end = 0;
    size_t outputs_begin = 0, outputs_end = 0;
    double seconds = 0;
  };

  void compile(const graph::Graph& graph);

  ExecutorOptions options_;
  std::vector<Step> steps_;
  std::vector<Tensor> step_inputs_;   // flat, per step [inputs_begin, inputs_end)
  std::vector<Tensor> step_outputs_;  // flat, per step [outputs_begin, outputs_end)
  std::vector<Tensor> graph_inputs_;  // arena views the caller's inputs are copied into
  std::vector<Tensor> graph_outputs_;
  std::vector<TensorInfo> input_infos_;
  std::vector<TensorInfo> output_infos_;
  std::map<const graph::Value*, Tensor> views_;  // every non-constant value's buffer view
  std::map<size_t, std::vector<std::pair<Tensor, TapFn>>> taps_after_step_;
  std::vector<std::pair<Tensor, TapFn>> taps_on_inputs_;
  const graph::Graph* graph_ = nullptr;
  std::unique_ptr<kernels::Storage> arena_;
  size_t arena_bytes_ = 0;
  std::vector<std::byte> workspace_;
};

}  // namespace qforge::runtime
