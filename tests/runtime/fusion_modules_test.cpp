// Fusion module kernels: an image's output bits do not depend on the batch it runs in, and bad
// module nodes are refused with the node's label.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "graph/ir.h"
#include "kernels/error.h"
#include "runtime/executor.h"
#include "runtime/resolve.h"
#include "tests/support/graph_builders.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Shape;
using kernels::Tensor;

using testing::random_tensor;

// x [batch, 5, 9, 7] -> ConvBNAddAct(x, x) with GELU -> LinearAct over the last axis (SiLU).
std::unique_ptr<graph::Graph> module_graph(int64_t batch, const std::string& activation) {
  std::mt19937 rng(13);
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{batch, 5, 9, 7});
  std::vector<graph::Value*> params = {
      g->add_constant("w", random_tensor({5, 5, 3, 3}, rng)),
      g->add_constant("b", random_tensor({5}, rng)),
      g->add_constant("gamma", random_tensor({5}, rng, 0.5f, 1.5f)),
      g->add_constant("beta", random_tensor({5}, rng)),
      g->add_constant("mean", random_tensor({5}, rng)),
      g->add_constant("var", random_tensor({5}, rng, 0.5f, 1.5f))};
  std::vector<graph::Value*> inputs = {x, x};
  inputs.insert(inputs.end(), params.begin(), params.end());
  auto* conv = g->add_node({.name = "block",
                            .op_type = "ConvBNAddAct",
                            .inputs = inputs,
                            .output_names = {"y"},
                            .attributes = {{"kernel_shape", std::vector<int64_t>{3, 3}},
                                           {"pads", std::vector<int64_t>{1, 1, 1, 1}},
                                           {"epsilon", 1e-5f},
                                           {"activation", activation}},
                            .domain = "qforge"});
  auto* lw = g->add_constant("lw", random_tensor({7, 11}, rng));
  auto* lb = g->add_constant("lb", random_tensor({11}, rng));
  auto* lin = g->add_node({.name = "fc",
                           .op_type = "LinearAct",
                           .inputs = {conv->output(0), lw, lb},
                           .output_names = {"z"},
                           .attributes = {{"weight_layout", std::string("matmul")},
                                          {"source", std::string("MatMul")},
                                          {"activation", std::string("Silu")}},
                           .domain = "qforge"});
  g->mark_output(lin->output(0));
  runtime::resolve(*g, {});
  return g;
}

TEST(FusionModuleKernels, ResultsDoNotDependOnTheBatch) {
  auto single = module_graph(1, "Gelu");
  auto triple = module_graph(3, "Gelu");
  std::mt19937 rng(2);
  Tensor x3 = random_tensor({3, 5, 9, 7}, rng);
  runtime::Executor a(*single), b(*triple);
  const Tensor z3 = b.run(std::span(&x3, 1))[0].clone();
  EXPECT_EQ(z3.shape(), (Shape{3, 5, 9, 11}));
  for (int64_t i = 0; i < 3; ++i) {
    Tensor xi = x3.slice_rows(i, i + 1).clone();
    const Tensor& zi = a.run(std::span(&xi, 1))[0];
    EXPECT_EQ(std::memcmp(zi.raw(), z3.slice_rows(i, i + 1).raw(), zi.nbytes()), 0) << i;
  }
}

TEST(FusionModuleKernels, RefusesAnUnknownActivation) {
  try {
    module_graph(1, "Swish");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("node 'block' (ConvBNAddAct)"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("'Swish'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qforge
