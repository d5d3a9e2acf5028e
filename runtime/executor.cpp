// Plan compilation (kernel binding, liveness, arena placement) and the forward loop.
#include "runtime/executor.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <set>

#include "kernels/shape_ops.h"
#include "runtime/arena_plan.h"
#include "runtime/memory_budget.h"
#include "runtime/ops/ops.h"
#include "runtime/prepared_weights.h"

namespace qforge::runtime {
namespace {

// What kernel creation and shape inference see of a node's inputs (a released constant's values
// are not theirs to see: it reads as a plain input).
std::vector<InputInfo> infos_of(const graph::Node& node) {
  std::vector<InputInfo> infos(node.num_inputs());
  for (size_t i = 0; i < node.num_inputs(); ++i) {
    const graph::Value* v = node.input(i);
    if (!v) continue;
    infos[i].present = true;
    infos[i].dtype = v->dtype();
    infos[i].shape = *v->shape();
    if (v->is_constant() && !v->is_released()) infos[i].constant = &v->constant();
  }
  return infos;
}

// Product of dims [begin, end) of a shape.
int64_t dims_product(const kernels::Shape& shape, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t a = begin; a < end; ++a) p *= shape[a];
  return p;
}

// Elements before output 0's first one in input 0, when output 0 is a run of input 0's elements
// in their order: then the node needs no kernel, its output is a view of its input's buffer at
// that offset. Reshape and its kin (offset 0); a Pad of zeros; a Slice of step 1 whose output
// is contiguous in its input (the whole input, or a range of the outermost axis longer than one,
// every axis after it whole); a Gather of one constant index along such an axis (qkv[0]); an
// Expand to the input's own shape (torch.onnx writes one before each assignment to a slice).
// Their outputs' bits are the input's, so a view changes no result, only a copy saved.
std::optional<int64_t> view_offset(const graph::Node& node) {
  static const std::set<std::string, std::less<>> kViews = {"Reshape",   "Flatten",  "Squeeze",
                                                            "Unsqueeze", "Identity", "Dropout"};
  const graph::Value* src = node.input(0);
  const graph::Value* out = node.output(0);
  if (!src || src->is_constant() || out->is_graph_output() || src->dtype() != out->dtype()) {
    return std::nullopt;
  }
  for (size_t i = 1; i < node.num_outputs(); ++i) {
    const graph::Value* extra = node.output(i);
    if (!extra->consumers().empty() || extra->is_graph_output()) return std::nullopt;
  }
  const std::string& op = node.op_type();
  if (kViews.count(op)) return 0;
  if (!src->has_shape() || !out->has_shape() || kernels::shape_numel(*out->shape()) == 0) {
    return std::nullopt;
  }
  const kernels::Shape& in_shape = *src->shape();
  const kernels::Shape& out_shape = *out->shape();
  const size_t rank = in_shape.size();
  const std::vector<InputInfo> inputs = infos_of(node);
  // An integer constant input's values (a Pad's pads, a Gather's indices).
  auto ints = [&](size_t i) -> std::optional<std::vector<int64_t>> {
    if (i >= inputs.size() || !inputs[i].constant) return std::nullopt;
    return inputs[i].constant->to_int64_vector();
  };
  if (op == "Expand") return out_shape == in_shape ? std::optional<int64_t>(0) : std::nullopt;
  if (op == "Pad") {
    const auto pads = ints(1);
    if (!pads || out_shape != in_shape) return std::nullopt;
    const bool zeros = std::all_of(pads->begin(), pads->end(), [](int64_t p) { return p == 0; });
    return zeros ? std::optional<int64_t>(0) : std::nullopt;
  }
  if (op == "Slice") {
    const std::vector<kernels::SliceRange> ranges = ops::slice_ranges(node, inputs);
    // In order: step 1 wherever more than one element is read.
    for (const kernels::SliceRange& r : ranges) {
      if (r.count > 1 && r.step != 1) return std::nullopt;
    }
    // The first axis the slice narrows: the axes before it hold one element in all, those
    // after it are whole.
    size_t narrowed = 0;
    while (narrowed < rank && ranges[narrowed].count == in_shape[narrowed]) ++narrowed;
    if (narrowed == rank) return 0;
    if (dims_product(in_shape, 0, narrowed) != 1) return std::nullopt;
    for (size_t a = narrowed + 1; a < rank; ++a) {
      if (ranges[a].count != in_shape[a]) return std::nullopt;
    }
    return ranges[narrowed].start * dims_product(in_shape, narrowed + 1, rank);
  }
  if (op == "Gather") {
    const auto indices = ints(1);
    if (!indices || indices->size() != 1 || rank == 0) return std::nullopt;
    int64_t axis = node.attr_int("axis", 0);
    if (axis < 0) axis += static_cast<int64_t>(rank);
    if (axis < 0 || axis >= static_cast<int64_t>(rank)) return std::nullopt;
    const auto ua = static_cast<size_t>(axis);
    if (dims_product(in_shape, 0, ua) != 1) return std::nullopt;
    int64_t index = indices->front();
    if (index < 0) index += in_shape[ua];
    if (index < 0 || index >= in_shape[ua]) return std::nullopt;
    return index * dims_product(in_shape, ua + 1, rank);
  }
  return std::nullopt;
}

// The input a node's kernel may write its output over, where nothing reads that input after it:
// element-wise unary float ops (kernels::unary_f32 allows y == x) over their input, a
// SliceUpdate over its data (the kernel then writes only the box), and a FusedConv or
// ConvBNAddAct over its residual where its convolution reads each residual element just before
// writing the same output element (ops::conv_residual_written_over). The output then takes the
// input's buffer, so the two are not both live.
std::optional<size_t> writable_input(const graph::Node& node) {
  static const std::set<std::string, std::less<>> kOps = {
      "Relu", "LeakyRelu", "Elu",  "Sigmoid", "HardSigmoid", "HardSwish", "Silu",    "Gelu",
      "Erf",  "Tanh",      "Sqrt", "Neg",     "Exp",         "Log",       "Softplus"};
  if (node.num_outputs() != 1) return std::nullopt;
  size_t index = 0;
  if (node.op_type() == "FusedConv" || node.op_type() == "ConvBNAddAct") {
    const std::optional<size_t> residual = ops::conv_residual_written_over(node, infos_of(node));
    if (!residual) return std::nullopt;
    index = *residual;
  } else if (node.op_type() == "SliceUpdate") {
    index = 0;
  } else if (node.num_inputs() != 1 || !kOps.count(node.op_type())) {
    return std::nullopt;
  }
  const graph::Value* in = node.input(index);
  const graph::Value* out = node.output(0);
  const bool fits = in && !in->is_constant() && in->dtype() == kernels::DType::kFloat32 &&
                    out->dtype() == kernels::DType::kFloat32 && in->has_shape() &&
                    out->has_shape() && *in->shape() == *out->shape();
  return fits ? std::optional<size_t>(index) : std::nullopt;
}

// A buffer's times are step indices: first, the step that defines it (-1: a graph input);
// last, the last step that reads it (the end, for graph outputs).
using Buffer = ArenaBuffer;

// Steps 1 to 3 of compiling: every buffer, its lifetime and its place in the arena; nothing is
// allocated, so the memory a plan needs is known before committing to it.
struct BufferPlan {
  std::map<const graph::Value*, size_t> buffer_of;
  std::vector<Buffer> buffers;
  std::vector<bool> aliased;          // per step: a view that aliases its input 0
  std::vector<int> in_place;          // per step: the input a kernel writes over, or -1
  std::vector<int64_t> view_offsets;  // per aliased step: the view's first element in input 0
  size_t arena_bytes = 0;
};

BufferPlan plan_buffers(const graph::Graph& graph) {
  const auto& order = graph.nodes();
  const int end_step = static_cast<int>(order.size());
  BufferPlan plan;
  auto& buffer_of = plan.buffer_of;
  auto& buffers = plan.buffers;

  // The last step that reads each value (the end for graph outputs).
  std::map<const graph::Value*, int> last_read;
  for (size_t s = 0; s < order.size(); ++s) {
    for (const graph::Value* in : order[s]->inputs()) {
      if (in && !in->is_constant()) last_read[in] = static_cast<int>(s);
    }
  }
  for (const graph::Value* out : graph.outputs()) {
    if (!out->is_constant()) last_read[out] = end_step;
  }
  auto read_until = [&](const graph::Value* v) {
    auto it = last_read.find(v);
    return it == last_read.end() ? -1 : it->second;
  };

  // 1. Buffers: one per graph input and per produced value, except views, which map to the
  //    buffer of what they alias, and element-wise ops written over an input that nothing reads
  //    after them, which map to the input's buffer.
  std::vector<int> buffer_read_until;  // per buffer: the last read of any value mapped to it
  auto new_buffer = [&](const graph::Value* v, int first) {
    if (!v->has_shape()) throw_internal("executor: value '" + v->name() + "' has no shape");
    Buffer b;
    b.bytes = arena_aligned(static_cast<size_t>(kernels::shape_numel(*v->shape())) *
                            kernels::dtype_size(v->dtype()));
    b.first = first;
    b.last = first;
    buffer_of[v] = buffers.size();
    buffers.push_back(b);
    buffer_read_until.push_back(read_until(v));
  };
  auto share_buffer = [&](const graph::Value* v, const graph::Value* with) {
    const size_t b = buffer_of.at(with);
    buffer_of[v] = b;
    buffer_read_until[b] = std::max(buffer_read_until[b], read_until(v));
  };
  for (const graph::Value* in : graph.inputs()) new_buffer(in, -1);
  plan.aliased.assign(order.size(), false);
  plan.in_place.assign(order.size(), -1);
  plan.view_offsets.assign(order.size(), 0);
  for (size_t s = 0; s < order.size(); ++s) {
    const graph::Node* node = order[s];
    const graph::Value* src = node->input(0);
    if (const std::optional<int64_t> offset = view_offset(*node)) {
      plan.aliased[s] = true;
      plan.view_offsets[s] = *offset;
      share_buffer(node->output(0), src);
      // Unused extra outputs (Dropout's mask) still get a small buffer of their own.
      for (size_t i = 1; i < node->num_outputs(); ++i) new_buffer(node->output(i), int(s));
      continue;
    }
    // Over an input: a buffer of a produced value (not a graph input's, which the caller's
    // batch is copied into), read by nothing after this step through any value it holds, and
    // holding no other input of this step (which the kernel would read after overwriting it).
    if (const std::optional<size_t> i = writable_input(*node)) {
      const graph::Value* in = node->input(*i);
      const size_t b = buffer_of.at(in);
      bool shared = false;
      for (size_t j = 0; j < node->num_inputs(); ++j) {
        const graph::Value* other = node->input(j);
        shared = shared || (j != *i && other && !other->is_constant() && buffer_of.at(other) == b);
      }
      if (buffers[b].first >= 0 && buffer_read_until[b] == static_cast<int>(s) && !shared) {
        plan.in_place[s] = static_cast<int>(*i);
        share_buffer(node->output(0), in);
        continue;
      }
    }
    for (const graph::Value* out : node->outputs()) new_buffer(out, static_cast<int>(s));
  }
  // 2. Liveness: a buffer lives until the last step that reads any value it holds (its views and
  //    what was written over it included; the end for graph outputs), graph inputs to the end.
  for (size_t b = 0; b < buffers.size(); ++b) {
    buffers[b].last = std::max(buffers[b].first, buffer_read_until[b]);
  }
  for (const graph::Value* in : graph.inputs()) buffers[buffer_of.at(in)].last = end_step;

  // 3. Placement: largest first, each at the lowest offset free during its lifetime.
  plan.arena_bytes = place_in_arena(buffers);
  return plan;
}

// The constants the nodes read: the weights the kernels prepare their own forms of.
size_t weight_bytes(const graph::Graph& graph) {
  std::set<const graph::Value*> seen;
  size_t bytes = 0;
  for (const graph::Node* node : graph.nodes()) {
    for (const graph::Value* v : node->inputs()) {
      if (!v || !v->is_constant() || !seen.insert(v).second) continue;
      if (v->constant().defined()) bytes += v->constant().nbytes();
    }
  }
  return bytes;
}

}  // namespace

PlanMemory estimate_plan_memory(const graph::Graph& graph) {
  PlanMemory m;
  m.arena_bytes = plan_buffers(graph).arena_bytes;
  m.weight_bytes = weight_bytes(graph);
  return m;
}

size_t input_bytes(const graph::Graph& graph) {
  size_t bytes = 0;
  for (const graph::Value* in : graph.inputs()) {
    if (in->has_shape()) {
      bytes += static_cast<size_t>(kernels::shape_numel(*in->shape())) *
               kernels::dtype_size(in->dtype());
    }
  }
  return bytes;
}

Executor::Executor(const graph::Graph& graph, ExecutorOptions options) : options_(options) {
  compile(graph);
}

Executor::~Executor() = default;

void Executor::compile(const graph::Graph& graph) {
  graph_ = &graph;
  const auto& order = graph.nodes();
  BufferPlan plan = plan_buffers(graph);
  const std::map<const graph::Value*, size_t>& buffer_of = plan.buffer_of;
  const std::vector<Buffer>& buffers = plan.buffers;
  const std::vector<bool>& aliased = plan.aliased;
  arena_bytes_ = plan.arena_bytes;
  // Refused before anything large is allocated: the arena and weights now, the workspace once
  // the kernels have said what they need.
  PlanMemory need;
  need.arena_bytes = arena_bytes_;
  need.weight_bytes = weight_bytes(graph);
  check_memory_budget("executor", need, options_.memory_budget_bytes);
  arena_ = std::make_unique<kernels::Storage>(std::max<size_t>(arena_bytes_, 1));

  auto view_of = [&](const graph::Value* v) -> Tensor {
    if (v->is_constant()) return v->constant();
    auto it = views_.find(v);
    if (it != views_.end()) return it->second;
    const Buffer& b = buffers[buffer_of.at(v)];
    Tensor t = Tensor::wrap(v->dtype(), *v->shape(), arena_->data() + b.offset);
    views_[v] = t;
    return t;
  };

  // 4. Kernels and prebuilt views.
  for (const graph::Value* in : graph.inputs()) {
    graph_inputs_.push_back(view_of(in));
    input_infos_.push_back({in->dtype(), *in->shape()});
  }
  const OpRegistry& registry = builtin_ops();
  size_t max_workspace = 0;
  // With release_prepared_constants: per constant, the uses not yet bound and whether any bound
  // use still reads it; its step_inputs_ slots, emptied when it is released.
  struct ConstantUses {
    size_t pending = 0;
    bool read = false;
    std::vector<size_t> slots;
  };
  std::map<graph::Value*, ConstantUses> constant_uses;
  if (options_.release_prepared_constants) {
    for (const graph::Node* node : order) {
      for (graph::Value* v : node->inputs()) {
        if (v && v->is_constant()) ++constant_uses[v].pending;
      }
    }
    for (graph::Value* out : graph.outputs()) {
      auto it = constant_uses.find(out);
      if (it != constant_uses.end()) it->second.read = true;
    }
  }
  const PreparedWeightSharing sharing;  // one packing of a constant the steps share
  for (size_t s = 0; s < order.size(); ++s) {
    const graph::Node* node = order[s];
    Step step;
    step.node = node;
    const std::vector<InputInfo> infos = infos_of(*node);
    step.inputs_begin = step_inputs_.size();
    for (const graph::Value* v : node->inputs()) {
      step_inputs_.push_back(v ? view_of(v) : Tensor());
    }
    step.inputs_end = step_inputs_.size();
    step.outputs_begin = step_outputs_.size();
    std::vector<TensorInfo> out_infos;
    for (const graph::Value* out : node->outputs()) {
      // A view, or a kernel written over its input: output 0 is the input's memory (at the
      // view's offset), wherever in its buffer the input lies.
      if ((aliased[s] || plan.in_place[s] >= 0) && out == node->output(0)) {
        Tensor src = view_of(node->input(aliased[s] ? 0 : static_cast<size_t>(plan.in_place[s])));
        const size_t offset =
            static_cast<size_t>(plan.view_offsets[s]) * kernels::dtype_size(src.dtype());
        Tensor t =
            Tensor::wrap(out->dtype(), *out->shape(), static_cast<std::byte*>(src.raw()) + offset);
        views_[out] = t;
        step_outputs_.push_back(t);
      } else {
        step_outputs_.push_back(view_of(out));
      }
      out_infos.push_back({out->dtype(), *out->shape()});
    }
    step.outputs_end = step_outputs_.size();
    if (!aliased[s]) {
      const OpDef* def = registry.find(node->op_type());
      if (!def) {
        throw_unsupported("executor: " + node->label() + ": no runtime implementation");
      }
      step.kernel = def->create(*node, infos, out_infos);
      max_workspace = std::max(max_workspace, step.kernel->workspace_bytes());
    }
    if (options_.release_prepared_constants) {
      for (size_t i = 0; i < node->num_inputs(); ++i) {
        graph::Value* v = node->input(i);
        if (!v || !v->is_constant()) continue;
        ConstantUses& uses = constant_uses.at(v);
        uses.slots.push_back(step.inputs_begin + i);
        uses.read = uses.read || !step.kernel || step.kernel->reads_input(i);
        if (--uses.pending > 0 || uses.read) continue;
        for (size_t slot : uses.slots) step_inputs_[slot] = Tensor();
        v->release_constant();
      }
    }
    steps_.push_back(std::move(step));
  }
  need.workspace_bytes = max_workspace;
  check_memory_budget("executor", need, options_.memory_budget_bytes);
  workspace_.assign(max_workspace, std::byte{0});
  for (const graph::Value* out : graph.outputs()) {
    graph_outputs_.push_back(view_of(out));
    output_infos_.push_back({out->dtype(), *out->shape()});
  }
}

std::span<const Tensor> Executor::run(std::span<const Tensor> inputs) {
  if (inputs.size() != graph_inputs_.size()) {
    throw_invalid("run: the model takes " + std::to_string(graph_inputs_.size()) + " inputs, got " +
                  std::to_string(inputs.size()));
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor& dst = graph_inputs_[i];
    if (inputs[i].dtype() != dst.dtype() || inputs[i].shape() != dst.shape()) {
      throw_invalid("run: input '" + graph_->inputs()[i]->name() + "' expects " + dst.describe() +
                    ", got " + inputs[i].describe());
    }
    dst.copy_from(inputs[i]);
  }
  for (auto& [value, fn] : taps_on_inputs_) fn(value);
  std::byte* workspace = workspace_.data();
  for (size_t s = 0; s < steps_.size(); ++s) {
    Step& step = steps_[s];
    if (step.kernel) {
      std::span<const Tensor> in(step_inputs_.data() + step.inputs_begin,
                                 step.inputs_end - step.inputs_begin);
      std::span<Tensor> out(step_outputs_.data() + step.outputs_begin,
                            step.outputs_end - step.outputs_begin);
      if (options_.profile) {
        auto t0 = std::chrono::steady_clock::now();
        step.kernel->forward(in, out, workspace);
        step.seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      } else {
        step.kernel->forward(in, out, workspace);
      }
    }
    if (!taps_after_step_.empty()) {
      auto it = taps_after_step_.find(s);
      if (it != taps_after_step_.end()) {
        for (auto& [value, fn] : it->second) fn(value);
      }
    }
  }
  return graph_outputs_;
}

void Executor::add_tap(const std::string& value_name, TapFn fn) {
  const graph::Value* v = graph_->find_value(value_name);
  if (!v) throw_invalid("executor: no value named '" + value_name + "' to tap");
  if (v->is_constant()) {
    throw_invalid("executor: value '" + value_name + "' is a constant, not an activation");
  }
  Tensor view = views_.at(v);
  if (v->is_graph_input()) {
    taps_on_inputs_.emplace_back(view, std::move(fn));
    return;
  }
  for (size_t s = 0; s < steps_.size(); ++s) {
    const auto& outs = steps_[s].node->outputs();
    if (std::find(outs.begin(), outs.end(), v) != outs.end()) {
      taps_after_step_[s].emplace_back(view, std::move(fn));
      return;
    }
  }
  throw_internal("executor: value '" + value_name + "' has no producer in the plan");
}

void Executor::clear_taps() {
  taps_after_step_.clear();
  taps_on_inputs_.clear();
}

std::vector<OpTime> Executor::profile(bool per_node) const {
  std::vector<OpTime> out;
  std::map<std::string, size_t> index_of_type;
  for (const Step& step : steps_) {
    if (!step.kernel) continue;
    const std::string& type = step.node->op_type();
    size_t i = out.size();
    if (per_node) {
      const auto& outputs = step.node->outputs();
      auto view = outputs.empty() ? views_.end() : views_.find(outputs[0]);
      const bool known = view != views_.end();
      out.push_back(OpTime{type, step.node->name(), known ? view->second.describe() : "",
                           known ? view->second.numel() : 0});
    } else if (auto [it, added] = index_of_type.emplace(type, i); !added) {
      i = it->second;
    } else {
      out.push_back(OpTime{type, {}, {}, 0});
    }
    out[i].seconds += step.seconds;
    ++out[i].calls;
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const OpTime& a, const OpTime& b) { return a.seconds > b.seconds; });
  return out;
}

void Executor::reset_profile() {
  for (Step& step : steps_) step.seconds = 0;
}

}  // namespace qforge::runtime
