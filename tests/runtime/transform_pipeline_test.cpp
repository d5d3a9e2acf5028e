// The transformation pipeline as library calls: planning leaves the graph unfused, applying a
// plan fuses what it says, a foreign plan is refused, and the lowered result of every bundled
// model computes what the model computes on its golden batch.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "graph/catalog.h"
#include "graph/onnx_import.h"
#include "graph/transform.h"
#include "kernels/error.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using testing::data_path;

constexpr int64_t kGoldenBatch = 4;

size_t count_modules(const graph::Graph& g) {
  size_t n = 0;
  for (const graph::Node* node : g.nodes()) {
    const graph::OpSchema* schema = graph::find_schema(node->op_type());
    n += schema && schema->kind == graph::SchemaKind::kModule;
  }
  return n;
}

size_t applied_entries(const graph::Plan& plan) {
  size_t n = 0;
  for (const graph::PlanEntry& e : plan.entries) n += e.apply;
  return n;
}

TEST(TransformPipeline, PlanningLeavesTheGraphUnfused) {
  auto model = graph::load_onnx(data_path("models/resnet_bn.onnx"));
  runtime::TransformResult r = runtime::plan_model(*model, {});
  EXPECT_EQ(count_modules(*r.graph), 0u);
  EXPECT_EQ(r.fusions.applied(), 0u);
  EXPECT_EQ(r.graph->inputs()[0]->shape()->at(0), 1);  // resolved at the default batch
  graph::PlanReport counts = runtime::count_plan(r.plan, graph::all_fusion_patterns());
  EXPECT_EQ(counts.applied(), applied_entries(r.plan));
  EXPECT_EQ(counts.applied() + counts.skipped(), r.plan.entries.size());
  EXPECT_EQ(counts.patterns.size(), graph::all_fusion_patterns().size());
}

TEST(TransformPipeline, FreshPlanAppliesEveryEntryItTurnsOn) {
  auto model = graph::load_onnx(data_path("models/resnet_bn.onnx"));
  runtime::TransformResult r = runtime::transform_model(*model, nullptr, {});
  EXPECT_EQ(r.fusions.applied() + r.fusions.deferred.size(), applied_entries(r.plan));
  // Conversions may already build modules (attention); each applied fusion adds one.
  const size_t converted_modules = count_modules(*runtime::plan_model(*model, {}).graph);
  EXPECT_EQ(count_modules(*r.graph), converted_modules + r.fusions.applied());
}

TEST(TransformPipeline, AMatchTurnedOffStaysUnfused) {
  auto model = graph::load_onnx(data_path("models/resnet_bn.onnx"));
  runtime::TransformResult planned = runtime::plan_model(*model, {});
  graph::Plan plan = planned.plan;
  graph::PlanEntry* first = nullptr;
  for (graph::PlanEntry& e : plan.entries) {
    if (e.apply && !first) first = &e;
  }
  if (!first) GTEST_SKIP() << "no fusion applies to resnet_bn with today's pattern lists";
  first->apply = false;
  runtime::TransformResult r = runtime::transform_model(*model, &plan, {});
  for (const graph::MatchedNode& n : first->match.nodes) {
    EXPECT_NE(r.graph->find_node(n.name), nullptr) << n.name;
  }
  EXPECT_EQ(r.fusions.applied() + r.fusions.deferred.size(), applied_entries(plan));
}

TEST(TransformPipeline, PlanNamingAbsentNodesIsRefusedNamingTheEntry) {
  auto model = graph::load_onnx(data_path("models/resnet_bn.onnx"));
  std::vector<graph::Pattern> fusions = graph::all_fusion_patterns();
  graph::Plan plan;
  graph::PlanEntry e;
  e.match.pattern = fusions.empty() ? std::string("ConvBNAct") : fusions.front().name;
  e.match.id = 7;
  e.match.anchor = "no_such_node";
  e.match.nodes.push_back({"conv", "no_such_node"});
  e.apply = false;  // even an entry turned off must belong to this model
  plan.entries.push_back(e);
  runtime::TransformOptions options;
  options.plan_source = "plan 'foreign.json'";
  try {
    runtime::transform_model(*model, &plan, options);
    FAIL() << "expected the plan to be refused";
  } catch (const Error& err) {
    EXPECT_EQ(err.kind(), ErrorKind::kInvalid);
    std::string what = err.what();
    EXPECT_NE(what.find("foreign.json"), std::string::npos) << what;
    EXPECT_NE(what.find("match #7"), std::string::npos) << what;
  }
}

TEST(TransformPipeline, CheckEquivalenceSeesADifferentModel) {
  auto resnet = graph::load_onnx(data_path("models/resnet_bn.onnx"));
  auto effnet = graph::load_onnx(data_path("models/efficientnet_bn.onnx"));
  std::vector<std::vector<kernels::Tensor>> batches{runtime::random_normal_inputs(*resnet, 2)};
  runtime::EquivalenceFigures same = runtime::check_equivalence(*resnet, *resnet, batches);
  EXPECT_TRUE(same.equivalent);
  EXPECT_EQ(same.max_abs_diff, 0.0);
  EXPECT_GT(same.elements, 0u);
  runtime::EquivalenceFigures other = runtime::check_equivalence(*resnet, *effnet, batches);
  EXPECT_FALSE(other.equivalent);
  EXPECT_GT(other.relative, runtime::kEquivalenceTolerance);
  EXPECT_DOUBLE_EQ(other.relative, other.max_abs_diff / std::max(1.0, other.max_abs_reference));
}

TEST(TransformPipeline, RandomSampleIsSeeded) {
  auto model = graph::load_onnx(data_path("models/resnet_bn.onnx"));
  auto a = runtime::random_normal_inputs(*model, 3, 5);
  auto b = runtime::random_normal_inputs(*model, 3, 5);
  auto c = runtime::random_normal_inputs(*model, 3, 6);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].shape(), (graph::Shape{3, 3, 32, 32}));
  auto sa = a[0].span<float>(), sb = b[0].span<float>(), sc = c[0].span<float>();
  EXPECT_TRUE(std::equal(sa.begin(), sa.end(), sb.begin()));
  EXPECT_FALSE(std::equal(sa.begin(), sa.end(), sc.begin()));
}

// The bundled Swin (data/generate/models.py: depths [2, 2, 2], 3×3 windows) has 6 blocks, each
// one window attention: SwinWindowPartition → MHAInProjection → SwinAttention → Linear (the out
// projection) → SwinWindowReverse, so 6 of each of the four window modules, whatever the form.
TEST(TransformPipeline, SwinBlocksBecomeWindowModules) {
  constexpr size_t kSwinBlocks = 2 + 2 + 2;
  for (const char* form : {"swin_bn", "swin_folded"}) {
    auto model = graph::load_onnx(data_path(std::string("models/") + form + ".onnx"));
    runtime::TransformOptions options;
    options.batch = 2;
    runtime::TransformResult r = runtime::transform_model(*model, nullptr, options);
    const std::map<std::string, size_t> modules = runtime::count_modules(*r.graph);
    for (const char* op :
         {"SwinWindowPartition", "MHAInProjection", "SwinAttention", "SwinWindowReverse"}) {
      const auto it = modules.find(op);
      EXPECT_EQ(it == modules.end() ? 0u : it->second, kSwinBlocks) << form << ": " << op;
    }
  }
}

class TransformPipelineModel : public ::testing::TestWithParam<std::string> {};

TEST_P(TransformPipelineModel, LoweredModelIsEquivalentOnTheGoldenBatch) {
  const std::string name = GetParam();
  const std::string family = name.substr(0, name.rfind('_'));
  auto model = graph::load_onnx(data_path("models/" + name + ".onnx"));
  std::vector<std::vector<kernels::Tensor>> batches(1);
  batches[0].push_back(io::read_npy(data_path("golden/" + family + "_input.npy")));
  ASSERT_EQ(batches[0][0].dim(0), kGoldenBatch);
  runtime::TransformOptions options;
  options.batch = kGoldenBatch;
  runtime::TransformResult r = runtime::transform_model(*model, nullptr, options);
  runtime::CheckedExport exported = runtime::lower_and_check(*model, *r.graph, batches);
  EXPECT_EQ(exported.lowered_modules, count_modules(*r.graph));
  EXPECT_GE(exported.lowered_modules, r.fusions.applied());
  EXPECT_EQ(exported.checked, "written model");
  EXPECT_TRUE(exported.figures.equivalent) << exported.figures.relative;
  EXPECT_LE(exported.figures.relative, runtime::kEquivalenceTolerance);
  ASSERT_FALSE(exported.onnx_bytes.empty());
  auto written = graph::parse_onnx(exported.onnx_bytes, name);
  EXPECT_EQ(count_modules(*written), 0u);
  EXPECT_EQ(written->opset, std::max<int64_t>(model->opset, 13));
}

INSTANTIATE_TEST_SUITE_P(Bundled, TransformPipelineModel,
                         ::testing::ValuesIn(testing::kBundledModelNames));

}  // namespace
}  // namespace qforge
