// Constant folding in resolve records the folds of element-moving ops over float constants as
// derivations (graph/derivation.h) that recompute the folded values, chained through folds of
// folds, and records nothing for arithmetic folds.
#include "runtime/resolve.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "tests/support/derivation_checks.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Shape;
using kernels::Tensor;

// x [3, 2, 4]; token [1, 1, 4] -> Expand [3, 1, 4] -> Concat(·, x) -> y (ViT's class token);
// table [5, 4] -> Gather(rows 4, 1) -> Transpose -> Transpose -> Add(x, ·) -> z (a bias table);
// scale · scale -> Mul(x, ·) -> w (arithmetic: no derivation).
std::unique_ptr<graph::Graph> fold_graph() {
  std::mt19937 rng(5);
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{3, 2, 4});
  auto* token = g->add_constant("token", testing::random_tensor({1, 1, 4}, rng));
  auto* shape = g->add_constant("shape", Tensor::from_vector<int64_t>({3}, {3, 1, 4}));
  auto* expand = g->add_node({.name = "expand",
                              .op_type = "Expand",
                              .inputs = {token, shape},
                              .output_names = {"expanded"}});
  auto* concat = g->add_node({.name = "concat",
                              .op_type = "Concat",
                              .inputs = {expand->output(0), x},
                              .output_names = {"y"},
                              .attributes = {{"axis", int64_t{1}}}});
  g->mark_output(concat->output(0));
  auto* table = g->add_constant("table", testing::random_tensor({5, 4}, rng));
  auto* rows = g->add_constant("rows", Tensor::from_vector<int64_t>({2}, {4, 1}));
  auto* gather = g->add_node({.name = "gather",
                              .op_type = "Gather",
                              .inputs = {table, rows},
                              .output_names = {"gathered"}});
  auto* t1 = g->add_node({.name = "t1",
                          .op_type = "Transpose",
                          .inputs = {gather->output(0)},
                          .output_names = {"t1_out"},
                          .attributes = {{"perm", std::vector<int64_t>{1, 0}}}});
  auto* t2 = g->add_node({.name = "t2",
                          .op_type = "Transpose",
                          .inputs = {t1->output(0)},
                          .output_names = {"t2_out"},
                          .attributes = {{"perm", std::vector<int64_t>{1, 0}}}});
  auto* add = g->add_node(
      {.name = "add", .op_type = "Add", .inputs = {x, t2->output(0)}, .output_names = {"z"}});
  g->mark_output(add->output(0));
  auto* scale = g->add_constant("scale", Tensor::scalar_f32(3.0f));
  auto* square = g->add_node(
      {.name = "square", .op_type = "Mul", .inputs = {scale, scale}, .output_names = {"sq"}});
  auto* mul = g->add_node(
      {.name = "mul", .op_type = "Mul", .inputs = {x, square->output(0)}, .output_names = {"w"}});
  g->mark_output(mul->output(0));
  return g;
}

TEST(ResolveDerivations, RecordsElementMovingFoldsOfFloatConstants) {
  auto before = fold_graph();
  auto after = fold_graph();
  runtime::resolve(*after, {});
  std::map<std::string, std::vector<std::string>> sources;
  for (const graph::Derivation& d : after->derivations()) {
    for (const graph::DerivedTerm& t : d.terms) sources[d.derived].push_back(t.source);
  }
  EXPECT_EQ(sources, (std::map<std::string, std::vector<std::string>>{{"expanded", {"token"}},
                                                                      {"gathered", {"table"}},
                                                                      {"t1_out", {"gathered"}},
                                                                      {"t2_out", {"t1_out"}}}));
  // Only what the resolved graph still holds can be recomputed from `before`: the chained
  // Transposes are checked through their pull-back below.
  ASSERT_TRUE(after->find_value("expanded") && after->find_value("expanded")->is_constant());
  const graph::Derivation* expanded = nullptr;
  for (const graph::Derivation& d : after->derivations()) {
    if (d.derived == "expanded") expanded = &d;
  }
  ASSERT_NE(expanded, nullptr);
  const Tensor want = after->find_value("expanded")->constant();
  const Tensor got = testing::recompute_derived(*expanded, *before);
  ASSERT_EQ(got.shape(), want.shape());
  for (int64_t i = 0; i < want.numel(); ++i) {
    EXPECT_EQ(got.data<float>()[i], want.data<float>()[i]) << i;
  }

  // A gradient of ones on the folded bias goes back to rows 4 and 1 of the table.
  Tensor ones(DType::kFloat32, {2, 4});
  for (float& v : ones.span<float>()) v = 1.0f;
  auto pulled = graph::pull_back_gradients(after->derivations(), {{"t2_out", ones}});
  ASSERT_EQ(pulled.gradients.size(), 1u);
  EXPECT_EQ(pulled.gradients[0].first, "table");
  const float* g = pulled.gradients[0].second.data<float>();
  for (int64_t r = 0; r < 5; ++r) {
    for (int64_t c = 0; c < 4; ++c) {
      EXPECT_EQ(g[r * 4 + c], r == 4 || r == 1 ? 1.0f : 0.0f) << r << ", " << c;
    }
  }
}

}  // namespace
}  // namespace qforge
