// Data-movement kernels over element sizes 1, 4 and 8 bytes.
#include "kernels/shape_ops.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>

#include "kernels/element_index_walk.h"
#include "kernels/parallel.h"
#include "kernels/simd_transpose.h"
#include "kernels/strided_index.h"

namespace qforge::kernels {
namespace {

// Bytes a parallel task should move at least, so that scheduling stays cheap.
constexpr int64_t kTaskBytes = int64_t{1} << 16;
// Edge of the square tiles of the tiled transpose (32×32 floats: 4 KiB, well inside L1).
constexpr int64_t kTile = 32;
// Rows shorter than this are copied element by element rather than through memcpy.
constexpr int64_t kShortRow = 16;

template <class Fn>
void with_element_type(size_t elem_size, Fn&& fn) {
  switch (elem_size) {
    case 1:
      fn(uint8_t{});
      return;
    case 4:
      fn(uint32_t{});
      return;
    case 8:
      fn(uint64_t{});
      return;
    default:
      throw_internal("shape kernels: unexpected element size " + std::to_string(elem_size));
  }
}

// Runs fn(first, last) over [0, items) in parallel blocks of about kTaskBytes.
template <class Fn>
void for_each_block(int64_t items, int64_t item_bytes, Fn&& fn) {
  const int64_t per_block = std::max<int64_t>(1, kTaskBytes / std::max<int64_t>(item_bytes, 1));
  const int64_t blocks = (items + per_block - 1) / per_block;
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) fn(b * per_block, std::min(items, (b + 1) * per_block));
  });
}

template <class T>
void copy_row(T* dst, const T* src, int64_t n, int64_t stride) {
  if (stride == 1) {
    if (n >= kShortRow) {
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
    }
  } else if (stride == 0) {
    std::fill_n(dst, n, *src);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i * stride];
  }
}

template <class T>
void strided_copy_typed(const StridedCopyPlan& plan, const T* src, T* dst) {
  const int64_t inner = plan.dims.back();
  const int64_t inner_stride = plan.src_strides.back();
  const int64_t rows = plan.numel / inner;
  const std::array<const int64_t*, 1> strides = {plan.src_strides.data()};
  for_each_block(rows, inner * static_cast<int64_t>(sizeof(T)), [&](int64_t r0, int64_t r1) {
    StridedIndex<1> at(plan.dims, strides, r0 * inner);
    for (int64_t r = r0; r < r1; ++r) {
      copy_row(dst + r * inner, src + plan.src_offset + at.offset(0), inner, inner_stride);
      if (r + 1 < r1) at.next_row();
    }
  });
}

// One tile of a 2-D transpose: y[it·y_stride + il] = x[it + il·x_stride] for it in [t0, t1),
// il in [l0, l1). 4-byte elements go 16 × 16 through AVX-512 registers where they fill such
// blocks; otherwise whole 8×8 blocks are staged through a small local array (about 1.4× faster
// than the direct strided copy when measured); the ragged edges are copied element by element.
template <class T>
void transpose_tile(const T* x, int64_t x_stride, T* y, int64_t y_stride, int64_t t0, int64_t t1,
                    int64_t l0, int64_t l1) {
  constexpr int64_t kBlock = 8;
  auto copy_rows = [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    for (int64_t it = r0; it < r1; ++it) {
      for (int64_t il = c0; il < c1; ++il) y[it * y_stride + il] = x[it + il * x_stride];
    }
  };
#ifdef __AVX512F__
  // 4-byte elements: whole 16 × 16 blocks through registers (16 loads, the in-register
  // transpose, 16 stores), the rest of the tile as below. A copy: the bits are the input's.
  if constexpr (sizeof(T) == 4) {
    constexpr int64_t kWide = 16;
    const int64_t t_wide = t0 + (t1 - t0) / kWide * kWide;
    const int64_t l_wide = l0 + (l1 - l0) / kWide * kWide;
    if (t_wide > t0 && l_wide > l0) {
      for (int64_t it = t0; it < t_wide; it += kWide) {
        for (int64_t il = l0; il < l_wide; il += kWide) {
          __m512 r[kWide];
          for (int64_t j = 0; j < kWide; ++j) {
            r[j] = _mm512_loadu_ps(reinterpret_cast<const float*>(x + it + (il + j) * x_stride));
          }
          transpose16(r);
          for (int64_t i = 0; i < kWide; ++i) {
            _mm512_storeu_ps(reinterpret_cast<float*>(y + (it + i) * y_stride + il), r[i]);
          }
        }
      }
      // The strips the 16 × 16 blocks leave: columns [l_wide, l1) of their rows, then the rows
      // [t_wide, t1) whole.
      if (l_wide < l1) transpose_tile(x, x_stride, y, y_stride, t0, t_wide, l_wide, l1);
      if (t_wide < t1) transpose_tile(x, x_stride, y, y_stride, t_wide, t1, l0, l1);
      return;
    }
  }
#endif
  const int64_t t_full = t0 + (t1 - t0) / kBlock * kBlock;
  const int64_t l_full = l0 + (l1 - l0) / kBlock * kBlock;
  for (int64_t it = t0; it < t_full; it += kBlock) {
    for (int64_t il = l0; il < l_full; il += kBlock) {
      const T* in = x + it + il * x_stride;
      T* out = y + it * y_stride + il;
      T block[kBlock][kBlock];
      for (int64_t j = 0; j < kBlock; ++j) {
        for (int64_t i = 0; i < kBlock; ++i) block[j][i] = in[j * x_stride + i];
      }
      for (int64_t i = 0; i < kBlock; ++i) {
        for (int64_t j = 0; j < kBlock; ++j) out[i * y_stride + j] = block[j][i];
      }
    }
    copy_rows(it, it + kBlock, l_full, l1);
  }
  copy_rows(t_full, t1, l0, l1);
}

template <class T>
void transpose_tiled(const TransposePlan& plan, const T* x, T* y) {
  const Shape& dims = plan.copy.dims;
  const Shape& src = plan.copy.src_strides;
  const int rank = static_cast<int>(dims.size());
  const int t = plan.unit_axis;
  const int l = rank - 1;
  // The axes other than t and l, with their input and output strides.
  std::array<int64_t, kMaxStridedRank> outer_dims{};
  std::array<int64_t, kMaxStridedRank> outer_src{};
  std::array<int64_t, kMaxStridedRank> outer_dst{};
  int outer_rank = 0;
  int64_t dst_stride = 1;
  int64_t t_dst_stride = 1;
  for (int d = rank - 1; d >= 0; --d) {
    if (d == t) t_dst_stride = dst_stride;
    if (d != t && d != l) {
      outer_dims[outer_rank] = dims[d];
      outer_src[outer_rank] = src[d];
      outer_dst[outer_rank] = dst_stride;
      ++outer_rank;  // stored innermost first
    }
    dst_stride *= dims[d];
  }
  const int64_t nt = dims[t];
  const int64_t nl = dims[l];
  const int64_t l_src_stride = src[l];
  const int64_t tiles_t = (nt + kTile - 1) / kTile;
  const int64_t tiles_l = (nl + kTile - 1) / kTile;
  const int64_t tiles = tiles_t * tiles_l;
  const int64_t units = plan.copy.numel / (nt * nl) * tiles;
  const int64_t tile_bytes = kTile * kTile * static_cast<int64_t>(sizeof(T));
  for_each_block(units, tile_bytes, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      int64_t o = u / tiles;
      const int64_t bt = (u % tiles) / tiles_l;
      const int64_t bl = u % tiles_l;
      int64_t src_base = plan.copy.src_offset;
      int64_t dst_base = 0;
      for (int k = 0; k < outer_rank; ++k) {
        const int64_t i = o % outer_dims[k];
        o /= outer_dims[k];
        src_base += i * outer_src[k];
        dst_base += i * outer_dst[k];
      }
      const int64_t t0 = bt * kTile;
      const int64_t t1 = std::min(nt, t0 + kTile);
      const int64_t l0 = bl * kTile;
      const int64_t l1 = std::min(nl, l0 + kTile);
      transpose_tile(x + src_base, l_src_stride, y + dst_base, t_dst_stride, t0, t1, l0, l1);
    }
  });
}

template <class T>
void fill_typed(T* dst, int64_t n, const void* value) {
  T v;
  std::memcpy(&v, value, sizeof(T));
  std::fill_n(dst, n, v);
}

void fill_elements(std::byte* dst, int64_t n, const void* value, size_t elem_size) {
  with_element_type(elem_size, [&](auto tag) {
    using T = decltype(tag);
    fill_typed(reinterpret_cast<T*>(dst), n, value);
  });
}

// Input index that output index i (already shifted by the leading pad) reads along an axis of n
// elements; -1 for the constant.
int64_t pad_source(int64_t i, int64_t n, PadMode mode) {
  if (i >= 0 && i < n) return i;
  switch (mode) {
    case PadMode::kConstant:
      return -1;
    case PadMode::kEdge:
      return i < 0 ? 0 : n - 1;
    case PadMode::kReflect: {
      if (n == 1) return 0;
      const int64_t period = 2 * (n - 1);
      int64_t m = i % period;
      if (m < 0) m += period;
      return m < n ? m : period - m;
    }
  }
  return -1;
}

int64_t read_index(const Tensor& t, int64_t i) {
  if (t.dtype() == DType::kInt64) return t.data<int64_t>()[i];
  if (t.dtype() == DType::kInt32) return t.data<int32_t>()[i];
  throw_internal("index tensor " + t.describe() + " is not int64 or int32");
}

}  // namespace

StridedCopyPlan plan_strided_copy(std::span<const int64_t> dims,
                                  std::span<const int64_t> src_strides, int64_t src_offset,
                                  size_t elem_size) {
  if (dims.size() != src_strides.size()) throw_internal("plan_strided_copy: rank mismatch");
  StridedCopyPlan plan;
  plan.elem_size = elem_size;
  plan.src_offset = src_offset;
  plan.numel = shape_numel(dims);
  for (size_t d = 0; d < dims.size(); ++d) {
    if (dims[d] == 1) continue;
    if (!plan.dims.empty() && plan.src_strides.back() == src_strides[d] * dims[d]) {
      plan.dims.back() *= dims[d];
      plan.src_strides.back() = src_strides[d];
    } else {
      plan.dims.push_back(dims[d]);
      plan.src_strides.push_back(src_strides[d]);
    }
  }
  if (plan.dims.empty()) {
    plan.dims = {1};
    plan.src_strides = {1};
  }
  if (plan.dims.size() > static_cast<size_t>(kMaxStridedRank)) {
    throw_unsupported("data movement: expected at most " + std::to_string(kMaxStridedRank) +
                      " independent axes, got " + std::to_string(plan.dims.size()));
  }
  return plan;
}

void strided_copy(const StridedCopyPlan& plan, const void* src, void* dst) {
  if (plan.numel == 0) return;
  with_element_type(plan.elem_size, [&](auto tag) {
    using T = decltype(tag);
    strided_copy_typed(plan, static_cast<const T*>(src), static_cast<T*>(dst));
  });
}

void strided_scatter(const StridedCopyPlan& plan, const void* src, void* dst) {
  if (plan.numel == 0) return;
  with_element_type(plan.elem_size, [&](auto tag) {
    using T = decltype(tag);
    const T* from = static_cast<const T*>(src);
    T* to = static_cast<T*>(dst) + plan.src_offset;
    const int64_t inner = plan.dims.back();
    const int64_t stride = plan.src_strides.back();
    const std::array<const int64_t*, 1> strides = {plan.src_strides.data()};
    // Each position is written once, so rows may go in any order.
    for_each_block(plan.numel / inner, inner * static_cast<int64_t>(sizeof(T)),
                   [&](int64_t r0, int64_t r1) {
                     StridedIndex<1> at(plan.dims, strides, r0 * inner);
                     for (int64_t r = r0; r < r1; ++r) {
                       T* row = to + at.offset(0);
                       if (!from) {
                         for (int64_t i = 0; i < inner; ++i) row[i * stride] = T{};
                       } else if (stride == 1) {
                         std::memcpy(row, from + r * inner, static_cast<size_t>(inner) * sizeof(T));
                       } else {
                         for (int64_t i = 0; i < inner; ++i) row[i * stride] = from[r * inner + i];
                       }
                       if (r + 1 < r1) at.next_row();
                     }
                   });
  });
}

Shape transposed_shape(std::span<const int64_t> in_shape, std::span<const int64_t> perm) {
  Shape out(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) out[i] = in_shape[static_cast<size_t>(perm[i])];
  return out;
}

TransposePlan plan_transpose(std::span<const int64_t> in_shape, std::span<const int64_t> perm,
                             size_t elem_size) {
  const size_t rank = in_shape.size();
  std::vector<bool> seen(rank, false);
  if (perm.size() != rank) throw_internal("plan_transpose: perm rank mismatch");
  for (int64_t p : perm) {
    if (p < 0 || p >= static_cast<int64_t>(rank) || seen[static_cast<size_t>(p)]) {
      throw_internal("plan_transpose: perm is not a permutation");
    }
    seen[static_cast<size_t>(p)] = true;
  }
  const Shape in_strides = contiguous_strides(in_shape);
  Shape dims(rank);
  Shape strides(rank);
  for (size_t i = 0; i < rank; ++i) {
    dims[i] = in_shape[static_cast<size_t>(perm[i])];
    strides[i] = in_strides[static_cast<size_t>(perm[i])];
  }
  TransposePlan plan;
  plan.copy = plan_strided_copy(dims, strides, 0, elem_size);
  if (plan.copy.numel > 1 && plan.copy.src_strides.back() != 1) {
    plan.tiled = true;
    const auto& s = plan.copy.src_strides;
    plan.unit_axis = static_cast<int>(std::find(s.begin(), s.end(), 1) - s.begin());
  }
  return plan;
}

void transpose(const TransposePlan& plan, const void* x, void* y) {
  if (!plan.tiled) {
    strided_copy(plan.copy, x, y);
    return;
  }
  with_element_type(plan.copy.elem_size, [&](auto tag) {
    using T = decltype(tag);
    transpose_tiled(plan, static_cast<const T*>(x), static_cast<T*>(y));
  });
}

SliceRange slice_range(int64_t dim, int64_t start, int64_t end, int64_t step) {
  if (step == 0) throw_internal("slice_range: step 0");
  // Adding a nonnegative dim to a negative value cannot overflow.
  if (start < 0) start += dim;
  if (end < 0) end += dim;
  SliceRange r;
  r.step = step;
  if (step > 0) {
    start = std::clamp<int64_t>(start, 0, dim);
    end = std::clamp<int64_t>(end, 0, dim);
    r.count = end > start ? 1 + (end - start - 1) / step : 0;
  } else {
    start = std::clamp<int64_t>(start, 0, dim - 1);
    end = std::clamp<int64_t>(end, -1, dim - 1);
    r.count = start > end ? 1 + (start - end - 1) / -step : 0;
  }
  r.start = r.count > 0 ? start : 0;
  return r;
}

StridedCopyPlan plan_slice(std::span<const int64_t> in_shape, std::span<const SliceRange> ranges,
                           size_t elem_size) {
  if (ranges.size() != in_shape.size()) throw_internal("plan_slice: rank mismatch");
  const Shape in_strides = contiguous_strides(in_shape);
  Shape dims(in_shape.size());
  Shape strides(in_shape.size());
  int64_t offset = 0;
  for (size_t d = 0; d < in_shape.size(); ++d) {
    dims[d] = ranges[d].count;
    // A step only matters between two elements, and then step × stride stays inside the tensor;
    // a huge step that keeps one element (torch's x[::2**63-1]) would overflow int64.
    strides[d] = ranges[d].count > 1 ? ranges[d].step * in_strides[d] : in_strides[d];
    offset += ranges[d].start * in_strides[d];
  }
  return plan_strided_copy(dims, strides, offset, elem_size);
}

StridedCopyPlan plan_expand(std::span<const int64_t> in_shape, std::span<const int64_t> out_shape,
                            size_t elem_size) {
  if (in_shape.size() > out_shape.size()) throw_internal("plan_expand: input rank above output");
  const size_t lead = out_shape.size() - in_shape.size();
  const Shape in_strides = contiguous_strides(in_shape);
  Shape strides(out_shape.size(), 0);
  for (size_t d = 0; d < in_shape.size(); ++d) {
    const int64_t size = in_shape[d];
    if (size != 1 && size != out_shape[lead + d]) {
      throw_internal("plan_expand: " + shape_str(in_shape) + " to " + shape_str(out_shape));
    }
    strides[lead + d] = size == 1 ? 0 : in_strides[d];
  }
  return plan_strided_copy(out_shape, strides, 0, elem_size);
}

ConcatPlan plan_concat(std::span<const Shape> in_shapes, int axis, size_t elem_size) {
  if (in_shapes.empty()) throw_internal("plan_concat: no inputs");
  ConcatPlan plan;
  const Shape& first = in_shapes.front();
  if (axis < 0 || axis >= static_cast<int>(first.size())) throw_internal("plan_concat: bad axis");
  for (int d = 0; d < axis; ++d) plan.outer *= first[static_cast<size_t>(d)];
  for (const Shape& s : in_shapes) {
    const int64_t row = shape_numel(std::span(s).subspan(static_cast<size_t>(axis)));
    plan.row_bytes.push_back(row * static_cast<int64_t>(elem_size));
    plan.out_row_bytes += plan.row_bytes.back();
  }
  return plan;
}

void concat(const ConcatPlan& plan, std::span<const Tensor> inputs, Tensor& y) {
  if (inputs.size() != plan.row_bytes.size()) throw_internal("concat: input count mismatch");
  auto* out = static_cast<std::byte*>(y.raw());
  for_each_block(plan.outer, plan.out_row_bytes, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      std::byte* dst = out + o * plan.out_row_bytes;
      for (size_t i = 0; i < inputs.size(); ++i) {
        const int64_t bytes = plan.row_bytes[i];
        if (bytes == 0) continue;
        std::memcpy(dst, static_cast<const std::byte*>(inputs[i].raw()) + o * bytes,
                    static_cast<size_t>(bytes));
        dst += bytes;
      }
    }
  });
}

void split(const ConcatPlan& plan, const void* x, std::span<Tensor> outputs) {
  if (outputs.size() != plan.row_bytes.size()) throw_internal("split: output count mismatch");
  const auto* in = static_cast<const std::byte*>(x);
  for_each_block(plan.outer, plan.out_row_bytes, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const std::byte* src = in + o * plan.out_row_bytes;
      for (size_t i = 0; i < outputs.size(); ++i) {
        const int64_t bytes = plan.row_bytes[i];
        if (bytes != 0 && outputs[i].defined()) {
          std::memcpy(static_cast<std::byte*>(outputs[i].raw()) + o * bytes, src,
                      static_cast<size_t>(bytes));
        }
        src += bytes;
      }
    }
  });
}

GatherPlan plan_gather(std::span<const int64_t> data_shape, int axis, size_t elem_size) {
  if (axis < 0 || axis >= static_cast<int>(data_shape.size())) {
    throw_internal("plan_gather: bad axis");
  }
  GatherPlan plan;
  plan.elem_size = elem_size;
  for (int d = 0; d < axis; ++d) plan.outer *= data_shape[static_cast<size_t>(d)];
  plan.axis_dim = data_shape[static_cast<size_t>(axis)];
  for (size_t d = static_cast<size_t>(axis) + 1; d < data_shape.size(); ++d) {
    plan.inner *= data_shape[d];
  }
  return plan;
}

namespace {

template <class I>
void gather_typed(const GatherPlan& plan, const std::byte* src, const I* indices, int64_t count,
                  std::byte* dst) {
  detail::check_indices(plan.axis_dim, indices, count);
  const int64_t block = plan.inner * static_cast<int64_t>(plan.elem_size);
  if (block == 0) return;
  for_each_block(plan.outer * count, block, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = b / count;
      int64_t v = indices[b % count];
      if (v < 0) v += plan.axis_dim;
      std::memcpy(dst + b * block, src + (o * plan.axis_dim + v) * block,
                  static_cast<size_t>(block));
    }
  });
}

}  // namespace

void gather(const GatherPlan& plan, const void* data, const Tensor& indices, void* out) {
  const auto* src = static_cast<const std::byte*>(data);
  auto* dst = static_cast<std::byte*>(out);
  detail::with_indices(indices, "gather", [&](const auto* idx) {
    gather_typed(plan, src, idx, indices.numel(), dst);
  });
}

GatherElementsPlan plan_gather_elements(std::span<const int64_t> data_shape,
                                        std::span<const int64_t> index_shape, int axis,
                                        size_t elem_size) {
  const auto rank = static_cast<int>(data_shape.size());
  if (static_cast<int>(index_shape.size()) != rank || axis < 0 || axis >= rank) {
    throw_internal("plan_gather_elements: indices of another rank, or axis out of range");
  }
  std::vector<int64_t> stride(static_cast<size_t>(rank), 1);
  for (int d = rank - 2; d >= 0; --d) {
    stride[static_cast<size_t>(d)] =
        stride[static_cast<size_t>(d) + 1] * data_shape[static_cast<size_t>(d) + 1];
  }
  GatherElementsPlan plan;
  plan.elem_size = elem_size;
  const auto a = static_cast<size_t>(axis);
  plan.axis_dim = data_shape[a];
  plan.axis_stride = stride[a];
  plan.n = index_shape[a];
  // The data offsets of every position of index dims [first, last), row-major.
  auto offsets = [&](size_t first, size_t last) {
    std::vector<int64_t> out{0};
    for (size_t d = first; d < last; ++d) {
      if (index_shape[d] > data_shape[d]) {
        throw_internal("plan_gather_elements: indices larger than the data off the axis");
      }
      std::vector<int64_t> next;
      next.reserve(out.size() * static_cast<size_t>(index_shape[d]));
      for (int64_t base : out) {
        for (int64_t k = 0; k < index_shape[d]; ++k) next.push_back(base + k * stride[d]);
      }
      out = std::move(next);
    }
    return out;
  };
  plan.outer_offsets = offsets(0, a);
  plan.inner_offsets = offsets(a + 1, static_cast<size_t>(rank));
  plan.outer = static_cast<int64_t>(plan.outer_offsets.size());
  plan.inner = static_cast<int64_t>(plan.inner_offsets.size());
  return plan;
}

namespace {

template <class T, class I>
void gather_elements_typed(const GatherElementsPlan& plan, const T* src, const I* indices, T* dst) {
  const int64_t rows = plan.outer * plan.n;
  if (rows * plan.inner == 0) return;
  for_each_block(rows, plan.inner * static_cast<int64_t>(sizeof(T)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = plan.outer_offsets[static_cast<size_t>(r / plan.n)];
      const I* idx = indices + r * plan.inner;
      T* out = dst + r * plan.inner;
      for (int64_t i = 0; i < plan.inner; ++i) {
        const int64_t v = idx[i] < 0 ? idx[i] + plan.axis_dim : idx[i];
        out[i] = src[base + v * plan.axis_stride + plan.inner_offsets[static_cast<size_t>(i)]];
      }
    }
  });
}

template <class I>
void gather_elements_indexed(const GatherElementsPlan& plan, const void* data, const I* indices,
                             int64_t count, void* out) {
  detail::check_indices(plan.axis_dim, indices, count);
  with_element_type(plan.elem_size, [&](auto tag) {
    using T = decltype(tag);
    gather_elements_typed(plan, static_cast<const T*>(data), indices, static_cast<T*>(out));
  });
}

}  // namespace

void gather_elements(const GatherElementsPlan& plan, const void* data, const Tensor& indices,
                     void* out) {
  detail::with_indices(indices, "gather_elements", [&](const auto* idx) {
    gather_elements_indexed(plan, data, idx, indices.numel(), out);
  });
}

namespace {

template <class T, class I>
void scatter_elements_typed(const GatherElementsPlan& plan, const I* indices, const T* updates,
                            bool add, T* out) {
  if (add) {
    detail::for_each_element_target(plan, indices, false,
                                    [&](int64_t e, int64_t at) { out[at] += updates[e]; });
  } else {
    detail::for_each_element_target(plan, indices, false,
                                    [&](int64_t e, int64_t at) { out[at] = updates[e]; });
  }
}

template <class I>
void scatter_elements_indexed(const GatherElementsPlan& plan, const I* indices, int64_t count,
                              const void* updates, bool add, void* out) {
  detail::check_indices(plan.axis_dim, indices, count);
  if (add) {
    if (plan.elem_size != sizeof(float)) throw_internal("scatter_elements: add of non-float data");
    return scatter_elements_typed(plan, indices, static_cast<const float*>(updates), true,
                                  static_cast<float*>(out));
  }
  with_element_type(plan.elem_size, [&](auto tag) {
    using T = decltype(tag);
    scatter_elements_typed(plan, indices, static_cast<const T*>(updates), false,
                           static_cast<T*>(out));
  });
}

}  // namespace

void scatter_elements(const GatherElementsPlan& plan, const void* data, const Tensor& indices,
                      const void* updates, int64_t data_numel, bool add, void* out) {
  if (out != data) {
    const int64_t bytes = data_numel * static_cast<int64_t>(plan.elem_size);
    for_each_block(bytes, 1, [&](int64_t b0, int64_t b1) {
      std::memcpy(static_cast<std::byte*>(out) + b0, static_cast<const std::byte*>(data) + b0,
                  static_cast<size_t>(b1 - b0));
    });
  }
  detail::with_indices(indices, "scatter_elements", [&](const auto* idx) {
    scatter_elements_indexed(plan, idx, indices.numel(), updates, add, out);
  });
}

void check_gather_nd_indices(const GatherNdPlan& plan, const Tensor& indices) {
  const auto k = static_cast<int64_t>(plan.dims.size());
  for (int64_t t = 0; t < plan.batch * plan.tuples; ++t) {
    for (int64_t q = 0; q < k; ++q) {
      const int64_t dim = plan.dims[static_cast<size_t>(q)];
      const int64_t v = read_index(indices, t * k + q);
      if (v < -dim || v >= dim) {
        throw_invalid("expected indices of axis " + std::to_string(q) + " in [" +
                      std::to_string(-dim) + ", " + std::to_string(dim - 1) + "], got " +
                      std::to_string(v));
      }
    }
  }
}

int64_t gather_nd_slice(const GatherNdPlan& plan, const Tensor& indices, int64_t t) {
  const auto k = static_cast<int64_t>(plan.dims.size());
  int64_t offset = t / plan.tuples;  // the batch entry, then each index in turn
  for (int64_t q = 0; q < k; ++q) {
    const int64_t dim = plan.dims[static_cast<size_t>(q)];
    const int64_t v = read_index(indices, t * k + q);
    offset = offset * dim + (v < 0 ? v + dim : v);
  }
  return offset;
}

void gather_nd(const GatherNdPlan& plan, const void* data, const Tensor& indices, void* out) {
  check_gather_nd_indices(plan, indices);
  const auto* src = static_cast<const std::byte*>(data);
  auto* dst = static_cast<std::byte*>(out);
  const int64_t block = plan.slice * static_cast<int64_t>(plan.elem_size);
  if (block == 0) return;
  for_each_block(plan.batch * plan.tuples, block, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      std::memcpy(dst + t * block, src + gather_nd_slice(plan, indices, t) * block,
                  static_cast<size_t>(block));
    }
  });
}

void one_hot(const Tensor& indices, int64_t outer, int64_t depth, int64_t inner, const void* off,
             const void* on, size_t elem_size, void* y) {
  auto* dst = static_cast<std::byte*>(y);
  const auto esz = static_cast<int64_t>(elem_size);
  for_each_block(outer * depth * inner, esz, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const int64_t o = e / (depth * inner);
      const int64_t k = (e / inner) % depth;
      int64_t v = read_index(indices, o * inner + e % inner);
      if (v < 0) v += depth;
      std::memcpy(dst + e * esz, v == k ? on : off, elem_size);
    }
  });
}

PadPlan plan_pad(std::span<const int64_t> in_shape, std::span<const int64_t> pads_begin,
                 std::span<const int64_t> pads_end, PadMode mode, size_t elem_size) {
  const size_t rank = in_shape.size();
  if (pads_begin.size() != rank || pads_end.size() != rank) {
    throw_internal("plan_pad: pads rank mismatch");
  }
  PadPlan plan;
  plan.elem_size = elem_size;
  plan.mode = mode;
  plan.in_shape.assign(in_shape.begin(), in_shape.end());
  plan.pads_begin.assign(pads_begin.begin(), pads_begin.end());
  for (size_t d = 0; d < rank; ++d) {
    const int64_t out = in_shape[d] + pads_begin[d] + pads_end[d];
    if (out < 0) throw_internal("plan_pad: negative output dim");
    if (mode != PadMode::kConstant && in_shape[d] == 0 && out > 0) {
      throw_internal("plan_pad: reflect or edge padding of an empty axis");
    }
    plan.out_shape.push_back(out);
    if (pads_begin[d] != 0 || pads_end[d] != 0) plan.last_padded = static_cast<int>(d);
  }
  plan.numel = shape_numel(plan.out_shape);
  for (size_t d = static_cast<size_t>(plan.last_padded + 1); d < rank; ++d) {
    plan.block *= in_shape[d];
  }
  return plan;
}

void pad(const PadPlan& plan, const void* x, const void* constant_value, void* y) {
  if (plan.numel == 0) return;
  const auto* src = static_cast<const std::byte*>(x);
  auto* dst = static_cast<std::byte*>(y);
  const auto esz = static_cast<int64_t>(plan.elem_size);
  if (plan.last_padded < 0) {
    std::memcpy(dst, src, static_cast<size_t>(plan.numel * esz));
    return;
  }
  const int p = plan.last_padded;
  const int64_t block_bytes = plan.block * esz;
  const int64_t in_p = plan.in_shape[static_cast<size_t>(p)];
  const int64_t out_p = plan.out_shape[static_cast<size_t>(p)];
  const int64_t pad_p = plan.pads_begin[static_cast<size_t>(p)];
  const int64_t row_bytes = out_p * block_bytes;
  const int64_t rows = plan.numel / std::max<int64_t>(out_p * plan.block, 1);
  if (out_p * plan.block == 0) return;
  // Output positions [j0, j1) along axis p read one contiguous input run.
  const int64_t j0 = std::clamp<int64_t>(pad_p, 0, out_p);
  const int64_t j1 = std::clamp<int64_t>(pad_p + in_p, j0, out_p);
  for_each_block(rows, row_bytes, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      std::byte* out = dst + r * row_bytes;
      // Input offset (elements) of this row's axis-p line, or -1 when it lies in the constant.
      int64_t in_offset = 0;
      int64_t in_stride = plan.block * in_p;
      int64_t rest = r;
      for (int d = p - 1; d >= 0 && in_offset >= 0; --d) {
        const auto du = static_cast<size_t>(d);
        const int64_t i = rest % plan.out_shape[du];
        rest /= plan.out_shape[du];
        const int64_t s = pad_source(i - plan.pads_begin[du], plan.in_shape[du], plan.mode);
        in_offset = s < 0 ? -1 : in_offset + s * in_stride;
        in_stride *= plan.in_shape[du];
      }
      if (in_offset < 0) {
        fill_elements(out, out_p * plan.block, constant_value, plan.elem_size);
        continue;
      }
      const std::byte* line = src + in_offset * esz;
      if (j1 > j0) {
        std::memcpy(out + j0 * block_bytes, line + (j0 - pad_p) * block_bytes,
                    static_cast<size_t>((j1 - j0) * block_bytes));
      }
      auto pad_border = [&](int64_t first, int64_t last) {
        for (int64_t j = first; j < last; ++j) {
          const int64_t s = pad_source(j - pad_p, in_p, plan.mode);
          if (s < 0) {
            fill_elements(out + j * block_bytes, plan.block, constant_value, plan.elem_size);
          } else {
            std::memcpy(out + j * block_bytes, line + s * block_bytes,
                        static_cast<size_t>(block_bytes));
          }
        }
      };
      pad_border(0, j0);
      pad_border(j1, out_p);
    }
  });
}

ScatterNdLayout scatter_nd_layout(const Shape& data, const Shape& indices) {
  const auto rank = static_cast<int>(data.size());
  if (indices.empty()) throw_internal("scatter_nd: indices of rank 0");
  ScatterNdLayout l;
  l.shape = data;
  l.k = indices.back();
  if (l.k > rank || rank > kMaxStridedRank) throw_internal("scatter_nd: index depth above rank");
  int64_t stride = 1;
  for (int d = rank - 1; d >= 0; --d) {
    if (d < l.k) l.strides[static_cast<size_t>(d)] = stride;
    stride *= data[static_cast<size_t>(d)];
  }
  for (int d = static_cast<int>(l.k); d < rank; ++d) l.slice *= data[static_cast<size_t>(d)];
  l.tuples = l.k == 0 ? shape_numel(indices) : shape_numel(indices) / l.k;
  return l;
}

int64_t scatter_nd_offset(const ScatterNdLayout& l, const Tensor& indices, int64_t j) {
  int64_t offset = 0;
  for (int64_t q = 0; q < l.k; ++q) {
    const int64_t dim = l.shape[static_cast<size_t>(q)];
    int64_t v = read_index(indices, j * l.k + q);
    if (v < -dim || v >= dim) {
      throw_invalid("expected indices of axis " + std::to_string(q) + " in [" +
                    std::to_string(-dim) + ", " + std::to_string(dim - 1) + "], got " +
                    std::to_string(v));
    }
    if (v < 0) v += dim;
    offset += v * l.strides[static_cast<size_t>(q)];
  }
  return offset;
}

void scatter_nd(const Tensor& data, const Tensor& indices, const Tensor& updates, Tensor& out) {
  if (out.nbytes() != data.nbytes() || updates.dtype() != data.dtype()) {
    throw_internal("scatter_nd: " + data.describe() + ", " + indices.describe() + ", " +
                   updates.describe());
  }
  const ScatterNdLayout l = scatter_nd_layout(data.shape(), indices.shape());
  if (out.raw() != data.raw() && data.nbytes()) {
    std::memcpy(out.raw(), data.raw(), data.nbytes());
  }
  if (updates.numel() != l.tuples * l.slice) throw_internal("scatter_nd: updates size mismatch");
  const auto esz = static_cast<int64_t>(dtype_size(data.dtype()));
  auto* dst = static_cast<std::byte*>(out.raw());
  const auto* upd = static_cast<const std::byte*>(updates.raw());
  for (int64_t j = 0; j < l.tuples; ++j) {
    std::memcpy(dst + scatter_nd_offset(l, indices, j) * esz, upd + j * l.slice * esz,
                static_cast<size_t>(l.slice * esz));
  }
}

int64_t range_length(double start, double limit, double delta) {
  if (delta == 0) throw_internal("range_length: delta 0");
  return std::max<int64_t>(static_cast<int64_t>(std::ceil((limit - start) / delta)), 0);
}

int64_t range_length(int64_t start, int64_t limit, int64_t delta) {
  if (delta == 0) throw_internal("range_length: delta 0");
  if (delta > 0) return limit > start ? 1 + (limit - start - 1) / delta : 0;
  return start > limit ? 1 + (start - limit - 1) / -delta : 0;
}

void range(const Tensor& start, const Tensor& delta, Tensor& out) {
  // Each element adds delta to the previous one, as the ONNX definition does.
  auto fill_range = [&](auto tag) {
    using T = decltype(tag);
    T value = start.data<T>()[0];
    const T step = delta.data<T>()[0];
    T* y = out.data<T>();
    for (int64_t i = 0; i < out.numel(); ++i) {
      y[i] = value;
      value = static_cast<T>(value + step);
    }
  };
  switch (out.dtype()) {
    case DType::kFloat32:
      fill_range(float{});
      return;
    case DType::kInt64:
      fill_range(int64_t{});
      return;
    case DType::kInt32:
      fill_range(int32_t{});
      return;
    default:
      throw_internal("range: unsupported dtype " + out.describe());
  }
}

void triangle(const void* x, int64_t matrices, int64_t rows, int64_t cols, int64_t k, bool upper,
              size_t elem_size, void* y) {
  const auto* src = static_cast<const std::byte*>(x);
  auto* dst = static_cast<std::byte*>(y);
  const auto row_bytes = static_cast<int64_t>(elem_size) * cols;
  for_each_block(matrices * rows, row_bytes, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      const int64_t i = r % rows;
      // The kept columns [begin, end): j >= i + k above, j <= i + k below.
      const int64_t begin = upper ? std::clamp(i + k, int64_t{0}, cols) : 0;
      const int64_t end = upper ? cols : std::clamp(i + k + 1, int64_t{0}, cols);
      const int64_t offset = r * row_bytes;
      const auto e = static_cast<int64_t>(elem_size);
      std::memset(dst + offset, 0, static_cast<size_t>(begin * e));
      std::memcpy(dst + offset + begin * e, src + offset + begin * e,
                  static_cast<size_t>((end - begin) * e));
      std::memset(dst + offset + end * e, 0, static_cast<size_t>((cols - end) * e));
    }
  });
}

void fill(Tensor& y, const void* value) {
  fill_elements(static_cast<std::byte*>(y.raw()), y.numel(), value, dtype_size(y.dtype()));
}

}  // namespace qforge::kernels
