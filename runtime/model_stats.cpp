// Parameter and MAC counting over resolved shapes.
#include "runtime/model_stats.h"

#include <set>

namespace qforge::runtime {

ModelStats model_stats(const graph::Graph& resolved) {
  ModelStats stats;
  std::set<const graph::Value*> counted;
  for (const graph::Node* node : resolved.nodes()) {
    ++stats.op_counts[node->op_type()];
    for (const graph::Value* in : node->inputs()) {
      if (in && in->is_constant() && in->dtype() == kernels::DType::kFloat32 &&
          counted.insert(in).second && in->constant().numel() > 1) {
        stats.parameters += in->constant().numel();
      }
    }
    const std::string& op = node->op_type();
    if (!node->output(0)->has_shape()) continue;
    const auto& out = *node->output(0)->shape();
    if (op == "Conv" && node->input(1)->has_shape()) {
      // Each output element accumulates C_in/group × kernel area products.
      const auto& w = *node->input(1)->shape();
      int64_t per_output = 1;
      for (size_t i = 1; i < w.size(); ++i) per_output *= w[i];
      stats.macs += kernels::shape_numel(out) * per_output;
    } else if ((op == "Gemm" || op == "MatMul") && node->input(0)->has_shape()) {
      const auto& a = *node->input(0)->shape();
      int64_t k = a.empty() ? 1 : a.back();
      if (op == "Gemm" && node->attr_int("transA", 0) && a.size() == 2) k = a[0];
      stats.macs += kernels::shape_numel(out) * k;
    }
  }
  return stats;
}

}  // namespace qforge::runtime
