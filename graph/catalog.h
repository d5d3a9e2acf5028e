// The op catalog: every op qforge knows, declared once with its arity. The importer refuses ops
// that are not here; the runtime binds one OpDef to each entry.
#pragma once

#include <span>
#include <string_view>

namespace qforge::graph {

struct OpSchema {
  std::string_view op_type;
  int min_inputs;
  int max_inputs;
  int min_outputs;
  int max_outputs;
  int since_opset;  // earliest default-domain opset whose semantics qforge implements
  // Made by qforge's own passes, never read from a file: the importer refuses it.
  bool internal = false;
};

const OpSchema* find_schema(std::string_view op_type);
std::span<const OpSchema> all_schemas();

}  // namespace qforge::graph
