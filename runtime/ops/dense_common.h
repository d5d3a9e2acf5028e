// What the op files of the dense family share (conv_ops, matmul_ops, norm_ops, pool_ops):
// input and attribute checks for shape inference, and the sliding-window rules of Conv and the
// pools. Internal to runtime/ops/: include it from its .cpp files only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kernels/conv.h"
#include "kernels/conv_backward.h"
#include "kernels/conv_transpose.h"
#include "kernels/gemm.h"
#include "kernels/gemm_backward.h"
#include "kernels/norm.h"
#include "kernels/parallel.h"
#include "kernels/pool.h"
#include "kernels/pool_backward.h"
#include "kernels/reduce.h"
#include "kernels/softmax.h"
#include "runtime/ops/ops.h"

namespace qforge::runtime::ops::dense {

using graph::Node;
using kernels::shape_numel;
using kernels::shape_str;

// ---------------------------------------------------------------------------------------------
// Validation helpers

[[noreturn]] inline void fail_unsupported(const Node& node, const std::string& rule,
                                          const std::string& got) {
  throw_unsupported("shape inference: " + node.label() + ": expected " + rule + ", got " + got);
}

inline std::string ints_str(const std::vector<int64_t>& values) {
  return shape_str(values);
}

inline const InputInfo& float_input(const Node& node, std::span<const InputInfo> inputs,
                                    size_t index, const char* name) {
  if (index >= inputs.size() || !inputs[index].present) {
    fail_node(node, std::string("input ") + std::to_string(index) + " (" + name + ")", "none");
  }
  const InputInfo& info = inputs[index];
  if (info.dtype != DType::kFloat32) {
    fail_unsupported(node, std::string("float32 ") + name,
                     std::string(kernels::dtype_name(info.dtype)));
  }
  return info;
}

inline const InputInfo* optional_float_input(const Node& node, std::span<const InputInfo> inputs,
                                             size_t index, const char* name) {
  if (index >= inputs.size() || !inputs[index].present) return nullptr;
  return &float_input(node, inputs, index, name);
}

// An output some node reads (or the graph returns); ONNX's omitted outputs are unused values.
inline bool output_used(const Node& node, size_t index) {
  const graph::Value* v = node.output(index);
  return v && (!v->consumers().empty() || v->is_graph_output());
}

inline int64_t normalize_axis(const Node& node, int64_t axis, int64_t rank, const char* what) {
  if (axis < -rank || axis >= rank) {
    fail_node(
        node,
        std::string(what) + " in [" + std::to_string(-rank) + ", " + std::to_string(rank) + ")",
        std::to_string(axis));
  }
  return axis < 0 ? axis + rank : axis;
}

inline int64_t bool_attr(const Node& node, const char* name, int64_t fallback) {
  const int64_t v = node.attr_int(name, fallback);
  if (v != 0 && v != 1)
    fail_node(node, std::string("attribute '") + name + "' 0 or 1", std::to_string(v));
  return v;
}

// Output shapes of single-output float ops.
inline std::vector<TensorInfo> one_output(const Node& node, Shape shape) {
  std::vector<TensorInfo> out(std::max<size_t>(node.num_outputs(), 1));
  out[0] = {DType::kFloat32, std::move(shape)};
  return out;
}

// ---------------------------------------------------------------------------------------------
// Sliding windows (Conv and the pools): strides, dilations, pads and auto_pad resolved to one
// begin/end pad and one output size per spatial axis.

struct Window {
  std::vector<int64_t> kernel;
  std::vector<int64_t> strides;
  std::vector<int64_t> dilations;
  std::vector<int64_t> pad_begin;
  std::vector<int64_t> pad_end;
  std::vector<int64_t> out;
};

struct WindowRules {
  bool ceil_mode = false;
  bool pads_below_kernel = false;  // pools: a window must hold at least one input position
};

inline std::vector<int64_t> per_axis_attr(const Node& node, const char* name, size_t count,
                                          int64_t fallback, int64_t minimum) {
  std::vector<int64_t> v = node.attr_ints(name, std::vector<int64_t>(count, fallback));
  if (v.size() != count) {
    fail_node(node,
              std::string("attribute '") + name + "' with " + std::to_string(count) + " values",
              ints_str(v));
  }
  for (int64_t x : v) {
    if (x < minimum) {
      fail_node(node, std::string("attribute '") + name + "' values >= " + std::to_string(minimum),
                ints_str(v));
    }
  }
  return v;
}

inline Window resolve_window(const Node& node, std::span<const int64_t> in_spatial,
                             std::vector<int64_t> kernel, const WindowRules& rules) {
  const size_t rank = in_spatial.size();
  Window w;
  w.kernel = std::move(kernel);
  w.strides = per_axis_attr(node, "strides", rank, 1, 1);
  w.dilations = per_axis_attr(node, "dilations", rank, 1, 1);
  const std::vector<int64_t> pads = per_axis_attr(node, "pads", 2 * rank, 0, 0);
  const std::string auto_pad = node.attr_string("auto_pad", "NOTSET");
  w.pad_begin.assign(rank, 0);
  w.pad_end.assign(rank, 0);
  w.out.assign(rank, 0);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t in = in_spatial[i];
    const int64_t s = w.strides[i];
    const int64_t extent = (w.kernel[i] - 1) * w.dilations[i] + 1;
    if (auto_pad == "NOTSET") {
      w.pad_begin[i] = pads[i];
      w.pad_end[i] = pads[i + rank];
      const int64_t span = in + w.pad_begin[i] + w.pad_end[i] - extent;
      if (span < 0) {
        w.out[i] = 0;
      } else if (rules.ceil_mode) {
        w.out[i] = (span + s - 1) / s + 1;
        // A last window that would start inside the end padding is dropped.
        if ((w.out[i] - 1) * s >= in + w.pad_begin[i]) --w.out[i];
      } else {
        w.out[i] = span / s + 1;
      }
    } else if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      w.out[i] = (in + s - 1) / s;
      const int64_t total = std::max<int64_t>(0, (w.out[i] - 1) * s + extent - in);
      const int64_t small = total / 2;
      w.pad_begin[i] = auto_pad == "SAME_UPPER" ? small : total - small;
      w.pad_end[i] = total - w.pad_begin[i];
    } else if (auto_pad == "VALID") {
      w.out[i] = in >= extent ? (in - extent) / s + 1 : 0;
    } else {
      fail_node(node, "auto_pad NOTSET, SAME_UPPER, SAME_LOWER or VALID", "'" + auto_pad + "'");
    }
    if (rules.pads_below_kernel && (w.pad_begin[i] >= w.kernel[i] || w.pad_end[i] >= w.kernel[i])) {
      fail_node(node, "pads smaller than kernel_shape " + ints_str(w.kernel),
                "pads " + ints_str(pads));
    }
    if (w.out[i] < 1) {
      fail_node(node, "a window that fits the input " + shape_str(in_spatial),
                "kernel " + ints_str(w.kernel) + " with dilations " + ints_str(w.dilations) +
                    " and pads " + ints_str(pads) + " (output size " + std::to_string(w.out[i]) +
                    ")");
    }
  }
  return w;
}

// The window of the axes after the first (a 3-D window's height and width, its depth apart).
inline Window without_first_axis(Window w) {
  for (std::vector<int64_t>* v :
       {&w.kernel, &w.strides, &w.dilations, &w.pad_begin, &w.pad_end, &w.out}) {
    v->erase(v->begin());
  }
  return w;
}

// Spatial rank 1 maps onto the 2-D kernels with a unit height axis.
template <class Geometry>
inline void fill_window_2d(const Window& w, std::span<const int64_t> in_spatial, Geometry& g) {
  const bool one_d = in_spatial.size() == 1;
  const size_t x = one_d ? 0 : 1;
  g.in_h = one_d ? 1 : in_spatial[0];
  g.in_w = in_spatial[x];
  g.out_h = one_d ? 1 : w.out[0];
  g.out_w = w.out[x];
  g.kernel_h = one_d ? 1 : w.kernel[0];
  g.kernel_w = w.kernel[x];
  g.stride_h = one_d ? 1 : w.strides[0];
  g.stride_w = w.strides[x];
  g.dilation_h = one_d ? 1 : w.dilations[0];
  g.dilation_w = w.dilations[x];
  g.pad_top = one_d ? 0 : w.pad_begin[0];
  g.pad_left = w.pad_begin[x];
}

inline std::span<const int64_t> spatial_of(const Shape& shape) {
  return std::span<const int64_t>(shape).subspan(2);
}

}  // namespace qforge::runtime::ops::dense
