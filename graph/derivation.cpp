// The pull-back of derived constants' gradients onto their sources (graph/derivation.h).
#include "graph/derivation.h"

#include <algorithm>
#include <map>

#include "kernels/error.h"

namespace qforge::graph {
namespace {

using kernels::shape_str;
using kernels::Tensor;

// source[s] += factor · grad[d] over the term's pairs, in their order.
void add_term(const DerivedTerm& term, const Tensor& grad, const std::string& derived,
              Tensor& source) {
  const float* g = grad.data<float>();
  float* out = source.data<float>();
  const int64_t derived_numel = grad.numel(), source_numel = source.numel();
  auto add = [&](int64_t d, int64_t s) {
    if (d < 0 || d >= derived_numel || s < 0 || s >= source_numel) {
      throw_internal("gradient pull-back: '" + derived + "' element " + std::to_string(d) +
                     " from '" + term.source + "' element " + std::to_string(s) +
                     " is outside their sizes " + std::to_string(derived_numel) + " and " +
                     std::to_string(source_numel));
    }
    out[s] += term.factor * g[d];
  };
  if (!term.pairs.empty()) {
    for (const auto& [d, s] : term.pairs) add(d, s);
    return;
  }
  const size_t rank = term.extent.size();
  if (term.derived_strides.size() != rank || term.source_strides.size() != rank) {
    throw_internal("gradient pull-back: '" + derived + "' from '" + term.source +
                   "': strides do not match the extent " + shape_str(term.extent));
  }
  if (kernels::shape_numel(term.extent) == 0) return;
  std::vector<int64_t> index(rank, 0);
  int64_t d = term.derived_offset, s = term.source_offset;
  while (true) {
    add(d, s);
    size_t k = rank;
    while (k > 0) {
      --k;
      if (++index[k] < term.extent[k]) {
        d += term.derived_strides[k];
        s += term.source_strides[k];
        break;
      }
      d -= (term.extent[k] - 1) * term.derived_strides[k];
      s -= (term.extent[k] - 1) * term.source_strides[k];
      index[k] = 0;
      if (k == 0) return;
    }
    if (rank == 0) return;
  }
}

}  // namespace

PulledBackGradients pull_back_gradients(
    std::span<const Derivation> derivations,
    std::vector<std::pair<std::string, kernels::Tensor>> gradients) {
  std::map<std::string, Tensor> by_name;
  for (auto& [name, grad] : gradients) by_name[name] = std::move(grad);
  PulledBackGradients result;
  for (auto it = derivations.rbegin(); it != derivations.rend(); ++it) {
    auto found = by_name.find(it->derived);
    if (found == by_name.end()) continue;
    const Tensor grad = std::move(found->second);
    by_name.erase(found);
    if (grad.dtype() != kernels::DType::kFloat32 || grad.shape() != it->shape) {
      throw_internal("gradient pull-back: the gradient of '" + it->derived + "' is " +
                     grad.describe() + ", its derivation float32" + shape_str(it->shape));
    }
    result.derived.push_back(it->derived);
    for (const DerivedTerm& term : it->terms) {
      auto [source, fresh] = by_name.try_emplace(term.source);
      if (fresh) {
        source->second = Tensor(kernels::DType::kFloat32, term.source_shape);
      } else if (source->second.shape() != term.source_shape) {
        throw_internal("gradient pull-back: '" + term.source + "' has a gradient of shape " +
                       shape_str(source->second.shape()) + ", '" + it->derived +
                       "' was derived from it at " + shape_str(term.source_shape));
      }
      add_term(term, grad, it->derived, source->second);
    }
  }
  std::sort(result.derived.begin(), result.derived.end());
  for (auto& [name, grad] : by_name) result.gradients.emplace_back(name, std::move(grad));
  return result;
}

}  // namespace qforge::graph
