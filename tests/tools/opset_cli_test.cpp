// The models of data/generate/opset_models.py (a CNN and a transformer block exported by PyTorch
// at opsets 9, 11, 13 and 17, and converted by hand to 18 to 26; the CNN with SiLU at 17 and,
// as Swish nodes, at 24; the transformer's attention as one Attention node at 23): `qforge run`
// gives
// PyTorch's outputs; `qforge calibrate` quantizes them into Q/DQ models that ONNX Runtime runs as
// qforge does (teacher-forced `qforge verify`, no mismatch); `qforge grad` gives PyTorch's loss
// and gradients through converted, opset-13, 17, 20, 23 and 24 models (LayerNorm and the tanh
// GELU written out with Pow, Gelu's tanh form, ReduceMean's axes input, Attention, Swish);
// dynamic height and width take
// --input-shape or the .npy data's shape, and without either the error says so.
#include <gtest/gtest.h>

#include <onnx/onnx_pb.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "tests/support/float_checks.h"
#include "tests/support/ort_runner.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using testing::data_path;
using testing::run_cli;
using testing::TempDir;

struct OpsetModel {
  std::string name;       // data/models/opset/<name>.onnx
  std::string family;     // data/golden/opset/<family>_{input,output}.npy
  int64_t written_opset;  // the opset of the Q/DQ model calibrate writes
};

const OpsetModel kModels[] = {
    {"cnn_opset9", "cnn", 13},
    {"cnn_opset11", "cnn", 13},
    {"cnn_opset13", "cnn", 13},
    {"cnn_opset17", "cnn", 17},
    {"cnn_opset18", "cnn", 18},
    {"transformer_opset9", "transformer", 13},
    {"transformer_opset11", "transformer", 13},
    {"transformer_opset13", "transformer", 13},
    {"transformer_opset17", "transformer", 17},
    {"transformer_opset18", "transformer", 18},
    {"transformer_opset20", "transformer", 20},
    {"transformer_opset21", "transformer", 21},
    {"transformer_tanh_opset17", "transformer_tanh", 17},
    {"transformer_tanh_opset20", "transformer_tanh", 20},
    {"cnn_opset22", "cnn", 22},
    {"cnn_opset26", "cnn", 26},
    {"transformer_opset23", "transformer", 23},
    {"transformer_opset26", "transformer", 26},
    {"cnn_silu_opset17", "cnn_silu", 17},
    {"cnn_silu_opset24", "cnn_silu", 24},
    {"transformer_attention_opset23", "transformer", 23},
};

// Test names and failure messages show the model's name, not its bytes.
void PrintTo(const OpsetModel& m, std::ostream* os) {
  *os << m.name;
}

std::string model_path(const std::string& name) {
  return data_path("models/opset/" + name + ".onnx");
}
std::string golden(const std::string& file) {
  return data_path("golden/opset/" + file);
}

// The families that share another's inputs: the tanh transformer, the CNN with SiLU.
std::string input_of(const OpsetModel& m) {
  const std::string shared = m.family == "transformer_tanh" ? "transformer"
                             : m.family == "cnn_silu"       ? "cnn"
                                                            : m.family;
  return golden(shared + "_input.npy");
}

// Every element within 1e-4 · max(1, max |ref|) of PyTorch's.
void expect_matches_pytorch(const std::string& output, const std::string& reference) {
  testing::expect_close_scaled(io::read_npy(output), io::read_npy(reference), 1e-4, reference);
}

class OpsetModelCli : public ::testing::TestWithParam<OpsetModel> {};

TEST_P(OpsetModelCli, RunMatchesPyTorch) {
  const OpsetModel& m = GetParam();
  TempDir dir;
  const auto r = run_cli("run " + model_path(m.name) + " --data " + input_of(m) + " -o " +
                         dir.file("out.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_matches_pytorch(dir.file("out.npy"), golden(m.family + "_output.npy"));
}

INSTANTIATE_TEST_SUITE_P(Opsets, OpsetModelCli, ::testing::ValuesIn(kModels),
                         [](const auto& p) { return p.param.name; });

// The Q/DQ model calibrate writes keeps the model's opset (13 for the converted ones), and ORT's
// values of its Q/DQ points are qforge's.
class OpsetCalibrated : public ::testing::TestWithParam<OpsetModel> {};

TEST_P(OpsetCalibrated, RunsInOrtAsInQforge) {
  const OpsetModel& m = GetParam();
  TempDir dir;
  const std::string qdq = dir.file("m.qdq.onnx");
  const auto cal = run_cli("calibrate " + model_path(m.name) + " --data " + input_of(m) +
                           " --batch 8 --flip-injections 0 -o " + qdq);
  ASSERT_EQ(cal.exit_code, 0) << cal.err;
  onnx::ModelProto proto;
  ASSERT_TRUE(proto.ParseFromString(testing::read_text(qdq)));
  ASSERT_EQ(proto.opset_import_size(), 1);
  EXPECT_EQ(proto.opset_import(0).version(), m.written_opset);
  int quantize_nodes = 0;
  for (const auto& n : proto.graph().node()) quantize_nodes += n.op_type() == "QuantizeLinear";
  EXPECT_GT(quantize_nodes, 2);

  const std::string dump = dir.file("ort.npz");
  testing::expect_verified_by_ort(qdq, input_of(m), dump);
}

// One model per path through import: converted (9, 11), native with libonnx's checks (17) and
// without them (18, 20 with both Gelu forms, 21, 22, 23, 26, 24 with Swish nodes, 23 with an
// Attention node).
const OpsetModel kCalibrated[] = {kModels[0],  kModels[4],  kModels[6],  kModels[8],  kModels[10],
                                  kModels[11], kModels[13], kModels[14], kModels[16], kModels[15],
                                  kModels[17], kModels[19], kModels[20]};

INSTANTIATE_TEST_SUITE_P(Opsets, OpsetCalibrated, ::testing::ValuesIn(kCalibrated),
                         [](const auto& p) { return p.param.name; });

// The mean cross-entropy and every gradient PyTorch gives for a parameter the model keeps as an
// initializer (data/golden/opset/<model>_grads.npz), as expect_gradients_match holds them (the
// bundled models' training goldens' bounds): the converted CNN, and the transformer with both
// forms of the Gelu node.
class OpsetGradients : public ::testing::TestWithParam<OpsetModel> {};

TEST_P(OpsetGradients, MatchPyTorch) {
  const OpsetModel& m = GetParam();
  TempDir dir;
  const auto r = run_cli("grad " + model_path(m.name) + " --data " + input_of(m) + " --labels " +
                         golden("labels.npy") + " -o " + dir.file("grads.npz"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto want = io::read_npz(golden(m.name + "_grads.npz"));
  ASSERT_GE(want.size(), 5u);
  testing::expect_gradients_match(io::read_npz(dir.file("grads.npz")), want);
}

INSTANTIATE_TEST_SUITE_P(Opsets, OpsetGradients,
                         ::testing::Values(kModels[0], kModels[7], kModels[11], kModels[12],
                                           kModels[13], kModels[19], kModels[20]),
                         [](const auto& p) { return p.param.name; });

// Swish nodes (opset 24) run as the Sigmoid and Mul torch writes for SiLU at 17: the same
// outputs bit for bit, and the same fusions into the same modules (ConvBNAct and ConvBNAddAct
// with their SiLU).
TEST(OpsetCli, SwishFusesAsTheSigmoidMulExport) {
  TempDir dir;
  nlohmann::json reports[2];
  std::string outputs[2];
  const char* names[] = {"cnn_silu_opset17", "cnn_silu_opset24"};
  for (int i = 0; i < 2; ++i) {
    const std::string out = dir.file(std::string(names[i]) + ".npy");
    auto r = run_cli("run " + model_path(names[i]) + " --data " + golden("cnn_input.npy") + " -o " +
                     out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    outputs[i] = testing::read_text(out);
    const std::string report = dir.file(std::string(names[i]) + ".json");
    r = run_cli("transform " + model_path(names[i]) + " -o " + dir.file("t.onnx") + " --report " +
                report);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    reports[i] = nlohmann::json::parse(testing::read_text(report));
  }
  EXPECT_EQ(outputs[0], outputs[1]);
  EXPECT_EQ(reports[0]["modules"], reports[1]["modules"]);
  EXPECT_EQ(reports[0]["fusions"], reports[1]["fusions"]);
  EXPECT_EQ(reports[1]["modules"]["ConvBNAct"], 2);
  EXPECT_EQ(reports[1]["modules"]["ConvBNAddAct"], 1);
}

// Before opset 17 torch writes LayerNorm out (ReduceMean, Sub, Pow, …): such a transformer
// trains through Pow's backward, its exponent a setting that stays the literal 2 and its epsilon
// a literal that training leaves alone, as PyTorch does: qat trains the same tensors as on the
// opset-17 export (one LayerNormalization node) and writes as many Q/DQ points. Likewise the
// constants of an imported Attention's rewrite.
TEST(OpsetCli, QatTrainsALayerNormWrittenOut) {
  TempDir dir;
  struct Run {
    std::string trained;  // "N tensors (M values)"
    int quantize_nodes = 0;
    onnx::ModelProto proto;
  };
  auto qat = [&](const std::string& model) {
    Run run;
    const std::string qdq = dir.file(model + ".qdq.onnx");
    const auto r =
        run_cli("qat " + model_path(model) + " --data " + golden("transformer_input.npy") +
                " --distill --steps 3 --batch 4 -o " + qdq);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const size_t at = r.out.find(" tensors (");
    const size_t from = r.out.rfind(", ", at);
    const size_t to = r.out.find(')', at);
    if (at != std::string::npos && from != std::string::npos && to != std::string::npos) {
      run.trained = r.out.substr(from + 2, to + 1 - from - 2);
    }
    EXPECT_TRUE(run.proto.ParseFromString(testing::read_text(qdq)));
    for (const auto& n : run.proto.graph().node()) {
      run.quantize_nodes += n.op_type() == "QuantizeLinear";
    }
    return run;
  };
  const Run written_out = qat("transformer_opset13");
  const Run native = qat("transformer_opset17");
  EXPECT_FALSE(native.trained.empty());
  EXPECT_EQ(written_out.trained, native.trained);
  EXPECT_EQ(written_out.quantize_nodes, native.quantize_nodes);
  int pows = 0;
  for (const auto& n : written_out.proto.graph().node()) {
    if (n.op_type() != "Pow") continue;
    ++pows;
    bool found = false;
    for (const auto& t : written_out.proto.graph().initializer()) {
      if (t.name() != n.input(1)) continue;
      found = true;
      ASSERT_EQ(t.data_type(), onnx::TensorProto::FLOAT);
      float exponent = 0;
      if (t.float_data_size() == 1) {
        exponent = t.float_data(0);
      } else {
        ASSERT_EQ(t.raw_data().size(), sizeof(float));
        std::memcpy(&exponent, t.raw_data().data(), sizeof exponent);
      }
      EXPECT_EQ(exponent, 2.0f) << n.name();
    }
    EXPECT_TRUE(found) << n.name() << ": exponent not an initializer";
  }
  EXPECT_EQ(pows, 2);  // one per LayerNorm
  // The numbers the importer writes for an Attention node (its default scale's 1, …) are
  // literals too: the same values train as on the opset-23 export without it (Q, K and V packed
  // into one in-projection there, hence fewer tensors).
  auto values = [](const std::string& trained) { return trained.substr(trained.find('(')); };
  const Run attention = qat("transformer_attention_opset23");
  const Run plain = qat("transformer_opset23");
  EXPECT_FALSE(plain.trained.empty());
  EXPECT_EQ(values(attention.trained), values(plain.trained));
}

// nn.LayerNorm written out (opsets before 17) composes into the LayerNorm module the opset-17
// export's LayerNormalization node makes (ComposeLayerNorm): SmoothQuant smooths the same two
// LayerNorms with the same factors, the calibrated model gives the same figures, and it is written
// out again at opset 13 (no LayerNormalization there), which ONNX Runtime runs as qforge does.
TEST(OpsetCli, WrittenOutLayerNormsComposeAndAreWrittenOutAgain) {
  TempDir dir;
  std::string lines[2];
  const char* names[] = {"transformer_opset13", "transformer_opset17"};
  for (int i = 0; i < 2; ++i) {
    const std::string qdq = dir.file(std::string(names[i]) + ".qdq.onnx");
    const auto r = run_cli("calibrate " + model_path(names[i]) + " --data " +
                           golden("transformer_input.npy") + " --smoothquant -o " + qdq);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const char* key : {"smoothquant  ", "output SQNR  "}) {
      const size_t at = r.out.find(key);
      ASSERT_NE(at, std::string::npos) << r.out;
      lines[i] += r.out.substr(at, r.out.find('\n', at) - at) + "\n";
    }
  }
  EXPECT_EQ(lines[0], lines[1]);
  EXPECT_NE(lines[0].find("2 norms smoothed"), std::string::npos) << lines[0];
  const std::string qdq = dir.file("transformer_opset13.qdq.onnx");
  onnx::ModelProto proto;
  ASSERT_TRUE(proto.ParseFromString(testing::read_text(qdq)));
  EXPECT_EQ(proto.opset_import(0).version(), 13);
  int pows = 0, norms = 0;
  for (const auto& n : proto.graph().node()) {
    pows += n.op_type() == "Pow";
    norms += n.op_type() == "LayerNormalization";
  }
  EXPECT_EQ(pows, 2);
  EXPECT_EQ(norms, 0);
  const std::string dump = dir.file("ort.npz");
  testing::ort_dump(qdq, golden("transformer_input.npy"), dump, "all");
  const auto verified = run_cli("verify " + qdq + " --reference " + dump + " --data " +
                                golden("transformer_input.npy"));
  EXPECT_NE(verified.out.find("verdict      pass: no mismatch"), std::string::npos) << verified.out;
}

TEST(OpsetCli, DynamicHeightAndWidthTakeTheDataShapeOrInputShape) {
  TempDir dir;
  const std::string model = model_path("cnn_dynamic_hw_opset13");
  // The .npy rows give 3×12×20.
  auto r = run_cli("run " + model + " --data " + golden("cnn_wide_input.npy") + " -o " +
                   dir.file("wide.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_matches_pytorch(dir.file("wide.npy"), golden("cnn_wide_output.npy"));
  // --input-shape agrees with the data.
  r = run_cli("run " + model + " --input-shape 3,16,16 --data " + golden("cnn_input.npy") + " -o " +
              dir.file("square.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_matches_pytorch(dir.file("square.npy"), golden("cnn_output.npy"));
  // Transform checks on random inputs of the given shape; plan and inspect resolve at it.
  r = run_cli("transform " + model + " --input-shape 3,16,16 -o " + dir.file("t.onnx"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = run_cli("plan " + model + " --input-shape 3,16,16");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = run_cli("inspect " + model + " --input-shape 3,12,20");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("input    input  float32[N, 3, 12, 20]"), std::string::npos) << r.out;
}

TEST(OpsetCli, DynamicHeightAndWidthWithoutAShapeAreNamed) {
  TempDir dir;
  const std::string model = model_path("cnn_dynamic_hw_opset13");
  auto r = run_cli("transform " + model + " -o " + dir.file("t.onnx"));
  testing::expect_one_line_error(
      r,
      "import: input 'input' [batch, 3, height, width]: expected static dims after the batch, got "
      "dynamic 'height', 'width'; give them with --input-shape (the dims after the batch, e.g. "
      "3,224,224, or NAME=DIMS for each input of several), feed data of that shape (.npy, or an "
      ".npz of every input), or crop an image folder to a size (--crop or --preset)");
  r = run_cli("run " + model + " --input-shape 3,16 --data " + golden("cnn_input.npy"));
  testing::expect_one_line_error(
      r,
      "import: input 'input' [batch, 3, height, width]: expected 3 dims after the batch "
      "agreeing with its static dims, got --input-shape [3, 16]");
  r = run_cli("run " + model + " --input-shape 3,0,4 --data " + golden("cnn_input.npy"));
  testing::expect_one_line_error(r, "--input-shape: expected an integer >= 1, got '0'");
}

// An image folder cropped to one size gives the dynamic height and width: the same outputs as
// --input-shape of that size; uncropped images of several sizes give none, and the error says how.
TEST(OpsetCli, DynamicHeightAndWidthTakeAnImageFolderCrop) {
  TempDir dir;
  const std::string model = model_path("cnn_dynamic_hw_opset13");
  std::filesystem::create_directories(dir.file("images/a"));
  std::vector<unsigned char> pixels(24 * 20 * 3);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<unsigned char>(i * 37 % 251);
  testing::write_png(dir.file("images/a/wide.png"), 24, 20, 3, pixels);
  testing::write_png(dir.file("images/a/tall.png"), 20, 24, 3, pixels);
  const std::string flags = " --data " + dir.file("images") + " --pixel-scale 255 --crop 16,12";
  auto r = run_cli("run " + model + flags + " -o " + dir.file("cropped.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_cli("run " + model + flags + " --input-shape 3,16,12 -o " + dir.file("given.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const kernels::Tensor cropped = io::read_npy(dir.file("cropped.npy"));
  const kernels::Tensor given = io::read_npy(dir.file("given.npy"));
  ASSERT_EQ(cropped.shape(), given.shape());
  EXPECT_EQ(cropped.shape()[0], 2);
  EXPECT_EQ(cropped.to_float_vector(), given.to_float_vector());

  r = run_cli("run " + model + " --data " + dir.file("images") + " --pixel-scale 255");
  testing::expect_one_line_error(
      r,
      "import: input 'input' [batch, 3, height, width]: expected static dims after the batch, got "
      "dynamic 'height', 'width'; give them with --input-shape (the dims after the batch, e.g. "
      "3,224,224, or NAME=DIMS for each input of several), feed data of that shape (.npy, or an "
      ".npz of every input), or crop an image folder to a size (--crop or --preset)");
}

TEST(OpsetCli, OpsetOutsideTheRangeIsNamed) {
  TempDir dir;
  for (int64_t opset : {6, 27}) {
    onnx::ModelProto proto;
    ASSERT_TRUE(proto.ParseFromString(testing::read_text(model_path("cnn_opset13"))));
    proto.mutable_opset_import(0)->set_version(opset);
    std::string name = "m";  // appended, not "m" + …: GCC 12 reports a false -Wrestrict there
    name += std::to_string(opset);
    name += ".onnx";
    const std::string path = dir.file(name);
    testing::write_bytes(path, proto.SerializeAsString());
    const auto r = run_cli("run " + path + " --data " + golden("cnn_input.npy"));
    testing::expect_one_line_error(
        r, "uses opset " + std::to_string(opset) + "; qforge imports opsets 7 to 26");
  }
  // The help says the same.
  const auto help = run_cli("--help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("Models: ONNX opsets 7 to 26 (7 to 12 converted to 13 on import)"),
            std::string::npos)
      << help.out;
}

}  // namespace
}  // namespace qforge
