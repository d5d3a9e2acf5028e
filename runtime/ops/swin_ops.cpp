// Runtime forward of the Swin modules (graph/swin.h). SwinAttention runs on the SDPA kernel
// (kernels/attention.h): the bias [H, S, S] and the window mask [nW, S, S] are summed once per
// run into one [nW, H, S, S] table that the kernel reads with stride 0 over the images; without a
// mask the bias is read directly. SwinWindowPartition and SwinWindowReverse are row gathers
// (kernels/swin_window.h).
#include <algorithm>
#include <tuple>
#include <utility>

#include "kernels/attention.h"
#include "kernels/gemm.h"
#include "kernels/parallel.h"
#include "kernels/swin_window.h"
#include "runtime/ops/ops.h"

namespace qforge::runtime::ops {
namespace {

using graph::Node;
using kernels::shape_str;

struct SwinSetup {
  kernels::AttentionDims dims;
  Shape out_shape;
  Shape score_shape;  // [N, H, S, S]
  Shape bias_shape;
  int64_t heads = 0;
  int64_t windows = 1;
  bool has_mask = false;
};

const Shape& float_shape(const Node& node, std::span<const InputInfo> inputs, size_t i,
                         const char* what) {
  if (i >= inputs.size() || !inputs[i].present) {
    fail_node(node, std::string(what) + " present", "none");
  }
  if (inputs[i].dtype != DType::kFloat32) {
    fail_node(node, std::string(what) + " of type float32", kernels::dtype_name(inputs[i].dtype));
  }
  return inputs[i].shape;
}

SwinSetup setup_swin(const Node& node, std::span<const InputInfo> inputs) {
  const Shape& q = float_shape(node, inputs, 0, "Q");
  const Shape& k = float_shape(node, inputs, 1, "K");
  const Shape& v = float_shape(node, inputs, 2, "V");
  const Shape& bias = float_shape(node, inputs, 3, "bias");
  if (q.size() != 4 || k != q || v.size() != 4 || v[0] != q[0] || v[1] != q[1] || v[2] != q[2]) {
    fail_node(node, "Q, K [N, H, S, D] and V [N, H, S, Dv]",
              "Q " + shape_str(q) + ", K " + shape_str(k) + ", V " + shape_str(v));
  }
  SwinSetup s;
  const int64_t n = q[0], h = q[1], len = q[2];
  s.heads = h;
  if (bias.size() < 3 || kernels::shape_numel(bias) != h * len * len || bias.back() != len ||
      bias[bias.size() - 2] != len || bias[bias.size() - 3] != h) {
    fail_node(node,
              "bias [1, " + std::to_string(h) + ", " + std::to_string(len) + ", " +
                  std::to_string(len) + "]",
              shape_str(bias));
  }
  s.bias_shape = bias;
  s.has_mask = inputs.size() > 4 && inputs[4].present;
  if (s.has_mask) {
    const Shape& mask = float_shape(node, inputs, 4, "window mask");
    s.windows = node.attr_int("num_windows");
    if (s.windows <= 0 || n % s.windows != 0 ||
        kernels::shape_numel(mask) != s.windows * len * len || mask.size() < 2 ||
        mask.back() != len || mask[mask.size() - 2] != len) {
      fail_node(node,
                "a window mask [1, nW, 1, S, S] with nW = num_windows " +
                    std::to_string(s.windows) + " dividing N " + std::to_string(n),
                shape_str(mask));
    }
  }
  s.dims.batch = n * h;
  s.dims.q_len = len;
  s.dims.kv_len = len;
  s.dims.head_dim = q[3];
  s.dims.value_dim = v[3];
  s.dims.scale = node.attr_float("scale");
  s.out_shape = {n, h, len, v[3]};
  s.score_shape = {n, h, len, len};
  return s;
}

class SwinAttentionKernel final : public OpKernel {
 public:
  explicit SwinAttentionKernel(SwinSetup setup)
      : s_(std::move(setup)), slots_(kernels::max_threads()) {}
  size_t workspace_bytes() const override {
    return table_bytes() + kernels::attention_workspace_bytes(s_.dims, slots_);
  }
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* workspace) override {
    const float* bias = inputs[3].data<float>();
    kernels::AttentionMask mask;
    if (!s_.has_mask) {
      mask = kernels::attention_mask_layout(bias, s_.bias_shape, s_.score_shape);
    } else {
      const int64_t area = s_.dims.q_len * s_.dims.kv_len;
      const float* window = inputs[4].data<float>();
      float* table = reinterpret_cast<float*>(workspace);
      kernels::parallel_for(s_.windows * s_.heads, 1, [&](int64_t begin, int64_t end) {
        for (int64_t wh = begin; wh < end; ++wh) {
          const float* b = bias + (wh % s_.heads) * area;
          const float* m = window + (wh / s_.heads) * area;
          float* t = table + wh * area;
          for (int64_t i = 0; i < area; ++i) t[i] = b[i] + m[i];
        }
      });
      // Scores [N, H, S, S] read as [B, nW, H, S, S]: the table repeats over the images.
      mask.data = table;
      mask.batch_shape = {s_.dims.batch / (s_.windows * s_.heads), s_.windows, s_.heads};
      mask.batch_strides = {0, s_.heads * area, area};
      mask.row_stride = s_.dims.kv_len;
      mask.col_stride = 1;
    }
    kernels::attention(s_.dims, inputs[0].data<float>(), inputs[1].data<float>(),
                       inputs[2].data<float>(), &mask, outputs[0].data<float>(),
                       workspace + table_bytes(), slots_);
  }

 private:
  size_t table_bytes() const {
    if (!s_.has_mask) return 0;
    return kernels::aligned_bytes(
        static_cast<size_t>(s_.windows * s_.heads * s_.dims.q_len * s_.dims.kv_len) *
        sizeof(float));
  }
  SwinSetup s_;
  int slots_;
};

std::vector<TensorInfo> infer_swin(const Node& node, std::span<const InputInfo> inputs) {
  return {TensorInfo{DType::kFloat32, setup_swin(node, inputs).out_shape}};
}

std::unique_ptr<OpKernel> create_swin(const Node& node, std::span<const InputInfo> inputs,
                                      std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<SwinAttentionKernel>(setup_swin(node, inputs));
}

// ---------------------------------------------------------------------------------------------
// SwinWindowPartition, SwinWindowReverse

// A (rows, columns) attribute pair.
std::pair<int64_t, int64_t> pair_attr(const Node& node, const char* name, int64_t fallback) {
  const std::vector<int64_t> v = node.attr_ints(name, {fallback, fallback});
  if (v.size() != 2) {
    fail_node(node, std::string(name) + " of 2 values (rows, columns)",
              std::to_string(v.size()) + " values");
  }
  return {v[0], v[1]};
}

// The geometry of a window module whose image (unpadded) is [batch, height, width, channels].
kernels::SwinWindowGeometry window_geometry(const Node& node, int64_t batch, int64_t height,
                                            int64_t width, int64_t channels) {
  kernels::SwinWindowGeometry geo;
  geo.batch = batch;
  geo.height = height;
  geo.width = width;
  geo.channels = channels;
  std::tie(geo.window_h, geo.window_w) = pair_attr(node, "window_size", 0);
  std::tie(geo.shift_h, geo.shift_w) = pair_attr(node, "shift", 0);
  std::tie(geo.pad_h, geo.pad_w) = pair_attr(node, "padding", 0);
  try {
    kernels::check_swin_window_geometry(geo);
  } catch (const Error& e) {
    fail_node(node, "a consistent window geometry", e.what());
  }
  return geo;
}

kernels::SwinWindowGeometry partition_geometry(const Node& node,
                                               std::span<const InputInfo> inputs) {
  const Shape& x = float_shape(node, inputs, 0, "image");
  if (x.size() != 4) fail_node(node, "an image [B, H, W, C]", shape_str(x));
  return window_geometry(node, x[0], x[1], x[2], x[3]);
}

kernels::SwinWindowGeometry reverse_geometry(const Node& node, std::span<const InputInfo> inputs) {
  const Shape& x = float_shape(node, inputs, 0, "windows");
  const auto [h, w] = pair_attr(node, "image_size", 0);
  if (x.size() != 3) fail_node(node, "windows [B·nW, wh·ww, C]", shape_str(x));
  kernels::SwinWindowGeometry geo = window_geometry(node, 1, h, w, x[2]);
  const int64_t windows = geo.windows_per_image();
  if (x[1] != geo.window_h * geo.window_w || x[0] % windows != 0) {
    fail_node(node,
              "windows [B·" + std::to_string(windows) + ", " +
                  std::to_string(geo.window_h * geo.window_w) + ", C]",
              shape_str(x));
  }
  geo.batch = x[0] / windows;
  return geo;
}

class SwinWindowKernel final : public OpKernel {
 public:
  SwinWindowKernel(kernels::SwinWindowGeometry geo, bool reverse) : geo_(geo), reverse_(reverse) {}
  void forward(std::span<const Tensor> inputs, std::span<Tensor> outputs,
               std::byte* /*workspace*/) override {
    if (reverse_) {
      kernels::swin_window_reverse(geo_, inputs[0].data<float>(), outputs[0].data<float>());
    } else {
      kernels::swin_window_partition(geo_, inputs[0].data<float>(), outputs[0].data<float>());
    }
  }

 private:
  kernels::SwinWindowGeometry geo_;
  bool reverse_;
};

std::vector<TensorInfo> infer_partition(const Node& node, std::span<const InputInfo> inputs) {
  const kernels::SwinWindowGeometry g = partition_geometry(node, inputs);
  return {TensorInfo{DType::kFloat32,
                     {g.batch * g.windows_per_image(), g.window_h * g.window_w, g.channels}}};
}

std::unique_ptr<OpKernel> create_partition(const Node& node, std::span<const InputInfo> inputs,
                                           std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<SwinWindowKernel>(partition_geometry(node, inputs), false);
}

std::vector<TensorInfo> infer_reverse(const Node& node, std::span<const InputInfo> inputs) {
  const kernels::SwinWindowGeometry g = reverse_geometry(node, inputs);
  return {TensorInfo{DType::kFloat32, {g.batch, g.height, g.width, g.channels}}};
}

std::unique_ptr<OpKernel> create_reverse(const Node& node, std::span<const InputInfo> inputs,
                                         std::span<const TensorInfo> /*outputs*/) {
  return std::make_unique<SwinWindowKernel>(reverse_geometry(node, inputs), true);
}

}  // namespace

void register_swin_ops(OpRegistry& registry) {
  registry.add({"SwinAttention", infer_swin, create_swin});
  registry.add({"SwinWindowPartition", infer_partition, create_partition});
  registry.add({"SwinWindowReverse", infer_reverse, create_reverse});
}

}  // namespace qforge::runtime::ops
