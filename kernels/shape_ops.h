// Data-movement kernels: strided copies (slice, expand), transpose, concat, split, gather, pad,
// scatter_nd, range. They move elements by size (1, 4 or 8 bytes), so one kernel serves every
// dtype. Layouts are planned once; running a plan allocates nothing.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/strided_index.h"
#include "kernels/tensor.h"

namespace qforge::kernels {

// dst (contiguous, shape dims) = src[offset + Σ index_d · strides_d]; strides may be 0 (repeat)
// or negative (walk backwards).
struct StridedCopyPlan {
  size_t elem_size = 4;
  Shape dims;         // after merging neighbours that src steps through as one; at least one
  Shape src_strides;  // elements
  int64_t src_offset = 0;
  int64_t numel = 0;
};
StridedCopyPlan plan_strided_copy(std::span<const int64_t> dims,
                                  std::span<const int64_t> src_strides, int64_t src_offset,
                                  size_t elem_size);
void strided_copy(const StridedCopyPlan& plan, const void* src, void* dst);
// The copy back: the positions strided_copy reads from `dst` get `src`'s elements in the plan's
// order (zeros where src is null); the rest of dst is untouched. The plan's positions must be
// distinct (a slice's are; an expand's are not).
void strided_scatter(const StridedCopyPlan& plan, const void* src, void* dst);

// Transpose ------------------------------------------------------------------------------------

// out.shape[i] = in.shape[perm[i]].
Shape transposed_shape(std::span<const int64_t> in_shape, std::span<const int64_t> perm);

// Axes that stay neighbours are merged first. If the innermost output axis is contiguous in the
// input, the transpose is a copy of contiguous runs; otherwise it is a tiled 2-D transpose of the
// input's unit-stride axis against the output's innermost axis, repeated over the other axes.
struct TransposePlan {
  bool tiled = false;
  StridedCopyPlan copy;  // the merged dims and input strides, in output order
  int unit_axis = 0;     // tiled: the output axis along which the input is contiguous
};
TransposePlan plan_transpose(std::span<const int64_t> in_shape, std::span<const int64_t> perm,
                             size_t elem_size);
void transpose(const TransposePlan& plan, const void* x, void* y);

// Slice ----------------------------------------------------------------------------------------

// One axis of an ONNX Slice after clamping: `count` elements from `start` by `step`.
struct SliceRange {
  int64_t start = 0;
  int64_t step = 1;
  int64_t count = 0;
};
// ONNX Slice rules for an axis of size `dim`: negative start/end count from the end; start is
// clamped to [0, dim] (step > 0) or [0, dim - 1] (step < 0), end to [0, dim] or [-1, dim - 1].
// step must be nonzero.
SliceRange slice_range(int64_t dim, int64_t start, int64_t end, int64_t step);
// ranges: one per input axis.
StridedCopyPlan plan_slice(std::span<const int64_t> in_shape, std::span<const SliceRange> ranges,
                           size_t elem_size);

// Expand: numpy-broadcasts `in_shape` to `out_shape` (which must be its broadcast shape).
StridedCopyPlan plan_expand(std::span<const int64_t> in_shape, std::span<const int64_t> out_shape,
                            size_t elem_size);

// Concat ---------------------------------------------------------------------------------------

struct ConcatPlan {
  int64_t outer = 1;               // product of the dims before the axis
  std::vector<int64_t> row_bytes;  // per input: bytes of one outer row
  int64_t out_row_bytes = 0;
};
// axis must be in [0, rank); shapes agree except along it.
ConcatPlan plan_concat(std::span<const Shape> in_shapes, int axis, size_t elem_size);
void concat(const ConcatPlan& plan, std::span<const Tensor> inputs, Tensor& y);

// Split: concat's inverse. plan: plan_concat of the output shapes along the split axis; each
// output receives its rows of x (an undefined output is skipped).
void split(const ConcatPlan& plan, const void* x, std::span<Tensor> outputs);

// Gather ---------------------------------------------------------------------------------------

struct GatherPlan {
  size_t elem_size = 4;
  int64_t outer = 1;     // product of the data dims before the axis
  int64_t axis_dim = 1;  // data dim along the axis
  int64_t inner = 1;     // product of the data dims after the axis
};
GatherPlan plan_gather(std::span<const int64_t> data_shape, int axis, size_t elem_size);
// out[o, j, i] = data[o, indices[j], i]; indices are int64 or int32, negative ones count from
// the end; one outside [-axis_dim, axis_dim) throws an Invalid "expected …, got …" error
// (callers add context).
void gather(const GatherPlan& plan, const void* data, const Tensor& indices, void* out);

// GatherElements (torch.gather) ----------------------------------------------------------------

// The output (and indices) shape viewed as [outer, n, inner] around the axis, with the data
// offset of each outer and each inner position (the indices may be smaller than the data on the
// other axes).
struct GatherElementsPlan {
  size_t elem_size = 4;
  int64_t outer = 1, n = 1, inner = 1;
  int64_t axis_dim = 1;     // data dim along the axis
  int64_t axis_stride = 1;  // data stride of the axis, in elements
  std::vector<int64_t> outer_offsets, inner_offsets;
};
// data and indices of the same rank, indices no larger than data on the other axes.
GatherElementsPlan plan_gather_elements(std::span<const int64_t> data_shape,
                                        std::span<const int64_t> index_shape, int axis,
                                        size_t elem_size);
// out[..., j, ...] = data[..., indices[..., j, ...], ...] along the axis, out of the indices'
// shape; int64 or int32 indices, negative ones counting from the end; one outside
// [-axis_dim, axis_dim) throws an Invalid "expected …, got …" error (callers add context).
void gather_elements(const GatherElementsPlan& plan, const void* data, const Tensor& indices,
                     void* out);

// ScatterElements (torch.scatter, scatter_add): GatherElements' inverse on the same plan
// (plan_gather_elements of the data's and the indices' shapes, the updates of the indices' shape).
// out = data, then for each index position in row-major order the updates element written (or
// with `add`, added) at the data element the gather would read: repeated indices of one line
// along the axis meet in order, the last written one kept. out may share storage with data;
// float32 only with `add`.
void scatter_elements(const GatherElementsPlan& plan, const void* data, const Tensor& indices,
                      const void* updates, int64_t data_numel, bool add, void* out);

// GatherND
// -----------------------------------------------------------------------------------------

// data viewed as [batch, dims..., slice] and indices as [batch, tuples, k] (k = dims.size()):
// out[b, t] = the slice of data[b] at the index tuple indices[b, t] (ONNX GatherND with
// batch_dims folded into `batch`).
struct GatherNdPlan {
  size_t elem_size = 4;
  int64_t batch = 1, tuples = 1, slice = 1;
  std::vector<int64_t> dims;
};
// Negative indices count from the end; one out of range throws an Invalid "expected …, got …"
// error (callers add context); indices int64 or int32.
void gather_nd(const GatherNdPlan& plan, const void* data, const Tensor& indices, void* out);
// The Invalid error of gather_nd for an index out of range; nothing otherwise.
void check_gather_nd_indices(const GatherNdPlan& plan, const Tensor& indices);
// The slice (in units of plan.slice elements from data's start) tuple t reads; indices checked.
int64_t gather_nd_slice(const GatherNdPlan& plan, const Tensor& indices, int64_t t);

// OneHot -----------------------------------------------------------------------------------------

// y of indices' shape with a new axis of `depth` inserted before its axis `at` (indices viewed as
// [outer, inner], y as [outer, depth, inner]): `on` where the position along the new axis equals
// the index (negative indices counting from depth), `off` elsewhere, and everywhere for an index
// outside [-depth, depth). off and on point at one element of y's type (elem_size bytes);
// indices int64 or int32.
void one_hot(const Tensor& indices, int64_t outer, int64_t depth, int64_t inner, const void* off,
             const void* on, size_t elem_size, void* y);

// Pad ------------------------------------------------------------------------------------------

enum class PadMode { kConstant, kReflect, kEdge };

struct PadPlan {
  size_t elem_size = 4;
  PadMode mode = PadMode::kConstant;
  Shape in_shape;
  Shape out_shape;
  Shape pads_begin;  // per axis; negative values crop
  // Axes after `last_padded` have no padding and are moved as whole blocks.
  int last_padded = -1;
  int64_t block = 1;  // elements per block
  int64_t numel = 0;
};
// pads_begin/pads_end: one per axis, may be negative; every output dim must be >= 0 and, for
// reflect and edge, an axis that is padded must have a nonempty input.
PadPlan plan_pad(std::span<const int64_t> in_shape, std::span<const int64_t> pads_begin,
                 std::span<const int64_t> pads_end, PadMode mode, size_t elem_size);
// constant_value points at one element of the tensor's dtype (constant mode).
void pad(const PadPlan& plan, const void* x, const void* constant_value, void* y);

// ScatterND (reduction none) -------------------------------------------------------------------

// out = data with out[indices[j]] = updates[j] for every index tuple j in order (indices int64,
// last dim k <= rank; negative entries count from the end). An index out of range throws an
// Invalid "expected …, got …" error (callers add context). out may share storage with data.
void scatter_nd(const Tensor& data, const Tensor& indices, const Tensor& updates, Tensor& out);

// Where ScatterND's index tuples write: tuple j (of `tuples`) writes `slice` elements from
// scatter_nd_offset in the data (indices checked as scatter_nd checks them).
struct ScatterNdLayout {
  Shape shape;  // the data's
  int64_t k = 0;
  int64_t tuples = 0;
  int64_t slice = 1;
  std::array<int64_t, kMaxStridedRank> strides{};
};
ScatterNdLayout scatter_nd_layout(const Shape& data, const Shape& indices);
int64_t scatter_nd_offset(const ScatterNdLayout& layout, const Tensor& indices, int64_t j);

// Range ----------------------------------------------------------------------------------------

// Elements of ONNX Range(start, limit, delta): max(ceil((limit - start) / delta), 0). delta must
// be nonzero.
int64_t range_length(double start, double limit, double delta);
int64_t range_length(int64_t start, int64_t limit, int64_t delta);
// out[i] = start + i · delta, for float32, int64 or int32 scalars of out's dtype.
void range(const Tensor& start, const Tensor& delta, Tensor& out);

// Trilu ----------------------------------------------------------------------------------------

// x viewed as `matrices` matrices of rows × cols elements of `elem_size` bytes: y keeps element
// (i, j) where j - i >= k (`upper`) or j - i <= k (lower), and is zero elsewhere. Each row is one
// kept run and zeros, so one kernel serves every dtype and the gradient of a float Trilu (the
// same Trilu of dy).
void triangle(const void* x, int64_t matrices, int64_t rows, int64_t cols, int64_t k, bool upper,
              size_t elem_size, void* y);

// Fill -----------------------------------------------------------------------------------------

// Sets every element of y to the one element at `value` (y's dtype).
void fill(Tensor& y, const void* value);

}  // namespace qforge::kernels
