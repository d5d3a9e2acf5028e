// Upsample (opset 9), Tile, ArgMax, ReduceMax, ReduceSum and Einsum as users' models bring them
// (data/generate/user_op_models.py): every model against ONNX Runtime, the opset-9 Upsample and
// the Einsum equations against PyTorch's outputs, a Conv → Tile → ReduceMax/ReduceSum graph
// trained against PyTorch's gradients, and the errors that name the node.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "fuzz/seed_models.h"
#include "graph/einsum_import.h"
#include "graph/onnx_import.h"
#include "kernels/reference/reduce_reference.h"
#include "runtime/resolve.h"
#include "runtime/session.h"
#include "runtime/training.h"
#include "tests/support/errors.h"
#include "tests/support/gradient_checks.h"
#include "tests/support/op_runner.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_count.h"
#include "tests/support/training_golden.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Shape;
using kernels::Tensor;
using testing::data_path;
using testing::error_of;
using testing::expect_close_scaled;
using testing::OneNodeGraph;

std::string model_path(const std::string& name) {
  return data_path("models/ops/" + name + ".onnx");
}

const char* const kModels[] = {
    "upsample7",
    "upsample8",
    "upsample9",
    "resize10_nearest_down",
    "resize10_nearest_up",
    "resize10_linear",
    "reduce_chain_opset17",
    "reduce_chain_opset11",
    "reduce_opset18",
    "tile_repeats",
    "argmax",
    "argmax_select_last",
    "einsum_bmm",
    "einsum_attention_scores",
    "einsum_ellipsis",
    "einsum_transposed_output",
    "einsum_weight",
    "einsum_implicit",
    "einsum_row_dot",
    "einsum_dot",
    "einsum_outer",
    "einsum_two_contracted",
    "einsum_own_batches",
    "einsum_summed_alone",
    "einsum_matrix_vector",
    "einsum_ellipsis_dot",
    "einsum_net_opset12",
    "einsum_net_opset13",
    "sum_mean",
    "mean_opset8",
};

// Each model in qforge and in ONNX Runtime on the same input, on a grid of halves so that rows
// have ties (ArgMax's first or last index, ReduceMax's equal maxima).
TEST(UserOps, ModelsMatchOnnxRuntime) {
  for (const char* name : kModels) {
    SCOPED_TRACE(name);
    const std::string path = model_path(name);
    runtime::Session session(graph::load_onnx(path));
    std::vector<Tensor> inputs;
    uint32_t seed = 5;
    for (const graph::Value* input : session.graph().inputs()) {
      ASSERT_TRUE(input->has_shape());
      Tensor x = testing::random_f32(*input->shape(), seed++, -2.0f, 2.0f);
      for (int64_t i = 0; i < x.numel(); ++i) {
        x.data<float>()[i] = std::round(x.data<float>()[i] * 2.0f) / 2.0f;
      }
      inputs.push_back(std::move(x));
    }
    const std::vector<Tensor> want = testing::run_ort(path, inputs);
    const std::span<const Tensor> got = session.run(inputs);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      expect_close_scaled(got[i], want[i], 1e-6, "output " + std::to_string(i));
    }
  }
}

// torch.onnx's opset-9 Upsample becomes a Resize in Upsample's semantics (asymmetric source
// coordinates, nearest by truncation) under the Upsample's name and output: nearest matches
// PyTorch exactly; linear matches ONNX's definition (PyTorch's own bilinear is half-pixel, which
// opset 9 cannot express, as torch.onnx warns).
TEST(UserOps, Opset9UpsampleBecomesResizeInUpsampleSemantics) {
  auto graph = graph::load_onnx(model_path("upsample9"));
  std::vector<std::string> resizes;
  for (const graph::Node* n : graph->nodes()) {
    ASSERT_NE(n->op_type(), "Upsample");
    if (n->op_type() != "Resize") continue;
    resizes.push_back(n->name());
    EXPECT_EQ(n->attr_string("coordinate_transformation_mode", ""), "asymmetric") << n->name();
    if (n->attr_string("mode", "nearest") == "nearest") {
      EXPECT_EQ(n->attr_string("nearest_mode", ""), "floor") << n->name();
    }
  }
  EXPECT_EQ(resizes, (std::vector<std::string>{"/nearest/Upsample", "/bilinear/Upsample"}));
  EXPECT_NE(graph->find_value("/nearest/Upsample_output_0"), nullptr);

  const auto golden = io::read_npz(data_path("models/ops/upsample9.npz"));
  runtime::Session session(std::move(graph));
  const std::span<const Tensor> y = session.run(golden.at("x"));
  ASSERT_EQ(y.size(), 2u);
  expect_close_scaled(y[0], golden.at("y0"), 0.0, "nearest against PyTorch");
  expect_close_scaled(y[1], golden.at("y1"), 1e-6, "linear against ONNX's definition");
}

TEST(UserOps, Opset10NearestResizeScalesOnBothSidesOfOneAreRefused) {
  const std::string message = error_of(
      ErrorKind::kUnsupported, [] { graph::load_onnx(model_path("resize10_nearest_mixed")); });
  EXPECT_NE(message.find("import: node 'resize' (Resize): expected nearest scales all >= 1 or "
                         "all <= 1 below opset 11"),
            std::string::npos)
      << message;
}

// Upsample with its scales an attribute (opsets 7 and 8): the converter's Constant scales, the
// node's name and output kept, Upsample's semantics (the outputs: ModelsMatchOnnxRuntime).
TEST(UserOps, Opset7And8UpsampleKeepTheirNames) {
  for (const char* name : {"upsample7", "upsample8"}) {
    SCOPED_TRACE(name);
    auto graph = graph::load_onnx(model_path(name));
    std::vector<std::string> resizes;
    for (const graph::Node* n : graph->nodes()) {
      if (n->op_type() != "Resize") continue;
      resizes.push_back(n->name() + " -> " + n->output(0)->name());
      EXPECT_EQ(n->attr_string("coordinate_transformation_mode", ""), "asymmetric");
    }
    EXPECT_EQ(resizes, (std::vector<std::string>{"up_nearest -> y0", "up_linear -> y1"}));
  }
}

// An opset-9 model of one Upsample; `scales` an initializer, `mode` its attribute.
std::string upsample_model(int opset, const std::string& mode, std::vector<float> scales) {
  onnx::ModelProto model;
  model.set_ir_version(4);
  auto* op = model.add_opset_import();
  op->set_domain("");
  op->set_version(opset);
  auto* g = model.mutable_graph();
  g->set_name("upsample");
  for (auto [list, name] : {std::pair{g->add_input(), "x"}, std::pair{g->add_output(), "y"}}) {
    list->set_name(name);
    auto* t = list->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t d : {1, 2, 3, 4}) t->mutable_shape()->add_dim()->set_dim_value(d);
    if (std::string(name) == "y") t->clear_shape();
  }
  auto* s = g->add_initializer();
  s->set_name("scales");
  s->set_data_type(onnx::TensorProto::FLOAT);
  s->add_dims(static_cast<int64_t>(scales.size()));
  for (float v : scales) s->add_float_data(v);
  auto* n = g->add_node();
  n->set_op_type("Upsample");
  n->set_name("up");
  n->add_input("x");
  n->add_input("scales");
  n->add_output("y");
  auto* a = n->add_attribute();
  a->set_name("mode");
  a->set_type(onnx::AttributeProto::STRING);
  a->set_s(mode);
  return model.SerializeAsString();
}

TEST(UserOps, UpsampleErrorsNameTheNode) {
  const std::string cubic = error_of(ErrorKind::kInvalid, [] {
    graph::parse_onnx(upsample_model(9, "cubic", {1, 1, 2, 2}), "m.onnx");
  });
  EXPECT_NE(cubic.find("node 'up' (Upsample): expected attribute 'mode' \"nearest\" or \"linear\", "
                       "got \"cubic\""),
            std::string::npos)
      << cubic;
  const std::string down = error_of(ErrorKind::kInvalid, [] {
    graph::parse_onnx(upsample_model(9, "nearest", {1, 1, 0.5f, 2}), "m.onnx");
  });
  EXPECT_NE(down.find("node 'up' (Upsample): expected finite scales >= 1, got scale 0.500000 at "
                      "axis 2"),
            std::string::npos)
      << down;
  const std::string input_at_8 = error_of(ErrorKind::kInvalid, [] {
    graph::parse_onnx(upsample_model(8, "nearest", {1, 1, 2, 2}), "m.onnx");
  });
  EXPECT_NE(input_at_8.find("node 'up' (Upsample): expected input X and attribute 'scales' at "
                            "opset 7 and 8, got 2 inputs without attribute 'scales'"),
            std::string::npos)
      << input_at_8;
  const std::string late = error_of(ErrorKind::kInvalid, [] {
    graph::parse_onnx(upsample_model(13, "nearest", {1, 1, 2, 2}), "m.onnx");
  });
  EXPECT_NE(late.find("node 'up' (Upsample): expected Upsample at opset 9 or older (Resize "
                      "replaces it from opset 10), got opset 13"),
            std::string::npos)
      << late;
  // A scale other than 1 on the channels is a valid Upsample the Resize kernel does not run.
  const std::string channels = error_of(ErrorKind::kUnsupported, [] {
    runtime::Session session(graph::parse_onnx(upsample_model(9, "nearest", {1, 2, 2, 2}), "m"));
    session.run(Tensor(DType::kFloat32, {1, 2, 3, 4}));
  });
  EXPECT_NE(channels.find("node 'up' (Resize): expected scales of 1 on the batch and channel axes"),
            std::string::npos)
      << channels;
}

// Conv → Tile → ReduceMax (every maximum tied twice by the Tile) and ReduceSum trained one step:
// the outputs and every parameter's gradient against PyTorch's.
TEST(UserOps, TrainingGradientsMatchPyTorch) {
  auto graph = graph::load_onnx(model_path("reduce_chain_opset17"));
  const auto golden = io::read_npz(data_path("models/ops/reduce_chain.npz"));
  testing::expect_training_step_matches(*graph, golden, runtime::trainable_initializers(*graph),
                                        1e-5, 2);
}

// The Tile kernel (an Expand of x viewed with a unit axis before each axis) and its backward
// (the sum over the repeats) against the naive reference on awkward shapes and repeats, bit for
// bit at 1 and 2 threads.
TEST(UserOps, TileForwardAndBackwardMatchTheReference) {
  struct Case {
    Shape shape;
    std::vector<int64_t> repeats;
  };
  const Case cases[] = {{{13}, {3}},
                        {{3, 17}, {2, 1}},
                        {{2, 5, 7}, {1, 3, 2}},
                        {{1, 1, 1}, {4, 1, 5}},
                        {{4, 3, 5, 7}, {2, 2, 1, 3}},
                        {{2, 3}, {1, 0}},
                        {{127, 2}, {1, 2}}};
  uint32_t seed = 17;
  for (const Case& c : cases) {
    SCOPED_TRACE(kernels::shape_str(c.shape) + " x " + kernels::shape_str(c.repeats));
    const Tensor x = testing::random_f32(c.shape, seed++, -2.0f, 2.0f);
    const Tensor repeats =
        Tensor::from_vector<int64_t>({static_cast<int64_t>(c.repeats.size())}, c.repeats);
    const OneNodeGraph node("Tile", {}, {{x}, {repeats, true}}, 1);
    const std::vector<runtime::TensorInfo> infos = node.infer();
    const Tensor want = kernels::reference::tile(x, c.repeats);
    ASSERT_EQ(infos[0].shape, want.shape());
    const Tensor dy = testing::random_f32(want.shape(), seed++, -1.0f, 1.0f);
    const Tensor want_dx = kernels::reference::tile_backward(dy, c.shape);
    Tensor abs_dy = dy.clone();
    for (int64_t i = 0; i < abs_dy.numel(); ++i) {
      abs_dy.data<float>()[i] = std::abs(abs_dy.data<float>()[i]);
    }
    const Tensor magnitude = kernels::reference::tile_backward(abs_dy, c.shape);
    std::vector<float> first_dx;
    for (int threads : {1, 2}) {
      testing::ThreadCount tc(threads);
      std::unique_ptr<runtime::OpKernel> kernel = node.create();
      Tensor y(DType::kFloat32, want.shape());
      std::vector<Tensor> inputs = {x, repeats};
      std::vector<Tensor> outputs = {y};
      kernel->forward(inputs, outputs, nullptr);
      EXPECT_EQ(std::vector<float>(y.data<float>(), y.data<float>() + y.numel()),
                std::vector<float>(want.data<float>(), want.data<float>() + want.numel()));
      ASSERT_TRUE(kernel->differentiable_input(0));
      EXPECT_FALSE(kernel->differentiable_input(1));
      std::vector<Tensor> grads = {Tensor(DType::kFloat32, c.shape), Tensor()};
      const std::vector<Tensor> dys = {dy};
      kernel->backward(inputs, outputs, dys, grads, nullptr);
      const std::vector<float> dx(grads[0].data<float>(), grads[0].data<float>() + x.numel());
      testing::expect_matches_reference(
          dx, testing::to_double({want_dx.data<float>(), want_dx.data<float>() + x.numel()}),
          testing::to_double({magnitude.data<float>(), magnitude.data<float>() + x.numel()}), "dx");
      if (threads == 1) {
        first_dx = dx;
      } else {
        EXPECT_EQ(dx, first_dx) << "the gradient depends on the thread count";
      }
    }
  }
}

// A model returning both a ReduceMax and the ArgMax of the same values trains: ArgMax's int64
// output carries no gradient (as PyTorch's argmax), so backward passes it by, and w's gradient
// is the max's alone: dy at each row's maximum times x there.
TEST(UserOps, ArgMaxOutputTrainsBesideItsFloatSibling) {
  const int64_t n = 4, c = 7;
  graph::Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, Shape{n, c});
  graph::Value* w = g.add_constant("w", testing::random_f32({1, c}, 3, 0.5f, 1.5f));
  graph::Value* v =
      g.add_node({.name = "mul", .op_type = "Mul", .inputs = {x, w}, .output_names = {"v"}})
          ->output(0);
  g.mark_output(g.add_node({.name = "max",
                            .op_type = "ReduceMax",
                            .inputs = {v},
                            .output_names = {"m"},
                            .attributes = {{"axes", std::vector<int64_t>{1}}}})
                    ->output(0));
  g.mark_output(g.add_node({.name = "argmax",
                            .op_type = "ArgMax",
                            .inputs = {v},
                            .output_names = {"a"},
                            .attributes = {{"axis", int64_t{1}}}})
                    ->output(0));
  runtime::ResolveOptions options;
  options.parameters.insert("w");
  runtime::resolve(g, options);
  runtime::TrainingExecutor executor(g, runtime::TrainingOptions{{"w"}});
  const Tensor input = testing::random_f32({n, c}, 4, -2.0f, 2.0f);
  const Tensor dy = testing::random_f32({n, 1}, 5, -1.0f, 1.0f);
  const std::span<const Tensor> y = executor.forward({&input, 1});
  ASSERT_EQ(y.size(), 2u);
  const std::vector<int64_t> at = y[1].to_int64_vector();
  const std::vector<Tensor> grads = {dy, Tensor()};
  executor.backward(grads);
  std::vector<double> want(static_cast<size_t>(c), 0.0);
  for (int64_t b = 0; b < n; ++b) {
    const int64_t k = at[static_cast<size_t>(b)];
    want[static_cast<size_t>(k)] += double(dy.data<float>()[b]) * input.data<float>()[b * c + k];
  }
  const Tensor& grad = executor.parameters()[0].grad;
  size_t zeros = 0;
  for (int64_t k = 0; k < c; ++k) {
    const double expected = want[static_cast<size_t>(k)];
    EXPECT_NEAR(grad.data<float>()[k], expected, 1e-6 * std::max(1.0, std::abs(expected))) << k;
    zeros += expected == 0.0;
  }
  EXPECT_GT(zeros, 0u);  // channels that are no row's maximum get no gradient
}

TEST(UserOps, TileReduceAndArgMaxShapesAndErrors) {
  const Tensor x(DType::kFloat32, {2, 3, 5});
  auto ints = [](std::vector<int64_t> v) {
    return Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v);
  };
  EXPECT_EQ(OneNodeGraph("Tile", {}, {{x}, {ints({2, 1, 3}), true}}, 1).infer()[0].shape,
            (Shape{4, 3, 15}));
  EXPECT_EQ(OneNodeGraph("Tile", {}, {{x}, {ints({1, 0, 1}), true}}, 1).infer()[0].shape,
            (Shape{2, 0, 5}));
  const std::string count = error_of(ErrorKind::kInvalid, [&] {
    OneNodeGraph("Tile", {}, {{x}, {ints({2, 2}), true}}, 1).infer();
  });
  EXPECT_NE(count.find("node 'node' (Tile): expected 3 repeats, one per axis of [2, 3, 5], got "
                       "[2, 2]"),
            std::string::npos)
      << count;
  const std::string negative = error_of(ErrorKind::kInvalid, [&] {
    OneNodeGraph("Tile", {}, {{x}, {ints({1, -1, 1}), true}}, 1).infer();
  });
  EXPECT_NE(negative.find("expected repeats >= 0, got [1, -1, 1]"), std::string::npos) << negative;

  const auto arg =
      OneNodeGraph("ArgMax", {{"axis", int64_t{-2}}, {"keepdims", int64_t{0}}}, {{x}}, 1)
          .infer()[0];
  EXPECT_EQ(arg.dtype, DType::kInt64);
  EXPECT_EQ(arg.shape, (Shape{2, 5}));
  const std::string axis = error_of(ErrorKind::kInvalid, [&] {
    OneNodeGraph("ArgMax", {{"axis", int64_t{3}}}, {{x}}, 1).infer();
  });
  EXPECT_NE(axis.find("node 'node' (ArgMax): expected axis in [-3, 3), got 3"), std::string::npos)
      << axis;
  const std::string last = error_of(ErrorKind::kInvalid, [&] {
    OneNodeGraph("ArgMax", {{"select_last_index", int64_t{2}}}, {{x}}, 1).infer();
  });
  EXPECT_NE(last.find("expected attribute 'select_last_index' 0 or 1, got 2"), std::string::npos)
      << last;

  EXPECT_EQ(OneNodeGraph("ReduceSum", {{"keepdims", int64_t{0}}}, {{x}, {ints({0, -1}), true}}, 1)
                .infer()[0]
                .shape,
            (Shape{3}));
  EXPECT_EQ(
      OneNodeGraph("ReduceMax", {{"axes", std::vector<int64_t>{1}}}, {{x}}, 1).infer()[0].shape,
      (Shape{2, 1, 5}));
  EXPECT_EQ(
      OneNodeGraph("ReduceSum", {{"noop_with_empty_axes", int64_t{1}}}, {{x}, {ints({}), true}}, 1)
          .infer()[0]
          .shape,
      (Shape{2, 3, 5}));
  const std::string repeated = error_of(ErrorKind::kInvalid, [&] {
    OneNodeGraph("ReduceMax", {{"axes", std::vector<int64_t>{1, -2}}}, {{x}}, 1).infer();
  });
  EXPECT_NE(repeated.find("node 'node' (ReduceMax): expected distinct axes, got [1, -2]"),
            std::string::npos)
      << repeated;
}

// DepthToSpace in both modes against the element each output position takes by ONNX's
// definition, SpaceToDepth undoing DCR's; the shapes and the errors naming the node.
TEST(UserOps, DepthToSpaceAndSpaceToDepthMoveEachElementWhereOnnxSays) {
  auto run = [](const OneNodeGraph& node, const Tensor& in) {
    Tensor out(in.dtype(), node.infer()[0].shape);
    const Tensor ins[] = {in};
    Tensor outs[] = {out};
    node.create()->forward(ins, outs, nullptr);
    return out;
  };
  const int64_t n = 2, c = 8, h = 3, w = 2, b = 2;
  Tensor x(DType::kFloat32, {n, c, h, w});
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = static_cast<float>(i);
  for (const std::string mode : {"DCR", "CRD"}) {
    SCOPED_TRACE(mode);
    const Tensor y =
        run(OneNodeGraph("DepthToSpace", {{"blocksize", b}, {"mode", mode}}, {{x}}, 1), x);
    ASSERT_EQ(y.shape(), (Shape{n, c / 4, h * b, w * b}));
    for (int64_t in = 0; in < n; ++in) {
      for (int64_t oc = 0; oc < c / 4; ++oc) {
        for (int64_t oh = 0; oh < h * b; ++oh) {
          for (int64_t ow = 0; ow < w * b; ++ow) {
            const int64_t bh = oh % b, bw = ow % b;
            // DCR: the block offset is the channel's high part; CRD: its low part.
            const int64_t ic = mode == "DCR" ? (bh * b + bw) * (c / 4) + oc : oc * 4 + bh * b + bw;
            const float want = x.data<float>()[((in * c + ic) * h + oh / b) * w + ow / b];
            ASSERT_EQ(y.data<float>()[((in * (c / 4) + oc) * h * b + oh) * w * b + ow], want);
          }
        }
      }
    }
    if (mode == "DCR") {
      const Tensor back = run(OneNodeGraph("SpaceToDepth", {{"blocksize", b}}, {{y}}, 1), y);
      ASSERT_EQ(back.shape(), x.shape());
      EXPECT_EQ(std::memcmp(back.raw(), x.raw(), x.nbytes()), 0);
    }
  }
  auto error = [&](const std::string& op, int64_t blocksize, const std::string& mode) {
    return error_of(ErrorKind::kInvalid, [&] {
      OneNodeGraph(op, {{"blocksize", blocksize}, {"mode", mode}}, {{x}}, 1).infer();
    });
  };
  EXPECT_NE(error("DepthToSpace", 3, "DCR")
                .find("node 'node' (DepthToSpace): expected channels divisible by blocksize² 3²"),
            std::string::npos);
  EXPECT_NE(error("DepthToSpace", 2, "XYZ").find("expected mode DCR or CRD, got XYZ"),
            std::string::npos);
  EXPECT_NE(error("SpaceToDepth", 2, "DCR")
                .find("node 'node' (SpaceToDepth): expected height and width divisible by the "
                      "blocksize 2, got [2, 8, 3, 2]"),
            std::string::npos);
}

// The importer fuzz target's seed of the sampling, selection and scatter ops (fuzz/seed_models.h)
// computes every output as ONNX Runtime does, so that its mutations start from a model that runs.
TEST(UserOps, TheSamplingFuzzSeedRunsAsOnnxRuntimeRunsIt) {
  testing::TempDir dir;
  const std::string path = dir.file("sampling_net.onnx");
  testing::write_bytes(path, fuzz::sampling_net_model());
  const Tensor x = testing::random_f32({3, 4, 3, 3}, 23, -2.0f, 2.0f);
  runtime::Session session(graph::load_onnx(path));
  const std::span<const Tensor> got = session.run(x);
  const std::vector<Tensor> want = testing::run_ort(path, {x});
  ASSERT_EQ(got.size(), 5u);
  ASSERT_EQ(want.size(), got.size());
  for (size_t o = 0; o < got.size(); ++o) {
    SCOPED_TRACE(o);
    ASSERT_EQ(got[o].shape(), want[o].shape());
    const std::vector<float> a = got[o].to_float_vector(), b = want[o].to_float_vector();
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_NEAR(a[i], b[i], 1e-5f * (1 + std::abs(b[i]))) << i;
  }
}

// Each equation against PyTorch's einsum: the Einsum is gone, one MatMul under its name computes
// the product, among the ops of the lowering.
TEST(UserOps, EinsumBecomesMatMulAndMatchesPyTorch) {
  const auto golden = io::read_npz(data_path("models/ops/einsum.npz"));
  for (const char* name :
       {"einsum_bmm", "einsum_attention_scores", "einsum_ellipsis", "einsum_transposed_output",
        "einsum_weight", "einsum_implicit", "einsum_row_dot", "einsum_dot", "einsum_outer",
        "einsum_two_contracted", "einsum_own_batches", "einsum_summed_alone",
        "einsum_matrix_vector", "einsum_ellipsis_dot"}) {
    SCOPED_TRACE(name);
    auto graph = graph::load_onnx(model_path(name));
    size_t matmuls = 0;
    for (const graph::Node* n : graph->nodes()) {
      const std::string& op = n->op_type();
      EXPECT_TRUE(op == "MatMul" || op == "Transpose" || op == "Reshape" || op == "ReduceSum" ||
                  op == "Squeeze" || op == "Unsqueeze" || op == "Constant")
          << op;
      if (op == "MatMul") {
        ++matmuls;
        EXPECT_EQ(n->name(), "/Einsum");
      }
    }
    EXPECT_EQ(matmuls, 1u);
    runtime::Session session(std::move(graph));
    const std::string key(name);
    const std::vector<Tensor> inputs = {golden.at(key + "/a"), golden.at(key + "/b")};
    const std::span<const Tensor> y = session.run(inputs);
    ASSERT_EQ(y.size(), 1u);
    expect_close_scaled(y[0], golden.at(key + "/y0"), 1e-6, "y0");
  }
}

// The steps of each kind of equation, worked out by hand: inputs are the operands (0, 1, …)
// and then the steps in order.
TEST(UserOps, EinsumPlansAreTheFewestStepsAroundOneMatMulPerPair) {
  auto plan = [](const std::string& equation, std::vector<int64_t> ranks) {
    const graph::EinsumPlan p = graph::plan_einsum(equation, ranks);
    EXPECT_EQ(p.error, "") << equation;
    return graph::describe_einsum_plan(p);
  };
  EXPECT_EQ(plan("bij,bjk->bik", {3, 3}), "MatMul(0,1)");
  EXPECT_EQ(plan("bhqd, bhkd -> bhqk", {4, 4}), "Transpose[0,1,3,2](1) MatMul(0,2)");
  EXPECT_EQ(plan("bik,bkj->bji", {3, 3}), "MatMul(0,1) Transpose[0,2,1](2)");
  EXPECT_EQ(plan("bij,kj->bik", {3, 2}), "Transpose[1,0](1) MatMul(0,2)");
  // No letter of an input's own: unit rows and columns, squeezed after.
  EXPECT_EQ(plan("ij,ij->i", {2, 2}),
            "Unsqueeze[1](0) Unsqueeze[2](1) MatMul(2,3) Squeeze[1,2](4)");
  // Two contracted letters merged; the second input's merged [l, jk] transposed to [jk, l].
  EXPECT_EQ(plan("bijk,ljk->bil", {4, 3}),
            "Reshape[0,0,-1](0) Reshape[0,-1](1) Transpose[1,0](3) MatMul(2,4)");
  // No contracted letter: an outer product over a unit axis.
  EXPECT_EQ(plan("bi,bj->bij", {2, 2}), "Unsqueeze[2](0) Unsqueeze[1](1) MatMul(2,3)");
  // Both inputs have batch letters of their own: the first gets a unit axis for the second's.
  EXPECT_EQ(plan("bij,klj->bkil", {3, 3}), "Unsqueeze[1](0) Transpose[0,2,1](1) MatMul(2,3)");
  // Letters of one term alone are summed before the product.
  EXPECT_EQ(plan("bij,bk->bi", {3, 2}),
            "ReduceSum[2](0) ReduceSum[1](1) Unsqueeze[2](2) Unsqueeze[1,2](3) MatMul(4,5) "
            "Squeeze[2](6)");
  // Three terms: the first pair's product keeps the letters the third term and output need.
  EXPECT_EQ(plan("bij,jk,kl->bil", {3, 2, 2}), "MatMul(0,1) MatMul(3,2)");
  // '...' axes are letters of their own, right-aligned: here two.
  EXPECT_EQ(plan("...j,j->...", {3, 1}), "Unsqueeze[1](1) MatMul(0,2) Squeeze[2](3)");
  // '...' of fewer axes in one term (PyTorch allows it, ONNX's shape inference does not):
  // MatMul broadcasts the first term's leading axis.
  EXPECT_EQ(plan("...ij,...jk->...ik", {4, 3}), "MatMul(0,1)");
  EXPECT_EQ(plan("bij->jb", {3}), "ReduceSum[1](0) Transpose[1,0](1)");
  EXPECT_EQ(plan("ij->ij", {2}), "Identity(0)");
  EXPECT_EQ(plan("ij", {2}), "Identity(0)");
  EXPECT_EQ(plan("ji", {2}), "Transpose[1,0](0)");

  auto refused = [](const std::string& equation, std::vector<int64_t> ranks, bool unsupported) {
    const graph::EinsumPlan p = graph::plan_einsum(equation, ranks);
    EXPECT_TRUE(p.steps.empty()) << equation;
    EXPECT_EQ(p.unsupported, unsupported) << equation << ": " << p.error;
    return p.error;
  };
  EXPECT_EQ(refused("ii,ij->ij", {2, 2}, true).find("each letter once per term"), 0u);
  EXPECT_EQ(refused("ij,jk->il", {2, 2}, false), "output letters that an input has, got 'l'");
  EXPECT_EQ(refused("ij,jk->ii", {2, 2}, false), "each letter once in the output, got 'ii'");
  EXPECT_EQ(refused("i1,1k->ik", {2, 2}, false), "subscripts of letters and '...', got 'i1'");
  EXPECT_EQ(refused("i.j,jk->ik", {2, 2}, true).find("an ellipsis only at the start"), 0u);
  EXPECT_EQ(refused("...ij->ij", {3}, true),
            "the output to keep the inputs' '...' axes, not sum them");
  EXPECT_EQ(refused("ij,jk->ik", {3, 2}, false), "input 0 of rank 2 for its term, got rank 3");
  EXPECT_EQ(refused("...ijk->ijk", {2}, false), "input 0 of rank >= 3 for its term, got rank 2");
  EXPECT_EQ(refused("ij,jk", {2, 2, 2}, false),
            "as many inputs as the equation has terms (2), got 3");
  const graph::EinsumPlan unknown =
      graph::plan_einsum("i,...j->...ij", std::vector<int64_t>{1, -1});
  EXPECT_EQ(unknown.unknown_rank, 1);
  EXPECT_TRUE(unknown.unsupported);
}

// Six Einsums of the input with parameters (three terms, an implicit output, a sum over one term,
// '...', two contracted letters) trained one step at both axes forms (attributes at opset 12,
// inputs at 13): the outputs and every parameter's gradient against PyTorch's.
TEST(UserOps, EinsumTrainingGradientsMatchPyTorch) {
  const auto golden = io::read_npz(data_path("models/ops/einsum_net.npz"));
  for (const char* name : {"einsum_net_opset12", "einsum_net_opset13"}) {
    SCOPED_TRACE(name);
    auto graph = graph::load_onnx(model_path(name));
    for (const graph::Node* n : graph->nodes()) EXPECT_NE(n->op_type(), "Einsum");
    testing::expect_training_step_matches(*graph, golden, runtime::trainable_initializers(*graph),
                                          1e-5, 5);
  }
}

// The variadic Sum and Mean become Adds left to right (Mean's total then times the count's
// reciprocal): the last node keeps the name, a single input is an Identity, and the outputs are
// ONNX Runtime's bit for bit on random inputs (a division by the count fails here: last bits).
TEST(UserOps, SumAndMeanBecomeAddsUnderTheirNamesAndMatchOnnxRuntimeBitForBit) {
  const std::string path = model_path("sum_mean");
  auto graph = graph::load_onnx(path);
  std::map<std::string, std::string> ops;
  for (const graph::Node* n : graph->nodes()) {
    if (n->op_type() != "Constant") ops[n->name()] = n->op_type();
  }
  const std::map<std::string, std::string> want = {
      {"sum3/add_1", "Add"}, {"sum3", "Add"},      {"mean3/add_1", "Add"}, {"mean3/add_2", "Add"},
      {"mean3", "Mul"},      {"sum1", "Identity"}, {"mean1", "Identity"}};
  EXPECT_EQ(ops, want);
  runtime::Session session(std::move(graph));
  const std::vector<Tensor> inputs = {testing::random_f32({2, 3, 4}, 31, -2.0f, 2.0f),
                                      testing::random_f32({3, 1}, 32, -2.0f, 2.0f),
                                      testing::random_f32({4}, 33, -2.0f, 2.0f)};
  const std::vector<Tensor> reference = testing::run_ort(path, inputs);
  const std::span<const Tensor> got = session.run(inputs);
  ASSERT_EQ(got.size(), reference.size());
  for (size_t o = 0; o < got.size(); ++o) {
    SCOPED_TRACE(o);
    ASSERT_EQ(got[o].shape(), reference[o].shape());
    EXPECT_EQ(got[o].to_float_vector(), reference[o].to_float_vector());
  }
}

TEST(UserOps, DiagonalEinsumIsRefusedNamingNodeAndEquation) {
  const std::string message =
      error_of(ErrorKind::kUnsupported, [] { graph::load_onnx(model_path("einsum_diagonal")); });
  EXPECT_NE(message.find("import: node 'diagonal' (Einsum): equation 'ii,ij->j': expected each "
                         "letter once per term (a repeated one takes a diagonal), got 'ii'"),
            std::string::npos)
      << message;
}

}  // namespace
}  // namespace qforge
