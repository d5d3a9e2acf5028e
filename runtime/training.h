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
#include "runtime/communicator.h"
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
  // Take the kernels' offers of compact records (OpKernel::Record) in place of the tensors
  // their backward reads: the same gradients, bit for bit, in a smaller arena. False keeps the
  // tensors themselves (to compare the two).
  bool compact_records = true;
  // The graph's first outputs that are the model's (0: all): those after them expose values for
  // inspection (quantizer points) and take no part in the loss, nor in telling a classifier.
  size_t model_outputs = 0;
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
  // An executor of the same graph that reads `shares`'s parameter values (one storage, updated
  // once for both) and computes gradients of its own: another shard of a batch (ShardGroup).
  TrainingExecutor(const graph::Graph& graph, TrainingOptions options,
                   const TrainingExecutor& shares);
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
  size_t workspace_bytes() const { return workspace_bytes_; }

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

  // Per op type (or, with per_node, per node), the time forward and backward spent in its kernels
  // (a backward's recomputed inputs included), in descending total; empty until set_profile(true)
  // and a step. Adds two clock reads per step and kernel; reset_profile() clears the sums.
  struct OpTime {
    std::string op_type;
    std::string node;  // with per_node: the node's name; empty otherwise
    double forward_seconds = 0;
    double backward_seconds = 0;
    size_t forward_calls = 0;
  };
  void set_profile(bool on) { profile_ = on; }
  std::vector<OpTime> profile(bool per_node = false) const;
  void reset_profile();

 private:
  struct GradTarget {
    size_t slot = 0;            // input index of the step
    size_t value = 0;           // index into grads_
    size_t scratch_buffer = 0;  // while compiling: its arena buffer, or kNone
    Tensor scratch;             // where a later contribution is written before it is added
    bool add_scratch = false;   // during backward: this contribution went to scratch
  };
  // A value the backward of a step reads that is not kept from the forward: its producer (a
  // kernel cheap to recompute, whose own inputs are kept) runs again into `value` just before
  // that backward.
  struct Recompute {
    size_t producer = 0;  // index into steps_
    size_t buffer = 0;    // while compiling: its arena buffer
    Tensor value;
  };
  struct Step {
    const graph::Node* node = nullptr;
    std::unique_ptr<OpKernel> kernel;
    std::vector<Tensor> inputs;
    std::vector<Tensor> outputs;
    std::vector<size_t> output_grads;  // index into grads_ per output; kNone: no gradient
    std::vector<GradTarget> targets;   // inputs whose gradient backward computes
    std::vector<Recompute> recomputes;
    std::vector<Tensor> backward_inputs;  // inputs, with the recomputed values in their places
    bool keeps_record = false;            // the kernel writes its OpKernel::Record
    double forward_seconds = 0, backward_seconds = 0;  // with set_profile(true)
    size_t forward_calls = 0;
  };
  static constexpr size_t kNone = static_cast<size_t>(-1);
  friend class ShardGroup;

  void compile(const graph::Graph& graph, const TrainingExecutor* shares);
  void load_inputs(std::span<const Tensor> inputs);
  void begin_backward(std::span<const Tensor> output_grads);
  // Sets grad_outputs_ and grad_inputs_ for step s and recomputes what its backward reads that
  // was not kept; false when no gradient reaches it.
  bool prepare_backward_step(Step& step);
  void end_backward_step(Step& step);
  void end_backward();

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
  std::shared_ptr<std::vector<std::byte>> workspace_;  // shared by the executors of a ShardGroup
  size_t workspace_bytes_ = 0;
  const graph::Graph* graph_ = nullptr;
  bool profile_ = false;
};

// A training step's batch cut into `total` shards of one size, of which this process holds
// `count`, from shard `first` on; `processes` (null: this process alone) hold the others, in
// rank order. Every sum over the batch (BN statistics, parameter gradients, the loss) is taken
// per shard and the shards' sums added in shard order, so a step gives the same bits however
// the shards are spread over processes. One shard is the plain executor.
struct ShardLayout {
  int64_t total = 1;
  int64_t first = 0;
  int64_t count = 1;
  Communicator* processes = nullptr;
};

// The executors of the shards a process holds, each at the shard's batch, run in lockstep:
// node by node, and at a node whose kernel sums over the batch (OpKernel::shard_rounds) round by
// round, the partial sums of every shard gathered and added in shard order. The first executor
// holds the parameters every shard reads; after backward its gradients are the whole batch's.
class ShardGroup {
 public:
  ShardGroup(const graph::Graph& graph, const TrainingOptions& options, ShardLayout layout);
  ~ShardGroup();
  const ShardLayout& layout() const { return layout_; }
  TrainingExecutor& first() { return *shards_.front(); }
  const TrainingExecutor& first() const { return *shards_.front(); }
  TrainingExecutor& shard(size_t i) { return *shards_[i]; }
  size_t size() const { return shards_.size(); }
  // inputs[i]: the graph inputs of local shard i. Returns nothing; read each shard's outputs().
  void forward(std::span<const std::vector<Tensor>> inputs);
  // output_grads[i] and losses[i]: local shard i's output gradients and its share of the loss.
  // Afterwards first()'s parameter gradients are the sums over every shard (of every process),
  // and the return value the loss summed likewise.
  float backward(std::span<const std::vector<Tensor>> output_grads, std::span<const float> losses);
  // Seconds spent so far in the exchanges with other processes (waiting for them included) and
  // in adding the shards' gradients; both stay 0 on one process with one shard.
  double exchange_seconds() const { return exchange_seconds_; }
  double fold_seconds() const { return fold_seconds_; }

 private:
  // partial: this process's shards' sums back to back (size() × n); returns the totals.
  const std::vector<double>& sum_over_shards(const std::vector<double>& partial, size_t n);
  float fold_gradients(std::span<const float> losses);

  ShardLayout layout_;
  int64_t total_batch_ = 0;
  std::vector<std::unique_ptr<TrainingExecutor>> shards_;
  std::vector<double> partial_;
  std::vector<double> totals_;
  double exchange_seconds_ = 0;
  double fold_seconds_ = 0;
};

// A classifier set up for training at one batch size: the imported model cloned and resolved
// with its float initializers as parameters (trainable_initializers), and its training
// executor. Each step is a forward, the mean cross-entropy of the first output (logits
// [batch, classes]) against int64 labels [batch], and a backward.
// The loss of a classifier step: cross-entropy against labels (label_smoothing ε as in
// F.cross_entropy), KL divergence to a teacher's logits at a temperature (distillation), or
// (1 − distill_weight)·CE + distill_weight·KL when both are given.
struct ClassifierLoss {
  const Tensor* labels = nullptr;          // int64 [batch]
  const Tensor* teacher_logits = nullptr;  // float32 [batch, classes]
  float temperature = 1.0f;
  float distill_weight = 0.5f;  // only when both are given
  float label_smoothing = 0.0f;
  // Of a model whose first output is no logits (ClassifierTraining::dense: a detector's boxes and
  // scores, a segmentation map): the teacher's value of each output, in the model's order, each
  // of the step's rows (an undefined tensor for an output that is not float32). Distillation is
  // then kernels::relative_squared_error of each float output, summed; the temperature does
  // not apply.
  std::span<const Tensor> teacher_outputs;
};

class ClassifierTraining {
 public:
  ClassifierTraining(const graph::Graph& model, int64_t batch);
  // A graph prepared for training elsewhere (quant/qdq_export.h's training graph), resolved
  // at its batch with options.parameters and options.state as ResolveOptions::parameters.
  ClassifierTraining(std::unique_ptr<graph::Graph> resolved, TrainingOptions options);
  ~ClassifierTraining();

  // Cuts each step's batch into shards (ShardLayout), the graph being at one shard's batch:
  // the steps then take this process's shards' samples (local_batch() rows), and the loss and
  // gradients are the whole batch's (every shard of every process), added in shard order.
  void set_shards(ShardLayout layout);
  const ShardLayout& shards() const { return group_->layout(); }
  // The exchange and fold seconds of the shard group (ShardGroup), since it was made.
  const ShardGroup& shard_group() const { return *group_; }

  // Returns the loss; every trainable parameter's grad holds its gradient afterwards. Invalid
  // errors name what is wrong with the labels (on every process, when another's are wrong).
  float forward_backward(const Tensor& input, const Tensor& labels);
  float forward_backward(const Tensor& input, const ClassifierLoss& loss);
  // A model of several inputs: one tensor per input, in the model's order, each of
  // local_batch() rows.
  float forward_backward(std::span<const Tensor> inputs, const ClassifierLoss& loss);
  // forward_backward in two halves, to time them apart: the forward and the loss, whose
  // gradient with respect to the logits is kept, then the backward from it. With shards,
  // forward_loss returns this process's shards' share of the loss and backward the whole
  // batch's.
  float forward_loss(const Tensor& input, const ClassifierLoss& loss);
  float forward_loss(std::span<const Tensor> inputs, const ClassifierLoss& loss);
  float backward();

  int64_t batch() const { return batch_; }  // of one shard: the graph's batch
  int64_t local_batch() const { return batch_ * shards().count; }
  int64_t classes() const { return classes_; }
  // Whether the model has no logits: its first output is not [batch, classes], or it has
  // several float outputs. Such a model trains by distillation of its outputs only
  // (ClassifierLoss::teacher_outputs), and classes() is 0.
  bool dense() const { return classes_ == 0; }
  // From now on BatchNormalization uses its running statistics (as they are now) and no longer
  // updates them; parameter values and every other state carry over.
  void freeze_batch_norm();
  // TrainingOptions::compact_records for the executors from now on (they are made again).
  void set_compact_records(bool compact);
  bool batch_norm_frozen() const { return options_.batch_norm_running_statistics; }
  // The logits of a forward on the current parameters (training mode as set), no backward.
  // One shard only.
  Tensor forward(const Tensor& input);
  // The executor whose parameters every shard reads and whose gradients are the whole batch's.
  TrainingExecutor& executor() { return group_->first(); }
  // The resolved graph it trains (its derivations say how its constants came from the model's).
  const graph::Graph& graph() const { return *graph_; }
  // Copies of every trainable parameter's gradient, by name in name order.
  std::vector<std::pair<std::string, Tensor>> gradients() const;

 private:
  size_t model_outputs() const {
    return options_.model_outputs ? options_.model_outputs : graph_->outputs().size();
  }
  void set_up(TrainingOptions options);
  // The distillation loss of a dense model's step (forward done), its output gradients written.
  float dense_loss(std::span<const Tensor> teacher, float share);
  bool sharded() const { return group_->layout().total > 1; }

  std::unique_ptr<graph::Graph> graph_;
  std::unique_ptr<ShardGroup> group_;
  TrainingOptions options_;
  int64_t batch_ = 0;
  int64_t classes_ = 0;
  Tensor probabilities_;
  Tensor teacher_probabilities_;
  Tensor row_loss_;
  std::vector<std::vector<Tensor>> output_grads_;  // per local shard
  std::vector<std::vector<Tensor>> shard_inputs_;
  std::vector<float> shard_losses_;
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
