// The catalog harness: one case per catalog unit (tests/runtime/catalog_harness_cases.h), each a
// one-node graph with seeded inputs, and the machinery that checks it. Forward runs the unit's
// runtime kernel directly (infer, create, forward) and is compared with a reference: ONNX
// Runtime on the same node (ONNX ops) or on the unit's lowering (modules), else the case's naive
// reference. Backward compares the kernel's gradient of Σ y·r with respect to every
// differentiable input with finite differences of the kernel's own forward, or with the case's
// closed form where differences are unreliable (straight-through estimators, kinks).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "graph/catalog.h"
#include "graph/ir.h"
#include "graph/onnx_export.h"
#include "kernels/tensor.h"
#include "runtime/op_registry.h"
#include "tests/support/ort_runner.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_count.h"

namespace qforge::testing::harness {

using kernels::DType;
using kernels::Shape;
using kernels::Tensor;
using Attributes = std::map<std::string, graph::AttributeValue, std::less<>>;

// How a case input reaches the node.
enum class Role : unsigned char {
  kData,     // a graph input (ONNX Runtime feeds it); differentiated where float
  kWeight,   // an initializer the inference kernel may prepare; differentiated where float
  kSetting,  // an initializer read as a setting (bounds, scales, running statistics, indices)
  kKnown,    // a graph input for ONNX Runtime whose value shape inference needs (Range)
  kAbsent,   // an omitted optional input
};

struct CaseInput {
  Tensor value;
  Role role = Role::kData;
  bool differentiated() const {
    return (role == Role::kData || role == Role::kWeight) && value.defined() &&
           value.dtype() == DType::kFloat32;
  }
};

using NaiveFn = std::function<std::vector<Tensor>(std::span<const Tensor> inputs)>;
// The gradient of Σ y·dy with respect to each input, in double (undefined where none).
using ClosedFormFn = std::function<std::vector<std::vector<double>>(std::span<const Tensor> inputs,
                                                                    std::span<const Tensor> dy)>;

struct HarnessCase {
  HarnessCase(std::string op, std::string what)
      : op_type(std::move(op)), variant(std::move(what)) {}

  std::string op_type;
  std::string variant;  // what the case exercises, in failure messages
  std::vector<CaseInput> inputs;
  Attributes attributes;
  size_t outputs = 1;
  int64_t opset = 17;  // of the ONNX Runtime model
  // Forward: |got − want| <= tolerance·(|want| + rms(want)) per element.
  double forward_tolerance = 1e-5;
  NaiveFn naive;             // set: the forward reference (internal ops that ONNX Runtime lacks)
  ClosedFormFn closed_form;  // set: the backward reference instead of finite differences
  // The reference is of the kernel that training makes (OpDef::create_training: BN on batch
  // statistics), which then meets it instead of `create`'s.
  bool training_forward = false;
  // Backward through `create`'s kernel, as training runs it once frozen (BatchNormalization on
  // its running statistics), instead of OpDef::create_training's.
  bool frozen_backward = false;
  // Set: this form of a differentiable unit has no backward (Pad's reflect and edge modes), and
  // says why; its kernel must then differentiate nothing.
  std::string no_gradient_here;

  // Whether the case differentiates input i: a float data input or weight, unless the form has
  // no backward.
  bool differentiates(size_t i) const {
    return no_gradient_here.empty() && i < inputs.size() && inputs[i].differentiated();
  }

  HarnessCase& data(Tensor t) { return add(std::move(t), Role::kData); }
  HarnessCase& weight(Tensor t) { return add(std::move(t), Role::kWeight); }
  HarnessCase& setting(Tensor t) { return add(std::move(t), Role::kSetting); }
  HarnessCase& known(Tensor t) { return add(std::move(t), Role::kKnown); }
  HarnessCase& absent() { return add(Tensor(), Role::kAbsent); }
  HarnessCase& attr(const std::string& name, graph::AttributeValue value) {
    attributes[name] = std::move(value);
    return *this;
  }
  HarnessCase& with_outputs(size_t n) {
    outputs = n;
    return *this;
  }
  HarnessCase& at_opset(int64_t n) {
    opset = n;
    return *this;
  }
  HarnessCase& tolerance(double t) {
    forward_tolerance = t;
    return *this;
  }
  HarnessCase& reference(NaiveFn fn) {
    naive = std::move(fn);
    return *this;
  }
  HarnessCase& gradient(ClosedFormFn fn) {
    closed_form = std::move(fn);
    return *this;
  }
  HarnessCase& no_gradient(std::string reason) {
    no_gradient_here = std::move(reason);
    return *this;
  }
  HarnessCase& frozen() {
    frozen_backward = true;
    return *this;
  }
  HarnessCase& trained_forward() {
    training_forward = true;
    return *this;
  }
  std::string label() const { return op_type + " (" + variant + ")"; }

 private:
  HarnessCase& add(Tensor t, Role role) {
    inputs.push_back({std::move(t), role});
    return *this;
  }
};

inline const graph::OpSchema& schema_of(const HarnessCase& c) {
  const graph::OpSchema* s = graph::find_schema(c.op_type);
  if (!s) throw std::runtime_error("harness case for an op outside the catalog: " + c.op_type);
  return *s;
}

inline std::vector<Tensor> input_values(const HarnessCase& c) {
  std::vector<Tensor> out;
  for (const CaseInput& in : c.inputs)
    out.push_back(in.value.defined() ? in.value.clone() : Tensor());
  return out;
}

// A case's node bound to its runtime kernel, run directly (no executor): the unit on its own.
class KernelRun {
 public:
  enum class Mode {
    kInference,  // `create`, weights and settings as constants (what inference prepares)
    kTraining,   // as the training executor makes it: weights without their values, and
                 // OpDef::create_training where the op has one
    kFrozen,     // weights without their values, but `create`'s kernel (a frozen BN)
  };

  KernelRun(const HarnessCase& c, Mode mode) {
    graph::NodeSpec spec;
    spec.name = "node";
    spec.op_type = c.op_type;
    spec.attributes = c.attributes;
    const graph::OpSchema& schema = schema_of(c);
    if (schema.kind == graph::SchemaKind::kModule) spec.domain = "qforge";
    infos_.resize(c.inputs.size());
    for (size_t i = 0; i < c.inputs.size(); ++i) {
      const CaseInput& in = c.inputs[i];
      if (in.role == Role::kAbsent) {
        spec.inputs.push_back(nullptr);
        continue;
      }
      std::string name("in");
      name.append(std::to_string(i));
      const bool constant_now = in.role == Role::kSetting || in.role == Role::kKnown ||
                                (in.role == Role::kWeight && mode == Mode::kInference);
      graph::Value* v = constant_now ? graph_.add_constant(name, in.value.clone())
                                     : graph_.add_input(name, in.value.dtype(), in.value.shape());
      spec.inputs.push_back(v);
      infos_[i].present = true;
      infos_[i].dtype = in.value.dtype();
      infos_[i].shape = in.value.shape();
      infos_[i].constant = constant_now ? &v->constant() : nullptr;
    }
    for (size_t i = 0; i < c.outputs; ++i) {
      std::string name("out");
      name.append(std::to_string(i));
      spec.output_names.push_back(name);
    }
    node_ = graph_.add_node(std::move(spec));
    const runtime::OpDef* def = runtime::builtin_ops().find(c.op_type);
    if (!def) throw std::runtime_error("no OpDef for " + c.op_type);
    output_infos_ = def->infer(*node_, infos_);
    if (output_infos_.size() != c.outputs) {
      throw std::runtime_error(c.label() + ": shape inference gives " +
                               std::to_string(output_infos_.size()) + " outputs, the case says " +
                               std::to_string(c.outputs));
    }
    const runtime::CreateFn create =
        mode == Mode::kTraining && def->create_training ? def->create_training : def->create;
    kernel_ = create(*node_, infos_, output_infos_);
    const size_t bytes = std::max(kernel_->workspace_bytes(), kernel_->backward_workspace_bytes());
    workspace_ = Tensor(DType::kFloat32, {static_cast<int64_t>(bytes / sizeof(float) + 16)});
  }

  runtime::OpKernel& kernel() { return *kernel_; }
  const std::vector<runtime::TensorInfo>& output_infos() const { return output_infos_; }
  const graph::Node& node() const { return *node_; }

  // Outputs of a forward on `inputs` (fresh tensors, kept for backward).
  std::vector<Tensor>& forward(std::vector<Tensor>& inputs) {
    inputs_ = &inputs;
    outputs_.clear();
    for (const runtime::TensorInfo& info : output_infos_)
      outputs_.emplace_back(info.dtype, info.shape);
    kernel_->forward(inputs, outputs_, workspace());
    return outputs_;
  }

  // Gradients of Σ y·dy for the inputs `wanted` says (undefined elsewhere), after forward.
  std::vector<Tensor> backward(const std::vector<Tensor>& dy, const std::vector<bool>& wanted) {
    return backward_on(*inputs_, outputs_, dy, wanted);
  }

  // Takes the kernel's offer of a compact record (OpKernel::Record) as the training executor
  // does, in storage filled with garbage; false when it offers none.
  bool keep_record() {
    const size_t bytes = kernel_->record().bytes;
    if (bytes == 0) return false;
    record_ = Tensor(DType::kUInt8, {static_cast<int64_t>(bytes)});
    std::fill_n(record_.data<uint8_t>(), record_.numel(), uint8_t{0xA5});
    kernel_->keep_record(static_cast<std::byte*>(record_.raw()));
    return true;
  }

  // backward() with every float input and output the kernel's backward_reads (with a record
  // kept: the record's reads) leaves out, and that is not a constant, which the executor always
  // keeps, replaced by NaN, as if its buffer held another value by then: a kernel that reads
  // what it did not declare gives other bits. `poisoned` gets what was replaced ("input 0",
  // "output 0").
  std::vector<Tensor> backward_without_undeclared(const std::vector<Tensor>& dy,
                                                  const std::vector<bool>& wanted,
                                                  std::vector<std::string>* poisoned) {
    const runtime::OpKernel::BackwardReads reads =
        record_.defined() ? kernel_->record().reads : kernel_->backward_reads();
    std::vector<Tensor> inputs = *inputs_;
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!inputs[i].defined() || inputs[i].dtype() != DType::kFloat32 || infos_[i].constant ||
          runtime::OpKernel::BackwardReads::has(reads.inputs, i)) {
        continue;
      }
      inputs[i] = nan_tensor(inputs[i].shape());
      poisoned->push_back("input " + std::to_string(i));
    }
    std::vector<Tensor> outputs = outputs_;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (outputs[i].dtype() != DType::kFloat32 ||
          runtime::OpKernel::BackwardReads::has(reads.outputs, i)) {
        continue;
      }
      outputs[i] = nan_tensor(outputs[i].shape());
      poisoned->push_back("output " + std::to_string(i));
    }
    return backward_on(inputs, outputs, dy, wanted);
  }

 private:
  std::byte* workspace() { return static_cast<std::byte*>(workspace_.raw()); }

  static Tensor nan_tensor(const Shape& shape) {
    Tensor t(DType::kFloat32, shape);
    std::fill_n(t.data<float>(), t.numel(), std::nanf(""));
    return t;
  }

  // The kernel's backward on these inputs and outputs; the gradients start as NaN, so that one
  // the kernel leaves unwritten shows.
  std::vector<Tensor> backward_on(const std::vector<Tensor>& inputs,
                                  const std::vector<Tensor>& outputs, const std::vector<Tensor>& dy,
                                  const std::vector<bool>& wanted) {
    std::vector<Tensor> grads(inputs.size());
    for (size_t i = 0; i < grads.size(); ++i) {
      if (wanted[i]) grads[i] = nan_tensor(inputs[i].shape());
    }
    kernel_->backward(inputs, outputs, dy, grads, workspace());
    return grads;
  }

  graph::Graph graph_;
  graph::Node* node_ = nullptr;
  std::vector<runtime::InputInfo> infos_;
  std::vector<runtime::TensorInfo> output_infos_;
  std::unique_ptr<runtime::OpKernel> kernel_;
  Tensor workspace_;
  std::vector<Tensor>* inputs_ = nullptr;
  std::vector<Tensor> outputs_;
  Tensor record_;  // the kept record's storage, when keep_record took an offer
};

inline std::vector<Tensor> clones(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) out.push_back(t.defined() ? t.clone() : Tensor());
  return out;
}

// The forward of the unit's inference kernel at `threads` threads.
inline std::vector<Tensor> kernel_forward(const HarnessCase& c, KernelRun::Mode mode,
                                          int threads = 1) {
  ThreadCount count(threads);
  KernelRun run(c, mode);
  std::vector<Tensor> inputs = input_values(c);
  return clones(run.forward(inputs));
}

// ---------------------------------------------------------------------------------------------
// Forward references in ONNX Runtime: every case of one opset in one model, run once.

struct OrtModel {
  graph::Graph graph;
  std::vector<Tensor> feeds;
  std::vector<std::pair<size_t, size_t>> outputs;  // (case index, output index) per model output
};

// Adds case `index` to `model` under the prefix "c<index>_<op type>_" (which names the case in
// ONNX Runtime's errors): its node, or its lowering when the unit is a module.
inline void add_to_ort_model(const HarnessCase& c, size_t index, OrtModel& model) {
  std::string prefix("c");
  prefix.append(std::to_string(index)).append("_").append(c.op_type).append("_");
  graph::Graph& g = model.graph;
  graph::NodeSpec spec;
  spec.name = prefix + "node";
  spec.op_type = c.op_type;
  spec.attributes = c.attributes;
  const graph::OpSchema& schema = schema_of(c);
  if (schema.kind == graph::SchemaKind::kModule) spec.domain = "qforge";
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const CaseInput& in = c.inputs[i];
    if (in.role == Role::kAbsent) {
      spec.inputs.push_back(nullptr);
      continue;
    }
    const std::string name = prefix + "in" + std::to_string(i);
    if (in.role == Role::kData || in.role == Role::kKnown) {
      spec.inputs.push_back(g.add_input(name, in.value.dtype(), in.value.shape()));
      model.feeds.push_back(in.value);
    } else {
      spec.inputs.push_back(g.add_constant(name, in.value.clone()));
    }
  }
  for (size_t i = 0; i < c.outputs; ++i)
    spec.output_names.push_back(prefix + "out" + std::to_string(i));
  graph::Node* node = g.add_node(std::move(spec));
  const std::vector<runtime::TensorInfo> infos =
      KernelRun(c, KernelRun::Mode::kInference).output_infos();
  for (size_t i = 0; i < c.outputs; ++i) node->output(i)->set_type(infos[i].dtype, infos[i].shape);
  std::vector<graph::Value*> outs(node->outputs().begin(), node->outputs().end());
  graph::Lowered lowered;
  if (schema.kind == graph::SchemaKind::kModule) schema.lower(g, *node, lowered);
  for (size_t i = 0; i < outs.size(); ++i) {
    // Lowering keeps the output value names.
    g.mark_output(g.find_value(prefix + "out" + std::to_string(i)));
    model.outputs.emplace_back(index, i);
  }
}

// Reference outputs per case (empty for cases with a naive reference), from one ONNX Runtime
// run per opset.
inline std::vector<std::vector<Tensor>> ort_references(const std::vector<HarnessCase>& cases) {
  std::map<int64_t, OrtModel> models;
  for (size_t i = 0; i < cases.size(); ++i) {
    if (cases[i].naive) continue;
    add_to_ort_model(cases[i], i, models[cases[i].opset]);
  }
  std::vector<std::vector<Tensor>> out(cases.size());
  TempDir dir;
  for (auto& [opset, model] : models) {
    model.graph.opset = opset;
    model.graph.name = "catalog_harness";
    const std::string path = dir.file("opset" + std::to_string(opset) + ".onnx");
    graph::save_onnx(model.graph, path, {.opset = opset});
    const std::vector<Tensor> results = run_ort(path, model.feeds);
    if (results.size() != model.outputs.size()) {
      throw std::runtime_error("ONNX Runtime gave " + std::to_string(results.size()) +
                               " outputs, expected " + std::to_string(model.outputs.size()));
    }
    for (size_t k = 0; k < results.size(); ++k) {
      auto [index, output] = model.outputs[k];
      if (out[index].size() <= output) out[index].resize(output + 1);
      out[index][output] = results[k];
    }
  }
  return out;
}

// |got − want| <= tolerance·(|want| + rms(want)) per element for float outputs; integer and
// boolean outputs equal.
inline void expect_forward_matches(const std::vector<Tensor>& got, const std::vector<Tensor>& want,
                                   double tolerance, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t k = 0; k < got.size(); ++k) {
    const std::string output = what + " output " + std::to_string(k);
    ASSERT_EQ(got[k].shape(), want[k].shape()) << output;
    if (got[k].dtype() != DType::kFloat32) {
      ASSERT_EQ(got[k].dtype(), want[k].dtype()) << output;
      EXPECT_EQ(std::memcmp(got[k].raw(), want[k].raw(), got[k].nbytes()), 0) << output;
      continue;
    }
    ASSERT_EQ(want[k].dtype(), DType::kFloat32) << output;
    const float* g = got[k].data<float>();
    const float* w = want[k].data<float>();
    double squares = 0;
    for (int64_t i = 0; i < want[k].numel(); ++i) squares += double(w[i]) * w[i];
    const double rms = want[k].numel() ? std::sqrt(squares / double(want[k].numel())) : 0.0;
    int failures = 0;
    for (int64_t i = 0; i < want[k].numel(); ++i) {
      const double bound = tolerance * (std::abs(w[i]) + rms);
      if (!(std::abs(double(g[i]) - w[i]) <= bound)) {
        if (++failures <= 5) {
          ADD_FAILURE() << output << ": element " << i << " is " << g[i] << ", the reference "
                        << w[i] << " (bound " << bound << ")";
        }
      }
    }
    EXPECT_EQ(failures, 0) << output;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

// Which inputs the case differentiates.
inline std::vector<bool> differentiated_inputs(const HarnessCase& c) {
  std::vector<bool> out;
  for (size_t i = 0; i < c.inputs.size(); ++i) out.push_back(c.differentiates(i));
  return out;
}

// The direction r of the functional Σ y·r: seeded values in [-1, 1) per float output.
inline std::vector<Tensor> random_directions(const std::vector<runtime::TensorInfo>& outputs,
                                             uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<Tensor> out;
  for (const runtime::TensorInfo& info : outputs) {
    if (info.dtype != DType::kFloat32) {
      out.emplace_back();
      continue;
    }
    Tensor t(DType::kFloat32, info.shape);
    for (float& f : t.span<float>()) f = dist(rng);
    out.push_back(t);
  }
  return out;
}

inline double functional(const std::vector<Tensor>& y, const std::vector<Tensor>& r) {
  double sum = 0;
  for (size_t k = 0; k < y.size(); ++k) {
    if (!r[k].defined()) continue;
    const float* a = y[k].data<float>();
    const float* b = r[k].data<float>();
    for (int64_t i = 0; i < y[k].numel(); ++i) sum += double(a[i]) * b[i];
  }
  return sum;
}

// Finite differences of loss() (L = Σ y·r on the float32 forward) with respect to each of the n
// values at x, which loss() reads. Steps h and h/2 are combined by Richardson extrapolation,
// (4·D(h/2) − D(h)) / 3, which cancels the h² term of the central difference D: what remains is
// O(h⁴) plus the float32 rounding of the outputs, about ε·Σ|y·r| over the outputs an element
// reaches, divided by h. Each difference is taken over the float32 values actually reached
// (x ± h rounded). With h = 2⁻⁷ on one op the observed error is at most 3e-5 of the gradient
// (relative L2) and 5e-5 of its largest element, 30 and 200 times below the bounds of
// gradient_matches; a lowered module runs several float32 ops on larger values and takes
// h = 2⁻⁵ (kLoweringStep), where its error stays below 1e-4. Every case keeps its inputs (and a
// module's intermediate values) further than 2h from a kink or a rounding boundary, so both steps
// see one smooth piece.
inline constexpr double kOpStep = 1.0 / 128.0;
inline constexpr double kLoweringStep = 1.0 / 32.0;
inline std::vector<double> finite_differences(float* x, int64_t n,
                                              const std::function<double()>& loss,
                                              double step = kOpStep) {
  std::vector<double> grad(static_cast<size_t>(n));
  auto central = [&](int64_t i, double h) {
    const float saved = x[i];
    const float up = static_cast<float>(saved + h);
    const float down = static_cast<float>(saved - h);
    x[i] = up;
    const double l_up = loss();
    x[i] = down;
    const double l_down = loss();
    x[i] = saved;
    return (l_up - l_down) / (double(up) - double(down));
  };
  for (int64_t i = 0; i < n; ++i) {
    const double coarse = central(i, step);
    const double fine = central(i, step / 2);
    grad[static_cast<size_t>(i)] = (4.0 * fine - coarse) / 3.0;
  }
  return grad;
}

// The analytic gradient `got` against the numeric or closed-form `want`:
//   ‖got − want‖₂ <= 1e-3·‖want‖₂  and  |got_i − want_i| <= 1e-2·‖want‖∞ for every i
// (norms floored at 1e-6). The first bound catches a gradient scaled by 1.01 or a missing
// term; the second, one wrong element among many.
inline bool gradient_matches(const std::vector<double>& got, const std::vector<double>& want,
                             std::string* why) {
  if (got.size() != want.size()) {
    *why = "sizes differ";
    return false;
  }
  double diff2 = 0, norm2 = 0, max_want = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    diff2 += (got[i] - want[i]) * (got[i] - want[i]);
    norm2 += want[i] * want[i];
    max_want = std::max(max_want, std::abs(want[i]));
  }
  const double norm = std::max(std::sqrt(norm2), 1e-6);
  const double max_bound = 1e-2 * std::max(max_want, 1e-6);
  if (!(std::sqrt(diff2) <= 1e-3 * norm)) {
    *why = "relative L2 error " + std::to_string(std::sqrt(diff2) / norm) + " > 1e-3";
    return false;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(std::abs(got[i] - want[i]) <= max_bound)) {
      *why = "element " + std::to_string(i) + " is " + std::to_string(got[i]) + ", expected " +
             std::to_string(want[i]);
      return false;
    }
  }
  return true;
}

inline std::vector<double> as_double(const Tensor& t) {
  const float* p = t.data<float>();
  return std::vector<double>(p, p + t.numel());
}

// A fault injected into an analytic gradient before it is compared, for the self-test.
using GradientFault = std::function<void(std::vector<double>&)>;

// Checks the unit's backward on case `c`: the kernel differentiates exactly the inputs the case
// declares, and each gradient matches finite differences (or the closed form).
inline void check_backward(const HarnessCase& c, uint32_t seed, const GradientFault& fault = {},
                           std::vector<std::string>* failures = nullptr) {
  const std::vector<bool> wanted = differentiated_inputs(c);
  const KernelRun::Mode mode =
      c.frozen_backward ? KernelRun::Mode::kFrozen : KernelRun::Mode::kTraining;
  KernelRun run(c, mode);
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    if (c.inputs[i].role == Role::kAbsent) continue;
    const bool claims = run.kernel().differentiable_input(i);
    if (!failures) {
      EXPECT_EQ(claims, wanted[i])
          << c.label() << ": input " << i
          << (wanted[i] ? " is differentiable but the kernel has no "
                          "backward for it"
                        : " is a setting, yet the kernel differentiates it");
    }
  }
  const std::vector<Tensor> r = random_directions(run.output_infos(), seed);
  KernelRun numeric_run(c, mode);
  std::vector<Tensor> inputs = input_values(c);
  std::vector<std::vector<double>> want(c.inputs.size());
  if (c.closed_form) {
    std::vector<Tensor> values = input_values(c);
    want = c.closed_form(values, r);
  } else {
    for (size_t i = 0; i < c.inputs.size(); ++i) {
      if (!wanted[i]) continue;
      want[i] = finite_differences(inputs[i].data<float>(), inputs[i].numel(),
                                   [&] { return functional(numeric_run.forward(inputs), r); });
    }
  }
  run.forward(inputs);
  const std::vector<Tensor> grads = run.backward(r, wanted);
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    if (!wanted[i]) continue;
    std::vector<double> got = as_double(grads[i]);
    if (fault) fault(got);
    std::string why;
    const bool ok = gradient_matches(got, want[i], &why);
    const std::string message = c.label() + ": gradient of input " + std::to_string(i) + " (" +
                                (c.closed_form ? "closed form" : "finite differences") +
                                "): " + why;
    if (failures) {
      if (!ok) failures->push_back(message);
    } else {
      EXPECT_TRUE(ok) << message;
    }
  }
}

// The backward reads only what its kernel declares (OpKernel::backward_reads): with the rest
// replaced by NaN it gives the same bits. Returns what was replaced, for the caller to check
// that the check had something to bite on.
inline std::vector<std::string> check_backward_reads(const HarnessCase& c, uint32_t seed) {
  const std::vector<bool> wanted = differentiated_inputs(c);
  const KernelRun::Mode mode =
      c.frozen_backward ? KernelRun::Mode::kFrozen : KernelRun::Mode::kTraining;
  KernelRun run(c, mode);
  std::vector<Tensor> inputs = input_values(c);
  run.forward(inputs);
  const std::vector<Tensor> r = random_directions(run.output_infos(), seed);
  const std::vector<Tensor> want = clones(run.backward(r, wanted));
  std::vector<std::string> poisoned;
  const std::vector<Tensor> got = run.backward_without_undeclared(r, wanted, &poisoned);
  std::string replaced;
  for (const std::string& p : poisoned) replaced += (replaced.empty() ? "" : ", ") + p;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!want[i].defined()) continue;
    EXPECT_EQ(std::memcmp(want[i].raw(), got[i].raw(), want[i].nbytes()), 0)
        << c.label() << ": the gradient of input " << i << " changes when what backward_reads "
        << "leaves out (" << replaced << ") holds other values: the backward reads it";
  }
  return poisoned;
}

// A compact record (OpKernel::Record) stands in for what it spares: with the record kept the
// forward writes the same outputs; backward, with every input and output the record's reads
// leave out replaced by NaN, gives the plain backward's gradients bit for bit; and
// restore_outputs, where offered, writes the outputs again. Returns whether the kernel offered
// a record.
inline bool check_record(const HarnessCase& c, uint32_t seed) {
  const std::vector<bool> wanted = differentiated_inputs(c);
  const KernelRun::Mode mode =
      c.frozen_backward ? KernelRun::Mode::kFrozen : KernelRun::Mode::kTraining;
  KernelRun plain(c, mode);
  std::vector<Tensor> plain_inputs = input_values(c);
  const std::vector<Tensor> want_outputs = clones(plain.forward(plain_inputs));
  const std::vector<Tensor> r = random_directions(plain.output_infos(), seed);
  const std::vector<Tensor> want = clones(plain.backward(r, wanted));

  KernelRun recorded(c, mode);
  if (!recorded.keep_record()) return false;
  std::vector<Tensor> inputs = input_values(c);
  const std::vector<Tensor> outputs = clones(recorded.forward(inputs));
  for (size_t k = 0; k < outputs.size(); ++k) {
    EXPECT_EQ(std::memcmp(outputs[k].raw(), want_outputs[k].raw(), outputs[k].nbytes()), 0)
        << c.label() << ": output " << k << " changes when the kernel keeps its record";
  }
  std::vector<std::string> poisoned;
  const std::vector<Tensor> got = recorded.backward_without_undeclared(r, wanted, &poisoned);
  for (size_t i = 0; i < want.size(); ++i) {
    if (!want[i].defined()) continue;
    EXPECT_EQ(std::memcmp(want[i].raw(), got[i].raw(), want[i].nbytes()), 0)
        << c.label() << ": the gradient of input " << i << " from the record differs from "
        << "the plain backward's";
  }
  if (recorded.kernel().record().restores_outputs) {
    std::vector<Tensor> again;
    for (const runtime::TensorInfo& info : recorded.output_infos()) {
      again.emplace_back(info.dtype, info.shape);
    }
    recorded.kernel().restore_outputs(again);
    for (size_t k = 0; k < again.size(); ++k) {
      EXPECT_EQ(std::memcmp(again[k].raw(), want_outputs[k].raw(), again[k].nbytes()), 0)
          << c.label() << ": output " << k << " restored from the record differs";
    }
  }
  return true;
}

// A kernel cheap to recompute (OpKernel::cheap_to_recompute) makes the outputs of its last
// forward again, bit for bit, and leaves its inputs (BN's running statistics among them) as
// they were. Returns whether the kernel says it is cheap to recompute.
inline bool check_recompute(const HarnessCase& c) {
  const KernelRun::Mode mode =
      c.frozen_backward ? KernelRun::Mode::kFrozen : KernelRun::Mode::kTraining;
  KernelRun run(c, mode);
  if (!run.kernel().cheap_to_recompute()) return false;
  std::vector<Tensor> inputs = input_values(c);
  const std::vector<Tensor> outputs = clones(run.forward(inputs));
  const std::vector<Tensor> before = clones(inputs);
  std::vector<Tensor> again;
  for (const runtime::TensorInfo& info : run.output_infos())
    again.emplace_back(info.dtype, info.shape);
  std::vector<float> workspace(
      std::max(run.kernel().workspace_bytes(), run.kernel().backward_workspace_bytes()) /
          sizeof(float) +
      16);
  run.kernel().recompute_outputs(inputs, again, reinterpret_cast<std::byte*>(workspace.data()));
  for (size_t k = 0; k < again.size(); ++k) {
    EXPECT_EQ(std::memcmp(again[k].raw(), outputs[k].raw(), again[k].nbytes()), 0)
        << c.label() << ": output " << k << " recomputed differs from the forward's";
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined()) continue;
    EXPECT_EQ(std::memcmp(inputs[i].raw(), before[i].raw(), inputs[i].nbytes()), 0)
        << c.label() << ": input " << i << " changed by the recomputation";
  }
  return true;
}

// Forward (and, for a unit with a backward, backward) outputs at 1 and 2 threads, bit for bit.
inline void check_thread_invariance(const HarnessCase& c, uint32_t seed) {
  auto run_at = [&](int threads, KernelRun::Mode mode, bool backward) {
    ThreadCount count(threads);
    KernelRun run(c, mode);
    std::vector<Tensor> inputs = input_values(c);
    std::vector<Tensor> out = clones(run.forward(inputs));
    if (backward) {
      const std::vector<Tensor> grads =
          run.backward(random_directions(run.output_infos(), seed), differentiated_inputs(c));
      for (const Tensor& g : grads) out.push_back(g);
    }
    return out;
  };
  auto same = [&](const std::vector<Tensor>& a, const std::vector<Tensor>& b, const char* what) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t k = 0; k < a.size(); ++k) {
      if (!a[k].defined()) continue;
      EXPECT_EQ(std::memcmp(a[k].raw(), b[k].raw(), a[k].nbytes()), 0)
          << c.label() << ": " << what << " tensor " << k << " differs at 2 threads";
    }
  };
  same(run_at(1, KernelRun::Mode::kInference, false), run_at(2, KernelRun::Mode::kInference, false),
       "inference forward");
  if (schema_of(c).gradient == graph::Gradient::kBackward) {
    const KernelRun::Mode mode =
        c.frozen_backward ? KernelRun::Mode::kFrozen : KernelRun::Mode::kTraining;
    same(run_at(1, mode, true), run_at(2, mode, true), "training forward and backward");
  }
}

}  // namespace qforge::testing::harness
