// Pattern lists of the pipeline and module lowering.
#include "graph/transform.h"

#include "graph/attention.h"
#include "graph/catalog.h"
#include "graph/conversions.h"
#include "graph/fusions.h"

namespace qforge::graph {

std::vector<Pattern> all_conversion_patterns() {
  std::vector<Pattern> out = conversion_patterns();
  for (auto& p : attention_conversion_patterns()) out.push_back(std::move(p));
  return out;
}

std::vector<Pattern> all_fusion_patterns() {
  std::vector<Pattern> out = fusion_patterns();
  for (auto& p : attention_fusion_patterns()) out.push_back(std::move(p));
  return out;
}

std::vector<Pattern> all_patterns() {
  std::vector<Pattern> out = all_conversion_patterns();
  for (auto& p : all_fusion_patterns()) out.push_back(std::move(p));
  return out;
}

size_t lower_modules(Graph& graph) {
  size_t lowered = 0;
  const std::vector<Node*> order = graph.nodes();
  for (Node* node : order) {
    const OpSchema* schema = find_schema(node->op_type());
    if (!schema || schema->kind != SchemaKind::kModule) continue;
    if (!schema->lower) {
      throw_internal("lower: " + node->label() + ": module without a lowering");
    }
    Lowered made;
    schema->lower(graph, *node, made);
    ++lowered;
  }
  graph.check_consistency();
  return lowered;
}

}  // namespace qforge::graph
