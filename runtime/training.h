// Training: a resolved graph run forward in training mode (BatchNormalization on batch
// statistics), keeping every value its backward needs, then backward in reverse order to the
// gradient of every parameter, forward values and gradients sharing one arena planned by
// liveness. Parameters are the executor's own mutable copies of the graph
// constants it is asked to train; the graph itself is never changed.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/op_registry.h"

namespace qforge::runtime {

struct TrainingOptions {
  // Graph constants the executor holds as its own mutable state (trainable_initializers below
  // gives a model's). Those that some node differentiates get a gradient; the others (BN
  // running statistics) are state the training forward updates.
  std::vector<std::string> parameters;
  // Graph constants the executor also holds as its own mutable copies, but never
  // differentiates: a gradient stops there (BN running statistics that other nodes read, as
  // the simulated batch-norm folding of quantization-aware training does).
  std::vector<std::string> state;
  // BatchNormalization on its running statistics, which then stay as they are (a frozen BN,
  // or an evaluation forward); false: on batch statistics, updating the running ones.
  bool batch_norm_running_statistics = false;
};

struct Parameter {
  std::string name;  // the graph constant's name (the ONNX initializer's)
  Tensor value;      // read by every forward; update it in place between steps
  Tensor grad;       // dLoss/dvalue after backward; undefined for state without a gradient
  bool trainable() const { return grad.defined(); }
};

// The float initializers of an imported (unresolved) model, and the outputs of Identity nodes
// that read one: torch.onnx stores parameters of equal value once and names the others through
// Identity. Pass them as TrainingOptions::parameters and as ResolveOptions::parameters when
// resolving the graph to train, so that no fold hides a parameter inside another constant.
std::vector<std::string> trainable_initializers(const graph::Graph& imported);

class TrainingExecutor {
 public:
  // `graph` must be resolved (runtime/resolve.h) with the same parameters; it must outlive the
  // executor. Throws Unsupported naming the node when a gradient would have to pass through an
  // op without a backward.
  TrainingExecutor(const graph::Graph& graph, TrainingOptions options);
  ~TrainingExecutor();
  TrainingExecutor(const TrainingExecutor&) = delete;
  TrainingExecutor& operator=(const TrainingExecutor&) = delete;

  const TrainingOptions& options() const { return options_; }
  const std::vector<TensorInfo>& input_infos() const { return input_infos_; }
  const std::vector<TensorInfo>& output_infos() const { return output_infos_; }
  std::span<Parameter> parameters() { return parameters_; }
  std::span<const Parameter> parameters() const { return parameters_; }
  // The arena that holds every forward value and every gradient but the parameters' (placed by
  // liveness over forward and backward together), and what those buffers would take unshared.
  size_t arena_bytes() const { return arena_bytes_; }
  size_t unshared_bytes() const { return unshared_bytes_; }
  size_t workspace_bytes() const { return workspace_.size(); }

  // Runs the training forward (graph input order, exact shapes). Returns views of the outputs,
  // valid until the next forward.
  std::span<const Tensor> forward(std::span<const Tensor> inputs);
  // The outputs of the last forward (what it returned).
  std::span<const Tensor> outputs() const { return graph_outputs_; }
  // Backward from dLoss/d output for each graph output (an undefined tensor: no gradient from
  // that output); overwrites every trainable parameter's grad. Needs the forward just run, once:
  // backward reuses the memory of forward values it no longer needs. The outputs of forward stay
  // valid.
  void backward(std::span<const Tensor> output_grads);

 private:
  struct GradTarget {
    size_t slot = 0;            // input index of the step
    size_t value = 0;           // index into grads_
    size_t scratch_buffer = 0;  // while compiling: its arena buffer, or kNone
    Tensor scratch;             // where a later contribution is written before it is added
    bool add_scratch = false;   // during backward: this contribution went to scratch
  };
  struct Step {
    const graph::Node* node = nullptr;
    std::unique_ptr<OpKernel> kernel;
    std::vector<Tensor> inputs;
    std::vector<Tensor> outputs;
    std::vector<size_t> output_grads;  // index into grads_ per output; kNone: no gradient
    std::vector<GradTarget> targets;   // inputs whose gradient backward computes
  };
  static constexpr size_t kNone = static_cast<size_t>(-1);

  void compile(const graph::Graph& graph);

  TrainingOptions options_;
  std::vector<Parameter> parameters_;
  std::vector<Step> steps_;
  std::vector<Tensor> graph_inputs_;
  std::vector<Tensor> graph_outputs_;
  std::vector<size_t> graph_output_grads_;  // index into grads_ per graph output, or kNone
  std::vector<TensorInfo> input_infos_;
  std::vector<TensorInfo> output_infos_;
  std::vector<Tensor> grads_;            // one per value a gradient reaches
  std::vector<size_t> parameter_grads_;  // the grads_ entries of trainable parameters
  std::vector<bool> grad_written_;       // per grads_ entry, during one backward
  std::vector<Tensor> grad_outputs_;     // per step during backward, reserved at compile
  std::vector<Tensor> grad_inputs_;
  std::unique_ptr<kernels::Storage> arena_;
  size_t arena_bytes_ = 0;
  size_t unshared_bytes_ = 0;
  std::vector<std::byte> workspace_;
  const graph::Graph* graph_ = nullptr;
};

// A classifier set up for training at one batch size: the imported model cloned and resolved
// with its float initializers as parameters (trainable_initializers), and its training
// executor. Each step is a forward, the mean cross-entropy of the first output (logits
// [batch, classes]) against int64 labels [batch], and a backward.
// The loss of a classifier step: cross-entropy against labels, KL divergence to a teacher's
// logits at a temperature (distillation), or (1 − distill_weight)·CE + distill_weight·KL when
// both are given.
struct ClassifierLoss {
  const Tensor* labels = nullptr;          // int64 [batch]
  const Tensor* teacher_logits = nullptr;  // float32 [batch, classes]
  float temperature = 1.0f;
  float distill_weight = 0.5f;  // only when both are given
};

class ClassifierTraining {
 public:
  ClassifierTraining(const graph::Graph& model, int64_t batch);
  // A graph prepared for training elsewhere (quant/qdq_export.h's training graph), resolved
  // at its batch with options.parameters and options.state as ResolveOptions::parameters.
  ClassifierTraining(std::unique_ptr<graph::Graph> resolved, TrainingOptions options);
  ~ClassifierTraining();

  // Returns the loss; every trainable parameter's grad holds its gradient afterwards. Invalid
  // errors name what is wrong with the labels.
  float forward_backward(const Tensor& input, const Tensor& labels);
  float forward_backward(const Tensor& input, const ClassifierLoss& loss);
  // forward_backward in two halves, to time them apart: the forward and the loss, whose
  // gradient with respect to the logits is kept, then the backward from it.
  float forward_loss(const Tensor& input, const ClassifierLoss& loss);
  void backward();

  int64_t batch() const { return batch_; }
  int64_t classes() const { return classes_; }
  // From now on BatchNormalization uses its running statistics (as they are now) and no longer
  // updates them; parameter values and every other state carry over.
  void freeze_batch_norm();
  bool batch_norm_frozen() const { return options_.batch_norm_running_statistics; }
  // The logits of a forward on the current parameters (training mode as set), no backward.
  Tensor forward(const Tensor& input);
  TrainingExecutor& executor() { return *executor_; }
  // The resolved graph it trains (its derivations say how its constants came from the model's).
  const graph::Graph& graph() const { return *graph_; }
  // Copies of every trainable parameter's gradient, by name in name order.
  std::vector<std::pair<std::string, Tensor>> gradients() const;

 private:
  void set_up(TrainingOptions options);

  std::unique_ptr<graph::Graph> graph_;
  std::unique_ptr<TrainingExecutor> executor_;
  TrainingOptions options_;
  int64_t batch_ = 0;
  int64_t classes_ = 0;
  Tensor probabilities_;
  Tensor teacher_probabilities_;
  Tensor row_loss_;
  std::vector<Tensor> output_grads_;
};

// One training-mode forward and backward of a classifier with the mean cross-entropy of its
// first output (logits [batch, classes]) against int64 labels [batch]: what `qforge grad`
// writes, and how a user checks qforge's training against their framework.
struct GradientResult {
  float loss = 0;
  // Every trainable float initializer (trainable_initializers) that a gradient reaches, by
  // name, in name order.
  std::vector<std::pair<std::string, Tensor>> gradients;
};

// `model` is the imported graph (not changed). input: the model's one input at a batch;
// labels: int64 [batch] in [0, classes). Invalid errors name what is wrong with the labels.
GradientResult cross_entropy_gradients(const graph::Graph& model, const Tensor& input,
                                       const Tensor& labels);

}  // namespace qforge::runtime
