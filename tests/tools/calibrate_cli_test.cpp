// `qforge calibrate` end to end: the bundled ResNet calibrates on a few digit images into a Q/DQ
// model that loads back with QuantizeLinear nodes, with the SQNR and accuracy lines printed; bad
// input gives one line on stderr, a non-zero exit and no output file.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "graph/onnx_import.h"
#include "tests/support/batch_models.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using testing::count_lines;
using testing::data_path;
using testing::run_cli;
using testing::TempDir;

const std::string kResnet = data_path("models/resnet_bn.onnx");
const std::string kTrain = data_path("datasets/digits/train");
const std::string kGoldenInput = data_path("golden/resnet_input.npy");

using testing::expect_one_line_error;

// Only the expected output may be missing: no temporaries left beside it either.
void expect_no_files(const TempDir& dir, const std::vector<std::string>& inputs = {}) {
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    const std::string name = entry.path().filename().string();
    if (std::find(inputs.begin(), inputs.end(), name) != inputs.end()) continue;
    ADD_FAILURE() << "left behind: " << name;
  }
}

size_t count_op(const graph::Graph& g, const std::string& op_type) {
  size_t n = 0;
  for (const graph::Node* node : g.nodes()) n += node->op_type() == op_type;
  return n;
}

TEST(CalibrateCli, ResnetWritesQdqModelWithFigures) {
  TempDir dir;
  const std::string out = dir.file("resnet_bn.qdq.onnx");
  const std::string report = dir.file("report.json");
  auto r = run_cli("calibrate " + kResnet + " --data " + kTrain + " --limit 64 --batch 16 -o " +
                   out + " --report " + report);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  EXPECT_NE(r.out.find("output SQNR"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" dB"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("accuracy     float"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(64 samples"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("percentile"), std::string::npos) << r.out;

  auto qdq = graph::load_onnx(out);
  EXPECT_GT(count_op(*qdq, "QuantizeLinear"), 0u);
  EXPECT_GT(count_op(*qdq, "DequantizeLinear"), 0u);
  // The model's symbolic batch, whatever --batch.
  EXPECT_EQ(testing::declared_batch_text(out),
            std::make_pair(std::string("batch"), std::string("batch")));

  const auto j = nlohmann::json::parse(testing::read_text(report));
  EXPECT_EQ(j["method"], "mse");  // the default
  EXPECT_EQ(j["calibration"]["samples"], 64);
  ASSERT_FALSE(j["activation_points"].empty());
  for (const auto& p : j["activation_points"]) {
    EXPECT_GT(p["amax"].get<double>(), 0.0) << p.dump();
    EXPECT_EQ(p["amax"], p["amax_by_method"]["mse"]);
    EXPECT_GT(p["amax_by_method"]["max"].get<double>(), 0.0);
  }
  const auto& e = j["evaluation"];
  EXPECT_EQ(e["samples"], 64);
  EXPECT_GT(e["sqnr_db"].get<double>(), 10.0);
  EXPECT_GT(e["cosine"].get<double>(), 0.9);
  EXPECT_GT(e["float_top1"].get<double>(), 0.5);
  EXPECT_GT(e["int8_top1"].get<double>(), 0.5);

  // Flip sensitivity: 32 seeded injections over every activation point, one per sample of the
  // first batch of 16 in each pass; median and 90th percentile of the changes as the report
  // lists them.
  EXPECT_NE(r.out.find("one flip     moves a sample's output by "), std::string::npos) << r.out;
  const auto& f = e["flip_sensitivity"];
  EXPECT_EQ(f["injections"], 32);
  EXPECT_EQ(f["seed"], 0);
  EXPECT_EQ(f["passes"], 2);
  EXPECT_NE(r.out.find("points in 2 passes, seed 0)"), std::string::npos) << r.out;
  EXPECT_EQ(f["points"].get<size_t>(), j["counts"]["activation_pairs"].get<size_t>() +
                                           j["counts"]["softmax_pairs"].get<size_t>());
  std::vector<double> changes = f["changes"].get<std::vector<double>>();
  ASSERT_EQ(changes.size(), 32u);
  std::sort(changes.begin(), changes.end());
  EXPECT_GE(changes.front(), 0.0);
  EXPECT_GT(changes.back(), 0.0);
  auto quantile = [&](double q) {
    const double pos = q * 31;
    const auto lo = static_cast<size_t>(pos);
    return changes[lo] + (changes[lo + 1] - changes[lo]) * (pos - static_cast<double>(lo));
  };
  EXPECT_DOUBLE_EQ(f["median_relative_l2"].get<double>(), quantile(0.5));
  EXPECT_DOUBLE_EQ(f["p90_relative_l2"].get<double>(), quantile(0.9));
}

TEST(CalibrateCli, NpyDataPartialBatchAndOtherMethod) {
  TempDir dir;
  const std::string out = dir.file("m.qdq.onnx");
  const auto input = io::read_npy(kGoldenInput);
  const int64_t batch = input.dim(0) > 1 ? input.dim(0) - 1 : 1;  // leaves a partial batch
  auto r = run_cli("calibrate " + kResnet + " --data " + kGoldenInput + " --method entropy" +
                   " --batch " + std::to_string(batch) +
                   std::string(" --threads 1 --int8-weights --flip-injections 0 -o ") + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("method       entropy"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("one flip"), std::string::npos) << r.out;  // --flip-injections 0
  EXPECT_NE(r.out.find("output SQNR"), std::string::npos) << r.out;
  // An .npy has no labels: no accuracy or cross-entropy line (the paths may hold the word).
  EXPECT_EQ(r.out.find("\naccuracy "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("\ncross-ent. "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\nKL to float "), std::string::npos) << r.out;
  std::string samples = "(";
  samples.append(std::to_string(input.dim(0))).append(" samples");
  EXPECT_NE(r.out.find(samples), std::string::npos) << r.out;
  EXPECT_GT(count_op(*graph::load_onnx(out), "DequantizeLinear"), 0u);
}

// The digits' normalised input has a far mode (the strokes, about a quarter of its values) that
// entropy's threshold would clip whole: that point falls back to max and says so; every other
// point keeps entropy's threshold, and the accuracy stays near float.
TEST(CalibrateCli, EntropyFallsBackToMaxWhereItWouldClipAFarMode) {
  TempDir dir;
  const std::string report = dir.file("report.json");
  auto r = run_cli("calibrate " + data_path("models/vit_bn.onnx") + " --data " + kTrain +
                   " --limit 128 --batch 32 --method entropy --report " + report + " -o " +
                   dir.file("vit.qdq.onnx"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("it takes max instead"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(testing::read_text(report));
  size_t fell_back = 0;
  for (const auto& p : j["activation_points"]) {
    const double entropy = p["amax_by_method"]["entropy"].get<double>();
    const double max = p["amax_by_method"]["max"].get<double>();
    if (p["entropy_fell_back_to_max"].get<bool>()) {
      ++fell_back;
      EXPECT_EQ(p["tensor"], "input");
      EXPECT_EQ(entropy, max);
      EXPECT_EQ(p["amax"].get<double>(), max);
    }
  }
  EXPECT_EQ(fell_back, 1u);
  // Without the fallback this model lost 27 points (71% against 98% float).
  EXPECT_GT(j["evaluation"]["int8_top1"].get<double>(), 0.95);
}

// Transformers fold the batch into their reshapes when transformed: a partial last batch runs
// through the model transformed at its own size, and the scales still do not depend on --batch
// or --threads (10 samples: batches 4+4+2, 3+3+3+1, or ten of one).
TEST(CalibrateCli, TransformerScalesDoNotDependOnBatchWithPartialLastBatch) {
  for (const char* name : {"vit_bn", "swin_folded"}) {
    SCOPED_TRACE(name);
    TempDir dir;
    std::vector<nlohmann::json> points;
    for (const char* args : {"--batch 4 --threads 2", "--batch 3 --threads 1", "--batch 1"}) {
      const std::string report = dir.file("report.json");
      auto r = run_cli("calibrate " + data_path(std::string("models/") + name + ".onnx") +
                       " --data " + data_path("datasets/digits/val") + " --limit 10 " + args +
                       " -o " + dir.file("m.qdq.onnx") + " --report " + report);
      ASSERT_EQ(r.exit_code, 0) << args << ": " << r.err;
      const auto j = nlohmann::json::parse(testing::read_text(report));
      EXPECT_EQ(j["calibration"]["samples"], 10);
      points.push_back(j["activation_points"]);
    }
    ASSERT_FALSE(points[0].empty());
    EXPECT_EQ(points[0], points[1]);
    EXPECT_EQ(points[0], points[2]);
  }
}

TEST(CalibrateCli, EmptyNpyIsRejected) {
  TempDir dir;
  const auto input = io::read_npy(kGoldenInput);
  io::write_npy(dir.file("empty.npy"), input.slice_rows(0, 0).clone());
  auto r = run_cli("calibrate " + kResnet + " --data " + dir.file("empty.npy") + " -o " +
                   dir.file("out.onnx"));
  expect_one_line_error(r, "holds no samples");
  expect_no_files(dir, {"empty.npy"});
}

TEST(CalibrateCli, EmptyImageFolderIsRejected) {
  TempDir dir;
  std::filesystem::create_directories(dir.path() / "images" / "a");
  auto r = run_cli("calibrate " + kResnet + " --data " + dir.file("images") + " -o " +
                   dir.file("out.onnx"));
  expect_one_line_error(r, "no .jpg, .jpeg or .png images");
  expect_no_files(dir, {"images"});
}

TEST(CalibrateCli, WrongImageShapeNamesTheFile) {
  TempDir dir;
  std::filesystem::create_directories(dir.path() / "images" / "a");
  const std::string bad = (dir.path() / "images" / "a" / "small.png").string();
  testing::write_png(bad, 28, 28, 3, std::vector<unsigned char>(28 * 28 * 3, 100));
  auto r = run_cli("calibrate " + kResnet + " --data " + dir.file("images") + " -o " +
                   dir.file("out.onnx"));
  expect_one_line_error(r, "small.png");
  EXPECT_NE(r.err.find("28"), std::string::npos) << r.err;
  expect_no_files(dir, {"images"});
}

// The samples of a batch are decoded in parallel; the error names the first bad one in the
// folder's order, whichever finished first.
TEST(CalibrateCli, FirstBadImageOfABatchIsNamedWhateverTheThreads) {
  TempDir dir;
  const std::filesystem::path a = dir.path() / "images" / "a";
  std::filesystem::create_directories(a);
  for (int i = 0; i < 8; ++i) {
    const bool bad = i == 3 || i == 6;
    const int size = bad ? 28 : 32;
    testing::write_png((a / ("img" + std::to_string(i) + ".png")).string(), size, size, 3,
                       std::vector<unsigned char>(static_cast<size_t>(size * size * 3), 100));
  }
  for (const char* threads : {"1", "2"}) {
    auto r = run_cli("calibrate " + kResnet + " --data " + dir.file("images") + " --threads " +
                     threads + " -o " + dir.file("out.onnx"));
    expect_one_line_error(r, "img3.png");
    EXPECT_EQ(r.err.find("img6.png"), std::string::npos) << r.err;
    expect_no_files(dir, {"images"});
  }
}

TEST(CalibrateCli, NonFiniteNpyNamesTheFile) {
  TempDir dir;
  auto input = io::read_npy(kGoldenInput);
  input.data<float>()[5] = std::numeric_limits<float>::quiet_NaN();
  io::write_npy(dir.file("nan.npy"), input);
  auto r = run_cli("calibrate " + kResnet + " --data " + dir.file("nan.npy") + " -o " +
                   dir.file("out.onnx"));
  expect_one_line_error(r, "nan.npy");
  EXPECT_NE(r.err.find("NaN"), std::string::npos) << r.err;
  expect_no_files(dir, {"nan.npy"});
}

TEST(CalibrateCli, SkipEntryMatchingNothingIsRejected) {
  TempDir dir;
  auto r =
      run_cli("calibrate " + kResnet + " --data " + kGoldenInput + " --skip NoSuchModule* -o " +
              dir.file("out.onnx") + " --report " + dir.file("r.json"));
  expect_one_line_error(r, "NoSuchModule*");
  expect_no_files(dir);
}

TEST(CalibrateCli, UnwritableOutputFailsBeforeWork) {
  TempDir dir;
  auto r = run_cli("calibrate " + kResnet + " --data " + kGoldenInput + " -o " +
                   dir.file("missing/out.onnx"));
  expect_one_line_error(r, "cannot write");
  expect_no_files(dir);
}

TEST(CalibrateCli, UnknownMethodIsRejected) {
  TempDir dir;
  auto r = run_cli("calibrate " + kResnet + " --data " + kGoldenInput + " --method median -o " +
                   dir.file("out.onnx"));
  expect_one_line_error(r, "median");
  expect_no_files(dir);
}

// --smoothquant on the bundled ViT: the report names the smoothed LayerNorms with alpha and the
// factor range, the written model carries the folded LayerNorm scales, and the scales, factors
// and weight ranges still do not depend on --batch or --threads. The SQNR with and without is
// printed, not asserted (on 16 digit images it is no robust improvement).
TEST(CalibrateCli, SmoothquantOnVitIsReportedFoldedAndBatchIndependent) {
  const std::string vit = data_path("models/vit_bn.onnx");
  TempDir dir;
  std::vector<nlohmann::json> reports;
  for (const char* args : {"--smoothquant --batch 4 --threads 2",
                           "--smoothquant 0.5 --batch 3 --threads 1", "--batch 4"}) {
    const std::string report = dir.file("report.json");
    auto r =
        run_cli("calibrate " + vit + " --data " + data_path("datasets/digits/val") +
                " --limit 10 " + args + " -o " + dir.file("m.qdq.onnx") + " --report " + report);
    ASSERT_EQ(r.exit_code, 0) << args << ": " << r.err;
    reports.push_back(nlohmann::json::parse(testing::read_text(report)));
    if (reports.size() == 1) {
      EXPECT_NE(r.out.find("smoothquant  alpha 0.5: "), std::string::npos) << r.out;
      EXPECT_NE(r.out.find("  smoothed "), std::string::npos) << r.out;
      // The written model's LayerNorm scales: the smoothed ones differ from the float model's.
      auto original = graph::load_onnx(vit);
      auto qdq = graph::load_onnx(dir.file("m.qdq.onnx"));
      size_t changed = 0;
      for (const graph::Node* n : qdq->nodes()) {
        if (n->op_type() != "LayerNormalization") continue;
        const graph::Value* scale = original->find_value(n->input(1)->name());
        changed += !scale || std::memcmp(scale->constant().raw(), n->input(1)->constant().raw(),
                                         scale->constant().nbytes()) != 0;
      }
      EXPECT_EQ(changed, reports[0]["smoothquant"]["smoothed"].size());
    }
  }
  const auto& sq = reports[0]["smoothquant"];
  EXPECT_EQ(sq["alpha"], 0.5);
  ASSERT_FALSE(sq["smoothed"].empty());
  EXPECT_GT(sq["min_factor"].get<double>(), 0.0);
  EXPECT_GE(sq["max_factor"].get<double>(), sq["min_factor"].get<double>());
  for (const auto& s : sq["smoothed"]) {
    EXPECT_FALSE(s["consumers"].empty()) << s.dump();
    EXPECT_EQ(s["factors"].size(), s["channels"]) << s.dump();
  }
  for (const auto& k : sq["refused"]) EXPECT_FALSE(k["reason"].get<std::string>().empty());
  EXPECT_EQ(reports[0]["smoothquant"], reports[1]["smoothquant"]);
  EXPECT_EQ(reports[0]["activation_points"], reports[1]["activation_points"]);
  EXPECT_EQ(reports[0]["weight_points"], reports[1]["weight_points"]);
  EXPECT_FALSE(reports[2].contains("smoothquant"));
  EXPECT_NE(reports[0]["weight_points"], reports[2]["weight_points"]);
  std::printf(
      "vit_bn output SQNR on 10 val images: %.2f dB with --smoothquant 0.5, %.2f dB without\n",
      reports[0]["evaluation"]["sqnr_db"].get<double>(),
      reports[2]["evaluation"]["sqnr_db"].get<double>());
}

// --sensitivity: every quantized module in the table and the report, best first (the lowest KL
// to float); calibrating again with --skip of the best one writes the model its row measured,
// whose figures are then that run's "all quantized" ones, exactly.
TEST(CalibrateCli, SensitivityRanksModulesAsTheirSkipWouldWrite) {
  TempDir dir;
  const std::string common = "calibrate " + kResnet + " --data " + kTrain +
                             " --limit 32 --batch 16 --flip-injections 0 --sensitivity 8 ";
  auto r = run_cli(common + "-o " + dir.file("a.onnx") + " --report " + dir.file("a.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto a = nlohmann::json::parse(testing::read_text(dir.file("a.json")));
  const auto& s = a["sensitivity"];
  EXPECT_EQ(s["samples"], 8);
  const auto& modules = s["modules_best_first"];
  ASSERT_EQ(modules.size(), a["weight_points"].size());
  const std::string heading =
      "sensitivity  each of " + std::to_string(modules.size()) + " quantized modules";
  EXPECT_NE(r.out.find(heading), std::string::npos) << r.out;
  for (size_t i = 0; i < modules.size(); ++i) {
    const std::string name = modules[i]["module"];
    EXPECT_NE(r.out.find("| " + name + " (" + modules[i]["kind"].get<std::string>() + ")"),
              std::string::npos)
        << name;
    if (i > 0) {
      EXPECT_LE(modules[i - 1]["kl_to_float"].get<double>(),
                modules[i]["kl_to_float"].get<double>());
    }
  }
  const std::string best = modules[0]["module"];
  r = run_cli(common + "--skip " + best + " -o " + dir.file("b.onnx") + " --report " +
              dir.file("b.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto b = nlohmann::json::parse(testing::read_text(dir.file("b.json")));
  const auto& skipped = b["sensitivity"]["all_quantized"];
  for (const char* figure : {"sqnr_db", "cosine", "kl_to_float", "top1_agreement", "int8_top1"}) {
    EXPECT_EQ(skipped[figure].get<double>(), modules[0][figure].get<double>()) << figure;
  }
  EXPECT_EQ(b["sensitivity"]["modules_best_first"].size(), modules.size() - 1);
}

TEST(CalibrateCli, SensitivityOfNoSamplesIsRejected) {
  TempDir dir;
  auto r = run_cli("calibrate " + kResnet + " --data " + kGoldenInput + " --sensitivity 0 -o " +
                   dir.file("out.onnx"));
  expect_one_line_error(r, "--sensitivity");
  expect_no_files(dir);
}

// --target-sqnr: the modules the search keeps float are the first of the sensitivity
// measurement ranked by SQNR, the written model is byte for byte the one --skip of them writes,
// and it reaches the target on the sensitivity samples where the model with one module fewer
// float does not. A target the model meets as it is keeps nothing float and writes the plain
// model.
TEST(CalibrateCli, TargetSqnrKeepsTheCostliestModulesFloatAsSkipWould) {
  TempDir dir;
  // One run with `flags`, writing <stem>.onnx and <stem>.json: its stdout and its report.
  auto calibrate = [&](const std::string& flags, const std::string& stem) {
    const auto r =
        run_cli("calibrate " + kResnet + " --data " + kTrain +
                " --limit 32 --batch 16 --flip-injections 0 --sensitivity 16 " + flags + " -o " +
                dir.file(stem + ".onnx") + " --report " + dir.file(stem + ".json"));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return std::make_pair(r.out,
                          nlohmann::json::parse(testing::read_text(dir.file(stem + ".json"))));
  };
  auto joined = [](const std::vector<std::string>& names, size_t count) {
    std::string out = names[0];
    for (size_t i = 1; i < count; ++i) out += "," + names[i];
    return out;
  };
  const auto [plain_out, plain] = calibrate("", "plain");
  // The report ranks by KL; the search for an SQNR target by SQNR, ties in graph order, which
  // the report's order does not keep: order by SQNR with ties broken by the first appearance in
  // the weight table (graph order).
  std::vector<std::pair<double, std::string>> by_sqnr;
  for (const auto& m : plain["sensitivity"]["modules_best_first"]) {
    by_sqnr.emplace_back(m["sqnr_db"].get<double>(), m["module"].get<std::string>());
  }
  std::vector<std::string> graph_order;
  for (const auto& w : plain["weight_points"]) graph_order.push_back(w["node"]);
  auto position = [&](const std::string& name) {
    return std::find(graph_order.begin(), graph_order.end(), name) - graph_order.begin();
  };
  std::stable_sort(by_sqnr.begin(), by_sqnr.end(), [&](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : position(a.second) < position(b.second);
  });
  const double all_db = plain["sensitivity"]["all_quantized"]["sqnr_db"];
  // Just above what keeping the first module float gives: at least two modules float.
  const double target = by_sqnr[0].first + 0.01;
  ASSERT_GT(target, all_db);
  const auto [t_out, t] = calibrate("--target-sqnr " + std::to_string(target), "t");
  const auto kept = t["target"]["kept_float"].get<std::vector<std::string>>();
  ASSERT_GE(kept.size(), 2u);
  for (size_t i = 0; i < kept.size(); ++i) EXPECT_EQ(kept[i], by_sqnr[i].second) << i;
  EXPECT_GE(t["target"]["sqnr_db"].get<double>(), target);
  EXPECT_EQ(t["skip"].get<std::vector<std::string>>(), kept);
  EXPECT_NE(t_out.find("met with " + std::to_string(kept.size()) + " modules kept float"),
            std::string::npos)
      << t_out;

  calibrate("--skip " + joined(kept, kept.size()), "s");
  EXPECT_TRUE(testing::read_text(dir.file("s.onnx")) == testing::read_text(dir.file("t.onnx")))
      << "--target-sqnr wrote another model than --skip of the modules it kept float";
  // One module fewer float misses the target.
  const auto fewer = calibrate("--skip " + joined(kept, kept.size() - 1), "f").second;
  EXPECT_LT(fewer["sensitivity"]["all_quantized"]["sqnr_db"].get<double>(), target);

  const auto [met_out, met] = calibrate("--target-sqnr " + std::to_string(all_db - 1), "m");
  EXPECT_TRUE(met["target"]["kept_float"].empty());
  EXPECT_TRUE(testing::read_text(dir.file("m.onnx")) == testing::read_text(dir.file("plain.onnx")));
  EXPECT_NE(met_out.find("met with every module quantized"), std::string::npos) << met_out;
}

TEST(CalibrateCli, UnreachableOrInvalidTargetsAreRejected) {
  {
    TempDir dir;
    auto r = run_cli("calibrate " + kResnet + " --data " + kGoldenInput + " --target-sqnr 500 -o " +
                     dir.file("out.onnx") + " --report " + dir.file("r.json"));
    expect_one_line_error(r, "output SQNR >= 500 dB not reached");
    expect_no_files(dir);
  }
  {
    // A detector's output has no softmax to compare: refused before any work.
    TempDir dir;
    auto r = run_cli("calibrate " + data_path("models/yolo_bn.onnx") + " --data " + kTrain +
                     " --limit 8 --target-kl 0.001 -o " + dir.file("out.onnx"));
    expect_one_line_error(r, "--target-kl needs a [N, classes] model output");
    expect_no_files(dir);
  }
  {
    // Nor one of several outputs, whatever the shape of the first (the detector's [64, 3] scores
    // before its NMS).
    TempDir dir;
    io::write_npy(dir.file("x.npy"), testing::random_f32({1, 3, 32, 32}, 3, 0.0f, 1.0f));
    auto r = run_cli("calibrate " + data_path("models/ops/tiny_det_nms_opset11.onnx") + " --data " +
                     dir.file("x.npy") + " --batch 1 --target-kl 0.001 -o " + dir.file("out.onnx"));
    EXPECT_NE(r.exit_code, 0);  // after the note on its post-processing
    EXPECT_NE(r.err.find("qforge: error: calibrate: --target-kl needs a classifier's one [N, "
                         "classes] output;"),
              std::string::npos)
        << r.err;
    expect_no_files(dir, {"x.npy"});
  }
  for (const char* flag : {"--target-kl 0", "--target-kl -1", "--target-sqnr inf"}) {
    TempDir dir;
    auto r = run_cli("calibrate " + kResnet + " --data " + kGoldenInput + " " + flag + " -o " +
                     dir.file("out.onnx"));
    expect_one_line_error(r, std::string(flag).substr(0, std::string(flag).find(' ')));
    expect_no_files(dir);
  }
}

TEST(CalibrateCli, SmoothquantAlphaOutOfRangeIsRejected) {
  for (const char* alpha : {"1.5", "-0.25"}) {
    TempDir dir;
    auto r =
        run_cli("calibrate " + kResnet + " --data " + kGoldenInput + " --smoothquant=" + alpha +
                " -o " + dir.file("out.onnx") + " --report " + dir.file("r.json"));
    expect_one_line_error(r, "--smoothquant");
    EXPECT_NE(r.err.find(alpha), std::string::npos) << r.err;
    expect_no_files(dir);
  }
}

TEST(CalibrateCli, SmoothquantAlphaNotANumberIsRejected) {
  TempDir dir;
  auto r = run_cli("calibrate " + kResnet + " --data " + kGoldenInput + " --smoothquant half -o " +
                   dir.file("out.onnx"));
  // A usage error, reported by the command-line parser like any unconvertible value.
  EXPECT_NE(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("--smoothquant"), std::string::npos) << r.err;
  expect_no_files(dir);
}

}  // namespace
}  // namespace qforge
