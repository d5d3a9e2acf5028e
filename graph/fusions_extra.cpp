// ActAdd: Act(x) + other as one module, so that quantization puts a Q/DQ pair on each Add input
// (TensorRT then runs the Add in INT8 too). The activation forms are the ones the core fusions
// match (graph/fusions.h); ActAdd is listed last, so activations an earlier fusion claims stay
// with it and the plan records this match as skipped.
//
// Module: ActAdd(x, other), attributes `activation` with `alpha`, `beta`, `clip_min`,
// `clip_max` as the core modules write them.
#include "graph/fusions_extra.h"

#include <algorithm>
#include <array>

#include "graph/catalog.h"
#include "graph/fusions.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

using kernels::shape_str;

// The activation whose first node is `first`. Single-node forms accept any readers of their
// input (a block's `x + relu(x)` too); GELU and SiLU read x twice and need it to themselves.
std::optional<Activation> activation_from(const Node& first) {
  Node& node = const_cast<Node&>(first);
  if (node.op_type() == "Div" || node.op_type() == "Sigmoid") {
    std::optional<Activation> multi = match_activation(node.input(0));
    if (multi && multi->nodes.size() > 1 && multi->nodes.front() == &node) return multi;
    if (node.op_type() == "Div") return std::nullopt;
  }
  return match_single_activation(node);
}

// True for a GELU or SiLU node other than the first: its activation input lies at most five
// producers up (GELU's last Mul reads x through its first Mul).
bool inside_multi_node_activation(const Node& node) {
  std::vector<const Node*> frontier = {&node};
  for (int depth = 0; depth < 5 && !frontier.empty(); ++depth) {
    std::vector<const Node*> next;
    for (const Node* cur : frontier) {
      for (const Value* in : cur->inputs()) {
        if (!in) continue;
        const std::optional<Activation> a = match_activation(in);
        if (a && a->nodes.size() > 1 &&
            std::find(a->nodes.begin() + 1, a->nodes.end(), &node) != a->nodes.end()) {
          return true;
        }
        if (in->producer()) next.push_back(in->producer());
      }
    }
    frontier = std::move(next);
  }
  return false;
}

Value* other_addend(const Node& add, const Value* act_out) {
  if (add.num_inputs() != 2) return nullptr;
  if (add.input(0) == act_out) return add.input(1);
  if (add.input(1) == act_out) return add.input(0);
  return nullptr;
}

std::string with_suffix(const std::string& stem, const char* suffix) {
  std::string out = stem;
  out.append(suffix);
  return out;
}

// Whether `x` is the output of a layer whose fusion (listed before ActAdd) takes the activation
// after it: a Conv or ConvTranspose with a constant weight, with or without a BatchNormalization
// after it, or a Gemm/MatMul with a constant weight and its bias Add. Those fusions find a GELU
// or SiLU from their chain's output (it reads the output twice, so no trunk reaches it), and
// their matches do not list its nodes: this keeps ActAdd from claiming them too.
bool ends_fused_layer(const Value* x) {
  const Node* p = x ? x->producer() : nullptr;
  if (p && (p->op_type() == "BatchNormalization" || p->op_type() == "Add")) {
    const Node* before = p->input(0) ? p->input(0)->producer() : nullptr;
    if (p->op_type() == "Add" && (!before || before->op_type() != "MatMul")) return false;
    p = before;
  }
  if (!p || p->num_inputs() < 2 || !p->input(1) || !p->input(1)->is_constant()) return false;
  const std::string& op = p->op_type();
  return op == "Conv" || op == "ConvTranspose" || op == "Gemm" || op == "MatMul";
}

std::optional<std::string> act_add_refusal(const Graph& g, const Match& m) {
  const Node& first = *m.node(g, "act");
  const std::optional<Activation> a = activation_from(first);
  if (!a) return first.label() + ": not one of the nine activations";
  if (a->nodes.size() > 1 && ends_fused_layer(first.input(0))) {
    return first.label() + ": the " + a->kind + " belongs to the layer before it";
  }
  std::vector<std::string> matched = m.names("act");
  for (const std::string& name : m.names("act_tail")) matched.push_back(name);
  std::vector<std::string> expected;
  for (const Node* n : a->nodes) expected.push_back(n->name());
  if (matched != expected) {
    return first.label() + ": the matched nodes are not exactly the " + a->kind + " activation";
  }
  const Node& add = *m.node(g, "add");
  const Value* other = other_addend(add, a->output);
  if (!other) return add.label() + ": does not read the " + a->kind + " output";
  if (other == a->output) return add.label() + ": adds the activation to itself";
  if (other->is_constant()) {
    return add.label() + ": expected a computed second addend, got the constant '" + other->name() +
           "'";
  }
  const Value* sum = add.output(0);
  if (!other->has_shape() || !a->output->has_shape() || !sum->has_shape() ||
      other->dtype() != DType::kFloat32 || a->output->dtype() != DType::kFloat32) {
    return add.label() + ": expected float addends of known shape";
  }
  if (*other->shape() != *a->output->shape() || *sum->shape() != *a->output->shape()) {
    return add.label() + ": expected addends of one shape, got " + shape_str(*a->output->shape()) +
           " and " + shape_str(*other->shape());
  }
  return std::nullopt;
}

// Inserts ActAdd before the Add, moves the sum's uses and name onto it, removes the chain.
void rewrite_act_add(Graph& g, const Match& m) {
  Node* first = m.node(g, "act");
  Node* add = m.node(g, "add");
  const Activation a = *activation_from(*first);
  Value* sum = add->output(0);
  const std::string sum_name = sum->name();
  const std::string stem = with_suffix(first->name(), "/ActAdd");
  NodeSpec spec{.name = g.find_node(stem) ? g.unique_node_name(stem) : stem,
                .op_type = "ActAdd",
                .inputs = {first->input(0), other_addend(*add, a.output)},
                .output_names = {g.unique_value_name(with_suffix(sum_name, "_module"))},
                .domain = "qforge"};
  write_activation_attributes(spec, a);
  Node* module = g.insert_node(std::move(spec), add);
  module->output(0)->set_type(sum->dtype(), *sum->shape());
  g.replace_all_uses(sum, module->output(0));
  g.remove_node(add);
  for (auto it = a.nodes.rbegin(); it != a.nodes.rend(); ++it) g.remove_node(*it);
  g.rename_value(module->output(0), sum_name);
}

// ActAdd(x, other) -> the activation's nodes over x -> Add(·, other).
void lower_act_add(Graph& g, Node& node, Lowered& /*lowered*/) {
  Value* act = lower_activation(g, node, node.input(0));
  const std::string stem = with_suffix(node.name(), "/Add_residual");
  Node* add = g.insert_node({.name = g.find_node(stem) ? g.unique_node_name(stem) : stem,
                             .op_type = "Add",
                             .inputs = {act, node.input(1)},
                             .output_names = {g.unique_value_name(with_suffix(stem, "_out"))}},
                            &node);
  Value* out = node.output(0);
  const std::string name = out->name();
  if (out->has_shape()) add->output(0)->set_type(out->dtype(), *out->shape());
  g.replace_all_uses(out, add->output(0));
  g.remove_node(&node);
  g.rename_value(add->output(0), name);
}

constexpr std::array kExtraModuleSchemas = {
    OpSchema{.op_type = "ActAdd",
             .min_inputs = 2,
             .max_inputs = 2,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 0,
             .gradient = Gradient::kThroughLowering,
             .kind = SchemaKind::kModule,
             .inputs = {{{"x", Role::kData}, {"other", Role::kResidual}}},
             .quantized_inputs = {0, 1, -1, -1},
             .lower = lower_act_add,
             .summary = "x, other: Act(x) + other, both addends quantized"},
};

}  // namespace

// 2-7 nodes. 0=Act (one node, or GELU's Div / SiLU's Sigmoid), 1..=the rest of GELU
// (Erf, Add, Mul, Mul) or SiLU (Mul), last=Add(·, other) with other computed, of the same shape.
Pattern act_add_pattern() {
  Pattern p;
  p.name = "ActAdd";
  p.kind = PatternKind::kFusion;
  p.topology = "Act -> Add(other)";
  p.trunk = {one("act",
                 {"Relu", "Clip", "LeakyRelu", "Elu", "HardSwish", "HardSigmoid", "Sigmoid", "Gelu",
                  "Div"},
                 [](const Node& n) { return activation_from(n).has_value(); }),
             zero_or_more("act_tail", {"Erf", "Add", "Mul"}, inside_multi_node_activation),
             // GELU's own Add(1) is no residual: without this a shorter tail would end there.
             one("add", {"Add"}, [](const Node& n) {
               return n.num_inputs() == 2 && !inside_multi_node_activation(n);
             })};
  p.select = act_add_refusal;
  p.rewrite = rewrite_act_add;
  return p;
}

std::span<const OpSchema> extra_module_schemas() {
  return kExtraModuleSchemas;
}

}  // namespace qforge::graph
