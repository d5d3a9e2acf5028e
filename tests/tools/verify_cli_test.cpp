// `qforge verify` as a program: its help shows the workflow, and bad input is one line naming
// the flag, file or node, with a non-zero exit and no report written. (Checks against ONNX
// Runtime on the bundled models: tests/quant/qdq_models_ort_test.cpp.)
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "graph/onnx_export.h"
#include "runtime/resolve.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::run_cli;
using testing::TempDir;

// x[2, 4] → QuantizeLinear 'Q' → DequantizeLinear → y, written to `path`.
void write_one_point_model(const std::string& path) {
  graph::Graph g;
  g.opset = 13;
  graph::Value* x = g.add_input("x", DType::kFloat32, graph::Shape{2, 4});
  graph::Value* s = g.add_constant("s", Tensor::from_vector<float>({}, {0.1f}));
  graph::Value* zp = g.add_constant("zp", Tensor::from_vector<int8_t>({}, {0}));
  graph::Value* q =
      g.add_node(
           {.name = "Q", .op_type = "QuantizeLinear", .inputs = {x, s, zp}, .output_names = {"q"}})
          ->output(0);
  g.mark_output(g.add_node({.name = "DQ",
                            .op_type = "DequantizeLinear",
                            .inputs = {q, s, zp},
                            .output_names = {"y"}})
                    ->output(0));
  runtime::resolve(g, {});
  graph::save_onnx(g, path);
}

TEST(VerifyCli, HelpShowsTheWorkflow) {
  const auto r = run_cli("verify --help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* s : {"--reference", "--data", "--tolerance", "--report", "--mark-outputs",
                        "--runner", "node tools/ort_dump.js", "polygraphy run", "--save-outputs",
                        "teacher forcing", "mismatches", "flips"}) {
    EXPECT_NE(r.out.find(s), std::string::npos) << s;
  }
}

TEST(VerifyCli, ExactReferencePassesAndAlteredOneFails) {
  TempDir dir;
  write_one_point_model(dir.file("m.onnx"));
  const Tensor x =
      Tensor::from_vector<float>({2, 4}, {0.11f, 0.3f, -0.52f, 1.f, 0.f, 2.f, -7.f, 0.04f});
  io::write_npy(dir.file("x.npy"), x);
  Tensor q = Tensor::from_vector<int8_t>({2, 4}, {1, 3, -5, 10, 0, 20, -70, 0});
  io::write_npz(dir.file("ref.npz"), {{"q", q}});
  const std::string args =
      "verify " + dir.file("m.onnx") + " --data " + dir.file("x.npy") + " --reference ";
  const auto good = run_cli(args + dir.file("ref.npz") + " --report " + dir.file("r.json"));
  EXPECT_EQ(good.exit_code, 0) << good.out << good.err;
  EXPECT_NE(good.out.find("verdict      pass: no mismatch; 0 rounding flips"), std::string::npos)
      << good.out;
  EXPECT_TRUE(std::filesystem::exists(dir.file("r.json")));
  q.data<int8_t>()[6] = -72;
  io::write_npz(dir.file("bad.npz"), {{"q", q}});
  const auto bad = run_cli(args + dir.file("bad.npz"));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.out.find("MISMATCH node 'Q' element 6 [1, 2]: qforge -70, reference -72"),
            std::string::npos)
      << bad.out;
}

TEST(VerifyCli, BadInputIsOneLine) {
  TempDir dir;
  write_one_point_model(dir.file("m.onnx"));
  io::write_npy(dir.file("x.npy"), Tensor(DType::kFloat32, {2, 4}));
  io::write_npz(dir.file("other.npz"), {{"unrelated", Tensor(DType::kFloat32, {3})}});
  const std::string base = "verify " + dir.file("m.onnx") + " --data " + dir.file("x.npy");
  testing::expect_one_line_error(run_cli(base), "--reference is required");
  testing::expect_one_line_error(
      run_cli(base + " --reference " + dir.file("other.npz") + " --report " + dir.file("r.json")),
      "no value for node 'Q' (QuantizeLinear) output 'q'");
  EXPECT_FALSE(std::filesystem::exists(dir.file("r.json")));
  testing::expect_one_line_error(run_cli(base + " --reference " + dir.file("none.npz")),
                                 dir.file("none.npz"));
  testing::expect_one_line_error(
      run_cli(base + " --reference " + dir.file("other.npz") + " --tolerance 0.7"), "--tolerance");
}

}  // namespace
}  // namespace qforge
