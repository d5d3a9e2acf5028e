// QuantizeLinear / DequantizeLinear models agree bit for bit with ONNX Runtime: imported with
// graph::load_onnx and run in runtime::Session (fused and unfused) and through `qforge run`, on
// data full of rounding ties and out-of-range values, per tensor and per axis.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "runtime/session.h"
#include "tests/support/ort_runner.h"
#include "tests/support/qdq_test_data.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Shape;
using kernels::Tensor;
using testing::qdq_stress_data;
using testing::run_cli;
using testing::run_ort;
using testing::same_bits;
using testing::TempDir;

enum class Ops { kQuantize, kDequantize, kPair };

struct QdqModel {
  Ops ops = Ops::kPair;
  Shape shape;                       // a negative leading dim is a dynamic batch
  std::vector<float> scales;         // one: per tensor (a scalar initializer)
  std::vector<int32_t> zero_points;  // empty: omitted
  DType dtype = DType::kUInt8;
  std::optional<int64_t> axis;
};

onnx::TensorProto::DataType onnx_type(DType dtype) {
  switch (dtype) {
    case DType::kInt8:
      return onnx::TensorProto::INT8;
    case DType::kUInt8:
      return onnx::TensorProto::UINT8;
    default:
      return onnx::TensorProto::FLOAT;
  }
}

std::string model_bytes(const QdqModel& m) {
  onnx::ModelProto model;
  model.set_ir_version(8);
  auto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(13);
  auto* g = model.mutable_graph();
  g->set_name("qdq");
  auto add_io = [&](onnx::ValueInfoProto* v, const char* name, DType dtype) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx_type(dtype));
    for (int64_t d : m.shape) {
      auto* dim = t->mutable_shape()->add_dim();
      if (d < 0) {
        dim->set_dim_param("N");
      } else {
        dim->set_dim_value(d);
      }
    }
  };
  add_io(g->add_input(), "x", m.ops == Ops::kDequantize ? m.dtype : DType::kFloat32);
  add_io(g->add_output(), "y", m.ops == Ops::kQuantize ? m.dtype : DType::kFloat32);

  const bool per_tensor = m.scales.size() == 1;
  auto* scale = g->add_initializer();
  scale->set_name("scale");
  scale->set_data_type(onnx::TensorProto::FLOAT);
  if (!per_tensor) scale->add_dims(static_cast<int64_t>(m.scales.size()));
  for (float s : m.scales) scale->add_float_data(s);
  if (!m.zero_points.empty()) {
    auto* zp = g->add_initializer();
    zp->set_name("zero_point");
    zp->set_data_type(onnx_type(m.dtype));
    if (!per_tensor) zp->add_dims(static_cast<int64_t>(m.zero_points.size()));
    for (int32_t z : m.zero_points) zp->add_int32_data(z);
  }
  auto add_node = [&](const char* op, const char* in, const char* out) {
    auto* n = g->add_node();
    n->set_op_type(op);
    n->set_name(std::string(op).append("_0"));
    n->add_input(in);
    n->add_input("scale");
    if (!m.zero_points.empty()) n->add_input("zero_point");
    n->add_output(out);
    if (m.axis) {
      auto* a = n->add_attribute();
      a->set_name("axis");
      a->set_type(onnx::AttributeProto::INT);
      a->set_i(*m.axis);
    }
  };
  switch (m.ops) {
    case Ops::kQuantize:
      add_node("QuantizeLinear", "x", "y");
      break;
    case Ops::kDequantize:
      add_node("DequantizeLinear", "x", "y");
      break;
    case Ops::kPair:
      add_node("QuantizeLinear", "x", "q");
      add_node("DequantizeLinear", "q", "y");
      break;
  }
  return model.SerializeAsString();
}

int normalized_axis(const QdqModel& m) {
  if (m.scales.size() == 1) return -1;
  const int64_t a = m.axis.value_or(1);
  return static_cast<int>(a < 0 ? a + static_cast<int64_t>(m.shape.size()) : a);
}

// The model's output in qforge (fused or not) and in ORT on `x`: the same bits.
void expect_matches_ort(const QdqModel& m, const Tensor& x) {
  TempDir dir;
  const std::string path = dir.file("model.onnx");
  testing::write_bytes(path, model_bytes(m));
  const std::vector<Tensor> ort = run_ort(path, {x});
  ASSERT_EQ(ort.size(), 1u);
  for (bool fuse : {true, false}) {
    runtime::SessionOptions options;
    options.fuse_qdq = fuse;
    runtime::Session session(graph::load_onnx(path), options);
    const Tensor y = session.run(x)[0];
    ASSERT_EQ(y.dtype(), ort[0].dtype());
    ASSERT_EQ(y.shape(), ort[0].shape());
    if (same_bits(y, ort[0])) continue;
    int64_t shown = 0;
    for (int64_t i = 0; i < y.numel() && shown < 10; ++i) {
      const size_t w = kernels::dtype_size(y.dtype());
      const auto* a = static_cast<const unsigned char*>(y.raw()) + i * static_cast<int64_t>(w);
      const auto* b = static_cast<const unsigned char*>(ort[0].raw()) + i * static_cast<int64_t>(w);
      if (std::memcmp(a, b, w) == 0) continue;
      ++shown;
      if (y.dtype() == DType::kFloat32) {
        ADD_FAILURE() << "fuse " << fuse << " element " << i << ": x "
                      << (x.dtype() == DType::kFloat32 ? x.data<float>()[i] : 0.0f) << " qforge "
                      << y.data<float>()[i] << " ORT " << ort[0].data<float>()[i];
      } else {
        ADD_FAILURE() << "fuse " << fuse << " element " << i << ": qforge " << int{a[0]} << " ORT "
                      << int{b[0]};
      }
    }
  }
}

QdqModel per_axis_model(Ops ops, Shape shape, int64_t axis, DType dtype, bool with_zp) {
  QdqModel m{ops, std::move(shape), {}, {}, dtype, axis};
  const int a = normalized_axis(QdqModel{ops, m.shape, {1, 1}, {}, dtype, axis});
  const int64_t channels = m.shape[static_cast<size_t>(a)];
  for (int64_t c = 0; c < channels; ++c) {
    m.scales.push_back(0.013f * static_cast<float>(c + 3) + 0.1f / static_cast<float>(c + 7));
    if (with_zp) {
      m.zero_points.push_back(dtype == DType::kInt8 ? static_cast<int32_t>(c * 11 % 60) - 30
                                                    : static_cast<int32_t>(c * 37 % 256));
    }
  }
  return m;
}

TEST(OrtQdq, PairPerTensorMatchesBitForBit) {
  const Shape shape = {2, 3, 33, 17};
  for (float s : {0.1f, 0.3f, 0.023f, 3.0f / 7.0f, 1.7f}) {
    for (const auto& [zps, dtype] :
         std::vector<std::pair<std::vector<int32_t>, DType>>{{{0}, DType::kInt8},
                                                             {{-9}, DType::kInt8},
                                                             {{128}, DType::kUInt8},
                                                             {{}, DType::kUInt8},
                                                             {{5}, DType::kUInt8}}) {
      const QdqModel m{Ops::kPair, shape, {s}, zps, dtype, std::nullopt};
      SCOPED_TRACE(::testing::Message() << "scale " << s << " " << kernels::dtype_name(dtype)
                                        << (zps.empty() ? " no zero point" : ""));
      int64_t ties = 0;
      const Tensor x = qdq_stress_data(shape, -1, m.scales, false, 3, &ties);
      EXPECT_GT(ties, x.numel() / 2);
      expect_matches_ort(m, x);
    }
  }
}

TEST(OrtQdq, PairPerAxisMatchesBitForBit) {
  const Shape shape = {4, 6, 9, 10};
  for (int64_t axis : {0, 1, 3, -1, 2}) {
    for (DType dtype : {DType::kInt8, DType::kUInt8}) {
      for (bool with_zp : {true, false}) {
        if (!with_zp && dtype == DType::kInt8) continue;
        const QdqModel m = per_axis_model(Ops::kPair, shape, axis, dtype, with_zp);
        SCOPED_TRACE(::testing::Message() << "axis " << axis << " " << kernels::dtype_name(dtype)
                                          << (with_zp ? "" : " no zero point"));
        const Tensor x = qdq_stress_data(shape, normalized_axis(m), m.scales, false, 11);
        expect_matches_ort(m, x);
      }
    }
  }
}

TEST(OrtQdq, SingleOpsMatchBitForBit) {
  const Shape shape = {3, 5, 31};
  for (DType dtype : {DType::kInt8, DType::kUInt8}) {
    // QuantizeLinear alone: the integers themselves.
    for (const QdqModel& m :
         {QdqModel{Ops::kQuantize, shape, {0.3f}, {dtype == DType::kInt8 ? -4 : 77}, dtype, {}},
          per_axis_model(Ops::kQuantize, shape, 1, dtype, true),
          per_axis_model(Ops::kQuantize, shape, -1, dtype, true)}) {
      SCOPED_TRACE(::testing::Message() << "quantize " << kernels::dtype_name(dtype));
      expect_matches_ort(m, qdq_stress_data(shape, normalized_axis(m), m.scales, false, 21));
    }
    // DequantizeLinear alone on every integer value.
    Tensor q(dtype, shape);
    for (int64_t i = 0; i < q.numel(); ++i) {
      static_cast<unsigned char*>(q.raw())[i] = static_cast<unsigned char>(i * 7 % 256);
    }
    for (const QdqModel& m :
         {QdqModel{Ops::kDequantize, shape, {0.37f}, {dtype == DType::kInt8 ? 3 : 200}, dtype, {}},
          per_axis_model(Ops::kDequantize, shape, 2, dtype, true),
          per_axis_model(Ops::kDequantize, shape, 0, dtype, true)}) {
      SCOPED_TRACE(::testing::Message() << "dequantize " << kernels::dtype_name(dtype));
      expect_matches_ort(m, q);
    }
  }
}

TEST(OrtQdq, ImportKeepsTheOps) {
  TempDir dir;
  const QdqModel m = per_axis_model(Ops::kPair, {-1, 4, 5}, 1, DType::kInt8, true);
  testing::write_bytes(dir.file("m.onnx"), model_bytes(m));
  const auto graph = graph::load_onnx(dir.file("m.onnx"));
  ASSERT_EQ(graph->nodes().size(), 2u);
  EXPECT_EQ(graph->nodes()[0]->op_type(), "QuantizeLinear");
  EXPECT_EQ(graph->nodes()[1]->op_type(), "DequantizeLinear");
  EXPECT_EQ(graph->find_value("q")->dtype(), DType::kInt8);
}

TEST(OrtQdq, CliRunMatchesOrt) {
  TempDir dir;
  const QdqModel m = per_axis_model(Ops::kPair, {-1, 4, 5}, 1, DType::kInt8, true);
  const std::string model = dir.file("m.onnx");
  testing::write_bytes(model, model_bytes(m));
  // `qforge run` takes finite data only; ±1e30 still saturates.
  const Tensor x = qdq_stress_data({6, 4, 5}, 1, m.scales, true, 4);
  io::write_npy(dir.file("x.npy"), x);
  const auto r = run_cli("run " + model + " --data " + dir.file("x.npy") + " --batch 4 -o " +
                         dir.file("y.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Tensor y = io::read_npy(dir.file("y.npy"));
  const std::vector<Tensor> ort = run_ort(model, {x});
  ASSERT_EQ(ort.size(), 1u);
  EXPECT_TRUE(same_bits(y, ort[0]));
}

}  // namespace
}  // namespace qforge
