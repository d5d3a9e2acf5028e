// Shape op backward: the transposes and strided copies of the forward run the other way.
#include "kernels/shape_backward.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/element_index_walk.h"
#include "kernels/error.h"
#include "kernels/parallel.h"
#include "kernels/strided_index.h"

namespace qforge::kernels {
namespace {

constexpr int64_t kTaskElements = int64_t{1} << 14;

template <class I>
void gather_backward_typed(const GatherPlan& plan, const I* indices, int64_t count, const float* dy,
                           float* dx, GradMode write) {
  detail::check_indices(plan.axis_dim, indices, count);
  const int64_t inner = plan.inner;
  const int64_t row = plan.axis_dim * inner;
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, count * inner));
  parallel_for(plan.outer, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      float* dxo = dx + o * row;
      if (write == GradMode::kOverwrite) std::fill_n(dxo, row, 0.0f);
      for (int64_t j = 0; j < count; ++j) {
        int64_t v = indices[j];
        if (v < 0) v += plan.axis_dim;
        float* dst = dxo + v * inner;
        const float* src = dy + (o * count + j) * inner;
        for (int64_t i = 0; i < inner; ++i) dst[i] += src[i];
      }
    }
  });
}

}  // namespace

Shape inverse_permutation(std::span<const int64_t> perm) {
  Shape inverse(perm.size());
  for (size_t i = 0; i < perm.size(); ++i)
    inverse[static_cast<size_t>(perm[i])] = static_cast<int64_t>(i);
  return inverse;
}

void transpose_backward(std::span<const int64_t> x_shape, std::span<const int64_t> perm,
                        const float* dy, float* dx, GradMode write) {
  const Shape y_shape = transposed_shape(x_shape, perm);
  const Shape inverse = inverse_permutation(perm);
  const TransposePlan plan = plan_transpose(y_shape, inverse, sizeof(float));
  if (write == GradMode::kOverwrite) {
    transpose(plan, dy, dx);
    return;
  }
  // Accumulate: walk dx in order, reading dy through the inverse transpose's strides.
  const StridedCopyPlan& copy = plan.copy;
  const int64_t inner = copy.dims.back();
  const int64_t rows = copy.numel / std::max<int64_t>(1, inner);
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, inner));
  parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
    const std::array<const int64_t*, 1> strides = {copy.src_strides.data()};
    StridedIndex<1> at(copy.dims, strides, begin * inner);
    const int64_t step = copy.src_strides.back();
    for (int64_t r = begin; r < end; ++r, at.next_row()) {
      const float* src = dy + copy.src_offset + at.offset(0);
      float* dst = dx + r * inner;
      for (int64_t i = 0; i < inner; ++i) dst[i] += src[i * step];
    }
  });
}

void slice_backward(const StridedCopyPlan& plan, const float* dy, float* dx, int64_t x_numel,
                    GradMode write) {
  if (write == GradMode::kOverwrite) std::fill_n(dx, x_numel, 0.0f);
  if (plan.numel == 0) return;
  const int64_t inner = plan.dims.back();
  const int64_t rows = plan.numel / inner;
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, inner));
  // Each dx position receives at most one dy element, so rows may run in any order.
  parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
    const std::array<const int64_t*, 1> strides = {plan.src_strides.data()};
    StridedIndex<1> at(plan.dims, strides, begin * inner);
    const int64_t step = plan.src_strides.back();
    for (int64_t r = begin; r < end; ++r, at.next_row()) {
      float* dst = dx + plan.src_offset + at.offset(0);
      const float* src = dy + r * inner;
      for (int64_t i = 0; i < inner; ++i) dst[i * step] += src[i];
    }
  });
}

void scatter_nd_backward(const ScatterNdLayout& layout, const Tensor& indices, const float* dy,
                         float* ddata, float* dupdates, uint8_t* written) {
  const int64_t numel = shape_numel(layout.shape);
  const int64_t slice = layout.slice;
  const auto bytes = static_cast<size_t>(slice) * sizeof(float);
  if (ddata) std::copy_n(dy, numel, ddata);
  std::fill_n(written, slice > 0 ? numel / slice : 0, uint8_t{0});
  // The last tuple to write a slice kept it: tuples in reverse order, each slice's first is it.
  for (int64_t j = layout.tuples - 1; j >= 0; --j) {
    const int64_t offset = scatter_nd_offset(layout, indices, j);
    uint8_t& seen = written[slice > 0 ? offset / slice : 0];
    if (dupdates) {
      if (seen) {
        std::fill_n(dupdates + j * slice, slice, 0.0f);
      } else {
        std::memcpy(dupdates + j * slice, dy + offset, bytes);
      }
    }
    if (ddata && !seen) std::fill_n(ddata + offset, slice, 0.0f);
    seen = 1;
  }
}

void concat_backward(const ConcatPlan& plan, const float* dy, std::span<float* const> dxs,
                     GradMode write) {
  if (dxs.size() != plan.row_bytes.size()) throw_internal("concat_backward: input count mismatch");
  const int64_t out_row = plan.out_row_bytes / static_cast<int64_t>(sizeof(float));
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, out_row));
  parallel_for(plan.outer, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const float* src = dy + o * out_row;
      for (size_t i = 0; i < dxs.size(); ++i) {
        const int64_t row = plan.row_bytes[i] / static_cast<int64_t>(sizeof(float));
        if (dxs[i]) {
          float* dst = dxs[i] + o * row;
          if (write == GradMode::kOverwrite) {
            std::copy_n(src, row, dst);
          } else {
            for (int64_t j = 0; j < row; ++j) dst[j] += src[j];
          }
        }
        src += row;
      }
    }
  });
}

void split_backward(const ConcatPlan& plan, std::span<const float* const> dys, float* dx,
                    GradMode write) {
  if (dys.size() != plan.row_bytes.size()) throw_internal("split_backward: output count mismatch");
  const int64_t in_row = plan.out_row_bytes / static_cast<int64_t>(sizeof(float));
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, in_row));
  parallel_for(plan.outer, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      float* dst = dx + o * in_row;
      for (size_t i = 0; i < dys.size(); ++i) {
        const int64_t row = plan.row_bytes[i] / static_cast<int64_t>(sizeof(float));
        if (dys[i]) {
          const float* src = dys[i] + o * row;
          if (write == GradMode::kOverwrite) {
            std::copy_n(src, row, dst);
          } else {
            for (int64_t j = 0; j < row; ++j) dst[j] += src[j];
          }
        } else if (write == GradMode::kOverwrite) {
          std::fill_n(dst, row, 0.0f);
        }
        dst += row;
      }
    }
  });
}

namespace {

// dx[target] += dy, each line along the axis in order (detail::for_each_element_target).
template <class I>
void gather_elements_backward_typed(const GatherElementsPlan& plan, const I* indices,
                                    const float* dy, float* dx) {
  detail::for_each_element_target(plan, indices, false,
                                  [&](int64_t e, int64_t at) { dx[at] += dy[e]; });
}

// ScatterElements' gradients: dupdates[e] = ddata[target] then ddata[target] = 0, each line
// walked from its end (the `none` reduction: the last write of a target is the one the output
// kept, so it alone takes the gradient and the data element none); with `add` every update takes
// the target's gradient and the data all of it.
template <class I>
void scatter_elements_backward_typed(const GatherElementsPlan& plan, const I* indices, bool add,
                                     float* ddata, float* dupdates, const float* dy) {
  if (add) {
    detail::for_each_element_target(plan, indices, false,
                                    [&](int64_t e, int64_t at) { dupdates[e] = dy[at]; });
    return;
  }
  detail::for_each_element_target(plan, indices, true, [&](int64_t e, int64_t at) {
    if (dupdates) dupdates[e] = ddata[at];
    ddata[at] = 0.0f;
  });
}

}  // namespace

void gather_elements_backward(const GatherElementsPlan& plan, const Tensor& indices,
                              const float* dy, float* dx, int64_t data_numel, GradMode write) {
  if (plan.elem_size != sizeof(float)) {
    throw_internal("gather_elements_backward: expected a float32 plan");
  }
  detail::with_indices(indices, "gather_elements_backward", [&](const auto* idx) {
    // The indices are checked before dx is touched (the forward's error).
    detail::check_indices(plan.axis_dim, idx, indices.numel());
    if (write == GradMode::kOverwrite) {
      parallel_for(data_numel, kTaskElements,
                   [&](int64_t begin, int64_t end) { std::fill(dx + begin, dx + end, 0.0f); });
    }
    gather_elements_backward_typed(plan, idx, dy, dx);
  });
}

void scatter_elements_backward(const GatherElementsPlan& plan, const Tensor& indices, bool add,
                               const float* dy, float* ddata, float* dupdates, int64_t data_numel,
                               float* scratch) {
  if (plan.elem_size != sizeof(float)) {
    throw_internal("scatter_elements_backward: expected a float32 plan");
  }
  // ddata starts as dy; without it (not wanted) the scratch serves the `none` walk.
  float* d = ddata;
  if (!d && !add && dupdates) d = scratch;
  if (d) {
    parallel_for(data_numel, kTaskElements,
                 [&](int64_t begin, int64_t end) { std::copy(dy + begin, dy + end, d + begin); });
  }
  if (add && !dupdates) return;
  detail::with_indices(indices, "scatter_elements_backward", [&](const auto* idx) {
    scatter_elements_backward_typed(plan, idx, add, d, dupdates, dy);
  });
}

void gather_nd_backward(const GatherNdPlan& plan, const Tensor& indices, const float* dy, float* dx,
                        int64_t data_numel) {
  check_gather_nd_indices(plan, indices);
  parallel_for(data_numel, kTaskElements,
               [&](int64_t begin, int64_t end) { std::fill(dx + begin, dx + end, 0.0f); });
  // Tasks over (batch entry, block of the slice): disjoint dx elements; tuples in order.
  constexpr int64_t kBlock = 1024;
  const int64_t blocks = (plan.slice + kBlock - 1) / kBlock;
  parallel_for(plan.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t s0 = (task % blocks) * kBlock;
      const int64_t s1 = std::min(plan.slice, s0 + kBlock);
      for (int64_t t = b * plan.tuples; t < (b + 1) * plan.tuples; ++t) {
        float* to = dx + gather_nd_slice(plan, indices, t) * plan.slice;
        const float* from = dy + t * plan.slice;
        for (int64_t s = s0; s < s1; ++s) to[s] += from[s];
      }
    }
  });
}

void gather_backward(const GatherPlan& plan, const Tensor& indices, const float* dy, float* dx,
                     GradMode write) {
  if (plan.elem_size != sizeof(float)) throw_internal("gather_backward: expected a float32 plan");
  detail::with_indices(indices, "gather_backward", [&](const auto* idx) {
    gather_backward_typed(plan, idx, indices.numel(), dy, dx, write);
  });
}

}  // namespace qforge::kernels
