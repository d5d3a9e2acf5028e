// Text encoders with int64 inputs (data/generate/text_models.py): token ids and an attention
// mask into nn.TransformerEncoderLayers at opset 17 (embeddings as Gathers of the ids, the
// padding masked through Equal, Where and batch × heads rows), the Hugging Face BERT form at
// opset 14 (separate query, key and value projections, an additive mask of float32's lowest,
// token types as a third input, LayerNorm written out, the sequence length dynamic) and RoBERTa's
// (position ids counted over the real tokens with CumSum), and Llama's decoder at opset 14
// (RMSNorm, grouped-query attention, rotary embeddings whose squeezes torch.onnx writes as If
// nodes, a causal mask from torch.triu, a softmax in float32 behind a Cast, left padding),
// GPT-2's (Conv1D's addmm of flattened rows, a causal torch.where before the padding mask is
// added, the tanh GELU written out), CLIP's text encoder (the batch and heads merged around the
// causal mask, the end token pooled with x[arange(B), argmax(ids)]) and T5's encoder (RMSNorms,
// relative position buckets, unscaled scores, a masked mean) and DeBERTa's (disentangled
// attention: scores gathered at log-bucketed relative positions, batch × heads rows), through every
// command: `run` gives PyTorch's logits at any batch; `transform` writes a model free of the batch
// that ONNX Runtime runs as PyTorch; `grad` gives PyTorch's loss and gradients, the embedding
// tables' included; `calibrate` and `qat` read the .npz of the inputs (and its 'labels') and write
// Q/DQ models that ONNX Runtime runs as qforge does (teacher-forced `qforge verify`, no mismatch);
// qat is bit-identical at 1 and 2 threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <ostream>
#include <string>
#include <utility>
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

struct TextModel {
  std::string name;    // data/models/text/<name>.onnx, data/golden/text/<name>_grads.npz
  std::string family;  // data/golden/text/<family>_output.npy
  std::string data;    // data/golden/text/<data>_inputs.npz
  size_t inputs;
  bool separate_qkv;      // query, key and value Linears of their own, packed by the transform
  std::string embedding;  // the token embedding table
  size_t gradients;       // PyTorch's parameters
  size_t attentions = 2;  // SDPA modules, each with its softmax's Q/DQ pair
};

const TextModel kModels[] = {
    {"text_encoder_opset17", "text", "text", 2, false, "tokens.weight", 30},
    {"bert_style_opset14", "bert_style", "bert_style", 3, true, "tokens.weight", 41},
    {"roberta_style_opset14", "roberta_style", "roberta_style", 2, true, "tokens.weight", 41},
    // The decoders read left-padded tokens. Llama's rotary embeddings stand between the
    // projections and the attention, so its query, key and value Linears stay apart; GPT-2 has
    // one Linear for the three.
    {"llama_style_opset14", "llama_style", "llama_style", 2, false, "embed_tokens.weight", 21},
    {"gpt2_style_opset14", "gpt2_style", "llama_style", 2, false, "wte.weight", 29},
    // CLIP's text encoder: one input, its attention split and merged around the causal mask,
    // the end token pooled by x[arange(B), argmax(ids)].
    {"clip_style_opset14", "clip_style", "clip_style", 1, false, "token_embedding.weight", 37},
    // T5's encoder: RMSNorms, relative position buckets (Abs, Log, Min, Where of int64
    // positions) into a learned bias added with the mask, unscaled scores, a masked mean.
    {"t5_style_opset14", "t5_style", "text", 2, true, "shared.weight", 20},
    // DeBERTa's encoder: relative positions log-bucketed (Sign, Abs, Log, Ceil of int64
    // distances) and gathered (GatherElements) from position scores of batch × heads rows.
    // XSoftmax zeroes the masked probabilities again after the softmax, which no attention
    // module computes: the attention stays as written, its MatMuls quantized as such.
    {"deberta_style_opset14", "deberta_style", "text", 2, false, "word_embeddings.weight", 50, 0}};

void PrintTo(const TextModel& m, std::ostream* os) {
  *os << m.name;
}

std::string golden(const std::string& file) {
  return data_path("golden/text/" + file);
}

class TextCli : public ::testing::TestWithParam<TextModel> {
 protected:
  std::string model() const { return data_path("models/text/" + GetParam().name + ".onnx"); }
  std::string inputs() const { return golden(GetParam().data + "_inputs.npz"); }
  std::string logits() const { return golden(GetParam().family + "_output.npy"); }
  // The model inputs of the golden archive, in the model's order.
  std::vector<kernels::Tensor> golden_inputs() const {
    const auto arrays = io::read_npz(inputs());
    std::vector<kernels::Tensor> out = {arrays.at("input_ids")};
    if (GetParam().inputs >= 2) out.push_back(arrays.at("attention_mask"));
    if (GetParam().inputs == 3) out.push_back(arrays.at("token_type_ids"));
    return out;
  }
  void expect_ort_agrees(const std::string& qdq, const std::string& optimization) const;
};

// Every element within 1e-4 · max(1, max |ref|) of PyTorch's logits `reference`.
void expect_matches_pytorch(const kernels::Tensor& got, const std::string& reference) {
  testing::expect_close_scaled(got, io::read_npy(reference), 1e-4, reference);
}

// `qforge verify` of `qdq` against ONNX Runtime's values of its points on the golden inputs,
// with graph optimisations `optimization`: no mismatch.
void TextCli::expect_ort_agrees(const std::string& qdq, const std::string& optimization) const {
  const std::string data_file = inputs();
  TempDir dir;
  const std::string dump = dir.file("ort.npz");
  testing::expect_verified_by_ort(qdq, data_file, dump, optimization);
}

TEST_P(TextCli, RunGivesPyTorchsLogitsAtAnyBatch) {
  const std::string model_file = model(), data_file = inputs();
  TempDir dir;
  for (const char* batch : {"16", "5"}) {  // 5: three batches and a partial one
    SCOPED_TRACE(batch);
    const std::string out = dir.file(std::string("out") + batch + ".npy");
    const auto r =
        run_cli("run " + model_file + " --data " + data_file + " --batch " + batch + " -o " + out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    expect_matches_pytorch(io::read_npy(out), logits());
  }
}

// The embeddings gather with the ids' batch, and the attention mask starts from zeros of
// batch × heads rows: the written model takes any batch, in qforge and in ONNX Runtime.
TEST_P(TextCli, TransformWritesAModelOfAnyBatch) {
  const std::string model_file = model(), data_file = inputs();
  TempDir dir;
  const std::string t = dir.file("t.onnx");
  auto r = run_cli("transform " + model_file + " --data " + data_file + " --batch 4 -o " + t);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("verdict      equivalent"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("symbolic batch 'batch'"), std::string::npos) << r.out;
  const size_t modules = r.out.find("\nmodules ");
  ASSERT_NE(modules, std::string::npos) << r.out;
  const std::string listed = r.out.substr(modules, r.out.find('\n', modules + 1) - modules);
  if (GetParam().attentions > 0) {
    EXPECT_NE(listed.find("SDPA " + std::to_string(GetParam().attentions)), std::string::npos)
        << listed;
  } else {
    EXPECT_EQ(listed.find("SDPA"), std::string::npos) << listed;
  }
  if (GetParam().name == "llama_style_opset14") {  // two RMSNorms a layer and the last one
    EXPECT_NE(r.out.find("RMSNorm 5"), std::string::npos) << r.out;
  }
  if (GetParam().separate_qkv) {  // query, key and value packed into one projection per layer
    EXPECT_NE(r.out.find("MHAInProjection 2"), std::string::npos) << r.out;
  }
  r = run_cli("run " + t + " --data " + data_file + " --batch 16 -o " + dir.file("t.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_matches_pytorch(io::read_npy(dir.file("t.npy")), logits());
  const std::vector<kernels::Tensor> all = golden_inputs();
  expect_matches_pytorch(testing::run_ort(t, all).at(0), logits());
  // Three samples alone give their rows of the whole batch's logits.
  std::vector<kernels::Tensor> three;
  for (const kernels::Tensor& input : all) three.push_back(input.slice_rows(0, 3).clone());
  const kernels::Tensor got = testing::run_ort(t, three).at(0);
  const kernels::Tensor want = io::read_npy(logits()).slice_rows(0, 3).clone();
  ASSERT_EQ(got.shape(), want.shape());
  EXPECT_LE(testing::relative_l2(got, want), 1e-5);
}

// PyTorch's mean cross-entropy and the gradient of every parameter (data/golden/text/
// <model>_grads.npz), as expect_gradients_match holds them, the token embeddings' through the
// Gather included.
TEST_P(TextCli, GradMatchesPyTorch) {
  TempDir dir;
  const auto r = run_cli("grad " + model() + " --data " + inputs() + " --labels " +
                         golden("text_labels.npy") + " -o " + dir.file("grads.npz"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto got = io::read_npz(dir.file("grads.npz"));
  const auto want = io::read_npz(golden(GetParam().name + "_grads.npz"));
  ASSERT_EQ(want.size(), GetParam().gradients + 1);  // the loss and every parameter
  EXPECT_EQ(got.size(), want.size());
  ASSERT_TRUE(want.count(GetParam().embedding));
  testing::expect_gradients_match(got, want);
}

TEST_P(TextCli, CalibratedModelRunsInOrtAsInQforge) {
  const std::string model_file = model(), data_file = inputs();
  TempDir dir;
  const std::string qdq = dir.file("m.qdq.onnx");
  const auto r =
      run_cli("calibrate " + model_file + " --data " + data_file + " --batch 8 -o " + qdq);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The attention's Q/DQ points and its softmax's, as the ViT's.
  EXPECT_NE(r.out.find(std::to_string(GetParam().attentions) + " softmax pairs"), std::string::npos)
      << r.out;
  // The archive's labels give the evaluation a top-1.
  EXPECT_NE(r.out.find("accuracy"), std::string::npos) << r.out;
  expect_ort_agrees(qdq, "disabled");
  expect_ort_agrees(qdq, "all");
}

TEST_P(TextCli, QatTrainsOnTheArchivesLabelsBitIdenticallyAndRunsInOrt) {
  const std::string model_file = model(), data_file = inputs();
  TempDir dir;
  std::string written[2];
  for (int threads = 1; threads <= 2; ++threads) {
    const std::string qdq = dir.file("qat" + std::to_string(threads) + ".onnx");
    const auto r = run_cli("qat " + model_file + " --data " + data_file +
                           " --steps 6 --batch 4 --lr 0.01 --threads " + std::to_string(threads) +
                           " -o " + qdq);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("(cross-entropy)"), std::string::npos) << r.out;
    written[threads - 1] = testing::read_text(qdq);
  }
  EXPECT_EQ(written[0], written[1]);
  expect_ort_agrees(dir.file("qat2.onnx"), "disabled");
}

INSTANTIATE_TEST_SUITE_P(Text, TextCli, ::testing::ValuesIn(kModels),
                         [](const auto& p) { return p.param.name; });

// The BERT form's sequence length is dynamic: the .npz's rows give it (the runs above), or
// --input-shape NAME=DIMS for each input; the errors say so.
TEST(TextData, SeveralInputsTakeTheirDimsFromTheArchive) {
  const std::string bert = data_path("models/text/bert_style_opset14.onnx");
  const auto r = run_cli("plan " + bert + " --input-shape 12");
  testing::expect_one_line_error(
      r, "import: '" + bert +
             "': expected one model input for --input-shape [12], got 3 (give each input's dims "
             "as NAME=D1,D2,..., or feed an .npz of every input)");
  auto e = run_cli("inspect " + bert);
  testing::expect_one_line_error(e,
                                 "expected static dims after the batch, got dynamic "
                                 "'sequence'; give them with --input-shape (the dims after the "
                                 "batch, e.g. 3,224,224, or NAME=DIMS for each input of "
                                 "several), feed data of that shape (.npy, or an .npz of "
                                 "every input)");
  // Each input by name: the plan and the MACs at 12 tokens.
  const auto planned =
      run_cli("plan " + bert + " --input-shape input_ids=12 attention_mask=12 token_type_ids=12");
  EXPECT_EQ(planned.exit_code, 0) << planned.err;
  EXPECT_NE(planned.out.find("ComposeSDPA: applied 2"), std::string::npos) << planned.out;
  // Token ids are no image: the MACs are per sample.
  const auto inspected = run_cli("inspect " + bert +
                                 " --input-shape input_ids=12 attention_mask=12 token_type_ids=12");
  EXPECT_EQ(inspected.exit_code, 0) << inspected.err;
  EXPECT_NE(inspected.out.find(" per sample ("), std::string::npos) << inspected.out;
  e = run_cli("inspect " + bert + " --input-shape input_ids=12 attention_mask=12");
  testing::expect_one_line_error(e,
                                 "import: input 'token_type_ids' [batch, sequence]: expected "
                                 "static dims after the batch, got dynamic 'sequence'");
  e = run_cli("inspect " + bert + " --input-shape ids=12");
  testing::expect_one_line_error(e, "import: '" + bert +
                                        "' has no input 'ids' for --input-shape (its inputs: "
                                        "'input_ids', 'attention_mask', 'token_type_ids')");
  e = run_cli("inspect " + bert + " --input-shape 12 input_ids=12");
  testing::expect_one_line_error(
      e, "--input-shape: '12' names no input; with several, give each as NAME=D1,D2,...");
  e = run_cli("inspect " + bert + " --input-shape input_ids=12 input_ids=12");
  testing::expect_one_line_error(e, "--input-shape: input 'input_ids' is given twice");
  e = run_cli("inspect " + bert + " --input-shape =12");
  testing::expect_one_line_error(e,
                                 "--input-shape: expected NAME=D1,D2,... or D1,D2,..., got '=12'");
  e = run_cli("inspect " + bert + " --input-shape input_ids=12,0");
  testing::expect_one_line_error(e, "--input-shape: expected an integer >= 1, got '0'");
}

// The decoders' pre-norms are SmoothQuant sites: GPT-2's LayerNorms feed its Conv1Ds through
// Reshapes that keep the channels, Llama's written-out RMSNorms compose into RMSNorm modules
// that feed the query, key and value projections and the gated MLP. Four norms of five are
// smoothed in each (the last feeds the head through a Gather), and the Q/DQ models run in ONNX
// Runtime as in qforge.
TEST(TextData, DecodersSmoothTheirPreNorms) {
  const std::string data_file = golden("llama_style_inputs.npz");
  const std::pair<std::string, std::string> models[] = {
      {"gpt2_style_opset14", "-> /h.0/c_attn/Gemm/Linear"},
      {"llama_style_opset14",
       "-> /layers.0/q_proj/MatMul/Linear, /layers.0/k_proj/MatMul/Linear, "
       "/layers.0/v_proj/MatMul/Linear"}};
  for (const auto& [name, consumers] : models) {
    SCOPED_TRACE(name);
    TempDir dir;
    const std::string qdq = dir.file("m.qdq.onnx");
    const auto r = run_cli("calibrate " + data_path("models/text/" + name + ".onnx") + " --data " +
                           data_file + " --smoothquant --batch 8 -o " + qdq);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("4 norms smoothed"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(consumers), std::string::npos) << r.out;
    const std::string dump = dir.file("ort.npz");
    testing::expect_verified_by_ort(qdq, data_file, dump, "all");
  }
}

TEST(TextData, BadLabelsInTheArchiveAreNamed) {
  const std::string model_file = data_path("models/text/text_encoder_opset17.onnx");
  const std::string data_file = golden("text_inputs.npz");
  TempDir dir;
  std::map<std::string, kernels::Tensor> arrays = io::read_npz(data_file);
  arrays["labels"] = kernels::Tensor(kernels::DType::kFloat32, {16});
  const std::string bad = dir.file("bad.npz");
  testing::write_bytes(bad, io::encode_npz(arrays));
  const auto r =
      run_cli("qat " + model_file + " --data " + bad + " --steps 1 -o " + dir.file("q.onnx"));
  testing::expect_one_line_error(r, "data: '" + bad +
                                        "': 'labels' must hold one int64 class label per sample "
                                        "(16), got float32[16]");
  // Without labels and without --distill, qat says where labels come from.
  arrays.erase("labels");
  const std::string unlabelled = dir.file("unlabelled.npz");
  testing::write_bytes(unlabelled, io::encode_npz(arrays));
  const auto u = run_cli("qat " + model_file + " --data " + unlabelled + " --steps 1 -o " +
                         dir.file("q.onnx"));
  testing::expect_one_line_error(u, "an .npz with a 'labels' array");
  // Image augmentation of token ids is refused before any work.
  const auto a = run_cli("qat " + model_file + " --data " + data_file +
                         " --augment flip --steps 1 --batch 4 -o " + dir.file("q.onnx"));
  testing::expect_one_line_error(
      a, "qat: --augment needs one image input [N, C, H, W], the model takes 2 inputs");
  EXPECT_EQ(a.out, "");  // no calibration or progress before it
}

// A model of one int64 input (CLIP's text encoder takes the token ids alone) reads them from a
// plain .npy as it reads them from an .npz: PyTorch's logits. An .npy of another dtype than the
// input's is refused naming the input.
TEST(TextCliNpy, TokenIdsFromAnNpyFeedAModelOfOneInt64Input) {
  TempDir dir;
  const std::string model = data_path("models/text/clip_style_opset14.onnx");
  const kernels::Tensor ids = io::read_npz(golden("clip_style_inputs.npz")).at("input_ids");
  io::write_npy(dir.file("ids.npy"), ids);
  const auto r = run_cli("run " + model + " --data " + dir.file("ids.npy") + " --batch 5 -o " +
                         dir.file("y.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_matches_pytorch(io::read_npy(dir.file("y.npy")), golden("clip_style_output.npy"));

  kernels::Tensor narrow(kernels::DType::kInt32, ids.shape());
  for (int64_t i = 0; i < ids.numel(); ++i) {
    narrow.data<int32_t>()[i] = static_cast<int32_t>(ids.data<int64_t>()[i]);
  }
  io::write_npy(dir.file("ids32.npy"), narrow);
  const auto bad = run_cli("run " + model + " --data " + dir.file("ids32.npy"));
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("holds int32[" + std::to_string(ids.dim(0)) + ", " +
                         std::to_string(ids.dim(1)) + "], model input 'input_ids' takes int64"),
            std::string::npos)
      << bad.err;
}

}  // namespace
}  // namespace qforge
