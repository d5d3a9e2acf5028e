// The training executor: forward values and gradients placed in one arena by liveness over
// forward and backward together, kernels made for training, gradients accumulated in a fixed
// order.
#include "runtime/training.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "graph/catalog.h"
#include "kernels/output_distillation.h"
#include "kernels/parallel.h"
#include "kernels/softmax.h"
#include "runtime/arena_plan.h"
#include "runtime/prepared_weights.h"
#include "runtime/resolve.h"

namespace qforge::runtime {
namespace {

// dst += src, in fixed chunks: the sum of several contributions does not depend on the thread
// count.
void add_into(Tensor& dst, const Tensor& src) {
  float* d = dst.data<float>();
  const float* s = src.data<float>();
  kernels::parallel_for(dst.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) d[i] += s[i];
  });
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::vector<std::string> trainable_initializers(const graph::Graph& imported) {
  std::set<std::string> names;
  for (const graph::Value* v : imported.values()) {
    if (v->is_constant() && v->dtype() == DType::kFloat32) names.insert(v->name());
  }
  for (const graph::Node* node : imported.nodes()) {
    const graph::Value* in = node->input(0);
    if (node->op_type() == "Identity" && in && names.count(in->name())) {
      names.insert(node->output(0)->name());
    }
  }
  for (const graph::Node* node : imported.nodes()) {
    for (size_t i = 0; i < node->num_inputs(); ++i) {
      if (node->input(i) && graph::float_input_is_setting(node->op_type(), i)) {
        names.erase(node->input(i)->name());
      }
    }
  }
  return {names.begin(), names.end()};
}

TrainingExecutor::TrainingExecutor(const graph::Graph& graph, TrainingOptions options)
    : options_(std::move(options)) {
  compile(graph, nullptr);
}

TrainingExecutor::TrainingExecutor(const graph::Graph& graph, TrainingOptions options,
                                   const TrainingExecutor& shares)
    : options_(std::move(options)) {
  compile(graph, &shares);
}

TrainingExecutor::~TrainingExecutor() = default;

void TrainingExecutor::compile(const graph::Graph& graph, const TrainingExecutor* shares) {
  graph_ = &graph;
  const auto& order = graph.nodes();
  // Times on one line over forward and backward together: the forward of step s at s, the
  // gradients of the graph outputs written at n, the backward of step s at 2n − s, and the end
  // (what the caller reads after backward) at 2n + 1.
  const int n = static_cast<int>(order.size());
  const int seed_time = n;
  const int end_time = 2 * n + 1;
  auto backward_time = [n](size_t s) { return 2 * n - static_cast<int>(s); };

  // 1. The executor's own copies of the parameters; every other value that is not a constant
  //    a buffer in the arena.
  std::map<const graph::Value*, size_t> parameter_of;
  std::set<const graph::Value*> state;
  const std::set<std::string> state_names(options_.state.begin(), options_.state.end());
  std::vector<std::string> held = options_.parameters;
  held.insert(held.end(), options_.state.begin(), options_.state.end());
  for (const std::string& name : held) {
    const graph::Value* v = graph.find_value(name);
    if (!v || parameter_of.count(v)) continue;  // nothing in the resolved graph reads it
    if (!v->is_constant() || v->dtype() != DType::kFloat32) {
      throw_invalid("training: parameter '" + name + "' is not a float constant of the graph");
    }
    parameter_of[v] = parameters_.size();
    if (state_names.count(name)) state.insert(v);
    if (shares) {
      const size_t k = parameters_.size();
      if (k >= shares->parameters_.size() || shares->parameters_[k].name != name) {
        throw_internal("training: an executor sharing parameters with another of other ones");
      }
      parameters_.push_back({name, shares->parameters_[k].value, Tensor()});
    } else {
      parameters_.push_back({name, v->constant().clone(), Tensor()});
    }
  }
  std::vector<ArenaBuffer> buffers;
  std::map<const graph::Value*, size_t> buffer_of;
  auto new_buffer = [&](const Shape& shape, DType dtype, int first) {
    ArenaBuffer b;
    b.bytes = arena_aligned(static_cast<size_t>(kernels::shape_numel(shape)) *
                            kernels::dtype_size(dtype));
    b.first = first;
    b.last = first;
    buffers.push_back(b);
    return buffers.size() - 1;
  };
  auto value_buffer = [&](const graph::Value* v, int first) {
    if (!v->has_shape()) throw_internal("training: value '" + v->name() + "' has no shape");
    if (v->is_constant() || buffer_of.count(v)) return;
    buffer_of[v] = new_buffer(*v->shape(), v->dtype(), first);
  };
  for (const graph::Value* in : graph.inputs()) value_buffer(in, -1);
  for (size_t s = 0; s < order.size(); ++s) {
    for (const graph::Value* out : order[s]->outputs()) value_buffer(out, static_cast<int>(s));
  }

  // 2. Kernels, and which values a gradient reaches: a trainable parameter, or the output of a
  //    node that differentiates an input a gradient reaches. A parameter's gradient is a tensor
  //    of its own (the optimizer reads it after backward); the others go to the arena.
  const OpRegistry& registry = builtin_ops();
  std::map<const graph::Value*, size_t> grad_of;
  std::vector<const graph::Value*> grad_value;
  auto new_grad = [&](const graph::Value* v) {
    auto it = grad_of.find(v);
    if (it != grad_of.end()) return it->second;
    grad_of[v] = grads_.size();
    grad_value.push_back(v);
    grads_.push_back(parameter_of.count(v) ? Tensor(DType::kFloat32, *v->shape()) : Tensor());
    return grads_.size() - 1;
  };
  size_t max_workspace = 0;
  const PreparedWeightSharing sharing;  // one packing of a frozen constant the steps share
  for (const graph::Node* node : order) {
    Step step;
    step.node = node;
    std::vector<InputInfo> infos(node->num_inputs());
    for (size_t i = 0; i < node->num_inputs(); ++i) {
      const graph::Value* v = node->input(i);
      if (!v) continue;
      infos[i].present = true;
      infos[i].dtype = v->dtype();
      infos[i].shape = *v->shape();
      if (v->is_constant() && !parameter_of.count(v)) infos[i].constant = &v->constant();
    }
    std::vector<TensorInfo> out_infos;
    for (const graph::Value* out : node->outputs()) {
      out_infos.push_back({out->dtype(), *out->shape()});
    }
    const OpDef* def = registry.find(node->op_type());
    if (!def) throw_unsupported("training: " + node->label() + ": no runtime implementation");
    const bool inference_kernel =
        !def->create_training ||
        (options_.batch_norm_running_statistics && node->op_type() == "BatchNormalization");
    step.kernel = (inference_kernel ? def->create : def->create_training)(*node, infos, out_infos);
    max_workspace = std::max(
        {max_workspace, step.kernel->workspace_bytes(), step.kernel->backward_workspace_bytes()});

    bool float_output = false;
    for (const graph::Value* out : node->outputs()) {
      float_output = float_output || out->dtype() == DType::kFloat32;
    }
    for (size_t i = 0; i < node->num_inputs(); ++i) {
      const graph::Value* v = node->input(i);
      if (!v || v->dtype() != DType::kFloat32) continue;
      if (state.count(v)) continue;  // a gradient stops at state
      const bool is_parameter = parameter_of.count(v) > 0;
      const bool reached = is_parameter || grad_of.count(v) > 0;
      if (!reached) continue;
      if (!step.kernel->differentiable_input(i)) {
        // A parameter that this op does not differentiate (BN running statistics) is state;
        // a computed gradient path that stops here would silently lose gradient.
        if (!is_parameter && float_output) {
          std::string message = "training: " + node->label() + ": no backward for input " +
                                std::to_string(i) + " ('" + v->name() + "')";
          const graph::OpSchema* schema = graph::find_schema(node->op_type());
          if (schema && schema->gradient == graph::Gradient::kNone) {
            message.append(": ").append(schema->no_gradient_reason);
          }
          throw_unsupported(message);
        }
        continue;
      }
      step.targets.push_back({i, new_grad(v), 0, Tensor()});
    }
    if (!step.targets.empty()) {
      for (const graph::Value* out : node->outputs()) {
        step.output_grads.push_back(out->dtype() == DType::kFloat32 ? new_grad(out) : kNone);
      }
    }
    steps_.push_back(std::move(step));
  }
  for (const graph::Value* out : graph.outputs()) {
    auto it = grad_of.find(out);
    graph_output_grads_.push_back(it == grad_of.end() ? kNone : it->second);
  }

  // 3. Lifetimes. A forward value lives from its producer's forward until its last reader's
  //    forward, or, when its producer's or a reader's backward reads it (OpKernel::
  //    backward_reads), until the last of those backwards. A gradient lives from its first write
  //    (the graph outputs' at n, else the backward of its last differentiating reader) to its
  //    read by its producer's backward. A parameter's gradient is held outside the arena.
  auto has_backward = [&](size_t s) { return !steps_[s].targets.empty(); };
  auto extend = [&](size_t buffer, int time) {
    buffers[buffer].first = std::min(buffers[buffer].first, time);
    buffers[buffer].last = std::max(buffers[buffer].last, time);
  };
  std::set<const graph::Value*> graph_output_set(graph.outputs().begin(), graph.outputs().end());
  // Records (OpKernel::Record) kept: a step's offer is taken unless a value it spares would be
  // kept anyway, being a graph output or read by the backward of a step that keeps no record;
  // declining one offer can make another useless, so this runs until nothing changes. A step
  // without a backward (a fake quant of the model's input) takes one only to restore its
  // outputs, when some backward reads them and none is a graph output.
  std::vector<bool> keeps_record(order.size(), false);
  for (size_t s = 0; s < order.size(); ++s) {
    const OpKernel& kernel = *steps_[s].kernel;
    const OpKernel::Record record = kernel.record();
    keeps_record[s] = options_.compact_records && record.bytes > 0 &&
                      (has_backward(s) || record.restores_outputs) &&
                      kernel.shard_rounds().forward == 0 && kernel.shard_rounds().backward == 0;
  }
  auto reads_of = [&](size_t s) {
    return keeps_record[s] ? steps_[s].kernel->record().reads : steps_[s].kernel->backward_reads();
  };
  for (bool changed = true; changed;) {
    changed = false;
    std::map<const graph::Value*, std::vector<size_t>> readers;  // steps whose backward reads it
    for (size_t s = 0; s < order.size(); ++s) {
      if (!has_backward(s)) continue;
      const OpKernel::BackwardReads reads = reads_of(s);
      const auto& ins = order[s]->inputs();
      for (size_t i = 0; i < ins.size(); ++i) {
        if (ins[i] && OpKernel::BackwardReads::has(reads.inputs, i)) readers[ins[i]].push_back(s);
      }
      const auto& outs = order[s]->outputs();
      for (size_t i = 0; i < outs.size(); ++i) {
        if (OpKernel::BackwardReads::has(reads.outputs, i)) readers[outs[i]].push_back(s);
      }
    }
    for (size_t s = 0; s < order.size(); ++s) {
      if (!keeps_record[s]) continue;
      const OpKernel::BackwardReads full = steps_[s].kernel->backward_reads();
      const OpKernel::BackwardReads kept = steps_[s].kernel->record().reads;
      auto kept_anyway = [&](const graph::Value* v) {
        if (!v || v->is_constant()) return false;
        if (graph_output_set.count(v)) return true;
        auto it = readers.find(v);
        if (it == readers.end()) return false;
        return std::any_of(it->second.begin(), it->second.end(),
                           [&](size_t t) { return t != s && !keeps_record[t]; });
      };
      if (!has_backward(s)) {
        bool read = false;
        bool output = false;
        for (const graph::Value* out : order[s]->outputs()) {
          read = read || readers.count(out) > 0;
          output = output || graph_output_set.count(out) > 0;
        }
        if (!read || output) {
          keeps_record[s] = false;
          changed = true;
        }
        continue;
      }
      bool useful = true;
      const auto& ins = order[s]->inputs();
      for (size_t i = 0; i < ins.size(); ++i) {
        if (OpKernel::BackwardReads::has(full.inputs, i) &&
            !OpKernel::BackwardReads::has(kept.inputs, i) && kept_anyway(ins[i])) {
          useful = false;
        }
      }
      const auto& outs = order[s]->outputs();
      for (size_t i = 0; i < outs.size(); ++i) {
        if (OpKernel::BackwardReads::has(full.outputs, i) &&
            !OpKernel::BackwardReads::has(kept.outputs, i) && kept_anyway(outs[i])) {
          useful = false;
        }
      }
      if (!useful) {
        keeps_record[s] = false;
        changed = true;
      }
    }
  }
  // Values made again before a backward instead of kept: the outputs of a step whose record
  // restores them, or of a step cheap to recompute whose backward keeps its own inputs (none of
  // them recomputed itself), when no graph output is among them.
  std::map<const graph::Value*, size_t> producer_of;
  std::set<const graph::Value*> recomputed;
  for (size_t s = 0; s < order.size(); ++s) {
    for (const graph::Value* out : order[s]->outputs()) producer_of[out] = s;
    const OpKernel& kernel = *steps_[s].kernel;
    const bool restores = keeps_record[s] && kernel.record().restores_outputs;
    if (!has_backward(s) && !restores) continue;
    if (!restores && (!kernel.cheap_to_recompute() ||
                      kernel.backward_reads().inputs != OpKernel::BackwardReads::kEverything)) {
      continue;
    }
    bool eligible = true;
    for (const graph::Value* in : order[s]->inputs()) {
      eligible = eligible && (restores || !recomputed.count(in));
    }
    for (const graph::Value* out : order[s]->outputs()) {
      eligible = eligible && !graph_output_set.count(out);
    }
    if (!eligible) continue;
    for (const graph::Value* out : order[s]->outputs()) recomputed.insert(out);
  }
  std::vector<size_t> record_buffer(order.size(), kNone);
  for (size_t s = 0; s < order.size(); ++s) {
    if (!keeps_record[s]) continue;
    ArenaBuffer b;
    b.bytes = arena_aligned(steps_[s].kernel->record().bytes);
    b.first = static_cast<int>(s);
    b.last = backward_time(s);
    buffers.push_back(b);
    record_buffer[s] = buffers.size() - 1;
  }
  for (size_t s = 0; s < order.size(); ++s) {
    const OpKernel::BackwardReads reads = reads_of(s);
    const int forward_time = static_cast<int>(s);
    const auto& ins = order[s]->inputs();
    std::map<const graph::Value*, size_t> recompute_of;  // this step's, by value
    for (size_t i = 0; i < ins.size(); ++i) {
      if (!ins[i] || ins[i]->is_constant()) continue;
      const bool kept = has_backward(s) && OpKernel::BackwardReads::has(reads.inputs, i);
      if (kept && recomputed.count(ins[i])) {
        extend(buffer_of.at(ins[i]), forward_time);
        if (!recompute_of.count(ins[i])) {
          recompute_of[ins[i]] = steps_[s].recomputes.size();
          steps_[s].recomputes.push_back(
              {producer_of.at(ins[i]),
               new_buffer(*ins[i]->shape(), ins[i]->dtype(), backward_time(s)), Tensor()});
        }
        continue;
      }
      extend(buffer_of.at(ins[i]), kept ? backward_time(s) : forward_time);
    }
    if (!has_backward(s)) continue;
    const auto& outs = order[s]->outputs();
    for (size_t i = 0; i < outs.size(); ++i) {
      if (OpKernel::BackwardReads::has(reads.outputs, i)) {
        extend(buffer_of.at(outs[i]), backward_time(s));
      }
    }
  }
  for (const graph::Value* out : graph.outputs()) {
    if (!out->is_constant()) extend(buffer_of.at(out), end_time);
  }
  // Gradients: the times each is written and read; one that is never written (no differentiating
  // reader, not a graph output) gets no buffer, since backward never hands it to a kernel.
  std::vector<int> grad_first(grads_.size(), end_time + 1);
  std::vector<int> grad_last(grads_.size(), -1);
  std::vector<bool> grad_written(grads_.size(), false);
  auto touch = [&](size_t g, int time, bool write) {
    grad_first[g] = std::min(grad_first[g], time);
    grad_last[g] = std::max(grad_last[g], time);
    if (write) grad_written[g] = true;
  };
  for (size_t g : graph_output_grads_) {
    if (g != kNone) touch(g, seed_time, true);
  }
  for (size_t s = 0; s < steps_.size(); ++s) {
    for (const GradTarget& t : steps_[s].targets) touch(t.value, backward_time(s), true);
    for (size_t g : steps_[s].output_grads) {
      if (g != kNone) touch(g, backward_time(s), false);
    }
  }
  std::vector<size_t> grad_buffer(grads_.size(), kNone);
  for (size_t g = 0; g < grads_.size(); ++g) {
    if (grads_[g].defined() || !grad_written[g]) continue;  // a parameter's, or never written
    grad_buffer[g] = new_buffer(*grad_value[g]->shape(), DType::kFloat32, grad_first[g]);
    buffers[grad_buffer[g]].last = grad_last[g];
  }
  // A value that receives more than one contribution gets the later ones in scratch first,
  // which lives only during the backward of the step that writes it.
  std::vector<int> contributions(grads_.size(), 0);
  for (size_t g : graph_output_grads_) {
    if (g != kNone) ++contributions[g];
  }
  for (const Step& step : steps_) {
    for (const GradTarget& t : step.targets) ++contributions[t.value];
  }
  for (size_t s = 0; s < steps_.size(); ++s) {
    for (GradTarget& t : steps_[s].targets) {
      if (contributions[t.value] > 1) {
        t.scratch_buffer =
            new_buffer(*grad_value[t.value]->shape(), DType::kFloat32, backward_time(s));
      } else {
        t.scratch_buffer = kNone;
      }
    }
  }

  // 4. Placement, and every tensor a view of the arena, a parameter or a constant.
  arena_bytes_ = place_in_arena(buffers);
  unshared_bytes_ = 0;
  for (const ArenaBuffer& b : buffers) unshared_bytes_ += b.bytes;
  arena_ = std::make_unique<kernels::Storage>(std::max<size_t>(arena_bytes_, 1));
  auto arena_view = [&](const Shape& shape, DType dtype, size_t buffer) {
    return Tensor::wrap(dtype, shape, arena_->data() + buffers[buffer].offset);
  };
  auto tensor_for = [&](const graph::Value* v) -> Tensor {
    auto p = parameter_of.find(v);
    if (p != parameter_of.end()) return parameters_[p->second].value;
    if (v->is_constant()) return v->constant();
    return arena_view(*v->shape(), v->dtype(), buffer_of.at(v));
  };
  for (const graph::Value* in : graph.inputs()) {
    graph_inputs_.push_back(tensor_for(in));
    input_infos_.push_back({in->dtype(), *in->shape()});
  }
  for (const graph::Value* out : graph.outputs()) {
    graph_outputs_.push_back(tensor_for(out));
    output_infos_.push_back({out->dtype(), *out->shape()});
  }
  for (size_t s = 0; s < steps_.size(); ++s) {
    if (record_buffer[s] == kNone) continue;
    steps_[s].kernel->keep_record(arena_->data() + buffers[record_buffer[s]].offset);
    steps_[s].keeps_record = true;
  }
  size_t max_arity = 0;
  for (Step& step : steps_) {
    for (const graph::Value* v : step.node->inputs()) {
      step.inputs.push_back(v ? tensor_for(v) : Tensor());
    }
    for (const graph::Value* out : step.node->outputs()) step.outputs.push_back(tensor_for(out));
    step.backward_inputs = step.inputs;
    for (Recompute& r : step.recomputes) {
      const graph::Value* v = nullptr;
      for (const graph::Value* out : steps_[r.producer].node->outputs()) {
        for (size_t i = 0; i < step.node->num_inputs(); ++i) {
          if (step.node->input(i) == out) v = out;
        }
      }
      if (!v || steps_[r.producer].node->num_outputs() != 1) {
        throw_internal("training: " + step.node->label() +
                       ": a recomputed input without one producer");
      }
      r.value = arena_view(*v->shape(), v->dtype(), r.buffer);
      for (size_t i = 0; i < step.node->num_inputs(); ++i) {
        if (step.node->input(i) == v) step.backward_inputs[i] = r.value;
      }
    }
    for (GradTarget& t : step.targets) {
      if (t.scratch_buffer != kNone) {
        t.scratch = arena_view(*grad_value[t.value]->shape(), DType::kFloat32, t.scratch_buffer);
      }
    }
    max_arity = std::max({max_arity, step.inputs.size(), step.outputs.size()});
  }
  for (size_t g = 0; g < grads_.size(); ++g) {
    if (grad_buffer[g] != kNone) {
      grads_[g] = arena_view(*grad_value[g]->shape(), DType::kFloat32, grad_buffer[g]);
    }
  }
  for (auto& [v, index] : parameter_of) {
    auto it = grad_of.find(v);
    if (it == grad_of.end()) continue;
    parameters_[index].grad = grads_[it->second];
    parameter_grads_.push_back(it->second);
  }
  grad_written_.assign(grads_.size(), false);
  grad_outputs_.reserve(max_arity);
  grad_inputs_.reserve(max_arity);
  // Executors of one process's shards run one kernel at a time: they share one scratch buffer.
  if (shares && shares->workspace_bytes_ >= max_workspace) {
    workspace_ = shares->workspace_;
  } else {
    workspace_ = std::make_shared<std::vector<std::byte>>(max_workspace, std::byte{0});
  }
  workspace_bytes_ = max_workspace;
}

void TrainingExecutor::load_inputs(std::span<const Tensor> inputs) {
  if (inputs.size() != graph_inputs_.size()) {
    throw_invalid("training: the model takes " + std::to_string(graph_inputs_.size()) +
                  " inputs, got " + std::to_string(inputs.size()));
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor& dst = graph_inputs_[i];
    if (inputs[i].dtype() != dst.dtype() || inputs[i].shape() != dst.shape()) {
      throw_invalid("training: input '" + graph_->inputs()[i]->name() + "' expects " +
                    dst.describe() + ", got " + inputs[i].describe());
    }
    dst.copy_from(inputs[i]);
  }
}

std::span<const Tensor> TrainingExecutor::forward(std::span<const Tensor> inputs) {
  load_inputs(inputs);
  for (Step& step : steps_) {
    const auto start =
        profile_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
    step.kernel->forward(step.inputs, step.outputs, workspace_->data());
    if (profile_) {
      step.forward_seconds += seconds_since(start);
      ++step.forward_calls;
    }
  }
  return graph_outputs_;
}

void TrainingExecutor::begin_backward(std::span<const Tensor> output_grads) {
  if (output_grads.size() != graph_outputs_.size()) {
    throw_invalid("training: backward takes one gradient per output (" +
                  std::to_string(graph_outputs_.size()) + "), got " +
                  std::to_string(output_grads.size()));
  }
  std::fill(grad_written_.begin(), grad_written_.end(), false);
  for (size_t k = 0; k < output_grads.size(); ++k) {
    const size_t g = graph_output_grads_[k];
    if (g == kNone || !output_grads[k].defined()) continue;
    if (output_grads[k].shape() != grads_[g].shape()) {
      throw_invalid("training: the gradient of output '" + graph_->outputs()[k]->name() +
                    "' must be " + grads_[g].describe() + ", got " + output_grads[k].describe());
    }
    if (grad_written_[g]) {
      add_into(grads_[g], output_grads[k]);
    } else {
      grads_[g].copy_from(output_grads[k]);
      grad_written_[g] = true;
    }
  }
}

bool TrainingExecutor::prepare_backward_step(Step& step) {
  if (step.targets.empty()) return false;
  grad_outputs_.assign(step.outputs.size(), Tensor());
  bool any = false;
  for (size_t j = 0; j < step.outputs.size(); ++j) {
    const size_t g = step.output_grads[j];
    if (g != kNone && grad_written_[g]) {
      grad_outputs_[j] = grads_[g];
      any = true;
    }
  }
  if (!any) return false;
  grad_inputs_.assign(step.inputs.size(), Tensor());
  for (GradTarget& target : step.targets) {
    target.add_scratch = grad_written_[target.value];
    grad_inputs_[target.slot] = target.add_scratch ? target.scratch : grads_[target.value];
    grad_written_[target.value] = true;
  }
  for (Recompute& r : step.recomputes) {
    Step& producer = steps_[r.producer];
    if (producer.keeps_record) {
      producer.kernel->restore_outputs(std::span<Tensor>(&r.value, 1));
    } else {
      producer.kernel->recompute_outputs(producer.inputs, std::span<Tensor>(&r.value, 1),
                                         workspace_->data());
    }
  }
  return true;
}

void TrainingExecutor::end_backward_step(Step& step) {
  for (const GradTarget& target : step.targets) {
    if (target.add_scratch) add_into(grads_[target.value], target.scratch);
  }
}

void TrainingExecutor::end_backward() {
  // A parameter no gradient reached this time has gradient zero. (Other gradients are arena
  // memory that later steps reuse; nothing reads them after backward.)
  for (size_t g : parameter_grads_) {
    if (!grad_written_[g]) std::fill_n(grads_[g].data<float>(), grads_[g].numel(), 0.0f);
  }
}

void TrainingExecutor::backward(std::span<const Tensor> output_grads) {
  begin_backward(output_grads);
  for (auto s = steps_.rbegin(); s != steps_.rend(); ++s) {
    const auto start =
        profile_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
    if (!prepare_backward_step(*s)) continue;
    s->kernel->backward(s->backward_inputs, s->outputs, grad_outputs_, grad_inputs_,
                        workspace_->data());
    end_backward_step(*s);
    if (profile_) s->backward_seconds += seconds_since(start);
  }
  end_backward();
}

std::vector<TrainingExecutor::OpTime> TrainingExecutor::profile(bool per_node) const {
  std::vector<OpTime> result;
  std::map<std::string, size_t> index_of_type;
  for (const Step& step : steps_) {
    if (step.forward_calls == 0 && step.backward_seconds == 0) continue;
    const std::string& type = step.node->op_type();
    size_t i = result.size();
    if (per_node) {
      result.push_back(OpTime{type, step.node->name()});
    } else if (auto [it, added] = index_of_type.emplace(type, i); !added) {
      i = it->second;
    } else {
      result.push_back(OpTime{type, {}});
    }
    OpTime& t = result[i];
    t.forward_seconds += step.forward_seconds;
    t.backward_seconds += step.backward_seconds;
    t.forward_calls += step.forward_calls;
  }
  std::stable_sort(result.begin(), result.end(), [](const OpTime& a, const OpTime& b) {
    return a.forward_seconds + a.backward_seconds > b.forward_seconds + b.backward_seconds;
  });
  return result;
}

void TrainingExecutor::reset_profile() {
  for (Step& step : steps_) {
    step.forward_seconds = step.backward_seconds = 0;
    step.forward_calls = 0;
  }
}

// ShardGroup ------------------------------------------------------------------------------------

ShardGroup::ShardGroup(const graph::Graph& graph, const TrainingOptions& options,
                       ShardLayout layout)
    : layout_(layout) {
  const int ranks = layout.processes ? layout.processes->size() : 1;
  if (layout.total < 1 || layout.count < 1 || layout.first < 0 ||
      layout.first + layout.count > layout.total || (ranks == 1 && layout.count != layout.total)) {
    throw_internal("training: shards " + std::to_string(layout.first) + " + " +
                   std::to_string(layout.count) + " of " + std::to_string(layout.total));
  }
  total_batch_ = graph.inputs().at(0)->known_shape().at(0) * layout.total;
  shards_.push_back(std::make_unique<TrainingExecutor>(graph, options));
  for (int64_t i = 1; i < layout.count; ++i) {
    shards_.push_back(std::make_unique<TrainingExecutor>(graph, options, *shards_.front()));
  }
}

ShardGroup::~ShardGroup() = default;

const std::vector<double>& ShardGroup::sum_over_shards(const std::vector<double>& partial,
                                                       size_t n) {
  totals_.assign(n, 0.0);
  auto fold = [&](const double* shard, bool first) {
    if (first) {
      std::copy(shard, shard + n, totals_.begin());
    } else {
      for (size_t i = 0; i < n; ++i) totals_[i] += shard[i];
    }
  };
  if (!layout_.processes || layout_.processes->size() == 1) {
    for (size_t j = 0; j < shards_.size(); ++j) fold(partial.data() + j * n, j == 0);
    return totals_;
  }
  const auto* bytes = reinterpret_cast<const std::byte*>(partial.data());
  const auto start = std::chrono::steady_clock::now();
  const std::vector<std::vector<std::byte>> all =
      layout_.processes->allgather({bytes, shards_.size() * n * sizeof(double)});
  exchange_seconds_ += seconds_since(start);
  bool first = true;
  std::vector<double> shard(n);
  for (const std::vector<std::byte>& from : all) {
    if (from.size() % (n * sizeof(double)) != 0) {
      throw_internal("training: a rank sent partial sums of another size");
    }
    for (size_t at = 0; at < from.size(); at += n * sizeof(double)) {
      std::memcpy(shard.data(), from.data() + at, n * sizeof(double));
      fold(shard.data(), first);
      first = false;
    }
  }
  return totals_;
}

void ShardGroup::forward(std::span<const std::vector<Tensor>> inputs) {
  for (size_t j = 0; j < shards_.size(); ++j) shards_[j]->load_inputs(inputs[j]);
  const size_t steps = shards_.front()->steps_.size();
  for (size_t s = 0; s < steps; ++s) {
    const OpKernel::ShardRounds rounds = shards_.front()->steps_[s].kernel->shard_rounds();
    if (rounds.forward == 0) {
      for (auto& shard : shards_) {
        auto& step = shard->steps_[s];
        step.kernel->forward(step.inputs, step.outputs, shard->workspace_->data());
      }
      continue;
    }
    const double* totals = nullptr;
    for (int r = 0; r < rounds.forward; ++r) {
      partial_.assign(shards_.size() * rounds.size, 0.0);
      for (size_t j = 0; j < shards_.size(); ++j) {
        auto& step = shards_[j]->steps_[s];
        step.kernel->forward_round(r, step.inputs, step.outputs, totals,
                                   partial_.data() + j * rounds.size, total_batch_);
      }
      totals = sum_over_shards(partial_, rounds.size).data();
    }
    for (size_t j = 0; j < shards_.size(); ++j) {
      auto& step = shards_[j]->steps_[s];
      step.kernel->forward_finish(step.inputs, step.outputs, totals, total_batch_, j == 0);
    }
  }
}

float ShardGroup::backward(std::span<const std::vector<Tensor>> output_grads,
                           std::span<const float> losses) {
  for (size_t j = 0; j < shards_.size(); ++j) shards_[j]->begin_backward(output_grads[j]);
  for (size_t s = shards_.front()->steps_.size(); s-- > 0;) {
    const OpKernel::ShardRounds rounds = shards_.front()->steps_[s].kernel->shard_rounds();
    bool run = false;
    for (auto& shard : shards_) run = shard->prepare_backward_step(shard->steps_[s]);
    if (!run) continue;
    if (rounds.backward == 0) {
      for (auto& shard : shards_) {
        auto& step = shard->steps_[s];
        step.kernel->backward(step.backward_inputs, step.outputs, shard->grad_outputs_,
                              shard->grad_inputs_, shard->workspace_->data());
        shard->end_backward_step(step);
      }
      continue;
    }
    const double* totals = nullptr;
    for (int r = 0; r < rounds.backward; ++r) {
      partial_.assign(shards_.size() * rounds.size, 0.0);
      for (size_t j = 0; j < shards_.size(); ++j) {
        auto& step = shards_[j]->steps_[s];
        step.kernel->backward_round(r, step.backward_inputs, step.outputs,
                                    shards_[j]->grad_outputs_, totals,
                                    partial_.data() + j * rounds.size, total_batch_);
      }
      totals = sum_over_shards(partial_, rounds.size).data();
    }
    for (auto& shard : shards_) {
      auto& step = shard->steps_[s];
      step.kernel->backward_finish(step.backward_inputs, step.outputs, shard->grad_outputs_,
                                   shard->grad_inputs_, totals, total_batch_);
      shard->end_backward_step(step);
    }
  }
  for (auto& shard : shards_) shard->end_backward();
  return fold_gradients(losses);
}

float ShardGroup::fold_gradients(std::span<const float> losses) {
  // Each shard's loss and trainable gradients, as float pointers per shard in shard order:
  // this process's executors, or every process's shards as gathered.
  TrainingExecutor& first = *shards_.front();
  std::vector<Tensor*> grads;
  for (Parameter& p : first.parameters_) {
    if (p.trainable()) grads.push_back(&p.grad);
  }
  struct ShardView {
    float loss = 0;
    std::vector<const float*> grads;
  };
  std::vector<ShardView> views;
  std::vector<std::vector<std::byte>> gathered;
  if (!layout_.processes || layout_.processes->size() == 1) {
    for (size_t j = 0; j < shards_.size(); ++j) {
      ShardView v{losses[j], {}};
      for (const Parameter& p : shards_[j]->parameters_) {
        if (p.trainable()) v.grads.push_back(p.grad.data<float>());
      }
      views.push_back(std::move(v));
    }
  } else {
    size_t shard_bytes = sizeof(float);
    for (const Tensor* g : grads) shard_bytes += static_cast<size_t>(g->numel()) * sizeof(float);
    std::vector<std::byte> mine(shard_bytes * shards_.size());
    std::byte* at = mine.data();
    for (size_t j = 0; j < shards_.size(); ++j) {
      std::memcpy(at, &losses[j], sizeof(float));
      at += sizeof(float);
      for (const Parameter& p : shards_[j]->parameters_) {
        if (!p.trainable()) continue;
        const size_t n = static_cast<size_t>(p.grad.numel()) * sizeof(float);
        std::memcpy(at, p.grad.data<float>(), n);
        at += n;
      }
    }
    const auto start = std::chrono::steady_clock::now();
    gathered = layout_.processes->allgather(mine);
    exchange_seconds_ += seconds_since(start);
    mine = {};
    for (const std::vector<std::byte>& from : gathered) {
      if (from.size() % shard_bytes != 0) {
        throw_internal("training: a rank sent gradients of another size");
      }
      for (size_t off = 0; off < from.size(); off += shard_bytes) {
        ShardView v;
        std::memcpy(&v.loss, from.data() + off, sizeof(float));
        size_t g_off = off + sizeof(float);
        for (const Tensor* g : grads) {
          // Offsets are multiples of 4 from an allocation aligned for any scalar.
          v.grads.push_back(reinterpret_cast<const float*>(from.data() + g_off));
          g_off += static_cast<size_t>(g->numel()) * sizeof(float);
        }
        views.push_back(std::move(v));
      }
    }
  }
  if (views.size() != static_cast<size_t>(layout_.total)) {
    throw_internal("training: gathered " + std::to_string(views.size()) + " shards of " +
                   std::to_string(layout_.total));
  }
  const auto fold_start = std::chrono::steady_clock::now();
  float loss = views.front().loss;
  for (size_t j = 1; j < views.size(); ++j) loss += views[j].loss;
  for (size_t k = 0; k < grads.size(); ++k) {
    float* d = grads[k]->data<float>();
    const float* s0 = views.front().grads[k];
    kernels::parallel_for(grads[k]->numel(), 1 << 14, [&](int64_t begin, int64_t end) {
      if (s0 != d) std::copy(s0 + begin, s0 + end, d + begin);
      for (size_t j = 1; j < views.size(); ++j) {
        const float* src = views[j].grads[k];
        for (int64_t i = begin; i < end; ++i) d[i] += src[i];
      }
    });
  }
  fold_seconds_ += seconds_since(fold_start);
  return loss;
}

ClassifierTraining::ClassifierTraining(const graph::Graph& model, int64_t batch) : batch_(batch) {
  if (model.inputs().empty() || model.outputs().empty()) {
    throw_invalid("training: the model must have an input and an output of logits, it has " +
                  std::to_string(model.inputs().size()) + " inputs and " +
                  std::to_string(model.outputs().size()) + " outputs");
  }
  const std::vector<std::string> parameters = trainable_initializers(model);
  graph_ = model.clone();
  ResolveOptions resolve_options;
  resolve_options.input_shapes = input_shapes_for_batch(*graph_, batch);
  resolve_options.parameters.insert(parameters.begin(), parameters.end());
  resolve(*graph_, resolve_options);
  set_up(TrainingOptions{parameters, {}});
}

ClassifierTraining::ClassifierTraining(std::unique_ptr<graph::Graph> resolved,
                                       TrainingOptions options)
    : graph_(std::move(resolved)) {
  if (graph_->inputs().empty() || graph_->outputs().empty()) {
    throw_invalid("training: the model must have an input and an output of logits, it has " +
                  std::to_string(graph_->inputs().size()) + " inputs and " +
                  std::to_string(graph_->outputs().size()) + " outputs");
  }
  batch_ = graph_->inputs()[0]->known_shape().at(0);
  set_up(std::move(options));
}

void ClassifierTraining::set_up(TrainingOptions options) {
  options_ = std::move(options);
  if (model_outputs() < 1 || model_outputs() > graph_->outputs().size()) {
    throw_internal("training: " + std::to_string(options_.model_outputs) +
                   " model outputs of a graph of " + std::to_string(graph_->outputs().size()));
  }
  const graph::Value* logits = graph_->outputs()[0];
  // A model of several float outputs (a detector's boxes and scores) is no classifier, whatever
  // the shape of its first.
  const auto float_outputs =
      std::count_if(graph_->outputs().begin(), graph_->outputs().begin() + model_outputs(),
                    [](const graph::Value* out) { return out->dtype() == DType::kFloat32; });
  const bool classifier = float_outputs == 1 && logits->dtype() == DType::kFloat32 &&
                          logits->known_shape().size() == 2 && logits->known_shape()[0] == batch_ &&
                          logits->known_shape()[1] > 0;
  classes_ = classifier ? logits->known_shape()[1] : 0;
  set_shards(ShardLayout{});
  bool any_trainable = false;
  for (const Parameter& p : executor().parameters()) any_trainable = any_trainable || p.trainable();
  if (!any_trainable) throw_invalid("training: the model has no trainable float initializer");
}

void ClassifierTraining::set_shards(ShardLayout layout) {
  // The graph's constants are the parameters as trained so far (below): the new executors
  // start from them.
  group_ = std::make_unique<ShardGroup>(*graph_, options_, layout);
  // The graph's constants become the parameters themselves (one storage, updated in place), so
  // that the weights are held once, not twice; a new group clones them as trained.
  for (const Parameter& p : std::as_const(*group_).first().parameters()) {
    graph_->find_value(p.name)->set_constant(p.value);
  }
  const int64_t rows = local_batch();
  probabilities_ = Tensor(DType::kFloat32, {rows, classes_});
  row_loss_ = Tensor(DType::kFloat32, {rows});
  if (teacher_probabilities_.defined()) teacher_probabilities_ = Tensor();
  output_grads_.assign(static_cast<size_t>(layout.count), {});
  for (std::vector<Tensor>& grads : output_grads_) {
    grads.resize(graph_->outputs().size());
    if (!dense()) {
      grads[0] = Tensor(DType::kFloat32, {batch_, classes_});
      continue;
    }
    for (size_t k = 0; k < model_outputs(); ++k) {
      const graph::Value* out = graph_->outputs()[k];
      if (out->dtype() == DType::kFloat32) grads[k] = Tensor(DType::kFloat32, out->known_shape());
    }
  }
  shard_inputs_.assign(static_cast<size_t>(layout.count), std::vector<Tensor>(1));
  shard_losses_.assign(static_cast<size_t>(layout.count), 0.0f);
}

ClassifierTraining::~ClassifierTraining() = default;

void ClassifierTraining::freeze_batch_norm() {
  if (options_.batch_norm_running_statistics) return;
  options_.batch_norm_running_statistics = true;
  set_shards(group_->layout());
}

void ClassifierTraining::set_compact_records(bool compact) {
  if (options_.compact_records == compact) return;
  options_.compact_records = compact;
  set_shards(group_->layout());
}

Tensor ClassifierTraining::forward(const Tensor& input) {
  if (sharded()) throw_internal("ClassifierTraining::forward: not with shards");
  return executor().forward({&input, 1})[0];
}

float ClassifierTraining::forward_backward(const Tensor& input, const Tensor& labels) {
  return forward_backward(input, ClassifierLoss{.labels = &labels});
}

float ClassifierTraining::forward_backward(const Tensor& input, const ClassifierLoss& loss) {
  return forward_backward({&input, 1}, loss);
}

float ClassifierTraining::forward_backward(std::span<const Tensor> inputs,
                                           const ClassifierLoss& loss) {
  const float local = forward_loss(inputs, loss);
  const float total = backward();
  return sharded() ? total : local;
}

float ClassifierTraining::backward() {
  if (!sharded()) {
    executor().backward(output_grads_[0]);
    return shard_losses_[0];
  }
  return group_->backward(output_grads_, shard_losses_);
}

float ClassifierTraining::forward_loss(const Tensor& input, const ClassifierLoss& loss) {
  return forward_loss({&input, 1}, loss);
}

float ClassifierTraining::forward_loss(std::span<const Tensor> inputs, const ClassifierLoss& loss) {
  const Tensor* labels = loss.labels;
  const Tensor* teacher = loss.teacher_logits;
  const int64_t rows = local_batch();
  const ShardLayout& layout = group_->layout();
  // Checked on every process before the first collective, so that bad labels on one stop all.
  const Error* failure = nullptr;
  std::optional<Error> error;
  try {
    if (dense()) {
      const graph::Value* first = graph_->outputs()[0];
      if (labels || teacher) {
        throw_invalid("training: output '" + first->name() +
                      "' must be float32 logits [batch, classes] for " +
                      (labels ? "labels" : "a teacher's logits") + ", got " +
                      kernels::shape_str(first->known_shape()) +
                      "; such a model trains by distillation of its outputs");
      }
      if (loss.teacher_outputs.size() != model_outputs()) {
        throw_invalid("training: a step needs the teacher's value of each of the " +
                      std::to_string(model_outputs()) + " outputs, got " +
                      std::to_string(loss.teacher_outputs.size()));
      }
      for (size_t k = 0; k < model_outputs(); ++k) {
        const graph::Value* out = graph_->outputs()[k];
        if (out->dtype() != DType::kFloat32) continue;
        const Tensor& t = loss.teacher_outputs[k];
        if (!t.defined() || t.dtype() != DType::kFloat32 ||
            t.numel() != kernels::shape_numel(out->known_shape()) / batch_ * rows) {
          throw_invalid("training: the teacher's output '" + out->name() + "' must be float32 " +
                        "of " + std::to_string(rows) + " samples of " +
                        kernels::shape_str(out->known_shape()) + " per " + std::to_string(batch_) +
                        ", got " + (t.defined() ? t.describe() : std::string("none")));
        }
      }
    } else if (!labels && !teacher) {
      throw_invalid("training: a step needs labels or a teacher's logits");
    }
    if (inputs.size() != graph_->inputs().size()) {
      throw_invalid("training: the model takes " + std::to_string(graph_->inputs().size()) +
                    " inputs, got " + std::to_string(inputs.size()));
    }
    for (const Tensor& input : inputs) {
      if (input.rank() < 1 || input.dim(0) != rows) {
        throw_invalid("training: the input must hold " + std::to_string(rows) + " samples, got " +
                      input.describe());
      }
    }
    if (labels) {
      if (labels->dtype() != DType::kInt64 || labels->rank() != 1 || labels->dim(0) != rows) {
        throw_invalid("training: labels must be int64 [" + std::to_string(rows) +
                      "], one per input sample, got " + labels->describe());
      }
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t label = labels->data<int64_t>()[i];
        if (label < 0 || label >= classes_) {
          throw_invalid("training: label " + std::to_string(i) + " is " + std::to_string(label) +
                        ", outside the model's " + std::to_string(classes_) + " classes [0, " +
                        std::to_string(classes_) + ")");
        }
      }
    }
    if (teacher &&
        (teacher->dtype() != DType::kFloat32 || teacher->shape() != Shape{rows, classes_})) {
      throw_invalid("training: the teacher's logits must be float32 [" + std::to_string(rows) +
                    ", " + std::to_string(classes_) + "], got " + teacher->describe());
    }
  } catch (const Error& e) {
    if (!layout.processes || layout.processes->size() == 1) throw;
    error.emplace(e);
    failure = &*error;
  }
  if (layout.processes && layout.processes->size() > 1) {
    agree_on_failure(*layout.processes, failure);
  }
  const float kl_weight = labels && teacher ? loss.distill_weight : 1.0f;
  const float ce_weight = labels && teacher ? 1.0f - loss.distill_weight : 1.0f;
  // Each shard's loss is its mean over its samples times its share of the batch.
  const float share = 1.0f / static_cast<float>(layout.total);
  if (sharded()) {
    for (int64_t j = 0; j < layout.count; ++j) {
      std::vector<Tensor>& shard = shard_inputs_[static_cast<size_t>(j)];
      shard.resize(inputs.size());
      for (size_t k = 0; k < inputs.size(); ++k) {
        shard[k] = inputs[k].slice_rows(j * batch_, (j + 1) * batch_);
      }
    }
    group_->forward(shard_inputs_);
  } else {
    executor().forward(inputs);
  }
  if (dense()) return dense_loss(loss.teacher_outputs, share);
  if (teacher && !teacher_probabilities_.defined()) {
    teacher_probabilities_ = Tensor(DType::kFloat32, {rows, classes_});
  }
  const kernels::LossDims dims{batch_, classes_};
  float local = 0;
  for (int64_t j = 0; j < layout.count; ++j) {
    const size_t shard = static_cast<size_t>(j);
    const int64_t first = j * batch_;
    const Tensor logits = group_->shard(shard).outputs()[0];
    float* probabilities = probabilities_.data<float>() + first * classes_;
    float* row_loss = row_loss_.data<float>() + first;
    float* grad = output_grads_[shard][0].data<float>();
    float total = 0;
    kernels::GradMode mode = kernels::GradMode::kOverwrite;
    if (labels) {
      const int64_t* shard_labels = labels->data<int64_t>() + first;
      const float ce = kernels::cross_entropy(dims, logits.data<float>(), shard_labels,
                                              probabilities, row_loss, loss.label_smoothing);
      kernels::cross_entropy_backward(dims, probabilities, shard_labels, ce_weight * share, grad,
                                      mode, loss.label_smoothing);
      total += ce_weight * ce;
      mode = kernels::GradMode::kAccumulate;
    }
    if (teacher) {
      const kernels::DistillationOptions options{loss.temperature, true};
      const float kl = kernels::distillation_kl(
          dims, options, logits.data<float>(), teacher->data<float>() + first * classes_,
          probabilities, teacher_probabilities_.data<float>() + first * classes_, row_loss);
      kernels::distillation_kl_backward(dims, options, probabilities,
                                        teacher_probabilities_.data<float>() + first * classes_,
                                        kl_weight * share, grad, mode);
      total += kl_weight * kl;
    }
    shard_losses_[shard] = total * share;
    local += shard_losses_[shard];
  }
  return local;
}

float ClassifierTraining::dense_loss(std::span<const Tensor> teacher, float share) {
  float local = 0;
  const ShardLayout& layout = group_->layout();
  for (int64_t j = 0; j < layout.count; ++j) {
    const size_t shard = static_cast<size_t>(j);
    const std::span<const Tensor> outputs = group_->shard(shard).outputs();
    float total = 0;
    for (size_t k = 0; k < outputs.size(); ++k) {
      Tensor& grad = output_grads_[shard][k];
      if (!grad.defined()) continue;
      const Tensor& student = outputs[k];
      const int64_t n = student.numel() / batch_;
      const float* t = teacher[k].data<float>() + j * batch_ * n;
      total += kernels::relative_squared_error(batch_, n, student.data<float>(), t,
                                               row_loss_.data<float>() + j * batch_);
      kernels::relative_squared_error_backward(batch_, n, student.data<float>(), t, share,
                                               grad.data<float>());
    }
    shard_losses_[shard] = total * share;
    local += shard_losses_[shard];
  }
  return local;
}

std::vector<std::pair<std::string, Tensor>> ClassifierTraining::gradients() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const Parameter& p : std::as_const(*group_).first().parameters()) {
    if (p.trainable()) out.emplace_back(p.name, p.grad.clone());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

GradientResult cross_entropy_gradients(const graph::Graph& model, const Tensor& input,
                                       const Tensor& labels) {
  if (input.rank() < 1) throw_invalid("grad: the input batch has no batch axis");
  ClassifierTraining training(model, input.dim(0));
  GradientResult result;
  result.loss = training.forward_backward(input, labels);
  result.gradients = training.gradients();
  return result;
}

}  // namespace qforge::runtime
