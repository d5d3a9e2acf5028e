// Variants of a model that compute what it computes up to some node: the Q/DQ models of a
// sensitivity analysis, each with one module kept float, run the all-quantized model's nodes
// unchanged up to the first node that reads what that module changes. SharedPrefix orders the
// base model's computing nodes (every node but those that read constants alone, such as a
// weight's quantizer), finds where a variant departs from them, and cuts both there, so that a
// variant runs from the base's values at its cut instead of from the graph inputs. The base's
// constants are compared by a 64-bit hash of their bytes (with their type and shape), so that
// it keeps its structure alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "graph/ir.h"

namespace qforge::quant {

class SharedPrefix {
 public:
  // Takes `base` and releases its constants, once hashed.
  explicit SharedPrefix(std::unique_ptr<graph::Graph> base);
  ~SharedPrefix();

  // The base's computing nodes, in graph order.
  size_t size() const { return computing_.size(); }

  // The values a run of the first `cut` computing nodes hands on: graph inputs and outputs of
  // those nodes that a later computing node or a graph output reads, and the float input of
  // each Q → DQ pair whose output is among them (what a variant without that point reads), in
  // graph-input-then-node order.
  std::vector<const graph::Value*> live(size_t cut) const;

  // Computing nodes [from, to) as a graph: its inputs the values of live(from) they read, its
  // outputs the values of live(to) they produce (both in live()'s order), with the constant
  // nodes they need. Built from `variant`, whose departure() is at `to` or later (it computes
  // those nodes as the base does, with its own constants).
  std::unique_ptr<graph::Graph> segment(const graph::Graph& variant, size_t from, size_t to) const;

  struct Departure {
    // The variant computes the base's first `cut` computing nodes as the base does: the same
    // names, ops, attributes, constants (compared by value) and inputs.
    size_t cut = 0;
    // The variant's other nodes as a graph whose inputs are values of the base's live(cut), by
    // name, type and shape, and whose outputs are the variant's. Null when the variant reads
    // from its first nodes a value that the base does not hand on at the cut, or when it
    // computes nothing after it.
    std::unique_ptr<graph::Graph> rest;
  };
  Departure departure(const graph::Graph& variant) const;

 private:
  std::unique_ptr<graph::Graph> base_;
  std::vector<const graph::Node*> computing_;                 // graph order
  std::unordered_set<const graph::Node*> constant_;           // nodes that read constants alone
  std::unordered_map<const graph::Value*, uint64_t> hashes_;  // of the base's constants
};

}  // namespace qforge::quant
