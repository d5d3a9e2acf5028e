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
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "kernels/fake_quant.h"
#include "quant/calibration.h"
#include "quant/fake_quant_training.h"
#include "quant/int8.h"
#include "quant/optimizer.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "quant/verify.h"
#include "runtime/op_registry.h"
#include "runtime/session.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/float_checks.h"
#include "tests/support/ort_runner.h"
#include "tests/support/test_support.h"
#include "tools/io/image_folder.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using kernels::Tensor;
using testing::CliResult;
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

// `base` (a qat command without -o) stopped after `steps` steps with a checkpoint, then resumed
// from it: both runs, each checked to succeed; the resumed run writes dir/resumed.onnx, the
// stopped one nothing.
struct StoppedAndResumed {
  CliResult first;
  CliResult resumed;
};
StoppedAndResumed stop_and_resume(const std::string& base, int steps, const TempDir& dir) {
  const std::string ck = dir.file("ck.npz");
  StoppedAndResumed r;
  r.first = run_cli(base + " --stop-after " + std::to_string(steps) + " --checkpoint " + ck +
                    " -o " + dir.file("unused.onnx"));
  EXPECT_EQ(r.first.exit_code, 0) << r.first.err;
  EXPECT_FALSE(std::filesystem::exists(dir.file("unused.onnx")));
  r.resumed = run_cli(base + " --resume " + ck + " -o " + dir.file("resumed.onnx"));
  EXPECT_EQ(r.resumed.exit_code, 0) << r.resumed.err;
  return r;
}

Tensor val_batch(int64_t rows) {
  const auto model = graph::load_onnx(kResnet);
  io::ImageFolder val(data_path("datasets/digits/val"),
                      io::preprocess_from_metadata(model->metadata, *model->inputs()[0]->shape()));
  return val.load_batch(0, static_cast<size_t>(rows));
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
    testing::expect_same_bits(got.data<float>(), expected.data<float>(),
                              static_cast<size_t>(got.numel()), w.node);
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
    testing::expect_same_bits(p.value.data<float>(), state_before[k++].data<float>(),
                              static_cast<size_t>(p.value.numel()),
                              p.name + " changed with BN frozen");
  }
  const Tensor again = training->forward(x);
  testing::expect_same_bits(first.data<float>(), again.data<float>(),
                            static_cast<size_t>(first.numel()), "a second forward");

  runtime::Session exported(quant::build_qdq_graph(*c.fused, c.plan, c.amax));
  const Tensor y = exported.run(x)[0];
  ASSERT_EQ(y.shape(), first.shape());
  // The same integers up to rounding flips: the training graph divides the convolution by the
  // fold factor and lets the BN multiply it back, where the export adds a folded bias; a value
  // at a .5 boundary may round the other way, which moves an output by ~1e-3 relative L2.
  EXPECT_LE(testing::relative_l2(first, y), 1e-2);
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
  EXPECT_LE(testing::relative_l2(ours, ort[0]), 1e-2);
  testing::ort_dump(out, dir.file("x.npy"), dir.file("ort.npz"), "disabled");
  const auto verify = run_cli("verify " + out + " --reference " + dir.file("ort.npz") + " --data " +
                              dir.file("x.npy"));
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
}

// A run killed with SIGKILL once its first checkpoint exists, resumed from that checkpoint,
// writes the bytes of the uninterrupted run (BN freezing at step 3 included).
TEST(QatCli, RunKilledAtACheckpointAndResumedWritesTheUninterruptedModel) {
  TempDir dir;
  const auto whole = run_cli(qat_args(kResnet, dir.file("whole.onnx"), 30));
  ASSERT_EQ(whole.exit_code, 0) << whole.err;

  const std::string ck = dir.file("run.ckpt.npz");
  {
    TempDir logs;
    testing::CliProcess p(qat_args(kResnet, dir.file("killed.onnx"), 30) + " --checkpoint " + ck +
                              " --checkpoint-every 2",
                          logs, dir.path().string());
    for (int i = 0; i < 6000 && !std::filesystem::exists(ck); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    p.signal(SIGKILL);
    p.wait();
  }
  ASSERT_TRUE(std::filesystem::exists(ck));
  EXPECT_FALSE(std::filesystem::exists(dir.file("killed.onnx")));  // killed before the end
  const auto resumed = run_cli(qat_args(kResnet, dir.file("resumed.onnx"), 30) + " --resume " + ck);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("resumed at step"), std::string::npos) << resumed.out;
  EXPECT_EQ(testing::read_text(dir.file("whole.onnx")),
            testing::read_text(dir.file("resumed.onnx")));
}

// --learn-scales: the activation scales move (LSQ), the export writes the learned ones, and a
// run resumed from a checkpoint (scales and their optimizer state included) writes the
// uninterrupted run's bytes.
TEST(QatCli, LearnedScalesAreExportedAndResumeExactly) {
  TempDir dir;
  const std::string args = qat_args(kResnet, "", 4);
  const std::string base = args.substr(0, args.find(" -o ")) + " --learn-scales --scale-lr 0.5";
  const auto whole = run_cli(base + " -o " + dir.file("whole.onnx"));
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  EXPECT_NE(whole.out.find("scales       "), std::string::npos) << whole.out;
  const auto ptq = run_cli("calibrate " + kResnet + " --data " + kTrain +
                           " --limit 16 --batch 8 --flip-injections 0 -o " + dir.file("ptq.onnx"));
  ASSERT_EQ(ptq.exit_code, 0) << ptq.err;
  // Activation scales are the scalar scale inputs of QuantizeLinear nodes reading no constant.
  auto activation_scales = [](const std::string& path) {
    std::map<std::string, float> out;
    const auto g = graph::load_onnx(path);
    for (const graph::Node* n : g->nodes()) {
      if (n->op_type() != "QuantizeLinear" || n->input(0)->is_constant()) continue;
      out[n->input(0)->name()] = n->input(1)->constant().data<float>()[0];
    }
    return out;
  };
  const auto learned = activation_scales(dir.file("whole.onnx"));
  const auto calibrated = activation_scales(dir.file("ptq.onnx"));
  ASSERT_EQ(learned.size(), calibrated.size());
  size_t moved = 0;
  for (const auto& [tensor, scale] : learned) moved += scale != calibrated.at(tensor);
  EXPECT_GT(moved, 0u);

  const auto [first, resumed] = stop_and_resume(base, 2, dir);
  EXPECT_NE(first.out.find("stopped      after step 2 of 4"), std::string::npos) << first.out;
  EXPECT_EQ(testing::read_text(dir.file("whole.onnx")),
            testing::read_text(dir.file("resumed.onnx")));
}

// --augment flip,crop changes what is trained, and is drawn from the seed and the step: a run
// stopped half-way and resumed writes the uninterrupted run's bytes.
TEST(QatCli, AugmentationIsSeededAndResumesExactly) {
  TempDir dir;
  const std::string plain_args = qat_args(kResnet, "", 4);
  const std::string base = plain_args.substr(0, plain_args.find(" -o ")) + " --augment flip,crop";
  const auto plain = run_cli(plain_args + dir.file("plain.onnx"));
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  const auto whole = run_cli(base + " -o " + dir.file("whole.onnx"));
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  EXPECT_NE(testing::read_text(dir.file("plain.onnx")), testing::read_text(dir.file("whole.onnx")));
  stop_and_resume(base, 2, dir);
  EXPECT_EQ(testing::read_text(dir.file("whole.onnx")),
            testing::read_text(dir.file("resumed.onnx")));
}

// A run of several epochs keeps its samples and, distilling without augmentation, the float
// model's outputs after the first epoch; a run resumed in its third epoch, with nothing kept,
// writes the uninterrupted run's bytes: what is kept is what would be computed again.
TEST(QatCli, LaterEpochsReadWhatTheFirstKeptAndComputeTheSame) {
  TempDir dir;
  io::write_npy(dir.file("train.npy"), val_batch(24));
  const std::string base = "qat " + kResnet + " --data " + dir.file("train.npy") +
                           " --calib-limit 16 --batch 8 --epochs 3 --lr 1e-3 --optimizer adamw "
                           "--distill 2";
  const auto whole =
      run_cli(base + " -o " + dir.file("whole.onnx") + " --report " + dir.file("whole.json"));
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  EXPECT_NE(whole.out.find("memory       epochs after the first read the samples and the float "
                           "model's outputs from memory"),
            std::string::npos)
      << whole.out;
  const auto report = nlohmann::json::parse(testing::read_text(dir.file("whole.json")));
  EXPECT_EQ(report["training"]["kept_sample_bytes"], 24 * 3 * 32 * 32 * 4);
  EXPECT_EQ(report["training"]["kept_teacher_bytes"], 24 * 10 * 4);
  const CliResult resumed = stop_and_resume(base, 6, dir).resumed;
  EXPECT_NE(resumed.out.find("resumed at step 6"), std::string::npos) << resumed.out;
  EXPECT_TRUE(testing::read_text(dir.file("whole.onnx")) ==
              testing::read_text(dir.file("resumed.onnx")));
  // Augmented batches differ from epoch to epoch: the samples are kept, the outputs are not.
  const auto augmented = run_cli(base + " --augment flip -o " + dir.file("augmented.onnx"));
  ASSERT_EQ(augmented.exit_code, 0) << augmented.err;
  EXPECT_NE(augmented.out.find("memory       epochs after the first read the samples from memory"),
            std::string::npos)
      << augmented.out;
  // One epoch keeps nothing.
  const auto one =
      run_cli("qat " + kResnet + " --data " + dir.file("train.npy") +
              " --calib-limit 16 --batch 8 --epochs 1 --distill 2 -o " + dir.file("one.onnx"));
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(one.out.find("memory       "), std::string::npos) << one.out;
}

// A dense model (the detector with NMS, its boxes and class scores distilled) keeps every float
// output of the float model after the first epoch, and computes what it would compute again.
TEST(QatCli, DenseModelsKeepEveryOutputAfterTheFirstEpoch) {
  TempDir dir;
  io::write_npy(dir.file("train.npy"), val_batch(24));
  const std::string base = "qat " + testing::data_path("models/yolo_nms.onnx") + " --data " +
                           dir.file("train.npy") +
                           " --calib-limit 16 --batch 8 --epochs 3 --distill --distill-weight 1";
  const auto whole =
      run_cli(base + " -o " + dir.file("whole.onnx") + " --report " + dir.file("whole.json"));
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  EXPECT_NE(whole.out.find("memory       epochs after the first read the samples and the float "
                           "model's outputs from memory"),
            std::string::npos)
      << whole.out;
  const auto report = nlohmann::json::parse(testing::read_text(dir.file("whole.json")));
  // boxes [64, 4] and class scores [10, 64] of each of the 24 samples.
  EXPECT_EQ(report["training"]["kept_teacher_bytes"], 24 * (64 * 4 + 10 * 64) * 4);
  const CliResult resumed = stop_and_resume(base, 6, dir).resumed;
  EXPECT_NE(resumed.out.find("resumed at step 6"), std::string::npos) << resumed.out;
  EXPECT_TRUE(testing::read_text(dir.file("whole.onnx")) ==
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
  EXPECT_EQ(t["label_smoothing"], 0.0);
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

// --label-smoothing: the printout and the report say it, and it trains on another loss. The
// bundled model was trained smoothed, so its outputs are confident but not one-hot: the smoothed
// target's ε/classes on the other classes costs more than it saves on the label, and the first
// step's loss (same weights, same batch) is higher than the plain cross-entropy's.
TEST(QatCli, LabelSmoothingIsReportedAndTrainsOnTheSmoothedLoss) {
  TempDir dir;
  auto run = [&](const std::string& name, const std::string& extra) {
    const auto r =
        run_cli(qat_args(kResnet, dir.file(name + ".onnx"), 2) + " --log " +
                dir.file(name + ".jsonl") + " --report " + dir.file(name + ".json") + extra);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r;
  };
  run("plain", "");
  const auto smoothed = run("smoothed", " --label-smoothing 0.1");
  EXPECT_NE(smoothed.out.find("(cross-entropy, labels smoothed by 0.1)"), std::string::npos)
      << smoothed.out;
  const auto report = nlohmann::json::parse(testing::read_text(dir.file("smoothed.json")));
  EXPECT_FLOAT_EQ(report["training"]["label_smoothing"].get<float>(), 0.1f);
  const std::vector<double> plain = logged_losses(dir.file("plain.jsonl"));
  const std::vector<double> with = logged_losses(dir.file("smoothed.jsonl"));
  ASSERT_EQ(plain.size(), 2u);
  ASSERT_EQ(with.size(), 2u);
  EXPECT_GT(with[0], plain[0]);
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

// --smoothquant: qat smooths and calibrates the model as `calibrate --smoothquant` does, so its
// PTQ figures are calibrate's on the same data, and training starts from the smoothed model; the
// same run without it starts from another model.
TEST(QatCli, SmoothQuantTrainsFromTheModelCalibrateSmooths) {
  TempDir dir;
  const std::string vit = data_path("models/vit_bn.onnx");
  io::write_npy(dir.file("val.npy"), val_batch(24));
  const std::string val = " --val " + dir.file("val.npy");
  const auto calibrated =
      run_cli("calibrate " + vit + " --data " + kTrain +
              " --limit 16 --batch 8 --smoothquant 0.5 --flip-injections 0" + val + " -o " +
              dir.file("ptq.onnx") + " --report " + dir.file("calibrate.json"));
  ASSERT_EQ(calibrated.exit_code, 0) << calibrated.err;
  auto qat = [&](const std::string& name, const std::string& extra) {
    const auto r = run_cli(qat_args(vit, dir.file(name + ".onnx"), 2) + val + " --report " +
                           dir.file(name + ".json") + extra);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return std::pair(r, nlohmann::json::parse(testing::read_text(dir.file(name + ".json"))));
  };
  const auto [smoothed_run, smoothed] = qat("smoothed", " --smoothquant 0.5");
  EXPECT_NE(smoothed_run.out.find("smoothquant  alpha 0.5: "), std::string::npos)
      << smoothed_run.out;
  const auto [plain_run, plain] = qat("plain", "");
  EXPECT_EQ(plain_run.out.find("smoothquant"), std::string::npos) << plain_run.out;
  const auto c = nlohmann::json::parse(testing::read_text(dir.file("calibrate.json")));
  const auto& ptq = smoothed["evaluation"]["ptq"];
  ASSERT_TRUE(ptq["sqnr_db"].is_number() && ptq["kl_to_float"].is_number()) << ptq;
  EXPECT_EQ(ptq["sqnr_db"], c["evaluation"]["sqnr_db"]);
  EXPECT_EQ(ptq["kl_to_float"], c["evaluation"]["kl_to_float"]);
  EXPECT_NE(plain["evaluation"]["ptq"]["sqnr_db"], ptq["sqnr_db"]);
  EXPECT_NE(testing::read_text(dir.file("smoothed.onnx")),
            testing::read_text(dir.file("plain.onnx")));
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
  expect_refused(qat_args(kResnet, out, 2) + " --augment blur", "unknown --augment 'blur'", out);
  expect_refused(qat_args(kResnet, out, 2) + " --label-smoothing 1",
                 "--label-smoothing must be in [0, 1), got 1", out);
  expect_refused(qat_args(kResnet, out, 2) + " --label-smoothing 0.1 --distill --distill-weight 1",
                 "--label-smoothing smooths the labels' cross-entropy, and this run has no labels",
                 out);
  expect_refused(qat_args(kResnet, out, 2) + " --checkpoint " + kResnet, "--checkpoint", out);
  expect_refused(qat_args(kResnet, out, 2) + " --stop-after 1", "--stop-after needs --checkpoint",
                 out);

  // Divergence stops the run naming the step and the tensor; the last checkpoint stays.
  const std::string kept = dir.file("kept.npz");
  const auto diverged = run_cli(qat_args(kResnet, out, 20, "1e20", "sgd") + " --checkpoint " +
                                kept + " --checkpoint-every 1");
  EXPECT_NE(diverged.exit_code, 0);
  testing::expect_one_line_error(diverged, "qat: step 1: parameter '");
  EXPECT_NE(diverged.err.find("lower --lr; the checkpoint of step 1 is kept"), std::string::npos)
      << diverged.err;
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_TRUE(std::filesystem::exists(kept));

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

// Every bundled family, trained a few steps: with BN on running statistics the training graph
// computes what the exported Q/DQ model computes, and the exported file runs in ONNX Runtime
// as in qforge (teacher-forced: no integer differs beyond a rounding flip). What was trained is
// what is exported.
class QatFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(QatFamily, TrainedGraphIsTheExportedModelInQforgeAndOrt) {
  const std::string model_path = data_path("models/" + GetParam() + "_bn.onnx");
  const Tensor x = val_batch(kBatch);
  runtime::TransformOptions options;
  options.batch = kBatch;
  auto fused =
      std::move(runtime::transform_model(*graph::load_onnx(model_path), nullptr, options).graph);
  const quant::QuantPlan plan = quant::place_qdq(*fused);
  quant::ActivationAmax amax;
  {
    quant::CalibrationStats stats(*fused, plan);
    stats.observe_batch(x);
    amax = stats.activation_amax(quant::Calibrator::kMax);
  }
  auto training = quant::fake_quant_training(*fused, plan, amax);
  quant::Sgd sgd({.lr = 1e-2, .momentum = 0.9});
  Tensor labels(kernels::DType::kInt64, {kBatch});
  for (int64_t i = 0; i < kBatch; ++i) labels.data<int64_t>()[i] = (i * 3) % 10;
  for (int step = 0; step < 3; ++step) {
    training->forward_backward(x, labels);
    sgd.step(training->executor().parameters());
  }
  training->freeze_batch_norm();
  const Tensor trained = training->forward(x).clone();
  quant::store_trained_values(training->executor(), *fused);

  TempDir dir;
  const std::string out = dir.file("qat.onnx");
  graph::save_onnx(*quant::build_qdq_graph(*fused, plan, amax), out);
  runtime::Session exported(graph::load_onnx(out));
  const Tensor ours = exported.run(x)[0];
  ASSERT_EQ(ours.shape(), trained.shape());

  // The training graph in eval mode (BN on running statistics, Q/DQ unfused) with every
  // activation quantizer's integers as outputs: the reference of a teacher-forced check of the
  // exported model. Its convolutions divide by the fold factor and let the BN multiply it back
  // where the export adds a folded bias, so pre-quant values differ by float rounding and an
  // integer may flip at a .5 boundary; any other difference is a mismatch.
  quant::TrainingGraph eval = quant::build_training_graph(*fused, plan, amax);
  for (graph::Node* n : eval.graph->nodes()) {
    if (n->op_type() == "QuantizeLinear") eval.graph->mark_output(n->output(0));
  }
  runtime::SessionOptions plain;
  plain.fuse_conv_epilogues = false;
  runtime::Session eval_session(std::move(eval.graph), plain);
  const auto eval_outputs = eval_session.run(x);
  const graph::Graph& resolved = eval_session.resolved_graph_for({x.shape()});
  quant::ReferenceValues reference;
  for (size_t i = 0; i < resolved.outputs().size(); ++i) {
    reference[resolved.outputs()[i]->name()] = eval_outputs[i].clone();
  }
  // The training executor runs the same graph on its own copies of the parameters, where a
  // MatMul whose weight is a parameter runs on OpenBLAS instead of the packed kernel: the same
  // values up to summation order, and the rounding flips that can cause.
  EXPECT_LE(testing::relative_l2(trained, eval_outputs[0]), 1e-2);
  const quant::VerifyResult checked =
      quant::verify_qdq(*graph::load_onnx(out), {&x, 1}, reference, {.flip_tolerance = 1e-3});
  EXPECT_EQ(checked.mismatches, 0);
  EXPECT_GT(checked.points.size(), 0u);

  io::write_npy(dir.file("x.npy"), x);
  const std::vector<Tensor> ort = testing::run_ort(out, {x});
  ASSERT_EQ(ort.size(), 1u);
  EXPECT_LE(testing::relative_l2(ours, ort[0]), 1e-2);
  testing::ort_dump(out, dir.file("x.npy"), dir.file("ort.npz"), "disabled");
  const auto verify = run_cli("verify " + out + " --reference " + dir.file("ort.npz") + " --data " +
                              dir.file("x.npy"));
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
}

INSTANTIATE_TEST_SUITE_P(Bundled, QatFamily,
                         ::testing::Values("resnet", "mobilenet_v3", "efficientnet", "convnext",
                                           "vit", "swin"),
                         [](const auto& family) { return family.param; });

}  // namespace
}  // namespace qforge
