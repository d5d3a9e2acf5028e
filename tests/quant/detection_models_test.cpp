// The bundled dense-prediction models (data/generate/detection_models.py): a YOLO-style detector
// (C2f blocks with Split, SPPF MaxPools, a nearest Resize, Concats, SiLU, a DFL head) and a UNet
// (ConvTranspose-BN-ReLU, a bilinear Resize, Concat skips). `qforge run` computes PyTorch's
// outputs; `qforge calibrate` writes a Q/DQ model whose every Q/DQ point ONNX Runtime computes as
// `qforge verify` does (teacher forced, up to rounding flips, as tests/quant/qdq_models_ort_test
// checks the classifiers) and whose output keeps 25 dB SQNR to the float model; the export
// quantizes ConvTranspose weights along axis 1 and gives the quantized tensors around each Concat
// one scale. Each model is also exported at opset 11, which the importer converts to opset 13:
// the same checks hold for that file, against the same PyTorch outputs.
#include <gtest/gtest.h>

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "graph/onnx_import.h"
#include "tests/support/ort_runner.h"
#include "tests/support/test_support.h"
#include "tools/io/image_folder.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using kernels::Tensor;
using testing::data_path;
using testing::run_cli;
using testing::TempDir;

constexpr int64_t kBatch = 64;

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

class DetectionModel : public ::testing::TestWithParam<std::string> {};

// "yolo_bn_opset11" → "yolo_bn": the PyTorch outputs are those of the model whatever its opset.
std::string without_opset(const std::string& name) {
  const size_t at = name.find("_opset");
  return at == std::string::npos ? name : name.substr(0, at);
}

TEST_P(DetectionModel, RunMatchesPyTorch) {
  const std::string name = GetParam();
  const std::string family = name.substr(0, name.find('_'));
  TempDir dir;
  const auto r =
      run_cli("run " + data_path("models/" + name + ".onnx") + " --data " +
              data_path("golden/" + family + "_input.npy") + " -o " + dir.file("out.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Tensor got = io::read_npy(dir.file("out.npy"));
  const Tensor want = io::read_npy(data_path("golden/" + without_opset(name) + "_output.npy"));
  ASSERT_EQ(got.shape(), want.shape());
  double scale = 1.0, worst = 0.0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    scale = std::max(scale, std::abs(double(want.data<float>()[i])));
    worst = std::max(worst, std::abs(double(got.data<float>()[i]) - want.data<float>()[i]));
  }
  EXPECT_LE(worst, 1e-4 * scale);
}

// The Q/DQ model's initializers and nodes, read back.
struct QdqModel {
  onnx::ModelProto proto;
  const onnx::NodeProto* producer(const std::string& value) const {
    for (const onnx::NodeProto& n : proto.graph().node()) {
      for (const std::string& out : n.output()) {
        if (out == value) return &n;
      }
    }
    return nullptr;
  }
};

TEST_P(DetectionModel, CalibratedModelMatchesOnnxRuntimeAndKeepsSqnr) {
  const std::string name = GetParam();
  TempDir dir;
  const std::string model = data_path("models/" + name + ".onnx");
  const auto graph = graph::load_onnx(model);
  io::ImageFolder val(data_path("datasets/digits/val"),
                      io::preprocess_from_metadata(graph->metadata, *graph->inputs()[0]->shape()));
  io::write_npy(dir.file("val.npy"), val.load_batch(0, kBatch));
  const std::string qdq = dir.file("m.qdq.onnx");
  const auto cal =
      run_cli("calibrate " + model + " --data " + data_path("datasets/digits/train") +
              " --limit 256 --batch " + std::to_string(kBatch) + " --flip-injections 0 -o " + qdq +
              " --report " + dir.file("calibration.json"));
  ASSERT_EQ(cal.exit_code, 0) << cal.err;
  const nlohmann::json report = read_json(dir.file("calibration.json"));
  EXPECT_GE(report["evaluation"]["sqnr_db"].get<double>(), 25.0);

  // Teacher-forced against ORT, with its graph optimisations off and on (the tolerances of
  // tests/quant/qdq_models_ort_test.cpp, in steps of each point's scale).
  for (const auto& [optimization, tolerance] :
       std::map<std::string, double>{{"disabled", 1e-4}, {"all", 1e-2}}) {
    SCOPED_TRACE("ORT graph optimisations " + optimization);
    const std::string dump = dir.file("ort_" + optimization + ".npz");
    testing::ort_dump(qdq, dir.file("val.npy"), dump, optimization);
    const std::string verified = dir.file("verify_" + optimization + ".json");
    const auto r =
        run_cli("verify " + qdq + " --reference " + dump + " --data " + dir.file("val.npy") +
                " --report " + verified + " --tolerance " + std::to_string(tolerance));
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    const nlohmann::json j = read_json(verified);
    ASSERT_GT(j["points"].size(), 0u);
    for (const auto& p : j["points"]) EXPECT_EQ(p["mismatches"].get<int64_t>(), 0) << p["node"];
    EXPECT_TRUE(j["passed"].get<bool>());
  }

  QdqModel m;
  ASSERT_TRUE(m.proto.ParseFromString(testing::read_text(qdq)));
  // Every ConvTranspose reads its weight through a DequantizeLinear along axis 1, the output
  // channels of its [C_in, C_out / group, kH, kW] weight.
  size_t transposed = 0;
  for (const onnx::NodeProto& n : m.proto.graph().node()) {
    if (n.op_type() != "ConvTranspose") continue;
    ++transposed;
    const onnx::NodeProto* dq = m.producer(n.input(1));
    ASSERT_NE(dq, nullptr) << n.name();
    EXPECT_EQ(dq->op_type(), "DequantizeLinear") << n.name();
    int64_t axis = -1;
    for (const onnx::AttributeProto& a : dq->attribute()) {
      if (a.name() == "axis") axis = a.i();
    }
    EXPECT_EQ(axis, 1) << n.name();
  }
  EXPECT_EQ(transposed, without_opset(name) == "unet_bn" ? 1u : 0u);
  // The quantized tensors a Concat joins, and its output when quantized, share one scale.
  size_t shared = 0;
  for (const onnx::NodeProto& n : m.proto.graph().node()) {
    if (n.op_type() != "Concat") continue;
    std::set<std::string> scales;
    for (const std::string& in : n.input()) {
      for (const onnx::NodeProto& q : m.proto.graph().node()) {
        if (q.op_type() == "QuantizeLinear" && q.input(0) == in) scales.insert(q.input(1));
      }
    }
    for (const onnx::NodeProto& q : m.proto.graph().node()) {
      if (q.op_type() == "QuantizeLinear" && q.input(0) == n.output(0)) scales.insert(q.input(1));
    }
    EXPECT_LE(scales.size(), 1u) << n.name();
    shared += scales.size() == 1;
  }
  EXPECT_GT(shared, 0u);
}

INSTANTIATE_TEST_SUITE_P(Bundled, DetectionModel,
                         ::testing::Values("yolo_bn", "unet_bn", "yolo_bn_opset11",
                                           "unet_bn_opset11"),
                         [](const auto& p) { return p.param; });

}  // namespace
}  // namespace qforge
