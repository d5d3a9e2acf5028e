// Graph edits keep producer/consumer links and the order consistent.
#include "graph/ir.h"

#include <gtest/gtest.h>

namespace qforge::graph {
namespace {

// x -> Relu(a) -> Sigmoid(b) -> y
struct Chain {
  Graph g;
  Value* x;
  Node* relu;
  Node* sigmoid;
  Chain() {
    x = g.add_input("x", DType::kFloat32, Shape{1, 4});
    relu = g.add_node({.name = "relu", .op_type = "Relu", .inputs = {x}, .output_names = {"a"}});
    sigmoid = g.add_node({.name = "sigmoid",
                          .op_type = "Sigmoid",
                          .inputs = {relu->output(0)},
                          .output_names = {"b"}});
    g.mark_output(sigmoid->output(0));
  }
};

TEST(GraphIr, BuildsLinks) {
  Chain c;
  EXPECT_EQ(c.relu->output(0)->producer(), c.relu);
  ASSERT_EQ(c.x->consumers().size(), 1u);
  EXPECT_EQ(c.x->consumers()[0], c.relu);
  EXPECT_TRUE(c.sigmoid->output(0)->is_graph_output());
  EXPECT_NO_THROW(c.g.check_consistency());
}

TEST(GraphIr, ReplaceUsesAndRemoveDead) {
  Chain c;
  // Bypass the Relu: Sigmoid reads x directly, and the Relu becomes dead.
  c.g.replace_all_uses(c.relu->output(0), c.x);
  EXPECT_EQ(c.sigmoid->input(0), c.x);
  EXPECT_EQ(c.g.remove_dead(), 1u);
  EXPECT_EQ(c.g.nodes().size(), 1u);
  EXPECT_EQ(c.g.find_node("relu"), nullptr);
  EXPECT_EQ(c.g.find_value("a"), nullptr);
  EXPECT_NO_THROW(c.g.check_consistency());
}

TEST(GraphIr, AReleasedConstantKeepsItsTypeButNotItsValues) {
  Graph g;
  Value* k = g.add_constant("k", Tensor::from_vector<float>({2}, {1.f, -2.f}));
  Node* neg = g.add_node({.name = "neg", .op_type = "Neg", .inputs = {k}, .output_names = {"nk"}});
  g.mark_output(neg->output(0));
  k->release_constant();
  EXPECT_TRUE(k->is_constant());
  EXPECT_TRUE(k->is_released());
  EXPECT_EQ(k->dtype(), DType::kFloat32);
  EXPECT_EQ(k->shape(), (Shape{2}));
  auto copy = g.clone();
  for (const Value* v : std::vector<const Value*>{k, copy->find_value("k")}) {
    EXPECT_TRUE(v->is_released());
    try {
      (void)v->constant();
      ADD_FAILURE() << "a released constant's values were readable";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInternal);
      EXPECT_NE(std::string(e.what()).find("'k'"), std::string::npos) << e.what();
    }
  }
  // Setting a value again makes it an ordinary constant.
  k->set_constant(Tensor::from_vector<float>({2}, {3.f, 4.f}));
  EXPECT_FALSE(k->is_released());
  EXPECT_EQ(k->constant().data<float>()[1], 4.f);
}

TEST(GraphIr, FoldNodeKeepsAConstantThatAnotherNodeReads) {
  Graph g;
  Value* k = g.add_constant("k", Tensor::from_vector<float>({2}, {1.f, -2.f}));
  Node* neg = g.add_node({.name = "neg", .op_type = "Neg", .inputs = {k}, .output_names = {"nk"}});
  Node* add = g.add_node(
      {.name = "add", .op_type = "Add", .inputs = {k, neg->output(0)}, .output_names = {"y"}});
  g.mark_output(add->output(0));
  g.fold_node(neg, {Tensor::from_vector<float>({2}, {-1.f, 2.f})});
  EXPECT_FALSE(k->is_released());
  EXPECT_EQ(k->constant().data<float>()[1], -2.f);
}

TEST(GraphIr, FoldNodeTurnsOutputsIntoConstants) {
  Graph g;
  Value* k = g.add_constant("k", Tensor::from_vector<float>({2}, {1.f, -2.f}));
  Node* neg = g.add_node({.name = "neg", .op_type = "Neg", .inputs = {k}, .output_names = {"nk"}});
  Value* x = g.add_input("x", DType::kFloat32, Shape{2});
  Node* add = g.add_node(
      {.name = "add", .op_type = "Add", .inputs = {x, neg->output(0)}, .output_names = {"y"}});
  g.mark_output(add->output(0));
  g.fold_node(neg, {Tensor::from_vector<float>({2}, {-1.f, 2.f})});
  Value* nk = g.find_value("nk");
  ASSERT_NE(nk, nullptr);
  EXPECT_TRUE(nk->is_constant());
  EXPECT_EQ(nk->producer(), nullptr);
  EXPECT_EQ(nk->constant().data<float>()[1], 2.f);
  EXPECT_TRUE(k->consumers().empty());
  EXPECT_TRUE(k->is_released());  // nothing else read it: its values are gone already
  g.remove_dead();
  EXPECT_EQ(g.find_value("k"), nullptr);
  EXPECT_NO_THROW(g.check_consistency());
}

// A fold of nodes that read literals only (a Constant node, then arithmetic on its value) is a
// literal; a fold that reads an initializer (a constant the graph was given) is not, even with
// literals beside it; the flag survives a clone.
TEST(GraphIr, FoldsOfLiteralsAreLiterals) {
  Graph g;
  Node* eps = g.add_node({.name = "eps", .op_type = "Constant", .output_names = {"e"}});
  Node* twice = g.add_node({.name = "twice",
                            .op_type = "Add",
                            .inputs = {eps->output(0), eps->output(0)},
                            .output_names = {"e2"}});
  Value* w = g.add_constant("w", Tensor::from_vector<float>({2}, {1.f, 2.f}));
  Node* scaled = g.add_node({.name = "scaled",
                             .op_type = "Mul",
                             .inputs = {w, twice->output(0)},
                             .output_names = {"ws"}});
  Value* x = g.add_input("x", DType::kFloat32, Shape{2});
  Node* add = g.add_node(
      {.name = "add", .op_type = "Add", .inputs = {x, scaled->output(0)}, .output_names = {"y"}});
  Node* add2 = g.add_node({.name = "add2",
                           .op_type = "Add",
                           .inputs = {add->output(0), twice->output(0)},
                           .output_names = {"z"}});
  g.mark_output(add2->output(0));
  EXPECT_FALSE(w->is_literal());
  g.fold_node(eps, {Tensor::scalar_f32(1e-5f)});
  g.fold_node(twice, {Tensor::scalar_f32(2e-5f)});
  g.fold_node(scaled, {Tensor::from_vector<float>({2}, {2e-5f, 4e-5f})});
  EXPECT_TRUE(g.find_value("e")->is_literal());
  EXPECT_TRUE(g.find_value("e2")->is_literal());
  EXPECT_FALSE(g.find_value("ws")->is_literal());
  const auto copy = g.clone();
  EXPECT_TRUE(copy->find_value("e2")->is_literal());
  EXPECT_FALSE(copy->find_value("ws")->is_literal());
}

TEST(GraphIr, CloneIsDeepAndConsistent) {
  Chain c;
  c.relu->set_attr("alpha", 0.5f);
  auto copy = c.g.clone();
  EXPECT_NO_THROW(copy->check_consistency());
  Node* relu = copy->find_node("relu");
  ASSERT_NE(relu, nullptr);
  EXPECT_NE(relu, c.relu);
  EXPECT_EQ(relu->attr_float("alpha"), 0.5f);
  EXPECT_EQ(relu->input(0), copy->find_value("x"));
  EXPECT_EQ(copy->outputs()[0]->name(), "b");
}

TEST(GraphIr, AttributeErrorsNameTheNode) {
  Chain c;
  c.relu->set_attr("axis", int64_t{3});
  EXPECT_EQ(c.relu->attr_int("axis"), 3);
  EXPECT_EQ(c.relu->attr_int("missing", 7), 7);
  try {
    c.relu->attr_float("axis");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_NE(std::string(e.what()).find("node 'relu' (Relu)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(c.relu->attr_ints("perm"), Error);
}

TEST(GraphIr, DuplicateValueNameIsInvalid) {
  Chain c;
  EXPECT_THROW(c.g.add_input("a", DType::kFloat32, Shape{1}), Error);
}

}  // namespace
}  // namespace qforge::graph
