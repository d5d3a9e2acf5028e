// The ops of the newer opsets train through their kernels' backward: the ONNX Gelu node (opset
// 20) in both approximations, y = Gelu(x · w) with w [1, C] broadcast over [N, C],
// dL/dw[c] = Σ_n dy · Gelu'(x · w) · x against the float64 reference derivative; and ReduceMean
// with its axes as an input (opset 18), y = mean over axis 1 of x · w, dL/dw[c] = Σ_n dy[n] · x /
// C.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "kernels/reference/elementwise_reference.h"
#include "runtime/resolve.h"
#include "runtime/training.h"
#include "tests/support/graph_builders.h"
#include "tests/support/random.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;

TEST(GeluTraining, ParameterGradientFollowsTheApproximation) {
  const int64_t n = 6, c = 13;
  for (const std::string approximate : {"none", "tanh"}) {
    SCOPED_TRACE(approximate);
    std::mt19937 rng(11);
    graph::Graph g;
    graph::Value* x = g.add_input("x", DType::kFloat32, graph::Shape{n, c});
    graph::Value* weight = g.add_constant("w", testing::random_tensor({1, c}, rng, -2, 2));
    graph::Value* v = testing::add(g, "mul", "Mul", {x, weight});
    g.mark_output(testing::add(g, "gelu", "Gelu", {v}, {{"approximate", approximate}}));
    const std::vector<std::string> parameters = runtime::trainable_initializers(g);
    runtime::ResolveOptions options;
    options.parameters.insert(parameters.begin(), parameters.end());
    runtime::resolve(g, options);
    runtime::TrainingExecutor executor(g, runtime::TrainingOptions{parameters});

    const Tensor input = testing::random_tensor({n, c}, rng, -2, 2);
    const Tensor dy = testing::random_tensor({n, c}, rng, -1, 1);
    executor.forward({&input, 1});
    executor.backward({&dy, 1});
    ASSERT_EQ(executor.parameters().size(), 1u);
    const runtime::Parameter& w = executor.parameters()[0];
    const kernels::UnaryOp op =
        approximate == "tanh" ? kernels::UnaryOp::kGeluTanh : kernels::UnaryOp::kGeluErf;
    for (int64_t ch = 0; ch < c; ++ch) {
      double want = 0;
      for (int64_t b = 0; b < n; ++b) {
        const double xv = input.data<float>()[b * c + ch];
        const double vv = static_cast<float>(xv * w.value.data<float>()[ch]);
        want += dy.data<float>()[b * c + ch] *
                kernels::reference::unary_derivative(op, kernels::UnaryParams{}, vv) * xv;
      }
      EXPECT_NEAR(w.grad.data<float>()[ch], want, 1e-5 * std::max(1.0, std::abs(want))) << ch;
    }
  }
}

TEST(ReduceMeanTraining, AxesInputGradient) {
  const int64_t n = 5, c = 11;
  std::mt19937 rng(13);
  graph::Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, graph::Shape{n, c});
  graph::Value* weight = g.add_constant("w", testing::random_tensor({1, c}, rng, -2, 2));
  graph::Value* axes = g.add_constant("axes", Tensor::from_vector<int64_t>({1}, {1}));
  graph::Value* v = testing::add(g, "mul", "Mul", {x, weight});
  g.mark_output(testing::add(g, "mean", "ReduceMean", {v, axes}, {{"keepdims", int64_t{0}}}));
  runtime::ResolveOptions options;
  options.parameters.insert("w");
  runtime::resolve(g, options);
  runtime::TrainingExecutor executor(g, runtime::TrainingOptions{{"w"}});

  const Tensor input = testing::random_tensor({n, c}, rng, -2, 2);
  const Tensor dy = testing::random_tensor({n}, rng, -1, 1);
  executor.forward({&input, 1});
  executor.backward({&dy, 1});
  const runtime::Parameter& w = executor.parameters()[0];
  ASSERT_EQ(w.name, "w");
  for (int64_t ch = 0; ch < c; ++ch) {
    double want = 0;
    for (int64_t b = 0; b < n; ++b) {
      want += double(dy.data<float>()[b]) / c * input.data<float>()[b * c + ch];
    }
    EXPECT_NEAR(w.grad.data<float>()[ch], want, 1e-6 * std::max(1.0, std::abs(want))) << ch;
  }
}

}  // namespace
}  // namespace qforge
