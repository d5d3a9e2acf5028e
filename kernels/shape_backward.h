// Backward of the data-movement ops of kernels/shape_ops.h for float32 gradients. Reshape,
// Flatten, Squeeze and Unsqueeze move no data: their dx is dy. Expand's dx is dy summed over the
// broadcast axes: binary_backward's da of an Add (kernels/binary_backward.h).
//   Transpose: dx = transpose(dy, perm⁻¹).
//   Slice:     dx = 0 except dx[start + i·step] = dy[i] per axis (no position is read twice).
//   Concat:    dx_i = the rows of dy along the axis that input i filled.
//   Split:     dx = the outputs' dy_i side by side along the axis (zero where dy_i is absent).
//   Gather:    dx = 0, then dx[o, indices[j], i] += dy[o, j, i] for j in order (repeated indices
//              add up in index order).
//   GatherElements: dx = 0, then dx at each output's source += dy, along the axis in order for
//              each position off the axis (repeated indices add up in index order).
//   ScatterElements: the updates' gradient gathered from dy where they were written (the last
//              write of a target alone, without `add`); the data's dy but where overwritten.
//   ScatterND: the same, a slice at a time.
// Every dx element is one fixed sequence of float operations (one outer row per task for
// Gather), so gradients are bit-identical for any thread count.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/gradient.h"
#include "kernels/shape_ops.h"
#include "kernels/tensor.h"

namespace qforge::kernels {

// The permutation that undoes `perm`: transpose by perm, then by the result, is the identity.
Shape inverse_permutation(std::span<const int64_t> perm);

// plan: the forward's plan_transpose(x_shape, perm, 4); dy has the transposed shape.
void transpose_backward(std::span<const int64_t> x_shape, std::span<const int64_t> perm,
                        const float* dy, float* dx, GradMode write = GradMode::kOverwrite);

// plan: the forward's plan_slice(x_shape, ranges, 4); dx has x_numel elements.
void slice_backward(const StridedCopyPlan& plan, const float* dy, float* dx, int64_t x_numel,
                    GradMode write = GradMode::kOverwrite);

// plan: the forward's plan_concat(shapes, axis, 4); dxs: one per input (null skips it).
void concat_backward(const ConcatPlan& plan, const float* dy, std::span<float* const> dxs,
                     GradMode write = GradMode::kOverwrite);

// Split's backward, concat of the outputs' gradients. plan: the forward's plan_concat of the
// output shapes along the split axis; dys: one per output (null: no gradient reached it, zero).
void split_backward(const ConcatPlan& plan, std::span<const float* const> dys, float* dx,
                    GradMode write = GradMode::kOverwrite);

// plan: the forward's plan_gather(data_shape, axis, 4); indices as the forward read them (an
// index out of range throws the forward's Invalid error); dx has the data's shape.
void gather_backward(const GatherPlan& plan, const Tensor& indices, const float* dy, float* dx,
                     GradMode write = GradMode::kOverwrite);

// plan: the forward's plan_gather_elements(data_shape, index_shape, axis, 4); dx has the data's
// shape (data_numel elements).
void gather_elements_backward(const GatherElementsPlan& plan, const Tensor& indices,
                              const float* dy, float* dx, int64_t data_numel,
                              GradMode write = GradMode::kOverwrite);

// ScatterElements (the forward's plan and indices, checked by the forward): with `add`, ddata = dy
// and dupdates[e] = dy at e's target; without (the last write of a target kept), ddata = dy but 0
// at every target, and dupdates[e] = dy at its target for the last write there, 0 for writes
// overwritten. Both overwritten; either may be null (not wanted). scratch: data_numel floats,
// written when ddata is null and dupdates is not, without `add`.
void scatter_elements_backward(const GatherElementsPlan& plan, const Tensor& indices, bool add,
                               const float* dy, float* ddata, float* dupdates, int64_t data_numel,
                               float* scratch);

// ScatterND (reduction none; indices as the forward read them): ddata = dy but 0 in every slice a
// tuple wrote; dupdates[j] = dy's slice where tuple j wrote, when no later tuple wrote there (it
// kept the last write), else 0. Either may be null. written: one byte per slice of the data.
void scatter_nd_backward(const ScatterNdLayout& layout, const Tensor& indices, const float* dy,
                         float* ddata, float* dupdates, uint8_t* written);

// GatherND (the forward's plan, float32): dx = 0, then each tuple's dy slice added where it was
// read, the tuples of one batch entry in order (repeated tuples add up in order).
void gather_nd_backward(const GatherNdPlan& plan, const Tensor& indices, const float* dy, float* dx,
                        int64_t data_numel);

}  // namespace qforge::kernels
