// Assignments to slices (graph/slice_update.h): the ScatterNDs torch.onnx writes for them run as
// SliceUpdate where their indices address a box, without computing those indices; the models
// (data/generate/slice_assign_models.py) run, train and are written as ONNX Runtime and PyTorch
// compute them, at any batch where the file's batch is symbolic.
#include "graph/slice_update.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "kernels/shape_ops.h"
#include "runtime/resolve.h"
#include "runtime/session.h"
#include "runtime/training.h"
#include "tests/support/float_checks.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"
#include "tests/support/training_golden.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Shape;
using kernels::Tensor;
using testing::data_path;
using testing::run_cli;
using testing::TempDir;

const std::string kFixed = data_path("models/ops/slice_assign_opset17.onnx");
const std::string kDynamic = data_path("models/ops/slice_assign_dynamic_opset17.onnx");

std::map<std::string, size_t> op_counts(const graph::Graph& g) {
  std::map<std::string, size_t> counts;
  for (const graph::Node* n : g.nodes()) ++counts[n->op_type()];
  return counts;
}

// The two boxes and MViT's relative positions become SliceUpdates; the reordered assignment
// stays a ScatterND. No box's indices are computed: the largest integer constant left is the
// reordered assignment's few tuples.
TEST(SliceUpdate, ResolutionRunsTheBoxesWithoutTheirIndices) {
  auto g = graph::load_onnx(kFixed);
  runtime::resolve(*g, {.input_shapes = runtime::input_shapes_for_batch(*g, 1), .parameters = {}});
  const auto counts = op_counts(*g);
  EXPECT_EQ(counts.count("SliceUpdate") ? counts.at("SliceUpdate") : 0, 3u);
  EXPECT_EQ(counts.count("ScatterND") ? counts.at("ScatterND") : 0, 1u);
  for (const graph::Value* v : g->values()) {
    if (v->is_constant() && v->dtype() == DType::kInt64) {
      EXPECT_LE(v->constant().numel(), 16) << v->name() << " " << v->constant().describe();
    }
  }
}

TEST(SliceUpdate, RunComputesWhatOnnxRuntimeComputes) {
  const Tensor one = testing::random_f32({1, 3, 4, 4}, 1, -2.0f, 2.0f);
  runtime::Session fixed(graph::load_onnx(kFixed));
  testing::expect_close_scaled(fixed.run(one)[0], testing::run_ort(kFixed, {one})[0], 1e-6,
                               "fixed batch");
  runtime::Session dynamic(graph::load_onnx(kDynamic));
  for (int64_t batch : {1, 3}) {
    const Tensor x = testing::random_f32({batch, 3, 4, 4}, 2, -2.0f, 2.0f);
    testing::expect_close_scaled(dynamic.run(x)[0], testing::run_ort(kDynamic, {x})[0], 1e-6,
                                 std::string("batch ").append(std::to_string(batch)));
  }
}

// The outputs and every parameter's gradient against PyTorch's, through the SliceUpdates and the
// ScatterND's backward.
TEST(SliceUpdate, TrainingGradientsMatchPyTorch) {
  auto g = graph::load_onnx(kFixed);
  const auto golden = io::read_npz(data_path("models/ops/slice_assign.npz"));
  testing::expect_training_step_matches(*g, golden, runtime::trainable_initializers(*g), 1e-5, 8);
}

// A ScatterND of constant indices [2, 3, 2]: rows 1 and 3 of the data, columns 0, 2 and 4 (a
// box of steps 2 and 2), or other tuples.
Tensor box_scatter(const std::vector<int64_t>& tuples, Tensor& data, Tensor& updates,
                   std::string& op_type) {
  graph::Graph g;
  graph::Value* d = g.add_input("data", DType::kFloat32, Shape{4, 5, 3});
  graph::Value* u = g.add_input("updates", DType::kFloat32, Shape{2, 3, 3});
  graph::Value* idx = g.add_constant("indices", Tensor::from_vector<int64_t>({2, 3, 2}, tuples));
  graph::Node* n = g.add_node({.name = "scatter",
                               .op_type = "ScatterND",
                               .inputs = {d, idx, u},
                               .output_names = {"y"},
                               .attributes = {},
                               .domain = {}});
  g.mark_output(n->output(0));
  auto copy = g.clone();
  runtime::Session session(std::move(copy));
  const Tensor inputs[2] = {data, updates};
  Tensor y = session.run(std::span<const Tensor>(inputs, 2))[0].clone();
  op_type = session.resolved_graph_for({{4, 5, 3}, {2, 3, 3}}).nodes().front()->op_type();
  return y;
}

TEST(SliceUpdate, ConstantIndicesOfABoxBecomeOne) {
  Tensor data = testing::random_f32({4, 5, 3}, 3, -1.0f, 1.0f);
  Tensor updates = testing::random_f32({2, 3, 3}, 4, -1.0f, 1.0f);
  struct Case {
    std::vector<int64_t> tuples;
    const char* op;
  };
  const Case cases[] = {
      {{1, 0, 1, 2, 1, 4, 3, 0, 3, 2, 3, 4}, "SliceUpdate"},       // rows 1, 3; columns 0, 2, 4
      {{1, 0, 1, 2, 1, -1, -1, 0, -1, 2, -1, -1}, "SliceUpdate"},  // the same, counted from the end
      {{1, 4, 1, 2, 1, 0, 3, 4, 3, 2, 3, 0}, "ScatterND"},         // columns backwards
      {{1, 0, 1, 2, 1, 4, 3, 0, 3, 2, 3, 3}, "ScatterND"},         // one tuple off the box
      {{1, 0, 1, 0, 1, 0, 3, 0, 3, 0, 3, 0}, "ScatterND"},         // repeated positions
  };
  for (const Case& c : cases) {
    std::string op;
    const Tensor got = box_scatter(c.tuples, data, updates, op);
    EXPECT_EQ(op, c.op);
    Tensor want(DType::kFloat32, {4, 5, 3});
    kernels::scatter_nd(data, Tensor::from_vector<int64_t>({2, 3, 2}, c.tuples), updates, want);
    testing::expect_close_scaled(got, want, 0.0, c.op);
  }
}

// Written with a symbolic batch, the model runs in ONNX Runtime at other batches: the boxes are
// written as Slices and Concats (unit steps) and as a ScatterND of the non-batch axes (the step
// of 2) between Transposes, not as indices of one batch size (as the folded indices were).
TEST(SliceUpdate, TransformWritesAModelOfAnyBatch) {
  TempDir dir;
  io::write_npy(dir.file("x.npy"), testing::random_f32({3, 3, 4, 4}, 5, -2.0f, 2.0f));
  const auto t = run_cli("transform " + kDynamic + " --data " + dir.file("x.npy") +
                         " --batch 3 -o " + dir.file("t.onnx"));
  ASSERT_EQ(t.exit_code, 0) << t.err;
  EXPECT_NE(t.out.find("SliceUpdate 3"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("symbolic batch 'batch'"), std::string::npos) << t.out;
  runtime::Session original(graph::load_onnx(kDynamic));
  for (int64_t batch : {1, 2}) {
    const Tensor x = testing::random_f32({batch, 3, 4, 4}, 6, -2.0f, 2.0f);
    testing::expect_close_scaled(testing::run_ort(dir.file("t.onnx"), {x})[0], original.run(x)[0],
                                 1e-6, std::string("batch ").append(std::to_string(batch)));
  }
}

// Calibration and QAT through the boxes: the same bytes at 1 and 2 threads, and what is written
// ONNX Runtime computes as qforge does at every Q/DQ point.
TEST(SliceUpdate, CalibrateAndQatAreVerifiedByOnnxRuntime) {
  TempDir dir;
  io::write_npy(dir.file("x.npy"), testing::random_f32({6, 3, 4, 4}, 7, -2.0f, 2.0f));
  io::write_npy(dir.file("v.npy"), testing::random_f32({2, 3, 4, 4}, 8, -2.0f, 2.0f));
  const std::string qdq = dir.file("q.onnx");
  const auto c = run_cli("calibrate " + kDynamic + " --data " + dir.file("x.npy") +
                         " --batch 3 --flip-injections 0 -o " + qdq);
  ASSERT_EQ(c.exit_code, 0) << c.err;
  testing::expect_verified_by_ort(qdq, dir.file("v.npy"), dir.file("ort.npz"));

  std::string bytes[2];
  for (int threads : {1, 2}) {
    const std::string out =
        dir.file(std::string("a").append(std::to_string(threads)).append(".onnx"));
    const auto q = run_cli("qat " + kDynamic + " --data " + dir.file("x.npy") +
                           " --distill --steps 3 --batch 2 --lr 1e-2 --threads " +
                           std::to_string(threads) + " -o " + out);
    ASSERT_EQ(q.exit_code, 0) << q.err;
    bytes[threads - 1] = testing::read_text(out);
  }
  EXPECT_EQ(bytes[0], bytes[1]);
  EXPECT_NE(bytes[0], testing::read_text(qdq));  // trained
  testing::expect_verified_by_ort(dir.file("a1.onnx"), dir.file("v.npy"), dir.file("ort2.npz"));
}

}  // namespace
}  // namespace qforge
