// Checks that a graph's derivations (graph/derivation.h) say how its derived constants were
// made: recomputed from the sources' values in the graph before the transform, each must give
// the derived constant's values.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "graph/ir.h"

namespace qforge::testing {

// derived[d] = Σ over terms of factor · source[s], the forward of pull_back_gradients.
inline kernels::Tensor recompute_derived(const graph::Derivation& d, const graph::Graph& before) {
  kernels::Tensor out(kernels::DType::kFloat32, d.shape);
  for (const graph::DerivedTerm& t : d.terms) {
    const graph::Value* source = before.find_value(t.source);
    EXPECT_TRUE(source && source->is_constant()) << t.source << " is no constant before";
    if (!source || !source->is_constant()) continue;
    EXPECT_EQ(source->known_shape(), t.source_shape) << t.source;
    const float* s = source->constant().data<float>();
    float* o = out.data<float>();
    if (!t.pairs.empty()) {
      for (const auto& [di, si] : t.pairs) o[di] += t.factor * s[si];
      continue;
    }
    const int64_t numel = kernels::shape_numel(t.extent);
    for (int64_t flat = 0; flat < numel; ++flat) {
      int64_t rest = flat, di = t.derived_offset, si = t.source_offset;
      for (size_t k = t.extent.size(); k-- > 0;) {
        const int64_t i = rest % t.extent[k];
        rest /= t.extent[k];
        di += i * t.derived_strides[k];
        si += i * t.source_strides[k];
      }
      o[di] += t.factor * s[si];
    }
  }
  return out;
}

// Every derivation of `after` whose derived constant it holds recomputes that constant from
// `before`'s values. Returns how many were checked.
inline size_t expect_derivations_reproduce(const graph::Graph& before, const graph::Graph& after) {
  size_t checked = 0;
  for (const graph::Derivation& d : after.derivations()) {
    const graph::Value* v = after.find_value(d.derived);
    if (!v || !v->is_constant() || v->is_released()) continue;
    ++checked;
    const kernels::Tensor want = v->constant();
    const kernels::Tensor got = recompute_derived(d, before);
    EXPECT_EQ(got.shape(), want.shape()) << d.derived;
    if (got.shape() != want.shape()) continue;
    for (int64_t i = 0; i < want.numel(); ++i) {
      const float w = want.data<float>()[i], g = got.data<float>()[i];
      EXPECT_LE(std::abs(g - w), 1e-6f * std::max(1.0f, std::abs(w)))
          << d.derived << " element " << i;
    }
  }
  return checked;
}

}  // namespace qforge::testing
