// Plan construction, application, fixed-point driver and JSON form.
#include "graph/plan.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "kernels/error.h"

namespace qforge::graph {
namespace {

std::string entry_label(const Match& m) {
  std::string label = "plan: match #";
  label.append(std::to_string(m.id)).append(" (").append(m.pattern).append(")");
  return label;
}

const Pattern& find_pattern(std::span<const Pattern> patterns, const Match& m) {
  for (const Pattern& p : patterns) {
    if (p.name == m.pattern) return p;
  }
  throw_invalid(entry_label(m) + ": expected a known pattern, got '" + m.pattern + "'");
}

bool same_nodes(const Match& a, const Match& b) {
  if (a.nodes.size() != b.nodes.size()) return false;
  for (size_t i = 0; i < a.nodes.size(); ++i) {
    if (a.nodes[i].role != b.nodes[i].role || a.nodes[i].name != b.nodes[i].name) return false;
  }
  return true;
}

// Throws when an entry's nodes are gone. Returns why the entry no longer applies (an earlier
// rewrite, or a different graph, changed its surroundings), or nullopt.
std::optional<std::string> recheck_entry(const Graph& graph, const Pattern& pattern,
                                         const Match& m) {
  for (const MatchedNode& n : m.nodes) {
    if (!graph.find_node(n.name)) {
      throw_invalid(entry_label(m) + ": node '" + n.name + "' is not in the graph");
    }
  }
  const Node* anchor = graph.find_node(m.anchor);
  if (!anchor) throw_invalid(entry_label(m) + ": node '" + m.anchor + "' is not in the graph");
  std::optional<Match> again = match_at(graph, pattern, *anchor);
  if (!again || !same_nodes(*again, m)) {
    std::string reason = "nodes no longer form ";
    reason.append(pattern.topology);
    return reason;
  }
  return pattern.select ? pattern.select(graph, m) : std::nullopt;
}

const nlohmann::json& field(const nlohmann::json& object, const char* key, const char* where) {
  if (!object.is_object() || !object.contains(key)) {
    std::string message = "plan JSON: ";
    message.append(where).append(": expected field '").append(key).append("'");
    throw_invalid(message);
  }
  return object.at(key);
}

std::string string_field(const nlohmann::json& object, const char* key, const char* where) {
  const nlohmann::json& v = field(object, key, where);
  if (!v.is_string()) {
    std::string message = "plan JSON: ";
    message.append(where).append(": expected '").append(key).append("' to be a string");
    throw_invalid(message);
  }
  return v.get<std::string>();
}

}  // namespace

std::string Plan::to_text() const {
  size_t anchor_width = 4, pattern_width = 7;
  for (const PlanEntry& e : entries) {
    anchor_width = std::max(anchor_width, e.match.anchor.size());
    pattern_width = std::max(pattern_width, e.match.pattern.size());
  }
  std::string text;
  for (const PlanEntry& e : entries) {
    std::string line = e.match.anchor;
    line.resize(anchor_width + 2, ' ');
    line.append(e.match.pattern);
    line.resize(anchor_width + 2 + pattern_width + 2, ' ');
    line.append(e.apply ? "yes" : "no ");
    if (!e.reason.empty()) line.append("  ").append(e.reason);
    text.append(line).append("\n");
  }
  return text;
}

std::string Plan::to_json() const {
  nlohmann::json matches = nlohmann::json::array();
  for (const PlanEntry& e : entries) {
    nlohmann::json nodes = nlohmann::json::array();
    for (const MatchedNode& n : e.match.nodes)
      nodes.push_back({{"role", n.role}, {"name", n.name}});
    matches.push_back({{"id", e.match.id},
                       {"pattern", e.match.pattern},
                       {"anchor", e.match.anchor},
                       {"nodes", std::move(nodes)},
                       {"apply", e.apply},
                       {"reason", e.reason}});
  }
  return nlohmann::json{{"matches", std::move(matches)}}.dump(2);
}

Plan Plan::from_json(std::string_view json) {
  nlohmann::json doc = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) throw_invalid("plan JSON: expected a JSON document, got a parse error");
  const nlohmann::json& matches = field(doc, "matches", "document");
  if (!matches.is_array()) throw_invalid("plan JSON: expected 'matches' to be an array");
  Plan plan;
  for (const nlohmann::json& m : matches) {
    PlanEntry e;
    e.match.pattern = string_field(m, "pattern", "match");
    e.match.anchor = string_field(m, "anchor", "match");
    e.reason = string_field(m, "reason", "match");
    const nlohmann::json& apply = field(m, "apply", "match");
    if (!apply.is_boolean())
      throw_invalid("plan JSON: match: expected 'apply' to be true or false");
    e.apply = apply.get<bool>();
    const nlohmann::json& id = field(m, "id", "match");
    if (!id.is_number_unsigned()) throw_invalid("plan JSON: match: expected 'id' to be a count");
    e.match.id = id.get<size_t>();
    const nlohmann::json& nodes = field(m, "nodes", "match");
    if (!nodes.is_array()) throw_invalid("plan JSON: match: expected 'nodes' to be an array");
    for (const nlohmann::json& n : nodes) {
      e.match.nodes.push_back({string_field(n, "role", "node"), string_field(n, "name", "node")});
    }
    plan.entries.push_back(std::move(e));
  }
  return plan;
}

size_t PlanReport::applied() const {
  size_t total = 0;
  for (const PatternCount& c : patterns) total += c.applied;
  return total;
}

size_t PlanReport::skipped() const {
  size_t total = 0;
  for (const PatternCount& c : patterns) total += c.skipped;
  return total;
}

const PatternCount* PlanReport::find(std::string_view pattern) const {
  for (const PatternCount& c : patterns) {
    if (c.pattern == pattern) return &c;
  }
  return nullptr;
}

std::string PlanReport::to_text() const {
  std::string text;
  for (const PatternCount& c : patterns) {
    text.append(c.pattern)
        .append(": applied ")
        .append(std::to_string(c.applied))
        .append(", skipped ")
        .append(std::to_string(c.skipped))
        .append("\n");
  }
  return text;
}

Plan make_plan(const Graph& graph, std::span<const Pattern> patterns) {
  Plan plan;
  std::map<std::string, size_t, std::less<>> claimed_by;  // node name -> plan entry id
  for (const Pattern& pattern : patterns) {
    for (Match& m : find_matches(graph, pattern)) {
      PlanEntry e;
      m.id = plan.entries.size();
      for (const MatchedNode& n : m.nodes) {
        auto it = claimed_by.find(n.name);
        if (it == claimed_by.end()) continue;
        const Match& owner = plan.entries[it->second].match;
        e.apply = false;
        e.reason = "node '";
        e.reason.append(n.name)
            .append("' claimed by ")
            .append(owner.pattern)
            .append(" match #")
            .append(std::to_string(owner.id));
        break;
      }
      if (e.apply && pattern.select) {
        if (auto refusal = pattern.select(graph, m)) {
          e.apply = false;
          e.reason = std::move(*refusal);
        }
      }
      if (e.apply) {
        for (const MatchedNode& n : m.nodes) claimed_by[n.name] = m.id;
      }
      e.match = std::move(m);
      plan.entries.push_back(std::move(e));
    }
  }
  return plan;
}

PlanReport apply_plan(Graph& graph, const Plan& plan, std::span<const Pattern> patterns) {
  PlanReport report;
  for (const Pattern& p : patterns) report.patterns.push_back({p.name, 0, 0});
  auto count_for = [&](const std::string& name) -> PatternCount& {
    for (PatternCount& c : report.patterns) {
      if (c.pattern == name) return c;
    }
    throw_internal("plan: no count for pattern " + name);
  };
  for (const PlanEntry& e : plan.entries) {
    const Pattern& pattern = find_pattern(patterns, e.match);
    if (!e.apply) {
      ++count_for(pattern.name).skipped;
      continue;
    }
    if (auto reason = recheck_entry(graph, pattern, e.match)) {
      ++count_for(pattern.name).skipped;
      report.deferred.push_back(entry_label(e.match) + ": " + *reason);
      continue;
    }
    if (!pattern.rewrite) throw_internal("pattern " + pattern.name + " has no rewrite");
    pattern.rewrite(graph, e.match);
#ifndef NDEBUG
    graph.check_consistency();
#endif
    ++count_for(pattern.name).applied;
  }
  graph.check_consistency();
  report.iterations = 1;
  return report;
}

PlanReport run_conversions(Graph& graph, std::span<const Pattern> patterns,
                           const ConversionOptions& options) {
  PlanReport total;
  for (const Pattern& p : patterns) total.patterns.push_back({p.name, 0, 0});
  for (size_t round = 0;; ++round) {
    Plan plan = make_plan(graph, patterns);
    const bool any = std::any_of(plan.entries.begin(), plan.entries.end(),
                                 [](const PlanEntry& e) { return e.apply; });
    if (!any) {
      // The last plan's refusals are what stays skipped.
      for (size_t i = 0; i < patterns.size(); ++i) total.patterns[i].skipped = 0;
      for (const PlanEntry& e : plan.entries) {
        for (PatternCount& c : total.patterns) c.skipped += c.pattern == e.match.pattern;
      }
      total.iterations = round;
      return total;
    }
    if (round == options.max_iterations) {
      throw_internal("conversions: expected a fixed point within " +
                     std::to_string(options.max_iterations) +
                     " rounds, got matches still applying");
    }
    PlanReport step = apply_plan(graph, plan, patterns);
    for (size_t i = 0; i < patterns.size(); ++i)
      total.patterns[i].applied += step.patterns[i].applied;
    if (options.remove_dead_nodes) graph.remove_dead();
  }
}

PlanReport run_fusions(Graph& graph, std::span<const Pattern> patterns) {
  return apply_plan(graph, make_plan(graph, patterns), patterns);
}

}  // namespace qforge::graph
