// Following the batch axis through a resolved graph, and writing its shape constants so that
// they hold at any batch.
#include "runtime/batch_dimension.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <string_view>
#include <vector>

#include "graph/tail.h"
#include "kernels/error.h"
#include "runtime/op_registry.h"

namespace qforge::runtime {
namespace {

using graph::Graph;
using graph::Node;
using graph::Value;
using kernels::DType;
using kernels::Shape;
using kernels::Tensor;

int64_t product(const Shape& shape, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t i = begin; i < end; ++i) p *= shape[i];
  return p;
}

std::vector<int64_t> constant_ints(const Value* v) {
  const Tensor& t = v->constant();
  std::vector<int64_t> out(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = t.dtype() == DType::kInt32 ? t.data<int32_t>()[i] : t.data<int64_t>()[i];
  }
  return out;
}

int normalized_axis(int64_t axis, size_t rank) {
  return static_cast<int>(axis < 0 ? axis + static_cast<int64_t>(rank) : axis);
}

// Axes from input `index` (opset 13 and later) or the attribute of older forms.
std::vector<int> axes_of(const Node& node, size_t index, size_t rank) {
  std::vector<int64_t> raw;
  if (node.input(index) && node.input(index)->is_constant()) {
    raw = constant_ints(node.input(index));
  } else {
    raw = node.attr_ints("axes", {});
  }
  std::vector<int> out;
  for (int64_t a : raw) out.push_back(normalized_axis(a, rank));
  return out;
}

bool contains(const std::vector<int>& axes, int axis) {
  return std::find(axes.begin(), axes.end(), axis) != axes.end();
}

// Whether an input with a dim of 1 where the batch is meets it by broadcasting, at any batch:
// every op but Concat, GatherElements and ScatterElements, whose inputs must match.
bool broadcasts_to_the_batch(std::string_view op) {
  return op != "Concat" && op != "GatherElements" && op != "ScatterElements";
}

bool is_broadcasting(const std::string& op) {
  static const std::set<std::string, std::less<>> kOps = {"Add",
                                                          "Sub",
                                                          "Mul",
                                                          "Div",
                                                          "Pow",
                                                          "Where",
                                                          "Equal",
                                                          "Less",
                                                          "LessOrEqual",
                                                          "Greater",
                                                          "GreaterOrEqual",
                                                          "And",
                                                          "Or",
                                                          "Xor",
                                                          "Max",
                                                          "Min",
                                                          "Mod",
                                                          "Sum",
                                                          "Mean"};
  return kOps.count(op) > 0;
}

// Static shapes for values that have none (a lowered graph's new nodes), without folding
// anything: the Q/DQ pairs of constant weights stay as they are.
void infer_missing_shapes(Graph& g) {
  const OpRegistry& registry = builtin_ops();
  for (Node* node : g.nodes()) {
    bool known = true;
    for (const Value* out : node->outputs()) known = known && out->has_shape();
    if (known) continue;
    const OpDef* def = registry.find(node->op_type());
    if (!def) {
      throw_unsupported("batch: " + node->label() + ": no runtime implementation of '" +
                        node->op_type() + "'");
    }
    std::vector<InputInfo> infos(node->num_inputs());
    for (size_t i = 0; i < node->num_inputs(); ++i) {
      const Value* v = node->input(i);
      if (!v) continue;
      infos[i].present = true;
      infos[i].dtype = v->dtype();
      infos[i].shape = v->known_shape();
      if (v->is_constant()) infos[i].constant = &v->constant();
    }
    const std::vector<TensorInfo> out_infos = def->infer(*node, infos);
    for (size_t i = 0; i < node->num_outputs() && i < out_infos.size(); ++i) {
      node->output(i)->set_type(out_infos[i].dtype, out_infos[i].shape);
    }
  }
}

class BatchFreer {
 public:
  BatchFreer(Graph& graph, int64_t batch) : g_(graph), batch_(batch) {}

  std::map<std::string, BatchAxis> run() {
    for (Value* in : g_.inputs()) {
      const Shape& s = in->known_shape();
      if (s.empty() || s[0] != batch_) {
        throw_invalid("batch: model input '" + in->name() + "': expected a leading dimension of " +
                      std::to_string(batch_) + ", got " + kernels::shape_str(s));
      }
    }
    // A Reshape that leaves open which axis carries the batch (a batch of 1 allows several)
    // takes its first choice; where a later node then cannot follow the batch, the latest such
    // Reshape before it takes its next choice and the analysis runs again.
    constexpr int kMaxAttempts = 256;
    const std::vector<Node*> order = g_.nodes();
    for (int attempt = 0;; ++attempt) {
      axes_.clear();
      sample_offsets_.clear();
      edits_.clear();
      open_choices_.clear();
      for (Value* in : g_.inputs()) axes_[in->name()] = {0, 1, 1};
      size_t position = 0;
      try {
        for (; position < order.size(); ++position) {
          position_ = position;
          visit(*order[position]);
        }
        break;
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kUnsupported || attempt + 1 >= kMaxAttempts) throw;
        auto open = std::find_if(open_choices_.rbegin(), open_choices_.rend(),
                                 [&](const OpenChoice& c) { return c.position < position; });
        if (open == open_choices_.rend()) throw;
        ++picks_[open->node];
        for (auto later = open_choices_.rbegin(); later != open; ++later) picks_.erase(later->node);
      }
    }
    for (const auto& edit : edits_) edit();
    finish();
    return axes_;
  }

 private:
  std::optional<BatchAxis> axis_of(const Value* v) const {
    if (!v) return std::nullopt;
    auto it = axes_.find(v->name());
    if (it == axes_.end()) return std::nullopt;
    return it->second;
  }

  [[noreturn]] void unsupported(const Node& node, const std::string& why) const {
    throw_unsupported("batch: " + node.label() + ": " + why +
                      "; qforge cannot run or write this model at another batch");
  }

  void set_axis(const Node& node, const Value* out, int axis, int64_t outer, int64_t inner) {
    const Shape& s = out->known_shape();
    if (axis < 0 || static_cast<size_t>(axis) >= s.size() ||
        s[static_cast<size_t>(axis)] != outer * batch_ * inner) {
      unsupported(node, "expected output '" + out->name() + "' " + kernels::shape_str(s) +
                            " to carry the batch of " + std::to_string(batch_) + " on axis " +
                            std::to_string(axis));
    }
    axes_[out->name()] = {axis, outer, inner};
  }
  void set_axis(const Node& node, const Value* out, int axis, const BatchAxis& like) {
    set_axis(node, out, axis, like.outer, like.inner);
  }

  Value* int_constant(const std::string& stem, const std::vector<int64_t>& values) {
    return g_.add_constant(
        g_.unique_value_name(stem),
        Tensor::from_vector<int64_t>({static_cast<int64_t>(values.size())}, values));
  }

  // The batch as a one-element int64 tensor, read from the first input's shape at run time.
  Value* batch_value() {
    if (batch_value_) return batch_value_;
    const Node* first = g_.nodes().empty() ? nullptr : g_.nodes().front();
    Value* input = g_.inputs().front();
    Node* shape = g_.insert_node({.name = g_.unique_node_name("batch/Shape"),
                                  .op_type = "Shape",
                                  .inputs = {input},
                                  .output_names = {g_.unique_value_name("batch/shape")}},
                                 first);
    Node* gather = g_.insert_node({.name = g_.unique_node_name("batch/Gather"),
                                   .op_type = "Gather",
                                   .inputs = {shape->output(0), int_constant("batch/index", {0})},
                                   .output_names = {g_.unique_value_name("batch/size")},
                                   .attributes = {{"axis", int64_t{0}}}},
                                  first);
    batch_value_ = gather->output(0);
    return batch_value_;
  }

  // A constant input of `node` that repeats one sample's row along the batch axis `out_axis`
  // (aligned to the output's rank) becomes that row, expanded to the batch at run time.
  void expand_repeated_constant(Node& node, size_t index, int out_axis, size_t out_rank,
                                const BatchAxis& carried) {
    Value* v = node.input(index);
    const Tensor& t = v->constant();
    const Shape& s = t.shape();
    const int axis = out_axis - static_cast<int>(out_rank - s.size());
    const bool broadcasts = broadcasts_to_the_batch(node.op_type());
    if (broadcasts && (axis < 0 || s[static_cast<size_t>(axis)] == 1)) return;
    const int64_t rows = axis < 0 ? 0 : s[static_cast<size_t>(axis)];
    if (broadcasts && axis >= 0 && (carried.outer != 1 || carried.inner != 1 || rows != batch_) &&
        same_along(t, static_cast<size_t>(axis))) {
      // One value along the whole axis (the zeros an attention mask starts from, its rows
      // batch × heads): one slice of it broadcasts at any batch.
      edits_.push_back(
          [this, n = &node, index, a = static_cast<size_t>(axis)] { first_slice(*n, index, a); });
      return;
    }
    const int64_t fold = carried.outer * carried.inner;
    if (axis >= 0 && carried.outer == 1 && carried.inner != 1 && rows == batch_ * fold &&
        !same_along(t, static_cast<size_t>(axis)) &&
        same_along(t, static_cast<size_t>(axis), carried.inner)) {
      // The same `inner` slices for every sample, the batch folded outside them (DeBERTa's
      // relative-position keys, one block per head, repeated to batch × heads rows): that
      // block tiled batch times at run time.
      edits_.push_back([this, n = &node, index, a = static_cast<size_t>(axis),
                        inner = carried.inner] { tile_constant(*n, index, a, inner); });
      return;
    }
    if (!broadcasts && axis >= 0 && fold != 1 && rows == batch_ * fold &&
        same_along(t, static_cast<size_t>(axis))) {
      // One slice repeated over the batch folded with other dims (DeBERTa's relative positions
      // expanded to batch × heads rows): that slice expanded to batch · fold rows at run time.
      edits_.push_back([this, n = &node, index, a = static_cast<size_t>(axis), fold] {
        expand_constant(*n, index, a, fold);
      });
      return;
    }
    if (axis < 0 || carried.outer != 1 || carried.inner != 1 || rows != batch_) {
      unsupported(node, "expected constant '" + v->name() + "' " + kernels::shape_str(s) +
                            " to broadcast along the batch axis " + std::to_string(axis));
    }
    const size_t a = static_cast<size_t>(axis);
    if (!same_along(t, a)) {
      unsupported(node, "constant '" + v->name() + "' " + kernels::shape_str(s) +
                            " differs from sample to sample along the batch axis " +
                            std::to_string(axis));
    }
    edits_.push_back([this, n = &node, index, a] { expand_constant(*n, index, a); });
  }

  // Whether every run of `period` slices of `t` along axis `a` holds the same bytes as the first
  // (period 1: every slice the same).
  static bool same_along(const Tensor& t, size_t a, int64_t period = 1) {
    const Shape& s = t.shape();
    const int64_t outer = product(s, 0, a);
    const int64_t n = s[a];
    if (period < 1 || n % period != 0) return false;
    const size_t block =
        static_cast<size_t>(product(s, a + 1, s.size()) * period) * kernels::dtype_size(t.dtype());
    const auto* bytes = static_cast<const std::byte*>(t.raw());
    for (int64_t o = 0; o < outer; ++o) {
      const std::byte* first = bytes + static_cast<size_t>(o * (n / period)) * block;
      for (int64_t b = 1; b < n / period; ++b) {
        if (std::memcmp(first, first + static_cast<size_t>(b) * block, block) != 0) return false;
      }
    }
    return true;
  }

  // The step of an int64 constant whose slices along axis `a` step from the first by one value
  // (t[b] = t[0] + b·step, step != 0): the offsets of each sample's rows, as torch.onnx writes
  // x[arange(B), idx] (arange(B)·T + idx, into x flattened to [B·T, …]). nullopt otherwise.
  static std::optional<int64_t> batch_progression(const Tensor& t, size_t a) {
    if (t.dtype() != DType::kInt64) return std::nullopt;
    const Shape& s = t.shape();
    const int64_t n = s[a];
    const int64_t outer = product(s, 0, a);
    const int64_t inner = product(s, a + 1, s.size());
    if (n < 2 || outer * inner == 0) return std::nullopt;
    const int64_t* v = t.data<int64_t>();
    const int64_t step = v[inner] - v[0];
    if (step == 0) return std::nullopt;
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t b = 0; b < n; ++b) {
        for (int64_t i = 0; i < inner; ++i) {
          if (v[(o * n + b) * inner + i] != v[o * n * inner + i] + b * step) return std::nullopt;
        }
      }
    }
    return step;
  }

  // Input `index` of `node`, per-sample offsets stepping by `step` along axis `a`, becomes its
  // first slice plus Range(batch)·step along that axis, the batch read at run time.
  void batch_offsets(Node& node, size_t index, size_t a, int64_t step) {
    const Value* v = node.input(index);
    const std::string stem = v->name() + "_offsets";
    const size_t rank = v->constant().shape().size();
    Value* first = first_slice_of(v, a, "_first");
    auto add = [&](const std::string& op, std::vector<Value*> inputs) {
      Node* n = g_.insert_node({.name = g_.unique_node_name(stem + "/" + op),
                                .op_type = op,
                                .inputs = std::move(inputs),
                                .output_names = {g_.unique_value_name(stem + "_" + op)}},
                               &node);
      return n->output(0);
    };
    Value* count = add("Reshape", {batch_value(), int_constant(stem + "_scalar", {})});
    Value* zero = g_.add_constant(g_.unique_value_name(stem + "_start"),
                                  Tensor::from_vector<int64_t>({}, {0}));
    Value* one = g_.add_constant(g_.unique_value_name(stem + "_delta"),
                                 Tensor::from_vector<int64_t>({}, {1}));
    Value* samples = add("Range", {zero, count, one});
    std::vector<int64_t> along(rank, 1);
    along[a] = -1;
    Value* shaped = add("Reshape", {samples, int_constant(stem + "_shape", along)});
    Value* rows = add("Mul", {shaped, g_.add_constant(g_.unique_value_name(stem + "_step"),
                                                      Tensor::from_vector<int64_t>({}, {step}))});
    g_.set_input(&node, index, add("Add", {first, rows}));
  }

  // A constant of the first `count` slices of `v` (a constant) along axis `a`, named after it
  // with `suffix`; each element copies the element of the original at the same place (a
  // derivation, for float constants).
  Value* first_slice_of(const Value* v, size_t a, const std::string& suffix, int64_t count = 1) {
    const Tensor& t = v->constant();
    const Shape& s = t.shape();
    const int64_t outer = product(s, 0, a);
    const int64_t n = s[a];
    const int64_t block_elems = product(s, a + 1, s.size()) * count;
    const size_t block = static_cast<size_t>(block_elems) * kernels::dtype_size(t.dtype());
    const auto* bytes = static_cast<const std::byte*>(t.raw());
    Shape first = s;
    first[a] = count;
    Tensor slice(t.dtype(), first);
    auto* dst = static_cast<std::byte*>(slice.raw());
    for (int64_t o = 0; o < outer; ++o) {
      std::memcpy(dst + static_cast<size_t>(o) * block,
                  bytes + static_cast<size_t>(o * n / count) * block, block);
    }
    Value* sliced = g_.add_constant(g_.unique_value_name(v->name() + suffix), slice);
    if (t.dtype() == DType::kFloat32) {
      graph::DerivedTerm term{.source = v->name(), .source_shape = s};
      for (int64_t o = 0; o < outer; ++o) {
        for (int64_t j = 0; j < block_elems; ++j) {
          term.pairs.emplace_back(o * block_elems + j, o * (n / count) * block_elems + j);
        }
      }
      g_.record_derivation({.derived = sliced->name(), .shape = first, .terms = {term}});
    }
    return sliced;
  }

  // Input `index` of `node`, a constant repeating its first `period` slices along axis `a`
  // once per sample, becomes those slices tiled batch times at run time.
  void tile_constant(Node& node, size_t index, size_t a, int64_t period) {
    const Value* v = node.input(index);
    Value* block = first_slice_of(v, a, "_block", period);
    const std::vector<int64_t> ones(v->constant().shape().size(), 1);
    Value* repeats = batch_shape(ones, a, &node, v->name() + "_repeats");
    Node* tile = g_.insert_node({.name = g_.unique_node_name(v->name() + "/Tile"),
                                 .op_type = "Tile",
                                 .inputs = {block, repeats},
                                 .output_names = {g_.unique_value_name(v->name() + "_tiled")}},
                                &node);
    g_.set_input(&node, index, tile->output(0));
  }

  // Input `index` of `node`, a constant the same along axis `a`, becomes its first slice there.
  void first_slice(Node& node, size_t index, size_t a) {
    g_.set_input(&node, index, first_slice_of(node.input(index), a, "_slice"));
  }

  // Input `index` of `node`, a constant repeating one sample's row along the batch axis `a`,
  // becomes that row expanded to the batch read at run time (times `fold` where the batch is
  // folded with other dims there).
  void expand_constant(Node& node, size_t index, size_t a, int64_t fold = 1) {
    const Value* v = node.input(index);
    Value* sample = first_slice_of(v, a, "_sample");
    Value* shape = batch_shape(v->constant().shape(), a, &node, v->name(), fold);
    Node* expand = g_.insert_node({.name = g_.unique_node_name(v->name() + "/Expand"),
                                   .op_type = "Expand",
                                   .inputs = {sample, shape},
                                   .output_names = {g_.unique_value_name(v->name() + "_expanded")}},
                                  &node);
    g_.set_input(&node, index, expand->output(0));
  }

  // Input `index` of `node`, computed without the batch, meets the batch on output axis
  // `out_axis` with a dim other than 1: only one form follows the batch, parameters repeated to
  // the batch's rows by a Tile whose repeats were read from the batch and folded at resolution
  // (DeBERTa's relative-position keys, repeated to batch × heads rows), seen through Transposes;
  // its repeats there then read the batch at run time. Anything else is refused naming the node.
  void follow_batch(Node& node, size_t index, int out_axis, size_t out_rank,
                    const BatchAxis& carried) {
    const Value* v = node.input(index);
    int a = out_axis - static_cast<int>(out_rank - v->known_shape().size());
    const int64_t rows = v->known_shape()[static_cast<size_t>(a)];
    const int64_t fold = carried.outer * carried.inner;
    Node* p = v->producer();
    while (p && (p->op_type() == "Transpose" || p->op_type() == "Identity") && !axis_of(v)) {
      if (p->op_type() == "Transpose") {
        a = static_cast<int>(p->attr_ints("perm").at(static_cast<size_t>(a)));
      }
      v = p->input(0);
      p = v->producer();
    }
    const bool tiled = p && p->op_type() == "Tile" && !axis_of(v) && !axis_of(p->input(0)) &&
                       p->input(1)->is_constant() && rows == batch_ * fold;
    const int64_t in_dim = tiled ? p->input(0)->known_shape()[static_cast<size_t>(a)] : 0;
    if (!tiled || in_dim < 1 || fold % in_dim != 0) {
      unsupported(node, "expected input " + std::to_string(index) + " '" +
                            node.input(index)->name() + "' " +
                            kernels::shape_str(node.input(index)->known_shape()) +
                            " to broadcast along the batch axis, or to follow it");
    }
    const std::vector<int64_t> repeats = constant_ints(p->input(1));
    edits_.push_back([this, p, repeats, a = static_cast<size_t>(a), per_sample = fold / in_dim] {
      g_.set_input(p, 1, batch_shape(repeats, a, p, p->name() + "_repeats", per_sample));
    });
  }

  // An Expand of a constant to a constant shape (a shared row that training keeps apart from
  // the batch, share_batch_rows).
  bool expands_constant(const Value* v) const {
    const Node* p = v ? v->producer() : nullptr;
    return p && p->op_type() == "Expand" && p->input(0)->is_constant() &&
           p->input(1)->is_constant() && !axis_of(v);
  }

  // Such an Expand read with the batch on `out_axis` expands to the batch read at run time.
  void widen_expand(Node& node, size_t index, int out_axis, size_t out_rank) {
    Node* expand = node.input(index)->producer();
    const Shape& s = node.input(index)->known_shape();
    const int axis = out_axis - static_cast<int>(out_rank - s.size());
    const bool broadcasts = broadcasts_to_the_batch(node.op_type());
    if (broadcasts && (axis < 0 || s[static_cast<size_t>(axis)] == 1)) return;
    if (axis < 0 || s[static_cast<size_t>(axis)] != batch_ ||
        expand->input(0)->known_shape().size() != s.size() ||
        expand->input(0)->known_shape()[static_cast<size_t>(axis)] != 1) {
      unsupported(*expand, "expected an expansion of one row to the batch along axis " +
                               std::to_string(axis) + ", got " + kernels::shape_str(s));
    }
    const size_t a = static_cast<size_t>(axis);
    edits_.push_back([this, expand, a, s] {
      g_.set_input(expand, 1, batch_shape(s, a, expand, expand->name()));
    });
  }

  // `dims` with the batch, read at run time, at `axis`: Concat(dims before, batch, dims after);
  // the batch times `fold` where it is folded with other dims.
  Value* batch_shape(const Shape& dims, size_t axis, const Node* position, const std::string& stem,
                     int64_t fold = 1) {
    std::vector<Value*> parts;
    if (axis > 0) {
      parts.push_back(int_constant(
          stem + "_dims_before",
          std::vector<int64_t>(dims.begin(), dims.begin() + static_cast<std::ptrdiff_t>(axis))));
    }
    if (fold == 1) {
      parts.push_back(batch_value());
    } else {
      Node* rows = g_.insert_node({.name = g_.unique_node_name(stem + "/rows"),
                                   .op_type = "Mul",
                                   .inputs = {batch_value(), int_constant(stem + "_fold", {fold})},
                                   .output_names = {g_.unique_value_name(stem + "_rows")}},
                                  position);
      parts.push_back(rows->output(0));
    }
    if (axis + 1 < dims.size()) {
      parts.push_back(int_constant(
          stem + "_dims_after",
          std::vector<int64_t>(dims.begin() + static_cast<std::ptrdiff_t>(axis) + 1, dims.end())));
    }
    Node* shape = g_.insert_node({.name = g_.unique_node_name(stem + "/shape"),
                                  .op_type = "Concat",
                                  .inputs = parts,
                                  .output_names = {g_.unique_value_name(stem + "_shape")},
                                  .attributes = {{"axis", int64_t{0}}}},
                                 position);
    return shape->output(0);
  }

  void replace_ints(Node& node, size_t index, const std::vector<int64_t>& values) {
    edits_.push_back([this, n = &node, index, values] {
      g_.set_input(n, index, int_constant(n->input(index)->name() + "_any_batch", values));
    });
  }

  // The output axis that holds the batch is the one whose elements cover it whole: the product
  // of the output dims before it divides what precedes the batch in memory, the product after it
  // divides what follows.
  void reshape(Node& node, const BatchAxis& in) {
    const Shape& s_in = node.input(0)->known_shape();
    const Shape& s_out = node.output(0)->known_shape();
    const size_t a = static_cast<size_t>(in.axis);
    const int64_t before = product(s_in, 0, a) * in.outer;
    const int64_t after = in.inner * product(s_in, a + 1, s_in.size());
    std::vector<size_t> candidates;
    for (size_t i = 0; i < s_out.size(); ++i) {
      const int64_t c = product(s_out, 0, i);
      const int64_t t = product(s_out, i + 1, s_out.size());
      if (c == 0 || t == 0 || before % c != 0 || after % t != 0) continue;
      if (s_out[i] != (before / c) * batch_ * (after / t)) continue;
      candidates.push_back(i);
    }
    if (candidates.empty()) {
      unsupported(node, "no axis of the output " + kernels::shape_str(s_out) +
                            " carries the batch of input " + kernels::shape_str(s_in) + " (axis " +
                            std::to_string(in.axis) + ") whole");
    }
    // The fewest rows per sample first, then the earliest axis.
    std::stable_sort(candidates.begin(), candidates.end(),
                     [&](size_t x, size_t y) { return s_out[x] < s_out[y]; });
    size_t pick = 0;
    if (auto it = picks_.find(&node); it != picks_.end())
      pick = std::min(it->second, candidates.size() - 1);
    if (pick + 1 < candidates.size()) open_choices_.push_back({position_, &node});
    const std::optional<size_t> chosen = candidates[pick];
    const size_t k = *chosen;
    std::vector<int64_t> shape(s_out.begin(), s_out.end());
    shape[k] = -1;
    replace_ints(node, 1, shape);
    // allowzero off where the node sets it; opsets before 14 lack the attribute, and 0 is its
    // default.
    edits_.push_back([n = &node] {
      if (n->has_attr("allowzero")) n->set_attr("allowzero", int64_t{0});
    });
    set_axis(node, node.output(0), static_cast<int>(k), before / product(s_out, 0, k),
             after / product(s_out, k + 1, s_out.size()));
  }

  void slice(Node& node, const BatchAxis& in) {
    const Shape& s = node.input(0)->known_shape();
    std::vector<int64_t> starts = constant_ints(node.input(1));
    std::vector<int64_t> ends = constant_ints(node.input(2));
    std::vector<int> axes;
    if (node.input(3)) {
      axes = axes_of(node, 3, s.size());
    } else {
      for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int>(i));
    }
    std::vector<int64_t> steps(starts.size(), 1);
    if (node.input(4)) steps = constant_ints(node.input(4));
    bool changed = false;
    for (size_t k = 0; k < axes.size(); ++k) {
      if (axes[k] != in.axis) continue;
      const int64_t dim = s[static_cast<size_t>(in.axis)];
      const bool whole = steps[k] == 1 && (starts[k] == 0 || starts[k] <= -dim) && ends[k] >= dim;
      if (!whole) unsupported(node, "slices along the batch axis " + std::to_string(in.axis));
      ends[k] = std::numeric_limits<int64_t>::max();
      changed = true;
    }
    if (changed) replace_ints(node, 2, ends);
    set_axis(node, node.output(0), in.axis, in);
  }

  // A Resize's sizes (input 3), folded to a constant at the resolved batch, get the batch read at
  // run time on the batch axis; scales hold 1 there and are right at any batch.
  void resize_sizes(Node& node, const BatchAxis& in) {
    const Value* sizes = node.input(3);
    if (!sizes || !sizes->is_constant() || sizes->constant().numel() == 0) return;
    const Shape values = constant_ints(sizes);
    const size_t a = static_cast<size_t>(in.axis);
    if (a >= values.size() || in.outer != 1 || in.inner != 1) {
      unsupported(node, "expected sizes " + kernels::shape_str(values) +
                            " with an entry for the batch alone on axis " +
                            std::to_string(in.axis));
    }
    edits_.push_back([this, n = &node, values, a] {
      g_.set_input(n, 3, batch_shape(values, a, n, n->name() + "_sizes"));
    });
  }

  void visit(Node& node) {
    const std::string& op = node.op_type();
    std::vector<std::pair<size_t, BatchAxis>> carried;
    for (size_t i = 0; i < node.num_inputs(); ++i) {
      if (auto a = axis_of(node.input(i))) carried.emplace_back(i, *a);
    }
    if (carried.empty()) return;
    const size_t out_rank = node.output(0)->known_shape().size();
    const BatchAxis first = carried.front().second;
    const size_t first_rank = node.input(carried.front().first)->known_shape().size();
    auto aligned = [&](size_t index, const BatchAxis& a) {
      return a.axis + static_cast<int>(out_rank - node.input(index)->known_shape().size());
    };

    if (op == "Reshape") {
      if (carried.front().first != 0) unsupported(node, "computes its shape from the batch");
      reshape(node, first);
      return;
    }
    if (op == "Transpose") {
      std::vector<int64_t> perm = node.attr_ints("perm", {});
      if (perm.empty()) {
        for (size_t i = 0; i < first_rank; ++i)
          perm.push_back(static_cast<int64_t>(first_rank - 1 - i));
      }
      const auto it = std::find(perm.begin(), perm.end(), first.axis);
      set_axis(node, node.output(0), static_cast<int>(it - perm.begin()), first);
      return;
    }
    if (op == "Flatten") {
      const size_t k = static_cast<size_t>(normalized_axis(node.attr_int("axis", 1), first_rank));
      const size_t a = static_cast<size_t>(first.axis);
      const Shape& s = node.input(0)->known_shape();
      if (a < k) {
        set_axis(node, node.output(0), 0, product(s, 0, a) * first.outer,
                 first.inner * product(s, a + 1, k));
      } else {
        set_axis(node, node.output(0), 1, product(s, k, a) * first.outer,
                 first.inner * product(s, a + 1, s.size()));
      }
      return;
    }
    if (op == "Unsqueeze") {
      std::vector<int> axes = axes_of(node, 1, out_rank);
      std::sort(axes.begin(), axes.end());
      int position = 0;
      for (int kept = -1; position < static_cast<int>(out_rank); ++position) {
        if (contains(axes, position)) continue;
        if (++kept == first.axis) break;
      }
      set_axis(node, node.output(0), position, first);
      return;
    }
    if (op == "Squeeze") {
      const std::vector<int> axes = axes_of(node, 1, first_rank);
      if (axes.empty() || contains(axes, first.axis)) unsupported(node, "squeezes the batch axis");
      set_axis(node, node.output(0),
               first.axis - static_cast<int>(std::count_if(axes.begin(), axes.end(),
                                                           [&](int x) { return x < first.axis; })),
               first);
      return;
    }
    if (op == "Gather") {
      if (carried.front().first != 0) {
        // Indices alone carry the batch (an embedding lookup of token ids): the output's axes
        // are the data's before `axis`, then the indices' own.
        const size_t data_rank = node.input(0)->known_shape().size();
        const int k = normalized_axis(node.attr_int("axis", 0), data_rank);
        set_axis(node, node.output(0), k + first.axis, first);
        return;
      }
      const int k = normalized_axis(node.attr_int("axis", 0), first_rank);
      if (carried.size() > 1) {
        // x[arange(B), idx]: each sample's indices, offset by its first row, into the rows of
        // its own block of the data's gathered axis. The output has the indices' batch.
        const auto offsets = sample_offsets_.find(node.input(1)->name());
        const BatchAxis& indices = carried[1].second;
        if (offsets == sample_offsets_.end() || k != first.axis || first.outer != 1 ||
            first.inner != offsets->second) {
          unsupported(node, "gathers with batch-dependent indices");
        }
        set_axis(node, node.output(0), k + indices.axis, indices);
        return;
      }
      if (k == first.axis) unsupported(node, "gathers along the batch axis");
      const int q = static_cast<int>(node.input(1)->known_shape().size());
      set_axis(node, node.output(0), k < first.axis ? first.axis - 1 + q : first.axis, first);
      return;
    }
    if (op == "Slice") {
      slice(node, first);
      return;
    }
    if (op == "Split") {
      if (normalized_axis(node.attr_int("axis", 0), first_rank) == first.axis) {
        unsupported(node, "splits along the batch axis");
      }
      for (const Value* out : node.outputs()) set_axis(node, out, first.axis, first);
      return;
    }
    if (op == "Concat") {
      const int k = normalized_axis(node.attr_int("axis", 0), out_rank);
      for (const auto& [i, a] : carried) {
        if (a.axis != first.axis) unsupported(node, "joins inputs whose batch is on other axes");
      }
      if (k == first.axis) unsupported(node, "concatenates along the batch axis");
      for (size_t i = 0; i < node.num_inputs(); ++i) {
        if (node.input(i)->is_constant())
          expand_repeated_constant(node, i, first.axis, out_rank, first);
        if (expands_constant(node.input(i))) widen_expand(node, i, first.axis, out_rank);
      }
      set_axis(node, node.output(0), first.axis, first);
      return;
    }
    if (is_broadcasting(op)) {
      const int axis = aligned(carried.front().first, first);
      for (const auto& [i, a] : carried) {
        if (aligned(i, a) != axis) unsupported(node, "joins inputs whose batch is on other axes");
      }
      for (size_t i = 0; i < node.num_inputs(); ++i) {
        const Value* in = node.input(i);
        if (in && in->is_constant()) {
          const Shape& s = in->known_shape();
          const int a = axis - static_cast<int>(out_rank - s.size());
          if (op == "Add" && node.num_inputs() == 2 && carried.size() == 1 && a >= 0 &&
              s[static_cast<size_t>(a)] == batch_ && first.outer == 1 && first.inner == 1 &&
              !sample_offsets_.count(node.input(1 - i)->name())) {
            if (const auto step = batch_progression(in->constant(), static_cast<size_t>(a))) {
              // Indices offset by their sample's first row: the gather below reads them.
              edits_.push_back([this, n = &node, i, a = static_cast<size_t>(a), step = *step] {
                batch_offsets(*n, i, a, step);
              });
              sample_offsets_[node.output(0)->name()] = *step;
              continue;
            }
          }
          expand_repeated_constant(node, i, axis, out_rank, first);
        } else if (expands_constant(node.input(i))) {
          widen_expand(node, i, axis, out_rank);
        } else if (in && !axis_of(in)) {
          const Shape& s = in->known_shape();
          const int a = axis - static_cast<int>(out_rank - s.size());
          if (a >= 0 && s[static_cast<size_t>(a)] != 1)
            follow_batch(node, i, axis, out_rank, first);
        }
      }
      set_axis(node, node.output(0), axis, first);
      return;
    }
    if (op == "Expand") {
      if (carried.front().first != 0) unsupported(node, "computes its shape from the batch");
      const int axis = aligned(0, first);
      std::vector<int64_t> shape = constant_ints(node.input(1));
      const size_t at = static_cast<size_t>(axis) - (out_rank - shape.size());
      if (at < shape.size()) shape[at] = 1;
      replace_ints(node, 1, shape);
      set_axis(node, node.output(0), axis, first);
      return;
    }
    if (op == "Tile") {
      if (carried.front().first != 0 ||
          constant_ints(node.input(1))[static_cast<size_t>(first.axis)] != 1) {
        unsupported(node, "repeats along the batch axis");
      }
      set_axis(node, node.output(0), first.axis, first);
      return;
    }
    if (op == "Pad") {
      const std::vector<int64_t> pads =
          node.input(1) ? constant_ints(node.input(1)) : node.attr_ints("pads", {});
      std::vector<int> axes;
      if (node.input(3)) {
        axes = axes_of(node, 3, first_rank);
      } else {
        for (size_t i = 0; i < first_rank; ++i) axes.push_back(static_cast<int>(i));
      }
      for (size_t k = 0; k < axes.size(); ++k) {
        if (axes[k] == first.axis && (pads[k] != 0 || pads[k + axes.size()] != 0)) {
          unsupported(node, "pads along the batch axis");
        }
      }
      set_axis(node, node.output(0), first.axis, first);
      return;
    }
    if (op == "MatMul") {
      std::optional<int> axis;
      for (const auto& [i, a] : carried) {
        const int rank = static_cast<int>(node.input(i)->known_shape().size());
        int out_axis = aligned(i, a);
        const bool contracted = (i == 0 && a.axis == rank - 1) || (i == 1 && a.axis == rank - 2);
        if (contracted || rank == 1) unsupported(node, "contracts the batch axis");
        if (i == 0 && a.axis == rank - 2) out_axis = static_cast<int>(out_rank) - 2;
        if (i == 1 && a.axis == rank - 1) out_axis = static_cast<int>(out_rank) - 1;
        if (axis && *axis != out_axis)
          unsupported(node, "joins inputs whose batch is on other axes");
        axis = out_axis;
      }
      // An operand without the batch broadcasts over it only with a dim of 1 there (or none).
      for (size_t i = 0; i < 2; ++i) {
        const Value* in = node.input(i);
        if (axis_of(in)) continue;
        const int rank = static_cast<int>(in->known_shape().size());
        const int a = *axis - static_cast<int>(out_rank) + rank;
        if (a < 0 || a >= rank - 2 || in->known_shape()[static_cast<size_t>(a)] == 1) continue;
        if (in->is_constant()) {
          expand_repeated_constant(node, i, *axis, out_rank, first);
        } else if (expands_constant(in)) {
          widen_expand(node, i, *axis, out_rank);
        } else {
          follow_batch(node, i, *axis, out_rank, first);
        }
      }
      set_axis(node, node.output(0), *axis, first);
      return;
    }
    if (op == "Gemm") {
      const bool trans_a = node.attr_int("transA", 0) != 0;
      if (carried.size() != 1 || carried.front().first != 0 || first.axis != (trans_a ? 1 : 0)) {
        unsupported(node, "contracts the batch axis");
      }
      set_axis(node, node.output(0), 0, first);
      return;
    }
    if (op.rfind("Reduce", 0) == 0) {
      const std::vector<int> axes = axes_of(node, 1, first_rank);
      if (axes.empty() || contains(axes, first.axis)) unsupported(node, "reduces the batch axis");
      const bool keep = node.attr_int("keepdims", 1) != 0;
      set_axis(
          node, node.output(0),
          keep ? first.axis
               : first.axis - static_cast<int>(std::count_if(
                                  axes.begin(), axes.end(), [&](int x) { return x < first.axis; })),
          first);
      return;
    }
    if (op == "ArgMax" || op == "ArgMin") {
      const int axis = normalized_axis(node.attr_int("axis", 0), first_rank);
      if (axis == first.axis) unsupported(node, "reduces the batch axis");
      const bool keep = node.attr_int("keepdims", 1) != 0;
      set_axis(node, node.output(0), keep || axis > first.axis ? first.axis : first.axis - 1,
               first);
      return;
    }
    if (op == "GatherElements" || op == "ScatterElements") {
      // Data, indices (and updates) of one rank, the output of the indices' (the data's) shape:
      // each needs the batch, a constant one (DeBERTa's relative positions expanded to the
      // batch, a scatter's constant updates) expanded at run time.
      if (normalized_axis(node.attr_int("axis", 0), first_rank) == first.axis) {
        unsupported(node, op == "GatherElements" ? "gathers along the batch axis"
                                                 : "scatters along the batch axis");
      }
      for (const auto& [i, a] : carried) {
        if (a.axis != first.axis) unsupported(node, "joins inputs whose batch is on other axes");
      }
      for (size_t i = 0; i < node.num_inputs(); ++i) {
        if (node.input(i)->is_constant()) {
          expand_repeated_constant(node, i, first.axis, out_rank, first);
        } else if (expands_constant(node.input(i))) {
          widen_expand(node, i, first.axis, out_rank);
        } else if (!axis_of(node.input(i))) {
          unsupported(
              node, "expected input " + std::to_string(i) + " to carry the batch or be a constant");
        }
      }
      set_axis(node, node.output(0), first.axis, first);
      return;
    }
    if (op == "ScatterND") {
      // The index tuples address the data's leading k axes: a batch among them is counted by
      // the indices themselves (a box's positions, written for one batch size).
      const auto k = static_cast<int>(node.input(1)->known_shape().back());
      if (carried.front().first != 0 || first.axis < k) {
        unsupported(node, "scatters along the batch axis (its indices count the batch)");
      }
      set_axis(node, node.output(0), first.axis, first);
      return;
    }
    if (op == "GatherND") {
      // With batch_dims, the data and the indices share their leading dims (the batch among
      // them): it stays on axis 0. Without, the tuples index the data's leading dims: the batch
      // must be past them, and moves behind the indices' tuple dims.
      const int64_t b = node.attr_int("batch_dims", 0);
      const auto& ishape = node.input(1)->known_shape();
      const auto k = static_cast<int>(ishape.back());
      if (b > 0) {
        if (carried.size() != 2 || first.axis != 0 || carried.back().second.axis != 0) {
          unsupported(node, "expected its data and indices to carry the batch on axis 0");
        }
        set_axis(node, node.output(0), 0, first);
        return;
      }
      if (carried.front().first != 0 || carried.size() != 1 || first.axis < k) {
        unsupported(node, "gathers along the batch axis");
      }
      set_axis(node, node.output(0), static_cast<int>(ishape.size()) - 1 + first.axis - k, first);
      return;
    }
    if (op == "OneHot") {
      // A new axis of depth inserted: the batch moves past it where it is inserted before.
      const int at = normalized_axis(node.attr_int("axis", -1), first_rank + 1);
      set_axis(node, node.output(0), first.axis + (at <= first.axis ? 1 : 0), first);
      return;
    }
    if (op == "TopK" && normalized_axis(node.attr_int("axis", -1), first_rank) == first.axis) {
      unsupported(node, "selects along the batch axis");
    }
    if (op == "Softmax" || op == "LogSoftmax" || op == "Hardmax") {
      if (normalized_axis(node.attr_int("axis", -1), first_rank) == first.axis) {
        unsupported(node, "normalizes along the batch axis");
      }
    }
    if (op == "LayerNormalization" &&
        first.axis >= normalized_axis(node.attr_int("axis", -1), first_rank)) {
      unsupported(node, "normalizes along the batch axis");
    }
    if ((op == "InstanceNormalization" || op == "GroupNormalization") && first.axis != 0) {
      unsupported(node, "normalizes per sample with the batch on an axis other than 0");
    }
    if (op == "Shape" || op == "Size") unsupported(node, "reads the batch as a value");
    if (op == "CumSum" && carried.front().first == 0 && node.input(1)->is_constant() &&
        normalized_axis(constant_ints(node.input(1)).at(0), first_rank) == first.axis) {
      unsupported(node, "sums along the batch axis");
    }
    if (op == "Trilu" && carried.front().first == 0 &&
        first.axis >= static_cast<int>(first_rank) - 2) {
      unsupported(node, "masks a matrix whose rows or columns are the batch");
    }
    if (op == "Resize") {
      if (carried.front().first != 0)
        unsupported(node, "computes its scales or sizes from the batch");
      resize_sizes(node, first);
    }
    // Every other op keeps its first input's batch axis in place: convolutions, pools, norms,
    // activations, Q/DQ. Its output must then have that axis with the same size.
    for (const auto& [i, a] : carried) {
      if (a.axis != first.axis) unsupported(node, "joins inputs whose batch is on other axes");
    }
    for (const Value* out : node.outputs()) {
      const Shape& s = out->known_shape();
      const Shape& in = node.input(carried.front().first)->known_shape();
      if (s.size() != first_rank ||
          s[static_cast<size_t>(first.axis)] != in[static_cast<size_t>(first.axis)]) {
        unsupported(node, "expected output '" + out->name() + "' " + kernels::shape_str(s) +
                              " to keep the batch axis " + std::to_string(first.axis) +
                              " of input " + kernels::shape_str(in));
      }
      set_axis(node, out, first.axis, first);
    }
  }

  // Inputs and outputs free at their batch axis; the resolved shapes of the rest are stale.
  void finish() {
    for (Value* v : g_.values()) {
      if (v->is_constant() || !v->has_shape()) continue;
      auto a = axis_of(v);
      if (v->is_graph_input() || v->is_graph_output()) {
        if (!a) continue;
        Shape s = *v->shape();
        s[static_cast<size_t>(a->axis)] = -1;
        v->set_type(v->dtype(), s);
      } else {
        v->clear_shape();
      }
    }
  }

  struct OpenChoice {
    size_t position;  // in the graph's order
    const Node* node;
  };

  Graph& g_;
  int64_t batch_;
  std::map<std::string, BatchAxis> axes_;
  // Indices offset by their sample's first row (sample b's indices + b·step): value -> step.
  std::map<std::string, int64_t> sample_offsets_;
  std::vector<std::function<void()>> edits_;  // applied once the analysis succeeds
  std::vector<OpenChoice> open_choices_;      // Reshapes with untried choices, in order
  std::map<const Node*, size_t> picks_;       // the choice each such Reshape takes
  size_t position_ = 0;
  Value* batch_value_ = nullptr;
};

}  // namespace

std::map<std::string, BatchAxis> free_batch(Graph& graph, int64_t batch) {
  if (graph.inputs().empty()) return {};
  infer_missing_shapes(graph);
  return BatchFreer(graph, batch).run();
}

std::vector<std::optional<int>> output_batch_axes(const Graph& model) {
  std::vector<std::optional<int>> axes(model.outputs().size());
  std::map<std::string, BatchAxis> found;
  try {
    const std::unique_ptr<Graph> probe = model.clone();
    ResolveOptions options;
    options.input_shapes = input_shapes_for_batch(*probe, 2);
    resolve(*probe, options);
    found = free_batch(*probe, 2);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kUnsupported && e.kind() != ErrorKind::kInvalid) throw;
    return axes;
  }
  for (size_t k = 0; k < axes.size(); ++k) {
    auto it = found.find(model.outputs()[k]->name());
    if (it != found.end() && it->second.outer == 1) axes[k] = it->second.axis;
  }
  return axes;
}

bool free_fixed_batch(Graph& model, const ResolveOptions& options) {
  std::optional<int64_t> fixed;
  for (const Value* in : model.inputs()) {
    if (in->has_shape() && !in->shape()->empty() && (*in->shape())[0] >= 0) {
      fixed = (*in->shape())[0];
    }
  }
  if (!fixed) return false;
  ResolveOptions at_own;
  at_own.parameters = options.parameters;
  for (const Value* in : model.inputs()) {
    if (!in->has_shape() || in->shape()->empty()) continue;
    // Each input at its own shape: inputs whose first axis is not the batch (a graph cut inside
    // a model) keep theirs.
    Shape s = *in->shape();
    if (s[0] < 0) s[0] = *fixed;
    at_own.input_shapes[in->name()] = s;
  }
  resolve(model, at_own);
  free_batch(model, *fixed);
  return true;
}

void check_batch_export(const Graph& graph, const BatchExportOptions& options) {
  if (graph.inputs().empty()) return;
  if (graph.added_batch_axis.any() && options.dynamic_batch) {
    throw_unsupported("--dynamic-batch: input '" + graph.added_batch_axis.inputs.front() +
                      "' has no batch axis in the file (the model takes one sample), and the "
                      "model is written as the file has it");
  }
  if (graph.tail && options.dynamic_batch) {
    // The tail computes its shapes as the file wrote them, for the file's batch.
    auto declared = graph.declared_batch.find(graph.inputs().front()->name());
    if (declared != graph.declared_batch.end() && declared->second.size) {
      throw_unsupported("--dynamic-batch: " + graph::describe_tail(*graph.tail) +
                        " is written back as the file has it, for its fixed batch " +
                        std::to_string(*declared->second.size) +
                        "; export the model with a dynamic batch instead");
    }
  }
}

void restore_declared_batch(Graph& graph, const BatchExportOptions& options) {
  if (graph.inputs().empty() || !graph.inputs().front()->has_shape()) return;
  const int64_t batch = graph.inputs().front()->known_shape().at(0);
  check_batch_export(graph, options);
  // Every input declared at the batch the graph already has and every output at the size its
  // file declares on its first axis (which need not be the batch: a sequence's [T, N, C]):
  // nothing to free (a model that mixes its samples, RAFT's two images joined along the batch,
  // stays writable at its own fixed batch).
  if (!options.dynamic_batch) {
    auto at_declared = [&](const Value* v, bool input) {
      auto d = graph.declared_batch.find(v->name());
      // What the post-processing reads is no output of the written model.
      if (graph.tail && d == graph.declared_batch.end() &&
          std::find(graph.tail->reads.begin(), graph.tail->reads.end(), v->name()) !=
              graph.tail->reads.end()) {
        return true;
      }
      return d != graph.declared_batch.end() && d->second.size && v->has_shape() &&
             !v->shape()->empty() && v->shape()->front() == *d->second.size &&
             (!input || *d->second.size == batch);
    };
    const bool as_declared = std::all_of(graph.inputs().begin(), graph.inputs().end(),
                                         [&](const Value* v) { return at_declared(v, true); }) &&
                             std::all_of(graph.outputs().begin(), graph.outputs().end(),
                                         [&](const Value* v) { return at_declared(v, false); });
    if (as_declared) return;
  }
  const std::map<std::string, BatchAxis> axes = free_batch(graph, batch);
  // A graph that declares nothing (built in code) keeps the exporter's default name.
  auto first = graph.declared_batch.find(graph.inputs().front()->name());
  if (first == graph.declared_batch.end()) return;
  const graph::DeclaredBatch fallback = first->second;
  std::vector<Value*> ends(graph.inputs().begin(), graph.inputs().end());
  ends.insert(ends.end(), graph.outputs().begin(), graph.outputs().end());
  for (Value* v : ends) {
    auto a = axes.find(v->name());
    if (a == axes.end()) continue;
    auto declared = graph.declared_batch.find(v->name());
    graph::DeclaredBatch d = declared != graph.declared_batch.end() ? declared->second : fallback;
    if (d.size && options.dynamic_batch) d = {.size = std::nullopt, .param = "batch"};
    if (d.size) {
      Shape s = *v->shape();
      s[static_cast<size_t>(a->second.axis)] = a->second.outer * *d.size * a->second.inner;
      v->set_type(v->dtype(), s);
    }
    graph.declared_batch[v->name()] = d;
  }
}

namespace {

// Constant `v` of batch × `period` rows, where every sample's `period` rows equal the first
// sample's: its readers read those rows (a constant derived from `v`) through a Tile to the batch
// (period > 1) or an Expand to v's shape (period 1) instead. False where the samples differ.
bool read_first_sample_through(Graph& graph, Value* v, int64_t batch, int64_t period) {
  const Tensor& t = v->constant();
  const size_t block = t.nbytes() / static_cast<size_t>(batch);
  const auto* bytes = static_cast<const std::byte*>(t.raw());
  for (int64_t b = 1; b < batch; ++b) {
    if (std::memcmp(bytes, bytes + static_cast<size_t>(b) * block, block) != 0) return false;
  }
  Shape rows = t.shape();
  rows[0] = period;
  Tensor first(DType::kFloat32, rows);
  std::memcpy(first.raw(), bytes, block);
  const std::string suffix = period > 1 ? "_rows" : "_row";
  Value* rows_value = graph.add_constant(graph.unique_value_name(v->name() + suffix), first);
  graph::DerivedTerm term{.source = v->name(), .source_shape = t.shape()};
  for (int64_t e = 0; e < first.numel(); ++e) term.pairs.emplace_back(e, e);
  graph.record_derivation({.derived = rows_value->name(), .shape = rows, .terms = {term}});
  // Tile's repeats (the batch along axis 0), or Expand's shape (v's).
  std::vector<int64_t> second(t.shape().begin(), t.shape().end());
  if (period > 1) {
    std::fill(second.begin(), second.end(), 1);
    second[0] = batch;
  }
  const std::string op = period > 1 ? "Tile" : "Expand";
  const std::vector<Node*> readers = v->consumers();
  const Node* earliest = *std::find_if(graph.nodes().begin(), graph.nodes().end(), [&](Node* n) {
    return std::find(readers.begin(), readers.end(), n) != readers.end();
  });
  Node* node = graph.insert_node(
      {.name = graph.unique_node_name(v->name() + "/" + op),
       .op_type = op,
       .inputs = {rows_value,
                  graph.add_constant(
                      graph.unique_value_name(v->name() + (period > 1 ? "_repeats" : "_shape")),
                      Tensor::from_vector<int64_t>({t.rank()}, second))},
       .output_names = {graph.unique_value_name(v->name() +
                                                (period > 1 ? "_tiled" : "_expanded"))}},
      earliest);
  for (Node* r : readers) {
    for (size_t i = 0; i < r->num_inputs(); ++i) {
      if (r->input(i) == v) graph.set_input(r, i, node->output(0));
    }
  }
  node->output(0)->set_type(DType::kFloat32, t.shape());
  return true;
}

}  // namespace

size_t share_batch_rows(Graph& graph) {
  if (graph.inputs().empty() || !graph.inputs().front()->has_shape() ||
      graph.inputs().front()->shape()->empty()) {
    return 0;
  }
  const int64_t batch = graph.inputs().front()->known_shape()[0];
  if (batch < 2) return 0;
  size_t shared = 0;
  for (Value* v : graph.values()) {
    if (!v->is_constant() || v->is_released() || v->dtype() != DType::kFloat32 ||
        v->consumers().empty() || v->is_graph_output()) {
      continue;
    }
    const Tensor& t = v->constant();
    if (t.rank() < 1 || t.dim(0) % batch != 0) continue;
    const int64_t period = t.dim(0) / batch;
    // A class token joins the activations by Concat or a broadcast; the relative-position keys
    // of batch × heads rows are a batched MatMul's operand.
    const bool readers_fit =
        std::all_of(v->consumers().begin(), v->consumers().end(), [&](const Node* n) {
          return period > 1 ? t.rank() >= 3 && n->op_type() == "MatMul"
                            : n->op_type() == "Concat" || is_broadcasting(n->op_type());
        });
    if (readers_fit && read_first_sample_through(graph, v, batch, period)) ++shared;
  }
  graph.remove_dead();
  return shared;
}

std::string written_batch_text(const Graph& model, const BatchExportOptions& options) {
  if (model.inputs().empty()) return "no batch";
  if (model.added_batch_axis.any()) return "no batch axis, as the file";
  auto d = model.declared_batch.find(model.inputs().front()->name());
  if (d == model.declared_batch.end()) return "symbolic batch 'N'";
  if (d->second.size && !options.dynamic_batch) {
    return "fixed batch " + std::to_string(*d->second.size);
  }
  const std::string name = d->second.size ? std::string("batch") : d->second.param;
  return name.empty() ? std::string("unknown batch") : "symbolic batch '" + name + "'";
}

}  // namespace qforge::runtime
