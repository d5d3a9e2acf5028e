// A text encoder with two int64 inputs, token ids and an attention mask (data/generate/
// text_models.py: embeddings as Gathers of the ids, two post-norm encoder layers whose attention
// masks the padding, a linear head on the first token), through every command: `run` gives
// PyTorch's logits at any batch; `transform` writes a model free of the batch (the mask's
// batch × heads rows included) that ONNX Runtime runs as PyTorch; `grad` gives PyTorch's loss
// and gradients, the embedding table's included; `calibrate` and `qat` read the .npz of both
// inputs (and its 'labels') and write Q/DQ models that ONNX Runtime runs as qforge does
// (teacher-forced `qforge verify`, no mismatch); qat is bit-identical at 1 and 2 threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
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

const std::string kModel = data_path("models/text/text_encoder_opset17.onnx");
const std::string kInputs = data_path("golden/text/text_inputs.npz");

std::string golden(const std::string& file) {
  return data_path("golden/text/" + file);
}

// Every element within 1e-4 · max(1, max |ref|) of PyTorch's logits.
void expect_matches_pytorch(const kernels::Tensor& got) {
  const kernels::Tensor want = io::read_npy(golden("text_output.npy"));
  ASSERT_EQ(got.shape(), want.shape());
  const std::vector<float> g = got.to_float_vector();
  const std::vector<float> w = want.to_float_vector();
  float peak = 1;
  for (float v : w) peak = std::max(peak, std::abs(v));
  for (size_t i = 0; i < g.size(); ++i) {
    EXPECT_LE(std::abs(g[i] - w[i]), 1e-4f * peak) << "element " << i;
  }
}

// The two model inputs of the golden archive, in the model's order.
std::vector<kernels::Tensor> golden_inputs() {
  const auto arrays = io::read_npz(kInputs);
  return {arrays.at("input_ids"), arrays.at("attention_mask")};
}

// `qforge verify` of `qdq` against ONNX Runtime's values of its points on the golden inputs,
// with graph optimisations `optimization`: no mismatch.
void expect_ort_agrees(const std::string& qdq, const std::string& optimization) {
  TempDir dir;
  const std::string dump = dir.file("ort.npz");
  testing::ort_dump(qdq, kInputs, dump, optimization);
  const auto verified =
      run_cli("verify " + qdq + " --reference " + dump + " --data " + kInputs + " --tolerance 1e-4");
  EXPECT_EQ(verified.exit_code, 0) << verified.out << verified.err;
  EXPECT_NE(verified.out.find("verdict      pass: no mismatch"), std::string::npos) << verified.out;
}

TEST(TextCli, RunGivesPyTorchsLogitsAtAnyBatch) {
  TempDir dir;
  for (const char* batch : {"16", "5"}) {  // 5: three batches and a partial one
    SCOPED_TRACE(batch);
    const std::string out = dir.file(std::string("out") + batch + ".npy");
    const auto r =
        run_cli("run " + kModel + " --data " + kInputs + " --batch " + batch + " -o " + out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    expect_matches_pytorch(io::read_npy(out));
  }
}

// The embeddings gather with the ids' batch, and the attention mask starts from zeros of
// batch × heads rows: the written model takes any batch, in qforge and in ONNX Runtime.
TEST(TextCli, TransformWritesAModelOfAnyBatch) {
  TempDir dir;
  const std::string t = dir.file("t.onnx");
  auto r = run_cli("transform " + kModel + " --data " + kInputs + " --batch 4 -o " + t);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("verdict      equivalent"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("symbolic batch 'batch'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("SDPA 2"), std::string::npos) << r.out;
  r = run_cli("run " + t + " --data " + kInputs + " --batch 16 -o " + dir.file("t.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_matches_pytorch(io::read_npy(dir.file("t.npy")));
  const std::vector<kernels::Tensor> inputs = golden_inputs();
  expect_matches_pytorch(testing::run_ort(t, inputs).at(0));
  // Three samples alone give their rows of the whole batch's logits.
  const std::vector<kernels::Tensor> three = {inputs[0].slice_rows(0, 3).clone(),
                                              inputs[1].slice_rows(0, 3).clone()};
  const kernels::Tensor got = testing::run_ort(t, three).at(0);
  const kernels::Tensor want = io::read_npy(golden("text_output.npy")).slice_rows(0, 3).clone();
  ASSERT_EQ(got.shape(), want.shape());
  EXPECT_LE(testing::relative_l2(got, want), 1e-5);
}

// PyTorch's mean cross-entropy and the gradient of every parameter (data/golden/text/
// text_encoder_opset17_grads.npz): loss within 1e-5 relative, each gradient within 1e-4
// relative L2, the token embeddings' through the Gather included.
TEST(TextCli, GradMatchesPyTorch) {
  TempDir dir;
  const auto r = run_cli("grad " + kModel + " --data " + kInputs + " --labels " +
                         golden("text_labels.npy") + " -o " + dir.file("grads.npz"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto got = io::read_npz(dir.file("grads.npz"));
  const auto want = io::read_npz(golden("text_encoder_opset17_grads.npz"));
  ASSERT_EQ(want.size(), 31u);  // the loss and 30 parameters
  EXPECT_EQ(got.size(), want.size());
  ASSERT_TRUE(want.count("tokens.weight"));
  for (const auto& [name, reference] : want) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.count(name));
    const kernels::Tensor& g = got.at(name);
    ASSERT_EQ(g.shape(), reference.shape());
    if (name == "loss") {
      const float l = reference.data<float>()[0];
      EXPECT_LE(std::abs(g.data<float>()[0] - l), 1e-5f * std::abs(l));
      continue;
    }
    EXPECT_LE(testing::relative_l2(g, reference), 1e-4);
  }
}

TEST(TextCli, CalibratedModelRunsInOrtAsInQforge) {
  TempDir dir;
  const std::string qdq = dir.file("m.qdq.onnx");
  const auto r = run_cli("calibrate " + kModel + " --data " + kInputs + " --batch 8 -o " + qdq);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The attention's Q/DQ points and its softmax's, as the ViT's.
  EXPECT_NE(r.out.find("2 softmax pairs"), std::string::npos) << r.out;
  // The archive's labels give the evaluation a top-1.
  EXPECT_NE(r.out.find("accuracy"), std::string::npos) << r.out;
  expect_ort_agrees(qdq, "disabled");
  expect_ort_agrees(qdq, "all");
}

TEST(TextCli, QatTrainsOnTheArchivesLabelsBitIdenticallyAndRunsInOrt) {
  TempDir dir;
  std::string written[2];
  for (int threads = 1; threads <= 2; ++threads) {
    const std::string qdq = dir.file("qat" + std::to_string(threads) + ".onnx");
    const auto r = run_cli("qat " + kModel + " --data " + kInputs +
                           " --steps 6 --batch 4 --lr 0.01 --threads " +
                           std::to_string(threads) + " -o " + qdq);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("(cross-entropy)"), std::string::npos) << r.out;
    written[threads - 1] = testing::read_text(qdq);
  }
  EXPECT_EQ(written[0], written[1]);
  expect_ort_agrees(dir.file("qat2.onnx"), "disabled");
}

TEST(TextCli, BadLabelsInTheArchiveAreNamed) {
  TempDir dir;
  std::map<std::string, kernels::Tensor> arrays = io::read_npz(kInputs);
  arrays["labels"] = kernels::Tensor(kernels::DType::kFloat32, {16});
  const std::string bad = dir.file("bad.npz");
  testing::write_bytes(bad, io::encode_npz(arrays));
  const auto r = run_cli("qat " + kModel + " --data " + bad + " --steps 1 -o " + dir.file("q.onnx"));
  testing::expect_one_line_error(r, "data: '" + bad +
                                        "': 'labels' must hold one int64 class label per sample "
                                        "(16), got float32[16]");
  // Without labels and without --distill, qat says where labels come from.
  arrays.erase("labels");
  const std::string unlabelled = dir.file("unlabelled.npz");
  testing::write_bytes(unlabelled, io::encode_npz(arrays));
  const auto u =
      run_cli("qat " + kModel + " --data " + unlabelled + " --steps 1 -o " + dir.file("q.onnx"));
  testing::expect_one_line_error(u, "an .npz with a 'labels' array");
}

}  // namespace
}  // namespace qforge
