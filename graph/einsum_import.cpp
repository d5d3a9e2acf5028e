// Einsum equations of batched matrix products rewritten to MatMul and Transpose on import.
#include "graph/einsum_import.h"

#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <algorithm>
#include <cctype>
#include <unordered_map>

#include "graph/proto_names.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

struct Term {
  bool ellipsis = false;
  std::string letters;  // after the ellipsis
};

// One term: letters, optionally led by "...". Returns false with `error` set otherwise.
bool parse_term(const std::string& text, Term& term, std::string& error, bool& unsupported) {
  std::string rest = text;
  if (rest.rfind("...", 0) == 0) {
    term.ellipsis = true;
    rest = rest.substr(3);
  }
  for (char c : rest) {
    if (c == '.') {
      error = "an ellipsis only at the start of a term, got '" + text + "'";
      unsupported = true;
      return false;
    }
    if (!std::isalpha(static_cast<unsigned char>(c))) {
      error = "subscripts of letters and '...', got '" + text + "'";
      return false;
    }
    if (term.letters.find(c) != std::string::npos) {
      error = "each letter once per term (a repeated one takes a diagonal), got '" + text + "'";
      unsupported = true;
      return false;
    }
    term.letters.push_back(c);
  }
  return true;
}

bool contains(const std::string& s, char c) {
  return s.find(c) != std::string::npos;
}

// The positions in `from` of the letters of `to`, or empty when they are in the same order.
std::vector<int64_t> permutation(const std::string& from, const std::string& to) {
  std::vector<int64_t> perm;
  bool identity = true;
  for (size_t i = 0; i < to.size(); ++i) {
    const auto at = static_cast<int64_t>(from.find(to[i]));
    identity = identity && at == static_cast<int64_t>(i);
    perm.push_back(at);
  }
  return identity ? std::vector<int64_t>{} : perm;
}

}  // namespace

EinsumPlan plan_einsum_matmul(const std::string& equation) {
  EinsumPlan plan;
  auto fail = [&](const std::string& error, bool unsupported) {
    plan.error = error;
    plan.unsupported = unsupported;
    return plan;
  };
  std::string eq;
  for (char c : equation) {
    if (!std::isspace(static_cast<unsigned char>(c))) eq.push_back(c);
  }
  const size_t arrow = eq.find("->");
  const std::string lhs = eq.substr(0, arrow);
  const size_t comma = lhs.find(',');
  if (comma == std::string::npos || lhs.find(',', comma + 1) != std::string::npos) {
    return fail("two input terms (a batched matrix product)", true);
  }
  Term a, b, out;
  std::string error;
  bool unsupported = false;
  if (!parse_term(lhs.substr(0, comma), a, error, unsupported) ||
      !parse_term(lhs.substr(comma + 1), b, error, unsupported)) {
    return fail(error, unsupported);
  }
  if (arrow != std::string::npos) {
    if (!parse_term(eq.substr(arrow + 2), out, error, unsupported)) return fail(error, unsupported);
    for (char c : out.letters) {
      if (!contains(a.letters, c) && !contains(b.letters, c)) {
        return fail("output letters that an input has, got '" + std::string(1, c) + "'", false);
      }
    }
  } else {
    // Implicit output: the letters that occur once, in alphabetical order, after any ellipsis.
    out.ellipsis = a.ellipsis || b.ellipsis;
    for (char c : a.letters + b.letters) {
      if (contains(a.letters, c) != contains(b.letters, c)) out.letters.push_back(c);
    }
    std::sort(out.letters.begin(), out.letters.end());
  }
  if ((a.ellipsis || b.ellipsis) && !out.ellipsis) {
    return fail("the output to keep the inputs' '...' dims, not sum them", true);
  }
  std::string k, shared, a_only, b_only;
  for (char c : a.letters) {
    if (contains(b.letters, c)) {
      (contains(out.letters, c) ? shared : k).push_back(c);
    } else if (contains(out.letters, c)) {
      a_only.push_back(c);
    } else {
      return fail("every letter of an input in the other input or the output (a sum over '" +
                      std::string(1, c) + "' alone is not a matrix product)",
                  true);
    }
  }
  for (char c : b.letters) {
    if (contains(a.letters, c)) continue;
    if (!contains(out.letters, c)) {
      return fail("every letter of an input in the other input or the output (a sum over '" +
                      std::string(1, c) + "' alone is not a matrix product)",
                  true);
    }
    b_only.push_back(c);
  }
  if (k.size() != 1 || a_only.empty() || b_only.empty()) {
    return fail(
        "one contracted letter and a row and a column letter of its own for each input, "
        "got contracted '" +
            k + "', first input's own '" + a_only + "', second input's own '" + b_only + "'",
        true);
  }
  // Own letters in output order; the last of each is the matrix row (m) or column (n), the
  // others lead as batch dims, which MatMul broadcasts against the other input's absence.
  auto in_output_order = [&](const std::string& letters) {
    std::string s;
    for (char c : out.letters) {
      if (contains(letters, c)) s.push_back(c);
    }
    return s;
  };
  const std::string a_own = in_output_order(a_only);
  const std::string b_own = in_output_order(b_only);
  const std::string batch = in_output_order(shared);
  const std::string a_extra = a_own.substr(0, a_own.size() - 1);
  const std::string b_extra = b_own.substr(0, b_own.size() - 1);
  const char m = a_own.back();
  const char n = b_own.back();
  if (!a_extra.empty() && (!b_extra.empty() || b.ellipsis)) {
    return fail(
        "batch letters of one input only when the other has neither own batch letters nor "
        "'...', got '" +
            a_extra + "' and '" + b_extra + "'" + (b.ellipsis ? " with '...'" : ""),
        true);
  }
  if (!b_extra.empty() && a.ellipsis) {
    return fail(
        "batch letters of one input only when the other has no '...', got '" + b_extra + "'", true);
  }
  const std::string a_target = a_extra + batch + std::string(1, m) + k;
  const std::string b_target = b_extra + batch + k + std::string(1, n);
  const std::string c_letters = a_extra + b_extra + batch + std::string(1, m) + std::string(1, n);
  EinsumMatMul mm;
  mm.perm_a = permutation(a.letters, a_target);
  mm.perm_b = permutation(b.letters, b_target);
  mm.perm_out = permutation(c_letters, out.letters);
  mm.ellipsis_a = a.ellipsis;
  mm.ellipsis_b = b.ellipsis;
  mm.letters_a = a.letters.size();
  mm.letters_b = b.letters.size();
  plan.matmul = mm;
  return plan;
}

namespace {

// Ranks of the values whose shape the file declares or libonnx inferred.
std::unordered_map<std::string, int64_t> known_ranks(const onnx::GraphProto& g) {
  std::unordered_map<std::string, int64_t> ranks;
  for (const auto* list : {&g.input(), &g.value_info(), &g.output()}) {
    for (const auto& v : *list) {
      if (v.type().has_tensor_type() && v.type().tensor_type().has_shape()) {
        ranks[v.name()] = v.type().tensor_type().shape().dim_size();
      }
    }
  }
  for (const auto& t : g.initializer()) ranks[t.name()] = t.dims_size();
  return ranks;
}

}  // namespace

void rewrite_einsum_nodes(onnx::ModelProto& model, int64_t opset) {
  onnx::GraphProto& g = *model.mutable_graph();
  bool any = false, needs_ranks = false;
  for (const auto& np : g.node()) {
    if (np.op_type() != "Einsum") continue;
    any = true;
    for (const auto& a : np.attribute()) {
      if (a.name() == "equation" && a.s().find("...") != std::string::npos) needs_ranks = true;
    }
  }
  if (!any) return;
  if (needs_ranks) {
    onnx::ShapeInferenceOptions si{};
    si.check_type = false;
    si.error_mode = 0;
    try {
      onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(), si);
    } catch (const std::exception&) {
      // The ranks that stay unknown are reported where an ellipsis needs them.
    }
  }
  const std::unordered_map<std::string, int64_t> ranks = known_ranks(g);
  FreshValueNames names(g);

  google::protobuf::RepeatedPtrField<onnx::NodeProto> rewritten;
  int index = 0;
  for (const auto& np : g.node()) {
    const std::string name = proto_node_name(np, index++);
    if (np.op_type() != "Einsum") {
      *rewritten.Add() = np;
      continue;
    }
    const std::string label = "import: node '" + name + "' (Einsum)";
    if (opset < 12) {
      throw_invalid(label + ": expected opset 12 or later for Einsum, got opset " +
                    std::to_string(opset));
    }
    std::string equation;
    bool has_equation = false;
    for (const auto& a : np.attribute()) {
      if (a.name() == "equation" && a.type() == onnx::AttributeProto::STRING) {
        equation = a.s();
        has_equation = true;
      }
    }
    if (!has_equation) throw_invalid(label + ": expected a string attribute 'equation', got none");
    if (np.input_size() != 2 || np.output_size() != 1) {
      throw_unsupported(label + ": equation '" + equation +
                        "': expected two inputs and one output (a batched matrix product), got " +
                        std::to_string(np.input_size()) + " and " +
                        std::to_string(np.output_size()));
    }
    const EinsumPlan plan = plan_einsum_matmul(equation);
    if (!plan.matmul) {
      const std::string message = label + ": equation '" + equation + "': expected " + plan.error;
      if (plan.unsupported) throw_unsupported(message);
      throw_invalid(message);
    }
    const EinsumMatMul& mm = *plan.matmul;
    // The ellipsis dims of an input: its rank less its letters, known from its shape.
    auto leading = [&](const std::string& value, bool ellipsis, size_t letters) -> int64_t {
      if (!ellipsis) return 0;
      auto it = ranks.find(value);
      if (it == ranks.end()) {
        throw_unsupported(label + ": equation '" + equation + "': expected the rank of input '" +
                          value + "' known for its '...', got an unknown shape");
      }
      if (it->second < static_cast<int64_t>(letters)) {
        throw_invalid(label + ": equation '" + equation + "': expected input '" + value +
                      "' of rank >= " + std::to_string(letters) + ", got rank " +
                      std::to_string(it->second));
      }
      return it->second - static_cast<int64_t>(letters);
    };
    auto transpose = [&](const std::string& input, const std::vector<int64_t>& perm, int64_t lead,
                         const std::string& suffix, const std::string& output) {
      onnx::NodeProto& t = *rewritten.Add();
      t.set_op_type("Transpose");
      t.set_name(name + "/" + suffix);
      t.add_input(input);
      t.add_output(output);
      onnx::AttributeProto& p = *t.add_attribute();
      p.set_name("perm");
      p.set_type(onnx::AttributeProto::INTS);
      for (int64_t i = 0; i < lead; ++i) p.add_ints(i);
      for (int64_t i : perm) p.add_ints(lead + i);
    };
    int64_t lead_a = 0, lead_b = 0;
    std::string a = np.input(0), b = np.input(1);
    if (!mm.perm_a.empty()) {
      lead_a = leading(a, mm.ellipsis_a, mm.letters_a);
      const std::string out = names.take(name + "/a");
      transpose(a, mm.perm_a, lead_a, "transpose_a", out);
      a = out;
    }
    if (!mm.perm_b.empty()) {
      lead_b = leading(b, mm.ellipsis_b, mm.letters_b);
      const std::string out = names.take(name + "/b");
      transpose(b, mm.perm_b, lead_b, "transpose_b", out);
      b = out;
    }
    onnx::NodeProto& matmul = *rewritten.Add();
    matmul.set_op_type("MatMul");
    matmul.set_name(name);
    matmul.add_input(a);
    matmul.add_input(b);
    if (mm.perm_out.empty()) {
      matmul.add_output(np.output(0));
      continue;
    }
    const std::string product = names.take(name + "/product");
    matmul.add_output(product);
    // MatMul broadcasts the inputs' ellipsis dims to the longer of them.
    const int64_t lead = std::max(leading(np.input(0), mm.ellipsis_a, mm.letters_a),
                                  leading(np.input(1), mm.ellipsis_b, mm.letters_b));
    transpose(product, mm.perm_out, lead, "transpose_out", np.output(0));
  }
  *g.mutable_node() = std::move(rewritten);
}

}  // namespace qforge::graph
