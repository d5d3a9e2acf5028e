// The pattern engine: quantifiers, single-consumer links, forks with shared sources.
#include "graph/pattern.h"

#include <gtest/gtest.h>

namespace qforge {
namespace {

using graph::DType;
using graph::Match;
using graph::Pattern;
using graph::Shape;

// Appends `op` reading `in`, named `name`, with output `name + "_out"`.
graph::Node* unary(graph::Graph& g, const std::string& op, const std::string& name,
                   graph::Value* in) {
  std::string out = name;
  out.append("_out");
  return g.add_node({.name = name, .op_type = op, .inputs = {in}, .output_names = {out}});
}

std::vector<std::string> roles(const Match& m) {
  std::vector<std::string> out;
  for (const auto& n : m.nodes) {
    std::string entry = n.role;
    entry.append("=").append(n.name);
    out.push_back(entry);
  }
  return out;
}

// x -> Conv -> Relu -> Relu -> Sigmoid -> Tanh -> y
struct ChainGraph {
  graph::Graph g;
  ChainGraph() {
    auto* x = g.add_input("x", DType::kFloat32, Shape{1, 2, 3, 3});
    auto* w = g.add_constant("w", kernels::Tensor(DType::kFloat32, {2, 2, 1, 1}));
    auto* conv = g.add_node(
        {.name = "conv", .op_type = "Conv", .inputs = {x, w}, .output_names = {"conv_out"}});
    auto* r1 = unary(g, "Relu", "relu1", conv->output(0));
    auto* r2 = unary(g, "Relu", "relu2", r1->output(0));
    auto* s = unary(g, "Sigmoid", "sig", r2->output(0));
    auto* t = unary(g, "Tanh", "tanh", s->output(0));
    g.mark_output(t->output(0));
  }
};

TEST(PatternTrunk, QuantifiersMatchGreedily) {
  ChainGraph c;
  Pattern p{
      .name = "ConvAct",
      .trunk = {graph::one("conv", {"Conv"}), graph::optional("bn", {"BatchNormalization"}),
                graph::one_or_more("act", {"Relu"}), graph::zero_or_more("tail", {"Sigmoid"})}};
  auto matches = graph::find_matches(c.g, p);
  ASSERT_EQ(matches.size(), 1u);
  EXPECT_EQ(roles(matches[0]),
            (std::vector<std::string>{"conv=conv", "act=relu1", "act=relu2", "tail=sig"}));
  EXPECT_EQ(matches[0].anchor, "conv");
  EXPECT_EQ(matches[0].names("act"), (std::vector<std::string>{"relu1", "relu2"}));
  EXPECT_EQ(matches[0].node(c.g, "bn"), nullptr);
  EXPECT_EQ(matches[0].node(c.g, "tail")->name(), "sig");
}

TEST(PatternTrunk, BacktracksToShorterRuns) {
  ChainGraph c;
  // The * run must leave one Relu for the final step.
  Pattern p{.name = "Relus",
            .trunk = {graph::zero_or_more("run", {"Relu"}), graph::one("last", {"Relu"}),
                      graph::one("sig", {"Sigmoid"})}};
  auto matches = graph::find_matches(c.g, p);
  ASSERT_EQ(matches.size(), 1u);
  EXPECT_EQ(roles(matches[0]), (std::vector<std::string>{"run=relu1", "last=relu2", "sig=sig"}));
}

TEST(PatternTrunk, RunYieldsOnlyItsLongestMatch) {
  ChainGraph c;
  Pattern p{.name = "ReluRun", .trunk = {graph::one_or_more("act", {"Relu"})}};
  auto matches = graph::find_matches(c.g, p);
  ASSERT_EQ(matches.size(), 1u);
  EXPECT_EQ(matches[0].names("act"), (std::vector<std::string>{"relu1", "relu2"}));
}

TEST(PatternTrunk, NodeCheckAndMissingStepsRefuse) {
  ChainGraph c;
  Pattern with_check{.name = "ConvConstW",
                     .trunk = {graph::one("conv", {"Conv"},
                                          [](const graph::Node& n) {
                                            return n.input(1) && n.input(1)->is_constant();
                                          }),
                               graph::one("act", {"Relu"})}};
  EXPECT_EQ(graph::find_matches(c.g, with_check).size(), 1u);
  Pattern needs_bn{
      .name = "ConvBN",
      .trunk = {graph::one("conv", {"Conv"}), graph::one("bn", {"BatchNormalization"})}};
  EXPECT_TRUE(graph::find_matches(c.g, needs_bn).empty());
}

TEST(PatternTrunk, StopsAtSharedAndOutputValues) {
  ChainGraph c;
  // relu1's output also becomes a graph output: the chain may not pass through it.
  c.g.mark_output(c.g.find_value("relu1_out"));
  Pattern p{.name = "ConvActs",
            .trunk = {graph::one("conv", {"Conv"}), graph::one_or_more("act", {"Relu"})}};
  auto matches = graph::find_matches(c.g, p);
  ASSERT_EQ(matches.size(), 1u);
  EXPECT_EQ(matches[0].names("act"), (std::vector<std::string>{"relu1"}));
  // A second reader of conv's output breaks the first link.
  unary(c.g, "Neg", "neg", c.g.find_value("conv_out"));
  EXPECT_TRUE(graph::find_matches(c.g, p).empty());
}

// Add(Relu(s1), Sigmoid(s2)) -> Tanh, once with s1 == s2 == x, once with different sources.
struct ForkGraph {
  graph::Graph g;
  ForkGraph() {
    auto* x = g.add_input("x", DType::kFloat32, Shape{4});
    auto* z = g.add_input("z", DType::kFloat32, Shape{4});
    for (auto [tag, second] : {std::pair<std::string, graph::Value*>{"same", x}, {"diff", z}}) {
      auto* r = unary(g, "Relu", tag + "_relu", x);
      auto* s = unary(g, "Sigmoid", tag + "_sig", second);
      std::string add_out = tag;
      add_out.append("_add_out");
      auto* add = g.add_node({.name = tag + "_add",
                              .op_type = "Add",
                              .inputs = {r->output(0), s->output(0)},
                              .output_names = {add_out}});
      auto* t = unary(g, "Tanh", tag + "_tanh", add->output(0));
      g.mark_output(t->output(0));
    }
  }
};

Pattern fork_pattern(bool shared) {
  graph::Fork fork{.node = graph::one("add", {"Add"}),
                   .branches = {{.input = 0, .chain = {graph::one("left", {"Relu"})}},
                                {.input = 1, .chain = {graph::one("right", {"Sigmoid"})}}}};
  if (shared) fork.shared_sources = {{0, 1}};
  return Pattern{.name = "ForkAdd",
                 .kind = graph::PatternKind::kFusion,
                 .topology = "(Relu, Sigmoid) -> Add -> Tanh",
                 .fork = fork,
                 .trunk = {graph::one("act", {"Tanh"})}};
}

TEST(PatternFork, BranchesAndTrunkBelow) {
  ForkGraph f;
  auto matches = graph::find_matches(f.g, fork_pattern(false));
  ASSERT_EQ(matches.size(), 2u);
  EXPECT_EQ(roles(matches[0]), (std::vector<std::string>{"left=same_relu", "right=same_sig",
                                                         "add=same_add", "act=same_tanh"}));
  EXPECT_EQ(matches[0].anchor, "same_add");
}

TEST(PatternFork, SharedSourceConstraint) {
  ForkGraph f;
  auto matches = graph::find_matches(f.g, fork_pattern(true));
  ASSERT_EQ(matches.size(), 1u);
  EXPECT_EQ(matches[0].anchor, "same_add");
}

TEST(PatternFork, EmptyBranchRecordsNothing) {
  ForkGraph f;
  // Input 1 unconstrained (a residual): any value.
  Pattern p{.name = "ReluAdd",
            .fork = graph::Fork{.node = graph::one("add", {"Add"}),
                                .branches = {{.input = 0, .chain = {graph::one("left", {"Relu"})}},
                                             {.input = 1, .chain = {}}}}};
  auto matches = graph::find_matches(f.g, p);
  ASSERT_EQ(matches.size(), 2u);
  EXPECT_EQ(roles(matches[1]), (std::vector<std::string>{"left=diff_relu", "add=diff_add"}));
}

}  // namespace
}  // namespace qforge
