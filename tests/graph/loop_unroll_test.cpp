// Loops of a constant trip count unrolled and sequences resolved on import (graph/loop_unroll.h):
// torch.onnx's tensor_split (a SequenceEmpty, a Loop of SequenceInserts, SequenceAt reads) and
// the other sequence ops (data/generate/sequence_models.py) compute what ONNX Runtime computes on
// the same file, with no Loop or sequence op left in the imported graph; a Loop qforge cannot
// unroll stays a Loop (post-processing), and a sequence that cannot be resolved is refused naming
// the sequence op, the model left as it was.
#include <gtest/gtest.h>

#include <onnx/onnx_pb.h>

#include <string>
#include <vector>

#include "graph/loop_unroll.h"
#include "graph/onnx_import.h"
#include "runtime/session.h"
#include "tests/support/errors.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"

namespace qforge::graph {
namespace {

using kernels::Tensor;

const std::string kTensorSplit = testing::data_path("models/ops/tensor_split_opset17.onnx");
const std::string kSequenceOps = testing::data_path("models/ops/sequence_ops_opset17.onnx");
const std::string kSequenceOpsOpset11 = testing::data_path("models/ops/sequence_ops_opset11.onnx");

// The op types of the imported graph that are loops or sequence ops.
std::vector<std::string> loop_and_sequence_ops(const Graph& g) {
  std::vector<std::string> found;
  for (const Node* n : g.nodes()) {
    const std::string& op = n->op_type();
    if (op == "Loop" || op.find("Sequence") != std::string::npos) found.push_back(op);
  }
  return found;
}

size_t count_ops(const Graph& g, const std::string& op) {
  size_t count = 0;
  for (const Node* n : g.nodes()) count += n->op_type() == op;
  return count;
}

// qforge's outputs against ONNX Runtime's on the same file and input: float outputs within 1e-5
// of the largest |output|, integer ones equal.
void expect_outputs_match_ort(const std::string& path, const Tensor& x) {
  runtime::Session session(load_onnx(path));
  const auto got = session.run(x);
  const std::vector<Tensor> want = testing::run_ort(path, {x});
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < want.size(); ++k) {
    SCOPED_TRACE("output " + std::to_string(k));
    ASSERT_EQ(got[k].shape(), want[k].shape());
    ASSERT_EQ(got[k].dtype(), want[k].dtype());
    if (want[k].dtype() == DType::kInt64) {
      for (int64_t i = 0; i < want[k].numel(); ++i) {
        EXPECT_EQ(got[k].data<int64_t>()[i], want[k].data<int64_t>()[i]) << i;
      }
      continue;
    }
    float peak = 0, worst = 0;
    for (int64_t i = 0; i < want[k].numel(); ++i) {
      peak = std::max(peak, std::abs(want[k].data<float>()[i]));
      worst = std::max(worst, std::abs(got[k].data<float>()[i] - want[k].data<float>()[i]));
    }
    EXPECT_GT(peak, 0.1f);
    EXPECT_LE(worst, 1e-5f * peak) << "max |qforge - ORT| " << worst << " of " << peak;
  }
}

TEST(LoopUnroll, TensorSplitComputesWhatOnnxRuntimeComputes) {
  expect_outputs_match_ort(kTensorSplit, testing::random_f32({1, 4, 6, 5}, 3, -2.0f, 2.0f));
}

// At opset 11 the Split, Squeeze and Unsqueeze written take their axes and sizes as attributes,
// which the version converter then brings to 13.
TEST(LoopUnroll, SequenceOpsComputeWhatOnnxRuntimeComputes) {
  for (const std::string& path : {kSequenceOps, kSequenceOpsOpset11}) {
    SCOPED_TRACE(path);
    expect_outputs_match_ort(path, testing::random_f32({2, 3, 4}, 4, -2.0f, 2.0f));
  }
}

// Both loops of the tensor_split become their Slices: one and two iterations, plus the Slice
// after each loop; the sequence ops become the pieces they hold.
TEST(LoopUnroll, ImportLeavesNoLoopOrSequenceOp) {
  const auto split = load_onnx(kTensorSplit);
  EXPECT_EQ(loop_and_sequence_ops(*split), std::vector<std::string>{});
  EXPECT_EQ(count_ops(*split, "Slice"), 5u);
  EXPECT_EQ(split->tail, nullptr);
  for (const std::string& path : {kSequenceOps, kSequenceOpsOpset11}) {
    SCOPED_TRACE(path);
    const auto sequences = load_onnx(path);
    EXPECT_EQ(loop_and_sequence_ops(*sequences), std::vector<std::string>{});
    EXPECT_EQ(count_ops(*sequences, "Split"), 2u);
    EXPECT_EQ(sequences->tail, nullptr);
  }
}

// x [2, 3] -> y: a Loop whose body reads xr = Relu(x) from the graph around it, either inserting
// it into a sequence (SequenceEmpty before, SequenceAt after) or adding it to a carried sum.
struct LoopModel {
  int64_t trips = 2;             // the trip count, a Constant node
  bool dynamic_trips = false;    // the trip count x's dim 1, computed from its shape instead
  bool sequence = true;          // false: the loop carries x's running sum
  bool index_input = false;      // SequenceAt's index a graph input
  bool sequence_output = false;  // the loop's sequence is the graph's output
};

void declare_tensor(onnx::ValueInfoProto* v, const std::string& name, int elem_type,
                    const std::vector<int64_t>& shape) {
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(elem_type);
  auto* s = t->mutable_shape();
  for (int64_t d : shape) s->add_dim()->set_dim_value(d);
}

void declare_sequence(onnx::ValueInfoProto* v, const std::string& name) {
  v->set_name(name);
  v->mutable_type()
      ->mutable_sequence_type()
      ->mutable_elem_type()
      ->mutable_tensor_type()
      ->set_elem_type(onnx::TensorProto::FLOAT);
}

onnx::NodeProto* add_node(onnx::GraphProto* g, const std::string& op, const std::string& name,
                          const std::vector<std::string>& inputs,
                          const std::vector<std::string>& outputs) {
  onnx::NodeProto* n = g->add_node();
  n->set_op_type(op);
  n->set_name(name);
  for (const auto& i : inputs) n->add_input(i);
  for (const auto& o : outputs) n->add_output(o);
  return n;
}

void add_int64(onnx::GraphProto* g, const std::string& name, int64_t value) {
  auto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::INT64);
  t->add_int64_data(value);
}

onnx::ModelProto loop_model(const LoopModel& c) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  auto* o = m.add_opset_import();
  o->set_domain("");
  o->set_version(17);
  auto* g = m.mutable_graph();
  g->set_name("loop");
  declare_tensor(g->add_input(), "x", onnx::TensorProto::FLOAT, {2, 3});
  if (c.index_input) declare_tensor(g->add_input(), "i", onnx::TensorProto::INT64, {});
  add_node(g, "Relu", "act", {"x"}, {"xr"});
  if (c.dynamic_trips) {
    add_int64(g, "one", 1);
    add_node(g, "Shape", "shape", {"x"}, {"shape"});
    add_node(g, "Gather", "trips", {"shape", "one"}, {"trips"});
  } else {
    onnx::NodeProto* n = add_node(g, "Constant", "trips", {}, {"trips"});
    auto* a = n->add_attribute();
    a->set_name("value");
    a->set_type(onnx::AttributeProto::TENSOR);
    a->mutable_t()->set_data_type(onnx::TensorProto::INT64);
    a->mutable_t()->add_int64_data(c.trips);
  }

  onnx::NodeProto* loop = nullptr;
  onnx::GraphProto body;
  body.set_name("body");
  declare_tensor(body.add_input(), "iteration", onnx::TensorProto::INT64, {});
  declare_tensor(body.add_input(), "cond_in", onnx::TensorProto::BOOL, {});
  declare_tensor(body.add_output(), "cond_out", onnx::TensorProto::BOOL, {});
  add_node(&body, "Identity", "keep_going", {"cond_in"}, {"cond_out"});
  if (c.sequence) {
    add_node(g, "SequenceEmpty", "empty", {}, {"seq"});
    declare_sequence(body.add_input(), "seq_in");
    declare_sequence(body.add_output(), "seq_out");
    add_node(&body, "SequenceInsert", "insert", {"seq_in", "xr"}, {"seq_out"});
    loop = add_node(g, "Loop", "loop", {"trips", "", "seq"}, {"pieces"});
    if (c.sequence_output) {
      declare_sequence(g->add_output(), "pieces");
    } else {
      if (!c.index_input) add_int64(g, "i", -1);
      add_node(g, "SequenceAt", "last", {"pieces", "i"}, {"y"});
      declare_tensor(g->add_output(), "y", onnx::TensorProto::FLOAT, {2, 3});
    }
  } else {
    auto* zeros = g->add_initializer();
    zeros->set_name("zeros");
    zeros->set_data_type(onnx::TensorProto::FLOAT);
    zeros->add_dims(2);
    zeros->add_dims(3);
    for (int i = 0; i < 6; ++i) zeros->add_float_data(0.0f);
    declare_tensor(body.add_input(), "sum_in", onnx::TensorProto::FLOAT, {2, 3});
    declare_tensor(body.add_output(), "sum_out", onnx::TensorProto::FLOAT, {2, 3});
    add_node(&body, "Add", "accumulate", {"sum_in", "xr"}, {"sum_out"});
    loop = add_node(g, "Loop", "loop", {"trips", "", "zeros"}, {"y"});
    declare_tensor(g->add_output(), "y", onnx::TensorProto::FLOAT, {2, 3});
  }
  auto* a = loop->add_attribute();
  a->set_name("body");
  a->set_type(onnx::AttributeProto::GRAPH);
  *a->mutable_g() = body;
  return m;
}

std::unique_ptr<Graph> parse(const LoopModel& c) {
  return parse_onnx(loop_model(c).SerializeAsString(), "loop.onnx");
}

// A loop of constant trips whose body reads xr from the graph: y = xr (the last piece) or 2·xr
// (the sum of two iterations), as ONNX Runtime computes it.
TEST(LoopUnroll, BodyReadsAValueOfTheGraphAroundIt) {
  const Tensor x = testing::random_f32({2, 3}, 5, -2.0f, 2.0f);
  for (bool sequence : {true, false}) {
    SCOPED_TRACE(sequence ? "sequence" : "sum");
    testing::TempDir dir;
    const std::string path = dir.file("loop.onnx");
    testing::write_bytes(path, loop_model({.sequence = sequence}).SerializeAsString());
    const auto graph = load_onnx(path);
    EXPECT_EQ(loop_and_sequence_ops(*graph), std::vector<std::string>{});
    EXPECT_EQ(graph->tail, nullptr);
    expect_outputs_match_ort(path, x);
  }
}

// A Loop without sequences that cannot be unrolled stays a Loop: the post-processing qforge
// keeps without running it (graph/tail.h), as before.
TEST(LoopUnroll, LoopOfUnknownOrLongTripCountIsKeptAsPostProcessing) {
  for (const LoopModel& c : {LoopModel{.dynamic_trips = true, .sequence = false},
                             LoopModel{.trips = kMaxUnrolledTrips + 1, .sequence = false}}) {
    SCOPED_TRACE(c.dynamic_trips ? "dynamic" : "long");
    const auto graph = parse(c);
    ASSERT_NE(graph->tail, nullptr);
    EXPECT_EQ(graph->tail->first, "node 'loop' (Loop)");
  }
  // At the limit the loop is unrolled.
  const auto graph = parse({.trips = kMaxUnrolledTrips, .sequence = false});
  EXPECT_EQ(graph->tail, nullptr);
  EXPECT_EQ(count_ops(*graph, "Add"), static_cast<size_t>(kMaxUnrolledTrips));
}

// A sequence that cannot be resolved when the model is read leaves the model as it was: the
// import refuses the first sequence op, naming it.
TEST(LoopUnroll, UnresolvableSequenceIsRefusedNamingTheNode) {
  const std::string refusal =
      "import: node 'empty' (SequenceEmpty): op 'SequenceEmpty' (opset 17) is not supported by "
      "qforge";
  const std::pair<const char*, LoopModel> cases[] = {
      {"dynamic trips", {.dynamic_trips = true}},
      {"too many trips", {.trips = kMaxUnrolledTrips + 1}},
      {"index from an input", {.index_input = true}},
      {"sequence output", {.sequence_output = true}},
  };
  for (const auto& entry : cases) {
    SCOPED_TRACE(entry.first);
    const LoopModel& c = entry.second;
    EXPECT_EQ(testing::error_of(ErrorKind::kUnsupported, [&] { parse(c); }), refusal);
  }
}

// The rewrite on the protobuf itself: all or nothing, and no sequence declaration left.
TEST(LoopUnroll, RewriteIsAllOrNothing) {
  onnx::ModelProto kept = loop_model({.index_input = true});
  const std::string before = kept.SerializeAsString();
  unroll_loops_and_sequences(kept, 17);
  EXPECT_EQ(kept.SerializeAsString(), before);

  onnx::ModelProto resolved = loop_model({});
  declare_sequence(resolved.mutable_graph()->add_value_info(), "pieces");
  unroll_loops_and_sequences(resolved, 17);
  EXPECT_EQ(resolved.graph().value_info_size(), 0);
  std::vector<std::string> ops;
  for (const auto& n : resolved.graph().node()) ops.push_back(n.op_type() + " " + n.name());
  // The pieces are xr twice; the copies' conditions, which nothing reads, are gone.
  EXPECT_EQ(ops, (std::vector<std::string>{"Relu act", "Constant trips", "Identity last"}))
      << ::testing::PrintToString(ops);
}

}  // namespace
}  // namespace qforge::graph
