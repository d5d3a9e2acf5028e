// Conv epilogue fusion: the fused graph computes what the unfused one does, with fewer nodes.
#include "runtime/fuse_epilogues.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "runtime/executor.h"
#include "runtime/fuse_qdq.h"
#include "runtime/resolve.h"
#include "tests/support/graph_builders.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Shape;
using kernels::Tensor;

using testing::random_tensor;

std::map<std::string, int> op_counts(const graph::Graph& g) {
  std::map<std::string, int> ops;
  for (const auto* n : g.nodes()) ++ops[std::string(n->op_type())];
  return ops;
}

// A rewrite keeps the graph's outputs, by name and in order.
void expect_same_output_names(const graph::Graph& g, const graph::Graph& rewritten) {
  ASSERT_EQ(rewritten.outputs().size(), g.outputs().size());
  for (size_t i = 0; i < g.outputs().size(); ++i) {
    EXPECT_EQ(rewritten.outputs()[i]->name(), g.outputs()[i]->name());
  }
}

// Resolves g and runs `fuse` on a copy of it, which it returns after checking that the pass
// reported `groups` fusions and left a consistent graph with g's outputs.
template <class Fuse>
std::unique_ptr<graph::Graph> fused_copy(graph::Graph& g, Fuse fuse, size_t groups) {
  runtime::resolve(g, {});
  auto fused = g.clone();
  EXPECT_EQ(fuse(*fused), groups);
  EXPECT_NO_THROW(fused->check_consistency());
  expect_same_output_names(g, *fused);
  return fused;
}

// Both graphs run on `inputs` and give every output with the same bits; with `any_nan`, a NaN
// matches any NaN (the element-wise kernels promise their bits for non-NaN inputs: which operand
// of a product a NaN comes from is the compiler's choice in each loop).
void expect_same_output_bits(const graph::Graph& g, const graph::Graph& rewritten,
                             std::span<const Tensor> inputs, bool any_nan = false) {
  runtime::Executor a(g), f(rewritten);
  auto ya = a.run(inputs);
  auto yf = f.run(inputs);
  ASSERT_EQ(ya.size(), yf.size());
  for (size_t k = 0; k < ya.size(); ++k) {
    ASSERT_EQ(ya[k].shape(), yf[k].shape());
    for (int64_t i = 0; i < ya[k].numel(); ++i) {
      const float u = ya[k].data<float>()[i], v = yf[k].data<float>()[i];
      if (any_nan && std::isnan(u) && std::isnan(v)) continue;
      ASSERT_EQ(std::memcmp(&u, &v, sizeof(float)), 0) << "output " << k << " at " << i;
    }
  }
}

// x -> Conv(3x3, pad 1) -> BN -> Add(skip) -> Relu -> y, with skip = Relu(x') of another conv,
// and a plain Conv -> Clip(0, 6) branch.
std::unique_ptr<graph::Graph> residual_block(std::mt19937& rng) {
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{2, 5, 9, 7});
  auto conv_attrs = [] {
    std::map<std::string, graph::AttributeValue, std::less<>> a;
    a["pads"] = std::vector<int64_t>{1, 1, 1, 1};
    return a;
  };
  auto* w1 = g->add_constant("w1", random_tensor({6, 5, 3, 3}, rng));
  auto* b1 = g->add_constant("b1", random_tensor({6}, rng));
  auto* conv1 = g->add_node({.name = "conv1",
                             .op_type = "Conv",
                             .inputs = {x, w1, b1},
                             .output_names = {"c1"},
                             .attributes = conv_attrs()});
  auto* skip = g->add_node(
      {.name = "skip", .op_type = "Relu", .inputs = {conv1->output(0)}, .output_names = {"s"}});
  auto* w2 = g->add_constant("w2", random_tensor({6, 6, 3, 3}, rng));
  auto* conv2 = g->add_node({.name = "conv2",
                             .op_type = "Conv",
                             .inputs = {skip->output(0), w2},
                             .output_names = {"c2"},
                             .attributes = conv_attrs()});
  auto* gamma = g->add_constant("gamma", random_tensor({6}, rng, 0.5f, 1.5f));
  auto* beta = g->add_constant("beta", random_tensor({6}, rng));
  auto* mean = g->add_constant("mean", random_tensor({6}, rng));
  auto* var = g->add_constant("var", random_tensor({6}, rng, 0.2f, 2.f));
  auto* bn = g->add_node({.name = "bn",
                          .op_type = "BatchNormalization",
                          .inputs = {conv2->output(0), gamma, beta, mean, var},
                          .output_names = {"n"}});
  auto* add = g->add_node({.name = "add",
                           .op_type = "Add",
                           .inputs = {bn->output(0), skip->output(0)},
                           .output_names = {"a"}});
  auto* relu = g->add_node(
      {.name = "relu", .op_type = "Relu", .inputs = {add->output(0)}, .output_names = {"y"}});
  g->mark_output(relu->output(0));
  auto* lo = g->add_constant("lo", Tensor::scalar_f32(0.f));
  auto* hi = g->add_constant("hi", Tensor::scalar_f32(0.5f));
  auto* w3 = g->add_constant("w3", random_tensor({4, 6, 1, 1}, rng));
  auto* conv3 = g->add_node({.name = "conv3",
                             .op_type = "Conv",
                             .inputs = {skip->output(0), w3},
                             .output_names = {"c3"}});
  auto* clip = g->add_node({.name = "clip",
                            .op_type = "Clip",
                            .inputs = {conv3->output(0), lo, hi},
                            .output_names = {"z"}});
  g->mark_output(clip->output(0));
  return g;
}

TEST(FuseConvEpilogues, ResidualBlockIsEquivalent) {
  std::mt19937 rng(7);
  auto plain = residual_block(rng);
  runtime::resolve(*plain, {});
  auto fused = plain->clone();
  // conv1 + skip Relu cannot fuse (conv1's output feeds only the Relu, but the Relu's output
  // feeds two nodes, which is fine: conv1 -> Relu fuses), conv2 -> BN -> Add -> Relu fuses,
  // conv3 -> Clip fuses.
  EXPECT_EQ(runtime::fuse_conv_epilogues(*fused), 3u);
  EXPECT_NO_THROW(fused->check_consistency());
  ASSERT_EQ(fused->nodes().size(), 3u);
  for (const auto* n : fused->nodes()) EXPECT_EQ(n->op_type(), "FusedConv");
  EXPECT_EQ(fused->outputs()[0]->name(), "y");
  EXPECT_EQ(fused->outputs()[1]->name(), "z");

  Tensor x = random_tensor({2, 5, 9, 7}, rng);
  runtime::Executor a(*plain), b(*fused);
  auto ya = a.run(std::span(&x, 1));
  auto yb = b.run(std::span(&x, 1));
  for (size_t k = 0; k < 2; ++k) {
    ASSERT_EQ(ya[k].shape(), yb[k].shape());
    float max_ref = 1;
    for (float f : ya[k].span<float>()) max_ref = std::max(max_ref, std::fabs(f));
    for (int64_t i = 0; i < ya[k].numel(); ++i) {
      EXPECT_NEAR(ya[k].data<float>()[i], yb[k].data<float>()[i], 1e-5f * max_ref) << k << ":" << i;
    }
  }
  // Clip to 0.5 and Relu bounds hold exactly.
  for (float f : yb[1].span<float>()) {
    EXPECT_GE(f, 0.f);
    EXPECT_LE(f, 0.5f);
  }
}

TEST(FuseConvEpilogues, LeavesSharedIntermediatesAlone) {
  // conv -> Relu where the conv output also feeds the graph output: no fusion.
  std::mt19937 rng(3);
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{1, 2, 4, 4});
  auto* w = g->add_constant("w", random_tensor({2, 2, 1, 1}, rng));
  auto* conv = g->add_node({.op_type = "Conv", .inputs = {x, w}, .output_names = {"c"}});
  auto* relu = g->add_node({.op_type = "Relu", .inputs = {conv->output(0)}, .output_names = {"r"}});
  g->mark_output(conv->output(0));
  g->mark_output(relu->output(0));
  runtime::resolve(*g, {});
  EXPECT_EQ(runtime::fuse_conv_epilogues(*g), 0u);
  EXPECT_EQ(g->nodes().size(), 2u);
}

// Convolutions followed by an activation other than a clamp: SiLU as torch.onnx writes it
// (after fuse_silu), HardSwish, HardSigmoid with its alpha and beta, LeakyRelu, Sigmoid, the
// erf-form Gelu, and a Relu then a HardSwish, each on a convolution of its own kind (packed,
// depthwise, strided): each joins its convolution, and every output keeps its bits. Left
// alone: the tanh-form Gelu, and an activation of a convolution whose output is also read.
TEST(FuseConvEpilogues, ActivationsJoinTheirConvolutionWithTheSameBits) {
  std::mt19937 rng(21);
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{2, 16, 11, 9});
  int convs = 0;
  auto conv = [&](int64_t out_c, int64_t kernel, int64_t stride, int64_t group) {
    const std::string name = "conv" + std::to_string(++convs);
    auto* w = g->add_constant(name + "_w", random_tensor({out_c, 16 / group, kernel, kernel}, rng));
    auto* b = g->add_constant(name + "_b", random_tensor({out_c}, rng));
    std::map<std::string, graph::AttributeValue, std::less<>> a;
    const int64_t pad = kernel / 2;
    a["pads"] = std::vector<int64_t>{pad, pad, pad, pad};
    a["strides"] = std::vector<int64_t>{stride, stride};
    a["group"] = group;
    return g
        ->add_node({.name = name,
                    .op_type = "Conv",
                    .inputs = {x, w, b},
                    .output_names = {name},
                    .attributes = std::move(a)})
        ->output(0);
  };
  auto node = [&](const std::string& name, const char* op, std::vector<graph::Value*> inputs,
                  std::map<std::string, graph::AttributeValue, std::less<>> a = {}) {
    return g
        ->add_node({.name = name,
                    .op_type = op,
                    .inputs = std::move(inputs),
                    .output_names = {name},
                    .attributes = std::move(a)})
        ->output(0);
  };
  auto* c1 = conv(24, 1, 1, 1);
  g->mark_output(node("silu", "Mul", {node("sig", "Sigmoid", {c1}), c1}));
  g->mark_output(node("hswish", "HardSwish", {conv(20, 3, 1, 1)}));
  g->mark_output(
      node("hsig", "HardSigmoid", {conv(16, 3, 1, 16)}, {{"alpha", 0.25f}, {"beta", 0.375f}}));
  g->mark_output(node("leaky", "LeakyRelu", {conv(12, 3, 2, 1)}, {{"alpha", 0.2f}}));
  g->mark_output(node("sigmoid", "Sigmoid", {conv(32, 5, 2, 16)}));
  g->mark_output(node("gelu", "Gelu", {conv(8, 1, 1, 1)}));
  g->mark_output(node("relu_hswish", "HardSwish", {node("relu", "Relu", {conv(8, 3, 1, 1)})}));
  g->mark_output(node("gelu_tanh", "Gelu", {conv(8, 1, 1, 1)}, {{"approximate", "tanh"}}));
  auto* read_twice = conv(8, 1, 1, 1);
  g->mark_output(read_twice);
  g->mark_output(node("hswish_of_read", "HardSwish", {read_twice}));
  runtime::resolve(*g, {});
  auto fused = g->clone();
  EXPECT_EQ(runtime::fuse_silu(*fused), 1u);
  EXPECT_EQ(runtime::fuse_conv_epilogues(*fused), 7u);
  EXPECT_NO_THROW(fused->check_consistency());
  expect_same_output_names(*g, *fused);
  std::map<std::string, int> ops = op_counts(*fused);
  EXPECT_EQ(ops["FusedConv"], 7);
  EXPECT_EQ(ops["Conv"], 2);
  EXPECT_EQ(ops["Gelu"], 1);
  EXPECT_EQ(ops["HardSwish"], 1);
  EXPECT_EQ(ops.size(), 4u);
  for (const auto* n : fused->nodes()) {
    if (n->op_type() == "FusedConv" && n->name() == "conv3") {
      EXPECT_EQ(n->attr_string("activation"), "HardSigmoid");
      EXPECT_EQ(n->attr_float("alpha"), 0.25f);
      EXPECT_EQ(n->attr_float("beta"), 0.375f);
    }
  }
  Tensor xs = random_tensor({2, 16, 11, 9}, rng, -3.f, 3.f);
  expect_same_output_bits(*g, *fused, std::span(&xs, 1));
}

// A Q/DQ graph as an export writes it: each convolution's output, after its Relu or none, read
// by a QuantizeLinear → DequantizeLinear pair alone. After fuse_qdq the pairs that alone read a
// convolution's output join it (int8 and uint8 grids, zero points, saturation); the model
// input's pair, a pair on an output that is also read elsewhere, a per-channel pair and one
// whose scale the FakeQuant kernel rejects stay apart. The same bits as the unfused graph.
TEST(FuseConvOutputQuant, APairThatAloneReadsAConvolutionJoinsItWithTheSameBits) {
  std::mt19937 rng(5);
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{2, 8, 10, 9});
  int nodes = 0;
  auto node = [&](const char* op, std::vector<graph::Value*> inputs,
                  std::map<std::string, graph::AttributeValue, std::less<>> a = {}) {
    const std::string name = std::string(op) + std::to_string(++nodes);
    return g
        ->add_node({.name = name,
                    .op_type = op,
                    .inputs = std::move(inputs),
                    .output_names = {name},
                    .attributes = std::move(a)})
        ->output(0);
  };
  auto qdq = [&](graph::Value* v, Tensor scale, Tensor zero_point) {
    const std::string n = std::to_string(++nodes);
    auto* s = g->add_constant("scale" + n, std::move(scale));
    auto* z = g->add_constant("zero_point" + n, std::move(zero_point));
    return node("DequantizeLinear", {node("QuantizeLinear", {v, s, z}), s, z});
  };
  auto conv = [&](graph::Value* in, int64_t in_c, int64_t out_c, int64_t kernel) {
    auto* w = g->add_constant("w" + std::to_string(++nodes),
                              random_tensor({out_c, in_c, kernel, kernel}, rng));
    auto* b = g->add_constant("b" + std::to_string(++nodes), random_tensor({out_c}, rng));
    const int64_t pad = kernel / 2;
    return node("Conv", {in, w, b}, {{"pads", std::vector<int64_t>{pad, pad, pad, pad}}});
  };
  auto i8 = [](int8_t v) { return Tensor::from_vector<int8_t>({}, {v}); };
  auto u8 = [](uint8_t v) { return Tensor::from_vector<uint8_t>({}, {v}); };
  auto f32 = [](float v) { return Tensor::from_vector<float>({}, {v}); };
  auto* in = qdq(x, f32(0.02f), i8(0));
  auto* a = qdq(node("Relu", {conv(in, 8, 16, 3)}), f32(0.05f), u8(3));  // joins (FusedConv)
  auto* b = qdq(conv(a, 16, 12, 1), f32(0.04f), i8(-7));                 // joins (plain Conv)
  auto* c = qdq(conv(b, 12, 12, 3), f32(0.01f), i8(2));                  // saturates, joins
  auto* shared = conv(c, 12, 8, 1);
  g->mark_output(shared);
  g->mark_output(qdq(shared, f32(0.05f), i8(0)));  // the output is read twice: stays
  g->mark_output(qdq(conv(c, 12, 4, 1), Tensor::from_vector<float>({4}, {0.1f, 0.2f, 0.3f, 0.4f}),
                     Tensor::from_vector<int8_t>({4}, {0, 1, 2, 3})));  // per channel: stays
  runtime::resolve(*g, {});
  auto fused = g->clone();
  EXPECT_EQ(runtime::fuse_conv_epilogues(*fused), 1u);
  EXPECT_EQ(runtime::fuse_qdq(*fused), 6u);
  EXPECT_EQ(runtime::fuse_conv_output_quant(*fused), 3u);
  EXPECT_NO_THROW(fused->check_consistency());
  expect_same_output_names(*g, *fused);
  std::map<std::string, int> ops = op_counts(*fused);
  EXPECT_EQ(ops["FusedConv"], 3);
  EXPECT_EQ(ops["Conv"], 2);
  EXPECT_EQ(ops["FakeQuant"], 3);
  EXPECT_EQ(ops.size(), 3u);
  Tensor xs = random_tensor({2, 8, 10, 9}, rng, -3.f, 3.f);
  expect_same_output_bits(*g, *fused, std::span(&xs, 1));

  // A zero scale: the pair stays a FakeQuant, whose kernel rejects it.
  auto z = std::make_unique<graph::Graph>();
  auto* zx = z->add_input("x", DType::kFloat32, Shape{1, 2, 3, 3});
  auto* zc = testing::add(*z, "conv", "Conv",
                          {zx, z->add_constant("w", random_tensor({2, 2, 1, 1}, rng))});
  auto* zs = z->add_constant("s", f32(0.0f));
  auto* zz = z->add_constant("z", i8(0));
  auto* zq = testing::add(*z, "q", "QuantizeLinear", {zc, zs, zz});
  z->mark_output(testing::add(*z, "dq", "DequantizeLinear", {zq, zs, zz}));
  runtime::resolve(*z, {});
  EXPECT_EQ(runtime::fuse_qdq(*z), 1u);
  EXPECT_EQ(runtime::fuse_conv_output_quant(*z), 0u);
  EXPECT_EQ(op_counts(*z)["FakeQuant"], 1);
}

// x -> Sigmoid -> Mul(x, ·) -> y1 (SiLU, either operand order), and three pairs that are not
// SiLU: Mul(Sigmoid(x), b) with b another tensor, a Sigmoid read twice, a Sigmoid that is a
// graph output.
TEST(FuseSilu, FusesXTimesSigmoidXOnlyWithTheSameBits) {
  std::mt19937 rng(11);
  auto g = std::make_unique<graph::Graph>();
  const Shape shape{2, 3, 5, 7};
  auto* x = g->add_input("x", DType::kFloat32, shape);
  auto* b = g->add_input("b", DType::kFloat32, shape);
  auto node = [&](const char* name, const char* op, std::vector<graph::Value*> inputs) {
    return g->add_node({.name = name, .op_type = op, .inputs = inputs, .output_names = {name}})
        ->output(0);
  };
  auto* s1 = node("s1", "Sigmoid", {x});
  g->mark_output(node("y1", "Mul", {x, s1}));
  auto* s2 = node("s2", "Sigmoid", {b});
  g->mark_output(node("y2", "Mul", {s2, b}));
  auto* s3 = node("s3", "Sigmoid", {x});
  g->mark_output(node("y3", "Mul", {s3, b}));
  auto* s4 = node("s4", "Sigmoid", {b});
  g->mark_output(node("y4", "Mul", {b, s4}));
  g->mark_output(node("y5", "Add", {s4, x}));
  auto* s6 = node("s6", "Sigmoid", {x});
  g->mark_output(s6);
  g->mark_output(node("y6", "Mul", {x, s6}));
  auto fused = fused_copy(*g, runtime::fuse_silu, 2u);
  std::map<std::string, int> ops = op_counts(*fused);
  EXPECT_EQ(ops["Silu"], 2);
  EXPECT_EQ(ops["Sigmoid"], 3);
  EXPECT_EQ(ops["Mul"], 3);
  // Values across the sigmoid's range, its saturation and both signs of zero included.
  Tensor xs = random_tensor(shape, rng, -20.f, 20.f);
  Tensor bs = random_tensor(shape, rng, -4.f, 4.f);
  xs.data<float>()[0] = 0.0f;
  xs.data<float>()[1] = -0.0f;
  xs.data<float>()[2] = -100.0f;
  xs.data<float>()[3] = 100.0f;
  const Tensor inputs[] = {xs, bs};
  expect_same_output_bits(*g, *fused, inputs);
}

// x -> Div(√2) -> Erf -> Add(1) -> Mul(x, ·) -> Mul(0.5) -> y1 (GELU as torch.onnx writes it,
// with the Add's and Muls' operands either way round), and chains that are not GELU: another
// divisor, a Mul by another tensor than x, an Erf read twice.
TEST(FuseGelu, FusesTheErfChainOnlyWithTheSameBits) {
  std::mt19937 rng(12);
  auto g = std::make_unique<graph::Graph>();
  const Shape shape{2, 3, 5, 7};
  auto* x = g->add_input("x", DType::kFloat32, shape);
  auto* b = g->add_input("b", DType::kFloat32, shape);
  auto scalar = [&](const char* name, float v) {
    return g->add_constant(name, Tensor::from_vector<float>({}, {v}));
  };
  auto* root2 = scalar("root2", 1.41421356237309504880f);
  auto* root2_off = scalar("root2_off", std::nextafter(1.41421356237309504880f, 2.0f));
  auto* one = scalar("one", 1.0f);
  auto* half = scalar("half", 0.5f);
  auto node = [&](const char* name, const char* op, std::vector<graph::Value*> inputs) {
    return g->add_node({.name = name, .op_type = op, .inputs = inputs, .output_names = {name}})
        ->output(0);
  };
  // GELU, in both operand orders.
  auto* e1 = node("e1", "Erf", {node("d1", "Div", {x, root2})});
  g->mark_output(node("y1", "Mul", {node("m1", "Mul", {x, node("a1", "Add", {e1, one})}), half}));
  auto* e2 = node("e2", "Erf", {node("d2", "Div", {b, root2})});
  g->mark_output(node("y2", "Mul", {half, node("m2", "Mul", {node("a2", "Add", {one, e2}), b})}));
  // Not GELU: √2's neighbour, a Mul by b where x is divided, an Erf read twice.
  auto* e3 = node("e3", "Erf", {node("d3", "Div", {x, root2_off})});
  g->mark_output(node("y3", "Mul", {node("m3", "Mul", {x, node("a3", "Add", {e3, one})}), half}));
  auto* e4 = node("e4", "Erf", {node("d4", "Div", {x, root2})});
  g->mark_output(node("y4", "Mul", {node("m4", "Mul", {b, node("a4", "Add", {e4, one})}), half}));
  auto* e5 = node("e5", "Erf", {node("d5", "Div", {x, root2})});
  g->mark_output(node("y5", "Mul", {node("m5", "Mul", {x, node("a5", "Add", {e5, one})}), half}));
  g->mark_output(node("y6", "Neg", {e5}));
  auto fused = fused_copy(*g, runtime::fuse_gelu, 2u);
  std::map<std::string, int> ops = op_counts(*fused);
  EXPECT_EQ(ops["Gelu"], 2);
  EXPECT_EQ(ops["Erf"], 3);
  // Both branches of erf (|x / √2| below and above 1), its saturation, both zeros, NaN.
  Tensor xs = random_tensor(shape, rng, -8.f, 8.f);
  Tensor bs = random_tensor(shape, rng, -2.f, 2.f);
  xs.data<float>()[0] = 0.0f;
  xs.data<float>()[1] = -0.0f;
  xs.data<float>()[2] = -100.0f;
  xs.data<float>()[3] = 100.0f;
  xs.data<float>()[4] = std::nanf("");
  const Tensor inputs[] = {xs, bs};
  expect_same_output_bits(*g, *fused, inputs);
}

TEST(FuseMatMulAdd, FusesALinearLayerOnlyWithTheSameBits) {
  std::mt19937 rng(13);
  auto g = std::make_unique<graph::Graph>();
  // k = 600: the packed product sums in three passes over k, so a row added before the first
  // of them (Gemm's bias) would round differently from the Add after the last.
  const Shape shape{2, 5, 600};
  const int64_t n = 40;  // one full column panel and a partial one
  auto* x = g->add_input("x", DType::kFloat32, shape);
  auto* row_input = g->add_input("row", DType::kFloat32, Shape{n});
  // k = 200: one pass, where the row joins the sums as a bias does.
  auto* x1 = g->add_input("x1", DType::kFloat32, Shape{3, 7, 200});
  auto constant = [&](const char* name, Shape s, float lo, float hi) {
    return g->add_constant(name, random_tensor(s, rng, lo, hi));
  };
  auto node = [&](const char* name, const char* op, std::vector<graph::Value*> inputs) {
    return g->add_node({.name = name, .op_type = op, .inputs = inputs, .output_names = {name}})
        ->output(0);
  };
  auto weight = [&](const char* name) { return constant(name, Shape{600, n}, -1.f, 1.f); };
  // Linear layers, the row on either side of the Add, as [n] and as [1, 1, n].
  g->mark_output(
      node("y1", "Add",
           {node("p1", "MatMul", {x, weight("w1")}), constant("b1", Shape{n}, -300.f, 300.f)}));
  g->mark_output(node(
      "y2", "Add",
      {constant("b2", Shape{1, 1, n}, -300.f, 300.f), node("p2", "MatMul", {x, weight("w2")})}));
  auto* w7 = constant("w7", Shape{200, n}, -1.f, 1.f);
  g->mark_output(
      node("y7", "Add", {node("p7", "MatMul", {x1, w7}), constant("b7", Shape{n}, -300.f, 300.f)}));
  // Not fused: an Add of a full tensor, of a row that is not a constant, and a product that is
  // also read by another node.
  g->mark_output(node(
      "y3", "Add",
      {node("p3", "MatMul", {x, weight("w3")}), constant("b3", Shape{2, 5, n}, -300.f, 300.f)}));
  g->mark_output(node("y4", "Add", {node("p4", "MatMul", {x, weight("w4")}), row_input}));
  auto* p5 = node("p5", "MatMul", {x, weight("w5")});
  g->mark_output(node("y5", "Add", {p5, constant("b5", Shape{n}, -300.f, 300.f)}));
  g->mark_output(node("y6", "Neg", {p5}));
  auto fused = fused_copy(*g, runtime::fuse_matmul_add, 3u);
  std::map<std::string, int> ops = op_counts(*fused);
  EXPECT_EQ(ops["MatMulAdd"], 3);
  EXPECT_EQ(ops["MatMul"], 3);
  EXPECT_EQ(ops["Add"], 3);
  Tensor xs = random_tensor(shape, rng, -4.f, 4.f);
  xs.data<float>()[0] = std::nanf("");
  xs.data<float>()[600] = std::numeric_limits<float>::infinity();
  xs.data<float>()[1200] = -0.0f;
  const Tensor inputs[] = {xs, random_tensor(Shape{n}, rng, -300.f, 300.f),
                           random_tensor(Shape{3, 7, 200}, rng, -4.f, 4.f)};
  expect_same_output_bits(*g, *fused, inputs);
}

// The activation node after a Linear layer joins its MatMulAdd, applied to each block of the
// product once the row is in: the bits of the three nodes, for one pass over k and for several.
TEST(FuseMatMulAdd, TheActivationAfterJoinsWithTheSameBits) {
  std::mt19937 rng(17);
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{2, 9, 600});
  auto* x1 = g->add_input("x1", DType::kFloat32, Shape{3, 7, 200});
  auto node = [&](const std::string& name, const char* op, std::vector<graph::Value*> inputs) {
    return g->add_node({.name = name, .op_type = op, .inputs = inputs, .output_names = {name}})
        ->output(0);
  };
  auto scalar = [&](const std::string& name, float v) {
    return g->add_constant(name, Tensor::scalar_f32(v));
  };
  const int64_t n = 40;
  int layer = 0;
  auto linear = [&](graph::Value* in) {
    const std::string i = std::to_string(layer++);
    const int64_t k = in->shape()->back();
    return node("y" + i, "Add",
                {node("p" + i, "MatMul",
                      {in, g->add_constant("w" + i, random_tensor(Shape{k, n}, rng, -.2f, .2f))}),
                 g->add_constant("b" + i, random_tensor(Shape{n}, rng, -3.f, 3.f))});
  };
  // GELU as torch.onnx writes it, SiLU, Relu, HardSwish and Sigmoid, over three passes of k and
  // over one.
  for (graph::Value* in : {x, x1}) {
    const std::string i = std::to_string(layer);
    graph::Value* y = linear(in);
    graph::Value* erf = node(
        "ge" + i, "Erf", {node("gd" + i, "Div", {y, scalar("s" + i, 1.41421356237309504880f)})});
    graph::Value* gelu =
        node("gm" + i, "Mul", {y, node("ga" + i, "Add", {erf, scalar("one" + i, 1.f)})});
    g->mark_output(node("gh" + i, "Mul", {gelu, scalar("half" + i, .5f)}));
    graph::Value* z = linear(in);
    g->mark_output(node("sm" + i, "Mul", {z, node("ss" + i, "Sigmoid", {z})}));
    g->mark_output(node("r" + i, "Relu", {linear(in)}));
    g->mark_output(node("hs" + i, "HardSwish", {linear(in)}));
    g->mark_output(node("sg" + i, "Sigmoid", {linear(in)}));
  }
  runtime::resolve(*g, {});
  auto fused = g->clone();
  EXPECT_EQ(runtime::fuse_silu(*fused), 2u);
  EXPECT_EQ(runtime::fuse_gelu(*fused), 2u);
  EXPECT_EQ(runtime::fuse_matmul_add(*fused), 10u);
  EXPECT_NO_THROW(fused->check_consistency());
  expect_same_output_names(*g, *fused);
  std::map<std::string, int> ops = op_counts(*fused);
  EXPECT_EQ(ops["MatMulAdd"], 10);
  EXPECT_EQ(ops.size(), 1u) << "every activation joined its Linear layer";
  Tensor xs = random_tensor(Shape{2, 9, 600}, rng, -4.f, 4.f);
  xs.data<float>()[0] = std::nanf("");
  const Tensor inputs[] = {xs, random_tensor(Shape{3, 7, 200}, rng, -4.f, 4.f)};
  expect_same_output_bits(*g, *fused, inputs, true);
}

}  // namespace
}  // namespace qforge
