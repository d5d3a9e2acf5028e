// BatchNormalization (inference and training), LayerNormalization, InstanceNormalization and
// GroupNormalization (opset 18 and 21 forms): shape inference, kernels with their backward.
#include "runtime/ops/dense_common.h"

namespace qforge::runtime::ops {
namespace {

using dense::fail_unsupported;
using dense::float_input;
using dense::normalize_axis;
using dense::one_output;
using dense::optional_float_input;
using dense::output_used;
using graph::Node;
using kernels::shape_numel;
using kernels::shape_str;

// ---------------------------------------------------------------------------------------------
// BatchNormalization (inference)

std::vector<TensorInfo> infer_batch_norm(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  if (x.shape.size() < 2) fail_node(node, "input X of rank >= 2 (N, C, ...)", shape_str(x.shape));
  const int64_t training = node.attr_int("training_mode", 0);
  if (training != 0) {
    fail_unsupported(node, "training_mode 0 (inference)", std::to_string(training));
  }
  const int64_t channels = x.shape[1];
  const char* names[] = {"scale", "B", "input_mean", "input_var"};
  for (size_t i = 1; i <= 4; ++i) {
    const InputInfo& p = float_input(node, inputs, i, names[i - 1]);
    if (p.shape != Shape{channels}) {
      fail_node(node, std::string(names[i - 1]) + " of shape [" + std::to_string(channels) + "]",
                shape_str(p.shape));
    }
  }
  for (size_t i = 1; i < node.num_outputs(); ++i) {
    if (output_used(node, i)) {
      fail_node(node, "only output Y in use when training_mode is 0",
                "output " + std::to_string(i) + " '" + node.output(i)->name() + "' in use");
    }
  }
  std::vector<TensorInfo> out = one_output(node, x.shape);
  for (size_t i = 1; i < out.size(); ++i) out[i] = {DType::kFloat32, {channels}};
  return out;
}

class BatchNormKernel final : public OpKernel {
 public:
  BatchNormKernel(const Shape& x_shape, float epsilon, std::span<const InputInfo> inputs)
      : batch_(x_shape[0]),
        channels_(x_shape[1]),
        inner_(shape_numel(std::span<const int64_t>(x_shape).subspan(2))),
        epsilon_(epsilon) {
    folded_ = std::all_of(inputs.begin() + 1, inputs.begin() + 5,
                          [](const InputInfo& i) { return i.constant != nullptr; });
    if (folded_) {
      scale_.resize(static_cast<size_t>(channels_));
      shift_.resize(static_cast<size_t>(channels_));
      kernels::batch_norm_fold(
          parameters(inputs[1].constant->data<float>(), inputs[2].constant->data<float>(),
                     inputs[3].constant->data<float>(), inputs[4].constant->data<float>()),
          nullptr, kernels::FoldPrecision::kDouble,
          {.scale = scale_.data(), .shift = shift_.data()});
    }
  }
  size_t workspace_bytes() const override {
    return folded_ ? 0 : 2 * kernels::aligned_bytes(static_cast<size_t>(channels_) * sizeof(float));
  }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const float* scale = scale_.data();
    const float* shift = shift_.data();
    if (!folded_) {
      float* s = reinterpret_cast<float*>(workspace);
      float* t = reinterpret_cast<float*>(
          workspace + kernels::aligned_bytes(static_cast<size_t>(channels_) * sizeof(float)));
      kernels::batch_norm_fold(parameters(inputs[1].data<float>(), inputs[2].data<float>(),
                                          inputs[3].data<float>(), inputs[4].data<float>()),
                               nullptr, kernels::FoldPrecision::kDouble, {.scale = s, .shift = t});
      scale = s;
      shift = t;
    }
    kernels::channel_affine(inputs[0].data<float>(), scale, shift, batch_, channels_, inner_,
                            outputs[0].data<float>());
  }

  // Training on running statistics (a frozen BN): y = (x − mean)·γ/sqrt(var + eps) + β is
  // affine per channel, so dX = dY·γ/sqrt(var + eps), dγ = Σ dY·(x − mean)/sqrt(var + eps) and
  // dβ = Σ dY over the batch and the spatial positions, summed in a fixed order per channel.
  bool differentiable_input(size_t index) const override { return index <= 2; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
  // A per-channel affine map of inputs the backward keeps: its output is made again.
  bool cheap_to_recompute() const override { return true; }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    const float* x = inputs[0].data<float>();
    const float* gamma = inputs[1].data<float>();
    const float* mean = inputs[3].data<float>();
    const float* var = inputs[4].data<float>();
    const float* dy = grad_outputs[0].data<float>();
    float* dx = grad_data(grad_inputs, 0);
    float* dgamma = grad_data(grad_inputs, 1);
    float* dbeta = grad_data(grad_inputs, 2);
    kernels::parallel_for(channels_, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const float inv_std = 1.0f / std::sqrt(var[c] + epsilon_);
        const float scale = gamma[c] * inv_std;
        double sum_dy = 0;
        double sum_dy_xhat = 0;
        for (int64_t n = 0; n < batch_; ++n) {
          const int64_t base = (n * channels_ + c) * inner_;
          for (int64_t k = base; k < base + inner_; ++k) {
            sum_dy += dy[k];
            sum_dy_xhat += static_cast<double>(dy[k]) * ((x[k] - mean[c]) * inv_std);
            if (dx) dx[k] = dy[k] * scale;
          }
        }
        if (dgamma) dgamma[c] = static_cast<float>(sum_dy_xhat);
        if (dbeta) dbeta[c] = static_cast<float>(sum_dy);
      }
    });
  }

 private:
  kernels::BatchNormParameters parameters(const float* gamma, const float* beta, const float* mean,
                                          const float* var) const {
    return {.gamma = gamma,
            .beta = beta,
            .mean = mean,
            .var = var,
            .epsilon = epsilon_,
            .channels = channels_};
  }

  int64_t batch_;
  int64_t channels_;
  int64_t inner_;
  float epsilon_;
  bool folded_ = false;
  std::vector<float> scale_;
  std::vector<float> shift_;
};

std::unique_ptr<OpKernel> create_batch_norm(const Node& node, std::span<const InputInfo> inputs,
                                            std::span<const TensorInfo> /*outputs*/) {
  infer_batch_norm(node, inputs);
  return std::make_unique<BatchNormKernel>(inputs[0].shape, node.attr_float("epsilon", 1e-5f),
                                           inputs);
}

// BatchNormalization as training runs it: normalised with the batch's statistics (biased
// variance), its running mean and variance (inputs 3 and 4, the training executor's own copies)
// updated in place as PyTorch does with momentum 1 − the ONNX momentum, and a backward to X,
// scale and B. The mean and inverse deviation of the last forward are kept for the backward.
class BatchNormTrainingKernel final : public OpKernel {
 public:
  BatchNormTrainingKernel(const Shape& x_shape, float epsilon, float momentum)
      : dims_{x_shape[0], x_shape[1], shape_numel(std::span<const int64_t>(x_shape).subspan(2)),
              epsilon},
        options_{momentum},
        saved_mean_(static_cast<size_t>(x_shape[1])),
        saved_inv_std_(static_cast<size_t>(x_shape[1])),
        own_sums_(static_cast<size_t>(2 * x_shape[1])) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    Tensor running_mean = inputs[3];
    Tensor running_var = inputs[4];
    kernels::batch_norm_training(dims_, options_, inputs[0].data<float>(), inputs[1].data<float>(),
                                 inputs[2].data<float>(), outputs[0].data<float>(),
                                 saved_mean_.data(), saved_inv_std_.data(),
                                 running_mean.data<float>(), running_var.data<float>());
  }
  bool differentiable_input(size_t index) const override { return index <= 2; }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
  // The output (a Hardswish's or SiLU's input, which their backward reads) is made again from
  // the input, which the backward keeps, and the statistics the forward saved.
  bool cheap_to_recompute() const override { return true; }
  void recompute_outputs(std::span<const Tensor> inputs, std::span<Tensor> outputs,
                         std::byte* /*workspace*/) override {
    kernels::batch_norm_normalize(dims_, inputs[0].data<float>(), inputs[1].data<float>(),
                                  inputs[2].data<float>(), saved_mean_.data(),
                                  saved_inv_std_.data(), outputs[0].data<float>());
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    kernels::batch_norm_training_backward(dims_, inputs[0].data<float>(), inputs[1].data<float>(),
                                          saved_mean_.data(), saved_inv_std_.data(),
                                          grad_outputs[0].data<float>(), grad_data(grad_inputs, 0),
                                          grad_data(grad_inputs, 1), grad_data(grad_inputs, 2));
  }

  // Over shards (synchronised BN): the forward sums Σx, then Σ(x - mean)² around the whole
  // batch's mean; the backward Σdy and Σdy·(x - mean), of which each shard keeps its own for
  // its share of dgamma and dbeta.
  ShardRounds shard_rounds() const override {
    return {.forward = 2, .backward = 1, .size = static_cast<size_t>(2 * dims_.channels)};
  }
  void forward_round(int round, std::span<const Tensor> inputs, std::span<Tensor> /*outputs*/,
                     const double* totals, double* partial, int64_t total_batch) override {
    const float* x = inputs[0].data<float>();
    if (round == 0) {
      kernels::batch_norm_shard_sums(dims_, x, partial);
      return;
    }
    const int64_t count = total_batch * dims_.inner;
    for (size_t c = 0; c < saved_mean_.size(); ++c) {
      saved_mean_[c] = kernels::batch_norm_mean(totals[c], count);
    }
    kernels::batch_norm_shard_squares(dims_, x, saved_mean_.data(), partial);
  }
  void forward_finish(std::span<const Tensor> inputs, std::span<Tensor> outputs,
                      const double* totals, int64_t total_batch, bool update_state) override {
    Tensor running_mean = inputs[3];
    Tensor running_var = inputs[4];
    kernels::batch_norm_apply_statistics(dims_, options_, total_batch * dims_.inner,
                                         inputs[0].data<float>(), inputs[1].data<float>(),
                                         inputs[2].data<float>(), saved_mean_.data(), totals,
                                         outputs[0].data<float>(), saved_inv_std_.data(),
                                         update_state ? running_mean.data<float>() : nullptr,
                                         update_state ? running_var.data<float>() : nullptr);
  }
  void backward_round(int /*round*/, std::span<const Tensor> inputs,
                      std::span<const Tensor> /*outputs*/, std::span<const Tensor> grad_outputs,
                      const double* /*totals*/, double* partial, int64_t /*total_batch*/) override {
    kernels::batch_norm_backward_shard_sums(dims_, inputs[0].data<float>(), saved_mean_.data(),
                                            grad_outputs[0].data<float>(), own_sums_.data());
    std::copy(own_sums_.begin(), own_sums_.end(), partial);
  }
  void backward_finish(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                       std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                       const double* totals, int64_t total_batch) override {
    kernels::batch_norm_backward_apply(dims_, total_batch * dims_.inner, inputs[0].data<float>(),
                                       inputs[1].data<float>(), saved_mean_.data(),
                                       saved_inv_std_.data(), grad_outputs[0].data<float>(), totals,
                                       own_sums_.data(), grad_data(grad_inputs, 0),
                                       grad_data(grad_inputs, 1), grad_data(grad_inputs, 2));
  }

 private:
  kernels::BatchNormDims dims_;
  kernels::BatchNormTrainingOptions options_;
  std::vector<float> saved_mean_;
  std::vector<float> saved_inv_std_;
  std::vector<double> own_sums_;
};

std::unique_ptr<OpKernel> create_batch_norm_training(const Node& node,
                                                     std::span<const InputInfo> inputs,
                                                     std::span<const TensorInfo> /*outputs*/) {
  infer_batch_norm(node, inputs);
  const float onnx_momentum = node.attr_float("momentum", 0.9f);
  if (!(onnx_momentum >= 0.0f && onnx_momentum <= 1.0f)) {
    fail_node(node, "momentum in [0, 1]", std::to_string(onnx_momentum));
  }
  return std::make_unique<BatchNormTrainingKernel>(
      inputs[0].shape, node.attr_float("epsilon", 1e-5f), 1.0f - onnx_momentum);
}

// ---------------------------------------------------------------------------------------------
// LayerNormalization

// True when `param` broadcasts unidirectionally (right-aligned) onto `target`.
bool broadcasts_onto(const Shape& param, std::span<const int64_t> target) {
  if (param.size() > target.size()) return false;
  const size_t lead = target.size() - param.size();
  for (size_t i = 0; i < param.size(); ++i) {
    if (param[i] != 1 && param[i] != target[lead + i]) return false;
  }
  return true;
}

// Writes `param` broadcast onto `target` (row-major) into dst.
void expand_onto(const float* param, const Shape& param_shape, std::span<const int64_t> target,
                 float* dst) {
  const size_t rank = target.size();
  const size_t lead = rank - param_shape.size();
  const int64_t total = shape_numel(target);
  for (int64_t i = 0; i < total; ++i) {
    int64_t rest = i;
    int64_t src = 0;
    int64_t stride = 1;
    for (size_t a = rank; a-- > 0;) {
      const int64_t idx = rest % target[a];
      rest /= target[a];
      if (a >= lead) {
        const int64_t dim = param_shape[a - lead];
        if (dim != 1) src += idx * stride;
        stride *= dim;
      }
    }
    dst[i] = param[src];
  }
}

struct LayerNormSetup {
  int64_t axis = 0;
  kernels::LayerNormDims dims;
  Shape inner_shape;
  Shape stat_shape;
};

LayerNormSetup setup_layer_norm(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  const InputInfo& scale = float_input(node, inputs, 1, "Scale");
  const InputInfo* bias = optional_float_input(node, inputs, 2, "B");
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  if (rank < 1) fail_node(node, "input X of rank >= 1", shape_str(x.shape));
  const int64_t stash = node.attr_int("stash_type", 1);
  if (stash != 1)
    fail_unsupported(node, "stash_type 1 (float32 statistics)", std::to_string(stash));
  LayerNormSetup s;
  s.axis = normalize_axis(node, node.attr_int("axis", -1), rank, "axis");
  s.inner_shape.assign(x.shape.begin() + s.axis, x.shape.end());
  if (!broadcasts_onto(scale.shape, s.inner_shape)) {
    fail_node(node, "Scale broadcastable to the normalized shape " + shape_str(s.inner_shape),
              shape_str(scale.shape));
  }
  if (bias && !broadcasts_onto(bias->shape, s.inner_shape)) {
    fail_node(node, "B broadcastable to the normalized shape " + shape_str(s.inner_shape),
              shape_str(bias->shape));
  }
  s.dims.rows = shape_numel(std::span<const int64_t>(x.shape).first(static_cast<size_t>(s.axis)));
  s.dims.size = shape_numel(s.inner_shape);
  s.dims.epsilon = node.attr_float("epsilon", 1e-5f);
  s.stat_shape = x.shape;
  std::fill(s.stat_shape.begin() + s.axis, s.stat_shape.end(), 1);
  return s;
}

std::vector<TensorInfo> infer_layer_norm(const Node& node, std::span<const InputInfo> inputs) {
  const LayerNormSetup s = setup_layer_norm(node, inputs);
  std::vector<TensorInfo> out = one_output(node, inputs[0].shape);
  for (size_t i = 1; i < out.size(); ++i) out[i] = {DType::kFloat32, s.stat_shape};
  return out;
}

class LayerNormKernel final : public OpKernel {
 public:
  LayerNormKernel(LayerNormSetup setup, std::span<const InputInfo> inputs)
      : s_(std::move(setup)),
        saved_mean_(static_cast<size_t>(s_.dims.rows)),
        saved_inv_std_(static_cast<size_t>(s_.dims.rows)) {
    prepare(inputs, 1, scale_);
    if (inputs.size() > 2 && inputs[2].present) prepare(inputs, 2, bias_);
  }
  size_t workspace_bytes() const override {
    const size_t one = kernels::aligned_bytes(static_cast<size_t>(s_.dims.size) * sizeof(float));
    return (scale_.expand_in_forward ? one : 0) + (bias_.expand_in_forward ? one : 0);
  }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const size_t one = kernels::aligned_bytes(static_cast<size_t>(s_.dims.size) * sizeof(float));
    const float* scale = resolve(inputs, 1, scale_, workspace);
    if (scale_.expand_in_forward) workspace += one;
    const float* bias =
        inputs.size() > 2 && inputs[2].defined() ? resolve(inputs, 2, bias_, workspace) : nullptr;
    float* mean =
        outputs.size() > 1 && outputs[1].defined() ? outputs[1].data<float>() : saved_mean_.data();
    float* inv = outputs.size() > 2 && outputs[2].defined() ? outputs[2].data<float>()
                                                            : saved_inv_std_.data();
    kernels::layer_norm(s_.dims, inputs[0].data<float>(), scale, bias, outputs[0].data<float>(),
                        mean, inv);
  }

  // X, and Scale and B where they have the normalised shape (a broadcast one would need its
  // gradient summed back down: not done).
  bool differentiable_input(size_t index) const override {
    return index == 0 || (index == 1 && scale_.full) || (index == 2 && bias_.full);
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> outputs,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* /*workspace*/) override {
    const float* mean =
        outputs.size() > 1 && outputs[1].defined() ? outputs[1].data<float>() : saved_mean_.data();
    const float* inv = outputs.size() > 2 && outputs[2].defined() ? outputs[2].data<float>()
                                                                  : saved_inv_std_.data();
    if (!scale_.full) throw_unsupported("LayerNormalization: backward with a broadcast Scale");
    kernels::layer_norm_backward(s_.dims, inputs[0].data<float>(), inputs[1].data<float>(), mean,
                                 inv, grad_outputs[0].data<float>(), grad_data(grad_inputs, 0),
                                 grad_data(grad_inputs, 1), grad_data(grad_inputs, 2));
  }

 private:
  // A parameter either used in place (already full size), expanded once here (a constant), or
  // expanded into the workspace on every call.
  struct Param {
    Shape shape;
    bool full = true;
    bool expand_in_forward = false;
    std::vector<float> expanded;
  };

  void prepare(std::span<const InputInfo> inputs, size_t index, Param& p) {
    p.shape = inputs[index].shape;
    p.full = shape_numel(p.shape) == s_.dims.size;
    if (p.full) return;
    if (inputs[index].constant) {
      p.expanded.resize(static_cast<size_t>(s_.dims.size));
      expand_onto(inputs[index].constant->data<float>(), p.shape, s_.inner_shape,
                  p.expanded.data());
    } else {
      p.expand_in_forward = true;
    }
  }

  const float* resolve(std::span<const Tensor> inputs, size_t index, const Param& p,
                       std::byte* workspace) const {
    if (p.full) return inputs[index].data<float>();
    if (!p.expand_in_forward) return p.expanded.data();
    float* dst = reinterpret_cast<float*>(workspace);
    expand_onto(inputs[index].data<float>(), p.shape, s_.inner_shape, dst);
    return dst;
  }

  LayerNormSetup s_;
  Param scale_;
  Param bias_;
  // The statistics of the last forward when outputs Mean and InvStdDev are not in use.
  std::vector<float> saved_mean_;
  std::vector<float> saved_inv_std_;
};

std::unique_ptr<OpKernel> create_layer_norm(const Node& node, std::span<const InputInfo> inputs,
                                            std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<LayerNormKernel>(setup_layer_norm(node, inputs), inputs);
}

// ---------------------------------------------------------------------------------------------
// InstanceNormalization and GroupNormalization: one kernel, InstanceNormalization being one
// channel per group. X [N, C, D1, …]; scale and bias per channel, or per group in
// GroupNormalization's opset-18 form (expanded to channels in the workspace on each call).

float norm_epsilon(const Node& node) {
  const float epsilon = node.attr_float("epsilon", 1e-5f);
  if (!(std::isfinite(epsilon) && epsilon >= 0.0f)) {
    fail_node(node, "attribute 'epsilon' finite and >= 0", std::to_string(epsilon));
  }
  return epsilon;
}

struct GroupNormSetup {
  kernels::GroupNormDims dims;
  bool per_group_params = false;  // scale and bias hold one value per group, not per channel
};

GroupNormSetup setup_instance_norm(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "input");
  const InputInfo& scale = float_input(node, inputs, 1, "scale");
  const InputInfo& bias = float_input(node, inputs, 2, "B");
  if (x.shape.size() < 3) {
    fail_node(node, "input of rank >= 3 (N, C, D1, …)", shape_str(x.shape));
  }
  const Shape channels = {x.shape[1]};
  if (scale.shape != channels) {
    fail_node(node, "scale of shape " + shape_str(channels), shape_str(scale.shape));
  }
  if (bias.shape != channels) {
    fail_node(node, "B of shape " + shape_str(channels), shape_str(bias.shape));
  }
  GroupNormSetup s;
  s.dims.batch = x.shape[0];
  s.dims.channels = x.shape[1];
  s.dims.groups = x.shape[1];
  s.dims.inner = shape_numel(std::span<const int64_t>(x.shape).subspan(2));
  s.dims.epsilon = norm_epsilon(node);
  return s;
}

int64_t num_groups(const Node& node) {
  const int64_t groups = node.attr_int("num_groups");
  if (groups < 1) fail_node(node, "attribute 'num_groups' >= 1", std::to_string(groups));
  return groups;
}

// GroupNormalization's scale and bias are [num_groups] at opsets 18 to 20 and [C] from 21.
void check_group_norm_opset_form(const Node& node, std::span<const InputInfo> inputs,
                                 int64_t opset) {
  if (inputs.size() < 3 || !inputs[0].present || !inputs[1].present || !inputs[2].present ||
      inputs[0].shape.size() < 2) {
    return;  // infer reports these
  }
  const bool per_channel = opset >= 21;
  const Shape want = {per_channel ? inputs[0].shape[1] : num_groups(node)};
  const std::string form = per_channel ? " (per channel from opset 21)"
                                       : " (per group at opsets 18 to 20; per channel from 21)";
  for (size_t i : {size_t{1}, size_t{2}}) {
    if (inputs[i].shape != want) {
      fail_node(node,
                std::string(i == 1 ? "scale" : "bias") + " of shape " + shape_str(want) +
                    " at opset " + std::to_string(opset) + form,
                shape_str(inputs[i].shape));
    }
  }
}

GroupNormSetup setup_group_norm(const Node& node, std::span<const InputInfo> inputs) {
  const InputInfo& x = float_input(node, inputs, 0, "X");
  const InputInfo& scale = float_input(node, inputs, 1, "scale");
  const InputInfo& bias = float_input(node, inputs, 2, "bias");
  if (x.shape.size() < 2) fail_node(node, "input X of rank >= 2 (N, C, …)", shape_str(x.shape));
  const int64_t groups = num_groups(node);
  const int64_t channels = x.shape[1];
  if (channels % groups != 0) {
    fail_node(node,
              "num_groups dividing the " + std::to_string(channels) + " channels of X " +
                  shape_str(x.shape),
              std::to_string(groups));
  }
  const int64_t stash = node.attr_int("stash_type", 1);
  if (stash != 1) {
    fail_unsupported(node, "stash_type 1 (float32 statistics)", std::to_string(stash));
  }
  const Shape per_group = {groups};
  const Shape per_channel = {channels};
  if ((scale.shape != per_group && scale.shape != per_channel) || bias.shape != scale.shape) {
    fail_node(node,
              "scale and bias both of shape " + shape_str(per_group) + " (opset 18) or " +
                  shape_str(per_channel) + " (opset 21)",
              shape_str(scale.shape) + " and " + shape_str(bias.shape));
  }
  GroupNormSetup s;
  s.dims.batch = x.shape[0];
  s.dims.channels = channels;
  s.dims.groups = groups;
  s.dims.inner = shape_numel(std::span<const int64_t>(x.shape).subspan(2));
  s.dims.epsilon = norm_epsilon(node);
  s.per_group_params = groups != channels && scale.shape == per_group;
  return s;
}

std::vector<TensorInfo> infer_instance_norm(const Node& node, std::span<const InputInfo> inputs) {
  setup_instance_norm(node, inputs);
  return one_output(node, inputs[0].shape);
}

std::vector<TensorInfo> infer_group_norm(const Node& node, std::span<const InputInfo> inputs) {
  setup_group_norm(node, inputs);
  return one_output(node, inputs[0].shape);
}

class GroupNormKernel final : public OpKernel {
 public:
  explicit GroupNormKernel(const GroupNormSetup& setup)
      : s_(setup),
        saved_mean_(static_cast<size_t>(s_.dims.batch * s_.dims.groups)),
        saved_inv_std_(static_cast<size_t>(s_.dims.batch * s_.dims.groups)) {}

  size_t workspace_bytes() const override { return s_.per_group_params ? 2 * channel_bytes() : 0; }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const float* scale = per_channel(inputs[1], workspace, 0);
    const float* bias = per_channel(inputs[2], workspace, 1);
    kernels::group_norm(s_.dims, inputs[0].data<float>(), scale, bias, outputs[0].data<float>(),
                        saved_mean_.data(), saved_inv_std_.data());
  }

  bool differentiable_input(size_t index) const override { return index <= 2; }
  // Plane sums, then (per-group parameters) the expanded scale and the per-channel gradients
  // of scale and bias before they are summed over each group.
  size_t backward_workspace_bytes() const override {
    const size_t sums = kernels::aligned_bytes(
        static_cast<size_t>(kernels::group_norm_backward_workspace(s_.dims)) * sizeof(float));
    return sums + (s_.per_group_params ? 3 * channel_bytes() : 0);
  }
  BackwardReads backward_reads() const override {
    return {.inputs = BackwardReads::kEverything, .outputs = BackwardReads::kNothing};
  }
  void backward(std::span<const Tensor> inputs, std::span<const Tensor> /*outputs*/,
                std::span<const Tensor> grad_outputs, std::span<Tensor> grad_inputs,
                std::byte* workspace) override {
    float* sums = reinterpret_cast<float*>(workspace);
    workspace += kernels::aligned_bytes(
        static_cast<size_t>(kernels::group_norm_backward_workspace(s_.dims)) * sizeof(float));
    const float* scale = per_channel(inputs[1], workspace, 0);
    float* dscale = grad_data(grad_inputs, 1);
    float* dbias = grad_data(grad_inputs, 2);
    float* group_dscale = dscale;
    float* group_dbias = dbias;
    if (s_.per_group_params) {
      if (dscale) dscale = reinterpret_cast<float*>(workspace + channel_bytes());
      if (dbias) dbias = reinterpret_cast<float*>(workspace + 2 * channel_bytes());
    }
    kernels::group_norm_backward(s_.dims, inputs[0].data<float>(), scale, saved_mean_.data(),
                                 saved_inv_std_.data(), grad_outputs[0].data<float>(),
                                 grad_data(grad_inputs, 0), dscale, dbias, sums);
    if (!s_.per_group_params) return;
    // Each group's parameter gradient: its channels' gradients added in channel order.
    const int64_t per_group = s_.dims.channels / s_.dims.groups;
    const auto sum_groups = [&](const float* channel_grad, float* group_grad) {
      if (!group_grad) return;
      for (int64_t g = 0; g < s_.dims.groups; ++g) {
        float sum = 0.0f;
        for (int64_t k = 0; k < per_group; ++k) sum += channel_grad[g * per_group + k];
        group_grad[g] = sum;
      }
    };
    sum_groups(dscale, group_dscale);
    sum_groups(dbias, group_dbias);
  }

 private:
  size_t channel_bytes() const {
    return kernels::aligned_bytes(static_cast<size_t>(s_.dims.channels) * sizeof(float));
  }
  // The parameter per channel: itself, or its per-group values repeated into channel slot
  // `slot` of the workspace.
  const float* per_channel(const Tensor& param, std::byte* workspace, size_t slot) const {
    if (!s_.per_group_params) return param.data<float>();
    const int64_t per_group = s_.dims.channels / s_.dims.groups;
    float* out = reinterpret_cast<float*>(workspace + slot * channel_bytes());
    const float* in = param.data<float>();
    for (int64_t c = 0; c < s_.dims.channels; ++c) out[c] = in[c / per_group];
    return out;
  }

  GroupNormSetup s_;
  // The statistics of the last forward, which backward reads.
  std::vector<float> saved_mean_;
  std::vector<float> saved_inv_std_;
};

std::unique_ptr<OpKernel> create_instance_norm(const Node& node, std::span<const InputInfo> inputs,
                                               std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<GroupNormKernel>(setup_instance_norm(node, inputs));
}

std::unique_ptr<OpKernel> create_group_norm(const Node& node, std::span<const InputInfo> inputs,
                                            std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<GroupNormKernel>(setup_group_norm(node, inputs));
}

}  // namespace

void check_opset_form(const Node& node, std::span<const InputInfo> inputs, int64_t opset) {
  if (node.op_type() == "GroupNormalization") check_group_norm_opset_form(node, inputs, opset);
}

void register_norm_ops(OpRegistry& registry) {
  registry.add(
      {"BatchNormalization", infer_batch_norm, create_batch_norm, create_batch_norm_training});
  registry.add({"LayerNormalization", infer_layer_norm, create_layer_norm});
  registry.add({"InstanceNormalization", infer_instance_norm, create_instance_norm});
  registry.add({"GroupNormalization", infer_group_norm, create_group_norm});
}

}  // namespace qforge::runtime::ops
