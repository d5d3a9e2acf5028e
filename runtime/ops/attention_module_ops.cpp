// Runtime forwards of the attention modules (graph/attention.h): SDPA on kernels/attention.h,
// MHAInProjection as one row-blocked GEMM with its bias, scattered into per-head Q, K, V.
#include <algorithm>
#include <cstring>
#include <vector>

#include "graph/catalog.h"
#include "kernels/attention.h"
#include "kernels/gemm.h"
#include "kernels/parallel.h"
#include "runtime/ops/ops.h"

namespace qforge::runtime::ops {
namespace {

using graph::Node;
using kernels::shape_str;

const InputInfo& float_input(const Node& node, std::span<const InputInfo> inputs, size_t i,
                             const char* what) {
  if (i >= inputs.size() || !inputs[i].present)
    fail_node(node, std::string(what) + " present", "none");
  if (inputs[i].dtype != DType::kFloat32) {
    fail_node(node, std::string(what) + " of type float32", kernels::dtype_name(inputs[i].dtype));
  }
  return inputs[i];
}

// ---------------------------------------------------------------------------------------------
// SDPA(Q [..., S, D], K [..., S_k, D], V [..., S_k, Dv], mask?) -> [..., S, Dv]

struct SdpaSetup {
  kernels::AttentionDims dims;
  Shape out_shape;
  Shape score_shape;
  Shape mask_shape;  // empty when there is no mask
  bool has_mask = false;
};

SdpaSetup setup_sdpa(const Node& node, std::span<const InputInfo> inputs) {
  const Shape& q = float_input(node, inputs, 0, "Q").shape;
  const Shape& k = float_input(node, inputs, 1, "K").shape;
  const Shape& v = float_input(node, inputs, 2, "V").shape;
  const size_t rank = q.size();
  const bool same_batch = rank >= 3 && k.size() == rank && v.size() == rank &&
                          std::equal(q.begin(), q.end() - 2, k.begin()) &&
                          std::equal(q.begin(), q.end() - 2, v.begin());
  if (!same_batch || q[rank - 1] != k[rank - 1] || k[rank - 2] != v[rank - 2]) {
    fail_node(node, "Q [..., S, D], K [..., S_k, D], V [..., S_k, Dv] with equal leading dims",
              "Q " + shape_str(q) + ", K " + shape_str(k) + ", V " + shape_str(v));
  }
  SdpaSetup s;
  s.dims.batch = kernels::shape_numel(std::span<const int64_t>(q.data(), rank - 2));
  s.dims.q_len = q[rank - 2];
  s.dims.kv_len = k[rank - 2];
  s.dims.head_dim = q[rank - 1];
  s.dims.value_dim = v[rank - 1];
  s.dims.scale = node.attr_float("scale");
  s.dims.causal = node.attr_int("causal", 0) != 0;
  s.out_shape = q;
  s.out_shape[rank - 1] = s.dims.value_dim;
  s.score_shape = q;
  s.score_shape[rank - 1] = s.dims.kv_len;
  if (inputs.size() > 3 && inputs[3].present) {
    const Shape& m = float_input(node, inputs, 3, "mask").shape;
    bool fits = m.size() <= rank;
    for (size_t d = 0; fits && d < m.size(); ++d) {
      const int64_t want = s.score_shape[rank - m.size() + d];
      fits = m[d] == 1 || m[d] == want;
    }
    if (!fits) {
      fail_node(node, "a mask broadcastable to the scores " + shape_str(s.score_shape),
                shape_str(m));
    }
    s.has_mask = true;
    s.mask_shape = m;
  }
  return s;
}

class SdpaKernel final : public OpKernel {
 public:
  explicit SdpaKernel(SdpaSetup setup) : setup_(std::move(setup)), slots_(kernels::max_threads()) {}
  size_t workspace_bytes() const override {
    return kernels::attention_workspace_bytes(setup_.dims, slots_);
  }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    kernels::AttentionMask mask;
    if (setup_.has_mask) {
      mask = kernels::attention_mask_layout(inputs[3].data<float>(), setup_.mask_shape,
                                            setup_.score_shape);
    }
    kernels::attention(setup_.dims, inputs[0].data<float>(), inputs[1].data<float>(),
                       inputs[2].data<float>(), setup_.has_mask ? &mask : nullptr,
                       outputs[0].data<float>(), workspace, slots_);
  }

 private:
  SdpaSetup setup_;
  int slots_;
};

std::vector<TensorInfo> infer_sdpa(const Node& node, std::span<const InputInfo> inputs) {
  return {TensorInfo{DType::kFloat32, setup_sdpa(node, inputs).out_shape}};
}

std::unique_ptr<OpKernel> create_sdpa(const Node& node, std::span<const InputInfo> inputs,
                                      std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<SdpaKernel>(setup_sdpa(node, inputs));
}

// ---------------------------------------------------------------------------------------------
// MHAInProjection(x [B, S, E], W, bias?) -> Q, K, V [B, H, S, E/H]; W is [E, 3E] when
// weight_layout is "matmul", [3E, E] when "gemm"; bias [3E].

struct InProjectionSetup {
  kernels::GemmDims gemm;
  int64_t batch = 0, seq = 0, embed = 0, heads = 0;
};

InProjectionSetup setup_in_projection(const Node& node, std::span<const InputInfo> inputs) {
  const Shape& x = float_input(node, inputs, 0, "x").shape;
  const Shape& w = float_input(node, inputs, 1, "weight").shape;
  const bool gemm_layout = graph::weight_layout(node) == graph::WeightLayout::kGemm;
  InProjectionSetup s;
  s.heads = node.attr_int("num_heads");
  if (x.size() != 3 || s.heads <= 0 || x[2] % s.heads != 0) {
    fail_node(node, "x [B, S, E] with E divisible by num_heads " + std::to_string(s.heads),
              shape_str(x));
  }
  s.batch = x[0];
  s.seq = x[1];
  s.embed = x[2];
  const Shape want = gemm_layout ? Shape{3 * s.embed, s.embed} : Shape{s.embed, 3 * s.embed};
  if (w != want) fail_node(node, "weight " + shape_str(want), shape_str(w));
  const bool has_bias = inputs.size() > 2 && inputs[2].present;
  if (has_bias && float_input(node, inputs, 2, "bias").shape != Shape{3 * s.embed}) {
    fail_node(node, "bias [" + std::to_string(3 * s.embed) + "]", shape_str(inputs[2].shape));
  }
  s.gemm =
      kernels::GemmDims{.m = s.batch * s.seq,
                        .n = 3 * s.embed,
                        .k = s.embed,
                        .trans_b = gemm_layout ? kernels::Transpose::kYes : kernels::Transpose::kNo,
                        .bias = has_bias ? kernels::GemmBias::kRow : kernels::GemmBias::kNone};
  return s;
}

class InProjectionKernel final : public OpKernel {
 public:
  // A constant weight is packed for the micro-kernel once, here (when that path applies).
  InProjectionKernel(const InProjectionSetup& setup, const Tensor* constant_weights) : s_(setup) {
    const size_t floats = kernels::gemm_prepared_weight_floats(s_.gemm);
    if (constant_weights && floats > 0) {
      prepared_.resize(floats);
      kernels::prepare_gemm_weights(s_.gemm, constant_weights->data<float>(), prepared_.data());
    }
  }
  size_t workspace_bytes() const override {
    return packed_bytes() + kernels::gemm_workspace_bytes(
                                s_.gemm, prepared_.empty() ? kernels::GemmWeightForm::kRaw
                                                           : kernels::GemmWeightForm::kPrepared);
  }
  bool reads_input(size_t index) const override { return index != 1 || prepared_.empty(); }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    float* packed = reinterpret_cast<float*>(workspace);
    const float* bias =
        inputs.size() > 2 && inputs[2].defined() ? inputs[2].data<float>() : nullptr;
    kernels::gemm(s_.gemm, inputs[0].data<float>(), inputs[1].data<float>(), bias, packed,
                  workspace + packed_bytes(), prepared_.empty() ? nullptr : prepared_.data());
    // packed row (b, s) holds [q | k | v], each [H, D]: copy each head's D values into place.
    const int64_t d = s_.embed / s_.heads;
    float* dst[3] = {outputs[0].data<float>(), outputs[1].data<float>(), outputs[2].data<float>()};
    kernels::parallel_for(s_.batch * s_.heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / s_.heads, h = bh % s_.heads;
        for (int part = 0; part < 3; ++part) {
          float* out = dst[part] + bh * s_.seq * d;
          const float* src = packed + b * s_.seq * 3 * s_.embed + part * s_.embed + h * d;
          for (int64_t t = 0; t < s_.seq; ++t) {
            std::memcpy(out + t * d, src + t * 3 * s_.embed,
                        static_cast<size_t>(d) * sizeof(float));
          }
        }
      }
    });
  }

 private:
  size_t packed_bytes() const {
    return kernels::aligned_bytes(static_cast<size_t>(s_.gemm.m * s_.gemm.n) * sizeof(float));
  }
  InProjectionSetup s_;
  std::vector<float> prepared_;
};

std::vector<TensorInfo> infer_in_projection(const Node& node, std::span<const InputInfo> inputs) {
  const InProjectionSetup s = setup_in_projection(node, inputs);
  const TensorInfo part{DType::kFloat32, {s.batch, s.heads, s.seq, s.embed / s.heads}};
  return {part, part, part};
}

std::unique_ptr<OpKernel> create_in_projection(const Node& node, std::span<const InputInfo> inputs,
                                               std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<InProjectionKernel>(setup_in_projection(node, inputs),
                                              inputs[1].constant);
}

}  // namespace

void register_attention_module_ops(OpRegistry& registry) {
  registry.add({"SDPA", infer_sdpa, create_sdpa});
  registry.add({"MHAInProjection", infer_in_projection, create_in_projection});
}

}  // namespace qforge::runtime::ops
