// Prepared weights shared within one executor's kernel creation (runtime/prepared_weights.h), and
// an executor whose MatMuls read one constant computing what separate constants give.
#include "runtime/prepared_weights.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "graph/ir.h"
#include "kernels/tensor.h"
#include "runtime/executor.h"
#include "runtime/resolve.h"
#include "tests/support/graph_builders.h"
#include "tests/support/random.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;

TEST(PreparedWeights, OneSourceAndFormIsPreparedOnceWhileSharing) {
  const std::vector<float> weights = {1, 2, 3, 4, 5, 6};
  int prepared = 0;
  auto prepare = [&](float* out) {
    ++prepared;
    for (size_t i = 0; i < weights.size(); ++i) out[i] = 2 * weights[i];
  };
  runtime::PreparedWeights a, b, other_form, other_source;
  {
    const runtime::PreparedWeightSharing sharing;
    a = runtime::prepared_weights(weights.data(), 6, {2, 3, 0}, prepare);
    b = runtime::prepared_weights(weights.data(), 6, {2, 3, 0}, prepare);
    other_form = runtime::prepared_weights(weights.data(), 6, {3, 2, 0}, prepare);
    other_source = runtime::prepared_weights(weights.data() + 1, 6, {2, 3, 0}, prepare);
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other_form);
  EXPECT_NE(a, other_source);
  EXPECT_EQ(prepared, 3);
  EXPECT_EQ(*a, (std::vector<float>{2, 4, 6, 8, 10, 12}));
  // Outside a sharing scope every call prepares its own.
  const runtime::PreparedWeights c =
      runtime::prepared_weights(weights.data(), 6, {2, 3, 0}, prepare);
  EXPECT_NE(a, c);
  EXPECT_EQ(*a, *c);
  EXPECT_EQ(prepared, 4);
}

// Two MatMuls of one constant weight (k 40, n 24: the packed path) beside one of a copy in another
// value: the shared packing computes the copy's products bit for bit.
TEST(PreparedWeights, MatMulsOfOneConstantComputeWhatACopyGives) {
  graph::Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, kernels::Shape{5, 40});
  const Tensor w = testing::random_f32({40, 24}, 3, -1.0f, 1.0f);
  graph::Value* shared = g.add_constant("w", w);
  graph::Value* copy = g.add_constant("w_copy", w.clone());
  graph::Value* negated = testing::add(g, "neg", "Neg", {x});
  g.mark_output(testing::add(g, "first", "MatMul", {x, shared}));
  g.mark_output(testing::add(g, "second", "MatMul", {negated, shared}));
  g.mark_output(testing::add(g, "apart", "MatMul", {negated, copy}));
  runtime::resolve(g, {});
  runtime::Executor executor(g);
  const Tensor input = testing::random_f32({5, 40}, 4, -1.0f, 1.0f);
  const std::span<const Tensor> y = executor.run({&input, 1});
  ASSERT_EQ(y.size(), 3u);
  EXPECT_EQ(y[1].to_float_vector(), y[2].to_float_vector());
  std::vector<float> minus = y[0].to_float_vector();
  for (float& v : minus) v = -v;
  EXPECT_EQ(minus, y[1].to_float_vector());
}

}  // namespace
}  // namespace qforge
