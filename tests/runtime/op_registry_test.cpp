// The catalog and the runtime agree: every op the importer accepts can run, and nothing runs
// that the importer would refuse.
#include <gtest/gtest.h>

#include "graph/catalog.h"
#include "runtime/op_registry.h"

namespace qforge {
namespace {

TEST(OpRegistry, EveryCatalogOpHasARuntimeDefinition) {
  const auto& registry = runtime::builtin_ops();
  for (const auto* schema : graph::all_schemas()) {
    EXPECT_NE(registry.find(schema->op_type), nullptr) << schema->op_type;
  }
}

TEST(OpRegistry, EveryRuntimeDefinitionIsInTheCatalog) {
  for (const auto& op : runtime::builtin_ops().op_types()) {
    EXPECT_NE(graph::find_schema(op), nullptr) << op;
  }
}

TEST(OpRegistry, EveryModuleDeclaresHowItLowers) {
  for (const auto* schema : graph::all_schemas()) {
    if (schema->kind == graph::SchemaKind::kModule) {
      EXPECT_NE(schema->lower, nullptr) << schema->op_type;
    }
  }
}

}  // namespace
}  // namespace qforge
