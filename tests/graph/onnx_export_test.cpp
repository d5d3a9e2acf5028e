// ONNX export: import → export → import keeps the graph and its outputs; export refuses what
// ONNX cannot hold and never leaves a partial file.
#include "graph/onnx_export.h"

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "graph/onnx_import.h"
#include "runtime/resolve.h"
#include "runtime/session.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using graph::DType;
using graph::Shape;
using graph::Tensor;
using testing::data_path;
using testing::TempDir;

std::map<std::string, int> op_histogram(const graph::Graph& g) {
  std::map<std::string, int> counts;
  for (const graph::Node* n : g.nodes()) ++counts[n->op_type()];
  return counts;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

std::unique_ptr<graph::Graph> round_trip(const graph::Graph& g,
                                         const graph::ExportOptions& options = {}) {
  return graph::parse_onnx(graph::serialize_onnx(g, options), "exported");
}

class OnnxExportBundled : public ::testing::TestWithParam<std::string> {};

TEST_P(OnnxExportBundled, RoundTripKeepsGraphAndOutputs) {
  const std::string& model = GetParam();
  auto original = graph::load_onnx(data_path("models/" + model + ".onnx"));
  auto again = round_trip(*original);

  EXPECT_EQ(again->nodes().size(), original->nodes().size());
  EXPECT_EQ(op_histogram(*again), op_histogram(*original));
  EXPECT_EQ(again->name, original->name);
  EXPECT_EQ(again->opset, original->opset);
  EXPECT_EQ(again->metadata, original->metadata);
  ASSERT_EQ(again->inputs().size(), original->inputs().size());
  for (size_t i = 0; i < original->inputs().size(); ++i) {
    EXPECT_EQ(again->inputs()[i]->name(), original->inputs()[i]->name());
    EXPECT_EQ(again->inputs()[i]->shape(), original->inputs()[i]->shape());  // dynamic batch kept
  }

  std::string family = model.substr(0, model.rfind('_'));
  auto input = io::read_npy(data_path("golden/" + family + "_input.npy"));
  runtime::Session session_a(std::move(original));
  runtime::Session session_b(std::move(again));
  auto out_a = session_a.run(input);
  auto out_b = session_b.run(input);
  ASSERT_EQ(out_a.size(), out_b.size());
  for (size_t k = 0; k < out_a.size(); ++k) {
    EXPECT_TRUE(same_bytes(out_a[k], out_b[k])) << "output " << k;
  }
}

// write_onnx hands the sink the very bytes serialize_onnx returns, in pieces.
TEST_P(OnnxExportBundled, WriteThroughASinkGivesTheSerializedBytes) {
  auto g = graph::load_onnx(data_path("models/" + GetParam() + ".onnx"));
  std::string pieces;
  size_t calls = 0;
  const size_t n = graph::write_onnx(*g, [&](const void* p, size_t bytes) {
    pieces.append(static_cast<const char*>(p), bytes);
    ++calls;
  });
  const std::string whole = graph::serialize_onnx(*g);
  EXPECT_EQ(n, whole.size());
  EXPECT_EQ(pieces, whole);
  EXPECT_EQ(calls, (whole.size() + (1u << 20) - 1) >> 20);
}

TEST_P(OnnxExportBundled, ResolvedGraphRoundTripsAndRuns) {
  const std::string& model = GetParam();
  auto original = graph::load_onnx(data_path("models/" + model + ".onnx"));
  auto resolved = original->clone();
  runtime::ResolveOptions ro;
  ro.input_shapes = runtime::input_shapes_for_batch(*original, 4);
  runtime::resolve(*resolved, ro);
  auto again = round_trip(*resolved);
  EXPECT_EQ(op_histogram(*again), op_histogram(*resolved));
  EXPECT_EQ(again->inputs()[0]->shape(), resolved->inputs()[0]->shape());

  std::string family = model.substr(0, model.rfind('_'));
  Tensor input =
      io::read_npy(data_path("golden/" + family + "_input.npy")).slice_rows(0, 4).clone();
  runtime::Session session_a(std::move(original));
  runtime::Session session_b(std::move(again));
  auto out_a = session_a.run(input);
  auto out_b = session_b.run(input);
  ASSERT_EQ(out_a.size(), out_b.size());
  for (size_t k = 0; k < out_a.size(); ++k) {
    ASSERT_EQ(out_a[k].shape(), out_b[k].shape());
    auto a = out_a[k].span<float>();
    auto b = out_b[k].span<float>();
    double diff = 0, scale = 1;
    for (size_t i = 0; i < a.size(); ++i) {
      diff = std::max(diff, std::fabs(double(a[i]) - b[i]));
      scale = std::max(scale, std::fabs(double(a[i])));
    }
    EXPECT_LE(diff / scale, 1e-5) << "output " << k;
  }
}

std::vector<std::string> bundled_models() {
  std::vector<std::string> names;
  for (const char* family : {"resnet", "mobilenet_v3", "efficientnet", "convnext", "vit", "swin"}) {
    for (const char* form : {"bn", "folded"}) names.push_back(std::string(family) + "_" + form);
  }
  return names;
}

INSTANTIATE_TEST_SUITE_P(OnnxExportModels, OnnxExportBundled, ::testing::ValuesIn(bundled_models()),
                         [](const auto& p) { return p.param; });

// x[N, 4] -> Relu carrying one attribute of every kind -> y.
std::unique_ptr<graph::Graph> every_attribute_kind_graph() {
  auto g = std::make_unique<graph::Graph>();
  g->name = "attributes";
  g->opset = 17;
  graph::Value* x = g->add_input("x", DType::kFloat32, Shape{-1, 4});
  graph::NodeSpec spec{.name = "relu", .op_type = "Relu", .inputs = {x}, .output_names = {"y"}};
  spec.attributes["i"] = int64_t{-7};
  spec.attributes["f"] = 0.125f;
  spec.attributes["s"] = std::string("text");
  spec.attributes["ints"] = std::vector<int64_t>{1, -2, 3};
  spec.attributes["floats"] = std::vector<float>{0.5f, -1.5f};
  spec.attributes["strings"] = std::vector<std::string>{"a", "", "c"};
  spec.attributes["t"] = Tensor::from_vector<int64_t>({2, 2}, {1, 2, -3, 1LL << 40});
  graph::Node* relu = g->add_node(std::move(spec));
  relu->output(0)->set_type(DType::kFloat32, Shape{-1, 4});
  g->mark_output(relu->output(0));
  return g;
}

TEST(OnnxExport, EveryAttributeKindRoundTrips) {
  auto g = every_attribute_kind_graph();
  graph::ExportOptions eo;
  eo.run_checker = false;  // Relu has none of these attributes
  graph::ImportOptions io_opts;
  io_opts.run_checker = false;
  auto again = graph::parse_onnx(graph::serialize_onnx(*g, eo), "attributes", io_opts);
  const graph::Node* relu = again->find_node("relu");
  ASSERT_NE(relu, nullptr);
  EXPECT_EQ(relu->attributes().size(), 7u);
  EXPECT_EQ(relu->attr_int("i"), -7);
  EXPECT_EQ(relu->attr_float("f"), 0.125f);
  EXPECT_EQ(relu->attr_string("s"), "text");
  EXPECT_EQ(relu->attr_ints("ints"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(relu->attr_floats("floats", {}), (std::vector<float>{0.5f, -1.5f}));
  EXPECT_EQ(std::get<std::vector<std::string>>(relu->attributes().at("strings")),
            (std::vector<std::string>{"a", "", "c"}));
  EXPECT_TRUE(same_bytes(relu->attr_tensor("t"),
                         Tensor::from_vector<int64_t>({2, 2}, {1, 2, -3, 1LL << 40})));
  EXPECT_EQ(again->inputs()[0]->shape(), (std::optional<Shape>(Shape{-1, 4})));
}

TEST(OnnxExport, WritesModelFieldsAndSymbolicBatch) {
  auto g = every_attribute_kind_graph();
  g->find_node("relu")->set_attr("i", int64_t{0});  // still unknown to Relu: checker off
  g->metadata["mean"] = "0.5";
  graph::ExportOptions eo;
  eo.run_checker = false;
  onnx::ModelProto model;
  ASSERT_TRUE(model.ParseFromString(graph::serialize_onnx(*g, eo)));
  EXPECT_EQ(model.producer_name(), "qforge");
  ASSERT_EQ(model.opset_import_size(), 1);
  EXPECT_EQ(model.opset_import(0).version(), 17);
  EXPECT_EQ(model.graph().name(), "attributes");
  ASSERT_EQ(model.metadata_props_size(), 1);
  EXPECT_EQ(model.metadata_props(0).key(), "mean");
  const auto& dim0 = model.graph().input(0).type().tensor_type().shape().dim(0);
  EXPECT_EQ(dim0.dim_param(), "N");

  g->opset = 11;  // below the minimum: written as 13
  ASSERT_TRUE(model.ParseFromString(graph::serialize_onnx(*g, eo)));
  EXPECT_EQ(model.opset_import(0).version(), 13);
  eo.opset = 18;
  ASSERT_TRUE(model.ParseFromString(graph::serialize_onnx(*g, eo)));
  EXPECT_EQ(model.opset_import(0).version(), 18);
}

TEST(OnnxExport, OmittedOptionalInputsStayOmitted) {
  graph::Graph g;
  g.opset = 17;
  graph::Value* x = g.add_input("x", DType::kFloat32, Shape{2, 3});
  graph::Value* hi = g.add_constant("hi", Tensor::scalar_f32(0.5f));
  graph::Node* clip = g.add_node(
      {.name = "clip", .op_type = "Clip", .inputs = {x, nullptr, hi}, .output_names = {"y"}});
  clip->output(0)->set_type(DType::kFloat32, Shape{2, 3});  // the checker wants output shapes
  g.mark_output(clip->output(0));
  onnx::ModelProto model;
  ASSERT_TRUE(model.ParseFromString(graph::serialize_onnx(g)));
  ASSERT_EQ(model.graph().node(0).input_size(), 3);
  EXPECT_EQ(model.graph().node(0).input(1), "");
  ASSERT_EQ(model.graph().initializer_size(), 1);
  EXPECT_EQ(model.graph().initializer(0).raw_data().size(), sizeof(float));

  auto again = round_trip(g);
  const graph::Node* n = again->find_node("clip");
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->input(1), nullptr);
  ASSERT_NE(n->input(2), nullptr);
  EXPECT_TRUE(same_bytes(n->input(2)->constant(), Tensor::scalar_f32(0.5f)));
}

TEST(OnnxExport, CheckerFailureIsInternal) {
  auto g = every_attribute_kind_graph();
  try {
    graph::serialize_onnx(*g);
    FAIL() << "expected the checker to reject Relu's unknown attributes";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
    EXPECT_NE(std::string(e.what()).find("checker"), std::string::npos) << e.what();
  }
}

TEST(OnnxExport, InternalOpIsUnsupportedAndLeavesExistingFile) {
  graph::Graph g;
  g.opset = 17;
  graph::Value* x = g.add_input("x", DType::kFloat32, Shape{1, 1, 2, 2});
  graph::Value* w = g.add_constant("w", Tensor::from_vector<float>({1, 1, 1, 1}, {2.f}));
  graph::Node* conv = g.add_node(
      {.name = "conv_bn", .op_type = "FusedConv", .inputs = {x, w}, .output_names = {"y"}});
  g.mark_output(conv->output(0));

  TempDir dir;
  const std::string path = dir.file("model.onnx");
  testing::write_bytes(path, "previous");
  try {
    graph::save_onnx(g, path);
    FAIL() << "expected FusedConv to be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("node 'conv_bn' (FusedConv)"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(testing::read_text(path), "previous");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
}

TEST(OnnxExport, UnwritablePathIsIoErrorAndLeavesNoFile) {
  auto g = graph::load_onnx(data_path("models/resnet_bn.onnx"));
  TempDir dir;
  const std::string path = dir.file("missing/model.onnx");
  try {
    graph::save_onnx(*g, path);
    FAIL() << "expected an Io error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 0);
}

TEST(OnnxExport, SaveWritesALoadableFileAndNoTemporary) {
  auto g = graph::load_onnx(data_path("models/resnet_folded.onnx"));
  TempDir dir;
  const std::string path = dir.file("resnet.onnx");
  graph::save_onnx(*g, path);
  auto again = graph::load_onnx(path);
  EXPECT_EQ(op_histogram(*again), op_histogram(*g));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
}

}  // namespace
}  // namespace qforge
