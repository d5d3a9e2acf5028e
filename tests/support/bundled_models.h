// The bundled models (data/models/<name>.onnx) with their golden inputs, for tests that run a
// pass over a whole model and check that the outputs stay the same.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "graph/ir.h"
#include "graph/onnx_import.h"
#include "runtime/executor.h"
#include "runtime/resolve.h"
#include "tests/support/pass_tester.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge::testing {

struct BundledModel {
  std::string family;                   // "resnet" for "resnet_bn"
  kernels::Tensor input;                // the first `batch` rows of the family's golden input
  std::unique_ptr<graph::Graph> plain;  // loaded and resolved for that batch
};

// Loads bundled model `name` (e.g. "resnet_bn") resolved for `batch` images.
inline void load_bundled_model(const std::string& name, int64_t batch, BundledModel& out) {
  out.family = name.substr(0, name.rfind('_'));
  std::string input_path("golden/");
  input_path.append(out.family).append("_input.npy");
  out.input = io::read_npy(data_path(input_path));
  ASSERT_GE(out.input.dim(0), batch);
  out.input = out.input.slice_rows(0, batch).clone();
  std::string model_path("models/");
  model_path.append(name).append(".onnx");
  out.plain = graph::load_onnx(data_path(model_path));
  runtime::resolve(*out.plain,
                   {.input_shapes = runtime::input_shapes_for_batch(*out.plain, batch)});
}

// `transformed` computes what `plain` computes on `input`; `context` goes with every failure.
inline void expect_same_outputs(graph::Graph& plain, graph::Graph& transformed,
                                const kernels::Tensor& input, const std::string& context) {
  runtime::Executor a(plain), b(transformed);
  auto ref = a.run(std::span(&input, 1));
  auto got = b.run(std::span(&input, 1));
  ASSERT_EQ(ref.size(), got.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_EQ(ref[i].shape(), got[i].shape());
    EXPECT_LE(relative_max_diff(got[i], ref[i]), 1e-5) << context;
  }
}

}  // namespace qforge::testing
