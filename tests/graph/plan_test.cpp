// The plan: conflicts and refusals with reasons, text and JSON forms, applying an edited plan to
// a fresh copy of the graph, the fixed-point driver's cap.
#include "graph/plan.h"

#include <gtest/gtest.h>

#include "graph/conversions.h"
#include "kernels/error.h"
#include "tests/support/pass_tester.h"
#include "tests/support/test_support.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Pattern;
using graph::Shape;
using testing::OpCounts;

graph::Node* unary(graph::Graph& g, const std::string& op, const std::string& name,
                   graph::Value* in) {
  std::string out = name;
  out.append("_out");
  return g.add_node({.name = name, .op_type = op, .inputs = {in}, .output_names = {out}});
}

// x -> Relu -> Sigmoid -> Tanh -> y
std::unique_ptr<graph::Graph> chain() {
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{5});
  auto* r = unary(*g, "Relu", "relu", x);
  auto* s = unary(*g, "Sigmoid", "sig", r->output(0));
  auto* t = unary(*g, "Tanh", "tanh", s->output(0));
  g->mark_output(t->output(0));
  return g;
}

// Replaces a two-node chain by one node of `op` reading the chain's input.
graph::RewriteFn collapse_to(const std::string& op, const std::string& first,
                             const std::string& second) {
  return [=](graph::Graph& g, const graph::Match& m) {
    graph::Node* a = m.node(g, first);
    graph::Node* b = m.node(g, second);
    graph::Value* out = b->output(0);
    std::string merged_name = a->name();
    merged_name.append("_merged");
    graph::Node* merged = g.insert_node({.name = merged_name,
                                         .op_type = op,
                                         .inputs = {a->input(0)},
                                         .output_names = {g.unique_value_name(out->name())}},
                                        b);
    merged->output(0)->set_type(out->dtype(), *out->shape());
    const std::string name = out->name();
    g.replace_all_uses(out, merged->output(0));
    g.remove_node(b);
    g.remove_node(a);
    g.rename_value(merged->output(0), name);
  };
}

std::vector<Pattern> overlapping_patterns() {
  return {Pattern{.name = "ReluSigmoid",
                  .topology = "Relu -> Sigmoid",
                  .trunk = {graph::one("relu", {"Relu"}), graph::one("sig", {"Sigmoid"})},
                  .rewrite = collapse_to("Relu", "relu", "sig")},
          Pattern{.name = "SigmoidTanh",
                  .topology = "Sigmoid -> Tanh",
                  .trunk = {graph::one("sig", {"Sigmoid"}), graph::one("tanh", {"Tanh"})},
                  .rewrite = collapse_to("Tanh", "sig", "tanh")}};
}

TEST(PlanConflicts, LaterOverlappingMatchIsSkippedWithReason) {
  auto g = chain();
  auto patterns = overlapping_patterns();
  graph::Plan plan = graph::make_plan(*g, patterns);
  ASSERT_EQ(plan.entries.size(), 2u);
  EXPECT_TRUE(plan.entries[0].apply);
  EXPECT_FALSE(plan.entries[1].apply);
  EXPECT_EQ(plan.entries[1].reason, "node 'sig' claimed by ReluSigmoid match #0");
  EXPECT_EQ(plan.to_text(),
            "relu  ReluSigmoid  yes\n"
            "sig   SigmoidTanh  no   node 'sig' claimed by ReluSigmoid match #0\n");
  graph::PlanReport report = graph::apply_plan(*g, plan, patterns);
  EXPECT_EQ(report.find("ReluSigmoid")->applied, 1u);
  EXPECT_EQ(report.find("SigmoidTanh")->skipped, 1u);
  EXPECT_EQ(report.to_text(),
            "ReluSigmoid: applied 1, skipped 0\nSigmoidTanh: applied 0, skipped 1\n");
  EXPECT_EQ(testing::count_ops(*g), (OpCounts{{"Relu", 1}, {"Tanh", 1}}));
}

TEST(PlanConflicts, RefusedMatchClaimsNothing) {
  auto g = chain();
  auto patterns = overlapping_patterns();
  patterns[0].select = [](const graph::Graph&, const graph::Match&) {
    return std::optional<std::string>("Relu is not wanted");
  };
  graph::Plan plan = graph::make_plan(*g, patterns);
  ASSERT_EQ(plan.entries.size(), 2u);
  EXPECT_FALSE(plan.entries[0].apply);
  EXPECT_EQ(plan.entries[0].reason, "Relu is not wanted");
  EXPECT_TRUE(plan.entries[1].apply);
}

// x -> Identity(a) -> Relu -> Identity(b) -> y
std::unique_ptr<graph::Graph> two_identities() {
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{2, 3});
  auto* a = unary(*g, "Identity", "a", x);
  auto* r = unary(*g, "Relu", "relu", a->output(0));
  auto* b = unary(*g, "Identity", "b", r->output(0));
  g->mark_output(b->output(0));
  return g;
}

TEST(PlanJson, RoundTripKeepsEveryField) {
  auto g = two_identities();
  const auto patterns = graph::conversion_patterns();
  graph::Plan plan = graph::make_plan(*g, patterns);
  ASSERT_EQ(plan.entries.size(), 2u);
  plan.entries[1].apply = false;
  plan.entries[1].reason = "kept by hand";
  graph::Plan again = graph::Plan::from_json(plan.to_json());
  ASSERT_EQ(again.entries.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(again.entries[i].match.pattern, plan.entries[i].match.pattern);
    EXPECT_EQ(again.entries[i].match.id, plan.entries[i].match.id);
    EXPECT_EQ(again.entries[i].match.anchor, plan.entries[i].match.anchor);
    EXPECT_EQ(again.entries[i].apply, plan.entries[i].apply);
    EXPECT_EQ(again.entries[i].reason, plan.entries[i].reason);
    EXPECT_EQ(again.entries[i].match.names("identity"), plan.entries[i].match.names("identity"));
  }
  EXPECT_EQ(again.to_json(), plan.to_json());
}

TEST(PlanJson, MatchTurnedOffLeavesItsSubgraph) {
  // Plan on one copy, edit the JSON, apply to a fresh copy.
  const auto patterns = graph::conversion_patterns();
  std::string json = graph::make_plan(*two_identities(), patterns).to_json();
  const std::string on = "\"apply\": true";
  const size_t second = json.find(on, json.find(on) + 1);
  ASSERT_NE(second, std::string::npos);
  json.replace(second, on.size(), "\"apply\": false");
  const graph::Plan edited = graph::Plan::from_json(json);

  auto r = testing::run_pass_test(two_identities, [&](graph::Graph& g) {
    graph::PlanReport report = graph::apply_plan(g, edited, patterns);
    EXPECT_EQ(report.find("RemoveIdentity")->applied, 1u);
    EXPECT_EQ(report.find("RemoveIdentity")->skipped, 1u);
  });
  EXPECT_EQ(r.after, (OpCounts{{"Identity", 1}, {"Relu", 1}}));
  EXPECT_EQ(r.transformed->find_node("a"), nullptr);
  ASSERT_NE(r.transformed->find_node("b"), nullptr);
  EXPECT_EQ(r.transformed->find_node("b")->output(0)->name(), "b_out");
}

TEST(PlanJson, MissingNodeIsInvalid) {
  const auto patterns = graph::conversion_patterns();
  graph::Plan plan = graph::make_plan(*two_identities(), patterns);
  plan.entries[0].match.nodes[0].name = "gone";
  auto g = two_identities();
  try {
    graph::apply_plan(*g, plan, patterns);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_EQ(std::string(e.what()),
              "plan: match #0 (RemoveIdentity): node 'gone' is not in the graph");
  }
}

TEST(PlanJson, MalformedJsonIsInvalid) {
  for (const char* text : {"{", "{}", R"({"matches": [{"pattern": "P"}]})",
                           R"({"matches": [{"id": 0, "pattern": "P", "anchor": "a", "nodes": [],
                                "apply": "yes", "reason": ""}]})"}) {
    try {
      graph::Plan::from_json(text);
      FAIL() << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalid) << text;
    }
  }
}

TEST(PlanApply, EntryAnEarlierRewriteInvalidatedIsDeferred) {
  // x -> GlobalAveragePool -> ReduceMean -> y over 1×1: once the pool goes, removing the mean
  // would make the graph output 'y' the graph input 'x'.
  graph::Graph g;
  auto* x = g.add_input("x", DType::kFloat32, Shape{1, 3, 1, 1});
  auto* gap = unary(g, "GlobalAveragePool", "gap", x);
  auto* mean = g.add_node({.name = "mean",
                           .op_type = "ReduceMean",
                           .inputs = {gap->output(0)},
                           .output_names = {"y"},
                           .attributes = {{"axes", std::vector<int64_t>{2, 3}}}});
  g.mark_output(mean->output(0));
  runtime::resolve(g, {});
  const auto patterns = graph::conversion_patterns();
  graph::Plan plan = graph::make_plan(g, patterns);
  ASSERT_EQ(plan.entries.size(), 2u);
  EXPECT_TRUE(plan.entries[1].apply);
  graph::PlanReport report = graph::apply_plan(g, plan, patterns);
  EXPECT_EQ(report.find("RemoveIdentityPool")->applied, 1u);
  EXPECT_EQ(report.deferred,
            (std::vector<std::string>{"plan: match #1 (RemoveIdentityPool): graph output 'y' would "
                                      "alias graph value 'x'"}));
  EXPECT_EQ(testing::count_ops(g), (OpCounts{{"ReduceMean", 1}}));
}

TEST(PlanFixedPoint, CapIsAnInternalError) {
  // A rewrite that recreates what it matched never reaches a fixed point.
  auto g = chain();
  const std::vector<Pattern> endless = {Pattern{
      .name = "Endless",
      .topology = "Relu -> Sigmoid",
      .trunk = {graph::one("relu", {"Relu"}), graph::one("sig", {"Sigmoid"})},
      .rewrite = [](graph::Graph& graph, const graph::Match& m) {
        graph::Node* relu = m.node(graph, "relu");
        graph::Node* fresh = graph.insert_node({.op_type = "Relu",
                                                .inputs = {relu->input(0)},
                                                .output_names = {graph.unique_value_name("r")}},
                                               relu);
        fresh->output(0)->set_type(DType::kFloat32, Shape{5});
        graph.replace_all_uses(relu->output(0), fresh->output(0));
        graph.remove_node(relu);
      }}};
  try {
    graph::run_conversions(*g, endless, {.max_iterations = 3});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
  }
}

}  // namespace
}  // namespace qforge
