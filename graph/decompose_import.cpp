// Swish, Mish, Attention and RMSNormalization rewritten on import into the ops older exports
// compute them with; the variadic Sum and Mean into Adds (and a Mul).
#include "graph/decompose_import.h"

#include <onnx/onnx_pb.h>

#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "graph/proto_emitter.h"
#include "graph/proto_names.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

constexpr int64_t kSwishOpset = 24;
constexpr int64_t kMishOpset = 18;
constexpr int64_t kAttentionOpset = 23;  // Attention and RMSNormalization

// Refuses a node whose op is newer than the model's opset.
void require_opset(const std::string& label, const char* op, int64_t since, int64_t opset) {
  if (opset < since) {
    throw_invalid(label + ": expected opset " + std::to_string(since) + " or later for " + op +
                  ", got opset " + std::to_string(opset));
  }
}

// Whether the file says `value` is boolean: its declaration (input, value_info), its
// initializer's type, or its producer (a Cast to bool, a comparison, Not).
bool input_is_boolean(const onnx::GraphProto& g, const std::string& value) {
  for (const auto* list : {&g.input(), &g.value_info()}) {
    for (const auto& v : *list) {
      if (v.name() == value && v.type().has_tensor_type()) {
        return v.type().tensor_type().elem_type() == onnx::TensorProto::BOOL;
      }
    }
  }
  for (const auto& t : g.initializer()) {
    if (t.name() == value) return t.data_type() == onnx::TensorProto::BOOL;
  }
  for (const auto& n : g.node()) {
    if (n.output_size() == 0 || n.output(0) != value) continue;
    const std::string& op = n.op_type();
    if (op == "Equal" || op == "Greater" || op == "Less" || op == "GreaterOrEqual" ||
        op == "LessOrEqual" || op == "Not" || op == "And" || op == "Or" || op == "Xor") {
      return true;
    }
    for (const auto& a : n.attribute()) {
      if (op == "Cast" && a.name() == "to") return a.i() == onnx::TensorProto::BOOL;
      if (op == "Constant" && a.name() == "value") {
        return a.t().data_type() == onnx::TensorProto::BOOL;
      }
    }
  }
  return false;
}

struct AttentionAttributes {
  bool causal = false;
  int64_t q_heads = 0, kv_heads = 0;  // 3-D inputs only
  std::optional<float> scale;
  float softcap = 0.0f;
};

AttentionAttributes attention_attributes(const onnx::NodeProto& np, const std::string& label) {
  AttentionAttributes at;
  auto expect = [&](const onnx::AttributeProto& a, onnx::AttributeProto::AttributeType type) {
    if (a.type() != type) {
      throw_invalid(label + ": expected attribute '" + a.name() + "' " +
                    onnx::AttributeProto::AttributeType_Name(type) + ", got " +
                    onnx::AttributeProto::AttributeType_Name(a.type()));
    }
  };
  for (const auto& a : np.attribute()) {
    const std::string& name = a.name();
    if (name == "scale" || name == "softcap") {
      expect(a, onnx::AttributeProto::FLOAT);
      if (name == "scale") at.scale = a.f();
      if (name == "softcap") at.softcap = a.f();
      continue;
    }
    expect(a, onnx::AttributeProto::INT);
    const int64_t v = a.i();
    auto unsupported = [&](const std::string& what) {
      throw_unsupported(label + ": expected " + what + ", got " + name + " " + std::to_string(v));
    };
    if (name == "is_causal") {
      if (v != 0 && v != 1)
        throw_invalid(label + ": expected is_causal 0 or 1, got " + std::to_string(v));
      at.causal = v == 1;
    } else if (name == "q_num_heads" || name == "kv_num_heads") {
      if (v < 1) throw_invalid(label + ": expected " + name + " >= 1, got " + std::to_string(v));
      (name == "q_num_heads" ? at.q_heads : at.kv_heads) = v;
    } else if (name == "softmax_precision") {
      if (v != 0 && v != onnx::TensorProto::FLOAT) unsupported("softmax_precision 1 (float)");
    } else if (name == "left_window_size" || name == "right_window_size") {
      if (v != -1) unsupported(name + " -1 (no sliding window)");
    } else if (name != "qk_matmul_output_mode") {
      throw_invalid(label + ": unknown attribute '" + name + "'");
    }
  }
  if ((at.q_heads > 0) != (at.kv_heads > 0)) {
    throw_invalid(label + ": expected q_num_heads and kv_num_heads together, got one");
  }
  if (at.q_heads != at.kv_heads) {
    throw_unsupported(label + ": expected as many key and value heads as query heads, got " +
                      std::to_string(at.kv_heads) + " and " + std::to_string(at.q_heads) +
                      " (grouped-query attention)");
  }
  return at;
}

// Attention (opset 23, scaled dot-product attention) as torch.onnx writes it at 17, which
// ComposeSDPA turns into one SDPA module: Transpose(K) → MatMul(Q, ·) → Mul(scale) → [softcap:
// Div, Tanh, Mul] → [Add mask] → [Add causal mask] → Softmax → MatMul(·, V), the last under the
// node's name. 3-D inputs (q_num_heads given) are split into heads first and merged after. The
// default scale 1/√head_size and the causal mask are computed from the inputs' shapes, constants
// once the shapes are resolved. Refused naming the node: a KV cache (past_key, past_value,
// nonpad_kv_seqlen, present outputs), the qk_matmul_output, grouped-query heads, sliding
// windows, a softmax in another precision.
void decompose_attention(const onnx::NodeProto& np, const std::string& name, int64_t opset,
                         const onnx::GraphProto& g, FreshValueNames& names, Nodes& out) {
  const std::string label = "import: node '" + name + "' (Attention)";
  require_opset(label, "Attention", kAttentionOpset, opset);
  auto present = [](const auto& list, int i) { return i < list.size() && !list.Get(i).empty(); };
  if (np.input_size() < 3 || !present(np.input(), 0) || !present(np.input(), 1) ||
      !present(np.input(), 2)) {
    throw_invalid(label + ": expected inputs Q, K and V, got " + std::to_string(np.input_size()) +
                  " inputs");
  }
  const char* cache_inputs[] = {"past_key", "past_value", "nonpad_kv_seqlen"};
  for (int i = 4; i < np.input_size(); ++i) {
    if (present(np.input(), i)) {
      throw_unsupported(label + ": expected no " +
                        (i <= 6 ? std::string(cache_inputs[i - 4]) : "input " + std::to_string(i)) +
                        " (a KV cache), got '" + np.input(i) + "'");
    }
  }
  if (np.output_size() < 1 || np.output(0).empty()) {
    throw_invalid(label + ": expected output Y, got none");
  }
  const char* extra_outputs[] = {"present_key", "present_value", "qk_matmul_output"};
  for (int i = 1; i < np.output_size(); ++i) {
    if (present(np.output(), i)) {
      throw_unsupported(
          label + ": expected only output Y, got " +
          (i <= 3 ? std::string(extra_outputs[i - 1]) : "output " + std::to_string(i)) + " '" +
          np.output(i) + "'");
    }
  }
  const AttentionAttributes at = attention_attributes(np, label);
  Emitter e(name, names, out);
  std::string q = np.input(0), k = np.input(1), v = np.input(2);
  const bool three_d = at.q_heads > 0;
  if (three_d) {  // [B, S, H·D] → [B, H, S, D]
    const std::string heads = e.ints("heads_shape", {0, 0, at.q_heads, -1});
    auto split = [&](const std::string& x, const std::string& part) {
      const std::string r = e.value("Reshape", part + "_heads", {x, heads});
      onnx::NodeProto& t = e.node("Transpose", part + "_transpose", {r});
      Emitter::ints_attribute(t, "perm", {0, 2, 1, 3});
      return t.output(0);
    };
    q = split(q, "q");
    k = split(k, "k");
    v = split(v, "v");
  }
  onnx::NodeProto& kt = e.node("Transpose", "k_transposed", {k});
  Emitter::ints_attribute(kt, "perm", {0, 1, 3, 2});
  std::string scores = e.value("MatMul", "qk", {q, kt.output(0)});
  std::string scale;
  if (at.scale) {
    scale = e.floats("scale_value", *at.scale);
  } else {  // 1 / √(Q's last dim), as a float
    onnx::NodeProto& df = e.node("Cast", "head_size_float", {e.dim(q, -1, "head_size")});
    Emitter::int_attribute(df, "to", onnx::TensorProto::FLOAT);
    const std::string root = e.value("Sqrt", "head_size_sqrt", {df.output(0)});
    scale = e.value("Div", "default_scale", {e.floats("one", 1.0f), root});
  }
  scores = e.value("Mul", "scale", {scores, scale});
  if (at.softcap != 0.0f) {  // softcap · tanh(scores / softcap)
    const std::string cap = e.floats("softcap_value", at.softcap);
    const std::string t =
        e.value("Tanh", "softcap_tanh", {e.value("Div", "softcap_div", {scores, cap})});
    scores = e.value("Mul", "softcap", {t, cap});
  }
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (present(np.input(), 3)) {
    // A float mask is added; a boolean one (as the file declares or computes it) keeps the
    // scores where it is true (0 added) and removes the others (-inf).
    std::string mask = np.input(3);
    if (input_is_boolean(g, mask)) {
      mask = e.value("Where", "mask_bias",
                     {mask, e.floats("mask_keep", 0.0f), e.floats("mask_drop", neg_inf)});
    }
    scores = e.value("Add", "mask", {scores, mask});
  }
  if (at.causal) {  // -inf where key j > query i (no cache: no offset)
    auto positions = [&](const std::string& x, const std::string& part) {
      return e.value("Range", part + "_positions",
                     {e.ints(part + "_start", {0}, true), e.dim(x, -2, part + "_length"),
                      e.ints(part + "_step", {1}, true)});
    };
    const std::string rows = e.value("Unsqueeze", "causal_rows",
                                     {positions(q, "query"), e.ints("causal_row_axis", {1})});
    const std::string cols =
        e.value("Unsqueeze", "causal_cols", {positions(k, "key"), e.ints("causal_col_axis", {0})});
    const std::string later = e.value("Greater", "causal_later", {cols, rows});
    const std::string causal =
        e.value("Where", "causal_bias",
                {later, e.floats("causal_drop", neg_inf), e.floats("causal_keep", 0.0f)});
    scores = e.value("Add", "causal", {scores, causal});
  }
  onnx::NodeProto& softmax = e.node("Softmax", "softmax", {scores});
  Emitter::int_attribute(softmax, "axis", -1);
  if (!three_d) {
    e.node("MatMul", "", {softmax.output(0), v}, np.output(0));
    return;
  }
  const std::string y = e.value("MatMul", "av", {softmax.output(0), v});
  onnx::NodeProto& merged = e.node("Transpose", "merge_transpose", {y});
  Emitter::ints_attribute(merged, "perm", {0, 2, 1, 3});
  e.node("Reshape", "", {merged.output(0), e.ints("merged_shape", {0, 0, -1})}, np.output(0));
}

// Swish(x) = x · Sigmoid(alpha · x): Sigmoid then Mul(x, ·) as torch.onnx writes SiLU (alpha 1),
// with a Mul by the constant alpha first otherwise. The last Mul keeps the node's name.
void decompose_swish(const onnx::NodeProto& np, const std::string& name, int64_t opset,
                     FreshValueNames& names, Nodes& out) {
  const std::string label = "import: node '" + name + "' (Swish)";
  require_opset(label, "Swish", kSwishOpset, opset);
  if (np.input_size() != 1 || np.output_size() != 1 || np.input(0).empty()) {
    throw_invalid(label + ": expected one input and one output, got " +
                  std::to_string(np.input_size()) + " and " + std::to_string(np.output_size()));
  }
  float alpha = 1.0f;
  for (const auto& a : np.attribute()) {
    if (a.name() != "alpha") {
      throw_invalid(label + ": expected only attribute 'alpha', got '" + a.name() + "'");
    }
    if (a.type() != onnx::AttributeProto::FLOAT) {
      throw_invalid(label + ": expected attribute 'alpha' a float, got " +
                    onnx::AttributeProto::AttributeType_Name(a.type()));
    }
    alpha = a.f();
  }
  Emitter e(name, names, out);
  const std::string& x = np.input(0);
  const std::string gate_input =
      alpha == 1.0f ? x : e.value("Mul", "scale", {x, e.floats("alpha", alpha)});
  e.node("Mul", "", {x, e.value("Sigmoid", "sigmoid", {gate_input})}, np.output(0));
}

// Mish(x) = x · tanh(softplus(x)) (opset 18): Softplus, Tanh and Mul(x, ·), what torch.onnx
// writes for F.mish before it, the Mul under the node's name.
void decompose_mish(const onnx::NodeProto& np, const std::string& name, int64_t opset,
                    FreshValueNames& names, Nodes& out) {
  const std::string label = "import: node '" + name + "' (Mish)";
  require_opset(label, "Mish", kMishOpset, opset);
  if (np.input_size() != 1 || np.output_size() != 1 || np.input(0).empty()) {
    throw_invalid(label + ": expected one input and one output, got " +
                  std::to_string(np.input_size()) + " and " + std::to_string(np.output_size()));
  }
  if (np.attribute_size() > 0) {
    throw_invalid(label + ": expected no attributes, got '" + np.attribute(0).name() + "'");
  }
  Emitter e(name, names, out);
  const std::string& x = np.input(0);
  const std::string gate = e.value("Tanh", "tanh", {e.value("Softplus", "softplus", {x})});
  e.node("Mul", "", {x, gate}, np.output(0));
}

// RMSNormalization (opset 23) as its definition writes it: Mul(X, X) → ReduceMean over the axes
// from `axis` on (keepdims) → Add(epsilon) → Sqrt → Div(X, ·) → Mul(scale), the last under the
// node's name. A negative axis names the axes without the rank; a non-negative one takes them
// from X's rank at run time (Range up to it, a constant once shapes are resolved).
void decompose_rms_normalization(const onnx::NodeProto& np, const std::string& name, int64_t opset,
                                 FreshValueNames& names, Nodes& out) {
  const std::string label = "import: node '" + name + "' (RMSNormalization)";
  require_opset(label, "RMSNormalization", kAttentionOpset, opset);
  if (np.input_size() != 2 || np.input(0).empty() || np.input(1).empty() || np.output_size() != 1) {
    throw_invalid(label + ": expected inputs X and scale and one output, got " +
                  std::to_string(np.input_size()) + " inputs and " +
                  std::to_string(np.output_size()) + " outputs");
  }
  int64_t axis = -1;
  float epsilon = 1e-5f;
  for (const auto& a : np.attribute()) {
    if (a.name() == "axis" && a.type() == onnx::AttributeProto::INT) {
      axis = a.i();
    } else if (a.name() == "epsilon" && a.type() == onnx::AttributeProto::FLOAT) {
      epsilon = a.f();
    } else if (a.name() == "stash_type" && a.type() == onnx::AttributeProto::INT) {
      if (a.i() != onnx::TensorProto::FLOAT) {
        throw_unsupported(label + ": expected stash_type 1 (float), got " + std::to_string(a.i()));
      }
    } else {
      throw_invalid(label + ": unexpected attribute '" + a.name() + "' of type " +
                    onnx::AttributeProto::AttributeType_Name(a.type()));
    }
  }
  Emitter e(name, names, out);
  const std::string& x = np.input(0);
  std::string axes;
  if (axis < 0) {
    std::vector<int64_t> tail;
    for (int64_t a = axis; a < 0; ++a) tail.push_back(a);
    axes = e.ints("axes", tail);
  } else {
    const std::string rank = e.value(
        "Squeeze", "rank", {e.value("Shape", "rank_1d", {e.value("Shape", "x_shape", {x})})});
    axes = e.value("Range", "axes",
                   {e.ints("first_axis", {axis}, true), rank, e.ints("axis_step", {1}, true)});
  }
  const std::string squared = e.value("Mul", "square", {x, x});
  onnx::NodeProto& mean = e.node("ReduceMean", "mean_square", {squared, axes});
  Emitter::int_attribute(mean, "keepdims", 1);
  const std::string shifted =
      e.value("Add", "add_epsilon", {mean.output(0), e.floats("epsilon", epsilon)});
  const std::string rms = e.value("Sqrt", "rms", {shifted});
  const std::string normalized = e.value("Div", "normalize", {x, rms});
  e.node("Mul", "", {normalized, np.input(1)}, np.output(0));
}

// Sum and Mean of one or more inputs (any opset): Adds left to right, as ONNX Runtime sums them,
// Mean's total then times the count's reciprocal; the last node keeps the name and the output.
void decompose_variadic_mean_sum(const onnx::NodeProto& np, const std::string& name,
                                 FreshValueNames& names, Nodes& out) {
  const std::string label = "import: node '" + name + "' (" + np.op_type() + ")";
  const int inputs = np.input_size();
  if (inputs < 1 || np.output_size() != 1) {
    throw_invalid(label + ": expected one or more inputs and one output, got " +
                  std::to_string(inputs) + " and " + std::to_string(np.output_size()));
  }
  for (const auto& in : np.input()) {
    if (in.empty()) throw_invalid(label + ": expected every input given, got an omitted one");
  }
  const bool mean = np.op_type() == "Mean";
  Emitter e(name, names, out);
  if (inputs == 1) {
    e.node("Identity", "", {np.input(0)}, np.output(0));
    return;
  }
  std::string total = np.input(0);
  for (int i = 1; i < inputs; ++i) {
    if (i + 1 == inputs && !mean) {
      e.node("Add", "", {total, np.input(i)}, np.output(0));
    } else {
      total = e.value("Add", "add_" + std::to_string(i), {total, np.input(i)});
    }
  }
  if (mean) {
    // ONNX Runtime multiplies by the count's reciprocal (measured: not a division's bits).
    e.node("Mul", "", {total, e.floats("reciprocal", static_cast<float>(1.0 / inputs))},
           np.output(0));
  }
}

}  // namespace

void decompose_newer_ops(onnx::ModelProto& model, int64_t opset) {
  onnx::GraphProto& g = *model.mutable_graph();
  bool any = false;
  for (const auto& np : g.node()) {
    any = any || np.op_type() == "Swish" || np.op_type() == "Mish" || np.op_type() == "Attention" ||
          np.op_type() == "RMSNormalization" || np.op_type() == "Sum" || np.op_type() == "Mean";
  }
  if (!any) return;
  FreshValueNames names(g);
  google::protobuf::RepeatedPtrField<onnx::NodeProto> rewritten;
  int index = 0;
  for (const auto& np : g.node()) {
    const std::string name = proto_node_name(np, index++);
    const bool standard = np.domain().empty() || np.domain() == "ai.onnx";
    if (standard && np.op_type() == "Swish") {
      decompose_swish(np, name, opset, names, rewritten);
    } else if (standard && np.op_type() == "Mish") {
      decompose_mish(np, name, opset, names, rewritten);
    } else if (standard && np.op_type() == "Attention") {
      decompose_attention(np, name, opset, g, names, rewritten);
    } else if (standard && np.op_type() == "RMSNormalization") {
      decompose_rms_normalization(np, name, opset, names, rewritten);
    } else if (standard && (np.op_type() == "Sum" || np.op_type() == "Mean")) {
      decompose_variadic_mean_sum(np, name, names, rewritten);
    } else {
      *rewritten.Add() = np;
    }
  }
  *g.mutable_node() = std::move(rewritten);
}

}  // namespace qforge::graph
