// The training executor's mechanics on graphs small enough for a closed form: a value read by
// several nodes receives the sum of their gradients, a broadcast parameter the sum over its
// broadcast positions, Identity aliases of a parameter stay parameters of their own, and a
// gradient that would pass through an op without a backward is refused, naming the node.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "graph/catalog.h"
#include "graph/ir.h"
#include "runtime/resolve.h"
#include "runtime/training.h"
#include "tests/support/errors.h"
#include "tests/support/graph_builders.h"
#include "tests/support/random.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::add;

const runtime::Parameter& find_parameter(const runtime::TrainingExecutor& e,
                                         const std::string& name) {
  for (const runtime::Parameter& p : e.parameters()) {
    if (p.name == name) return p;
  }
  throw std::runtime_error("no parameter " + name);
}

std::unique_ptr<runtime::TrainingExecutor> compile(graph::Graph& g) {
  const std::vector<std::string> parameters = runtime::trainable_initializers(g);
  runtime::ResolveOptions options;
  options.parameters.insert(parameters.begin(), parameters.end());
  runtime::resolve(g, options);
  return std::make_unique<runtime::TrainingExecutor>(g, runtime::TrainingOptions{parameters});
}

// y = v + relu(v) with v = x · w, w [1, C, 1, 1] broadcast over [N, C, H, W]:
// dL/dv = dy · (1 + [v > 0]), dL/dw[c] = Σ_{n,h,w} dL/dv · x.
TEST(TrainingExecutor, SumsFanOutAndBroadcastGradients) {
  const int64_t n = 3, c = 5, h = 4, w = 7;
  std::mt19937 rng(7);
  graph::Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, graph::Shape{n, c, h, w});
  graph::Value* weight = g.add_constant("w", testing::random_tensor({1, c, 1, 1}, rng, -1, 1));
  graph::Value* v = add(g, "mul", "Mul", {x, weight});
  graph::Value* r = add(g, "relu", "Relu", {v});
  g.mark_output(add(g, "sum", "Add", {v, r}));
  auto executor = compile(g);

  const Tensor input = testing::random_tensor({n, c, h, w}, rng, -1, 1);
  const Tensor dy = testing::random_tensor({n, c, h, w}, rng, -1, 1);
  executor->forward({&input, 1});
  executor->backward({&dy, 1});

  const Tensor& wv = find_parameter(*executor, "w").value;
  const Tensor& got = find_parameter(*executor, "w").grad;
  ASSERT_EQ(got.shape(), (graph::Shape{1, c, 1, 1}));
  for (int64_t ch = 0; ch < c; ++ch) {
    double want = 0;
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t i = 0; i < h * w; ++i) {
        const int64_t at = (b * c + ch) * h * w + i;
        const float xv = input.data<float>()[at];
        const float vv = xv * wv.data<float>()[ch];
        want += double(dy.data<float>()[at]) * (vv > 0 ? 2.0 : 1.0) * xv;
      }
    }
    EXPECT_NEAR(got.data<float>()[ch], want, 1e-5 * std::max(1.0, std::abs(want))) << ch;
  }
}

// The profile counts each node's kernel per op type, forward and backward, from the step after
// it is switched on, and reset_profile() clears it; the gradients are those of an unprofiled run.
TEST(TrainingExecutor, ProfileCountsEveryKernelPerOpType) {
  std::mt19937 rng(5);
  graph::Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, graph::Shape{2, 3});
  graph::Value* a = g.add_constant("a", testing::random_tensor({3}, rng, -1, 1));
  graph::Value* b = g.add_constant("b", testing::random_tensor({3}, rng, -1, 1));
  graph::Value* v = add(g, "relu", "Relu", {add(g, "xa", "Mul", {x, a})});
  g.mark_output(add(g, "out", "Mul", {v, b}));
  auto executor = compile(g);
  const Tensor input = testing::random_tensor({2, 3}, rng, -1, 1);
  const Tensor dy = testing::random_tensor({2, 3}, rng, -1, 1);
  executor->forward({&input, 1});
  executor->backward({&dy, 1});
  EXPECT_TRUE(executor->profile().empty());
  const Tensor& grad = find_parameter(*executor, "a").grad;
  const std::vector<float> plain(grad.data<float>(), grad.data<float>() + grad.numel());

  executor->set_profile(true);
  for (int step = 0; step < 2; ++step) {
    executor->forward({&input, 1});
    executor->backward({&dy, 1});
  }
  const auto profile = executor->profile();
  ASSERT_EQ(profile.size(), 2u);
  for (const auto& t : profile) {
    EXPECT_EQ(t.forward_calls, t.op_type == "Mul" ? 4u : 2u) << t.op_type;
    EXPECT_GT(t.forward_seconds, 0.0) << t.op_type;
    EXPECT_GT(t.backward_seconds, 0.0) << t.op_type;
  }
  EXPECT_GE(profile[0].forward_seconds + profile[0].backward_seconds,
            profile[1].forward_seconds + profile[1].backward_seconds);
  EXPECT_EQ(std::vector<float>(grad.data<float>(), grad.data<float>() + grad.numel()), plain);
  // Per node: one row each, named, summing to the per-type rows.
  const auto nodes = executor->profile(/*per_node=*/true);
  ASSERT_EQ(nodes.size(), 3u);
  std::vector<std::string> names;
  double mul_seconds = 0;
  for (const auto& t : nodes) {
    names.push_back(t.node);
    EXPECT_EQ(t.forward_calls, 2u) << t.node;
    if (t.op_type == "Mul") mul_seconds += t.forward_seconds + t.backward_seconds;
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"out", "relu", "xa"}));
  for (const auto& t : profile) {
    if (t.op_type == "Mul") {
      EXPECT_NEAR(t.forward_seconds + t.backward_seconds, mul_seconds, 1e-12 * mul_seconds);
    }
  }
  executor->reset_profile();
  EXPECT_TRUE(executor->profile().empty());
}

// torch.onnx names a second parameter of equal value through an Identity: both keep a gradient
// of their own. y = x · a + x · b with b = Identity(a): dL/da = dL/db = Σ dy · x.
TEST(TrainingExecutor, IdentityAliasIsAParameterOfItsOwn) {
  std::mt19937 rng(3);
  graph::Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, graph::Shape{2, 3});
  graph::Value* a = g.add_constant("a", testing::random_tensor({3}, rng, -1, 1));
  graph::Value* b =
      g.add_node({.name = "alias", .op_type = "Identity", .inputs = {a}, .output_names = {"b"}})
          ->output(0);
  g.mark_output(add(g, "sum", "Add", {add(g, "xa", "Mul", {x, a}), add(g, "xb", "Mul", {x, b})}));
  auto executor = compile(g);
  const Tensor input = testing::random_tensor({2, 3}, rng, -1, 1);
  const Tensor dy = testing::random_tensor({2, 3}, rng, -1, 1);
  executor->forward({&input, 1});
  executor->backward({&dy, 1});
  for (const char* name : {"a", "b"}) {
    const Tensor& grad = find_parameter(*executor, name).grad;
    for (int64_t j = 0; j < 3; ++j) {
      const double want = double(dy.data<float>()[j]) * input.data<float>()[j] +
                          double(dy.data<float>()[3 + j]) * input.data<float>()[3 + j];
      EXPECT_NEAR(grad.data<float>()[j], want, 1e-6) << name << "[" << j << "]";
    }
  }
}

TEST(TrainingExecutor, RefusesAGradientThroughAnOpWithoutBackward) {
  std::mt19937 rng(5);
  graph::Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, graph::Shape{2, 3});
  graph::Value* w = g.add_constant("w", testing::random_tensor({3}, rng, 0.5, 1));
  g.mark_output(
      add(g, "remainder", "Mod", {add(g, "scaled", "Mul", {x, w}), x}, {{"fmod", int64_t{1}}}));
  const std::string message = testing::error_of(ErrorKind::kUnsupported, [&] { compile(g); });
  EXPECT_NE(message.find("node 'remainder' (Mod): no backward for input 0"), std::string::npos)
      << message;
  // The catalog's reason for the op having no gradient ends the message.
  const std::string_view reason = graph::find_schema("Mod")->no_gradient_reason;
  ASSERT_FALSE(reason.empty());
  EXPECT_NE(message.find(reason), std::string::npos) << message;
}

}  // namespace
}  // namespace qforge
