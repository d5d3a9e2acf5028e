// Per-shape compilation cache over one imported graph.
#include "runtime/session.h"

#include <algorithm>

#include "runtime/fuse_epilogues.h"
#include "runtime/fuse_qdq.h"

namespace qforge::runtime {
namespace {

std::string shapes_str(const std::vector<graph::Shape>& shapes) {
  std::string out;
  for (const graph::Shape& s : shapes)
    out.append(out.empty() ? "" : " ").append(kernels::shape_str(s));
  return out;
}

}  // namespace

Session::Session(std::unique_ptr<graph::Graph> graph, SessionOptions options)
    : graph_(std::move(graph)), options_(options) {}

Session::~Session() = default;

std::optional<int64_t> fixed_batch(const graph::Graph& graph) {
  if (graph.inputs().empty()) return std::nullopt;
  const auto& shape = graph.inputs()[0]->shape();
  if (!shape || shape->empty() || (*shape)[0] < 0) return std::nullopt;
  return (*shape)[0];
}

bool one_batch_shape(size_t samples, int64_t batch) {
  const auto b = static_cast<size_t>(batch);
  return samples <= b || samples % b == 0;
}

std::optional<int64_t> Session::fixed_batch() const {
  return runtime::fixed_batch(*graph_);
}

Session::Compiled& Session::compiled_for(const std::vector<graph::Shape>& input_shapes) {
  auto it = compiled_.find(input_shapes);
  if (it != compiled_.end()) return it->second;
  if (input_shapes.size() != graph_->inputs().size()) {
    throw_invalid("run: the model takes " + std::to_string(graph_->inputs().size()) +
                  " inputs, got " + std::to_string(input_shapes.size()));
  }
  const bool release = options_.executor.release_prepared_constants;
  if (release && !compiled_.empty()) {
    throw_invalid("run: the session released its weights after compiling for inputs " +
                  shapes_str(compiled_.begin()->first) + "; it cannot run " +
                  shapes_str(input_shapes));
  }
  Compiled c;
  c.graph = graph_->clone();
  if (release) {
    // The compiled copy becomes the only holder of the weights, which its executor releases
    // as its kernels prepare them.
    for (graph::Value* v : graph_->values()) {
      if (v->is_constant() && !v->is_released()) v->release_constant();
    }
  }
  ResolveOptions options;
  for (size_t i = 0; i < input_shapes.size(); ++i) {
    options.input_shapes[graph_->inputs()[i]->name()] = input_shapes[i];
  }
  resolve(*c.graph, options);
  if (options_.fuse_conv_epilogues) {
    fuse_silu(*c.graph);
    fuse_gelu(*c.graph);
    fuse_conv_epilogues(*c.graph);
    fuse_matmul_add(*c.graph);
  }
  if (options_.fuse_qdq) {
    fuse_qdq(*c.graph);
    if (options_.fuse_conv_epilogues) fuse_conv_output_quant(*c.graph);
  }
  c.executor = std::make_unique<Executor>(*c.graph, options_.executor);
  return compiled_.emplace(input_shapes, std::move(c)).first->second;
}

Executor& Session::executor_for(const std::vector<graph::Shape>& input_shapes) {
  return *compiled_for(input_shapes).executor;
}

const graph::Graph& Session::resolved_graph_for(const std::vector<graph::Shape>& input_shapes) {
  return *compiled_for(input_shapes).graph;
}

std::span<const Tensor> Session::run(const Tensor& input) {
  return run(std::span<const Tensor>(&input, 1));
}

std::span<const Tensor> Session::run(std::span<const Tensor> inputs) {
  std::vector<graph::Shape> shapes;
  shapes.reserve(inputs.size());
  for (const Tensor& t : inputs) shapes.push_back(t.shape());
  return executor_for(shapes).run(inputs);
}

std::vector<OpTime> Session::profile(bool per_node) const {
  std::vector<OpTime> out;
  std::map<std::string, size_t> index_of;  // op type, or node name
  for (const auto& [_, c] : compiled_) {
    for (const OpTime& t : c.executor->profile(per_node)) {
      auto [it, added] = index_of.emplace(per_node ? t.node : t.op_type, out.size());
      if (added) {
        out.push_back(t);
        continue;
      }
      OpTime& s = out[it->second];
      if (t.output_elements > s.output_elements) {  // the largest batch's shape
        s.shape = t.shape;
        s.output_elements = t.output_elements;
      }
      s.seconds += t.seconds;
      s.calls = std::max(s.calls, t.calls);
    }
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const OpTime& a, const OpTime& b) { return a.seconds > b.seconds; });
  return out;
}

}  // namespace qforge::runtime
