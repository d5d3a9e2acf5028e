// Scaled dot-product attention over a batch of independent (batch, head) problems:
// softmax(scale·Q·Kᵀ + mask) · V, one score block per task, never the whole score tensor.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/tensor.h"

namespace qforge::kernels {

// Q [batch, q_len, head_dim], K [batch, kv_len, head_dim] (not transposed), V [batch, kv_len,
// value_dim], out [batch, q_len, value_dim], all contiguous; `batch` is every leading dimension
// (batch · heads) flattened.
struct AttentionDims {
  int64_t batch = 1;
  int64_t q_len = 1;
  int64_t kv_len = 1;
  int64_t head_dim = 1;
  int64_t value_dim = 1;
  float scale = 1.0f;
  // Position j > i is excluded (top-left aligned, as torch's is_causal).
  bool causal = false;
};

// An additive mask broadcast over the scores: element (b, i, j) is at
// data[batch_offset(b) + i·row_stride + j·col_stride]. batch_shape lists the leading score
// dimensions whose product is AttentionDims::batch; batch_strides holds the mask's element
// stride along each (0 where the mask broadcasts).
struct AttentionMask {
  const float* data = nullptr;
  Shape batch_shape;
  Shape batch_strides;
  int64_t row_stride = 0;
  int64_t col_stride = 0;
};

// The mask strides of a mask of `mask_shape` broadcast to scores of `score_shape` (rank ≥ 2,
// mask rank ≤ score rank, numpy rules).
AttentionMask attention_mask_layout(const float* data, const Shape& mask_shape,
                                    const Shape& score_shape);

// Scratch for `slots` threads: one q_len × kv_len score block each.
size_t attention_slot_bytes(const AttentionDims& dims);
size_t attention_workspace_bytes(const AttentionDims& dims, int slots);

// Parallel over the batch; each task's result depends only on its own inputs. `mask` may be
// nullptr.
void attention(const AttentionDims& dims, const float* q, const float* k, const float* v,
               const AttentionMask* mask, float* out, std::byte* workspace, int slots);

// The naive oracle: plain loops, the full score row in a vector.
void attention_reference(const AttentionDims& dims, const float* q, const float* k, const float* v,
                         const AttentionMask* mask, float* out);

}  // namespace qforge::kernels
