// Runtime forward of ActAdd (graph/fusions_extra.h): act(x) + other in one pass over memory,
// blocks small enough that the activation's output is still in cache when the Add reads it.
// The activation math is that of the standalone ops, so the module matches the nodes it replaced.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "kernels/elementwise.h"
#include "kernels/parallel.h"
#include "kernels/vector_math.h"
#include "runtime/ops/ops.h"

namespace qforge::runtime::ops {
namespace {

using graph::Node;
using kernels::shape_str;

constexpr int64_t kGrain = 1 << 14;
constexpr int64_t kBlock = 1024;  // elements per activation-then-add step

enum class Form { kUnary, kGelu, kSilu };

struct ActAddSpec {
  Form form = Form::kUnary;
  kernels::UnaryOp op = kernels::UnaryOp::kRelu;
  kernels::UnaryParams params;
};

ActAddSpec spec_of(const Node& node) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  ActAddSpec s;
  const std::string kind = node.attr_string("activation", "");
  if (kind == "Relu") {
    s.op = kernels::UnaryOp::kRelu;
  } else if (kind == "Clip") {
    s.op = kernels::UnaryOp::kClip;
    s.params.min = node.attr_float("clip_min", -kInf);
    s.params.max = node.attr_float("clip_max", kInf);
  } else if (kind == "LeakyRelu") {
    s.op = kernels::UnaryOp::kLeakyRelu;
    s.params.alpha = node.attr_float("alpha", 0.01f);
  } else if (kind == "Elu") {
    s.op = kernels::UnaryOp::kElu;
    s.params.alpha = node.attr_float("alpha", 1.0f);
  } else if (kind == "HardSwish") {
    s.op = kernels::UnaryOp::kHardSwish;
  } else if (kind == "HardSigmoid") {
    s.op = kernels::UnaryOp::kHardSigmoid;
    s.params.alpha = node.attr_float("alpha", 0.2f);
    s.params.beta = node.attr_float("beta", 0.5f);
  } else if (kind == "Sigmoid") {
    s.op = kernels::UnaryOp::kSigmoid;
  } else if (kind == "Gelu") {
    s.form = Form::kGelu;
  } else if (kind == "Silu") {
    s.form = Form::kSilu;
  } else {
    std::string got = "'";
    got.append(kind).append("'");
    fail_node(node,
              "activation Relu, Clip, LeakyRelu, Elu, Gelu, Silu, HardSwish, HardSigmoid or "
              "Sigmoid",
              got);
  }
  return s;
}

std::vector<TensorInfo> infer_act_add(const Node& node, std::span<const InputInfo> inputs) {
  spec_of(node);
  if (inputs.size() != 2 || !inputs[0].present || !inputs[1].present) {
    fail_node(node, "inputs x and other", std::to_string(inputs.size()) + " inputs");
  }
  for (size_t i = 0; i < 2; ++i) {
    if (inputs[i].dtype != DType::kFloat32) {
      fail_node(node, std::string(i == 0 ? "x" : "other") + " of type float32",
                std::string(kernels::dtype_name(inputs[i].dtype)));
    }
  }
  if (inputs[0].shape != inputs[1].shape) {
    fail_node(node, "x and other of one shape",
              shape_str(inputs[0].shape) + " and " + shape_str(inputs[1].shape));
  }
  return {TensorInfo{DType::kFloat32, inputs[0].shape}};
}

class ActAddKernel final : public OpKernel {
 public:
  explicit ActAddKernel(const Node& node) : spec_(spec_of(node)) {}

  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    const float* x = inputs[0].data<float>();
    const float* other = inputs[1].data<float>();
    float* y = outputs[0].data<float>();
    kernels::parallel_for(outputs[0].numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; b += kBlock) {
        const int64_t e = std::min(end, b + kBlock);
        activate(x, y, b, e);
        for (int64_t i = b; i < e; ++i) y[i] = y[i] + other[i];
      }
    });
  }

 private:
  // y[b, e) = act(x[b, e)), in the operation order of the nodes the module replaced.
  void activate(const float* x, float* y, int64_t b, int64_t e) const {
    switch (spec_.form) {
      case Form::kUnary:
        kernels::unary_f32(spec_.op, spec_.params, x + b, y + b, e - b);
        return;
      case Form::kGelu: {
        const float sqrt2 = std::sqrt(2.0f);
        for (int64_t i = b; i < e; ++i) {
          const float v = x[i];
          y[i] = (v * (kernels::erf_approx(v / sqrt2) + 1.0f)) * 0.5f;
        }
        return;
      }
      case Form::kSilu:
        for (int64_t i = b; i < e; ++i) {
          const float v = x[i];
          y[i] = v * (1.0f / (1.0f + kernels::exp_approx(-v)));
        }
        return;
    }
  }

  ActAddSpec spec_;
};

std::unique_ptr<OpKernel> create_act_add(const Node& node, std::span<const InputInfo> /*inputs*/,
                                         std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<ActAddKernel>(node);
}

}  // namespace

void register_act_add_ops(OpRegistry& registry) {
  registry.add({"ActAdd", infer_act_add, create_act_add});
}

}  // namespace qforge::runtime::ops
