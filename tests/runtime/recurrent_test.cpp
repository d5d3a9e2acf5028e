// RNN, GRU and LSTM unrolled on import (graph/rnn_import.h), on the models of
// data/generate/recurrent_models.py: every form against ONNX Runtime, PyTorch's exports trained
// one step against PyTorch's outputs and parameter gradients, the forms not unrolled refused
// naming the node, and a CRNN text recognizer through run, calibrate and qat.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <functional>
#include <string>
#include <vector>

#include "fuzz/seed_models.h"
#include "graph/onnx_import.h"
#include "kernels/tensor.h"
#include "runtime/session.h"
#include "runtime/training.h"
#include "tests/support/errors.h"
#include "tests/support/float_checks.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"
#include "tests/support/training_golden.h"
#include "tools/io/npy.h"
#include "tools/io/npz.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::data_path;

std::string model_path(const std::string& name) {
  return data_path("models/ops/" + name + ".onnx");
}

bool recurrent(const std::string& op) {
  return op == "LSTM" || op == "GRU" || op == "RNN";
}

// Each model at batch 3 (its dynamic axis) in qforge and in ONNX Runtime on the same inputs:
// the sequences, both directions, the final states.
TEST(Recurrent, EveryFormMatchesOnnxRuntime) {
  for (const char* name :
       {"lstm_bidirectional", "gru_initial_state", "rnn_relu", "crnn", "recurrent_forms"}) {
    SCOPED_TRACE(name);
    const std::string path = model_path(name);
    auto graph = graph::load_onnx(path);
    for (const graph::Node* n : graph->nodes()) EXPECT_FALSE(recurrent(n->op_type()));
    std::vector<Tensor> inputs;
    uint32_t seed = 40;
    for (const graph::Value* input : graph->inputs()) {
      ASSERT_TRUE(input->has_shape());
      kernels::Shape shape = *input->shape();
      for (int64_t& d : shape) d = d < 0 ? 3 : d;
      inputs.push_back(testing::random_f32(shape, seed++, -1.5f, 1.5f));
    }
    runtime::Session session(std::move(graph));
    const std::vector<Tensor> want = testing::run_ort(path, inputs);
    const std::span<const Tensor> got = session.run(inputs);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      testing::expect_close_scaled(got[i], want[i], 1e-5, "output " + std::to_string(i));
    }
  }
}

// One training step through the unrolled steps (back through time): the outputs and every
// parameter's gradient (W, R and B of each layer, in ONNX's gate order; the GRU's learned
// initial state) against PyTorch's.
TEST(Recurrent, TrainingGradientsMatchPyTorch) {
  for (auto [name, parameters] : {std::pair{"lstm_bidirectional", 6},
                                  std::pair{"gru_initial_state", 4}, std::pair{"rnn_relu", 3}}) {
    SCOPED_TRACE(name);
    auto graph = graph::load_onnx(model_path(name));
    const auto golden = io::read_npz(data_path(std::string("models/ops/") + name + ".npz"));
    graph::Value* x = graph->inputs().front();
    x->set_type(x->dtype(), golden.at("x").shape());  // the golden's batch (the file's is free)
    testing::expect_training_step_matches(*graph, golden, runtime::trainable_initializers(*graph),
                                          1e-5, static_cast<size_t>(parameters));
  }
}

// Layout 1 (batch first), which ONNX Runtime does not run, computes the layout-0 LSTM's outputs
// transposed, bit for bit.
TEST(Recurrent, BatchFirstLayoutIsTheStepsFirstOneTransposed) {
  const Tensor x = testing::random_f32({2, 6, 3}, 60, -1.5f, 1.5f);
  const Tensor h0 = testing::random_f32({2, 1, 4}, 61, -1.0f, 1.0f);
  const Tensor c0 = testing::random_f32({2, 1, 4}, 62, -1.0f, 1.0f);
  runtime::Session batch_first(graph::load_onnx(model_path("lstm_layout1")));
  std::vector<Tensor> got;
  for (const Tensor& t : batch_first.run(std::vector<Tensor>{x, h0, c0})) got.push_back(t.clone());
  // recurrent_forms takes x [6, 2, 3], h0 and c0 [1, 2, 4], and a GRU's input g.
  auto transposed = [](const Tensor& t, std::vector<int64_t> perm) {
    kernels::Shape shape;
    for (int64_t p : perm) shape.push_back(t.dim(static_cast<int>(p)));
    Tensor out(DType::kFloat32, shape);
    const int64_t rank = t.rank();
    std::vector<int64_t> index(static_cast<size_t>(rank), 0);
    for (int64_t i = 0; i < out.numel(); ++i) {
      int64_t rest = i, from = 0;
      for (int64_t d = rank - 1; d >= 0; --d) {
        index[static_cast<size_t>(perm[static_cast<size_t>(d)])] =
            rest % shape[static_cast<size_t>(d)];
        rest /= shape[static_cast<size_t>(d)];
      }
      for (int64_t d = 0; d < rank; ++d) from = from * t.dim(static_cast<int>(d)) + index[d];
      out.data<float>()[i] = t.data<float>()[from];
    }
    return out;
  };
  runtime::Session steps_first(graph::load_onnx(model_path("recurrent_forms")));
  const std::span<const Tensor> want = steps_first.run(std::vector<Tensor>{
      transposed(x, {1, 0, 2}), transposed(h0, {1, 0, 2}), transposed(c0, {1, 0, 2}),
      testing::random_f32({6, 2, 3}, 63, -1.5f, 1.5f)});
  ASSERT_EQ(got.size(), 3u);
  // y [B, T, 1, H] is y [T, 1, B, H] with its axes (2, 0, 1, 3); y_h, y_c [B, 1, H] of [1, B, H].
  EXPECT_EQ(got[0].to_float_vector(), transposed(want[0], {2, 0, 1, 3}).to_float_vector());
  EXPECT_EQ(got[1].to_float_vector(), transposed(want[1], {1, 0, 2}).to_float_vector());
  EXPECT_EQ(got[2].to_float_vector(), transposed(want[2], {1, 0, 2}).to_float_vector());
  EXPECT_EQ(got[0].shape(), (kernels::Shape{2, 6, 1, 4}));
}

// The importer fuzz target's seed of the rewritten ops (fuzz/seed_models.h: LSTM, GRU, Einsums,
// Sum, Mean) computes what ONNX Runtime does, so that its mutations start from a model that runs.
TEST(Recurrent, TheRecurrentFuzzSeedRunsAsOnnxRuntimeRunsIt) {
  testing::TempDir dir;
  const std::string path = dir.file("recurrent_net.onnx");
  testing::write_bytes(path, fuzz::recurrent_net_model());
  const Tensor x = testing::random_f32({3, 5, 3}, 70, -1.5f, 1.5f);
  runtime::Session session(graph::load_onnx(path));
  const std::span<const Tensor> got = session.run(x);
  const std::vector<Tensor> want = testing::run_ort(path, {x});
  ASSERT_EQ(got.size(), 2u);
  ASSERT_EQ(want.size(), 2u);
  for (size_t o = 0; o < got.size(); ++o) {
    testing::expect_close_scaled(got[o], want[o], 1e-5, "output " + std::to_string(o));
  }
}

// A one-node model of `op` on x [5, 2, 3] (steps first) with hidden size 4 and one direction,
// its W, R (and B) initializers; `edit` changes the node.
using Edit = std::function<void(onnx::NodeProto&, onnx::GraphProto&)>;

std::string one_node(const std::string& op, const Edit& edit, bool dynamic_steps = false) {
  fuzz::ModelWriter m("one_node");
  m.opset(14);
  const int64_t gates = op == "LSTM" ? 4 : op == "GRU" ? 3 : 1;
  if (dynamic_steps) {
    m.input("x", {-1, 2, 3});
  } else {
    m.input("x", {5, 2, 3});
  }
  m.output("y", {});
  m.graph()->mutable_output(0)->mutable_type()->mutable_tensor_type()->clear_shape();
  m.weight("w", {1, gates * 4, 3});
  m.weight("r", {1, gates * 4, 4});
  onnx::NodeProto* node = m.node(op, "cell", {"x", "w", "r"}, {"y"});
  fuzz::ModelWriter::integer(node, "hidden_size", 4);
  edit(*node, *m.graph());
  return m.bytes();
}

std::string refusal(ErrorKind kind, const std::string& op, const Edit& edit,
                    bool dynamic_steps = false) {
  const std::string bytes = one_node(op, edit, dynamic_steps);
  return testing::error_of(kind, [&] { graph::parse_onnx(bytes, "m.onnx"); });
}

// A STRINGS attribute (the activations).
void add_strings(onnx::NodeProto& n, const char* name, const std::vector<std::string>& values) {
  auto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::STRINGS);
  for (const auto& v : values) a->add_strings(v);
}

// The forms qforge does not unroll, and malformed nodes, named with what was expected.
TEST(Recurrent, FormsNotUnrolledAreRefusedNamingTheNode) {
  const std::string base = "import: node 'cell' ";
  auto expect_has = [](const std::string& message, const std::string& part) {
    EXPECT_NE(message.find(part), std::string::npos) << message;
  };
  expect_has(refusal(ErrorKind::kUnsupported, "LSTM",
                     [](onnx::NodeProto& n, onnx::GraphProto&) {
                       for (const char* in : {"", "lens"}) n.add_input(in);
                     }),
             base +
                 "(LSTM): expected no sequence_lens, or a constant one of 5 (the full "
                 "length) for every sequence, got input 'lens'");
  // A constant sequence_lens of shorter sequences (packed ones) is refused too; one of the full
  // length for every sequence, as converters write it, is read as none.
  auto lengths = [](std::vector<int32_t> values) {
    return [values](onnx::NodeProto& n, onnx::GraphProto& g) {
      for (const char* in : {"", "lens"}) n.add_input(in);
      auto* t = g.add_initializer();
      t->set_name("lens");
      t->set_data_type(onnx::TensorProto::INT32);
      t->add_dims(static_cast<int64_t>(values.size()));
      for (int32_t v : values) t->add_int32_data(v);
    };
  };
  const std::string shorter = one_node("LSTM", lengths({5, 3}));
  expect_has(
      testing::error_of(ErrorKind::kUnsupported, [&] { graph::parse_onnx(shorter, "m.onnx"); }),
      base + "(LSTM): expected no sequence_lens, or a constant one of 5");
  const auto full = graph::parse_onnx(one_node("LSTM", lengths({5, 5})), "m.onnx");
  for (const graph::Node* n : full->nodes()) EXPECT_NE(n->op_type(), "LSTM");
  expect_has(refusal(ErrorKind::kUnsupported, "LSTM",
                     [](onnx::NodeProto& n, onnx::GraphProto&) {
                       for (const char* in : {"", "", "", "", "p"}) n.add_input(in);
                     }),
             base + "(LSTM): expected no peephole weights P, got input 'p'");
  expect_has(refusal(ErrorKind::kUnsupported, "GRU",
                     [](onnx::NodeProto& n, onnx::GraphProto&) {
                       auto* a = n.add_attribute();
                       a->set_name("clip");
                       a->set_type(onnx::AttributeProto::FLOAT);
                       a->set_f(3.0f);
                     }),
             base + "(GRU): expected no attribute 'clip'");
  expect_has(refusal(ErrorKind::kUnsupported, "LSTM",
                     [](onnx::NodeProto& n, onnx::GraphProto&) {
                       add_strings(n, "activations", {"Sigmoid", "Relu", "Tanh"});
                     }),
             base + "(LSTM): expected the activations Sigmoid, Tanh, Tanh, got 'Relu' at 1");
  expect_has(refusal(ErrorKind::kUnsupported, "RNN",
                     [](onnx::NodeProto& n, onnx::GraphProto&) {
                       add_strings(n, "activations", {"Elu"});
                     }),
             base + "(RNN): expected activation Tanh, Relu or Sigmoid, got 'Elu'");
  expect_has(refusal(ErrorKind::kInvalid, "RNN",
                     [](onnx::NodeProto& n, onnx::GraphProto&) {
                       fuzz::ModelWriter::text(&n, "direction", "sideways");
                     }),
             base + "(RNN): expected direction forward, reverse or bidirectional, got 'sideways'");
  expect_has(
      refusal(ErrorKind::kInvalid, "GRU",
              [](onnx::NodeProto& n, onnx::GraphProto&) { n.mutable_attribute(0)->set_i(0); }),
      base + "(GRU): expected attribute 'hidden_size' >= 1, got 0");
  expect_has(
      refusal(ErrorKind::kInvalid, "LSTM",
              [](onnx::NodeProto& n, onnx::GraphProto&) { n.mutable_attribute(0)->set_i(5); }),
      base + "(LSTM): expected W 'w' of shape [1, 20, 3] (hidden_size 5), got [1, 16, 3]");
  expect_has(refusal(
                 ErrorKind::kUnsupported, "LSTM", [](onnx::NodeProto&, onnx::GraphProto&) {}, true),
             base + "(LSTM): expected input 'x' of rank 3 with a sequence length its shape fixes");
}

// A CRNN text recognizer (convolutions, the columns as a sequence, a bidirectional LSTM, per-step
// log-probabilities [T, N, C] as CTC takes them): `run -o` joins the batches along the batch
// axis (1) and equals ONNX Runtime; the calibrated model and the QAT model (the same bytes at 1
// and 2 threads) compute in ONNX Runtime what qforge's fake quant computes.
TEST(Recurrent, TextRecognizerRunsCalibratesAndTrains) {
  testing::TempDir dir;
  const std::string crnn = model_path("crnn");
  const Tensor lines = testing::random_f32({6, 1, 16, 32}, 50, -1.5f, 1.5f);
  io::write_npy(dir.file("x.npy"), lines);
  const auto r = testing::run_cli("run " + crnn + " --data " + dir.file("x.npy") +
                                  " --batch 4 -o " + dir.file("y.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Tensor y = io::read_npy(dir.file("y.npy"));
  ASSERT_EQ(y.shape(), (kernels::Shape{16, 6, 11}));
  testing::expect_close_scaled(y, testing::run_ort(crnn, {lines})[0], 1e-5, "log-probabilities");

  io::write_npy(dir.file("v.npy"), testing::random_f32({2, 1, 16, 32}, 51, -1.5f, 1.5f));
  const auto c = testing::run_cli("calibrate " + crnn + " --data " + dir.file("x.npy") +
                                  " --batch 3 --flip-injections 0 -o " + dir.file("c.onnx"));
  ASSERT_EQ(c.exit_code, 0) << c.err;
  testing::expect_verified_by_ort(dir.file("c.onnx"), dir.file("v.npy"), dir.file("ort_c.npz"));

  std::string bytes[2];
  for (int threads : {1, 2}) {
    const std::string out = dir.file("q" + std::to_string(threads) + ".onnx");
    const auto q = testing::run_cli("qat " + crnn + " --data " + dir.file("x.npy") +
                                    " --distill --steps 3 --batch 3 --lr 1e-2 --threads " +
                                    std::to_string(threads) + " -o " + out);
    ASSERT_EQ(q.exit_code, 0) << q.err;
    bytes[threads - 1] = testing::read_text(out);
  }
  EXPECT_EQ(bytes[0], bytes[1]);
  testing::expect_verified_by_ort(dir.file("q1.onnx"), dir.file("v.npy"), dir.file("ort_q.npz"));
}

}  // namespace
}  // namespace qforge
