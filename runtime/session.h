// A loaded model ready to run at any batch size: the imported graph, plus one resolved graph and
// compiled executor per input shape seen (typically the full batch and the last, partial one).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "graph/ir.h"
#include "runtime/executor.h"
#include "runtime/resolve.h"

namespace qforge::runtime {

struct SessionOptions {
  ExecutorOptions executor;
  // Run Conv → BN → Add → Relu chains as one kernel, and x · Sigmoid(x) as one SiLU pass
  // (runtime/fuse_epilogues.h). Off when every intermediate value must stay observable.
  bool fuse_conv_epilogues = true;
  // Run QuantizeLinear → DequantizeLinear pairs with constant parameters as one FakeQuant
  // (runtime/fuse_qdq.h); same results, no integer tensor. With fuse_conv_epilogues too, a
  // FakeQuant that alone reads a convolution's output runs in that convolution's output pass.
  bool fuse_qdq = true;
  // With executor.release_prepared_constants the session runs one input shape only: its
  // weights are released while that plan is compiled (ExecutorOptions).
};

// The model's leading input dimension when it is fixed in the file.
std::optional<int64_t> fixed_batch(const graph::Graph& graph);

// Whether `samples` run in batches of `batch` all have one shape (no smaller last batch): a
// session that runs them compiles once, so it may release its weights as its kernels prepare
// them (executor.release_prepared_constants) instead of holding them twice.
bool one_batch_shape(size_t samples, int64_t batch);

class Session {
 public:
  explicit Session(std::unique_ptr<graph::Graph> graph, SessionOptions options = {});
  ~Session();

  const graph::Graph& graph() const { return *graph_; }
  // The model's leading input dimension when it is fixed in the file.
  std::optional<int64_t> fixed_batch() const;

  // Runs a single-input model; returns output views valid until the next run.
  std::span<const Tensor> run(const Tensor& input);
  std::span<const Tensor> run(std::span<const Tensor> inputs);

  // The resolved graph and executor for these input shapes (compiled on first use).
  Executor& executor_for(const std::vector<graph::Shape>& input_shapes);
  const graph::Graph& resolved_graph_for(const std::vector<graph::Shape>& input_shapes);

  // Profile summed over every compiled executor (per node: its time at every input shape, and
  // its output's shape at the largest).
  std::vector<OpTime> profile(bool per_node = false) const;

 private:
  struct Compiled {
    std::unique_ptr<graph::Graph> graph;
    std::unique_ptr<Executor> executor;
  };
  Compiled& compiled_for(const std::vector<graph::Shape>& input_shapes);

  std::unique_ptr<graph::Graph> graph_;
  SessionOptions options_;
  std::map<std::vector<graph::Shape>, Compiled> compiled_;
};

}  // namespace qforge::runtime
