// free_batch on small graphs resolved at one batch: the shape constants it writes, exactly (a
// Resize's sizes computed from the input's batch), and the freed graph run at another batch
// against the original run sample by sample.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "runtime/batch_dimension.h"
#include "runtime/resolve.h"
#include "runtime/session.h"
#include "tests/support/graph_builders.h"
#include "tests/support/random.h"

namespace qforge {
namespace {

using graph::Graph;
using kernels::DType;
using kernels::Tensor;
using testing::add;
using testing::int_const;

std::vector<int64_t> shape_input(const Graph& g, const std::string& node, size_t index = 1) {
  const Tensor& t = g.find_node(node)->input(index)->constant();
  return {t.data<int64_t>(), t.data<int64_t>() + t.numel()};
}

// nn.MultiheadAttention's layout at batch 1: tokens first, the batch folded with the heads, then
// with the tokens: [1, 8, 4] → [8, 1, 4] → [8, 1·2, 2] → … → [8·1, 4] → MatMul → [8, 1, 5].
// At batch 1 the Reshape to [8, 4] could put the batch on either axis; on axis 1 the MatMul
// would contract it, so the analysis takes axis 0.
std::unique_ptr<Graph> attention_layout(int64_t batch) {
  auto g = std::make_unique<Graph>();
  graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{batch, 8, 4});
  graph::Value* t =
      add(*g, "to_tokens", "Transpose", {x}, {{"perm", std::vector<int64_t>{1, 0, 2}}});
  graph::Value* heads =
      add(*g, "heads", "Reshape", {t, int_const(*g, "heads_shape", {8, batch * 2, 2})});
  graph::Value* h =
      add(*g, "heads_first", "Transpose", {heads}, {{"perm", std::vector<int64_t>{1, 0, 2}}});
  graph::Value* back =
      add(*g, "tokens_first", "Transpose", {h}, {{"perm", std::vector<int64_t>{1, 0, 2}}});
  graph::Value* rows =
      add(*g, "rows", "Reshape", {back, int_const(*g, "rows_shape", {8 * batch, 4})});
  graph::Value* w = g->add_constant("w", testing::random_f32({4, 5}, 7, -1.f, 1.f));
  graph::Value* y = add(*g, "proj", "MatMul", {rows, w});
  graph::Value* out =
      add(*g, "unrows", "Reshape", {y, int_const(*g, "unrows_shape", {8, batch, 5})});
  g->mark_output(
      add(*g, "to_batch", "Transpose", {out}, {{"perm", std::vector<int64_t>{1, 0, 2}}}));
  return g;
}

// Swin's window partition at batch 2: [B, 4, 4, 3] → [B, 2, 2, 2, 2, 3] → windows first →
// [B·4, 4, 3], then a class row concatenated from a constant that a fold expanded to the batch.
std::unique_ptr<Graph> window_layout(int64_t batch) {
  auto g = std::make_unique<Graph>();
  graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{batch, 4, 4, 3});
  graph::Value* split =
      add(*g, "split", "Reshape", {x, int_const(*g, "split_shape", {batch, 2, 2, 2, 2, 3})});
  graph::Value* windows = add(*g, "windows_first", "Transpose", {split},
                              {{"perm", std::vector<int64_t>{0, 1, 3, 2, 4, 5}}});
  graph::Value* flat = add(*g, "partition", "Reshape",
                           {windows, int_const(*g, "partition_shape", {batch * 4, 4, 3})});
  graph::Value* per_window =
      add(*g, "per_sample", "Reshape", {flat, int_const(*g, "per_sample_shape", {batch, 16, 3})});
  Tensor token(DType::kFloat32, {batch, 1, 3});
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t c = 0; c < 3; ++c)
      token.data<float>()[b * 3 + c] = 0.5f * static_cast<float>(c + 1);
  }
  graph::Value* cls = g->add_constant("cls_expanded", token);
  g->mark_output(add(*g, "with_class", "Concat", {cls, per_window}, {{"axis", int64_t{1}}}));
  return g;
}

// A bilinear upsampling to constant sizes that hold the batch, as resolution folds torch's
// F.interpolate(size=...) (Shape → Slice → Concat of a static tensor): [B, 2, 5, 7] → [B, 2, 9,
// 11].
std::unique_ptr<Graph> resize_to_sizes(int64_t batch) {
  auto g = std::make_unique<Graph>();
  graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{batch, 2, 5, 7});
  g->mark_output(add(*g, "upsample", "Resize",
                     {x, nullptr, nullptr, int_const(*g, "sizes", {batch, 2, 9, 11})},
                     {{"mode", std::string("linear")}}));
  return g;
}

// The freed graph at batch 5 against the original at batch 1, sample by sample, bit for bit.
void expect_same_per_sample(std::unique_ptr<Graph> freed,
                            const std::function<std::unique_ptr<Graph>(int64_t)>& make,
                            const kernels::Shape& sample) {
  kernels::Shape shape = sample;
  shape.insert(shape.begin(), 5);
  const Tensor input = testing::random_f32(shape, 3, -1.f, 1.f);
  runtime::Session session(std::move(freed));
  const Tensor batched = session.run(input)[0].clone();
  ASSERT_EQ(batched.dim(0), 5);
  for (int64_t i = 0; i < 5; ++i) {
    auto one = make(1);
    runtime::resolve(*one, {});
    runtime::Session single(std::move(one));
    const Tensor row = input.slice_rows(i, i + 1).clone();
    const Tensor expected = single.run(row)[0];
    const Tensor got = batched.slice_rows(i, i + 1);
    ASSERT_EQ(got.shape(), expected.shape());
    EXPECT_EQ(std::memcmp(got.raw(), expected.raw(), got.nbytes()), 0) << "sample " << i;
  }
}

TEST(BatchDimension, AttentionLayoutAtBatchOneTakesTheAxisTheMatMulKeeps) {
  auto g = attention_layout(1);
  runtime::resolve(*g, {});
  const auto axes = runtime::free_batch(*g, 1);
  EXPECT_EQ(shape_input(*g, "heads"), (std::vector<int64_t>{8, -1, 2}));
  EXPECT_EQ(shape_input(*g, "rows"), (std::vector<int64_t>{-1, 4}));
  EXPECT_EQ(shape_input(*g, "unrows"), (std::vector<int64_t>{8, -1, 5}));
  EXPECT_EQ(axes.at("rows_out").axis, 0);
  EXPECT_EQ(axes.at("rows_out").outer, 8);
  EXPECT_EQ(axes.at("heads_out").inner, 2);
  EXPECT_EQ(*g->inputs()[0]->shape(), (kernels::Shape{-1, 8, 4}));
  EXPECT_EQ(*g->outputs()[0]->shape(), (kernels::Shape{-1, 8, 5}));
  expect_same_per_sample(std::move(g), attention_layout, {8, 4});
}

TEST(BatchDimension, WindowPartitionFoldsTheBatchWithTheWindows) {
  auto g = window_layout(2);
  runtime::resolve(*g, {});
  runtime::free_batch(*g, 2);
  EXPECT_EQ(shape_input(*g, "split"), (std::vector<int64_t>{-1, 2, 2, 2, 2, 3}));
  EXPECT_EQ(shape_input(*g, "partition"), (std::vector<int64_t>{-1, 4, 3}));
  EXPECT_EQ(shape_input(*g, "per_sample"), (std::vector<int64_t>{-1, 16, 3}));
  // The class rows: one sample's row, expanded to the batch read from the input's shape.
  const graph::Node* expand = g->find_node("with_class")->input(0)->producer();
  ASSERT_NE(expand, nullptr);
  EXPECT_EQ(expand->op_type(), "Expand");
  EXPECT_EQ(expand->input(0)->constant().shape(), (kernels::Shape{1, 1, 3}));
  expect_same_per_sample(std::move(g), window_layout, {4, 4, 3});
}

TEST(BatchDimension, ResizeSizesReadTheBatchAtRunTime) {
  auto g = resize_to_sizes(2);
  runtime::resolve(*g, {});
  runtime::free_batch(*g, 2);
  // sizes = Concat(batch read from the input's shape, the resolved channels and spatial sizes).
  const graph::Node* concat = g->find_node("upsample")->input(3)->producer();
  ASSERT_NE(concat, nullptr);
  EXPECT_EQ(concat->op_type(), "Concat");
  ASSERT_EQ(concat->num_inputs(), 2u);
  const graph::Node* gather = concat->input(0)->producer();
  ASSERT_NE(gather, nullptr);
  EXPECT_EQ(gather->op_type(), "Gather");
  EXPECT_EQ(gather->input(0)->producer()->op_type(), "Shape");
  const Tensor& after = concat->input(1)->constant();
  EXPECT_EQ(std::vector<int64_t>(after.data<int64_t>(), after.data<int64_t>() + after.numel()),
            (std::vector<int64_t>{2, 9, 11}));
  EXPECT_EQ(*g->outputs()[0]->shape(), (kernels::Shape{-1, 2, 9, 11}));
  expect_same_per_sample(std::move(g), resize_to_sizes, {2, 5, 7});
}

TEST(BatchDimension, ReductionOverTheBatchIsRefusedNamingTheNode) {
  Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, kernels::Shape{2, 3});
  g.mark_output(add(g, "mean_over_batch", "ReduceMean", {x}, {{"axes", std::vector<int64_t>{0}}}));
  runtime::resolve(g, {});
  try {
    runtime::free_batch(g, 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(
        std::string(e.what()).find("node 'mean_over_batch' (ReduceMean): reduces the batch axis"),
        std::string::npos)
        << e.what();
  }
}

// A ScatterND's index tuples that address the batch axis were computed for one batch size: such
// a model is not written for another (a box's are not computed: graph/slice_update.h).
TEST(BatchDimension, ScatterAlongTheBatchIsRefusedNamingTheNode) {
  Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, kernels::Shape{2, 3});
  graph::Value* u = g.add_input("u", DType::kFloat32, kernels::Shape{2, 3});
  graph::Value* rows = g.add_constant("rows", Tensor::from_vector<int64_t>({2, 1}, {1, 0}));
  g.mark_output(add(g, "swap_rows", "ScatterND", {x, rows, u}));
  runtime::resolve(g, {});
  try {
    runtime::free_batch(g, 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("node 'swap_rows' (ScatterND): scatters along the batch "
                                         "axis (its indices count the batch)"),
              std::string::npos)
        << e.what();
  }
}

// TopK along the tokens keeps the batch (both outputs); along the batch it is refused.
TEST(BatchDimension, TopKAlongTheBatchIsRefusedAndAlongTokensKeepsIt) {
  auto top = [](int64_t batch, int64_t axis) {
    auto g = std::make_unique<Graph>();
    graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{batch, 6, 3});
    graph::Node* n = g->add_node({.name = "top",
                                  .op_type = "TopK",
                                  .inputs = {x, int_const(*g, "k", {2})},
                                  .output_names = {"values", "indices"},
                                  .attributes = {{"axis", axis}}});
    g->mark_output(n->output(0));
    return g;
  };
  auto freed = top(2, 1);
  runtime::resolve(*freed, {});
  runtime::free_batch(*freed, 2);
  expect_same_per_sample(std::move(freed), [&](int64_t b) { return top(b, 1); }, {6, 3});
  auto over_batch = top(2, 0);
  runtime::resolve(*over_batch, {});
  try {
    runtime::free_batch(*over_batch, 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("node 'top' (TopK): selects along the batch axis"),
              std::string::npos)
        << e.what();
  }
}

// Running sums along the batch mix samples; along another axis (RoBERTa's position ids) they
// keep the batch where it is, and the freed graph runs per sample as the original.
TEST(BatchDimension, CumSumOverTheBatchIsRefusedAndAlongTokensKeepsIt) {
  Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, kernels::Shape{2, 3});
  g.mark_output(add(g, "over_batch", "CumSum", {x, int_const(g, "axis0", {0})}));
  runtime::resolve(g, {});
  try {
    runtime::free_batch(g, 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("node 'over_batch' (CumSum): sums along the batch axis"),
              std::string::npos)
        << e.what();
  }
  auto over_tokens = [](int64_t batch) {
    auto t = std::make_unique<Graph>();
    graph::Value* v = t->add_input("x", DType::kFloat32, kernels::Shape{batch, 5, 3});
    t->mark_output(add(*t, "over_tokens", "CumSum", {v, int_const(*t, "axis1", {1})}));
    return t;
  };
  auto freed = over_tokens(2);
  runtime::resolve(*freed, {});
  runtime::free_batch(*freed, 2);
  expect_same_per_sample(std::move(freed), over_tokens, {5, 3});
}

// torch.gather of the tokens at computed positions (each column's largest value), and at
// positions a constant fixes (DeBERTa's relative positions, one sample's expanded to the batch):
// the freed graphs run per sample as the originals, the constant expanded to the batch at run
// time. A gather along the batch, or of constant indices that differ between samples, is refused
// naming the node.
TEST(BatchDimension, GatherElementsTakesTheBatchOfItsDataAndIndices) {
  auto picks = [](int64_t batch) {
    auto g = std::make_unique<Graph>();
    graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{batch, 5, 3});
    graph::Value* idx =
        add(*g, "where_max", "ArgMax", {x}, {{"axis", int64_t{1}}, {"keepdims", int64_t{1}}});
    g->mark_output(add(*g, "picked", "GatherElements", {x, idx}, {{"axis", int64_t{1}}}));
    return g;
  };
  auto freed = picks(2);
  runtime::resolve(*freed, {});
  runtime::free_batch(*freed, 2);
  expect_same_per_sample(std::move(freed), picks, {5, 3});

  // Per sample [4, 3]: rows 3, 0, 4, 2 of the five.
  auto relative = [](int64_t batch) {
    auto g = std::make_unique<Graph>();
    graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{batch, 5, 3});
    std::vector<int64_t> rows;
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t r : {3, 0, 4, 2}) rows.insert(rows.end(), {r, r, (r + 1) % 5});
    }
    graph::Value* idx =
        g->add_constant("positions", Tensor::from_vector<int64_t>({batch, 4, 3}, rows));
    g->mark_output(add(*g, "picked", "GatherElements", {x, idx}, {{"axis", int64_t{1}}}));
    return g;
  };
  auto freed_relative = relative(2);
  runtime::resolve(*freed_relative, {});
  runtime::free_batch(*freed_relative, 2);
  expect_same_per_sample(std::move(freed_relative), relative, {5, 3});

  auto refused = [](const std::string& why, auto build) {
    Graph g;
    graph::Value* x = g.add_input("x", DType::kFloat32, kernels::Shape{2, 5, 3});
    build(g, x);
    runtime::resolve(g, {});
    try {
      runtime::free_batch(g, 2);
      ADD_FAILURE() << "expected an error: " << why;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
      EXPECT_NE(std::string(e.what()).find("node 'gather' (GatherElements): " + why),
                std::string::npos)
          << e.what();
    }
  };
  refused("gathers along the batch axis", [](Graph& g, graph::Value* x) {
    graph::Value* idx =
        add(g, "where_max", "ArgMax", {x}, {{"axis", int64_t{2}}, {"keepdims", int64_t{1}}});
    g.mark_output(add(g, "gather", "GatherElements", {x, idx}, {{"axis", int64_t{0}}}));
  });
  refused("constant 'fixed' [2, 1, 3] differs from sample to sample along the batch axis 0",
          [](Graph& g, graph::Value* x) {
            graph::Value* idx = g.add_constant(
                "fixed", Tensor::from_vector<int64_t>({2, 1, 3}, {0, 4, 2, 1, 1, 3}));
            g.mark_output(add(g, "gather", "GatherElements", {x, idx}, {{"axis", int64_t{1}}}));
          });
}

// A one-hot by torch's scatter_: zeros of the batch's shape, each row's argmax set from constant
// updates (one per sample, folded at resolution): the updates are expanded to the batch at run
// time, and the freed graph runs per sample as the original. A scatter along the batch is refused.
TEST(BatchDimension, ScatterElementsTakesTheBatchOfItsUpdates) {
  auto one_hot = [](int64_t batch) {
    auto g = std::make_unique<Graph>();
    graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{batch, 5});
    graph::Value* idx =
        add(*g, "where_max", "ArgMax", {x}, {{"axis", int64_t{1}}, {"keepdims", int64_t{1}}});
    graph::Value* ones = g->add_constant(
        "ones", Tensor::from_vector<float>({batch, 1}, std::vector<float>(batch, 1.0f)));
    graph::Value* zeros =
        add(*g, "zeros", "Mul", {x, g->add_constant("zero", Tensor::scalar_f32(0))});
    g->mark_output(
        add(*g, "scatter", "ScatterElements", {zeros, idx, ones}, {{"axis", int64_t{1}}}));
    return g;
  };
  auto freed = one_hot(2);
  runtime::resolve(*freed, {});
  runtime::free_batch(*freed, 2);
  expect_same_per_sample(std::move(freed), one_hot, {5});

  Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, kernels::Shape{2, 5});
  graph::Value* idx = g.add_constant("rows", Tensor::from_vector<int64_t>({1, 5}, {1, 0, 1, 1, 0}));
  g.mark_output(add(g, "scatter", "ScatterElements",
                    {x, idx, g.add_constant("row", testing::random_f32({1, 5}, 3, -1.f, 1.f))},
                    {{"axis", int64_t{0}}}));
  runtime::resolve(g, {});
  try {
    runtime::free_batch(g, 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("node 'scatter' (ScatterElements): scatters along the "
                                         "batch axis"),
              std::string::npos)
        << e.what();
  }
}

// OneHot inserts an axis: before the batch's (axis 0) the batch moves to axis 1; after it (the
// last), it stays. Both freed graphs run per sample as the originals.
TEST(BatchDimension, OneHotMovesTheBatchPastAnAxisInsertedBeforeIt) {
  for (int64_t axis : {int64_t{0}, int64_t{-1}}) {
    SCOPED_TRACE(axis);
    auto hot = [axis](int64_t batch) {
      auto g = std::make_unique<Graph>();
      graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{batch, 5, 3});
      graph::Value* idx =
          add(*g, "where_max", "ArgMax", {x}, {{"axis", int64_t{1}}, {"keepdims", int64_t{0}}});
      graph::Value* hot_value =
          add(*g, "hot", "OneHot",
              {idx, int_const(*g, "depth", {5}),
               g->add_constant("values", Tensor::from_vector<float>({2}, {0.0f, 1.0f}))},
              {{"axis", axis}});
      // Back to the batch first, so that a sample's rows compare.
      g->mark_output(axis == 0 ? add(*g, "batch_first", "Transpose", {hot_value},
                                     {{"perm", std::vector<int64_t>{1, 0, 2}}})
                               : hot_value);
      return g;
    };
    auto freed = hot(2);
    runtime::resolve(*freed, {});
    runtime::free_batch(*freed, 2);
    expect_same_per_sample(std::move(freed), hot, {5, 3});
  }
}

// GatherND with batch_dims 1 (computed tuples per sample) keeps the batch on axis 0; without
// batch dims, tuples into the leading dims of data whose batch lies past them move it behind the
// tuples' dims. Both freed graphs run per sample as the originals; tuples into the batch axis
// itself are refused.
TEST(BatchDimension, GatherNdFollowsTheBatchPastItsTuples) {
  auto per_sample = [](int64_t batch) {
    auto g = std::make_unique<Graph>();
    graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{batch, 5, 3});
    graph::Value* idx =
        add(*g, "where_max", "ArgMax", {x}, {{"axis", int64_t{1}}, {"keepdims", int64_t{0}}});
    graph::Value* tuples = add(*g, "tuples", "Unsqueeze", {idx, int_const(*g, "last", {-1})});
    g->mark_output(
        add(*g, "gather", "GatherND", {x, tuples}, {{"batch_dims", int64_t{1}}}));  // [B, 3, 3]
    return g;
  };
  auto freed = per_sample(2);
  runtime::resolve(*freed, {});
  runtime::free_batch(*freed, 2);
  expect_same_per_sample(std::move(freed), per_sample, {5, 3});

  auto leading = [](int64_t batch) {
    auto g = std::make_unique<Graph>();
    graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{batch, 5, 3});
    graph::Value* tokens_first =
        add(*g, "tokens_first", "Transpose", {x}, {{"perm", std::vector<int64_t>{1, 0, 2}}});
    graph::Value* picked =
        add(*g, "gather", "GatherND",
            {tokens_first, g->add_constant("rows", Tensor::from_vector<int64_t>({2, 1}, {4, 1}))});
    g->mark_output(
        add(*g, "batch_first", "Transpose", {picked}, {{"perm", std::vector<int64_t>{1, 0, 2}}}));
    return g;
  };
  auto freed_leading = leading(2);
  runtime::resolve(*freed_leading, {});
  runtime::free_batch(*freed_leading, 2);
  expect_same_per_sample(std::move(freed_leading), leading, {5, 3});

  Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, kernels::Shape{2, 5});
  g.mark_output(add(g, "gather", "GatherND",
                    {x, g.add_constant("rows", Tensor::from_vector<int64_t>({1, 1}, {1}))}));
  runtime::resolve(g, {});
  try {
    runtime::free_batch(g, 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("node 'gather' (GatherND): gathers along the batch axis"),
              std::string::npos)
        << e.what();
  }
}

// A model that mixes its samples (RAFT joins its two images along the batch) cannot follow
// another batch, but one declared at a fixed batch is written at that batch as it is; asked for
// a symbolic batch, it is refused naming the node.
TEST(BatchDimension, AFixedBatchModelThatMixesSamplesIsWrittenAtItsOwnBatch) {
  auto mixing = [] {
    auto g = std::make_unique<Graph>();
    graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{2, 3});
    graph::Value* both = add(*g, "join", "Concat", {x, x}, {{"axis", int64_t{0}}});
    graph::Value* y = add(*g, "first", "Slice",
                          {both, int_const(*g, "starts", {1}), int_const(*g, "ends", {3}),
                           int_const(*g, "axes", {0})});
    g->mark_output(y);
    g->declared_batch["x"] = {.size = 2};
    g->declared_batch[y->name()] = {.size = 2};
    runtime::resolve(*g, {});
    return g;
  };
  auto fixed = mixing();
  EXPECT_NO_THROW(runtime::restore_declared_batch(*fixed, {}));
  EXPECT_EQ(fixed->inputs()[0]->known_shape(), (kernels::Shape{2, 3}));
  auto symbolic = mixing();
  try {
    runtime::restore_declared_batch(*symbolic, {.dynamic_batch = true});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("node 'join' (Concat): concatenates along the batch axis"),
              std::string::npos)
        << e.what();
  }
}

// An output whose first axis is not the batch (here the sum over the batch, [3]) is at its
// declared size when the model runs at its own fixed batch: written as it is, not refused.
TEST(BatchDimension, AnOutputWithoutTheBatchFirstIsWrittenAtItsOwnBatch) {
  Graph g;
  graph::Value* x = g.add_input("x", DType::kFloat32, kernels::Shape{2, 3});
  graph::Value* y =
      add(g, "total", "ReduceSum", {x, int_const(g, "axes", {0})}, {{"keepdims", int64_t{0}}});
  g.mark_output(y);
  g.declared_batch["x"] = {.size = 2};
  g.declared_batch[y->name()] = {.size = 3};
  runtime::resolve(g, {});
  EXPECT_NO_THROW(runtime::restore_declared_batch(g, {}));
  EXPECT_EQ(y->known_shape(), (kernels::Shape{3}));
  try {
    runtime::restore_declared_batch(g, {.dynamic_batch = true});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("node 'total' (ReduceSum)"), std::string::npos)
        << e.what();
  }
}

// DeBERTa's disentangled attention at batch B: the scores' rows are batch × heads (the batch
// folded outside 2 heads), the relative-position keys one [2, 3, 3] block per head repeated to
// those rows, and the relative positions one [3, 3] slice expanded to them, both folded into
// constants at resolution. The freed graph tiles the keys' block and expands the positions to
// batch · 2 rows at run time, and runs per sample as the original.
std::unique_ptr<Graph> relative_attention(int64_t batch) {
  auto g = std::make_unique<Graph>();
  graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{batch, 6, 3});
  graph::Value* rows = add(*g, "heads", "Reshape", {x, int_const(*g, "rows", {batch * 2, 3, 3})});
  const Tensor block = testing::random_f32({2, 3, 3}, 11, -1.f, 1.f);
  Tensor keys(DType::kFloat32, {batch * 2, 3, 3});
  for (int64_t b = 0; b < batch; ++b) {
    std::memcpy(keys.data<float>() + b * block.numel(), block.data<float>(), block.nbytes());
  }
  std::vector<int64_t> positions;
  for (int64_t r = 0; r < batch * 2; ++r)
    positions.insert(positions.end(), {2, 0, 1, 1, 1, 0, 0, 2, 2});
  graph::Value* scores = add(*g, "c2p", "MatMul", {rows, g->add_constant("keys", keys)});
  graph::Value* picked = add(
      *g, "gather", "GatherElements",
      {scores,
       g->add_constant("positions", Tensor::from_vector<int64_t>({batch * 2, 3, 3}, positions))},
      {{"axis", int64_t{2}}});
  g->mark_output(add(*g, "merge", "Reshape", {picked, int_const(*g, "merged", {batch, 6, 3})}));
  return g;
}

TEST(BatchDimension, RelativePositionsRepeatedPerHeadFollowTheFoldedBatch) {
  auto freed = relative_attention(2);
  runtime::resolve(*freed, {});
  runtime::free_batch(*freed, 2);
  size_t tiles = 0, expands = 0;
  for (const graph::Node* n : freed->nodes()) {
    tiles += n->op_type() == "Tile";
    expands += n->op_type() == "Expand";
  }
  EXPECT_EQ(tiles, 1u);
  EXPECT_EQ(expands, 1u);
  expect_same_per_sample(std::move(freed), relative_attention, {6, 3});
}

// For training, the keys' repeated block becomes one block behind a Tile to the batch (one
// parameter for every sample, its gradient the sum over the repeats), which the export then
// tiles to any batch.
TEST(BatchDimension, SharedRowsOfBatchTimesHeadsBecomeATiledBlock) {
  auto g = relative_attention(3);
  runtime::resolve(*g, {});
  EXPECT_EQ(runtime::share_batch_rows(*g), 1u);
  const graph::Node* c2p = g->find_node("c2p");
  ASSERT_EQ(c2p->input(1)->producer()->op_type(), "Tile");
  EXPECT_EQ(c2p->input(1)->producer()->input(0)->known_shape(), (kernels::Shape{2, 3, 3}));
  runtime::free_batch(*g, 3);
  expect_same_per_sample(std::move(g), relative_attention, {6, 3});
}

// CLIP's pooling, x[arange(B), idx] as torch.onnx writes it: idx + arange(B)·rows into the rows
// of x flattened to [B·4, 3]. The offsets become Range(batch)·4 read at run time; offsets that do
// not step by a sample's rows are refused.
std::unique_ptr<Graph> pooled_rows(int64_t batch, int64_t step) {
  auto g = std::make_unique<Graph>();
  graph::Value* x = g->add_input("x", DType::kFloat32, kernels::Shape{batch, 4, 3});
  graph::Value* scores =
      add(*g, "scores", "ReduceSum", {x, int_const(*g, "last", {2})}, {{"keepdims", int64_t{0}}});
  graph::Value* idx =
      add(*g, "pick", "ArgMax", {scores}, {{"axis", int64_t{1}}, {"keepdims", int64_t{0}}});
  std::vector<int64_t> offsets;
  for (int64_t b = 0; b < batch; ++b) offsets.push_back(b * step);
  graph::Value* rows = add(*g, "rows", "Add", {idx, int_const(*g, "sample_rows", offsets)});
  graph::Value* flat = add(*g, "flat", "Flatten", {x}, {{"axis", int64_t{2}}});
  g->mark_output(add(*g, "pooled", "Gather", {flat, rows}, {{"axis", int64_t{0}}}));
  return g;
}

TEST(BatchDimension, PerSampleRowOffsetsReadTheBatchAtRunTime) {
  auto make = [](int64_t batch) { return pooled_rows(batch, 4); };
  auto freed = make(2);
  runtime::resolve(*freed, {});
  runtime::free_batch(*freed, 2);
  expect_same_per_sample(std::move(freed), make, {4, 3});

  auto wrong = pooled_rows(2, 3);
  runtime::resolve(*wrong, {});
  try {
    runtime::free_batch(*wrong, 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("node 'pooled' (Gather): gathers with batch-dependent indices"),
        std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace qforge
