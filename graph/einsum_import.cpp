// Einsum equations lowered on import to MatMul, Transpose, ReduceSum, Reshape, Squeeze and
// Unsqueeze: a letter of one term alone is summed first, each pair of terms (left to right) is
// one broadcast batched MatMul of [own batch, shared batch, rows, contracted] by [shared batch,
// contracted, columns], its contracted letters merged into one axis where there are several and
// a unit axis standing in for an absent one, and the output is put in the equation's order.
#include "graph/einsum_import.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cctype>
#include <optional>
#include <set>
#include <unordered_map>

#include "graph/proto_emitter.h"
#include "graph/proto_names.h"
#include "graph/proto_shapes.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

struct Term {
  bool ellipsis = false;
  std::string letters;  // after the ellipsis
};

struct Failure {
  std::string error;
  bool unsupported = false;
};

// One term: letters, optionally led by "...". Returns a failure's text otherwise.
std::optional<Failure> parse_term(const std::string& text, Term& term) {
  std::string rest = text;
  if (rest.rfind("...", 0) == 0) {
    term.ellipsis = true;
    rest = rest.substr(3);
  }
  for (char c : rest) {
    if (c == '.')
      return Failure{"an ellipsis only at the start of a term, got '" + text + "'", true};
    if (!std::isalpha(static_cast<unsigned char>(c))) {
      return Failure{"subscripts of letters and '...', got '" + text + "'", false};
    }
    if (term.letters.find(c) != std::string::npos) {
      return Failure{
          "each letter once per term (a repeated one takes a diagonal), got '" + text + "'", true};
    }
    term.letters.push_back(c);
  }
  return std::nullopt;
}

bool contains(const std::string& s, char c) {
  return s.find(c) != std::string::npos;
}

// The letters of `s` in the order `order` has them.
std::string ordered_as(const std::string& s, const std::string& order) {
  std::string r;
  for (char c : order) {
    if (contains(s, c)) r.push_back(c);
  }
  return r;
}

// A value of the lowering: an operand or a step's output, with a letter per axis ('_' for a
// unit axis or the merged contracted letters).
struct Operand {
  int ref = 0;
  std::string letters;
};

class Lowering {
 public:
  explicit Lowering(int operands) : operands_(operands) {}

  std::vector<EinsumStep> take_steps() && { return std::move(steps_); }

  // The result as `out` orders it, summing the letters `out` lacks.
  Operand single(Operand a, const std::string& out) {
    a = transpose(sum_except(a, out), out);
    if (a.ref < operands_) a = add("Identity", {a.ref}, {}, a.letters);
    return a;
  }

  // The product of `a` and `b` summed over the letters `out` lacks. The final pair puts the
  // result in `out`'s order; another leaves it as the MatMul makes it.
  Operand pair(Operand a, Operand b, const std::string& out, bool final) {
    a = sum_except(a, b.letters + out);
    b = sum_except(b, a.letters + out);
    std::string contracted, batch, a_own, b_own;
    for (char c : a.letters) {
      if (!contains(b.letters, c)) {
        a_own.push_back(c);
      } else {
        (contains(out, c) ? batch : contracted).push_back(c);
      }
    }
    for (char c : b.letters) {
      if (!contains(a.letters, c)) b_own.push_back(c);
    }
    if (final) {
      a_own = ordered_as(a_own, out);
      b_own = ordered_as(b_own, out);
      batch = ordered_as(batch, out);
    }
    // The last own letter of each input is the matrix row (m) or column (n); the others lead as
    // batch axes of their input, the other input has unit axes there (MatMul broadcasts them).
    const std::string m = a_own.empty() ? "" : a_own.substr(a_own.size() - 1);
    const std::string n = b_own.empty() ? "" : b_own.substr(b_own.size() - 1);
    const std::string a_lead = a_own.substr(0, a_own.size() - m.size());
    const std::string b_lead = b_own.substr(0, b_own.size() - n.size());
    const auto axes = static_cast<int64_t>(a_lead.size() + b_lead.size() + batch.size());

    // [a_lead, (units for b_lead), batch, m or unit, contracted or unit]
    Operand x = transpose(a, a_lead + batch + m + contracted);
    if (contracted.size() > 1) x = merge_trailing(x, a_lead.size() + batch.size() + m.size());
    std::vector<int64_t> x_units;
    if (!a_lead.empty()) {
      for (size_t i = 0; i < b_lead.size(); ++i) x_units.push_back(int64_t(a_lead.size() + i));
    }
    if (m.empty()) x_units.push_back(axes);
    if (contracted.empty()) x_units.push_back(axes + 1);
    x = unsqueeze(x, x_units);

    // [b_lead, batch, contracted or unit, n or unit]; leading units for a_lead are implied.
    Operand y;
    const size_t b_batch = b_lead.size() + batch.size();
    if (contracted.size() > 1 && !n.empty()) {
      y = merge_trailing(transpose(b, b_lead + batch + n + contracted), b_batch + 1);
      std::vector<int64_t> swap;
      for (size_t i = 0; i < b_batch; ++i) swap.push_back(int64_t(i));
      swap.push_back(int64_t(b_batch) + 1);
      swap.push_back(int64_t(b_batch));
      y = add("Transpose", {y.ref}, swap, y.letters.substr(0, b_batch) + "_" + n);
    } else {
      y = transpose(b, b_lead + batch + contracted + n);
      if (contracted.size() > 1) y = merge_trailing(y, b_batch);
    }
    std::vector<int64_t> y_units;
    if (contracted.empty()) y_units.push_back(int64_t(b_batch));
    if (n.empty()) y_units.push_back(int64_t(b_batch) + 1);
    y = unsqueeze(y, y_units);

    const std::string product_letters =
        a_lead + b_lead + batch + (m.empty() ? "_" : m) + (n.empty() ? "_" : n);
    Operand product = add("MatMul", {x.ref, y.ref}, {}, product_letters);
    std::vector<int64_t> units;
    if (m.empty()) units.push_back(axes);
    if (n.empty()) units.push_back(axes + 1);
    if (!units.empty()) {
      product = add("Squeeze", {product.ref}, units, a_lead + b_lead + batch + m + n);
    }
    return final ? transpose(product, out) : product;
  }

 private:
  Operand add(std::string op, std::vector<int> inputs, std::vector<int64_t> ints,
              std::string letters) {
    steps_.push_back({std::move(op), std::move(inputs), std::move(ints)});
    return {operands_ + static_cast<int>(steps_.size()) - 1, std::move(letters)};
  }

  Operand sum_except(Operand x, const std::string& keep) {
    std::vector<int64_t> axes;
    std::string rest;
    for (size_t i = 0; i < x.letters.size(); ++i) {
      if (contains(keep, x.letters[i])) {
        rest.push_back(x.letters[i]);
      } else {
        axes.push_back(static_cast<int64_t>(i));
      }
    }
    return axes.empty() ? x : add("ReduceSum", {x.ref}, std::move(axes), rest);
  }

  Operand transpose(Operand x, const std::string& order) {
    if (x.letters == order) return x;
    std::vector<int64_t> perm;
    for (char c : order) perm.push_back(static_cast<int64_t>(x.letters.find(c)));
    return add("Transpose", {x.ref}, std::move(perm), order);
  }

  // The axes from `keep` on merged into one (a Reshape copying the axes before it).
  Operand merge_trailing(Operand x, size_t keep) {
    std::vector<int64_t> shape(keep, 0);
    shape.push_back(-1);
    return add("Reshape", {x.ref}, std::move(shape), x.letters.substr(0, keep) + "_");
  }

  Operand unsqueeze(Operand x, const std::vector<int64_t>& axes) {
    if (axes.empty()) return x;
    std::string letters = x.letters;
    for (int64_t axis : axes) letters.insert(static_cast<size_t>(axis), 1, '_');
    return add("Unsqueeze", {x.ref}, axes, letters);
  }

  int operands_;
  std::vector<EinsumStep> steps_;
};

EinsumPlan failed(std::string error, bool unsupported) {
  EinsumPlan plan;
  plan.error = std::move(error);
  plan.unsupported = unsupported;
  return plan;
}

}  // namespace

EinsumPlan plan_einsum(const std::string& equation, std::span<const int64_t> ranks) {
  std::string eq;
  for (char c : equation) {
    if (!std::isspace(static_cast<unsigned char>(c))) eq.push_back(c);
  }
  const size_t arrow = eq.find("->");
  const std::string lhs = eq.substr(0, arrow);
  std::vector<Term> terms;
  for (size_t start = 0;;) {
    const size_t comma = lhs.find(',', start);
    Term term;
    if (auto f = parse_term(lhs.substr(start, comma - start), term)) {
      return failed(f->error, f->unsupported);
    }
    terms.push_back(term);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (terms.size() != ranks.size()) {
    return failed("as many inputs as the equation has terms (" + std::to_string(terms.size()) +
                      "), got " + std::to_string(ranks.size()),
                  false);
  }
  // The '...' axes, right-aligned across the terms, become letters of their own: '0', '1', …
  size_t ellipsis_axes = 0;
  std::vector<size_t> term_axes(terms.size(), 0);
  for (size_t i = 0; i < terms.size(); ++i) {
    const auto letters = static_cast<int64_t>(terms[i].letters.size());
    const std::string input = "input " + std::to_string(i);
    if (!terms[i].ellipsis) {
      if (ranks[i] >= 0 && ranks[i] != letters) {
        return failed(input + " of rank " + std::to_string(letters) + " for its term, got rank " +
                          std::to_string(ranks[i]),
                      false);
      }
      continue;
    }
    if (ranks[i] < 0) {
      EinsumPlan plan = failed("the rank of " + input + " known for its '...'", true);
      plan.unknown_rank = static_cast<int>(i);
      return plan;
    }
    if (ranks[i] < letters) {
      return failed(input + " of rank >= " + std::to_string(letters) + " for its term, got rank " +
                        std::to_string(ranks[i]),
                    false);
    }
    term_axes[i] = static_cast<size_t>(ranks[i] - letters);
    ellipsis_axes = std::max(ellipsis_axes, term_axes[i]);
  }
  if (ellipsis_axes > 10) {
    return failed("at most 10 axes under '...', got " + std::to_string(ellipsis_axes), true);
  }
  std::string ellipsis;
  for (size_t i = 0; i < ellipsis_axes; ++i) ellipsis.push_back(static_cast<char>('0' + i));

  std::vector<Operand> operands;
  std::string all;
  for (size_t i = 0; i < terms.size(); ++i) {
    operands.push_back(
        {static_cast<int>(i), ellipsis.substr(ellipsis_axes - term_axes[i]) + terms[i].letters});
    all += terms[i].letters;
  }
  std::string out;
  if (arrow != std::string::npos) {
    Term term;
    if (auto f = parse_term(eq.substr(arrow + 2), term)) {
      if (f->error.find("each letter once per term") == 0) {
        return failed("each letter once in the output, got '" + eq.substr(arrow + 2) + "'", false);
      }
      return failed(f->error, f->unsupported);
    }
    for (char c : term.letters) {
      if (!contains(all, c)) {
        return failed("output letters that an input has, got '" + std::string(1, c) + "'", false);
      }
    }
    if (ellipsis_axes > 0 && !term.ellipsis) {
      return failed("the output to keep the inputs' '...' axes, not sum them", true);
    }
    out = ellipsis + term.letters;
  } else {
    // Implicit output: the '...' axes, then the letters that occur once, in alphabetical order.
    std::string once;
    for (char c : all) {
      if (std::count(all.begin(), all.end(), c) == 1) once.push_back(c);
    }
    std::sort(once.begin(), once.end());
    out = ellipsis + once;
  }

  Lowering lowering(static_cast<int>(terms.size()));
  Operand result = operands[0];
  if (operands.size() == 1) {
    result = lowering.single(result, out);
  }
  for (size_t i = 1; i < operands.size(); ++i) {
    const bool final = i + 1 == operands.size();
    std::string needed = out;
    for (size_t j = i + 1; j < operands.size(); ++j) needed += operands[j].letters;
    result = lowering.pair(result, operands[i], needed, final);
  }
  EinsumPlan plan;
  plan.steps = std::move(lowering).take_steps();
  return plan;
}

std::string describe_einsum_plan(const EinsumPlan& plan) {
  std::string text;
  for (const EinsumStep& s : plan.steps) {
    if (!text.empty()) text += " ";
    text += s.op;
    if (!s.ints.empty()) {
      text += "[";
      for (size_t i = 0; i < s.ints.size(); ++i) {
        if (i) text += ",";
        text += std::to_string(s.ints[i]);
      }
      text += "]";
    }
    text += "(";
    for (size_t i = 0; i < s.inputs.size(); ++i) {
      if (i) text += ",";
      text += std::to_string(s.inputs[i]);
    }
    text += ")";
  }
  return text;
}

void rewrite_einsum_nodes(onnx::ModelProto& model, int64_t opset) {
  onnx::GraphProto& g = *model.mutable_graph();
  bool any = false;
  for (const auto& np : g.node()) any = any || np.op_type() == "Einsum";
  if (!any) return;
  // Ranks check each term, and '...' needs them.
  const auto dims = inferred_dims(model, /*data_propagation=*/false);
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
    const onnx::AttributeProto* equation_attribute = find_attribute(np, "equation");
    if (!equation_attribute || equation_attribute->type() != onnx::AttributeProto::STRING) {
      throw_invalid(label + ": expected a string attribute 'equation', got none");
    }
    const std::string& equation = equation_attribute->s();
    if (np.input_size() < 1 || np.output_size() != 1) {
      throw_invalid(label + ": equation '" + equation +
                    "': expected one or more inputs and one output, got " +
                    std::to_string(np.input_size()) + " and " + std::to_string(np.output_size()));
    }
    std::vector<int64_t> input_ranks;
    for (const auto& input : np.input()) {
      auto it = dims.find(input);
      input_ranks.push_back(it == dims.end() ? -1 : static_cast<int64_t>(it->second.size()));
    }
    const EinsumPlan plan = plan_einsum(equation, input_ranks);
    if (!plan.error.empty()) {
      std::string message = label + ": equation '" + equation + "': expected " + plan.error;
      if (plan.unknown_rank >= 0) {
        message = label + ": equation '" + equation + "': expected the rank of input '" +
                  np.input(plan.unknown_rank) + "' known for its '...', got an unknown shape";
      }
      if (plan.unsupported) throw_unsupported(message);
      throw_invalid(message);
    }
    // The steps' outputs: fresh names under the node's, the last one the Einsum's output.
    std::vector<std::string> values(np.input().begin(), np.input().end());
    size_t last_matmul = plan.steps.size();
    for (size_t i = 0; i < plan.steps.size(); ++i) {
      if (plan.steps[i].op == "MatMul") last_matmul = i;
    }
    auto constant = [&](const std::string& base, const std::vector<int64_t>& ints) {
      onnx::TensorProto& t = *g.add_initializer();
      t.set_name(names.take(base));
      t.set_data_type(onnx::TensorProto::INT64);
      t.add_dims(static_cast<int64_t>(ints.size()));
      for (int64_t v : ints) t.add_int64_data(v);
      return t.name();
    };
    std::set<std::string> step_names;
    for (size_t i = 0; i < plan.steps.size(); ++i) {
      const EinsumStep& step = plan.steps[i];
      std::string op_name = step.op;
      std::transform(op_name.begin(), op_name.end(), op_name.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      std::string step_name = name;
      if (i != last_matmul) {
        step_name = name + "/" + op_name;
        for (int k = 1; !step_names.insert(step_name).second; ++k) {
          step_name = name + "/" + op_name + "_" + std::to_string(k);
        }
      }
      onnx::NodeProto& node = *rewritten.Add();
      node.set_op_type(step.op);
      node.set_name(step_name);
      for (int input : step.inputs) node.add_input(values.at(static_cast<size_t>(input)));
      const bool last = i + 1 == plan.steps.size();
      const std::string output = last ? np.output(0) : names.take(step_name + "_out");
      node.add_output(output);
      values.push_back(output);
      if (step.op == "Transpose") {
        Emitter::ints_attribute(node, "perm", step.ints);
      } else if (step.op == "Reshape") {
        node.add_input(constant(step_name + "_shape", step.ints));
      } else if (step.op == "ReduceSum" || step.op == "Squeeze" || step.op == "Unsqueeze") {
        if (opset >= 13) {
          node.add_input(constant(step_name + "_axes", step.ints));
        } else {
          Emitter::ints_attribute(node, "axes", step.ints);
        }
        if (step.op == "ReduceSum") Emitter::int_attribute(node, "keepdims", 0);
      }
    }
  }
  *g.mutable_node() = std::move(rewritten);
}

}  // namespace qforge::graph
