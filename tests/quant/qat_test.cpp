// Quantization-aware training (`qforge qat`, quant/qat.h, quant/fake_quant_training.h): what is
// trained is what is exported, runs are deterministic across thread counts and across a run
// killed at a checkpoint and resumed, BN freezing switches to running statistics, and bad input
// is refused before any work with one line and no output; --report writes the float, PTQ and
// QAT figures, and --distill-weight 1 trains on the distillation loss alone.
#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "graph/onnx_import.h"
#include "kernels/fake_quant.h"
#include "quant/calibration.h"
#include "quant/fake_quant_training.h"
#include "quant/int8.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "runtime/op_registry.h"
#include "runtime/session.h"
#include "runtime/transform_pipeline.h"
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

const std::string kResnet = data_path("models/resnet_bn.onnx");
const std::string kTrain = data_path("datasets/digits/train");
constexpr int64_t kBatch = 8;

// A short run: 16 calibration samples, batch 8.
std::string qat_args(const std::string& model, const std::string& out, int steps,
                     const std::string& lr = "1e-3", const std::string& optimizer = "adamw") {
  return "qat " + model + " --data " + kTrain + " --calib-limit 16 --batch " +
         std::to_string(kBatch) + " --steps " + std::to_string(steps) + " --lr " + lr +
         " --optimizer " + optimizer + " --freeze-bn-after 3 -o " + out;
}

Tensor val_batch(int64_t rows) {
  const auto model = graph::load_onnx(kResnet);
  io::ImageFolder val(data_path("datasets/digits/val"),
                      io::preprocess_from_metadata(model->metadata, *model->inputs()[0]->shape()));
  return val.load_batch(0, static_cast<size_t>(rows));
}

double relative_l2(const Tensor& a, const Tensor& b) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.data<float>()[i], y = b.data<float>()[i];
    diff += (x - y) * (x - y);
    norm += x * x;
  }
  return std::sqrt(diff / norm);
}

struct Calibrated {
  std::unique_ptr<graph::Graph> fused;
  quant::QuantPlan plan;
  quant::ActivationAmax amax;
};

Calibrated calibrate_resnet(const Tensor& x) {
  runtime::TransformOptions options;
  options.batch = x.dim(0);
  Calibrated c;
  c.fused = std::move(runtime::transform_model(*graph::load_onnx(kResnet), nullptr, options).graph);
  c.plan = quant::place_qdq(*c.fused);
  quant::CalibrationStats stats(*c.fused, c.plan);
  stats.observe_batch(x);
  c.amax = stats.activation_amax(quant::Calibrator::kMax);
  return c;
}

// The weight quantizer of training is bit for bit the export's: WeightFakeQuant (folded by
// resolution, which runs its forward) against the export's folded weight on its scales.
TEST(QatTraining, WeightFakeQuantGivesTheExportedWeights) {
  const Calibrated c = calibrate_resnet(val_batch(kBatch));
  size_t folded = 0;
  for (const quant::WeightPoint& w : c.plan.weights) {
    const graph::Node* node = c.fused->find_node(w.node);
    graph::Graph g;
    std::vector<graph::Value*> inputs = {
        g.add_constant("W", node->input(static_cast<size_t>(w.input))->constant())};
    std::map<std::string, graph::AttributeValue, std::less<>> attributes = {
        {"axis", int64_t{w.axis}}};
    if (w.folds_batch_norm) {
      ++folded;
      const size_t first = static_cast<size_t>(w.input) + 2;
      inputs.push_back(g.add_constant("gamma", node->input(first)->constant()));
      inputs.push_back(g.add_constant("var", node->input(first + 3)->constant()));
      attributes["epsilon"] = node->attr_float("epsilon", 1e-5f);
    }
    graph::Node* q = g.add_node({.name = "q",
                                 .op_type = "WeightFakeQuant",
                                 .inputs = inputs,
                                 .output_names = {"Wq"},
                                 .attributes = attributes});
    const runtime::OpDef* def = runtime::builtin_ops().find("WeightFakeQuant");
    ASSERT_NE(def, nullptr);
    std::vector<runtime::InputInfo> infos;
    std::vector<Tensor> values;
    for (const graph::Value* v : inputs) {
      infos.push_back({true, kernels::DType::kFloat32, v->known_shape(), &v->constant()});
      values.push_back(v->constant());
    }
    const std::vector<runtime::TensorInfo> outs = def->infer(*q, infos);
    std::vector<Tensor> results;
    for (const runtime::TensorInfo& o : outs) results.emplace_back(o.dtype, o.shape);
    def->create(*q, infos, outs)->forward(values, results, nullptr);
    const Tensor got = results[0];

    const Tensor weight = quant::quantized_weight(*c.fused, w);
    std::vector<float> scales;
    for (float a : quant::weight_channel_amax(*c.fused, w)) {
      scales.push_back(quant::scale_from_amax(a));
    }
    Tensor expected(kernels::DType::kFloat32, weight.shape());
    kernels::fake_quant(weight, {scales, w.axis}, expected);
    ASSERT_EQ(got.shape(), expected.shape()) << w.node;
    EXPECT_EQ(0, std::memcmp(got.data<float>(), expected.data<float>(),
                             static_cast<size_t>(got.numel()) * sizeof(float)))
        << w.node;
  }
  EXPECT_GT(folded, 0u);  // resnet_bn keeps its batch norms for the export to fold
}

// With BN frozen (running statistics) the training graph computes what the exported Q/DQ model
// computes; the training forward then leaves the running statistics as they are and gives the
// same bits each time.
TEST(QatTraining, FrozenBatchNormTrainingForwardIsTheExportedModel) {
  const Tensor x = val_batch(kBatch);
  Calibrated c = calibrate_resnet(x);
  auto training = quant::fake_quant_training(*c.fused, c.plan, c.amax);
  training->freeze_batch_norm();
  const Tensor first = training->forward(x).clone();
  Tensor labels(kernels::DType::kInt64, {kBatch});
  for (int64_t i = 0; i < kBatch; ++i) labels.data<int64_t>()[i] = i % 10;
  std::vector<Tensor> state_before;
  for (const runtime::Parameter& p : training->executor().parameters()) {
    if (!p.trainable()) state_before.push_back(p.value.clone());
  }
  ASSERT_FALSE(state_before.empty());
  training->forward_backward(x, labels);
  size_t k = 0;
  for (const runtime::Parameter& p : training->executor().parameters()) {
    if (p.trainable()) continue;
    EXPECT_EQ(0, std::memcmp(p.value.data<float>(), state_before[k++].data<float>(),
                             static_cast<size_t>(p.value.numel()) * sizeof(float)))
        << p.name << " changed with BN frozen";
  }
  const Tensor again = training->forward(x);
  EXPECT_EQ(0, std::memcmp(first.data<float>(), again.data<float>(),
                           static_cast<size_t>(first.numel()) * sizeof(float)));

  runtime::Session exported(quant::build_qdq_graph(*c.fused, c.plan, c.amax));
  const Tensor y = exported.run(x)[0];
  ASSERT_EQ(y.shape(), first.shape());
  // The same integers up to rounding flips: the training graph divides the convolution by the
  // fold factor and lets the BN multiply it back, where the export adds a folded bias; a value
  // at a .5 boundary may round the other way, which moves an output by ~1e-3 relative L2.
  EXPECT_LE(relative_l2(y, first), 1e-2);
  for (int64_t row = 0; row < kBatch; ++row) {
    const float* a = y.data<float>() + row * 10;
    const float* b = first.data<float>() + row * 10;
    EXPECT_EQ(std::max_element(a, a + 10) - a, std::max_element(b, b + 10) - b) << row;
  }
}

// --threads 1 and 2 write the same bytes, and the written model runs in ONNX Runtime as in
// `qforge run` (point by point, teacher-forced: no integer differs beyond a rounding flip).
TEST(QatCli, ThreadCountsWriteTheSameBytesAndOrtRunsTheModelAsQforge) {
  TempDir dir;
  const auto one = run_cli(qat_args(kResnet, dir.file("t1.onnx"), 4) + " --threads 1");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const auto two = run_cli(qat_args(kResnet, dir.file("t2.onnx"), 4) + " --threads 2");
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_EQ(testing::read_text(dir.file("t1.onnx")), testing::read_text(dir.file("t2.onnx")));
  EXPECT_NE(one.out.find("training     4 steps of 8"), std::string::npos) << one.out;

  const std::string out = dir.file("t1.onnx");
  io::write_npy(dir.file("x.npy"), val_batch(kBatch));
  const auto run =
      run_cli("run " + out + " --data " + dir.file("x.npy") + " -o " + dir.file("y.npy"));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const Tensor ours = io::read_npy(dir.file("y.npy"));
  const std::vector<Tensor> ort = testing::run_ort(out, {io::read_npy(dir.file("x.npy"))});
  ASSERT_EQ(ort.size(), 1u);
  EXPECT_LE(relative_l2(ort[0], ours), 1e-2);
  testing::ort_dump(out, dir.file("x.npy"), dir.file("ort.npz"), "disabled");
  const auto verify = run_cli("verify " + out + " --reference " + dir.file("ort.npz") + " --data " +
                              dir.file("x.npy"));
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
}

// A run killed with SIGKILL once its first checkpoint exists, resumed from that checkpoint,
// writes the bytes of the uninterrupted run (BN freezing at step 3 included).
TEST(QatCli, RunKilledAtACheckpointAndResumedWritesTheUninterruptedModel) {
  TempDir dir;
  const auto whole = run_cli(qat_args(kResnet, dir.file("whole.onnx"), 6));
  ASSERT_EQ(whole.exit_code, 0) << whole.err;

  const std::string ck = dir.file("run.ckpt.npz");
  {
    TempDir logs;
    testing::CliProcess p(qat_args(kResnet, dir.file("killed.onnx"), 6) + " --checkpoint " + ck +
                              " --checkpoint-every 2",
                          logs, dir.path().string());
    for (int i = 0; i < 6000 && !std::filesystem::exists(ck); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    p.signal(SIGKILL);
    p.wait();
  }
  ASSERT_TRUE(std::filesystem::exists(ck));
  const auto resumed = run_cli(qat_args(kResnet, dir.file("resumed.onnx"), 6) + " --resume " + ck);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("resumed at step"), std::string::npos) << resumed.out;
  EXPECT_EQ(testing::read_text(dir.file("whole.onnx")),
            testing::read_text(dir.file("resumed.onnx")));
}

// The "loss" of every line of a --log file.
std::vector<double> logged_losses(const std::string& path) {
  std::vector<double> losses;
  std::istringstream lines(testing::read_text(path));
  for (std::string line; std::getline(lines, line);) {
    losses.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  }
  return losses;
}

// --report: the calibration and training summaries and, on --val, the float, PTQ and QAT
// figures, agreeing with the printout and the log.
TEST(QatCli, ReportHoldsTheCalibrationTrainingAndEvaluationFigures) {
  TempDir dir;
  const std::string val = data_path("datasets/digits/val");
  const auto r = run_cli(qat_args(kResnet, dir.file("m.onnx"), 3) + " --val " + val + " --report " +
                         dir.file("r.json") + " --log " + dir.file("log.jsonl"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("KL to float"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(testing::read_text(dir.file("r.json")));
  EXPECT_EQ(j["calibration"]["method"], "mse");
  EXPECT_EQ(j["calibration"]["samples"], 16);
  EXPECT_EQ(j["calibration"]["per_tensor_weights"], false);
  const auto& t = j["training"];
  EXPECT_EQ(t["steps"], 3);
  EXPECT_EQ(t["loss"], "cross-entropy");
  EXPECT_EQ(t["labels"], true);
  EXPECT_GT(t["seconds"].get<double>(), 0.0);
  const std::vector<double> losses = logged_losses(dir.file("log.jsonl"));
  ASSERT_EQ(losses.size(), 3u);
  EXPECT_EQ(t["final_loss"].get<double>(), losses.back());

  const auto& e = j["evaluation"];
  EXPECT_EQ(e["samples"], 360);
  ASSERT_TRUE(e["float"]["top1"].is_number() && e["float"]["cross_entropy"].is_number()) << e;
  EXPECT_GT(e["float"]["cross_entropy"].get<double>(), 0.0);
  for (const char* model : {"ptq", "qat"}) {
    for (const char* key :
         {"top1", "cross_entropy", "kl_to_float", "sqnr_db", "cosine", "top1_agreement"}) {
      EXPECT_TRUE(e[model][key].is_number()) << model << " " << key << ": " << e;
    }
    EXPECT_GT(e[model]["kl_to_float"].get<double>(), 0.0) << model;
    EXPECT_LT(e[model]["kl_to_float"].get<double>(), 1.0) << model;
  }
  // The accuracy line shows the report's top-1 figures.
  char accuracy[128];
  std::snprintf(accuracy, sizeof accuracy, "accuracy     float %.2f%%, PTQ %.2f%%, QAT %.2f%%",
                100 * e["float"]["top1"].get<double>(), 100 * e["ptq"]["top1"].get<double>(),
                100 * e["qat"]["top1"].get<double>());
  EXPECT_NE(r.out.find(accuracy), std::string::npos) << accuracy << "\n" << r.out;
}

// --distill --distill-weight 1 on a labelled folder trains on the KL to the float model alone:
// it logs the losses and writes the bytes of the same run on the same images given as an
// unlabelled .npy, where no labels exist; the default weight (half cross-entropy) differs.
TEST(QatCli, DistillWeightOneTrainsWithoutTheLabels) {
  TempDir dir;
  const std::string val = data_path("datasets/digits/val");
  io::write_npy(dir.file("val.npy"), val_batch(360));
  auto run = [&](const std::string& data, const std::string& name, const std::string& extra) {
    const auto r = run_cli("qat " + kResnet + " --data " + data +
                           " --calib-limit 16 --batch 8 --steps 3 --lr 1e-3 --optimizer adamw "
                           "--distill -o " +
                           dir.file(name + ".onnx") + " --log " + dir.file(name + ".jsonl") +
                           " --report " + dir.file(name + ".json") + extra);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r;
  };
  const auto folder = run(val, "folder", " --distill-weight 1");
  EXPECT_NE(folder.out.find("(distillation)"), std::string::npos) << folder.out;
  run(dir.file("val.npy"), "npy", "");
  run(val, "mixed", "");
  const auto report = nlohmann::json::parse(testing::read_text(dir.file("folder.json")));
  EXPECT_EQ(report["training"]["labels"], false);
  EXPECT_EQ(report["training"]["loss"], "distillation");
  const std::vector<double> kl_only = logged_losses(dir.file("folder.jsonl"));
  ASSERT_EQ(kl_only.size(), 3u);
  EXPECT_EQ(kl_only, logged_losses(dir.file("npy.jsonl")));
  EXPECT_TRUE(testing::read_text(dir.file("folder.onnx")) ==
              testing::read_text(dir.file("npy.onnx")));
  EXPECT_NE(kl_only, logged_losses(dir.file("mixed.jsonl")));
}

void expect_refused(const std::string& args, const std::string& message,
                    const std::string& output) {
  const auto r = run_cli(args);
  EXPECT_NE(r.exit_code, 0) << args;
  testing::expect_one_line_error(r, message);
  EXPECT_FALSE(std::filesystem::exists(output)) << args;
}

TEST(QatCli, BadInputIsRefusedWithOneLineAndNoOutput) {
  TempDir dir;
  const std::string out = dir.file("m.onnx");
  expect_refused(qat_args(kResnet, out, 2, "0"), "--lr must be finite and > 0", out);
  expect_refused("qat " + kResnet + " --data " + kTrain + " --epochs 0 -o " + out,
                 "give one of --epochs N or --steps N", out);
  io::write_npy(dir.file("x.npy"), val_batch(kBatch));
  expect_refused("qat " + kResnet + " --data " + dir.file("x.npy") + " --steps 2 -o " + out,
                 "has no labels", out);
  expect_refused(qat_args(kResnet, out, 2, "1e-3", "adam"), "unknown --optimizer", out);

  // Checkpoints: another model's, one with other options, a truncated one.
  const std::string ck = dir.file("ck.npz");
  const auto mobile =
      run_cli(qat_args(data_path("models/mobilenet_v3_bn.onnx"), dir.file("mb"), 2) +
              " --checkpoint " + ck + " --checkpoint-every 2");
  ASSERT_EQ(mobile.exit_code, 0) << mobile.err;
  expect_refused(qat_args(kResnet, out, 2) + " --resume " + ck, "for another model", out);
  expect_refused(
      qat_args(data_path("models/mobilenet_v3_bn.onnx"), out, 2) + " --seed 7 --resume " + ck,
      "other training options", out);
  const std::string bytes = testing::read_text(ck);
  testing::write_bytes(dir.file("cut.npz"), bytes.substr(0, bytes.size() / 2));
  expect_refused(qat_args(kResnet, out, 2) + " --resume " + dir.file("cut.npz"),
                 "not a readable checkpoint", out);
}

}  // namespace
}  // namespace qforge
