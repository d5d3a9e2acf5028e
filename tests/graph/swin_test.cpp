// Swin conversions: torchvision's window attention (shifted and unshifted) rebuilt as
// SwinWindowPartition → MHAInProjection → SwinAttention → the out-projection MatMul →
// SwinWindowReverse, Swin V2's per-head logit scale moved onto the query, scales of other shapes
// and unexpected pads refused with their reasons,
// lowering round trips through ONNX, and the bundled Swin computing the same.
#include "graph/swin.h"

#include <gtest/gtest.h>

#include <limits>
#include <random>

#include "graph/attention.h"
#include "graph/conversions.h"
#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "graph/plan.h"
#include "graph/transform.h"
#include "runtime/executor.h"
#include "runtime/resolve.h"
#include "tests/support/graph_builders.h"
#include "tests/support/pass_tester.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Graph;
using graph::Shape;
using kernels::Tensor;

std::vector<graph::Pattern> patterns() {
  return testing::conversion_and_attention_patterns();
}

graph::PlanReport convert(Graph& g) {
  return testing::convert_with_attention(g);
}

using testing::random_tensor;

using testing::add;
using testing::int_const;

constexpr int64_t kEnd = std::numeric_limits<int64_t>::max();

// torch.roll(x, -k) along `axis` as torch.onnx writes it: Concat(Slice(x, k:), Slice(x, :k)); a
// negative k rolls by +|k| (Slice(x, -|k|:), Slice(x, :-|k|)).
graph::Value* roll(Graph& g, const std::string& name, graph::Value* x, int64_t k, int64_t axis) {
  graph::Value* head =
      add(g, name + "_head", "Slice",
          {x, int_const(g, name + "_head_starts", {k}), int_const(g, name + "_head_ends", {kEnd}),
           int_const(g, name + "_head_axes", {axis})});
  graph::Value* tail =
      add(g, name + "_tail", "Slice",
          {x, int_const(g, name + "_tail_starts", {0}), int_const(g, name + "_tail_ends", {k}),
           int_const(g, name + "_tail_axes", {axis})});
  return add(g, name, "Concat", {head, tail}, {{"axis", axis}});
}

// The geometry of a window chain: image [B, H, W, C], square windows, one shift for both axes.
struct Windows {
  int64_t b, h, w, c, size, shift;
  float pad_fill = 0.f;  // torchvision pads with zeros; anything else must be refused
  int64_t padded_h() const { return h + (size - h % size) % size; }
  int64_t padded_w() const { return w + (size - w % size) % size; }
};

// torchvision's front of shifted_window_attention: Pad (written even when it pads nothing),
// roll by -shift along H then W (shifted blocks only), window partition.
graph::Value* partition_chain(Graph& g, graph::Value* x, const Windows& o) {
  const int64_t hp = o.padded_h(), wp = o.padded_w();
  std::vector<graph::Value*> pad_inputs = {
      x, int_const(g, "pads", {0, 0, 0, 0, 0, hp - o.h, wp - o.w, 0})};
  if (o.pad_fill != 0.f)
    pad_inputs.push_back(g.add_constant("fill", Tensor::scalar_f32(o.pad_fill)));
  graph::Value* cur = add(g, "pad", "Pad", pad_inputs, {{"mode", std::string("constant")}});
  if (o.shift != 0) {
    cur = roll(g, "roll_h", cur, o.shift, 1);
    cur = roll(g, "roll_w", cur, o.shift, 2);
  }
  cur = add(g, "partition_reshape", "Reshape",
            {cur, int_const(g, "grid", {o.b, hp / o.size, o.size, wp / o.size, o.size, o.c})});
  cur = add(g, "partition_transpose", "Transpose", {cur},
            {{"perm", std::vector<int64_t>{0, 1, 3, 2, 4, 5}}});
  return add(g, "partition_windows", "Reshape",
             {cur, int_const(g, "windows", {-1, o.size * o.size, o.c})});
}

// torchvision's back of shifted_window_attention: window reverse, roll by +shift along H then W,
// crop the padding along H then W.
graph::Value* reverse_chain(Graph& g, graph::Value* x, const Windows& o) {
  const int64_t hp = o.padded_h(), wp = o.padded_w();
  graph::Value* cur =
      add(g, "reverse_reshape", "Reshape",
          {x, int_const(g, "reverse_grid", {o.b, hp / o.size, wp / o.size, o.size, o.size, o.c})});
  cur = add(g, "reverse_transpose", "Transpose", {cur},
            {{"perm", std::vector<int64_t>{0, 1, 3, 2, 4, 5}}});
  cur = add(g, "reverse_image", "Reshape", {cur, int_const(g, "padded_image", {o.b, hp, wp, o.c})});
  if (o.shift != 0) {
    cur = roll(g, "unroll_h", cur, -o.shift, 1);
    cur = roll(g, "unroll_w", cur, -o.shift, 2);
  }
  cur = add(g, "crop_h", "Slice",
            {cur, int_const(g, "crop_h_starts", {0}), int_const(g, "crop_h_ends", {o.h}),
             int_const(g, "crop_h_axes", {1}), int_const(g, "crop_h_steps", {1})});
  return add(g, "crop_w", "Slice",
             {cur, int_const(g, "crop_w_starts", {0}), int_const(g, "crop_w_ends", {o.w}),
              int_const(g, "crop_w_axes", {2}), int_const(g, "crop_w_steps", {1})});
}

// Partition, a per-channel scale on the windows, reverse.
std::unique_ptr<Graph> window_chains(const Windows& o) {
  std::mt19937 rng(5);
  auto g = std::make_unique<Graph>();
  graph::Value* x = g->add_input("x", DType::kFloat32, Shape{o.b, o.h, o.w, o.c});
  graph::Value* cur = partition_chain(*g, x, o);
  cur = add(*g, "scale", "Mul", {cur, g->add_constant("scale_c", random_tensor({o.c}, rng))});
  g->mark_output(reverse_chain(*g, cur, o));
  return g;
}

struct BlockOptions {
  bool shifted = false;
  bool v2_logit_scale = false;  // Swin V2: scores · per-head logit scale [H, 1, 1]
  bool windowed = false;        // an image [2, 3, 3, 8] with the partition and reverse chains
};

// One window-attention core as torchvision writes it, on windows already partitioned:
// x [B·nW, S, E] with B = 2 images, nW = 4 windows of S = 4 tokens, E = 8, H = 2 heads. Windowed,
// x comes from a 3×3 image padded to 4×4 and cut into 2×2 windows (rolled by 1 when shifted),
// and the block's output goes back through the reverse chain.
std::unique_ptr<Graph> swin_block(BlockOptions o) {
  constexpr int64_t kB = 2, kW = 4, kS = 4, kE = 8, kH = 2, kD = kE / kH, kN = kB * kW;
  std::mt19937 rng(11);
  auto g = std::make_unique<Graph>();
  const Windows windows{
      .b = kB, .h = 3, .w = 3, .c = kE, .size = 2, .shift = o.shifted ? int64_t{1} : 0};
  graph::Value* x =
      o.windowed ? partition_chain(*g, g->add_input("image", DType::kFloat32, Shape{kB, 3, 3, kE}),
                                   windows)
                 : g->add_input("x", DType::kFloat32, Shape{kN, kS, kE});
  graph::Value* w = g->add_constant("qkv_w", random_tensor({kE, 3 * kE}, rng));
  graph::Value* b = g->add_constant("qkv_b", random_tensor({3 * kE}, rng));
  graph::Value* cur = add(*g, "qkv", "MatMul", {x, w});
  cur = add(*g, "qkv_add", "Add", {b, cur});
  cur = add(*g, "qkv_reshape", "Reshape", {cur, int_const(*g, "s5", {kN, kS, 3, kH, kD})});
  graph::Value* split =
      add(*g, "qkv_split", "Transpose", {cur}, {{"perm", std::vector<int64_t>{2, 0, 3, 1, 4}}});
  graph::Value* parts[3];
  for (int64_t i = 0; i < 3; ++i) {
    graph::Value* index = g->add_constant("i" + std::to_string(i), Tensor::scalar_i64(i));
    parts[i] =
        add(*g, "gather" + std::to_string(i), "Gather", {split, index}, {{"axis", int64_t{0}}});
  }
  graph::Value* q =
      add(*g, "q_scale", "Mul", {parts[0], g->add_constant("scale", Tensor::scalar_f32(0.5f))});
  graph::Value* kt =
      add(*g, "k_t", "Transpose", {parts[1]}, {{"perm", std::vector<int64_t>{0, 1, 3, 2}}});
  cur = add(*g, "qk", "MatMul", {q, kt});
  if (o.v2_logit_scale) {
    cur = add(*g, "logit_scale", "Mul",
              {cur, g->add_constant("logit", random_tensor({kH, 1, 1}, rng, 1.f, 3.f))});
  }
  cur = add(*g, "bias_add", "Add",
            {cur, g->add_constant("bias", random_tensor({1, kH, kS, kS}, rng))});
  if (o.shifted) {
    // Region ids differ inside some windows: -100 where they differ, as torchvision builds it.
    Tensor mask(DType::kFloat32, {1, kW, 1, kS, kS});
    float* m = mask.data<float>();
    for (int64_t wi = 0; wi < kW; ++wi) {
      for (int64_t i = 0; i < kS; ++i) {
        for (int64_t j = 0; j < kS; ++j) {
          m[(wi * kS + i) * kS + j] = (wi > 0 && (i % 2) != (j % 2)) ? -100.f : 0.f;
        }
      }
    }
    cur = add(*g, "to_windows", "Reshape", {cur, int_const(*g, "s6", {kB, kW, kH, kS, kS})});
    cur = add(*g, "mask_add", "Add", {cur, g->add_constant("mask", mask)});
    cur = add(*g, "from_windows", "Reshape", {cur, int_const(*g, "s7", {-1, kH, kS, kS})});
  }
  cur = add(*g, "softmax", "Softmax", {cur}, {{"axis", int64_t{-1}}});
  cur = add(*g, "av", "MatMul", {cur, parts[2]});
  cur = add(*g, "merge", "Transpose", {cur}, {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
  cur = add(*g, "merge_reshape", "Reshape", {cur, int_const(*g, "s8", {kN, kS, kE})});
  cur = add(*g, "proj", "MatMul", {cur, g->add_constant("proj_w", random_tensor({kE, kE}, rng))});
  cur = add(*g, "proj_add", "Add", {g->add_constant("proj_b", random_tensor({kE}, rng)), cur});
  if (o.windowed) cur = reverse_chain(*g, cur, windows);
  g->mark_output(cur);
  return g;
}

size_t count(const testing::OpCounts& c, const std::string& op) {
  const auto it = c.find(op);
  return it == c.end() ? 0 : it->second;
}

void expect_rebuilt(bool shifted) {
  const auto r = testing::run_pass_test([&] { return swin_block({.shifted = shifted}); },
                                        [](Graph& g) { convert(g); });
  EXPECT_EQ(count(r.after, "MHAInProjection"), 1u);
  EXPECT_EQ(count(r.after, "SwinAttention"), 1u);
  EXPECT_EQ(count(r.after, "SDPA"), 0u);
  EXPECT_EQ(count(r.after, "Softmax"), 0u);
  EXPECT_EQ(count(r.after, "Gather"), 0u);
  EXPECT_EQ(count(r.after, "Reshape"), 1u);  // the head merge stays, feeding the out projection
  EXPECT_EQ(count(r.after, "MatMul"), 1u);   // the out projection
  const graph::Node* attn = nullptr;
  for (const auto* n : r.transformed->nodes()) {
    if (n->op_type() == "SwinAttention") attn = n;
  }
  ASSERT_NE(attn, nullptr);
  EXPECT_FLOAT_EQ(attn->attr_float("scale"), 0.5f);
  EXPECT_EQ(attn->attr_int("num_windows"), shifted ? 4 : 1);
  EXPECT_EQ(attn->num_inputs(), shifted ? 5u : 4u);
}

TEST(SwinAttention, RebuildsUnshiftedWindows) {
  expect_rebuilt(false);
}

TEST(SwinAttention, RebuildsShiftedWindowsWithTheirMask) {
  expect_rebuilt(true);
}

void expect_lowering_round_trip(std::unique_ptr<Graph> g, size_t modules) {
  runtime::resolve(*g, {});
  convert(*g);
  std::mt19937 rng(3);
  std::vector<Tensor> inputs;
  for (const auto* in : g->inputs()) {
    inputs.push_back(testing::random_input(in->dtype(), in->known_shape(), rng));
  }
  runtime::Executor before(*g);
  std::vector<Tensor> ref;
  for (const auto& t : before.run(inputs)) ref.push_back(t.clone());

  auto lowered = g->clone();
  EXPECT_EQ(graph::lower_modules(*lowered), modules);
  for (const auto* n : lowered->nodes()) EXPECT_NE(n->domain(), "qforge") << n->name();
  auto reloaded = graph::parse_onnx(graph::serialize_onnx(*lowered), "lowered");
  runtime::resolve(*reloaded, {});
  runtime::Executor after(*reloaded);
  auto got = after.run(inputs);
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_LE(testing::relative_max_diff(got[i], ref[i]), 1e-5) << "output " << i;
  }
}

TEST(SwinAttention, LowersToOnnxAndBack) {
  // MHAInProjection, SwinAttention; windowed also SwinWindowPartition, SwinWindowReverse.
  expect_lowering_round_trip(swin_block({.shifted = false}), 2);
  expect_lowering_round_trip(swin_block({.shifted = true}), 2);
  expect_lowering_round_trip(swin_block({.shifted = false, .windowed = true}), 4);
  expect_lowering_round_trip(swin_block({.shifted = true, .windowed = true}), 4);
}

const graph::Node* only_node(const Graph& g, const std::string& op) {
  const graph::Node* found = nullptr;
  for (const auto* n : g.nodes()) {
    if (n->op_type() == op) {
      EXPECT_EQ(found, nullptr) << "several " << op;
      found = n;
    }
  }
  return found;
}

void expect_window_modules(const Windows& o) {
  const std::string where = std::string("image ") + std::to_string(o.h) + "x" +
                            std::to_string(o.w) + ", window " + std::to_string(o.size) +
                            ", shift " + std::to_string(o.shift);
  const auto r =
      testing::run_pass_test([&] { return window_chains(o); }, [](Graph& g) { convert(g); });
  EXPECT_EQ(count(r.before, "Reshape"), 4u) << where;
  EXPECT_EQ(count(r.after, "SwinWindowPartition"), 1u) << where;
  EXPECT_EQ(count(r.after, "SwinWindowReverse"), 1u) << where;
  for (const char* op : {"Pad", "Slice", "Concat", "Reshape", "Transpose"}) {
    EXPECT_EQ(count(r.after, op), 0u) << op << ", " << where;
  }
  EXPECT_EQ(count(r.after, "Mul"), 1u) << where;
  const std::vector<int64_t> window = {o.size, o.size}, shift = {o.shift, o.shift};
  const std::vector<int64_t> padding = {o.padded_h() - o.h, o.padded_w() - o.w};
  const graph::Node* part = only_node(*r.transformed, "SwinWindowPartition");
  const graph::Node* rev = only_node(*r.transformed, "SwinWindowReverse");
  ASSERT_NE(part, nullptr);
  ASSERT_NE(rev, nullptr);
  EXPECT_EQ(part->input(0)->name(), "x") << where;
  EXPECT_EQ(part->attr_ints("window_size"), window) << where;
  EXPECT_EQ(part->attr_ints("shift"), shift) << where;
  EXPECT_EQ(part->attr_ints("padding"), padding) << where;
  EXPECT_EQ(rev->attr_ints("window_size"), window) << where;
  EXPECT_EQ(rev->attr_ints("shift"), shift) << where;
  EXPECT_EQ(rev->attr_ints("padding"), padding) << where;
  EXPECT_EQ(rev->attr_ints("image_size"), (std::vector<int64_t>{o.h, o.w})) << where;
  EXPECT_TRUE(rev->output(0)->is_graph_output()) << where;
  testing::expect_lowering_equivalent(*r.transformed, 2, 4);
}

TEST(SwinWindows, PadRollPartitionAndReverseRollCropBecomeModules) {
  expect_window_modules({.b = 2, .h = 5, .w = 4, .c = 6, .size = 3, .shift = 1});
  expect_window_modules({.b = 1, .h = 8, .w = 8, .c = 5, .size = 3, .shift = 1});
  expect_window_modules({.b = 3, .h = 7, .w = 5, .c = 3, .size = 4, .shift = 2});
}

TEST(SwinWindows, UnshiftedAndUnpaddedChainsBecomeModules) {
  expect_window_modules({.b = 2, .h = 5, .w = 4, .c = 6, .size = 3, .shift = 0});
  expect_window_modules({.b = 2, .h = 6, .w = 6, .c = 4, .size = 3, .shift = 0});
  expect_window_modules({.b = 1, .h = 6, .w = 9, .c = 4, .size = 3, .shift = 1});
}

TEST(SwinWindows, BlockBecomesPartitionInProjectionAttentionLinearReverse) {
  for (bool shifted : {false, true}) {
    const auto r =
        testing::run_pass_test([&] { return swin_block({.shifted = shifted, .windowed = true}); },
                               [](Graph& g) {
                                 const auto conversions = graph::all_conversion_patterns();
                                 graph::run_conversions(g, conversions);
                                 const auto fusions = graph::all_fusion_patterns();
                                 graph::run_fusions(g, fusions);
                               });
    const Graph& g = *r.transformed;
    const graph::Node* part = only_node(g, "SwinWindowPartition");
    const graph::Node* in_proj = only_node(g, "MHAInProjection");
    const graph::Node* attn = only_node(g, "SwinAttention");
    const graph::Node* linear = only_node(g, "Linear");
    const graph::Node* rev = only_node(g, "SwinWindowReverse");
    ASSERT_TRUE(part && in_proj && attn && linear && rev) << "shifted " << shifted;
    EXPECT_EQ(in_proj->input(0), part->output(0));
    EXPECT_EQ(attn->input(0), in_proj->output(0));
    EXPECT_EQ(rev->input(0), linear->output(0));
    EXPECT_TRUE(rev->output(0)->is_graph_output());
    EXPECT_EQ(part->attr_ints("shift"), rev->attr_ints("shift"));
    EXPECT_EQ(part->attr_ints("shift"), (std::vector<int64_t>(2, shifted ? 1 : 0)));
    EXPECT_EQ(part->attr_ints("padding"), (std::vector<int64_t>{1, 1}));
    EXPECT_EQ(attn->attr_int("num_windows"), shifted ? 4 : 1);
    for (const char* op : {"Pad", "Slice", "Concat"}) EXPECT_EQ(count(r.after, op), 0u) << op;
  }
}

TEST(SwinWindows, NonZeroPadFillIsRefusedNamingThePad) {
  auto g = window_chains({.b = 2, .h = 5, .w = 4, .c = 6, .size = 3, .shift = 1, .pad_fill = 1.f});
  runtime::resolve(*g, {});
  const auto report = convert(*g);
  const auto* counts = report.find("SwinPartitionAbsorbPad");
  ASSERT_NE(counts, nullptr);
  EXPECT_EQ(counts->applied, 0u);
  EXPECT_EQ(counts->skipped, 1u);
  const auto list = patterns();
  std::vector<std::string> reasons;
  for (const auto& e : graph::make_plan(*g, list).entries) {
    if (e.match.pattern == "SwinPartitionAbsorbPad" && !e.apply) reasons.push_back(e.reason);
  }
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_NE(reasons[0].find("'pad'"), std::string::npos) << reasons[0];
  EXPECT_NE(reasons[0].find("fill value"), std::string::npos) << reasons[0];
  // The rolls are still folded into the partition; the Pad stays in front of it.
  const auto ops = testing::count_ops(*g);
  EXPECT_EQ(count(ops, "Pad"), 1u);
  EXPECT_EQ(count(ops, "SwinWindowPartition"), 1u);
  EXPECT_EQ(count(ops, "Concat"), 0u);
}

// Swin V2's cosine attention multiplies the scores by a logit scale per head [H, 1, 1]: the
// scale moves onto Q (Q·s)·Kᵀ = (Q·Kᵀ)·s, a Mul feeding the module's query, and the module keeps
// the scalar query scale. Shifted and unshifted windows both become a SwinAttention (the query's
// Mul does not hide the QKV split from SwinAttentionFromSDPA), computing what the block computed,
// also once lowered back to ONNX.
TEST(SwinAttention, SwinV2LogitScaleScalesTheQuery) {
  for (bool shifted : {false, true}) {
    SCOPED_TRACE(shifted ? "shifted" : "unshifted");
    const auto r = testing::run_pass_test(
        [&] { return swin_block({.shifted = shifted, .v2_logit_scale = true}); },
        [](Graph& g) { convert(g); });
    const char* module = "SwinAttention";
    EXPECT_EQ(count(r.after, module), 1u);
    EXPECT_EQ(count(r.after, "SDPA"), 0u);
    EXPECT_EQ(count(r.after, "Softmax"), 0u);
    const graph::Node* attn = only_node(*r.transformed, module);
    ASSERT_NE(attn, nullptr);
    EXPECT_FLOAT_EQ(attn->attr_float("scale"), 0.5f);
    const graph::Node* query = attn->input(0)->producer();
    ASSERT_NE(query, nullptr);
    EXPECT_EQ(query->op_type(), "Mul");
    EXPECT_EQ(query->input(1)->name(), "logit");
    testing::expect_lowering_equivalent(*r.transformed, 2, 4);
  }
}

// A scale that is neither one value nor one per head is refused naming the node.
TEST(SwinAttention, RefusesAScaleOfAnotherShape) {
  auto g = swin_block({.shifted = true, .v2_logit_scale = true});
  std::mt19937 rng(5);
  graph::Node* logit = g->find_node("logit_scale");
  ASSERT_NE(logit, nullptr);
  g->set_input(logit, 1, g->add_constant("odd", random_tensor({2, 4, 1}, rng, 1.f, 3.f)));
  runtime::resolve(*g, {});
  const auto list = patterns();
  std::vector<std::string> reasons;
  for (const auto& e : graph::make_plan(*g, list).entries) {
    if (e.match.pattern == "ComposeSwinAttention" && !e.apply) reasons.push_back(e.reason);
  }
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_NE(reasons[0].find("'logit_scale'"), std::string::npos) << reasons[0];
  EXPECT_NE(reasons[0].find("neither one value nor one per head"), std::string::npos) << reasons[0];
  convert(*g);
  EXPECT_EQ(count(testing::count_ops(*g), "SwinAttention"), 0u);
}

// The bundled Swin (data/generate/models.py: depths [2, 2, 2]) has one window attention per
// block, shifted or not, so SwinAttention modules = 2 + 2 + 2 = 6; each has its own QKV
// projection, window partition and window reverse, so MHAInProjection, SwinWindowPartition and
// SwinWindowReverse = 6 too. Shifted blocks are the odd ones of stages 1 and 2 (stage 3's shift is
// zeroed: its 2×2 map fits one window), so 2 carry a window mask and a non-zero shift. Every
// stage pads (8×8 → 9×9, 4×4 → 6×6, 2×2 → 3×3 with 3×3 windows), so all 6 partitions pad.
constexpr size_t kSwinBlocks = 2 + 2 + 2;
constexpr size_t kMaskedBlocks = 2;

void check_swin(const std::string& form) {
  auto g = graph::load_onnx(testing::data_path("models/swin_" + form + ".onnx"));
  runtime::resolve(*g, {.input_shapes = runtime::input_shapes_for_batch(*g, 4)});
  auto converted = g->clone();
  const auto list = graph::all_conversion_patterns();
  const auto report = graph::run_conversions(*converted, list);
  const auto counts = testing::count_ops(*converted);
  EXPECT_EQ(count(counts, "SwinAttention"), kSwinBlocks) << report.to_text();
  EXPECT_EQ(count(counts, "MHAInProjection"), kSwinBlocks) << report.to_text();
  EXPECT_EQ(count(counts, "SDPA"), 0u) << report.to_text();
  EXPECT_EQ(count(counts, "Softmax"), 0u) << report.to_text();
  size_t masked = 0;
  for (const auto* n : converted->nodes()) {
    if (n->op_type() == "SwinAttention" && n->num_inputs() == 5 && n->input(4)) ++masked;
  }
  EXPECT_EQ(masked, kMaskedBlocks);
  EXPECT_EQ(count(counts, "SwinWindowPartition"), kSwinBlocks) << report.to_text();
  EXPECT_EQ(count(counts, "SwinWindowReverse"), kSwinBlocks) << report.to_text();
  size_t shifted = 0, padded = 0;
  for (const auto* n : converted->nodes()) {
    if (n->op_type() == "SwinWindowPartition") {
      shifted += n->attr_ints("shift") != std::vector<int64_t>{0, 0};
      padded += n->attr_ints("padding") != std::vector<int64_t>{0, 0};
    }
    if (n->op_type() == "Transpose") {
      EXPECT_NE(n->attr_ints("perm", {}), (std::vector<int64_t>{0, 1, 3, 2, 4, 5})) << n->name();
    }
  }
  EXPECT_EQ(shifted, kMaskedBlocks);
  EXPECT_EQ(padded, kSwinBlocks);

  Tensor input = io::read_npy(testing::data_path("golden/swin_input.npy"));
  ASSERT_GE(input.dim(0), 4);
  input = input.slice_rows(0, 4).clone();
  runtime::Executor before(*g), after(*converted);
  const std::vector<Tensor> inputs = {input};
  std::vector<Tensor> ref;
  for (const auto& t : before.run(inputs)) ref.push_back(t.clone());
  auto got = after.run(inputs);
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_LE(testing::relative_max_diff(got[i], ref[i]), 1e-5) << "output " << i;
  }
}

TEST(SwinModel, BnFormConvertsAndComputesTheSame) {
  check_swin("bn");
}
TEST(SwinModel, FoldedFormConvertsAndComputesTheSame) {
  check_swin("folded");
}

}  // namespace
}  // namespace qforge
