// Float16 and bfloat16 models import computing in float32: each half value becomes the float of
// the same value (checked against the processor's own conversion for all 65536 of them), each
// bfloat16 the float of its bits, declared values and Cast targets become float, and the graph is
// marked as upcast. A float16 ResNet then holds exactly the weights of the float32 one rounded to
// half, and its outputs stay within a few float16 steps of ONNX Runtime's on the same file; a
// bfloat16 one runs as the float32 ResNet of its rounded weights.
#include <gtest/gtest.h>
#include <immintrin.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "runtime/session.h"
#include "tests/support/onnx_files.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"

namespace qforge::graph {
namespace {

using testing::data_path;
using testing::TempDir;

// The processor's conversions (F16C, on every x86-64 since 2012), whatever -march the build
// uses: the reference the importer's own conversion is checked against.
[[gnu::target("f16c")]] uint16_t to_half(float f) {
  const __m128i h = _mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT);
  return static_cast<uint16_t>(_mm_cvtsi128_si32(h) & 0xffff);
}
[[gnu::target("f16c")]] float from_half(uint16_t h) {
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

// bfloat16: the upper half of the float's bits, rounded to nearest even (a NaN stays a NaN), as
// PyTorch's and ONNX's conversions round.
uint16_t to_bfloat16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  return static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}
float from_bfloat16(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// The model computing in float16 (or bfloat16) with float32 inputs and outputs, as converters
// write it when asked to keep the interface's types: every float tensor and declared value inside
// in the 16-bit type (values rounded to nearest even), a Cast to it after each input and one to
// float before each output.
onnx::ModelProto to_float16(onnx::ModelProto model, int half_type = onnx::TensorProto::FLOAT16) {
  const bool brain = half_type == onnx::TensorProto::BFLOAT16;
  auto tensor = [&](onnx::TensorProto& t) {
    if (t.data_type() != onnx::TensorProto::FLOAT) return;
    std::vector<float> values(static_cast<size_t>(t.float_data_size()));
    for (int i = 0; i < t.float_data_size(); ++i) values[static_cast<size_t>(i)] = t.float_data(i);
    if (t.has_raw_data()) {
      values.resize(t.raw_data().size() / sizeof(float));
      std::memcpy(values.data(), t.raw_data().data(), t.raw_data().size());
    }
    std::string raw(values.size() * 2, '\0');
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t h = brain ? to_bfloat16(values[i]) : to_half(values[i]);
      std::memcpy(raw.data() + 2 * i, &h, 2);
    }
    t.clear_float_data();
    t.set_raw_data(raw);
    t.set_data_type(half_type);
  };
  onnx::GraphProto& g = *model.mutable_graph();
  for (auto& t : *g.mutable_initializer()) tensor(t);
  for (auto& v : *g.mutable_value_info()) {
    auto* t = v.mutable_type()->mutable_tensor_type();
    if (t->elem_type() == onnx::TensorProto::FLOAT) t->set_elem_type(half_type);
  }
  for (auto& n : *g.mutable_node()) {
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_t()) tensor(*a.mutable_t());
    }
  }
  auto cast = [](const std::string& from, const std::string& to, int type) {
    onnx::NodeProto n;
    n.set_op_type("Cast");
    n.set_name(to + "_cast");
    n.add_input(from);
    n.add_output(to);
    auto* a = n.add_attribute();
    a->set_name("to");
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(type);
    return n;
  };
  std::vector<onnx::NodeProto> nodes;
  for (const auto& in : g.input()) {
    nodes.push_back(cast(in.name(), in.name() + "_f16", half_type));
    for (auto& n : *g.mutable_node()) {
      for (auto& i : *n.mutable_input()) {
        if (i == in.name()) i = in.name() + "_f16";
      }
    }
  }
  for (const auto& n : g.node()) nodes.push_back(n);
  for (const auto& out : g.output()) {
    for (auto& n : nodes) {
      for (auto& o : *n.mutable_output()) {
        if (o == out.name()) o = out.name() + "_f16";
      }
    }
    nodes.push_back(cast(out.name() + "_f16", out.name(), onnx::TensorProto::FLOAT));
  }
  g.clear_node();
  for (auto& n : nodes) *g.add_node() = std::move(n);
  return model;
}

using testing::read_proto;

// A model at `opset` whose input "x" [1] is added to the initializer "w" [65536] holding every
// 16-bit pattern of `type` (FLOAT16 or BFLOAT16) in order, as raw bytes, into "sum"; x declared
// of that type. The tests add their outputs and further nodes.
onnx::ModelProto every_pattern_model(int type, int64_t opset) {
  onnx::ModelProto model;
  model.set_ir_version(8);
  auto* o = model.add_opset_import();
  o->set_domain("");
  o->set_version(opset);
  auto* g = model.mutable_graph();
  g->set_name("patterns");
  auto* x = g->add_input();
  x->set_name("x");
  auto* t = x->mutable_type()->mutable_tensor_type();
  t->set_elem_type(type);
  t->mutable_shape()->add_dim()->set_dim_value(1);
  auto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(type);
  w->add_dims(65536);
  std::string raw(65536 * 2, '\0');
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto v = static_cast<uint16_t>(h);
    std::memcpy(raw.data() + 2 * h, &v, 2);
  }
  w->set_raw_data(raw);
  auto* add = g->add_node();
  add->set_op_type("Add");
  add->set_name("add");
  add->add_input("x");
  add->add_input("w");
  add->add_output("sum");
  return model;
}

// Declares graph output `name` [n] of `type`.
void declare_output(onnx::ModelProto& model, const char* name, int type, int64_t n) {
  auto* v = model.mutable_graph()->add_output();
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(type);
  t->mutable_shape()->add_dim()->set_dim_value(n);
}

TEST(Float16Import, EveryHalfBecomesTheFloatOfItsValue) {
  onnx::ModelProto model = every_pattern_model(onnx::TensorProto::FLOAT16, 17);
  declare_output(model, "y", onnx::TensorProto::FLOAT16, 65536);
  auto* g = model.mutable_graph();
  auto* cast = g->add_node();
  cast->set_op_type("Cast");
  cast->set_name("cast");
  cast->add_input("sum");
  cast->add_output("y");
  auto* to = cast->add_attribute();
  to->set_name("to");
  to->set_type(onnx::AttributeProto::INT);
  to->set_i(onnx::TensorProto::FLOAT16);

  auto graph = parse_onnx(model.SerializeAsString(), "halves.onnx");
  EXPECT_EQ(graph->metadata.at(std::string(kUpcastMetadataKey)), "float16 to float32");
  EXPECT_EQ(graph->inputs()[0]->dtype(), DType::kFloat32);
  EXPECT_EQ(graph->outputs()[0]->dtype(), DType::kFloat32);
  const Node* c = graph->find_value("y")->producer();
  EXPECT_EQ(std::get<int64_t>(c->attributes().at("to")), onnx::TensorProto::FLOAT);
  const Tensor& values = graph->find_value("w")->constant();
  ASSERT_EQ(values.describe(), "float32[65536]");
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = from_half(static_cast<uint16_t>(h));
    const float got = values.data<float>()[h];
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
      continue;
    }
    uint32_t a, b;
    std::memcpy(&a, &want, 4);
    std::memcpy(&b, &got, 4);
    ASSERT_EQ(a, b) << "half 0x" << std::hex << h;
  }
}

TEST(Float16Import, AFloat16ResnetHoldsTheFloatWeightsRoundedToHalf) {
  const std::string path = data_path("models/resnet_bn.onnx");
  TempDir dir;
  const std::string half_path = dir.file("resnet_fp16.onnx");
  testing::write_bytes(half_path, to_float16(read_proto(path)).SerializeAsString());
  auto half = load_onnx(half_path);
  auto full = load_onnx(path);
  EXPECT_EQ(half->metadata.count(std::string(kUpcastMetadataKey)), 1u);
  EXPECT_EQ(full->metadata.count(std::string(kUpcastMetadataKey)), 0u);
  size_t constants = 0;
  for (const Value* v : full->values()) {
    if (!v->is_constant() || v->constant().dtype() != DType::kFloat32) continue;
    ++constants;
    const Tensor& a = v->constant();
    const Tensor& b = half->find_value(v->name())->constant();
    ASSERT_EQ(a.describe(), b.describe()) << v->name();
    for (int64_t i = 0; i < a.numel(); ++i) {
      ASSERT_EQ(b.data<float>()[i], from_half(to_half(a.data<float>()[i])))
          << v->name() << "[" << i << "]";
    }
  }
  EXPECT_GT(constants, 20u);

  // ONNX Runtime runs the file (its CPU kernels compute most float16 ops in float32 between
  // casts): the outputs agree to within a few float16 steps (0.05% each) of the largest.
  const Tensor x = testing::random_f32({2, 3, 32, 32}, 3, 0.0f, 1.0f);
  Tensor x16(DType::kFloat32, x.shape());  // the inputs ORT is given, rounded to half
  for (int64_t i = 0; i < x.numel(); ++i)
    x16.data<float>()[i] = from_half(to_half(x.data<float>()[i]));
  runtime::Session session(std::move(half));
  const Tensor got = session.run(x16)[0].clone();
  const std::vector<Tensor> ort = testing::run_ort(half_path, {x16});
  ASSERT_EQ(ort.size(), 1u);
  ASSERT_EQ(ort[0].numel(), got.numel());
  double scale = 0, worst = 0;
  for (int64_t i = 0; i < got.numel(); ++i)
    scale = std::max(scale, std::fabs(double{got.data<float>()[i]}));
  for (int64_t i = 0; i < got.numel(); ++i) {
    worst =
        std::max(worst, std::fabs(double{got.data<float>()[i]} - double{ort[0].data<float>()[i]}));
  }
  EXPECT_GT(scale, 0.1);
  EXPECT_LT(worst, 2e-3 * scale) << "max |qforge - ORT float16| " << worst << " of max " << scale;
}

// A float16 model whose weights lie in an external data file: read at two bytes a value, then
// upcast.
TEST(Float16Import, ExternalFloat16WeightsAreReadThenUpcast) {
  const std::string path = data_path("models/resnet_bn.onnx");
  TempDir dir;
  const std::string external = testing::externalize(to_float16(read_proto(path)), dir);
  testing::write_bytes(dir.file("inline.onnx"), to_float16(read_proto(path)).SerializeAsString());
  EXPECT_GT(
      testing::expect_same_constants(*load_onnx(dir.file("inline.onnx")), *load_onnx(external))
          .float32,
      20u);
}

// Every bfloat16 is the float of its bits followed by 16 zero bits: all 65536 of them, stored as
// raw bytes, and a few in int32_data (ONNX's other storage of 16-bit values), with values known by
// heart among them.
TEST(Bfloat16Import, EveryBfloat16BecomesTheFloatOfItsBits) {
  onnx::ModelProto model = every_pattern_model(onnx::TensorProto::BFLOAT16, 22);
  declare_output(model, "sum", onnx::TensorProto::BFLOAT16, 65536);
  declare_output(model, "z", onnx::TensorProto::BFLOAT16, 5);
  auto* g = model.mutable_graph();
  auto* known = g->add_initializer();
  known->set_name("known");
  known->set_data_type(onnx::TensorProto::BFLOAT16);
  known->add_dims(5);
  for (int32_t v : {0x3f80, 0xc000, 0x0001, 0x7f80, 0x3e2a}) known->add_int32_data(v);
  auto* add = g->add_node();
  add->set_op_type("Add");
  add->set_name("add_known");
  add->add_input("x");
  add->add_input("known");
  add->add_output("z");

  auto graph = parse_onnx(model.SerializeAsString(), "bfloat16.onnx");
  EXPECT_EQ(graph->metadata.at(std::string(kUpcastMetadataKey)), "bfloat16 to float32");
  EXPECT_EQ(graph->inputs()[0]->dtype(), DType::kFloat32);
  EXPECT_EQ(graph->outputs()[1]->dtype(), DType::kFloat32);
  const Tensor& values = graph->find_value("w")->constant();
  ASSERT_EQ(values.describe(), "float32[65536]");
  for (uint32_t h = 0; h < 65536; ++h) {
    uint32_t bits;
    std::memcpy(&bits, values.data<float>() + h, 4);
    ASSERT_EQ(bits, h << 16) << "bfloat16 0x" << std::hex << h;
  }
  const Tensor& k = graph->find_value("known")->constant();
  ASSERT_EQ(k.describe(), "float32[5]");
  EXPECT_EQ(k.data<float>()[0], 1.0f);
  EXPECT_EQ(k.data<float>()[1], -2.0f);
  EXPECT_EQ(k.data<float>()[2], 0x1p-133f);  // the smallest subnormal: 2^-126 · 2^-7
  EXPECT_EQ(k.data<float>()[3], std::numeric_limits<float>::infinity());
  EXPECT_EQ(k.data<float>()[4], 0.166015625f);  // 0x3e2a: 2^-3 · (1 + 42/128)
}

// A bfloat16 ResNet (float32 interface, Casts inside) runs as the float32 ResNet whose weights
// are rounded to bfloat16: the same outputs bit for bit, since the upcast is exact and the graph
// then computes in float32. (ONNX Runtime's CPU kernels have no bfloat16 convolution to compare.)
TEST(Bfloat16Import, ABfloat16ResnetRunsAsTheFloatResnetOfItsRoundedWeights) {
  const std::string path = data_path("models/resnet_bn.onnx");
  onnx::ModelProto rounded = read_proto(path);
  for (auto& t : *rounded.mutable_graph()->mutable_initializer()) {
    if (t.data_type() != onnx::TensorProto::FLOAT) continue;
    std::vector<float> values(static_cast<size_t>(t.float_data_size()));
    for (int i = 0; i < t.float_data_size(); ++i) values[static_cast<size_t>(i)] = t.float_data(i);
    if (t.has_raw_data()) {
      values.resize(t.raw_data().size() / sizeof(float));
      std::memcpy(values.data(), t.raw_data().data(), t.raw_data().size());
    }
    for (float& v : values) v = from_bfloat16(to_bfloat16(v));
    t.clear_float_data();
    t.set_raw_data(
        std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float)));
  }
  auto brain = parse_onnx(
      to_float16(read_proto(path), onnx::TensorProto::BFLOAT16).SerializeAsString(), "bf16.onnx");
  EXPECT_EQ(brain->metadata.at(std::string(kUpcastMetadataKey)), "bfloat16 to float32");
  const Tensor x = testing::random_f32({2, 3, 32, 32}, 3, 0.0f, 1.0f);
  runtime::Session a(parse_onnx(rounded.SerializeAsString(), "rounded.onnx"));
  runtime::Session b(std::move(brain));
  const std::vector<float> want = a.run(x)[0].to_float_vector();
  EXPECT_EQ(b.run(x)[0].to_float_vector(), want);
  EXPECT_NE(want, runtime::Session(load_onnx(path)).run(x)[0].to_float_vector())
      << "the rounding to bfloat16 moved no output";
}

}  // namespace
}  // namespace qforge::graph
