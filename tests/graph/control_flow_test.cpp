// If nodes (graph/control_flow.h): imported with their branches as graph attributes, replaced at
// resolution by the branch the input shapes select. Models are written as protobuf here, in the
// form torch.onnx gives a `squeeze(1)` of a dim it cannot prove is 1: the condition is
// Equal(Shape(x)[1], 1). qforge computes at each shape what ONNX Runtime computes on the same
// file; the branches read the enclosing graph's values, their own constants and initializers,
// and a nested If; a condition computed from the input values, and malformed Ifs, are refused
// naming the node.
#include <gtest/gtest.h>

#include <onnx/onnx_pb.h>

#include <cctype>
#include <string>
#include <vector>

#include "graph/control_flow.h"
#include "graph/onnx_import.h"
#include "runtime/resolve.h"
#include "runtime/session.h"
#include "tests/support/errors.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"

namespace qforge::graph {
namespace {

using kernels::Tensor;

onnx::NodeProto* node(onnx::GraphProto* g, const std::string& op, const std::string& name,
                      const std::vector<std::string>& inputs,
                      const std::vector<std::string>& outputs) {
  onnx::NodeProto* n = g->add_node();
  n->set_op_type(op);
  n->set_name(name);
  for (const auto& in : inputs) n->add_input(in);
  for (const auto& out : outputs) n->add_output(out);
  return n;
}

void int64_constant(onnx::GraphProto* g, const std::string& name, std::vector<int64_t> values,
                    bool scalar) {
  onnx::NodeProto* n = node(g, "Constant", name, {}, {name});
  onnx::AttributeProto* a = n->add_attribute();
  a->set_name("value");
  a->set_type(onnx::AttributeProto::TENSOR);
  onnx::TensorProto* t = a->mutable_t();
  t->set_data_type(onnx::TensorProto::INT64);
  if (!scalar) t->add_dims(static_cast<int64_t>(values.size()));
  for (int64_t v : values) t->add_int64_data(v);
}

void float_tensor(onnx::TensorProto* t, const std::string& name, std::vector<float> values) {
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::FLOAT);
  t->add_dims(static_cast<int64_t>(values.size()));
  for (float v : values) t->add_float_data(v);
}

void declare(onnx::ValueInfoProto* v, const std::string& name, std::vector<std::string> dims) {
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  for (const auto& d : dims) {
    auto* dim = t->mutable_shape()->add_dim();
    if (d.empty() || std::isdigit(static_cast<unsigned char>(d[0]))) {
      dim->set_dim_value(d.empty() ? 1 : std::stoll(d));
    } else {
      dim->set_dim_param(d);
    }
  }
}

void add_branch(onnx::NodeProto* n, const char* name, const onnx::GraphProto& g) {
  onnx::AttributeProto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::GRAPH);
  *a->mutable_g() = g;
}

// then: Squeeze(x, [1]) · w (w of the enclosing graph); else: ReduceMean(x over axis 1) · v (an
// initializer of the branch), then, with `nested`, an If on the same condition whose else adds w.
onnx::GraphProto then_branch() {
  onnx::GraphProto g;
  g.set_name("then");
  int64_constant(&g, "then_axes", {1}, false);
  node(&g, "Squeeze", "squeeze", {"x", "then_axes"}, {"squeezed"});
  node(&g, "Mul", "then_scale", {"squeezed", "w"}, {"then_out"});
  declare(g.add_output(), "then_out", {"N", "4"});
  return g;
}

onnx::GraphProto else_branch(bool nested) {
  onnx::GraphProto g;
  g.set_name("else");
  float_tensor(g.add_initializer(), "v", {0.5f, -1.0f, 2.0f, 0.25f});
  onnx::NodeProto* mean = node(&g, "ReduceMean", "mean", {"x"}, {"mean_out"});
  onnx::AttributeProto* axes = mean->add_attribute();
  axes->set_name("axes");
  axes->set_type(onnx::AttributeProto::INTS);
  axes->add_ints(1);
  onnx::AttributeProto* keepdims = mean->add_attribute();
  keepdims->set_name("keepdims");
  keepdims->set_type(onnx::AttributeProto::INT);
  keepdims->set_i(0);
  node(&g, "Mul", "else_scale", {"mean_out", "v"}, {"scaled"});
  if (!nested) {
    node(&g, "Identity", "else_pass", {"scaled"}, {"else_out"});
  } else {
    onnx::GraphProto inner_then;
    inner_then.set_name("inner_then");
    node(&inner_then, "Neg", "inner_neg", {"scaled"}, {"inner_then_out"});
    declare(inner_then.add_output(), "inner_then_out", {"N", "4"});
    onnx::GraphProto inner_else;
    inner_else.set_name("inner_else");
    node(&inner_else, "Add", "inner_add", {"scaled", "w"}, {"inner_else_out"});
    declare(inner_else.add_output(), "inner_else_out", {"N", "4"});
    onnx::NodeProto* inner = node(&g, "If", "inner_if", {"cond"}, {"else_out"});
    add_branch(inner, "then_branch", inner_then);
    add_branch(inner, "else_branch", inner_else);
  }
  declare(g.add_output(), "else_out", {"N", "4"});
  return g;
}

// x [N, S, 4] -> If(S == 1) -> Relu -> y [N, 4]; `data_dependent`: the condition is
// ReduceSum(x) > 0 instead.
onnx::ModelProto if_model(bool nested = false, bool data_dependent = false) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  auto* opset = m.add_opset_import();
  opset->set_domain("");
  opset->set_version(14);
  onnx::GraphProto* g = m.mutable_graph();
  g->set_name("if_model");
  declare(g->add_input(), "x", {"N", "S", "4"});
  float_tensor(g->add_initializer(), "w", {1.0f, 2.0f, -3.0f, 4.0f});
  if (data_dependent) {
    node(g, "ReduceSum", "total", {"x"}, {"total"});
    onnx::TensorProto* zero = g->add_initializer();
    zero->set_name("zero");
    zero->set_data_type(onnx::TensorProto::FLOAT);
    zero->add_float_data(0.0f);
    node(g, "Greater", "positive", {"total", "zero"}, {"cond"});
  } else {
    node(g, "Shape", "shape", {"x"}, {"shape"});
    int64_constant(g, "one_index", {1}, true);
    node(g, "Gather", "dim1", {"shape", "one_index"}, {"dim1"});
    int64_constant(g, "one", {1}, true);
    node(g, "Equal", "is_one", {"dim1", "one"}, {"cond"});
  }
  onnx::NodeProto* branch = node(g, "If", "squeeze_if", {"cond"}, {"picked"});
  add_branch(branch, "then_branch", then_branch());
  add_branch(branch, "else_branch", else_branch(nested));
  node(g, "Relu", "relu", {"picked"}, {"y"});
  declare(g->add_output(), "y", {"N", "4"});
  return m;
}

// At S = 1 the then branch, at S = 3 the else branch: qforge's outputs are ONNX Runtime's, bit
// for bit (each element is one product, mean or sum of the same floats in the same order).
TEST(IfImport, EachShapeTakesTheBranchOnnxRuntimeTakes) {
  for (bool nested : {false, true}) {
    SCOPED_TRACE(nested ? "nested If in the else branch" : "one If");
    testing::TempDir dir;
    const std::string path = dir.file("if.onnx");
    testing::write_bytes(path, if_model(nested).SerializeAsString());
    runtime::Session session(load_onnx(path));
    for (int64_t s : {1, 3}) {
      SCOPED_TRACE(s);
      const Tensor x = testing::random_f32({2, s, 4}, 7 + static_cast<uint64_t>(s), -2.0f, 2.0f);
      const Tensor got = session.run(x)[0].clone();
      const Tensor want = testing::run_ort(path, {x})[0];
      ASSERT_EQ(got.shape(), want.shape());
      EXPECT_EQ(got.to_float_vector(), want.to_float_vector());
      // The resolved graph has no If left; the branch's nodes keep their names.
      const graph::Graph& resolved = session.resolved_graph_for({{2, s, 4}});
      for (const graph::Node* n : resolved.nodes()) EXPECT_NE(n->op_type(), "If") << n->label();
      EXPECT_NE(resolved.find_node(s == 1 ? "then_scale" : "else_scale"), nullptr);
      EXPECT_NE(resolved.find_value("y"), nullptr);
    }
  }
}

// The If lists the enclosing values its branches read after its condition, so the graph's
// links see them; inline_branch puts the branch in its place and the If's output keeps its name.
TEST(IfImport, TheBranchReplacesTheIfUnderItsOutputsName) {
  auto g = parse_onnx(if_model(true).SerializeAsString(), "if.onnx");
  const Node* branch = g->find_node("squeeze_if");
  ASSERT_NE(branch, nullptr);
  std::vector<std::string> inputs;
  for (const Value* v : branch->inputs()) inputs.push_back(v->name());
  // Its condition, then what the branches read: x, w, and the condition again for the inner If.
  EXPECT_EQ(inputs, (std::vector<std::string>{"cond", "x", "w", "cond"}));
  const Graph& inner = branch->attr_graph("else_branch");
  ASSERT_NE(inner.find_node("inner_if"), nullptr);
  EXPECT_EQ(inner.find_node("inner_if")->num_inputs(), 3u);  // cond, scaled, w

  const std::vector<Node*> made = inline_branch(*g, g->find_node("squeeze_if"), false);
  ASSERT_EQ(made.size(), 3u);  // ReduceMean, Mul, the inner If
  EXPECT_EQ(made[2]->op_type(), "If");
  EXPECT_EQ(g->find_node("squeeze_if"), nullptr);
  EXPECT_EQ(made[2]->output(0)->name(), "picked");
  EXPECT_EQ(g->find_node("relu")->input(0), made[2]->output(0));
  EXPECT_NE(g->find_value("v"), nullptr);  // the branch's initializer
  g->check_consistency();
}

TEST(IfImport, AConditionOnTheInputValuesIsRefused) {
  testing::TempDir dir;
  const std::string path = dir.file("if.onnx");
  testing::write_bytes(path, if_model(false, true).SerializeAsString());
  runtime::Session session(load_onnx(path));
  const std::string message = testing::error_of(ErrorKind::kUnsupported, [&] {
    session.run(testing::random_f32({2, 3, 4}, 1, -1.0f, 1.0f));
  });
  EXPECT_NE(message.find("resolve: node 'squeeze_if' (If): its condition 'cond' depends on the "
                         "input values; qforge runs an If whose condition the input shapes "
                         "decide"),
            std::string::npos)
      << message;
}

TEST(IfImport, MalformedIfsAndUnknownOpsInBranchesAreNamed) {
  auto error = [](const onnx::ModelProto& m, ErrorKind kind) {
    return testing::error_of(kind, [&] { parse_onnx(m.SerializeAsString(), "m.onnx"); });
  };
  onnx::ModelProto m = if_model();
  onnx::NodeProto* branch = m.mutable_graph()->mutable_node(5);
  ASSERT_EQ(branch->op_type(), "If");
  branch->mutable_attribute()->RemoveLast();  // the else_branch
  EXPECT_NE(error(m, ErrorKind::kInvalid)
                .find("node 'squeeze_if' (If): expected graph attribute 'else_branch'"),
            std::string::npos);

  m = if_model();
  m.mutable_graph()
      ->mutable_node(5)
      ->mutable_attribute(0)
      ->mutable_g()
      ->mutable_node(1)
      ->set_op_type("Det");
  EXPECT_NE(error(m, ErrorKind::kUnsupported)
                .find("node 'squeeze' (Det): op 'Det' (opset 14) is not supported by qforge"),
            std::string::npos);

  m = if_model();
  m.mutable_graph()->mutable_node(5)->mutable_attribute(0)->mutable_g()->add_output()->set_name(
      "squeezed");
  EXPECT_NE(error(m, ErrorKind::kInvalid)
                .find("node 'squeeze_if' (If): its then_branch has 2 outputs, the node 1"),
            std::string::npos);
}

}  // namespace
}  // namespace qforge::graph
