// The ops of newer opsets that import as older ones (graph/decompose_import.h).
//
// Attention (opset 23) imports as the MatMul, scale, mask, Softmax and MatMul chain torch.onnx
// writes for attention at 17: every supported form (4-D and 3-D heads, the default and a given
// scale, float and boolean masks, causal self and cross attention, softcap) computes what ONNX
// Runtime's own Attention kernel computes on the same file, and ComposeSDPA makes one SDPA module
// of the plain forms. The forms qforge does not run (a KV cache, grouped-query heads, sliding
// windows, another softmax precision, the qk_matmul_output) are refused naming the node.
#include <gtest/gtest.h>

#include <onnx/onnx_pb.h>

#include <cmath>
#include <functional>
#include <numeric>
#include <ostream>
#include <string>
#include <vector>

#include "fuzz/seed_models.h"
#include "graph/onnx_import.h"
#include "runtime/session.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/errors.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"

namespace qforge::graph {
namespace {

using kernels::Tensor;

struct AttentionCase {
  std::string name;
  int64_t opset;
  std::vector<std::vector<int64_t>> shapes;  // Q, K, V
  std::vector<int64_t> output;
  int64_t causal = 0;
  int64_t heads = 0;   // q_num_heads = kv_num_heads for 3-D inputs
  float scale = 0.0f;  // 0: the default 1/√head_size
  float softcap = 0.0f;
  int mask_type = 0;  // 0: none; onnx::TensorProto::FLOAT or BOOL
  std::vector<int64_t> mask_shape;
};

void declare(onnx::ValueInfoProto* v, const std::string& name, const std::vector<int64_t>& shape) {
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  for (int64_t d : shape) t->mutable_shape()->add_dim()->set_dim_value(d);
}

onnx::ModelProto attention_model(const AttentionCase& c) {
  onnx::ModelProto m;
  m.set_ir_version(10);
  auto* o = m.add_opset_import();
  o->set_domain("");
  o->set_version(c.opset);
  auto* g = m.mutable_graph();
  g->set_name(c.name);
  const char* names[] = {"q", "k", "v"};
  for (int i = 0; i < 3; ++i) declare(g->add_input(), names[i], c.shapes[static_cast<size_t>(i)]);
  declare(g->add_output(), "y", c.output);
  auto* n = g->add_node();
  n->set_op_type("Attention");
  n->set_name("attn");
  for (const char* x : names) n->add_input(x);
  n->add_output("y");
  if (c.mask_type != 0) {
    auto* t = g->add_initializer();
    t->set_name("mask");
    t->set_data_type(c.mask_type);
    int64_t count = 1;
    for (int64_t d : c.mask_shape) {
      t->add_dims(d);
      count *= d;
    }
    const Tensor values = testing::random_f32({count}, 17, -2.0f, 2.0f);
    for (int64_t i = 0; i < count; ++i) {
      const float v = values.data<float>()[i];
      // Boolean: every row keeps its first key, so no row is masked whole.
      if (c.mask_type == onnx::TensorProto::BOOL) {
        t->add_int32_data(i % c.mask_shape.back() == 0 || v > -0.8f);
      } else {
        t->add_float_data(v);
      }
    }
    n->add_input("mask");
  }
  auto int_attribute = [&](const char* name, int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  };
  auto float_attribute = [&](const char* name, float v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(v);
  };
  if (c.causal) int_attribute("is_causal", 1);
  if (c.heads) {
    int_attribute("q_num_heads", c.heads);
    int_attribute("kv_num_heads", c.heads);
  }
  if (c.scale != 0.0f) float_attribute("scale", c.scale);
  if (c.softcap != 0.0f) float_attribute("softcap", c.softcap);
  return m;
}

const AttentionCase kCases[] = {
    {.name = "plain",
     .opset = 23,
     .shapes = {{2, 3, 5, 8}, {2, 3, 5, 8}, {2, 3, 5, 8}},
     .output = {2, 3, 5, 8}},
    {.name = "head_size_12",
     .opset = 26,
     .shapes = {{2, 2, 5, 12}, {2, 2, 5, 12}, {2, 2, 5, 12}},
     .output = {2, 2, 5, 12}},
    {.name = "float_mask_scale",
     .opset = 24,
     .shapes = {{2, 3, 5, 8}, {2, 3, 5, 8}, {2, 3, 5, 8}},
     .output = {2, 3, 5, 8},
     .scale = 0.3f,
     .mask_type = onnx::TensorProto::FLOAT,
     .mask_shape = {1, 1, 5, 5}},
    {.name = "bool_mask",
     .opset = 23,
     .shapes = {{2, 3, 5, 8}, {2, 3, 5, 8}, {2, 3, 5, 8}},
     .output = {2, 3, 5, 8},
     .mask_type = onnx::TensorProto::BOOL,
     .mask_shape = {5, 5}},
    {.name = "causal",
     .opset = 25,
     .shapes = {{2, 3, 5, 8}, {2, 3, 5, 8}, {2, 3, 5, 8}},
     .output = {2, 3, 5, 8},
     .causal = 1},
    {.name = "cross_causal",
     .opset = 23,
     .shapes = {{2, 3, 5, 8}, {2, 3, 7, 8}, {2, 3, 7, 4}},
     .output = {2, 3, 5, 4},
     .causal = 1},
    {.name = "three_d_softcap",
     .opset = 23,
     .shapes = {{2, 5, 24}, {2, 7, 24}, {2, 7, 18}},
     .output = {2, 5, 18},
     .heads = 3,
     .softcap = 2.0f},
};

// Test names and failure messages show the case's name, not its bytes.
void PrintTo(const AttentionCase& c, std::ostream* os) {
  *os << c.name;
}

class AttentionImport : public ::testing::TestWithParam<AttentionCase> {};

// qforge's outputs against ONNX Runtime's Attention kernel on the same file and inputs: within
// 1e-5 of the largest |output| (the two sum in different orders).
TEST_P(AttentionImport, ComputesWhatOnnxRuntimeComputes) {
  const AttentionCase& c = GetParam();
  testing::TempDir dir;
  const std::string path = dir.file(c.name + ".onnx");
  testing::write_bytes(path, attention_model(c).SerializeAsString());
  std::vector<Tensor> inputs;
  for (size_t i = 0; i < 3; ++i) {
    inputs.push_back(testing::random_f32(c.shapes[i], 5 + static_cast<uint64_t>(i), -2.0f, 2.0f));
  }
  runtime::Session session(load_onnx(path));
  const Tensor got = session.run(inputs)[0].clone();
  const std::vector<Tensor> want = testing::run_ort(path, inputs);
  ASSERT_EQ(got.shape(), want[0].shape());
  float peak = 0, worst = 0;
  for (int64_t i = 0; i < got.numel(); ++i)
    peak = std::max(peak, std::abs(want[0].data<float>()[i]));
  for (int64_t i = 0; i < got.numel(); ++i) {
    worst = std::max(worst, std::abs(got.data<float>()[i] - want[0].data<float>()[i]));
  }
  EXPECT_GT(peak, 0.1f);
  EXPECT_LE(worst, 1e-5f * peak) << "max |qforge - ORT| " << worst << " of " << peak;
}

INSTANTIATE_TEST_SUITE_P(Forms, AttentionImport, ::testing::ValuesIn(kCases),
                         [](const auto& p) { return p.param.name; });

// The plain, masked and causal forms become one SDPA module with the scale the node says (the
// default 1/√8 computed from Q's shape), the causal one with its mask recognised as causal.
TEST(AttentionImport, ComposesIntoOneSdpaModule) {
  for (const AttentionCase& c : {kCases[0], kCases[2], kCases[4]}) {
    SCOPED_TRACE(c.name);
    const auto graph = parse_onnx(attention_model(c).SerializeAsString(), c.name + ".onnx");
    runtime::TransformOptions options;
    options.batch = 2;
    const runtime::TransformResult result = runtime::transform_model(*graph, nullptr, options);
    int sdpa = 0;
    for (const Node* n : result.graph->nodes()) {
      if (n->op_type() != "SDPA") continue;
      ++sdpa;
      EXPECT_FLOAT_EQ(n->attr_float("scale"), c.scale != 0.0f ? c.scale : 1.0f / std::sqrt(8.0f));
      EXPECT_EQ(n->attr_int("causal", 0), c.causal);
      EXPECT_EQ(n->num_inputs(), c.mask_type != 0 ? 4u : 3u);
    }
    EXPECT_EQ(sdpa, 1);
  }
}

// The importer fuzz target's seed with a Swish and a causal two-head Attention on 3-D inputs
// (dynamic batch) computes what ONNX Runtime computes, so that its mutations start from a model
// that runs.
TEST(AttentionImport, TheFuzzSeedRunsAsOnnxRuntimeRunsIt) {
  testing::TempDir dir;
  const std::string path = dir.file("attention_net.onnx");
  testing::write_bytes(path, fuzz::attention_net_model());
  const Tensor x = testing::random_f32({3, 4, 8}, 21, -2.0f, 2.0f);
  runtime::Session session(load_onnx(path));
  const std::vector<float> got = session.run(x)[0].to_float_vector();
  const std::vector<float> want = testing::run_ort(path, {x})[0].to_float_vector();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5f) << i;
}

// The forms qforge does not run, each refused naming the node and what it has.
TEST(AttentionImport, UnsupportedFormsAreNamed) {
  auto error = [](ErrorKind kind, const onnx::ModelProto& m) {
    return testing::error_of(kind, [&] { parse_onnx(m.SerializeAsString(), "m.onnx"); });
  };
  const onnx::ModelProto base = attention_model(kCases[0]);
  onnx::ModelProto early = base;
  early.mutable_opset_import(0)->set_version(22);
  EXPECT_EQ(error(ErrorKind::kInvalid, early),
            "import: node 'attn' (Attention): expected opset 23 or later for Attention, got opset "
            "22");
  onnx::ModelProto cache = base;
  auto* n = cache.mutable_graph()->mutable_node(0);
  n->add_input("");
  n->add_input("past");
  EXPECT_EQ(error(ErrorKind::kUnsupported, cache),
            "import: node 'attn' (Attention): expected no past_key (a KV cache), got 'past'");
  onnx::ModelProto scores = base;
  scores.mutable_graph()->mutable_node(0)->add_output("");
  scores.mutable_graph()->mutable_node(0)->add_output("");
  scores.mutable_graph()->mutable_node(0)->add_output("qk");
  EXPECT_EQ(error(ErrorKind::kUnsupported, scores),
            "import: node 'attn' (Attention): expected only output Y, got qk_matmul_output 'qk'");
  auto with_int = [&](const char* name, int64_t v) {
    onnx::ModelProto m = base;
    auto* a = m.mutable_graph()->mutable_node(0)->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
    return m;
  };
  onnx::ModelProto grouped = with_int("q_num_heads", 4);
  auto* kv = grouped.mutable_graph()->mutable_node(0)->add_attribute();
  kv->set_name("kv_num_heads");
  kv->set_type(onnx::AttributeProto::INT);
  kv->set_i(2);
  EXPECT_EQ(error(ErrorKind::kUnsupported, grouped),
            "import: node 'attn' (Attention): expected as many key and value heads as query heads, "
            "got 2 and 4 (grouped-query attention)");
  EXPECT_EQ(error(ErrorKind::kUnsupported, with_int("left_window_size", 2)),
            "import: node 'attn' (Attention): expected left_window_size -1 (no sliding window), "
            "got left_window_size 2");
  EXPECT_EQ(error(ErrorKind::kUnsupported, with_int("softmax_precision", 11)),
            "import: node 'attn' (Attention): expected softmax_precision 1 (float), got "
            "softmax_precision 11");
  EXPECT_EQ(error(ErrorKind::kInvalid, with_int("q_num_heads", 3)),
            "import: node 'attn' (Attention): expected q_num_heads and kv_num_heads together, got "
            "one");
}

// RMSNormalization (opset 23): its definition's Mul, ReduceMean, Add, Sqrt, Div and Mul, over the
// axes from `axis` on (negative, or non-negative taken from the rank), against float64 and against
// ONNX Runtime's kernel on the same file; refused before opset 23 and with a float64 stash type.
struct RmsCase {
  int64_t axis;
  std::vector<int64_t> scale_shape;
  bool given_axis;  // false: the default -1
};

onnx::ModelProto rms_model(const RmsCase& c, int64_t opset) {
  onnx::ModelProto m;
  m.set_ir_version(10);
  auto* o = m.add_opset_import();
  o->set_domain("");
  o->set_version(opset);
  auto* g = m.mutable_graph();
  g->set_name("rms");
  declare(g->add_input(), "x", {2, 3, 4});
  declare(g->add_output(), "y", {2, 3, 4});
  auto* scale = g->add_initializer();
  scale->set_name("scale");
  scale->set_data_type(onnx::TensorProto::FLOAT);
  int64_t count = 1;
  for (int64_t d : c.scale_shape) {
    scale->add_dims(d);
    count *= d;
  }
  for (int64_t i = 0; i < count; ++i) scale->add_float_data(0.5f + 0.1f * static_cast<float>(i));
  auto* n = g->add_node();
  n->set_op_type("RMSNormalization");
  n->set_name("rms");
  n->add_input("x");
  n->add_input("scale");
  n->add_output("y");
  if (c.given_axis) {
    auto* a = n->add_attribute();
    a->set_name("axis");
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(c.axis);
  }
  auto* eps = n->add_attribute();
  eps->set_name("epsilon");
  eps->set_type(onnx::AttributeProto::FLOAT);
  eps->set_f(1e-3f);
  return m;
}

TEST(RmsNormalizationImport, ComputesItsDefinitionAndWhatOnnxRuntimeComputes) {
  const RmsCase cases[] = {{-1, {4}, false}, {-2, {3, 4}, true}, {1, {3, 4}, true}, {0, {1}, true}};
  const Tensor x = testing::random_f32({2, 3, 4}, 31, -2.0f, 2.0f);
  for (const RmsCase& c : cases) {
    SCOPED_TRACE("axis " + std::to_string(c.axis));
    testing::TempDir dir;
    const std::string path = dir.file("rms.onnx");
    testing::write_bytes(path, rms_model(c, 23).SerializeAsString());
    runtime::Session session(load_onnx(path));
    const std::vector<float> got = session.run(x)[0].to_float_vector();
    // float64: each group of the trailing axes from `axis` on normalised by its root mean square.
    const int64_t first = c.axis < 0 ? c.axis + 3 : c.axis;
    int64_t group = 1;
    for (int64_t d = first; d < 3; ++d) group *= x.shape()[static_cast<size_t>(d)];
    const int64_t scale_count = static_cast<int64_t>(std::accumulate(
        c.scale_shape.begin(), c.scale_shape.end(), int64_t{1}, std::multiplies<int64_t>()));
    for (int64_t start = 0; start < x.numel(); start += group) {
      double sum = 0;
      for (int64_t i = 0; i < group; ++i) {
        const double v = x.data<float>()[start + i];
        sum += v * v;
      }
      const double rms = std::sqrt(sum / static_cast<double>(group) + 1e-3);
      for (int64_t i = 0; i < group; ++i) {
        const int64_t flat = start + i;
        const double s = 0.5 + 0.1 * static_cast<double>(flat % scale_count);
        const double want = x.data<float>()[flat] / rms * s;
        EXPECT_NEAR(got[static_cast<size_t>(flat)], want, 1e-6 * std::max(1.0, std::abs(want)))
            << flat;
      }
    }
    const std::vector<float> ort = testing::run_ort(path, {x})[0].to_float_vector();
    ASSERT_EQ(ort.size(), got.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], ort[i], 2e-6f) << i;
  }
  const auto error = [](ErrorKind kind, const onnx::ModelProto& m) {
    return testing::error_of(kind, [&] { parse_onnx(m.SerializeAsString(), "m.onnx"); });
  };
  EXPECT_EQ(error(ErrorKind::kInvalid, rms_model(cases[0], 22)),
            "import: node 'rms' (RMSNormalization): expected opset 23 or later for "
            "RMSNormalization, got opset 22");
  onnx::ModelProto doubled = rms_model(cases[0], 23);
  auto* stash = doubled.mutable_graph()->mutable_node(0)->add_attribute();
  stash->set_name("stash_type");
  stash->set_type(onnx::AttributeProto::INT);
  stash->set_i(onnx::TensorProto::DOUBLE);
  EXPECT_EQ(error(ErrorKind::kUnsupported, doubled),
            "import: node 'rms' (RMSNormalization): expected stash_type 1 (float), got 11");
}

// Over the last axis, the imported chain composes into one RMSNorm module again (SmoothQuant's
// site), which computes what the node computes.
TEST(RmsNormalizationImport, TheLastAxisFormComposesIntoAnRmsNormModule) {
  const auto graph = parse_onnx(rms_model({-1, {4}, false}, 23).SerializeAsString(), "rms.onnx");
  runtime::TransformOptions options;
  options.batch = 2;
  const auto transformed = runtime::transform_model(*graph, nullptr, options);
  size_t modules = 0;
  for (const Node* n : transformed.graph->nodes()) modules += n->op_type() == "RMSNorm";
  EXPECT_EQ(modules, 1u);
  const Tensor x = testing::random_f32({2, 3, 4}, 31, -2.0f, 2.0f);
  runtime::Session fused(transformed.graph->clone());
  runtime::Session plain(graph->clone());
  const std::vector<float> got = fused.run(x)[0].to_float_vector();
  const std::vector<float> want = plain.run(x)[0].to_float_vector();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-6f) << i;
}

}  // namespace
}  // namespace qforge::graph
