// The runtime side of each op: shape inference and a kernel factory, keyed by the catalog's
// op type. Every catalog entry has exactly one OpDef (tests/runtime/op_registry_test.cpp).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "graph/ir.h"
#include "kernels/tensor.h"

namespace qforge::runtime {

using kernels::DType;
using kernels::Shape;
using kernels::Tensor;

struct TensorInfo {
  DType dtype = DType::kFloat32;
  Shape shape;
};

// What shape inference sees of one node input.
struct InputInfo {
  bool present = false;  // false for an omitted optional input
  DType dtype = DType::kFloat32;
  Shape shape;
  const Tensor* constant = nullptr;  // the value, when the input is a constant
};

// A node bound to its kernel with attributes parsed and shapes fixed. Created once per plan.
class OpKernel {
 public:
  virtual ~OpKernel() = default;
  // Scratch bytes that forward needs; the executor hands every node the same scratch buffer,
  // valid only during the call.
  virtual size_t workspace_bytes() const { return 0; }
  // Whether forward reads input `index`. A kernel that brought a constant input (a weight) into
  // a prepared form of its own says false for it: the executor may then release the original
  // (ExecutorOptions::release_prepared_constants) and pass an undefined tensor in its place.
  virtual bool reads_input(size_t /*index*/) const { return true; }
  // inputs: views of the node's inputs (an omitted optional input is an undefined Tensor);
  // outputs: preallocated views of the inferred shapes (contents undefined on entry).
  // Must not allocate on the heap for float32 work, and must give the same bits for any thread
  // count and any batch size.
  virtual void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
                       std::byte* workspace) = 0;

  // Training (runtime/training.h). Whether backward gives the gradient of input `index`: false
  // for what is not differentiable (integer and shape inputs, BN running statistics) and for
  // every input of an op without a backward.
  virtual bool differentiable_input(size_t /*index*/) const { return false; }
  // What backward reads of the forward's inputs and outputs, one bit per index (bit i: input or
  // output i; indices past 63 count as read unless the mask is kNothing): the training executor
  // keeps those alive until the backward and lets the rest go once the forward no longer needs
  // them (a convolution's output, a ReLU's input). A kernel that leaves a bit clear must not read
  // that tensor in backward: its buffer may hold another value by then.
  struct BackwardReads {
    static constexpr uint64_t kEverything = ~uint64_t{0};
    static constexpr uint64_t kNothing = 0;
    uint64_t inputs = kEverything;
    uint64_t outputs = kEverything;
    static bool has(uint64_t mask, size_t index) {
      return index < 64 ? ((mask >> index) & 1) != 0 : mask != kNothing;
    }
  };
  virtual BackwardReads backward_reads() const { return {}; }
  // A forward cheap enough (an element-wise pass) that the training executor may make its
  // outputs again (recompute_outputs) before a later step's backward instead of keeping them
  // from the forward, when its own backward keeps every input.
  virtual bool cheap_to_recompute() const { return false; }
  // The outputs of the last forward again, bit for bit, from the same inputs: by default the
  // forward itself. A kernel whose forward updates state or sums over the batch in shard
  // rounds (BatchNormalization on batch statistics) overrides it, normalising again with the
  // statistics its forward saved.
  virtual void recompute_outputs(std::span<const Tensor> inputs, std::span<Tensor> outputs,
                                 std::byte* workspace) {
    forward(inputs, outputs, workspace);
  }
  // A compact record (training). Instead of having forward inputs or outputs kept for its
  // backward, a kernel may offer to write what its backward needs of them into a record of its
  // own, smaller than they are (a ReLU: one bit per element; a fake quant: its integers and one
  // bit per element). `bytes` 0: no offer. `reads`: what backward still reads of the inputs and
  // outputs once the record is kept. `restores_outputs`: restore_outputs() makes the outputs
  // again from the record alone, bit for bit as forward wrote them.
  struct Record {
    size_t bytes = 0;
    BackwardReads reads;
    bool restores_outputs = false;
  };
  virtual Record record() const { return {}; }
  // Takes the offer: from then on every forward also writes the record into `storage`
  // (record().bytes, the caller's, which must hold it from a forward to the backward after), and
  // backward reads the record and only what record().reads names. Gradients keep their bits.
  virtual void keep_record(std::byte* /*storage*/) {}
  // With the record kept, after a forward: its outputs again.
  virtual void restore_outputs(std::span<Tensor> /*outputs*/) const {}
  // Scratch bytes that backward needs (the same shared buffer as forward's workspace).
  virtual size_t backward_workspace_bytes() const { return 0; }
  // grad_outputs[i]: dLoss/d output i, or an undefined tensor where no gradient reaches that
  // output (read it as zero). grad_inputs[i]: defined where the caller wants dLoss/d input i,
  // which backward then overwrites; undefined elsewhere. Like forward: no heap allocation for
  // float32 work, the same bits for any thread count.
  virtual void backward(std::span<const Tensor> inputs, std::span<const Tensor> outputs,
                        std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                        std::byte* workspace);

  // Training over a batch cut into shards that separate executors, possibly in separate
  // processes, hold (runtime/training.h, ShardLayout). A kernel whose training forward or
  // backward sums over the batch (BatchNormalization on batch statistics) says in how many
  // rounds, and how many doubles each shard contributes per round; the executors then run it
  // round by round: every shard writes its partial sums, the sums are added over all shards in
  // shard order, and every shard reads the totals in the next round or the finishing call.
  // `total_batch` is the batch of every shard together. Kernels that never sum over the batch
  // keep the defaults and run as they do on one shard.
  struct ShardRounds {
    int forward = 0;
    int backward = 0;
    size_t size = 0;  // doubles per shard and round
  };
  virtual ShardRounds shard_rounds() const { return {}; }
  // `totals`: the previous round's (null in round 0); `partial`: this shard's sums.
  virtual void forward_round(int round, std::span<const Tensor> inputs, std::span<Tensor> outputs,
                             const double* totals, double* partial, int64_t total_batch);
  // After the last round. update_state: this shard updates the state the shards of one process
  // share (BN running statistics); exactly one shard per process is asked to.
  virtual void forward_finish(std::span<const Tensor> inputs, std::span<Tensor> outputs,
                              const double* totals, int64_t total_batch, bool update_state);
  virtual void backward_round(int round, std::span<const Tensor> inputs,
                              std::span<const Tensor> outputs, std::span<const Tensor> grad_outputs,
                              const double* totals, double* partial, int64_t total_batch);
  virtual void backward_finish(std::span<const Tensor> inputs, std::span<const Tensor> outputs,
                               std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                               const double* totals, int64_t total_batch);
};

// The storage of grad_inputs[index] where backward's caller asked for that gradient, else null.
inline float* grad_data(std::span<Tensor> grad_inputs, size_t index) {
  return index < grad_inputs.size() && grad_inputs[index].defined()
             ? grad_inputs[index].data<float>()
             : nullptr;
}

using InferFn = std::vector<TensorInfo> (*)(const graph::Node& node,
                                            std::span<const InputInfo> inputs);
// `inputs` carry the constant values of constant inputs (weights), so a kernel may pre-pack
// them; forward still receives every input, constant or not.
using CreateFn = std::unique_ptr<OpKernel> (*)(const graph::Node& node,
                                               std::span<const InputInfo> inputs,
                                               std::span<const TensorInfo> outputs);

struct OpDef {
  std::string op_type;
  InferFn infer = nullptr;
  CreateFn create = nullptr;
  // The kernel that training runs, when its forward differs from inference's (BatchNormalization
  // normalises with batch statistics and updates its running ones); null: `create`'s kernel,
  // whose backward then serves training. Constant inputs that training updates come without
  // their values (InputInfo::constant null), so the kernel prepares nothing from them.
  CreateFn create_training = nullptr;
};

class OpRegistry {
 public:
  void add(OpDef def);  // throws kInternal on a duplicate
  const OpDef* find(std::string_view op_type) const;
  std::vector<std::string> op_types() const;

 private:
  std::vector<OpDef> defs_;
};

// The process-wide registry with every built-in op (built on first use).
const OpRegistry& builtin_ops();

// Throws an Invalid error "<stage>: node 'n' (Op): expected <rule>, got <value>".
[[noreturn]] void fail_node(const graph::Node& node, const std::string& rule,
                            const std::string& got);

}  // namespace qforge::runtime
