// Import across opsets 7 to 26: old models through libonnx's version converter (Softmax's
// coerce-to-2D axis before opset 13 kept), the forms of opsets 18 to 26 read natively
// (ReduceMean's axes input, Pad's axes input, Gelu in both approximations, GroupNormalization's
// per-group and per-channel scale and bias, Swish, Mish, GridSample's mode names, the Q/DQ pair's
// precision and output type),
// each form checked
// against the model's opset, the opsets outside the range named, and the sample shape that fixes
// dynamic dims.
#include <gtest/gtest.h>

#include <onnx/onnx_pb.h>

#include <cmath>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "runtime/session.h"
#include "tests/support/errors.h"
#include "tests/support/float_checks.h"
#include "tests/support/random.h"

namespace qforge::graph {
namespace {

using kernels::Tensor;

// A model written as protobuf at one opset; a dim below 0 is symbolic (named by `dim_names`).
class ModelProtoBuilder {
 public:
  explicit ModelProtoBuilder(int64_t opset) {
    model_.set_ir_version(8);
    auto* o = model_.add_opset_import();
    o->set_domain("");
    o->set_version(opset);
    model_.mutable_graph()->set_name("opset_model");
  }
  void input(const std::string& name, const std::vector<int64_t>& shape,
             const std::vector<std::string>& dim_names = {}) {
    declare(model_.mutable_graph()->add_input(), name, shape, dim_names);
  }
  void untyped_shape_input(const std::string& name, int elem_type) {
    auto* v = model_.mutable_graph()->add_input();
    v->set_name(name);
    v->mutable_type()->mutable_tensor_type()->set_elem_type(elem_type);
  }
  void output(const std::string& name, const std::optional<std::vector<int64_t>>& shape) {
    auto* v = model_.mutable_graph()->add_output();
    if (shape) {
      declare(v, name, *shape, {});
      return;
    }
    v->set_name(name);
    v->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  }
  void ints(const std::string& name, const std::vector<int64_t>& values) {
    auto* t = model_.mutable_graph()->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::INT64);
    t->add_dims(static_cast<int64_t>(values.size()));
    for (int64_t v : values) t->add_int64_data(v);
  }
  onnx::NodeProto* node(const std::string& op, const std::string& name,
                        const std::vector<std::string>& inputs, const std::string& output) {
    auto* n = model_.mutable_graph()->add_node();
    n->set_op_type(op);
    n->set_name(name);
    for (const auto& in : inputs) n->add_input(in);
    n->add_output(output);
    return n;
  }
  void floats(const std::string& name, const std::vector<float>& values) {
    auto* t = model_.mutable_graph()->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    t->add_dims(static_cast<int64_t>(values.size()));
    for (float v : values) t->add_float_data(v);
  }
  static void attribute(onnx::NodeProto* n, const std::string& name, int64_t value) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(value);
  }
  static void attribute(onnx::NodeProto* n, const std::string& name,
                        const std::vector<int64_t>& values) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t v : values) a->add_ints(v);
  }
  static void attribute(onnx::NodeProto* n, const std::string& name, const std::string& value) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::STRING);
    a->set_s(value);
  }
  std::string bytes() const { return model_.SerializeAsString(); }

 private:
  static void declare(onnx::ValueInfoProto* v, const std::string& name,
                      const std::vector<int64_t>& shape, const std::vector<std::string>& names) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    auto* s = t->mutable_shape();
    for (size_t i = 0; i < shape.size(); ++i) {
      auto* d = s->add_dim();
      if (shape[i] >= 0) {
        d->set_dim_value(shape[i]);
      } else {
        d->set_dim_param(i < names.size() ? names[i] : "N");
      }
    }
  }
  onnx::ModelProto model_;
};

std::vector<float> run_model(const std::string& bytes, const Tensor& x,
                             const ImportOptions& options = {}) {
  runtime::Session session(parse_onnx(bytes, "model.onnx", options));
  return session.run(x)[0].to_float_vector();
}

std::string import_error(ErrorKind kind, const std::string& bytes,
                         const ImportOptions& options = {}) {
  return testing::error_of(kind, [&] { parse_onnx(bytes, "model.onnx", options); });
}

// Opset 11's Softmax flattens the input to 2-D at `axis` and normalises each row: on [2, 3, 4]
// with axis 1, over all 12 values of a sample. The converter keeps that meaning at opset 13.
TEST(OnnxOpsets, Opset11SoftmaxCoercesToTwoDimensions) {
  ModelProtoBuilder b(11);
  b.input("x", {-1, 3, 4});
  b.output("y", std::vector<int64_t>{-1, 3, 4});
  ModelProtoBuilder::attribute(b.node("Softmax", "softmax", {"x"}, "y"), "axis", int64_t{1});
  const Tensor x = testing::random_f32({2, 3, 4}, 7, -2.0f, 2.0f);
  std::vector<float> want(24);
  for (int n = 0; n < 2; ++n) {
    double sum = 0;
    for (int i = 0; i < 12; ++i) sum += std::exp(static_cast<double>(x.data<float>()[n * 12 + i]));
    for (int i = 0; i < 12; ++i) {
      want[n * 12 + i] =
          static_cast<float>(std::exp(static_cast<double>(x.data<float>()[n * 12 + i])) / sum);
    }
  }
  const std::unique_ptr<Graph> g = parse_onnx(b.bytes(), "softmax11.onnx");
  EXPECT_EQ(g->opset, kConvertedOpset);
  testing::expect_close(run_model(b.bytes(), x), want, 1e-7, 1e-6, "softmax opset 11");
}

// The converter's failure names the node: Softmax over an input of unknown rank (a Reshape to a
// shape given at run time) cannot be rewritten for opset 13.
TEST(OnnxOpsets, ConverterFailureNamesTheNode) {
  ModelProtoBuilder b(11);
  b.input("x", {-1, 3, 4});
  b.untyped_shape_input("shape", onnx::TensorProto::INT64);
  b.node("Reshape", "flat", {"x", "shape"}, "r");
  ModelProtoBuilder::attribute(b.node("Softmax", "soft_7", {"r"}, "y"), "axis", int64_t{0});
  b.output("y", std::nullopt);
  const std::string message = import_error(ErrorKind::kUnsupported, b.bytes());
  EXPECT_NE(
      message.find("import: node 'soft_7' (Softmax): converting from opset 11 to 13 failed: "),
      std::string::npos)
      << message;
}

TEST(OnnxOpsets, OpsetsOutsideSevenToTwentySixAreNamed) {
  for (int64_t opset : {6, 27}) {
    ModelProtoBuilder b(opset);
    b.input("x", {1, 4});
    b.output("y", std::vector<int64_t>{1, 4});
    b.node("Relu", "relu", {"x"}, "y");
    EXPECT_EQ(import_error(ErrorKind::kUnsupported, b.bytes()),
              "import: 'model.onnx' uses opset " + std::to_string(opset) +
                  "; qforge imports opsets 7 to 26");
  }
}

// ReduceMean: axes as an attribute before opset 18, as input 1 from it, with
// noop_with_empty_axes; each form refused at the other opsets.
TEST(OnnxOpsets, ReduceMeanAxesFollowTheOpset) {
  const Tensor x = testing::random_f32({2, 3, 5}, 3, -1.0f, 1.0f);
  std::vector<float> mean_over_1(10);
  for (int n = 0; n < 2; ++n) {
    for (int k = 0; k < 5; ++k) {
      float s = 0;
      for (int c = 0; c < 3; ++c) s += x.data<float>()[n * 15 + c * 5 + k];
      mean_over_1[n * 5 + k] = s / 3;
    }
  }
  ModelProtoBuilder at13(13);
  at13.input("x", {2, 3, 5});
  at13.output("y", std::vector<int64_t>{2, 5});
  auto* r13 = at13.node("ReduceMean", "mean", {"x"}, "y");
  ModelProtoBuilder::attribute(r13, "axes", std::vector<int64_t>{1});
  ModelProtoBuilder::attribute(r13, "keepdims", int64_t{0});
  testing::expect_close(run_model(at13.bytes(), x), mean_over_1, 1e-7, 1e-6, "opset 13");

  for (int64_t opset : {18, 21}) {
    ModelProtoBuilder b(opset);
    b.input("x", {2, 3, 5});
    b.ints("axes", {-2});
    b.output("y", std::vector<int64_t>{2, 5});
    ModelProtoBuilder::attribute(b.node("ReduceMean", "mean", {"x", "axes"}, "y"), "keepdims",
                                 int64_t{0});
    testing::expect_close(run_model(b.bytes(), x), mean_over_1, 1e-7, 1e-6,
                          "opset " + std::to_string(opset));
  }

  // No axes: every axis, or none with noop_with_empty_axes.
  ModelProtoBuilder all(18);
  all.input("x", {2, 3, 5});
  all.output("y", std::vector<int64_t>{1, 1, 1});
  all.node("ReduceMean", "mean", {"x"}, "y");
  float total = 0;
  for (float v : x.to_float_vector()) total += v;
  testing::expect_close(run_model(all.bytes(), x), {total / 30}, 1e-7, 1e-5, "all axes");
  ModelProtoBuilder noop(18);
  noop.input("x", {2, 3, 5});
  noop.output("y", std::vector<int64_t>{2, 3, 5});
  ModelProtoBuilder::attribute(noop.node("ReduceMean", "mean", {"x"}, "y"), "noop_with_empty_axes",
                               int64_t{1});
  EXPECT_EQ(run_model(noop.bytes(), x), x.to_float_vector());

  ModelProtoBuilder input_at17(17);
  input_at17.input("x", {2, 3, 5});
  input_at17.ints("axes", {1});
  input_at17.output("y", std::nullopt);
  input_at17.node("ReduceMean", "mean", {"x", "axes"}, "y");
  EXPECT_EQ(import_error(ErrorKind::kInvalid, input_at17.bytes()),
            "import: node 'mean' (ReduceMean): expected 1 input at opset 17 (axes is an input from "
            "opset 18), got 2");
  ModelProtoBuilder attribute_at18(18);
  attribute_at18.input("x", {2, 3, 5});
  attribute_at18.output("y", std::nullopt);
  ModelProtoBuilder::attribute(attribute_at18.node("ReduceMean", "mean", {"x"}, "y"), "axes",
                               std::vector<int64_t>{1});
  EXPECT_EQ(import_error(ErrorKind::kInvalid, attribute_at18.bytes()),
            "import: node 'mean' (ReduceMean): expected axes as input 1 at opset 18 (axes is an "
            "input from opset 18), got attribute 'axes'");
}

// Pad's axes input (opset 18) pads the listed axes only; before 18 it is refused.
TEST(OnnxOpsets, PadAxesInputFromOpset18) {
  const Tensor x = testing::random_f32({1, 2, 3}, 5, -1.0f, 1.0f);
  for (int64_t opset : {17, 18}) {
    ModelProtoBuilder b(opset);
    b.input("x", {1, 2, 3});
    b.ints("pads", {1, 2});  // axis 2: one before, two after
    b.ints("axes", {-1});
    b.output("y", std::nullopt);
    b.node("Pad", "pad", {"x", "pads", "", "axes"}, "y");
    if (opset == 17) {
      EXPECT_EQ(import_error(ErrorKind::kInvalid, b.bytes()),
                "import: node 'pad' (Pad): expected at most 3 inputs at opset 17 (axes is input 3 "
                "from opset 18), got 4");
      continue;
    }
    std::vector<float> want;
    for (int c = 0; c < 2; ++c) {
      want.push_back(0);
      for (int k = 0; k < 3; ++k) want.push_back(x.data<float>()[c * 3 + k]);
      want.push_back(0);
      want.push_back(0);
    }
    EXPECT_EQ(run_model(b.bytes(), x), want);
  }
}

// Opset 18's new attributes (Split's num_outputs, Resize's keep_aspect_ratio_policy) are refused
// at opset 17 by libonnx's checker, which knows each op's attributes up to opset 17; at opset 18
// Split's num_outputs splits evenly.
TEST(OnnxOpsets, Opset18AttributesFollowTheOpset) {
  const Tensor x = testing::random_f32({1, 4, 2}, 9, -1.0f, 1.0f);
  for (int64_t opset : {17, 18}) {
    ModelProtoBuilder b(opset);
    b.input("x", {1, 4, 2});
    b.output("y", std::vector<int64_t>{1, 2, 2});
    onnx::NodeProto* split = b.node("Split", "split", {"x"}, "y");
    split->add_output("z");
    ModelProtoBuilder::attribute(split, "axis", int64_t{1});
    ModelProtoBuilder::attribute(split, "num_outputs", int64_t{2});
    if (opset == 17) {
      const std::string error = import_error(ErrorKind::kInvalid, b.bytes());
      EXPECT_NE(error.find("Unrecognized attribute: num_outputs for operator Split"),
                std::string::npos)
          << error;
      continue;
    }
    const std::vector<float> all = x.to_float_vector();
    EXPECT_EQ(run_model(b.bytes(), x), std::vector<float>(all.begin(), all.begin() + 4));
  }
  ModelProtoBuilder b(17);
  b.input("x", {1, 1, 2, 2});
  b.output("y", std::vector<int64_t>{1, 1, 4, 4});
  onnx::NodeProto* resize = b.node("Resize", "resize", {"x", "", "", "sizes"}, "y");
  b.ints("sizes", {1, 1, 4, 4});
  ModelProtoBuilder::attribute(resize, "keep_aspect_ratio_policy", std::string("stretch"));
  const std::string error = import_error(ErrorKind::kInvalid, b.bytes());
  EXPECT_NE(error.find("Unrecognized attribute: keep_aspect_ratio_policy for operator Resize"),
            std::string::npos)
      << error;
}

// Gelu (opset 20) in both approximations, against float64 formulas; refused before opset 20 and
// with an unknown approximation.
TEST(OnnxOpsets, GeluBothApproximations) {
  const Tensor x = testing::random_f32({3, 7}, 9, -5.0f, 5.0f);
  for (const std::string approximate : {"none", "tanh"}) {
    ModelProtoBuilder b(20);
    b.input("x", {3, 7});
    b.output("y", std::vector<int64_t>{3, 7});
    ModelProtoBuilder::attribute(b.node("Gelu", "gelu", {"x"}, "y"), "approximate", approximate);
    std::vector<float> want;
    for (float f : x.to_float_vector()) {
      const double v = f;
      const double cdf =
          approximate == "none"
              ? 0.5 * (1 + std::erf(v / std::sqrt(2.0)))
              : 0.5 * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
      want.push_back(static_cast<float>(v * cdf));
    }
    testing::expect_close(run_model(b.bytes(), x), want, 2e-7, 1e-6, approximate);
  }
  ModelProtoBuilder early(18);
  early.input("x", {3, 7});
  early.output("y", std::nullopt);
  early.node("Gelu", "gelu", {"x"}, "y");
  EXPECT_EQ(import_error(ErrorKind::kInvalid, early.bytes()),
            "import: node 'gelu' (Gelu): expected opset 20 or later for Gelu, got opset 18");
  ModelProtoBuilder odd(20);
  odd.input("x", {3, 7});
  odd.output("y", std::nullopt);
  ModelProtoBuilder::attribute(odd.node("Gelu", "gelu", {"x"}, "y"), "approximate",
                               std::string("fast"));
  EXPECT_EQ(import_error(ErrorKind::kInvalid, odd.bytes()),
            "import: node 'gelu' (Gelu): expected attribute 'approximate' \"none\" or \"tanh\", "
            "got \"fast\"");
}

// A float attribute on a node the builder made.
void float_attribute(onnx::NodeProto* n, const std::string& name, float value) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(value);
}

// Swish (opset 24), x · sigmoid(alpha · x), against float64, for alpha 1 (the default, SiLU) and
// 0.5; it runs as the Sigmoid and Mul that torch.onnx writes for SiLU, the last Mul under the
// node's name. Refused before opset 24 and with another attribute.
TEST(OnnxOpsets, SwishRunsAsSigmoidAndMul) {
  const Tensor x = testing::random_f32({3, 7}, 9, -6.0f, 6.0f);
  for (const float alpha : {1.0f, 0.5f}) {
    ModelProtoBuilder b(24);
    b.input("x", {3, 7});
    b.output("y", std::vector<int64_t>{3, 7});
    onnx::NodeProto* n = b.node("Swish", "swish", {"x"}, "y");
    if (alpha != 1.0f) float_attribute(n, "alpha", alpha);
    std::vector<float> want;
    for (float f : x.to_float_vector()) {
      const double v = f;
      want.push_back(static_cast<float>(v / (1 + std::exp(-double{alpha} * v))));
    }
    testing::expect_close(run_model(b.bytes(), x), want, 2e-7, 1e-6,
                          "alpha " + std::to_string(alpha));
    const auto graph = parse_onnx(b.bytes(), "model.onnx");
    const Node* mul = graph->find_value("y")->producer();
    EXPECT_EQ(mul->op_type(), "Mul");
    EXPECT_EQ(mul->name(), "swish");
    EXPECT_EQ(mul->inputs()[1]->producer()->op_type(), "Sigmoid");
    EXPECT_EQ(graph->nodes().size(), alpha == 1.0f ? 2u : 4u);  // alpha: a Constant and a Mul
  }
  ModelProtoBuilder early(23);
  early.input("x", {3, 7});
  early.output("y", std::nullopt);
  early.node("Swish", "swish", {"x"}, "y");
  EXPECT_EQ(import_error(ErrorKind::kInvalid, early.bytes()),
            "import: node 'swish' (Swish): expected opset 24 or later for Swish, got opset 23");
  ModelProtoBuilder odd(24);
  odd.input("x", {3, 7});
  odd.output("y", std::nullopt);
  float_attribute(odd.node("Swish", "swish", {"x"}, "y"), "beta", 2.0f);
  EXPECT_EQ(import_error(ErrorKind::kInvalid, odd.bytes()),
            "import: node 'swish' (Swish): expected only attribute 'alpha', got 'beta'");
}

// Mish (opset 18), x · tanh(softplus(x)), against float64 (large |x| included: softplus near x
// and near 0); it runs as the Softplus, Tanh and Mul torch.onnx writes before opset 18, the Mul
// under the node's name. Refused before opset 18 and with an attribute.
TEST(OnnxOpsets, MishRunsAsSoftplusTanhAndMul) {
  const Tensor x = testing::random_f32({4, 9}, 10, -30.0f, 30.0f);
  ModelProtoBuilder b(18);
  b.input("x", {4, 9});
  b.output("y", std::vector<int64_t>{4, 9});
  b.node("Mish", "mish", {"x"}, "y");
  std::vector<float> want;
  for (float f : x.to_float_vector()) {
    const double v = f;
    want.push_back(static_cast<float>(v * std::tanh(std::log1p(std::exp(v)))));
  }
  testing::expect_close(run_model(b.bytes(), x), want, 1e-6, 1e-6, "mish");
  const auto graph = parse_onnx(b.bytes(), "model.onnx");
  const Node* mul = graph->find_value("y")->producer();
  EXPECT_EQ(mul->op_type(), "Mul");
  EXPECT_EQ(mul->name(), "mish");
  EXPECT_EQ(mul->inputs()[1]->producer()->op_type(), "Tanh");
  EXPECT_EQ(mul->inputs()[1]->producer()->inputs()[0]->producer()->op_type(), "Softplus");
  ModelProtoBuilder early(17);
  early.input("x", {4, 9});
  early.output("y", std::nullopt);
  early.node("Mish", "mish", {"x"}, "y");
  EXPECT_EQ(import_error(ErrorKind::kInvalid, early.bytes()),
            "import: node 'mish' (Mish): expected opset 18 or later for Mish, got opset 17");
  ModelProtoBuilder odd(18);
  odd.input("x", {4, 9});
  odd.output("y", std::nullopt);
  float_attribute(odd.node("Mish", "mish", {"x"}, "y"), "alpha", 2.0f);
  EXPECT_EQ(import_error(ErrorKind::kInvalid, odd.bytes()),
            "import: node 'mish' (Mish): expected no attributes, got 'alpha'");
}

// GridSample's forms: from opset 16, its modes bilinear/nearest/bicubic renamed linear/nearest/
// cubic at 20; each name checked against the model's opset. Both spellings import and run the
// same; cubic is refused naming the node when the graph is resolved.
TEST(OnnxOpsets, GridSampleModeNamesFollowTheOpset) {
  auto model = [](int64_t opset, const char* mode) {
    ModelProtoBuilder b(opset);
    b.input("x", {1, 1, 2, 2});
    b.input("grid", {1, 1, 1, 2});
    b.output("y", std::vector<int64_t>{1, 1, 1, 1});
    onnx::NodeProto* n = b.node("GridSample", "sample", {"x", "grid"}, "y");
    if (mode) ModelProtoBuilder::attribute(n, "mode", std::string(mode));
    return b.bytes();
  };
  EXPECT_NO_THROW(parse_onnx(model(16, "bilinear"), "model.onnx"));
  EXPECT_NO_THROW(parse_onnx(model(20, "linear"), "model.onnx"));
  EXPECT_NO_THROW(parse_onnx(model(22, nullptr), "model.onnx"));
  EXPECT_EQ(import_error(ErrorKind::kInvalid, model(15, nullptr)),
            "import: node 'sample' (GridSample): expected opset 16 or later for GridSample, got "
            "opset 15");
  EXPECT_EQ(import_error(ErrorKind::kInvalid, model(16, "linear")),
            "import: node 'sample' (GridSample): expected attribute 'mode' \"bilinear\", "
            "\"nearest\" or \"bicubic\" at opset 16, got \"linear\"");
  EXPECT_EQ(import_error(ErrorKind::kInvalid, model(20, "bilinear")),
            "import: node 'sample' (GridSample): expected attribute 'mode' \"linear\", "
            "\"nearest\" or \"cubic\" at opset 20, got \"bilinear\"");
}

// QuantizeLinear's precision and DequantizeLinear's output type (opset 23): float (1) runs as
// without them, float16 and bfloat16 are upcast as a half model's types are; another type is
// refused, as is either attribute before opset 23.
TEST(OnnxOpsets, QdqPrecisionAndOutputTypeFromOpset23) {
  auto model = [](int64_t opset, int64_t precision, int64_t output_dtype) {
    ModelProtoBuilder b(opset);
    b.input("x", {2, 3});
    b.output("y", std::vector<int64_t>{2, 3});
    b.floats("scale", {0.05f});
    auto* q = b.node("QuantizeLinear", "q", {"x", "scale"}, "xq");
    if (precision >= 0) ModelProtoBuilder::attribute(q, "precision", precision);
    auto* dq = b.node("DequantizeLinear", "dq", {"xq", "scale"}, "y");
    if (output_dtype >= 0) ModelProtoBuilder::attribute(dq, "output_dtype", output_dtype);
    return b.bytes();
  };
  const Tensor x = testing::random_f32({2, 3}, 4, -3.0f, 3.0f);
  const std::vector<float> plain = run_model(model(23, -1, -1), x);
  EXPECT_EQ(run_model(model(23, 1, 1), x), plain);
  EXPECT_EQ(run_model(model(26, 1, 1), x), plain);
  EXPECT_EQ(import_error(ErrorKind::kUnsupported, model(23, 11, -1)),
            "import: node 'q' (QuantizeLinear): expected precision 1 (float) or none, got 11");
  // float16 (10) and bfloat16 (16) are upcast with the rest of such a model.
  const auto upcast = parse_onnx(model(23, 10, 16), "model.onnx");
  EXPECT_EQ(upcast->metadata.at(std::string(kUpcastMetadataKey)),
            "float16 and bfloat16 to float32");
  EXPECT_EQ(
      runtime::Session(parse_onnx(model(23, 10, 16), "model.onnx")).run(x)[0].to_float_vector(),
      plain);
  EXPECT_EQ(
      import_error(ErrorKind::kUnsupported, model(24, -1, 11)),
      "import: node 'dq' (DequantizeLinear): expected output_dtype 1 (float) or none, got 11");
  EXPECT_EQ(import_error(ErrorKind::kInvalid, model(21, 1, -1)),
            "import: node 'q' (QuantizeLinear): expected no attribute 'precision' at opset 21 "
            "(added in opset 23), got one");
}

// A GroupNormalization of 2 groups over 4 channels at `opset`, scale and bias of `params` values.
ModelProtoBuilder group_norm_model(int64_t opset, size_t params) {
  ModelProtoBuilder b(opset);
  b.input("x", {2, 4, 3});
  b.output("y", std::vector<int64_t>{2, 4, 3});
  b.floats("scale", std::vector<float>(params, 1.5f));
  b.floats("bias", std::vector<float>(params, 0.25f));
  ModelProtoBuilder::attribute(b.node("GroupNormalization", "gn", {"x", "scale", "bias"}, "y"),
                               "num_groups", int64_t{2});
  return b;
}

// GroupNormalization's scale and bias are per group at opsets 18 to 20 and per channel from 21:
// each form runs at its opset (the same values here, as every parameter is equal), the other is
// refused naming the node, as are the op before opset 18 and stash_type before 21.
TEST(OnnxOpsets, GroupNormalizationFormFollowsTheOpset) {
  const Tensor x = testing::random_f32({2, 4, 3}, 5, -2.0f, 2.0f);
  std::vector<float> want;
  const std::vector<float> xs = x.to_float_vector();
  for (size_t block = 0; block < 4; ++block) {  // (sample, group): 6 contiguous values
    double mean = 0, var = 0;
    for (size_t i = 0; i < 6; ++i) mean += xs[block * 6 + i] / 6.0;
    for (size_t i = 0; i < 6; ++i) var += (xs[block * 6 + i] - mean) * (xs[block * 6 + i] - mean);
    const double inv = 1.0 / std::sqrt(var / 6.0 + 1e-5f);
    for (size_t i = 0; i < 6; ++i) {
      want.push_back(static_cast<float>((xs[block * 6 + i] - mean) * inv * 1.5 + 0.25));
    }
  }
  testing::expect_close(run_model(group_norm_model(18, 2).bytes(), x), want, 1e-6, 1e-6, "18");
  testing::expect_close(run_model(group_norm_model(20, 2).bytes(), x), want, 1e-6, 1e-6, "20");
  testing::expect_close(run_model(group_norm_model(21, 4).bytes(), x), want, 1e-6, 1e-6, "21");
  auto run_error = [&](const std::string& bytes) {
    return testing::error_of(ErrorKind::kInvalid, [&] { run_model(bytes, x); });
  };
  EXPECT_EQ(run_error(group_norm_model(18, 4).bytes()),
            "shape inference: node 'gn' (GroupNormalization): expected scale of shape [2] at "
            "opset 18 (per group at opsets 18 to 20; per channel from 21), got [4]");
  EXPECT_EQ(run_error(group_norm_model(21, 2).bytes()),
            "shape inference: node 'gn' (GroupNormalization): expected scale of shape [4] at "
            "opset 21 (per channel from opset 21), got [2]");
  EXPECT_EQ(import_error(ErrorKind::kInvalid, group_norm_model(17, 2).bytes()),
            "import: node 'gn' (GroupNormalization): expected opset 18 or later for "
            "GroupNormalization, got opset 17");
  onnx::ModelProto proto;
  proto.ParseFromString(group_norm_model(18, 2).bytes());
  ModelProtoBuilder::attribute(proto.mutable_graph()->mutable_node(0), "stash_type", int64_t{1});
  EXPECT_EQ(import_error(ErrorKind::kInvalid, proto.SerializeAsString()),
            "import: node 'gn' (GroupNormalization): expected no attribute 'stash_type' at "
            "opset 18 (added in opset 21), got one");
}

// Above opset 17 libonnx's checker does not run: qforge's own structure checks do.
TEST(OnnxOpsets, StructureIsCheckedWithoutLibonnxChecker) {
  ModelProtoBuilder undefined(20);
  undefined.input("x", {2, 3});
  undefined.output("y", std::nullopt);
  undefined.node("Relu", "relu", {"ghost"}, "y");
  EXPECT_EQ(import_error(ErrorKind::kInvalid, undefined.bytes()),
            "import: node 'relu' (Relu): input 'ghost' is neither a graph input, an initializer "
            "nor an earlier node's output");
  ModelProtoBuilder twice(21);
  twice.input("x", {2, 3});
  twice.output("y", std::nullopt);
  twice.node("Relu", "relu", {"x"}, "y");
  twice.node("Neg", "neg", {"x"}, "y");
  EXPECT_EQ(import_error(ErrorKind::kInvalid, twice.bytes()),
            "import: node 'neg' (Neg): output 'y' is defined twice");
  // A graph output no node produces, below opset 13: refused before libonnx's version
  // converter, which dereferenced its missing producer (a fuzz finding).
  for (int opset : {11, 20}) {
    ModelProtoBuilder unproduced(opset);
    unproduced.input("x", {2, 3});
    unproduced.output("z", std::nullopt);
    unproduced.node("Relu", "relu", {"x"}, "y");
    EXPECT_EQ(import_error(ErrorKind::kInvalid, unproduced.bytes()),
              "import: graph output 'z' is never produced")
        << "opset " << opset;
  }
}

// The sample shape fills dynamic dims; required static dims are named when left dynamic; a
// static dim that differs is refused.
TEST(OnnxOpsets, SampleShapeFixesDynamicDims) {
  ModelProtoBuilder b(13);
  b.input("image", {-1, 3, -1, -1}, {"batch", "", "height", "width"});
  b.output("y", std::vector<int64_t>{-1, 3, -1, -1});
  b.node("Relu", "relu", {"image"}, "y");
  ImportOptions required;
  required.require_static_sample = "say how";
  EXPECT_EQ(import_error(ErrorKind::kInvalid, b.bytes(), required),
            "import: input 'image' [batch, 3, height, width]: expected static dims after the "
            "batch, got dynamic 'height', 'width'; say how");
  ImportOptions fixed = required;
  fixed.sample_shape = Shape{3, 5, 6};
  const std::unique_ptr<Graph> g = parse_onnx(b.bytes(), "model.onnx", fixed);
  EXPECT_EQ(*g->inputs()[0]->shape(), (Shape{-1, 3, 5, 6}));
  fixed.sample_shape = Shape{4, 5, 6};
  fixed.sample_shape_origin = "--input-shape";
  EXPECT_EQ(import_error(ErrorKind::kInvalid, b.bytes(), fixed),
            "import: input 'image' [batch, 3, height, width]: expected 3 dims after the batch "
            "agreeing with its static dims, got --input-shape [4, 5, 6]");
  // Not required to match (a shape read from data): left as declared for the data's checks.
  fixed.sample_shape_must_match = false;
  fixed.require_static_sample.reset();
  EXPECT_EQ(*parse_onnx(b.bytes(), "model.onnx", fixed)->inputs()[0]->shape(),
            (Shape{-1, 3, -1, -1}));
}

}  // namespace
}  // namespace qforge::graph
