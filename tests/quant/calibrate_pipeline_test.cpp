// The calibration pipeline as library calls (quant/calibrate_pipeline.h, quant/evaluation.h):
// calibrating a bundled model on digit images through the library gives the amax, weight ranges,
// exported bytes and evaluation figures `qforge calibrate` reports and writes; the pieces a QAT
// command reuses (the fused graph for export, the evaluation of two given models) behave as
// documented.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "graph/onnx_import.h"
#include "quant/calibrate_pipeline.h"
#include "quant/evaluation.h"
#include "quant/int8.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "quant/sensitivity.h"
#include "quant/shared_prefix.h"
#include "runtime/session.h"
#include "tests/support/errors.h"
#include "tests/support/test_support.h"
#include "tools/io/image_folder.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using testing::data_path;
using testing::run_cli;
using testing::TempDir;

const std::string kResnet = data_path("models/resnet_bn.onnx");
const std::string kTrain = data_path("datasets/digits/train");

// An image folder preprocessed as the model's metadata says, as `qforge calibrate --data` reads
// it.
class ImageSamples : public quant::SampleSource {
 public:
  ImageSamples(const std::string& root, const graph::Graph& model)
      : images_(root, io::preprocess_from_metadata(model.metadata, *model.inputs()[0]->shape())) {
    const io::Preprocess& pre = images_.preprocess();
    inputs_ = {{.shape = {pre.channels, pre.height, pre.width}}};
  }
  size_t size() const override { return images_.size(); }
  const std::vector<quant::SampleInput>& inputs() const override { return inputs_; }
  bool labelled() const override { return images_.labelled(); }
  void load(std::span<const size_t> indices, std::span<kernels::Tensor> rows,
            std::vector<int64_t>& labels) const override {
    labels.clear();
    const size_t row = images_.sample_numel();
    for (size_t i = 0; i < indices.size(); ++i) {
      images_.load_batch(indices[i], 1, rows[0].data<float>() + i * row);
      labels.push_back(images_.label(indices[i]));
    }
  }

 private:
  io::ImageFolder images_;
  std::vector<quant::SampleInput> inputs_;
};

// The bundled ResNet calibrated with `setup` on `data`, as the command does.
quant::CalibrationResult calibrate_resnet(const quant::SampleSource& data,
                                          const quant::CalibrationSetup& setup) {
  return quant::calibrate(graph::load_onnx(kResnet), quant::model_file(kResnet), data, setup);
}

// The calibration the image-folder tests run: batch 16, 40 of the training images.
quant::CalibrationSetup forty_images_setup() {
  quant::CalibrationSetup setup;
  setup.batch = 16;
  setup.limit = 40;
  return setup;
}

// Unlabelled rows of a tensor.
class TensorSamples : public quant::SampleSource {
 public:
  explicit TensorSamples(kernels::Tensor rows) : rows_(std::move(rows)) {
    inputs_ = {{.shape = graph::Shape(rows_.shape().begin() + 1, rows_.shape().end())}};
  }
  size_t size() const override { return static_cast<size_t>(rows_.dim(0)); }
  const std::vector<quant::SampleInput>& inputs() const override { return inputs_; }
  bool labelled() const override { return false; }
  void load(std::span<const size_t> indices, std::span<kernels::Tensor> rows,
            std::vector<int64_t>& labels) const override {
    labels.clear();
    const size_t row = static_cast<size_t>(kernels::shape_numel(sample_shape()));
    for (size_t i = 0; i < indices.size(); ++i) {
      std::memcpy(rows[0].data<float>() + i * row, rows_.data<float>() + indices[i] * row,
                  row * sizeof(float));
    }
  }

 private:
  kernels::Tensor rows_;
  std::vector<quant::SampleInput> inputs_;
};

// Progress bars that record what the pipeline told them.
struct RecordedBars {
  struct Bar {
    std::string label;
    size_t total = 0;
    size_t done = 0;
    bool finished = false;
  };
  std::vector<Bar> bars;
  quant::ProgressFactory factory() {
    return [this](std::string_view label, size_t total) -> std::unique_ptr<quant::ProgressBar> {
      bars.push_back({std::string(label), total});
      struct Recorder : quant::ProgressBar {
        RecordedBars* owner;
        size_t index;
        Recorder(RecordedBars* o, size_t i) : owner(o), index(i) {}
        void advance(size_t n) override { owner->bars[index].done += n; }
        void finish() override { owner->bars[index].finished = true; }
      };
      return std::make_unique<Recorder>(this, bars.size() - 1);
    };
  }
  void expect(const std::vector<std::string>& labels, size_t total) const {
    ASSERT_EQ(bars.size(), labels.size());
    for (size_t i = 0; i < bars.size(); ++i) {
      EXPECT_EQ(bars[i].label, labels[i]);
      EXPECT_EQ(bars[i].total, total);
      EXPECT_EQ(bars[i].done, total) << bars[i].label;
      EXPECT_TRUE(bars[i].finished) << bars[i].label;
    }
  }
};

std::string bytes_of(std::unique_ptr<graph::Graph> fused, const quant::CalibrationResult& r,
                     const quant::QdqExportOptions& options = {}) {
  std::string out;
  quant::export_qdq_model(std::move(fused), r.plan, r.amax, options, [&](const void* p, size_t n) {
    out.append(static_cast<const char*>(p), n);
  });
  return out;
}

// 40 samples at batch 16: two whole batches and a partial one of 8.
TEST(CalibratePipeline, LibraryGivesTheCliAmaxBytesAndFigures) {
  TempDir dir;
  const std::string out = dir.file("m.qdq.onnx");
  const std::string report = dir.file("report.json");
  const auto r = run_cli("calibrate " + kResnet + " --data " + kTrain +
                         " --limit 40 --batch 16 --method percentile --flip-injections 4 -o " +
                         out + " --report " + report);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(testing::read_text(report));

  quant::CalibrationSetup setup = forty_images_setup();
  setup.method = quant::Calibrator::kPercentile;
  auto model = graph::load_onnx(kResnet);
  const ImageSamples data(kTrain, *model);
  RecordedBars calibration_bars;
  bool pass_ended = false;
  quant::PipelineHooks hooks;
  hooks.progress = calibration_bars.factory();
  hooks.calibration_pass_ended = [&] { pass_ended = true; };
  const quant::CalibrationResult result =
      quant::calibrate(std::move(model), quant::model_file(kResnet), data, setup, hooks);
  EXPECT_TRUE(pass_ended);
  calibration_bars.expect({"calibrate"}, 40);
  EXPECT_EQ(result.samples, 40u);
  EXPECT_EQ(result.batches, 3);
  EXPECT_EQ(j["calibration"]["batches"], result.batches);

  ASSERT_EQ(j["activation_points"].size(), result.plan.activations.size());
  ASSERT_EQ(result.points.size(), result.plan.activations.size());
  for (size_t i = 0; i < result.points.size(); ++i) {
    const auto& p = j["activation_points"][i];
    const quant::PointCalibration& c = result.points[i];
    EXPECT_EQ(p["tensor"], result.plan.activations[i].tensor);
    EXPECT_EQ(p["module"], c.module);
    for (quant::Calibrator m : quant::kCalibrators) {
      EXPECT_EQ(p["amax_by_method"][quant::calibrator_name(m)].get<double>(), c.amax_by(m));
    }
    EXPECT_EQ(p["entropy_fell_back_to_max"], c.entropy_fell_back);
    EXPECT_EQ(static_cast<float>(p["amax"].get<double>()),
              result.amax.at(result.plan.activations[i].tensor));
  }
  ASSERT_EQ(j["weight_points"].size(), result.plan.weights.size());
  for (const auto& w : j["weight_points"]) {
    EXPECT_EQ(w["amax"].get<std::vector<float>>(),
              result.weight_amax.at(w["node"].get<std::string>()));
  }

  // The export: the same bytes as the written file.
  const std::string bytes =
      bytes_of(quant::fused_graph_for_export(graph::load_onnx(kResnet), setup, result), result);
  EXPECT_TRUE(bytes == testing::read_text(out)) << "library export differs from the CLI's file";

  // The evaluation of the written model against the float model: the figures of the report.
  quant::EvaluationSetup eval;
  eval.batch = 16;
  eval.limit = 40;
  eval.flip_injections = 4;
  RecordedBars evaluation_bars;
  const quant::Evaluation e = quant::evaluate(quant::model_file(kResnet), quant::model_file(out),
                                              data, eval, evaluation_bars.factory());
  evaluation_bars.expect({"float model", "Q/DQ model"}, 40);
  const auto& je = j["evaluation"];
  EXPECT_EQ(je["samples"], e.samples);
  EXPECT_EQ(je["sqnr_db"].get<double>(), e.figures.sqnr_db);
  EXPECT_EQ(je["cosine"].get<double>(), e.figures.cosine);
  EXPECT_EQ(je["max_abs_diff"].get<double>(), e.figures.max_abs_diff);
  ASSERT_TRUE(e.figures.top1_agreement);
  EXPECT_EQ(je["top1_agreement"].get<double>(), *e.figures.top1_agreement);
  ASSERT_TRUE(e.labelled);
  EXPECT_EQ(je["float_top1"].get<double>(), static_cast<double>(e.reference_correct) / 40.0);
  EXPECT_EQ(je["int8_top1"].get<double>(), static_cast<double>(e.quantized_correct) / 40.0);
  ASSERT_TRUE(e.kl_divergence && e.reference_cross_entropy && e.quantized_cross_entropy);
  EXPECT_EQ(je["kl_to_float"].get<double>(), *e.kl_divergence);
  EXPECT_EQ(je["float_cross_entropy"].get<double>(), *e.reference_cross_entropy);
  EXPECT_EQ(je["int8_cross_entropy"].get<double>(), *e.quantized_cross_entropy);
  ASSERT_TRUE(e.flips);
  EXPECT_EQ(je["flip_sensitivity"]["changes"].get<std::vector<double>>(), e.flips->changes);
}

// A QAT trainer changes the fused graph's weights before the export: the written model carries
// them. Here one weight is scaled by 2, and its quantizer's range follows.
TEST(CalibratePipeline, ExportTakesTheWeightsOfTheGivenFusedGraph) {
  const kernels::Tensor input = io::read_npy(data_path("golden/resnet_input.npy"));
  const TensorSamples data(input);
  quant::CalibrationSetup setup;
  setup.batch = 2;
  setup.limit = 4;
  const quant::CalibrationResult result = calibrate_resnet(data, setup);
  auto fused = quant::fused_graph_for_export(graph::load_onnx(kResnet), setup, result);
  ASSERT_FALSE(result.plan.weights.empty());
  const quant::WeightPoint& w = result.plan.weights[0];
  const std::vector<float> before = quant::weight_channel_amax(*fused, w);
  EXPECT_EQ(before, result.weight_amax.at(w.node));
  graph::Value* weight = fused->find_node(w.node)->input(static_cast<size_t>(w.input));
  kernels::Tensor doubled = weight->constant().clone();
  for (float& x : doubled.span<float>()) x *= 2;
  weight->set_constant(doubled);
  const std::vector<float> after = quant::weight_channel_amax(*fused, w);
  for (size_t c = 0; c < before.size(); ++c) EXPECT_EQ(after[c], 2 * before[c]);

  TempDir dir;
  testing::write_bytes(dir.file("trained.onnx"), bytes_of(std::move(fused), result));
  const auto qdq = graph::load_onnx(dir.file("trained.onnx"));
  // The first weight quantizer's scale: amax / 127 of the doubled weight.
  bool found = false;
  for (const graph::Node* n : qdq->nodes()) {
    if (n->op_type() != "QuantizeLinear" || !n->input(0)->is_constant()) continue;
    const kernels::Tensor& scale = n->input(1)->constant();
    ASSERT_EQ(static_cast<size_t>(scale.numel()), after.size());
    for (size_t c = 0; c < after.size(); ++c) {
      EXPECT_EQ(scale.data<float>()[c], quant::scale_from_amax(after[c]));
    }
    found = true;
    break;
  }
  EXPECT_TRUE(found);
}

// Every figure of an evaluation, compared exactly.
void expect_same_figures(const quant::Evaluation& got, const quant::Evaluation& want,
                         const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(got.samples, want.samples);
  EXPECT_EQ(got.figures.sqnr_db, want.figures.sqnr_db);
  EXPECT_EQ(got.figures.cosine, want.figures.cosine);
  EXPECT_EQ(got.figures.max_abs_diff, want.figures.max_abs_diff);
  EXPECT_EQ(got.figures.top1_agreement, want.figures.top1_agreement);
  EXPECT_EQ(got.labelled, want.labelled);
  EXPECT_EQ(got.reference_correct, want.reference_correct);
  EXPECT_EQ(got.quantized_correct, want.quantized_correct);
  EXPECT_EQ(got.kl_divergence, want.kl_divergence);
  EXPECT_EQ(got.reference_cross_entropy, want.reference_cross_entropy);
  EXPECT_EQ(got.quantized_cross_entropy, want.quantized_cross_entropy);
}

// The model `calibrate` writes with `setup` (its own calibration pass), evaluated on `data`.
quant::Evaluation written_and_evaluated(const quant::CalibrationSetup& setup,
                                        const quant::SampleSource& data,
                                        const quant::EvaluationSetup& eval, const TempDir& dir,
                                        const std::string& name) {
  const quant::CalibrationResult r = calibrate_resnet(data, setup);
  const std::string file = dir.file(name);
  testing::write_bytes(
      file, bytes_of(quant::fused_graph_for_export(graph::load_onnx(kResnet), setup, r), r));
  return quant::evaluate(quant::model_file(kResnet), quant::model_file(file), data, eval);
}

// The skip sensitivity of a module is, figure for figure, the evaluation of the model that
// calibrating with --skip of that module writes: the same scales for every other point, the
// same graph, nothing else kept float. Its first entry, every module quantized, is the
// evaluation of the model written without the skip.
TEST(CalibratePipeline, SkipSensitivityOfAModuleIsTheModelItsSkipWrites) {
  const ImageSamples data(kTrain, *graph::load_onnx(kResnet));
  const quant::CalibrationSetup setup = forty_images_setup();
  const quant::CalibrationResult result = calibrate_resnet(data, setup);
  quant::EvaluationSetup eval;
  eval.batch = 16;
  eval.limit = 24;
  eval.flip_injections = 0;
  eval.quantized_label = "sensitivity";
  RecordedBars bars;
  const quant::SensitivityAnalysis a = quant::skip_sensitivity(
      *quant::fused_graph_for_export(graph::load_onnx(kResnet), setup, result), result, setup,
      quant::model_file(kResnet), data, eval, bars.factory());
  ASSERT_EQ(bars.bars.size(), 2u);
  EXPECT_EQ(bars.bars[0].label, "float model");
  EXPECT_EQ(bars.bars[0].done, 24u);
  EXPECT_EQ(bars.bars[1].label, "sensitivity");
  EXPECT_EQ(bars.bars[1].total, a.modules.size() + 1);
  EXPECT_EQ(bars.bars[1].done, a.modules.size() + 1);
  EXPECT_TRUE(bars.bars[0].finished && bars.bars[1].finished);

  // Every module with a weight quantizer is there, once, in graph order (ResNet's modules all
  // have weights).
  ASSERT_EQ(a.modules.size(), result.plan.weights.size());
  for (size_t i = 0; i < a.modules.size(); ++i) {
    EXPECT_EQ(a.modules[i].module, result.plan.weights[i].node);
    EXPECT_EQ(a.modules[i].kind, result.plan.weights[i].module);
    EXPECT_EQ(a.modules[i].weight_quantizers, 1u);
  }

  TempDir dir;
  expect_same_figures(a.all_quantized, written_and_evaluated(setup, data, eval, dir, "all.onnx"),
                      "every module quantized");
  // A module whose input point goes with it, and one whose input another module also reads.
  size_t with_point = a.modules.size(), without_point = a.modules.size();
  for (size_t i = 0; i < a.modules.size(); ++i) {
    if (a.modules[i].activation_points > 0 && with_point == a.modules.size()) with_point = i;
    if (a.modules[i].activation_points == 0 && without_point == a.modules.size()) {
      without_point = i;
    }
  }
  ASSERT_LT(with_point, a.modules.size());
  ASSERT_LT(without_point, a.modules.size());
  for (size_t i : {with_point, without_point}) {
    const quant::SkipSensitivity& m = a.modules[i];
    quant::CalibrationSetup skipped = setup;
    skipped.skip = {m.module};
    const quant::CalibrationResult r = calibrate_resnet(data, skipped);
    EXPECT_EQ(r.plan.activations.size() + m.activation_points, result.plan.activations.size());
    EXPECT_EQ(r.plan.weights.size() + 1, result.plan.weights.size());
    expect_same_figures(m.evaluation, written_and_evaluated(skipped, data, eval, dir, "skip.onnx"),
                        "--skip " + m.module);
  }
  // Keeping a module float changes the output.
  EXPECT_NE(a.modules[with_point].evaluation.figures.sqnr_db, a.all_quantized.figures.sqnr_db);
}

// The target search given the sensitivity row of its first model (the costliest module alone
// float) does not run that model: the same modules and figures as a search that runs it, one
// model fewer run, and none (not even the float model) when the first already reaches.
TEST(CalibratePipeline, SkipUntilTakesTheMeasuredFirstModelInsteadOfRunningIt) {
  const ImageSamples data(kTrain, *graph::load_onnx(kResnet));
  const quant::CalibrationSetup setup = forty_images_setup();
  const quant::CalibrationResult result = calibrate_resnet(data, setup);
  const auto fused = quant::fused_graph_for_export(graph::load_onnx(kResnet), setup, result);
  quant::EvaluationSetup eval;
  eval.batch = 16;
  eval.limit = 24;
  eval.flip_injections = 0;
  const quant::ModelLoader reference = quant::model_file(kResnet);
  const quant::SensitivityAnalysis a =
      quant::skip_sensitivity(*fused, result, setup, reference, data, eval);
  const std::vector<std::string> order = {a.modules[2].module, a.modules[0].module,
                                          a.modules[5].module};
  const auto never = [](const quant::Evaluation&) { return false; };
  RecordedBars ran, given;
  const quant::SkipSearch run =
      quant::skip_until(*fused, result, setup, order, never, reference, data, eval, ran.factory());
  const quant::SkipSearch known =
      quant::skip_until(*fused, result, setup, order, never, reference, data, eval, given.factory(),
                        a.modules[2].evaluation);
  EXPECT_EQ(known.kept_float, run.kept_float);
  EXPECT_EQ(known.kept_float, order);
  EXPECT_FALSE(known.reached);
  expect_same_figures(known.evaluation, run.evaluation, "every module of the order float");
  ASSERT_EQ(ran.bars.size(), 2u);
  ASSERT_EQ(given.bars.size(), 2u);
  EXPECT_EQ(ran.bars[1].done, 3u);
  EXPECT_EQ(given.bars[1].done, 2u);

  // The first model reaches: nothing runs.
  const double first_db = a.modules[2].evaluation.figures.sqnr_db;
  const auto first_reaches = [first_db](const quant::Evaluation& e) {
    return e.figures.sqnr_db >= first_db;
  };
  RecordedBars none;
  const quant::SkipSearch at_once =
      quant::skip_until(*fused, result, setup, order, first_reaches, reference, data, eval,
                        none.factory(), a.modules[2].evaluation);
  EXPECT_TRUE(none.bars.empty());
  EXPECT_TRUE(at_once.reached);
  EXPECT_EQ(at_once.kept_float, std::vector<std::string>{order[0]});
  // The row is the model the search would have run first.
  const quant::SkipSearch first_run =
      quant::skip_until(*fused, result, setup, order, first_reaches, reference, data, eval);
  EXPECT_EQ(first_run.kept_float, at_once.kept_float);
  expect_same_figures(at_once.evaluation, first_run.evaluation, "the costliest module float");
}

// The Q/DQ models of a sensitivity analysis of a bundled family, calibrated on its golden input
// (four samples): every module quantized first, then each quantized module kept float in turn,
// in graph order.
struct SkipVariants {
  kernels::Tensor input;
  std::string path;
  std::unique_ptr<graph::Graph> fused;
  quant::CalibrationResult calibrated;
  std::vector<quant::QuantPlan> plans;
  std::vector<quant::ModelLoader> models;

  explicit SkipVariants(const std::string& family)
      : input(io::read_npy(data_path("golden/" + family + "_input.npy"))),
        path(data_path("models/" + family + "_bn.onnx")) {
    const TensorSamples data(input);
    quant::CalibrationSetup setup;
    setup.batch = 2;
    calibrated = quant::calibrate(graph::load_onnx(path), quant::model_file(path), data, setup);
    fused = quant::fused_graph_for_export(graph::load_onnx(path), setup, calibrated);
    plans.push_back(calibrated.plan);
    std::vector<std::string> modules;
    for (const graph::Node* n : fused->nodes()) {
      bool quantized = false;
      for (const quant::WeightPoint& w : calibrated.plan.weights) quantized |= w.node == n->name();
      for (const quant::ActivationPoint& a : calibrated.plan.activations) {
        for (const quant::QuantConsumer& c : a.consumers) quantized |= c.node == n->name();
      }
      if (quantized) modules.push_back(n->name());
    }
    for (const std::string& m : modules) {
      quant::PlacementOptions options = quant::placement_options(setup);
      options.skip.push_back(m);
      plans.push_back(quant::place_qdq(*fused, options));
    }
    models.reserve(plans.size());
    for (const quant::QuantPlan& p : plans) {
      models.emplace_back(
          [this, &p] { return quant::build_qdq_graph(*fused, p, calibrated.amax); });
    }
  }
  SkipVariants(const SkipVariants&) = delete;
};

std::vector<kernels::Tensor> outputs_of(runtime::Session& session,
                                        std::span<const kernels::Tensor> inputs) {
  std::vector<kernels::Tensor> out;
  for (const kernels::Tensor& t : session.run(inputs)) out.push_back(t.clone());
  return out;
}

// A session's outputs, its inputs read by name from `values`, which its outputs then join.
std::vector<kernels::Tensor> run_by_name(runtime::Session& session,
                                         std::map<std::string, kernels::Tensor>& values) {
  std::vector<kernels::Tensor> in;
  for (const graph::Value* x : session.graph().inputs()) in.push_back(values.at(x->name()));
  const std::vector<kernels::Tensor> out = outputs_of(session, in);
  for (size_t k = 0; k < out.size(); ++k) values[session.graph().outputs()[k]->name()] = out[k];
  return out;
}

void expect_same_bytes(const std::vector<kernels::Tensor>& got,
                       const std::vector<kernels::Tensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k) {
    EXPECT_TRUE(got[k].dtype() == want[k].dtype() && got[k].shape() == want[k].shape() &&
                std::memcmp(got[k].raw(), want[k].raw(), got[k].nbytes()) == 0)
        << "output " << k;
  }
}

// A variant of the all-quantized model departs from it where it first computes another node; the
// base's nodes up to there, cut into segments, and the variant's rest from the values they hand
// on give the variant's outputs bit for bit. All but a variant that changes the model's first
// node run a rest.
TEST(SharedPrefix, SegmentsOfTheBaseThenAVariantsRestGiveTheVariantsOutputs) {
  for (const std::string family : {"resnet", "vit", "swin", "mobilenet_v3", "yolo", "unet"}) {
    SCOPED_TRACE(family);
    SkipVariants v(family);
    const quant::SharedPrefix prefix(v.models[0]());
    EXPECT_EQ(prefix.departure(*v.models[0]()).cut, prefix.size());
    size_t rests = 0;
    size_t last_cut = 0;
    for (size_t i = 1; i < v.models.size(); ++i) {
      SCOPED_TRACE(i);
      std::unique_ptr<graph::Graph> variant = v.models[i]();
      quant::SharedPrefix::Departure d = prefix.departure(*variant);
      ASSERT_LT(d.cut, prefix.size());
      const size_t previous_cut = last_cut;
      last_cut = d.cut;
      const kernels::Tensor input = v.input.slice_rows(0, 2);  // the batch the models have
      runtime::Session whole(variant->clone());
      const std::vector<kernels::Tensor> want = outputs_of(whole, std::span(&input, 1));
      if (!d.rest) continue;
      ++rests;
      // The base's values at the cut, from two segments: to the cut of the variant before (when
      // it is earlier and its values all have a static shape) and from there.
      size_t split = previous_cut <= d.cut ? previous_cut : 0;
      for (const graph::Value* x : prefix.live(split)) split = x->has_shape() ? split : 0;
      std::map<std::string, kernels::Tensor> values = {{variant->inputs()[0]->name(), input}};
      for (auto [from, to] : {std::pair{size_t{0}, split}, std::pair{split, d.cut}}) {
        if (from == to) continue;
        runtime::Session segment(prefix.segment(*variant, from, to));
        run_by_name(segment, values);
      }
      runtime::Session rest(std::move(d.rest));
      expect_same_bytes(run_by_name(rest, values), want);
    }
    EXPECT_GE(rests + 1, v.models.size() - 1);
  }
}

// Constants decide too: a variant whose graph has the base's structure but one point's scale
// doubled departs at that point's quantizer (not at the end, as its structure alone would say),
// and the base's values there with the variant's rest give the variant's outputs.
TEST(SharedPrefix, AVariantWithAnotherScaleDepartsWhereThatScaleIsRead) {
  SkipVariants v("resnet");
  const quant::SharedPrefix prefix(v.models[0]());
  quant::ActivationAmax amax = v.calibrated.amax;
  const std::string point = v.calibrated.plan.activations[3].tensor;
  amax.at(point) *= 2;
  std::unique_ptr<graph::Graph> variant = quant::build_qdq_graph(*v.fused, v.calibrated.plan, amax);
  quant::SharedPrefix::Departure d = prefix.departure(*variant);
  ASSERT_LT(d.cut, prefix.size());
  ASSERT_GT(d.cut, 0u);
  ASSERT_TRUE(d.rest);
  // The first node of the rest reads the point: its quantizer.
  const graph::Node* first = nullptr;
  for (const graph::Node* n : d.rest->nodes()) {
    bool computing = false;
    for (const graph::Value* x : n->inputs()) computing |= x && !x->is_constant();
    if (computing && !first) first = n;
  }
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->op_type(), "QuantizeLinear");
  EXPECT_EQ(first->input(0)->name(), point);
  const kernels::Tensor input = v.input.slice_rows(0, 2);
  runtime::Session whole(variant->clone());
  const std::vector<kernels::Tensor> want = outputs_of(whole, std::span(&input, 1));
  std::map<std::string, kernels::Tensor> values = {{variant->inputs()[0]->name(), input}};
  runtime::Session head(prefix.segment(*variant, 0, d.cut));
  run_by_name(head, values);
  runtime::Session rest(std::move(d.rest));
  expect_same_bytes(run_by_name(rest, values), want);
}

// evaluate_variants gives evaluate_each's figures exactly, with the variants in graph order (each
// from the values where it departs) and in reverse (each departs before the one before it: every
// one but the first runs whole), over a padded last batch.
TEST(SharedPrefix, EvaluateVariantsGivesEachModelsFiguresAsEvaluateEachDoes) {
  for (const std::string family : {"resnet", "vit", "swin", "unet"}) {
    SCOPED_TRACE(family);
    SkipVariants v(family);
    const TensorSamples data(v.input);
    quant::EvaluationSetup eval;
    eval.batch = 2;
    eval.limit = 3;
    eval.flip_injections = 0;
    const quant::ModelLoader reference = quant::model_file(v.path);
    const std::vector<quant::Evaluation> each =
        quant::evaluate_each(reference, v.models, data, eval);
    const std::vector<quant::Evaluation> variants = quant::evaluate_variants(
        reference, v.models[0], std::span(v.models).subspan(1), data, eval);
    ASSERT_EQ(variants.size(), each.size());
    for (size_t i = 0; i < each.size(); ++i) {
      expect_same_figures(variants[i], each[i], "model " + std::to_string(i));
    }
    std::vector<quant::ModelLoader> reversed(v.models.rbegin(), v.models.rend() - 1);
    const std::vector<quant::Evaluation> backwards =
        quant::evaluate_variants(reference, v.models[0], reversed, data, eval);
    ASSERT_EQ(backwards.size(), each.size());
    for (size_t i = 1; i < each.size(); ++i) {
      expect_same_figures(backwards[each.size() - i], each[i],
                          "reversed, model " + std::to_string(i));
    }
  }
}

// A calibration result narrowed to more skips is the result calibrate returns with them: the
// same plan, the same rows for the points that remain (their module column included), the same
// amax and weight ranges.
TEST(CalibratePipeline, ResultWithMoreSkipsIsWhatCalibrateReturnsWithThem) {
  const ImageSamples data(kTrain, *graph::load_onnx(kResnet));
  const quant::CalibrationSetup setup = forty_images_setup();
  const quant::CalibrationResult all = calibrate_resnet(data, setup);
  const auto fused = quant::fused_graph_for_export(graph::load_onnx(kResnet), setup, all);
  quant::CalibrationSetup skipped = setup;
  // The stem (its input point goes with it) and a block's first convolution (its input point
  // stays for the block's residual add, one consumer fewer).
  skipped.skip = {all.plan.weights[0].node, all.plan.weights[1].node};
  const quant::CalibrationResult narrowed = quant::with_setup_skips(all, *fused, skipped);
  const quant::CalibrationResult again = calibrate_resnet(data, skipped);
  ASSERT_EQ(narrowed.plan.activations.size(), again.plan.activations.size());
  ASSERT_LT(again.plan.activations.size(), all.plan.activations.size());
  for (size_t i = 0; i < again.plan.activations.size(); ++i) {
    EXPECT_EQ(narrowed.plan.activations[i].tensor, again.plan.activations[i].tensor);
    EXPECT_EQ(narrowed.plan.activations[i].consumers.size(),
              again.plan.activations[i].consumers.size());
    EXPECT_EQ(narrowed.points[i].module, again.points[i].module);
    EXPECT_EQ(narrowed.points[i].amax, again.points[i].amax);
    EXPECT_EQ(narrowed.points[i].entropy_fell_back, again.points[i].entropy_fell_back);
  }
  ASSERT_EQ(narrowed.plan.weights.size(), again.plan.weights.size());
  for (size_t i = 0; i < again.plan.weights.size(); ++i) {
    EXPECT_EQ(narrowed.plan.weights[i].node, again.plan.weights[i].node);
  }
  EXPECT_EQ(narrowed.plan.float_modules.size(), 2u);
  EXPECT_EQ(narrowed.amax, again.amax);
  EXPECT_EQ(narrowed.weight_amax, again.weight_amax);
  // What the export writes from either: the same bytes.
  EXPECT_TRUE(
      bytes_of(quant::fused_graph_for_export(graph::load_onnx(kResnet), skipped, narrowed),
               narrowed) ==
      bytes_of(quant::fused_graph_for_export(graph::load_onnx(kResnet), skipped, again), again));
}

// Where a model's samples are independent, one pass carries an injection per sample and each
// injection is measured on its own sample's output: the figures of one pass per injection, on
// families whose points lay the batch out in other ways (Swin's windows, attention's heads) and
// with dense outputs (YOLO's boxes, U-Net's map). An injection measured on another sample's
// output, or drawn from an element outside its sample, gives 0 or another injection's change.
TEST(FlipSensitivity, OnePassOfAnInjectionPerSampleGivesEachInjectionsOwnChange) {
  for (const std::string family : {"resnet", "vit", "swin", "yolo", "unet"}) {
    SCOPED_TRACE(family);
    const std::string path = data_path("models/" + family + "_bn.onnx");
    const kernels::Tensor input = io::read_npy(data_path("golden/" + family + "_input.npy"));
    ASSERT_EQ(input.dim(0), 4);
    const TensorSamples data(input);
    quant::CalibrationSetup setup;
    setup.batch = 4;
    setup.limit = 4;
    const quant::CalibrationResult r =
        quant::calibrate(graph::load_onnx(path), quant::model_file(path), data, setup);
    const auto qdq = graph::parse_onnx(
        bytes_of(quant::fused_graph_for_export(graph::load_onnx(path), setup, r), r), family);
    const quant::FlipSensitivity batched =
        quant::flip_sensitivity(*qdq, input, {.injections = 12, .seed = 5});
    const quant::FlipSensitivity single =
        quant::flip_sensitivity(*qdq, input, {.injections = 12, .seed = 5, .one_per_pass = true});
    EXPECT_EQ(batched.passes, 3);
    EXPECT_EQ(single.passes, 12);
    EXPECT_EQ(batched.changes, single.changes);
    EXPECT_GT(batched.p90, 0.0);
    // Three distinct samples in a batch of four (the last row pads it): passes of three.
    const quant::FlipSensitivity three =
        quant::flip_sensitivity(*qdq, input, {.injections = 12, .seed = 5, .samples = 3});
    const quant::FlipSensitivity three_single = quant::flip_sensitivity(
        *qdq, input, {.injections = 12, .seed = 5, .samples = 3, .one_per_pass = true});
    EXPECT_EQ(three.passes, 4);
    EXPECT_EQ(three.changes, three_single.changes);
  }
}

TEST(CalibratePipeline, SetupOutOfRangeAndEmptyDataAreRejected) {
  const kernels::Tensor input = io::read_npy(data_path("golden/resnet_input.npy"));
  const TensorSamples data(input);
  const TensorSamples none(input.slice_rows(0, 0).clone());
  quant::CalibrationSetup bad;
  bad.percentile = 0;
  auto calibrate_with = [&](const quant::SampleSource& samples,
                            const quant::CalibrationSetup& setup) {
    return [source = &samples, setup] { calibrate_resnet(*source, setup); };
  };
  EXPECT_NE(testing::error_of(ErrorKind::kInvalid, calibrate_with(data, bad))
                .find("percentile must be in (0, 100], got 0"),
            std::string::npos);
  bad = {};
  bad.smoothquant_alpha = 2;
  EXPECT_NE(testing::error_of(ErrorKind::kInvalid, calibrate_with(data, bad))
                .find("alpha must be in [0, 1], got 2"),
            std::string::npos);
  const quant::CalibrationSetup defaults;
  EXPECT_NE(testing::error_of(ErrorKind::kInvalid, calibrate_with(none, defaults))
                .find("holds no samples"),
            std::string::npos);
}

}  // namespace
}  // namespace qforge
