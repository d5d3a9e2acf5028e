// The plan: every match of every pattern, in pattern-list order, each with an apply flag and,
// when off, the reason. It can be printed, saved as JSON, edited, reloaded and applied to a fresh
// copy of the graph. A node belongs to at most one applied match.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "graph/pattern.h"

namespace qforge::graph {

struct PlanEntry {
  Match match;
  bool apply = true;
  std::string reason;  // why apply is off: a select refusal or a conflict
};

struct Plan {
  std::vector<PlanEntry> entries;

  // One line per match: anchor node, pattern, apply, reason.
  std::string to_text() const;
  std::string to_json() const;
  // Invalid error for malformed JSON or missing fields.
  static Plan from_json(std::string_view json);
};

struct PatternCount {
  std::string pattern;
  size_t applied = 0;
  size_t skipped = 0;
};

struct PlanReport {
  std::vector<PatternCount> patterns;  // pattern-list order, every pattern listed
  size_t iterations = 0;               // plan+apply rounds (conversions run to a fixed point)
  // Entries planned on but not applied, with the reason: an earlier rewrite of the same plan
  // changed their surroundings (a later round plans them again).
  std::vector<std::string> deferred;

  size_t applied() const;
  size_t skipped() const;
  const PatternCount* find(std::string_view pattern) const;
  std::string to_text() const;
};

// Matches every pattern in list order; a match overlapping an earlier applied one is skipped
// ("node 'x' claimed by P match #k"), a refused one carries its select's reason.
Plan make_plan(const Graph& graph, std::span<const Pattern> patterns);

// Applies the entries with apply=true, finding nodes by name. Invalid error naming the entry when
// its pattern is unknown or a node is gone; an entry whose nodes no longer form the pattern, or
// that select now refuses, is skipped and listed in `deferred`. Checks graph consistency after
// every rewrite in debug builds, and at the end always.
PlanReport apply_plan(Graph& graph, const Plan& plan, std::span<const Pattern> patterns);

struct ConversionOptions {
  size_t max_iterations = 32;
  bool remove_dead_nodes = true;  // drop nodes whose outputs nobody reads after each round
};

// Plan and apply repeatedly until no match applies. Applied counts sum over the rounds; skipped
// counts are those of the last plan. Internal error when max_iterations rounds still apply.
PlanReport run_conversions(Graph& graph, std::span<const Pattern> patterns,
                           const ConversionOptions& options = {});

// One plan, applied once: the fusion stage (the caller orders the list longest first).
PlanReport run_fusions(Graph& graph, std::span<const Pattern> patterns);

}  // namespace qforge::graph
