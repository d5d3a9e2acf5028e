// The before/after tester of graph passes: builds a graph, resolves it, runs the pass on a clone,
// executes both on the same seeded random inputs, checks that every output agrees to a
// tolerance, and counts op types on each side for the test to assert.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/executor.h"
#include "runtime/resolve.h"

namespace qforge::testing {

using OpCounts = std::map<std::string, size_t>;

inline OpCounts count_ops(const graph::Graph& graph) {
  OpCounts counts;
  for (const graph::Node* n : graph.nodes()) ++counts[n->op_type()];
  return counts;
}

// max|got - ref| / max(1, max|ref|).
inline double relative_max_diff(const kernels::Tensor& got, const kernels::Tensor& ref) {
  double diff = 0, scale = 1;
  auto g = got.span<float>();
  auto r = ref.span<float>();
  for (size_t i = 0; i < r.size(); ++i) {
    diff = std::max(diff, std::fabs(double(g[i]) - r[i]));
    scale = std::max(scale, std::fabs(double(r[i])));
  }
  return diff / scale;
}

// Float inputs uniform in [-1, 1]; integer inputs are zero.
inline kernels::Tensor random_input(kernels::DType dtype, const graph::Shape& shape,
                                    std::mt19937& rng) {
  kernels::Tensor t(dtype, shape);
  if (dtype == kernels::DType::kFloat32) {
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    for (float& f : t.span<float>()) f = dist(rng);
  }
  return t;
}

struct PassTestOptions {
  uint32_t seed = 1;
  double tolerance = 1e-5;  // on relative_max_diff
  runtime::ResolveOptions resolve;
};

struct PassTestResult {
  OpCounts before;
  OpCounts after;
  double max_diff = 0;  // largest relative_max_diff over the outputs
  std::unique_ptr<graph::Graph> transformed;
};

using GraphFactory = std::function<std::unique_ptr<graph::Graph>()>;
using GraphPass = std::function<void(graph::Graph&)>;

// Failures (a pass that breaks consistency, changes the outputs' names or shapes, or their values
// beyond the tolerance) are reported as gtest failures of the calling test.
inline PassTestResult run_pass_test(const GraphFactory& make_graph, const GraphPass& pass,
                                    const PassTestOptions& options = {}) {
  PassTestResult result;
  std::unique_ptr<graph::Graph> before = make_graph();
  runtime::resolve(*before, options.resolve);
  result.transformed = before->clone();
  graph::Graph& after = *result.transformed;
  pass(after);
  EXPECT_NO_THROW(after.check_consistency());
  result.before = count_ops(*before);
  result.after = count_ops(after);

  std::mt19937 rng(options.seed);
  std::vector<kernels::Tensor> inputs;
  for (const graph::Value* in : before->inputs()) {
    inputs.push_back(random_input(in->dtype(), in->known_shape(), rng));
  }
  runtime::Executor ref_exec(*before), got_exec(after);
  auto ref = ref_exec.run(inputs);
  auto got = got_exec.run(inputs);
  EXPECT_EQ(ref.size(), got.size());
  for (size_t i = 0; i < std::min(ref.size(), got.size()); ++i) {
    EXPECT_EQ(before->outputs()[i]->name(), after.outputs()[i]->name()) << "output " << i;
    EXPECT_EQ(ref[i].shape(), got[i].shape()) << "output " << i;
    if (ref[i].shape() != got[i].shape()) continue;
    if (ref[i].dtype() != kernels::DType::kFloat32) {
      EXPECT_EQ(std::memcmp(ref[i].raw(), got[i].raw(), ref[i].nbytes()), 0) << "output " << i;
      continue;
    }
    const double diff = relative_max_diff(got[i], ref[i]);
    EXPECT_LE(diff, options.tolerance) << "output '" << before->outputs()[i]->name() << "'";
    result.max_diff = std::max(result.max_diff, diff);
  }
  return result;
}

}  // namespace qforge::testing
