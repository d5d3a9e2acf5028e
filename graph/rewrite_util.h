// Small helpers the conversion and fusion passes share: constant checks, node predicates and the
// one-output node emission the lowerings use. Internal to graph/: include it from .cpp files only.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "graph/ir.h"

namespace qforge::graph {

// The fixed scale of the internal softmax quantizer of SDPA and SwinAttention.
inline constexpr float kSoftmaxScale = 1.0f / 127.0f;

// `replacement` takes the place of `old_node`'s first output, its uses (a graph output's too) and
// its name; the node goes, and must have no other output in use.
inline void replace_output(Graph& g, Node& old_node, Value* replacement) {
  Value* old_out = old_node.output(0);
  const std::string name = old_out->name();
  g.replace_all_uses(old_out, replacement);
  g.remove_node(&old_node);
  g.rename_value(replacement, name);
}

// The node that privately reads `v`: its only reader, reading it once, and v no graph output.
inline Node* private_reader(const Value* v) {
  if (!v || v->is_graph_output() || v->consumers().size() != 1) return nullptr;
  Node* n = v->consumers()[0];
  size_t uses = 0;
  for (const Value* in : n->inputs()) uses += in == v;
  return uses == 1 ? n : nullptr;
}

// The other input of a two-input node, given one of them.
inline Value* other_input(const Node& n, const Value* one) {
  if (n.num_inputs() != 2) return nullptr;
  if (n.input(0) == one) return n.input(1);
  if (n.input(1) == one) return n.input(0);
  return nullptr;
}

inline bool is_float_constant(const Value* v) {
  return v && v->is_constant() && v->dtype() == DType::kFloat32;
}

inline std::optional<float> scalar_constant(const Value* v) {
  if (!is_float_constant(v) || v->constant().numel() != 1) return std::nullopt;
  return v->constant().data<float>()[0];
}

inline std::string name_with(const std::string& stem, const char* suffix) {
  std::string out = stem;
  out.append(suffix);
  return out;
}

inline bool has_perm(const Node& n, const std::vector<int64_t>& perm) {
  return n.attr_ints("perm", {}) == perm;
}

// A Dropout's mask output (output 1) is read.
inline bool dropout_mask_used(const Node& dropout) {
  return dropout.num_outputs() > 1 && dropout.output(1) && !dropout.output(1)->consumers().empty();
}

inline Value* int_constant_value(Graph& g, const std::string& stem, const std::vector<int64_t>& v) {
  return g.add_constant(g.unique_value_name(stem),
                        Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v));
}

// Inserts a one-output node before `position` and types its output float32 `shape`.
inline Value* emit(Graph& g, const Node* position, const std::string& name, const std::string& op,
                   std::vector<Value*> inputs, const Shape& shape,
                   std::map<std::string, AttributeValue, std::less<>> attrs = {},
                   const std::string& output_name = {}) {
  Node* n = g.insert_node(
      {.name = name,
       .op_type = op,
       .inputs = std::move(inputs),
       .output_names = {output_name.empty() ? g.unique_value_name(name) : output_name},
       .attributes = std::move(attrs)},
      position);
  n->output(0)->set_type(DType::kFloat32, shape);
  return n->output(0);
}

// A binary node whose second input is a float constant (a scale, a bias, a mask).
inline bool has_constant_operand(const Node& n) {
  return n.num_inputs() == 2 && is_float_constant(n.input(1));
}

// A Mul of attention scores [..., H, S, S_k] by a float constant of one value per head (Swin V2's
// logit scale, [H, 1, 1]): its trailing two dims 1, every other dim 1 or the scores'. A scalar is
// not one (ComposeSDPA's and ComposeSwinAttention's scalar scale takes it).
inline bool per_head_scaling(const Node& n, const Shape& scores) {
  if (n.op_type() != "Mul" || !has_constant_operand(n)) return false;
  const Shape& c = n.input(1)->constant().shape();
  if (c.size() < 3 || c.size() > scores.size() || kernels::shape_numel(c) == 1) return false;
  for (size_t i = 0; i < c.size(); ++i) {
    const int64_t want = scores[scores.size() - c.size() + i];
    const bool trailing = i + 2 >= c.size();
    if (trailing ? c[i] != 1 : (c[i] != 1 && c[i] != want)) return false;
  }
  return true;
}

// Why the scale node of attention scores [..., H, S, S_k] (a Mul or Div by a float constant) is no
// scale the attention modules take, one value or one per head; nullopt when it is one.
inline std::optional<std::string> scores_scale_refusal(const Node& n, const Shape& scores) {
  if (scalar_constant(n.input(1)) || per_head_scaling(n, scores)) return std::nullopt;
  return n.label() + ": the scale " + kernels::shape_str(n.input(1)->constant().shape()) +
         " is neither one value nor one per head of the scores " + kernels::shape_str(scores);
}

// Q [..., H, S, D] times such a per-head scale, inserted before `position`: (Q·s)·Kᵀ is the scaled
// scores up to float rounding, and the product is the query an attention module then quantizes.
inline Value* scale_query_per_head(Graph& g, const Node* position, Value* q, Value* scale,
                                   const std::string& stem) {
  return emit(g, position, g.unique_node_name(name_with(stem, "/QueryLogitScale")), "Mul",
              {q, scale}, q->known_shape());
}

}  // namespace qforge::graph
