// Internal to kernels/: what the index ops (Gather, GatherElements, ScatterElements) share: the
// dispatch on the indices' type, their range check, and the walk GatherElements' gradient and
// ScatterElements share. Index positions of a GatherElementsPlan (kernels/shape_ops.h) that
// name the same data element lie on one line along the axis (the same position off it), so one
// task per (outer position, block of inner positions), walking the axis in order, meets them in
// that order and alone.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/error.h"
#include "kernels/parallel.h"
#include "kernels/shape_ops.h"
#include "kernels/tensor.h"

namespace qforge::kernels::detail {

// fn(indices as int64_t*) or fn(indices as int32_t*); another type is an internal error naming
// `what`.
template <class Fn>
void with_indices(const Tensor& indices, const char* what, Fn&& fn) {
  if (indices.dtype() == DType::kInt64) {
    fn(indices.data<int64_t>());
  } else if (indices.dtype() == DType::kInt32) {
    fn(indices.data<int32_t>());
  } else {
    throw_internal(std::string(what) + ": indices " + indices.describe() +
                   " are not int64 or int32");
  }
}

// Throws the Invalid "expected indices in [...], got v" error for an index outside
// [-axis_dim, axis_dim).
template <class I>
void check_indices(int64_t axis_dim, const I* indices, int64_t count) {
  for (int64_t j = 0; j < count; ++j) {
    const int64_t v = indices[j];
    if (v < -axis_dim || v >= axis_dim) {
      throw_invalid("expected indices in [" + std::to_string(-axis_dim) + ", " +
                    std::to_string(axis_dim - 1) + "], got " + std::to_string(v));
    }
  }
}

// Calls fn(index position, data offset it names) for every index position (checked beforehand),
// each line along the axis in order, or from its end with `reverse`.
template <class I, class Fn>
void for_each_element_target(const GatherElementsPlan& plan, const I* indices, bool reverse,
                             Fn&& fn) {
  constexpr int64_t kBlock = 256;
  constexpr int64_t kTaskElements = int64_t{1} << 14;
  const int64_t blocks = (plan.inner + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(
      1, kTaskElements / std::max<int64_t>(1, plan.n * std::min(kBlock, plan.inner)));
  parallel_for(plan.outer * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / blocks;
      const int64_t i0 = (t % blocks) * kBlock;
      const int64_t i1 = std::min(plan.inner, i0 + kBlock);
      const int64_t base = plan.outer_offsets[static_cast<size_t>(o)];
      for (int64_t step = 0; step < plan.n; ++step) {
        const int64_t j = reverse ? plan.n - 1 - step : step;
        const int64_t row = (o * plan.n + j) * plan.inner;
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t v =
              indices[row + i] < 0 ? indices[row + i] + plan.axis_dim : indices[row + i];
          fn(row + i, base + v * plan.axis_stride + plan.inner_offsets[static_cast<size_t>(i)]);
        }
      }
    }
  });
}

}  // namespace qforge::kernels::detail
