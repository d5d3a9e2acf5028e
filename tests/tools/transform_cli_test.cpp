// `qforge plan` and `qforge transform` end to end: the printed plan and counts, the plan JSON
// round trip, a match turned off in the JSON, equivalence of every bundled model as written,
// and bad input (one error line, non-zero exit, no file).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "graph/onnx_import.h"
#include "graph/transform.h"
#include "runtime/session.h"
#include "runtime/transform_pipeline.h"
#include "tests/support/batch_models.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using testing::count_lines;
using testing::data_path;
using testing::read_text;
using testing::run_cli;
using testing::TempDir;

const std::string kResnet = data_path("models/resnet_bn.onnx");
const std::string kGoldenArgs = " --batch 4 --data " + data_path("golden/resnet_input.npy");

using testing::expect_one_line_error;

nlohmann::json read_json(const std::string& path) {
  return nlohmann::json::parse(read_text(path));
}

// Index of the first match the plan applies, or -1.
int first_applied(const nlohmann::json& plan) {
  const auto& matches = plan.at("matches");
  for (size_t i = 0; i < matches.size(); ++i) {
    if (matches[i].at("apply").get<bool>()) return static_cast<int>(i);
  }
  return -1;
}

std::map<std::string, std::string> op_by_node_name(const std::string& onnx_path) {
  auto g = graph::load_onnx(onnx_path);
  std::map<std::string, std::string> ops;
  for (const graph::Node* n : g->nodes()) ops[n->name()] = n->op_type();
  return ops;
}

TEST(TransformCli, HelpListsCommandsAndTheBatch) {
  auto top = run_cli("--help");
  EXPECT_NE(top.out.find("plan"), std::string::npos);
  EXPECT_NE(top.out.find("transform"), std::string::npos);
  auto help = run_cli("transform --help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag :
       {"--plan", "--report", "--batch", "--data", "--dynamic-batch", "keeps the batch"}) {
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  }
}

TEST(TransformCli, PlanPrintsOneLinePerMatchAndCountsPerPattern) {
  TempDir dir;
  auto r = run_cli("plan " + kResnet + " -o " + dir.file("p.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  nlohmann::json plan = read_json(dir.file("p.json"));
  const auto& matches = plan.at("matches");
  std::map<std::string, std::pair<int, int>> counts;  // pattern -> applied, skipped
  for (const auto& m : matches) {
    const std::string anchor = m.at("anchor").get<std::string>();
    const std::string pattern = m.at("pattern").get<std::string>();
    auto& c = counts[pattern];
    (m.at("apply").get<bool>() ? c.first : c.second)++;
    // The match's line: its anchor, then its pattern, its apply flag and any reason.
    std::string flag = m.at("apply").get<bool>() ? "yes" : "no";
    bool found = false;
    size_t at = 0;
    while (!found && (at = r.out.find("  " + anchor + " ", at)) != std::string::npos) {
      std::string line = r.out.substr(at, r.out.find('\n', at) - at);
      found = line.find(" " + pattern + " ") != std::string::npos &&
              line.find(" " + flag) != std::string::npos &&
              line.find(m.at("reason").get<std::string>()) != std::string::npos;
      ++at;
    }
    EXPECT_TRUE(found) << "no line for match " << m.at("id") << " in\n" << r.out;
  }
  std::string header = "matches      ";
  header.append(std::to_string(matches.size()));
  EXPECT_NE(r.out.find(header), std::string::npos) << r.out;
  for (const auto& [pattern, c] : counts) {
    std::string line = "  ";
    line.append(pattern)
        .append(": applied ")
        .append(std::to_string(c.first))
        .append(", skipped ")
        .append(std::to_string(c.second))
        .append("\n");
    EXPECT_NE(r.out.find(line), std::string::npos) << line << r.out;
  }
  // The conversion report lists what each conversion applied (resnet's identity pool and
  // flatten->linear conversions among them, once the conversion lists hold them).
  EXPECT_NE(r.out.find("conversions  "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("plan         written to"), std::string::npos) << r.out;
}

TEST(TransformCli, PlanJsonRoundTripWritesTheSameModel) {
  TempDir dir;
  ASSERT_EQ(run_cli("plan " + kResnet + " -o " + dir.file("p.json")).exit_code, 0);
  auto with_plan = run_cli("transform " + kResnet + " --plan " + dir.file("p.json") + " -o " +
                           dir.file("planned.onnx"));
  ASSERT_EQ(with_plan.exit_code, 0) << with_plan.err;
  auto fresh = run_cli("transform " + kResnet + " -o " + dir.file("fresh.onnx"));
  ASSERT_EQ(fresh.exit_code, 0) << fresh.err;
  EXPECT_NE(fresh.out.find("verdict      equivalent"), std::string::npos) << fresh.out;
  std::string a = read_text(dir.file("planned.onnx"));
  ASSERT_FALSE(a.empty());
  EXPECT_TRUE(a == read_text(dir.file("fresh.onnx")));
}

TEST(TransformCli, MatchTurnedOffInTheJsonStaysUnfused) {
  TempDir dir;
  ASSERT_EQ(run_cli("plan " + kResnet + " -o " + dir.file("p.json")).exit_code, 0);
  nlohmann::json plan = read_json(dir.file("p.json"));
  const int off = first_applied(plan);
  if (off < 0) GTEST_SKIP() << "no fusion applies to resnet_bn with today's pattern lists";
  plan["matches"][off]["apply"] = false;
  testing::write_bytes(dir.file("off.json"), plan.dump(2));

  auto r = run_cli("transform " + kResnet + kGoldenArgs + " --plan " + dir.file("off.json") +
                   " -o " + dir.file("off.onnx") + " --report " + dir.file("off_report.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(run_cli("transform " + kResnet + kGoldenArgs + " -o " + dir.file("all.onnx") +
                    " --report " + dir.file("all_report.json"))
                .exit_code,
            0);

  // The match's nodes keep their names and op types in the written model (a lowered module's
  // nodes are named after the module), and none of them does when every match applies.
  auto source_ops = op_by_node_name(kResnet);
  auto off_ops = op_by_node_name(dir.file("off.onnx"));
  auto all_ops = op_by_node_name(dir.file("all.onnx"));
  for (const auto& n : plan["matches"][off]["nodes"]) {
    const std::string name = n.at("name").get<std::string>();
    ASSERT_TRUE(off_ops.count(name)) << name;
    if (source_ops.count(name)) {
      EXPECT_EQ(off_ops[name], source_ops[name]) << name;
    }
    EXPECT_FALSE(all_ops.count(name)) << name;
  }

  // One match fewer applied for its pattern, one more skipped; still equivalent.
  const std::string pattern = plan["matches"][off]["pattern"].get<std::string>();
  nlohmann::json off_report = read_json(dir.file("off_report.json"));
  nlohmann::json all_report = read_json(dir.file("all_report.json"));
  auto count_of = [&](const nlohmann::json& report, const char* field) {
    for (const auto& c : report.at("fusions")) {
      if (c.at("pattern") == pattern) return c.at(field).get<int>();
    }
    return -1;
  };
  EXPECT_EQ(count_of(off_report, "applied"), count_of(all_report, "applied") - 1);
  EXPECT_EQ(count_of(off_report, "skipped"), count_of(all_report, "skipped") + 1);
  EXPECT_EQ(off_report.at("lowered_modules").get<int>(),
            all_report.at("lowered_modules").get<int>() - 1);
  EXPECT_TRUE(off_report.at("equivalence").at("equivalent").get<bool>());
  EXPECT_LE(off_report.at("equivalence").at("relative_max_abs_diff").get<double>(),
            runtime::kEquivalenceTolerance);
  EXPECT_FALSE(off_report.at("plan").at("matches")[off].at("apply").get<bool>());
}

TEST(TransformCli, ReportHoldsCountsPlanAndFigures) {
  TempDir dir;
  auto r = run_cli("transform " + kResnet + " -o " + dir.file("m.onnx") + " --report " +
                   dir.file("r.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json report = read_json(dir.file("r.json"));
  EXPECT_EQ(report.at("batch").get<int>(), 1);
  EXPECT_EQ(report.at("fusions").size(), graph::all_fusion_patterns().size());
  EXPECT_EQ(report.at("conversions").size(), graph::all_conversion_patterns().size());
  EXPECT_TRUE(report.at("plan").at("matches").is_array());
  const auto& eq = report.at("equivalence");
  EXPECT_TRUE(eq.at("equivalent").get<bool>());
  EXPECT_EQ(eq.at("checked").get<std::string>(), "written model");
  EXPECT_DOUBLE_EQ(eq.at("relative_max_abs_diff").get<double>(),
                   eq.at("max_abs_diff").get<double>() /
                       std::max(1.0, eq.at("max_abs_reference").get<double>()));
  auto written = graph::load_onnx(dir.file("m.onnx"));
  // The model's symbolic batch stays symbolic, under its name.
  EXPECT_EQ(written->inputs()[0]->shape()->at(0), -1);
  EXPECT_EQ(testing::declared_batch_text(dir.file("m.onnx")),
            std::make_pair(std::string("batch"), std::string("batch")));
}

// Every bundled model, in both forms, with a fresh plan and with its saved plan: the same file,
// and that file run by the runtime agrees with the original on the golden batch.
class TransformCliModel : public ::testing::TestWithParam<std::string> {};

TEST_P(TransformCliModel, WrittenModelIsEquivalentOnTheGoldenBatch) {
  TempDir dir;
  const std::string name = GetParam();
  const std::string family = name.substr(0, name.rfind('_'));
  const std::string model = data_path("models/" + name + ".onnx");
  const std::string input_path = data_path("golden/" + family + "_input.npy");
  const std::string args = model + " --batch 4 --data " + input_path;
  ASSERT_EQ(run_cli("plan " + model + " --batch 4 -o " + dir.file("p.json")).exit_code, 0);
  auto fresh = run_cli("transform " + args + " -o " + dir.file("fresh.onnx"));
  ASSERT_EQ(fresh.exit_code, 0) << fresh.err;
  auto planned =
      run_cli("transform " + args + " --plan " + dir.file("p.json") + " -o " + dir.file("p.onnx"));
  ASSERT_EQ(planned.exit_code, 0) << planned.err;
  EXPECT_TRUE(read_text(dir.file("fresh.onnx")) == read_text(dir.file("p.onnx")));

  kernels::Tensor input = io::read_npy(input_path);
  runtime::Session original(graph::load_onnx(model));
  runtime::Session written(graph::load_onnx(dir.file("fresh.onnx")));
  auto a = original.run(input);
  auto b = written.run(input);
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    ASSERT_EQ(a[k].shape(), b[k].shape());
    double max_diff = 0, max_ref = 0;
    auto ra = a[k].span<float>(), rb = b[k].span<float>();
    for (size_t i = 0; i < ra.size(); ++i) {
      max_diff = std::max(max_diff, std::abs(double(ra[i]) - double(rb[i])));
      max_ref = std::max(max_ref, std::abs(double(ra[i])));
    }
    EXPECT_LE(max_diff / std::max(1.0, max_ref), runtime::kEquivalenceTolerance) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Bundled, TransformCliModel,
                         ::testing::ValuesIn(testing::kBundledModelNames));

TEST(TransformCli, UnwritableOutputLeavesNothing) {
  TempDir dir;
  expect_one_line_error(run_cli("transform " + kResnet + " -o " + dir.file("no_such_dir/m.onnx")),
                        "no_such_dir/m.onnx");
  expect_one_line_error(run_cli("plan " + kResnet + " -o " + dir.file("no_such_dir/p.json")),
                        "no_such_dir/p.json");
  // An unwritable report stops the model from being written too.
  expect_one_line_error(run_cli("transform " + kResnet + " -o " + dir.file("m.onnx") +
                                " --report " + dir.file("no_such_dir/r.json")),
                        "no_such_dir/r.json");
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(TransformCli, MalformedPlanJsonNamesTheFile) {
  TempDir dir;
  testing::write_bytes(dir.file("bad.json"), "{\"matches\": [ {\"id\": 0, ");
  auto r = run_cli("transform " + kResnet + " --plan " + dir.file("bad.json") + " -o " +
                   dir.file("m.onnx"));
  expect_one_line_error(r, "bad.json");
  testing::write_bytes(dir.file("fields.json"), "{\"matches\": [{\"id\": 0}]}");
  r = run_cli("transform " + kResnet + " --plan " + dir.file("fields.json") + " -o " +
              dir.file("m.onnx"));
  expect_one_line_error(r, "fields.json");
  expect_one_line_error(run_cli("transform " + kResnet + " --plan " + dir.file("absent.json") +
                                " -o " + dir.file("m.onnx")),
                        "absent.json");
  EXPECT_FALSE(std::filesystem::exists(dir.file("m.onnx")));
}

TEST(TransformCli, PlanForAnotherModelIsRefusedNamingTheEntry) {
  TempDir dir;
  // A hand-written entry over nodes this model lacks.
  std::vector<graph::Pattern> fusions = graph::all_fusion_patterns();
  nlohmann::json entry{{"id", 3},
                       {"pattern", fusions.empty() ? "ConvBNAct" : fusions.front().name},
                       {"anchor", "/elsewhere/Conv"},
                       {"nodes", {{{"role", "conv"}, {"name", "/elsewhere/Conv"}}}},
                       {"apply", true},
                       {"reason", ""}};
  nlohmann::json plan{{"matches", {entry}}};
  testing::write_bytes(dir.file("foreign.json"), plan.dump());
  auto r = run_cli("transform " + kResnet + " --plan " + dir.file("foreign.json") + " -o " +
                   dir.file("m.onnx"));
  expect_one_line_error(r, "match #3");
  EXPECT_NE(r.err.find("foreign.json"), std::string::npos) << r.err;

  // The plan of another bundled model, when it has any matches.
  ASSERT_EQ(
      run_cli("plan " + data_path("models/vit_bn.onnx") + " -o " + dir.file("vit.json")).exit_code,
      0);
  if (!read_json(dir.file("vit.json")).at("matches").empty()) {
    r = run_cli("transform " + kResnet + " --plan " + dir.file("vit.json") + " -o " +
                dir.file("m.onnx"));
    expect_one_line_error(r, "match #");
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("m.onnx")));
}

TEST(TransformCli, DataFewerThanTheBatchIsRefused) {
  TempDir dir;
  auto r = run_cli("transform " + kResnet + " --batch 8 --data " +
                   data_path("golden/resnet_input.npy") + " -o " + dir.file("m.onnx"));
  expect_one_line_error(r, "--batch 8");
  EXPECT_FALSE(std::filesystem::exists(dir.file("m.onnx")));
}

}  // namespace
}  // namespace qforge
