// Pooling and mean reductions over float32 tensors: MaxPool and AveragePool (1-D or 2-D, pads,
// strides, dilations), GlobalAveragePool, and ReduceMean over any set of axes.
#pragma once

#include <array>
#include <cstdint>
#include <span>

namespace qforge::kernels {

// One 2-D pooling window geometry over [batch, channels, in_h, in_w]; 1-D pooling uses
// in_h = out_h = kernel_h = 1. Positions outside [0, in) are padding.
struct PoolGeometry {
  int64_t batch = 1;
  int64_t channels = 1;
  int64_t in_h = 1;
  int64_t in_w = 1;
  int64_t out_h = 1;
  int64_t out_w = 1;
  int64_t kernel_h = 1;
  int64_t kernel_w = 1;
  int64_t stride_h = 1;
  int64_t stride_w = 1;
  int64_t dilation_h = 1;
  int64_t dilation_w = 1;
  int64_t pad_top = 0;
  int64_t pad_left = 0;
  int64_t pad_bottom = 0;
  int64_t pad_right = 0;
};

// Which taps AveragePool divides by: only those inside the input, or also those on explicit
// padding (taps beyond the padding, which ceil_mode can add, never count).
enum class PadCounting : uint8_t { kExcludePad, kIncludePad };
// How MaxPool's indices flatten a position within a plane: h·W + w, or h + w·H.
enum class IndexOrder : uint8_t { kRowMajor, kColumnMajor };

// indices may be null; when given it receives plane·H·W + the flattened position of the maximum
// (the first one in window order on ties).
void max_pool2d(const PoolGeometry& g, const float* x, float* y, int64_t* indices,
                IndexOrder order);
void average_pool2d(const PoolGeometry& g, PadCounting counting, const float* x, float* y);
// Mean of each of `planes` contiguous planes of plane_size values.
void global_average_pool(const float* x, int64_t planes, int64_t plane_size, float* y);

// ReduceMean of a shape over a set of axes. Adjacent axes that are both reduced or both kept
// merge; the common case is [outer, reduce, inner].
inline constexpr int kMaxReduceRank = 16;
struct ReducePlan {
  bool simple = true;  // one reduced block: x viewed as [outer, reduce, inner]
  int64_t outer = 1;
  int64_t reduce = 1;
  int64_t inner = 1;
  // The merged shape and which of its axes reduce, for the general case.
  int rank = 0;
  std::array<int64_t, kMaxReduceRank> dims{};
  std::array<bool, kMaxReduceRank> reduced{};
  int64_t count = 1;  // elements averaged per output
};

// axes: distinct, in [0, shape.size()). Throws Unsupported past kMaxReduceRank merged axes.
ReducePlan plan_reduce(std::span<const int64_t> shape, std::span<const int64_t> axes);
void reduce_mean(const ReducePlan& plan, const float* x, float* y);

}  // namespace qforge::kernels
