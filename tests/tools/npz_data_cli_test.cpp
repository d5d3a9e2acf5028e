// --data as an .npz keyed by input name: a two-input model (x float32, ids int64; y = x +
// float(ids)) fed through `run` and `compare`, and each way an archive can disagree with the
// model, named in the error.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <limits>
#include <map>
#include <string>
#include <vector>

#include "kernels/tensor.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::expect_one_line_error;
using testing::run_cli;
using testing::TempDir;

std::string two_input_model() {
  onnx::ModelProto model;
  model.set_ir_version(8);
  model.add_opset_import()->set_version(17);
  auto* g = model.mutable_graph();
  g->set_name("two_inputs");
  auto declare = [](onnx::ValueInfoProto* v, const char* name, int type) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(type);
    t->mutable_shape()->add_dim()->set_dim_param("N");
    t->mutable_shape()->add_dim()->set_dim_value(4);
  };
  declare(g->add_input(), "x", onnx::TensorProto::FLOAT);
  declare(g->add_input(), "ids", onnx::TensorProto::INT64);
  declare(g->add_output(), "y", onnx::TensorProto::FLOAT);
  auto* cast = g->add_node();
  cast->set_op_type("Cast");
  cast->set_name("cast");
  cast->add_input("ids");
  cast->add_output("ids_float");
  auto* to = cast->add_attribute();
  to->set_name("to");
  to->set_type(onnx::AttributeProto::INT);
  to->set_i(onnx::TensorProto::FLOAT);
  auto* add = g->add_node();
  add->set_op_type("Add");
  add->set_name("add");
  add->add_input("x");
  add->add_input("ids_float");
  add->add_output("y");
  return model.SerializeAsString();
}

Tensor floats(int64_t rows, int64_t cols) {
  std::vector<float> v;
  for (int64_t i = 0; i < rows * cols; ++i) v.push_back(0.5f * static_cast<float>(i));
  return Tensor::from_vector({rows, cols}, v);
}

Tensor ids(int64_t rows, int64_t cols) {
  std::vector<int64_t> v;
  for (int64_t i = 0; i < rows * cols; ++i) v.push_back(100 * i - 7);
  return Tensor::from_vector({rows, cols}, v);
}

struct NpzCase : ::testing::Test {
  TempDir dir;
  std::string model = dir.file("two.onnx");
  void SetUp() override { testing::write_bytes(model, two_input_model()); }
  std::string npz(const std::string& name, const std::map<std::string, Tensor>& arrays) {
    io::write_npz(dir.file(name), arrays);
    return dir.file(name);
  }
};

TEST_F(NpzCase, FeedsEveryInputByName) {
  std::string data = npz("in.npz", {{"x", floats(5, 4)}, {"ids", ids(5, 4)}});
  auto r = run_cli("run " + model + " --data " + data + " --batch 2 -o " + dir.file("y.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Tensor y = io::read_npy(dir.file("y.npy"));
  ASSERT_EQ(y.describe(), "float32[5, 4]");
  for (int64_t i = 0; i < 20; ++i) {
    EXPECT_EQ(y.data<float>()[i], 0.5f * static_cast<float>(i) + static_cast<float>(100 * i - 7));
  }
  r = run_cli("compare " + model + " " + model + " --data " + data);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("(5 samples"), std::string::npos) << r.out;
}

TEST_F(NpzCase, DisagreementsNameTheInput) {
  auto r = run_cli("run " + model + " --data " + npz("missing.npz", {{"x", floats(2, 4)}}));
  expect_one_line_error(r,
                        "missing.npz': model input 'ids' has no array of its name (the "
                        "archive holds 'x' float32[2, 4])");
  r = run_cli("run " + model + " --data " +
              npz("dtype.npz", {{"x", floats(2, 4)}, {"ids", floats(2, 4)}}));
  expect_one_line_error(r, "dtype.npz': model input 'ids' takes int64, the array is float32[2, 4]");
  r = run_cli("run " + model + " --data " +
              npz("shape.npz", {{"x", floats(2, 5)}, {"ids", ids(2, 4)}}));
  expect_one_line_error(r,
                        "shape.npz': model input 'x' takes samples of shape [4], the array holds "
                        "[5]");
  r = run_cli("run " + model + " --data " +
              npz("rows.npz", {{"x", floats(2, 4)}, {"ids", ids(3, 4)}}));
  expect_one_line_error(r, "rows.npz': model input 'ids': the array holds 3 samples, 'x' holds 2");
  r = run_cli("run " + model + " --data " +
              npz("flags.npz", {{"x", floats(2, 4)}, {"ids", ids(2, 4)}}) + " --mean 0.5");
  expect_one_line_error(r, "apply to image folders; '" + dir.file("flags.npz") + "' is an .npz");
}

TEST_F(NpzCase, NonFiniteSampleIsNamed) {
  Tensor x = floats(3, 4);
  x.data<float>()[9] = std::numeric_limits<float>::quiet_NaN();
  auto r = run_cli("run " + model + " --data " + npz("nan.npz", {{"x", x}, {"ids", ids(3, 4)}}));
  expect_one_line_error(r, "input 'x', sample 2");
}

}  // namespace
}  // namespace qforge
