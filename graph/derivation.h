// Derived constants: where a transform computes a constant by moving and scaling the elements of
// other constants (a Linear weight transposed into a 1×1 convolution's, Q/K/V weights packed side
// by side, a class token expanded to the batch), the record of which source element each derived
// element came from, so that a gradient of the derived constant can be pulled back onto the
// sources' names and shapes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/tensor.h"

namespace qforge::graph {

// derived[d] += factor · source[s] for each element pair (d, s) of the term. The pairs are a box
// of `extent` walked in row-major order, d = derived_offset + Σ i_k·derived_strides[k] and
// s = source_offset + Σ i_k·source_strides[k] (a source stride of 0 broadcasts), or, when
// `pairs` is not empty, exactly those pairs (a gather, as constant folding records them).
struct DerivedTerm {
  std::string source;
  kernels::Shape source_shape;
  float factor = 1.0f;
  kernels::Shape extent;
  int64_t derived_offset = 0;
  std::vector<int64_t> derived_strides;
  int64_t source_offset = 0;
  std::vector<int64_t> source_strides;
  std::vector<std::pair<int64_t, int64_t>> pairs;  // (derived, source) element indices
};

// The derived constant `derived` of `shape` is the sum of its terms.
struct Derivation {
  std::string derived;
  kernels::Shape shape;
  std::vector<DerivedTerm> terms;
};

// What pull_back_gradients did.
struct PulledBackGradients {
  // By name, in name order: the derived names replaced by their sources', other names as given.
  std::vector<std::pair<std::string, kernels::Tensor>> gradients;
  std::vector<std::string> derived;  // the derived names that were pulled back, in name order
};

// Pulls each gradient of a derived constant back onto its sources, the transpose of the
// derivation: source[s] += factor · grad[d] over the term's pairs. Records are walked from the
// last made to the first, so a constant derived from a derived one passes through both, and a
// source's contributions are summed in that fixed order after any gradient it had of its own:
// bit-identical whatever the thread count. Names without a record stay as they are.
PulledBackGradients pull_back_gradients(
    std::span<const Derivation> derivations,
    std::vector<std::pair<std::string, kernels::Tensor>> gradients);

}  // namespace qforge::graph
