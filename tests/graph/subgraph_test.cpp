// extract: a part of a graph as a graph of its own.
#include "graph/subgraph.h"

#include <gtest/gtest.h>

#include <vector>

#include "kernels/error.h"

namespace qforge::graph {
namespace {

// x -> Relu(a) -> Mul(a, k) = b -> Sigmoid(b) = c -> Add(c, a) = y; Neg(x) = n, read by nothing
// in the part below.
struct Model {
  Graph g;
  Node* relu;
  Node* mul;
  Node* sigmoid;
  Node* add;
  Node* neg;
  Model() {
    g.name = "m";
    g.opset = 17;
    Value* x = g.add_input("x", DType::kFloat32, Shape{2, 3});
    Value* k = g.add_constant("k", Tensor::from_vector<float>({3}, {1.f, 2.f, 3.f}));
    relu = g.add_node({.name = "relu", .op_type = "Relu", .inputs = {x}, .output_names = {"a"}});
    relu->output(0)->set_type(DType::kFloat32, Shape{2, 3});
    mul = g.add_node(
        {.name = "mul", .op_type = "Mul", .inputs = {relu->output(0), k}, .output_names = {"b"}});
    sigmoid = g.add_node({.name = "sigmoid",
                          .op_type = "Sigmoid",
                          .inputs = {mul->output(0)},
                          .output_names = {"c"},
                          .attributes = {{"tag", int64_t{7}}}});
    add = g.add_node({.name = "add",
                      .op_type = "Add",
                      .inputs = {sigmoid->output(0), relu->output(0)},
                      .output_names = {"y"}});
    neg = g.add_node({.name = "neg", .op_type = "Neg", .inputs = {x}, .output_names = {"n"}});
    g.mark_output(add->output(0));
    g.mark_output(neg->output(0));
  }
};

TEST(GraphExtract, TheNodesBetweenTwoCutsReadTheirInputsAndShareTheConstants) {
  Model m;
  const Value* a = m.relu->output(0);
  // Given out of order: the part keeps the graph's order. Neg reads x, which is no input of the
  // part, and no output needs it: it is left out rather than refused.
  const std::vector<const Node*> nodes = {m.add, m.sigmoid, m.mul};
  const std::vector<const Value*> inputs = {a};
  const std::vector<const Value*> outputs = {m.add->output(0), m.sigmoid->output(0)};
  auto part = extract(m.g, nodes, inputs, outputs);
  EXPECT_NO_THROW(part->check_consistency());
  EXPECT_EQ(part->name, "m");
  EXPECT_EQ(part->opset, 17);
  ASSERT_EQ(part->inputs().size(), 1u);
  EXPECT_EQ(part->inputs()[0]->name(), "a");
  EXPECT_EQ(part->inputs()[0]->shape(), (Shape{2, 3}));
  ASSERT_EQ(part->outputs().size(), 2u);
  EXPECT_EQ(part->outputs()[0]->name(), "y");
  EXPECT_EQ(part->outputs()[1]->name(), "c");
  ASSERT_EQ(part->nodes().size(), 3u);
  EXPECT_EQ(part->nodes()[0]->name(), "mul");
  EXPECT_EQ(part->nodes()[1]->name(), "sigmoid");
  EXPECT_EQ(part->nodes()[2]->name(), "add");
  EXPECT_EQ(part->nodes()[1]->attr_int("tag"), 7);
  EXPECT_EQ(part->nodes()[2]->input(1), part->inputs()[0]);
  const Value* k = part->find_value("k");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->constant().raw(), m.g.find_value("k")->constant().raw());
  // Nodes no output needs are left out.
  const std::vector<const Value*> only_c = {m.sigmoid->output(0)};
  auto shorter = extract(m.g, nodes, inputs, only_c);
  EXPECT_EQ(shorter->nodes().size(), 2u);
  EXPECT_EQ(shorter->find_node("add"), nullptr);
}

TEST(GraphExtract, AValueNeitherFedNorProducedIsAnInternalError) {
  Model m;
  const std::vector<const Node*> nodes = {m.mul, m.sigmoid};
  const std::vector<const Value*> outputs = {m.sigmoid->output(0)};
  try {
    extract(m.g, nodes, {}, outputs);
    FAIL() << "extract took a part that reads 'a' without it";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
    EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qforge::graph
