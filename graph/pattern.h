// Declarative graph patterns: a trunk of node predicates matched downwards along single-consumer
// edges, optionally below a fork whose input branches are matched upwards, with quantifiers
// (?, *, +) and shared-source constraints. A pattern carries a const `select` that may refuse a
// match with a reason, and a `rewrite` that edits the graph for one accepted match.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "graph/ir.h"

namespace qforge::graph {

// An extra condition on a node beyond its op type (e.g. "input 1 is a constant").
using NodeCheck = std::function<bool(const Node&)>;

struct NodePredicate {
  std::vector<std::string> op_types;  // empty: any op type
  NodeCheck check;                    // empty: no extra condition
  bool accepts(const Node& node) const;
};

enum class Quantifier { kOne, kOptional, kZeroOrMore, kOneOrMore };

// One position of a chain. Every node a step matches is recorded under its role.
struct Step {
  std::string role;
  NodePredicate predicate;
  Quantifier quantifier = Quantifier::kOne;
};

Step one(std::string role, std::vector<std::string> op_types, NodeCheck check = {});
Step optional(std::string role, std::vector<std::string> op_types, NodeCheck check = {});
Step zero_or_more(std::string role, std::vector<std::string> op_types, NodeCheck check = {});
Step one_or_more(std::string role, std::vector<std::string> op_types, NodeCheck check = {});

// Steps in data-flow order. Each matched node is linked to the next through its output 0, which
// must have that node as its only consumer (read once) and must not be a graph output; the
// chain's last output is free.
using Trunk = std::vector<Step>;

// A chain that ends at input `input` of the fork node, matched upwards through input 0 of each
// of its nodes. Its source is the value its first node reads (for an empty chain: the fork
// node's input itself).
struct Branch {
  size_t input = 0;
  Trunk chain;
};

struct Fork {
  Step node;  // quantifier ignored: the fork node is always exactly one node
  std::vector<Branch> branches;
  // Groups of branch indices whose sources must be one value (Q, K, V read the same tensor).
  std::vector<std::vector<size_t>> shared_sources;
};

struct MatchedNode {
  std::string role;
  std::string name;
};

// A pattern found in a graph, by node names so that it survives JSON and a fresh copy of the
// graph.
struct Match {
  std::string pattern;
  size_t id = 0;       // position in the plan
  std::string anchor;  // the node matching starts from: trunk root or fork node
  // Tree order: each branch upstream first, then the fork node, then the trunk.
  std::vector<MatchedNode> nodes;

  // Names of the nodes in `role`, in chain order (several for * and +, none for a skipped ?).
  std::vector<std::string> names(std::string_view role) const;
  // Nodes of `role` in `graph`; Invalid error naming the match when one is missing.
  std::vector<Node*> nodes_in(const Graph& graph, std::string_view role) const;
  // The node of a single-node role; nullptr when an optional role matched nothing.
  Node* node(const Graph& graph, std::string_view role) const;
  bool contains(std::string_view node_name) const;
};

enum class PatternKind { kConversion, kFusion };

// Returns a refusal reason, or nullopt to accept.
using SelectFn = std::function<std::optional<std::string>(const Graph&, const Match&)>;
using RewriteFn = std::function<void(Graph&, const Match&)>;

struct Pattern {
  std::string name;  // stable: it appears in plans, logs and reports
  PatternKind kind = PatternKind::kConversion;
  std::string topology;  // one line, e.g. "Conv -> BatchNormalization -> Act"
  std::optional<Fork> fork;
  Trunk trunk;      // below the fork node when there is a fork
  SelectFn select;  // empty: accept every structural match
  RewriteFn rewrite;
};

// The structural match anchored at `anchor` (greedy quantifiers, backtracking to shorter runs),
// or nullopt. `select` is not consulted.
std::optional<Match> match_at(const Graph& graph, const Pattern& pattern, const Node& anchor);

// Every structural match of `pattern` in graph order. A node already inside an earlier match of
// the same pattern anchors none, so a run of ops yields its longest match only.
std::vector<Match> find_matches(const Graph& graph, const Pattern& pattern);

}  // namespace qforge::graph
