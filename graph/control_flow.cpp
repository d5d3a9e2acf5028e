#include "graph/control_flow.h"

#include <map>
#include <set>
#include <string>
#include <utility>

namespace qforge::graph {

std::vector<Node*> inline_branch(Graph& graph, Node* node, bool condition) {
  const char* which = condition ? "then_branch" : "else_branch";
  const Graph& branch = node->attr_graph(which);
  if (branch.inputs().size() + 1 != node->num_inputs() ||
      branch.outputs().size() != node->num_outputs()) {
    throw_internal("inline: " + node->label() + ": its " + which + " reads " +
                   std::to_string(branch.inputs().size()) + " values and writes " +
                   std::to_string(branch.outputs().size()) + ", the node lists " +
                   std::to_string(node->num_inputs() - 1) + " and " +
                   std::to_string(node->num_outputs()));
  }
  auto free_name = [&](const std::string& name) {
    return graph.find_value(name) ? graph.unique_value_name(name) : name;
  };
  std::map<const Value*, Value*> outer;  // the branch's values -> the graph's
  for (size_t i = 0; i < branch.inputs().size(); ++i) {
    outer[branch.inputs()[i]] = node->input(i + 1);
  }
  for (const Value* v : branch.values()) {
    if (v->is_constant() && !v->producer()) {
      outer[v] = graph.add_constant(free_name(v->name()), v->constant());
    }
  }
  std::vector<Node*> inserted;
  for (const Node* n : branch.nodes()) {
    NodeSpec spec;
    spec.name = graph.find_node(n->name()) ? graph.unique_node_name(n->name()) : n->name();
    spec.op_type = n->op_type();
    spec.domain = n->domain();
    spec.attributes = n->attributes();
    for (const Value* in : n->inputs()) spec.inputs.push_back(in ? outer.at(in) : nullptr);
    for (const Value* out : n->outputs()) spec.output_names.push_back(free_name(out->name()));
    Node* made = graph.insert_node(std::move(spec), node);
    for (size_t o = 0; o < n->num_outputs(); ++o) {
      Value* out = made->output(o);
      if (n->output(o)->has_shape()) {
        out->set_type(n->output(o)->dtype(), *n->output(o)->shape());
      } else {
        out->set_dtype(n->output(o)->dtype());
      }
      outer[n->output(o)] = out;
    }
    inserted.push_back(made);
  }

  // The If's outputs keep their names: a value the branch's nodes made takes the name once the
  // If is gone; a constant of the branch is copied under it; any other value from outside the
  // branch's nodes (an input it passes through, an output given twice) is passed on by an
  // Identity under the name.
  std::vector<std::pair<Value*, std::string>> renames;
  std::set<const Value*> made;
  for (const Node* m : inserted) made.insert(m->outputs().begin(), m->outputs().end());
  for (size_t k = 0; k < node->num_outputs(); ++k) {
    Value* result = outer.at(branch.outputs()[k]);
    Value* out = node->output(k);
    const std::string name = out->name();
    if (made.erase(result)) {
      // taken: a second output of the same value gets the Identity below
    } else if (result->is_constant() && !result->producer()) {
      result = graph.add_constant(graph.unique_value_name(name), result->constant());
    } else {
      Node* identity = graph.insert_node(NodeSpec{.name = graph.unique_node_name(node->name()),
                                                  .op_type = "Identity",
                                                  .inputs = {result},
                                                  .output_names = {graph.unique_value_name(name)},
                                                  .attributes = {},
                                                  .domain = {}},
                                         node);
      identity->output(0)->set_dtype(result->dtype());
      inserted.push_back(identity);
      result = identity->output(0);
    }
    graph.replace_all_uses(out, result);
    renames.emplace_back(result, name);
  }
  graph.remove_node(node);
  for (auto& [value, name] : renames) graph.rename_value(value, name);
  return inserted;
}

}  // namespace qforge::graph
