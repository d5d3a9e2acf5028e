// One training step of a small model against PyTorch's: the golden .npz holds the input `x`,
// the outputs `y0`, `y1`, …, their gradients `dy0`, `dy1`, … (one per float output) and
// `grad/<initializer>` for every parameter PyTorch trained.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <span>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "kernels/tensor.h"
#include "runtime/resolve.h"
#include "runtime/training.h"
#include "tests/support/float_checks.h"

namespace qforge::testing {

// Resolves `graph` with `parameters` trainable, runs the forward on `x` and compares every
// output with `y<i>` (max error ≤ output_tolerance · max(1, max |y|)), runs the backward from
// `dy<i>` (no gradient into an output without one) and compares every parameter's gradient with
// `grad/<name>` (≤ 1e-5 on the same scale). `parameters` holds exactly `expected_parameters`
// names, each with a golden gradient.
inline void expect_training_step_matches(graph::Graph& graph,
                                         const std::map<std::string, kernels::Tensor>& golden,
                                         const std::vector<std::string>& parameters,
                                         double output_tolerance, size_t expected_parameters) {
  runtime::ResolveOptions options;
  options.parameters.insert(parameters.begin(), parameters.end());
  runtime::resolve(graph, options);
  runtime::TrainingExecutor executor(graph, runtime::TrainingOptions{parameters});
  const kernels::Tensor& x = golden.at("x");
  const std::span<const kernels::Tensor> y = executor.forward({&x, 1});
  std::vector<kernels::Tensor> dy;
  for (size_t i = 0; i < y.size(); ++i) {
    const std::string index = std::to_string(i);
    auto want = golden.find("y" + index);
    ASSERT_NE(want, golden.end()) << "golden output y" << index;
    expect_close_scaled(y[i], want->second, output_tolerance, "output y" + index);
    auto gradient = golden.find("dy" + index);
    dy.push_back(gradient == golden.end() ? kernels::Tensor() : gradient->second);
  }
  ASSERT_EQ(golden.count(std::string("y").append(std::to_string(y.size()))), 0u)
      << "the model has fewer outputs";
  executor.backward(dy);
  size_t checked = 0;
  for (const runtime::Parameter& p : executor.parameters()) {
    auto it = golden.find("grad/" + p.name);
    ASSERT_NE(it, golden.end()) << p.name;
    expect_close_scaled(p.grad, it->second, 1e-5, "gradient of " + p.name);
    ++checked;
  }
  EXPECT_EQ(checked, expected_parameters);
}

}  // namespace qforge::testing
