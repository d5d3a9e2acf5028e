// The pattern matcher: chains are matched step by step like a regular expression over the
// single-consumer path from a node, greedy with backtracking to shorter runs.
#include "graph/pattern.h"

#include <algorithm>
#include <limits>
#include <set>

#include "kernels/error.h"

namespace qforge::graph {
namespace {

// How a chain continues from one node to the next (downwards or upwards); nullptr ends it.
using LinkFn = const Node* (*)(const Node&);

// True when `v` links two chain nodes: read exactly once, by `reader`, and by nothing else.
bool private_edge(const Value* v, const Node& reader) {
  if (!v || v->is_graph_output() || v->consumers().size() != 1 || v->consumers()[0] != &reader) {
    return false;
  }
  return std::count(reader.inputs().begin(), reader.inputs().end(), v) == 1;
}

const Node* downward(const Node& n) {
  const Value* v = n.output(0);
  if (!v || v->consumers().size() != 1) return nullptr;
  const Node* next = v->consumers()[0];
  return private_edge(v, *next) ? next : nullptr;
}

const Node* upward_through(const Node& n, size_t input) {
  const Value* v = n.input(input);
  if (!v || !v->producer() || !private_edge(v, n)) return nullptr;
  return v->producer();
}

const Node* upward(const Node& n) {
  return upward_through(n, 0);
}

struct Hit {
  size_t step;
  const Node* node;
};

// Matches steps[s..] against the chain starting at `cur` (nullptr: the chain has ended).
bool match_steps(const Trunk& steps, size_t s, const Node* cur, LinkFn link,
                 std::vector<Hit>& out) {
  if (s == steps.size()) return true;
  const Step& step = steps[s];
  const bool at_least_one =
      step.quantifier == Quantifier::kOne || step.quantifier == Quantifier::kOneOrMore;
  const bool at_most_one =
      step.quantifier == Quantifier::kOne || step.quantifier == Quantifier::kOptional;
  std::vector<const Node*> run;
  for (const Node* n = cur; n && step.predicate.accepts(*n); n = link(*n)) {
    run.push_back(n);
    if (at_most_one) break;
  }
  const size_t min_len = at_least_one ? 1 : 0;
  for (size_t len = run.size(); len >= min_len && len != std::numeric_limits<size_t>::max();
       --len) {
    const size_t mark = out.size();
    for (size_t i = 0; i < len; ++i) out.push_back({s, run[i]});
    const Node* after = len == 0 ? cur : link(*run[len - 1]);
    if (match_steps(steps, s + 1, after, link, out)) return true;
    out.resize(mark);
  }
  return false;
}

void record(const Trunk& steps, const std::vector<Hit>& hits, Match& match) {
  for (const Hit& h : hits) match.nodes.push_back({steps[h.step].role, h.node->name()});
}

std::optional<Match> match_fork(const Pattern& pattern, const Node& anchor) {
  const Fork& fork = *pattern.fork;
  if (!fork.node.predicate.accepts(anchor)) return std::nullopt;
  Match match;
  match.pattern = pattern.name;
  match.anchor = anchor.name();
  std::vector<const Value*> sources;
  for (const Branch& branch : fork.branches) {
    // Upwards the steps meet the chain in reverse order.
    Trunk reversed(branch.chain.rbegin(), branch.chain.rend());
    std::vector<Hit> hits;
    if (!match_steps(reversed, 0, upward_through(anchor, branch.input), upward, hits)) {
      return std::nullopt;
    }
    std::reverse(hits.begin(), hits.end());
    for (Hit& h : hits) h.step = branch.chain.size() - 1 - h.step;
    record(branch.chain, hits, match);
    sources.push_back(hits.empty() ? anchor.input(branch.input) : hits.front().node->input(0));
  }
  for (const auto& group : fork.shared_sources) {
    for (size_t b : group) {
      if (b >= sources.size()) {
        throw_internal("pattern " + pattern.name + ": shared source names branch " +
                       std::to_string(b) + " of " + std::to_string(sources.size()));
      }
      if (!sources[b] || sources[b] != sources[group.front()]) return std::nullopt;
    }
  }
  match.nodes.push_back({fork.node.role, anchor.name()});
  std::vector<Hit> hits;
  if (!match_steps(pattern.trunk, 0, downward(anchor), downward, hits)) return std::nullopt;
  record(pattern.trunk, hits, match);
  return match;
}

Step make_step(std::string role, std::vector<std::string> op_types, NodeCheck check,
               Quantifier quantifier) {
  return {std::move(role), {std::move(op_types), std::move(check)}, quantifier};
}

}  // namespace

bool NodePredicate::accepts(const Node& node) const {
  if (!op_types.empty() &&
      std::find(op_types.begin(), op_types.end(), node.op_type()) == op_types.end()) {
    return false;
  }
  return !check || check(node);
}

Step one(std::string role, std::vector<std::string> op_types, NodeCheck check) {
  return make_step(std::move(role), std::move(op_types), std::move(check), Quantifier::kOne);
}
Step optional(std::string role, std::vector<std::string> op_types, NodeCheck check) {
  return make_step(std::move(role), std::move(op_types), std::move(check), Quantifier::kOptional);
}
Step zero_or_more(std::string role, std::vector<std::string> op_types, NodeCheck check) {
  return make_step(std::move(role), std::move(op_types), std::move(check), Quantifier::kZeroOrMore);
}
Step one_or_more(std::string role, std::vector<std::string> op_types, NodeCheck check) {
  return make_step(std::move(role), std::move(op_types), std::move(check), Quantifier::kOneOrMore);
}

std::vector<std::string> Match::names(std::string_view role) const {
  std::vector<std::string> out;
  for (const MatchedNode& n : nodes) {
    if (n.role == role) out.push_back(n.name);
  }
  return out;
}

std::vector<Node*> Match::nodes_in(const Graph& graph, std::string_view role) const {
  std::vector<Node*> out;
  for (const std::string& name : names(role)) {
    Node* n = graph.find_node(name);
    if (!n) {
      throw_invalid("plan: match #" + std::to_string(id) + " (" + pattern + "): node '" + name +
                    "' is not in the graph");
    }
    out.push_back(n);
  }
  return out;
}

Node* Match::node(const Graph& graph, std::string_view role) const {
  std::vector<Node*> found = nodes_in(graph, role);
  if (found.size() > 1) {
    std::string message = "pattern ";
    message.append(pattern).append(": role '").append(role).append("' holds several nodes");
    throw_internal(message);
  }
  return found.empty() ? nullptr : found.front();
}

bool Match::contains(std::string_view node_name) const {
  return std::any_of(nodes.begin(), nodes.end(),
                     [&](const MatchedNode& n) { return n.name == node_name; });
}

std::optional<Match> match_at(const Graph& /*graph*/, const Pattern& pattern, const Node& anchor) {
  if (pattern.fork) return match_fork(pattern, anchor);
  std::vector<Hit> hits;
  if (pattern.trunk.empty() || !match_steps(pattern.trunk, 0, &anchor, downward, hits) ||
      hits.empty() || hits.front().node != &anchor) {
    return std::nullopt;
  }
  Match match;
  match.pattern = pattern.name;
  match.anchor = anchor.name();
  record(pattern.trunk, hits, match);
  return match;
}

std::vector<Match> find_matches(const Graph& graph, const Pattern& pattern) {
  std::vector<Match> matches;
  std::set<std::string, std::less<>> covered;
  for (const Node* node : graph.nodes()) {
    if (covered.count(node->name())) continue;
    std::optional<Match> m = match_at(graph, pattern, *node);
    if (!m) continue;
    for (const MatchedNode& n : m->nodes) covered.insert(n.name);
    matches.push_back(std::move(*m));
  }
  return matches;
}

}  // namespace qforge::graph
