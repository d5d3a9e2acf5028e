// Import refuses attributes and declared shapes that break the catalog's rules, naming the node
// or input, before libonnx's shape inference or any kernel sees them (a stride of 0 divides by
// zero there), and keeps from libonnx what its inference misreads.
#include <gtest/gtest.h>

#include <onnx/onnx_pb.h>

#include <string>

#include "graph/onnx_import.h"
#include "runtime/resolve.h"
#include "tests/support/errors.h"
#include "tests/support/onnx_models.h"

namespace qforge::graph {
namespace {

using testing::kSymbolicDim;
using testing::node_model;
using testing::NodeModelSpec;

std::string import_error(const NodeModelSpec& spec) {
  return testing::error_of(ErrorKind::kInvalid, [&] { parse_onnx(node_model(spec), "bad.onnx"); });
}

NodeModelSpec conv(std::vector<std::pair<std::string, std::vector<int64_t>>> ints = {},
                   std::vector<std::pair<std::string, int64_t>> one = {}) {
  NodeModelSpec spec;
  spec.weight_shape = std::vector<int64_t>{4, 3, 3, 3};
  spec.ints_attributes = std::move(ints);
  spec.int_attributes = std::move(one);
  return spec;
}

NodeModelSpec max_pool(std::vector<std::pair<std::string, std::vector<int64_t>>> ints) {
  NodeModelSpec spec;
  spec.op_type = "MaxPool";
  spec.node_name = "pool";
  spec.ints_attributes = std::move(ints);
  return spec;
}

TEST(OnnxImportValidation, ValidConvAndPoolImport) {
  EXPECT_NO_THROW(
      parse_onnx(node_model(conv({{"strides", {2, 2}}, {"pads", {1, 1, 1, 1}}})), "good.onnx"));
  EXPECT_NO_THROW(parse_onnx(node_model(max_pool({{"kernel_shape", {2, 2}}, {"strides", {2, 2}}})),
                             "good.onnx"));
}

TEST(OnnxImportValidation, ZeroStrideConvAndMaxPool) {
  EXPECT_EQ(import_error(conv({{"strides", {0, 1}}})),
            "import: node 'conv' (Conv): expected attribute 'strides' values >= 1, got [0, 1]");
  EXPECT_EQ(import_error(max_pool({{"kernel_shape", {2, 2}}, {"strides", {0, 0}}})),
            "import: node 'pool' (MaxPool): expected attribute 'strides' values >= 1, got [0, 0]");
}

TEST(OnnxImportValidation, ZeroDilationsGroupKernelAndNegativePads) {
  EXPECT_EQ(import_error(conv({{"dilations", {1, 0}}})),
            "import: node 'conv' (Conv): expected attribute 'dilations' values >= 1, got [1, 0]");
  EXPECT_EQ(import_error(conv({}, {{"group", 0}})),
            "import: node 'conv' (Conv): expected attribute 'group' values >= 1, got 0");
  EXPECT_EQ(import_error(conv({{"kernel_shape", {0, 3}}})),
            "import: node 'conv' (Conv): expected attribute 'kernel_shape' values >= 1, got "
            "[0, 3]");
  EXPECT_EQ(import_error(conv({{"pads", {0, -1, 0, 0}}})),
            "import: node 'conv' (Conv): expected attribute 'pads' values >= 0, got "
            "[0, -1, 0, 0]");
  EXPECT_EQ(import_error(max_pool({{"kernel_shape", {2, 2}}, {"dilations", {-3, 1}}})),
            "import: node 'pool' (MaxPool): expected attribute 'dilations' values >= 1, got "
            "[-3, 1]");
  NodeModelSpec ceil = max_pool({{"kernel_shape", {2, 2}}});
  ceil.int_attributes = {{"ceil_mode", 2}};
  EXPECT_EQ(import_error(ceil),
            "import: node 'pool' (MaxPool): expected attribute 'ceil_mode' values in [0, 1], "
            "got 2");
}

TEST(OnnxImportValidation, WindowAttributesAgreeWithTheKernel) {
  EXPECT_EQ(import_error(conv({{"strides", {2}}})),
            "import: node 'conv' (Conv): expected attribute 'strides' with 2 values for kernel "
            "[3, 3], got [2]");
  EXPECT_EQ(import_error(conv({{"pads", {1, 1}}})),
            "import: node 'conv' (Conv): expected attribute 'pads' with 4 values for kernel "
            "[3, 3], got [1, 1]");
  EXPECT_EQ(import_error(conv({{"kernel_shape", {5, 5}}})),
            "import: node 'conv' (Conv): expected kernel_shape equal to weight 'w' spatial dims "
            "[3, 3], got [5, 5]");
  EXPECT_EQ(import_error(max_pool({{"strides", {2, 2}}})),
            "import: node 'pool' (MaxPool): expected attribute 'kernel_shape', got none");
}

TEST(OnnxImportValidation, ConvWeightContradictingChannels) {
  NodeModelSpec zero_out = conv();
  zero_out.weight_shape = std::vector<int64_t>{0, 3, 3, 3};
  EXPECT_EQ(import_error(zero_out),
            "import: node 'conv' (Conv): expected weight 'w' dimensions >= 1, got [0, 3, 3, 3]");
  NodeModelSpec wrong_in = conv();
  wrong_in.weight_shape = std::vector<int64_t>{4, 5, 3, 3};
  EXPECT_EQ(import_error(wrong_in),
            "import: node 'conv' (Conv): expected weight 'w' with input channels / group = 3 / 1 "
            "in dim 1, got [4, 5, 3, 3] for input 'x' [N, 3, 8, 8]");
  NodeModelSpec groups = conv({}, {{"group", 3}});
  groups.weight_shape = std::vector<int64_t>{4, 1, 3, 3};
  EXPECT_EQ(import_error(groups),
            "import: node 'conv' (Conv): expected weight 'w' output channels divisible by group "
            "3, got [4, 1, 3, 3]");
  NodeModelSpec flat = conv();
  flat.weight_shape = std::vector<int64_t>{4, 3};
  EXPECT_EQ(import_error(flat),
            "import: node 'conv' (Conv): expected weight 'w' of rank >= 3 (out channels, in "
            "channels / group, kernel...), got [4, 3]");
}

TEST(OnnxImportValidation, InputOfBatchZeroOrNegativeDimension) {
  NodeModelSpec batch0;
  batch0.op_type = "Relu";
  batch0.node_name = "relu";
  batch0.input_shape = {0, 3, 8, 8};
  EXPECT_EQ(import_error(batch0),
            "import: input 'x': expected every dimension >= 1 or symbolic, got [0, 3, 8, 8]");
  NodeModelSpec negative = batch0;
  negative.input_shape = {kSymbolicDim, -8, 8, 8};
  EXPECT_EQ(import_error(negative),
            "import: input 'x': expected every dimension >= 1 or symbolic, got [N, -8, 8, 8]");
}

// A LayerNormalization with its Mean and InvStdDev outputs and an axis below -rank: libonnx
// 1.12's shape inference indexed the input's dims at it (a SEGV the fuzz target found). Its
// statistics are hidden from libonnx, the model imports, and resolution refuses the axis naming
// the node.
TEST(OnnxImportValidation, LayerNormStatisticsWithAnAxisBelowTheRank) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(17);
  onnx::GraphProto* g = m.mutable_graph();
  g->set_name("ln");
  auto declare = [](onnx::ValueInfoProto* v, const std::string& name, bool symbolic_batch) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    auto* shape = t->mutable_shape();
    if (symbolic_batch) shape->add_dim()->set_dim_param("N");
    shape->add_dim()->set_dim_value(4);
    shape->add_dim()->set_dim_value(8);
  };
  declare(g->add_input(), "x", true);
  declare(g->add_output(), "y", true);
  for (const char* name : {"scale", "bias"}) {
    onnx::TensorProto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    t->add_dims(8);
    for (int i = 0; i < 8; ++i) t->add_float_data(1.0f);
  }
  onnx::NodeProto* n = g->add_node();
  n->set_op_type("LayerNormalization");
  n->set_name("norm");
  for (const char* in : {"x", "scale", "bias"}) n->add_input(in);
  for (const char* out : {"y", "mean", "inv_std"}) n->add_output(out);
  onnx::AttributeProto* axis = n->add_attribute();
  axis->set_name("axis");
  axis->set_type(onnx::AttributeProto::INT);
  axis->set_i(-5);
  std::unique_ptr<Graph> graph;
  ASSERT_NO_THROW(graph = parse_onnx(m.SerializeAsString(), "ln.onnx"));
  EXPECT_EQ(graph->find_node("norm")->num_outputs(), 3u);
  runtime::ResolveOptions options;
  options.input_shapes = runtime::input_shapes_for_batch(*graph, 1);
  const std::string refused =
      testing::error_of(ErrorKind::kInvalid, [&] { runtime::resolve(*graph, options); });
  EXPECT_NE(refused.find("node 'norm' (LayerNormalization): expected axis in [-3, 3), got -5"),
            std::string::npos)
      << refused;
}

// An initializer whose dims ask for far more elements than the file holds (a mutated model the
// fuzz target found; the dims were allocated before the data was counted, and the allocation
// failed) is refused naming the tensor, before anything is allocated for it, in both encodings.
TEST(OnnxImportValidation, InitializerDimsBeyondItsDataAreRefusedBeforeAllocating) {
  for (bool raw : {false, true}) {
    SCOPED_TRACE(raw ? "raw data" : "float_data");
    onnx::ModelProto m;
    m.set_ir_version(8);
    m.add_opset_import()->set_version(17);
    onnx::GraphProto* g = m.mutable_graph();
    g->set_name("huge");
    auto declare = [](onnx::ValueInfoProto* v, const std::string& name) {
      v->set_name(name);
      auto* t = v->mutable_type()->mutable_tensor_type();
      t->set_elem_type(onnx::TensorProto::FLOAT);
      t->mutable_shape()->add_dim()->set_dim_value(3);
    };
    declare(g->add_input(), "x");
    declare(g->add_output(), "y");
    onnx::TensorProto* w = g->add_initializer();
    w->set_name("w");
    w->set_data_type(onnx::TensorProto::FLOAT);
    w->add_dims(1847524351);
    w->add_dims(6);
    if (raw) {
      w->set_raw_data(std::string(12, '\0'));
    } else {
      for (int i = 0; i < 3; ++i) w->add_float_data(1.0f);
    }
    onnx::NodeProto* n = g->add_node();
    n->set_op_type("Add");
    n->set_name("add");
    n->add_input("x");
    n->add_input("w");
    n->add_output("y");
    const std::string refused = testing::error_of(ErrorKind::kInvalid, [&] {
      parse_onnx(m.SerializeAsString(), "huge.onnx", {.run_checker = false});
    });
    EXPECT_NE(refused.find("tensor 'w'"), std::string::npos) << refused;
    EXPECT_NE(refused.find(raw ? "expected 11085146106 elements of raw data for "
                                 "float32[1847524351, 6], got 12 bytes"
                               : "expected 11085146106 values for float32[1847524351, 6], got 3"),
              std::string::npos)
        << refused;
  }
}

}  // namespace
}  // namespace qforge::graph
