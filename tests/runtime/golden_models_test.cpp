// Every bundled model, in both forms, reproduces PyTorch's output on its golden batch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "graph/onnx_import.h"
#include "runtime/session.h"
#include "tests/support/pass_tester.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

struct GoldenCase {
  std::string family;
  std::string form;  // "bn": BatchNorm kept; "folded": BN folded into Conv at export
};

using testing::data_path;
using testing::relative_max_diff;

void PrintTo(const GoldenCase& c, std::ostream* os) {
  *os << c.family << "_" << c.form;
}

class GoldenModel : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenModel, MatchesPyTorch) {
  const auto& c = GetParam();
  auto input = io::read_npy(data_path("golden/" + c.family + "_input.npy"));
  auto ref = io::read_npy(data_path("golden/" + c.family + "_" + c.form + "_output.npy"));
  runtime::Session session(
      graph::load_onnx(data_path("models/" + c.family + "_" + c.form + ".onnx")));
  auto outputs = session.run(input);
  ASSERT_EQ(outputs.size(), 1u);
  ASSERT_EQ(outputs[0].shape(), ref.shape());
  EXPECT_LE(relative_max_diff(outputs[0], ref), 1e-4);

  // One image at a time gives each row the same answer as the whole batch.
  for (int64_t i = 0; i < input.dim(0); ++i) {
    kernels::Tensor row = input.slice_rows(i, i + 1).clone();
    auto single = session.run(row);
    kernels::Tensor ref_row = ref.slice_rows(i, i + 1);
    EXPECT_LE(relative_max_diff(single[0], ref_row), 1e-4) << "image " << i;
  }
}

std::vector<GoldenCase> all_cases() {
  std::vector<GoldenCase> cases;
  for (const char* family : {"resnet", "mobilenet_v3", "efficientnet", "convnext", "vit", "swin"}) {
    for (const char* form : {"bn", "folded"}) cases.push_back({family, form});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Bundled, GoldenModel, ::testing::ValuesIn(all_cases()),
                         [](const auto& p) { return p.param.family + "_" + p.param.form; });

}  // namespace
}  // namespace qforge
