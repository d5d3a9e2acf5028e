#include "quant/observed_pass.h"

#include "kernels/error.h"

namespace qforge::quant {

ObservedPass::ObservedPass(std::unique_ptr<graph::Graph> fused, std::vector<std::string> tensors,
                           std::string label, bool release_weights, ObserveFn observe)
    : tensors_(std::move(tensors)), label_(std::move(label)), observe_(std::move(observe)) {
  runtime::SessionOptions options;
  options.fuse_conv_epilogues = false;
  options.executor.release_prepared_constants = release_weights;
  for (graph::Value* in : fused->inputs()) {
    if (in->has_shape() && !in->shape()->empty()) {
      graph::Shape shape = *in->shape();
      shape[0] = -1;
      in->set_type(in->dtype(), std::move(shape));
    }
  }
  session_ = std::make_unique<runtime::Session>(std::move(fused), options);
}

ObservedPass::~ObservedPass() = default;

void ObservedPass::run(std::span<const kernels::Tensor> inputs) {
  std::vector<graph::Shape> shapes;
  for (const kernels::Tensor& input : inputs) shapes.push_back(input.shape());
  runtime::Executor& executor = session_->executor_for(shapes);
  if (tapped_.insert(&executor).second) {
    for (size_t i = 0; i < tensors_.size(); ++i) {
      executor.add_tap(tensors_[i], [this, i](const kernels::Tensor& value) {
        try {
          observe_(i, value);
        } catch (const Error& e) {
          throw_invalid(label_ + " '" + tensors_[i] + "': " + e.what());
        }
      });
    }
  }
  session_->run(inputs);
}

}  // namespace qforge::quant
