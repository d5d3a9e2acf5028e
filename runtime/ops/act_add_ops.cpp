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
#include "runtime/ops/activation.h"
#include "runtime/ops/ops.h"

namespace qforge::runtime::ops {
namespace {

using graph::Node;
using kernels::shape_str;

constexpr int64_t kGrain = 1 << 14;
constexpr int64_t kBlock = 1024;  // elements per activation-then-add step

std::vector<TensorInfo> infer_act_add(const Node& node, std::span<const InputInfo> inputs) {
  if (activation_of(node).kind == ActivationKind::kNone) {
    fail_node(node, "an activation attribute", "none");
  }
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
  explicit ActAddKernel(const Node& node) : spec_(activation_of(node)) {}

  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    const float* x = inputs[0].data<float>();
    const float* other = inputs[1].data<float>();
    float* y = outputs[0].data<float>();
    kernels::parallel_for(outputs[0].numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; b += kBlock) {
        const int64_t e = std::min(end, b + kBlock);
        apply_activation(spec_, x + b, y + b, e - b);
        for (int64_t i = b; i < e; ++i) y[i] = y[i] + other[i];
      }
    });
  }

 private:
  ActivationSpec spec_;
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
