#include "graph/subgraph.h"

#include <set>
#include <string>
#include <unordered_map>

#include "kernels/error.h"

namespace qforge::graph {

std::unique_ptr<Graph> extract(const Graph& g, std::span<const Node* const> nodes,
                               std::span<const Value* const> inputs,
                               std::span<const Value* const> outputs) {
  auto part = std::make_unique<Graph>();
  part->name = g.name;
  part->opset = g.opset;
  part->metadata = g.metadata;
  part->source_path = g.source_path;
  std::unordered_map<const Value*, Value*> map;
  for (const Value* v : inputs) {
    map.emplace(v, part->add_input(v->name(), v->dtype(), v->shape()));
  }
  const std::set<const Node*> chosen(nodes.begin(), nodes.end());
  auto value_of = [&](const Value* v, const std::string& reader) -> Value* {
    if (auto it = map.find(v); it != map.end()) return it->second;
    if (!v->is_constant()) {
      throw_internal("extract: " + reader + " reads '" + v->name() +
                     "', neither an input of the part nor produced in it");
    }
    Value* c = part->add_constant(v->name(), v->constant());
    map.emplace(v, c);
    return c;
  };
  for (const Node* n : g.nodes()) {
    if (!chosen.count(n)) continue;
    NodeSpec spec{.name = n->name(),
                  .op_type = n->op_type(),
                  .attributes = n->attributes(),
                  .domain = n->domain()};
    for (const Value* in : n->inputs()) {
      spec.inputs.push_back(in ? value_of(in, n->label()) : nullptr);
    }
    for (const Value* out : n->outputs()) spec.output_names.push_back(out->name());
    Node* copy = part->add_node(std::move(spec));
    for (size_t i = 0; i < n->num_outputs(); ++i) {
      const Value* out = n->output(i);
      if (out->has_shape()) {
        copy->output(i)->set_type(out->dtype(), *out->shape());
      } else {
        copy->output(i)->set_dtype(out->dtype());
      }
      map.emplace(out, copy->output(i));
    }
  }
  for (const Value* v : outputs) part->mark_output(value_of(v, "the part's outputs"));
  part->remove_dead();
  part->check_consistency();
  return part;
}

}  // namespace qforge::graph
