// `qforge run -o` writes an int64 output (ArgMax's indices) as an int64 .npy, stacked along the
// batch like the float outputs, equal to ONNX Runtime's on the same data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/tensor.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;

TEST(Int64OutputCli, RunWritesArgMaxIndicesAsInt64) {
  testing::TempDir dir;
  const std::string model = testing::data_path("models/ops/argmax.onnx");  // batch 2 declared
  Tensor x = testing::random_f32({6, 3, 4, 5}, 9, -2.0f, 2.0f);
  for (int64_t i = 0; i < x.numel(); ++i) {
    x.data<float>()[i] = std::round(x.data<float>()[i] * 2.0f) / 2.0f;  // ties
  }
  io::write_npy(dir.file("x.npy"), x);
  const auto r = testing::run_cli("run " + model + " --data " + dir.file("x.npy") +
                                  " --batch 4 -o " + dir.file("y.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // ONNX Runtime runs the file's batch of 2: three runs, their indices side by side.
  std::vector<std::vector<int64_t>> want(2);
  const int64_t sample = x.numel() / 6;
  for (int64_t begin = 0; begin < 6; begin += 2) {
    Tensor rows(DType::kFloat32, {2, 3, 4, 5});
    std::copy_n(x.data<float>() + begin * sample, 2 * sample, rows.data<float>());
    const std::vector<Tensor> outputs = testing::run_ort(model, {rows});
    ASSERT_EQ(outputs.size(), 2u);
    for (size_t k = 0; k < 2; ++k) {
      const std::vector<int64_t> v = outputs[k].to_int64_vector();
      want[k].insert(want[k].end(), v.begin(), v.end());
    }
  }
  const Tensor y0 = io::read_npy(dir.file("y.npy"));
  const Tensor y1 = io::read_npy(dir.file("y.1.npy"));
  ASSERT_EQ(y0.dtype(), DType::kInt64);
  ASSERT_EQ(y1.dtype(), DType::kInt64);
  EXPECT_EQ(y0.shape(), (kernels::Shape{6, 4, 5}));
  EXPECT_EQ(y1.shape(), (kernels::Shape{6, 3, 4, 1}));
  EXPECT_EQ(y0.to_int64_vector(), want[0]);
  EXPECT_EQ(y1.to_int64_vector(), want[1]);
}

}  // namespace
}  // namespace qforge
