// Scaled dot-product attention over a batch of independent (batch, head) problems:
// softmax(scale·Q·Kᵀ + mask) · V, one score block per task, never the whole score tensor; and
// its backward, which recomputes the probabilities per task.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/grad_mode.h"
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

// Backward ------------------------------------------------------------------------------------

// Gradient outputs of attention_backward, each laid out as its forward tensor; any may be null.
// dscores [batch, q_len, kv_len] receives dS, the gradient of the pre-softmax scores
// scale·Q·Kᵀ + mask, which is also the gradient of an additive mask before its broadcast
// (see attention_mask_backward); it is always overwritten. `mode` applies to dq, dk, dv.
struct AttentionGrads {
  float* dq = nullptr;
  float* dk = nullptr;
  float* dv = nullptr;
  float* dscores = nullptr;
  GradMode mode = GradMode::kOverwrite;
};

// Scratch of attention_backward for `slots` threads: two q_len × kv_len blocks each.
size_t attention_backward_workspace_bytes(const AttentionDims& dims, int slots);

// Per task, with P = softmax(S) recomputed from q, k and the mask:
//   dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P ⊙ (dP - rowsum(dP ⊙ P)),  dQ = scale·dS·K,  dK = scale·dSᵀ·Q
// on BLAS (single-threaded inside a task). Every output element belongs to one task, so the
// bits never depend on the thread count. Entries excluded by the causal flag or a -inf mask get
// dS = 0.
void attention_backward(const AttentionDims& dims, const float* q, const float* k, const float* v,
                        const AttentionMask* mask, const float* dout, const AttentionGrads& grads,
                        std::byte* workspace, int slots);

// dmask = dscores summed over the dimensions along which `mask` broadcasts (stride 0 in
// mask.batch_strides, row_stride or col_stride), e.g. Swin's relative-position bias [heads, N, N]
// summed over windows and batch. mask.data is ignored; dmask has mask_numel elements. The
// contributions to each element are added in increasing (task, row, column) order whatever the
// thread count.
void attention_mask_backward(const AttentionDims& dims, const AttentionMask& mask,
                             const float* dscores, float* dmask, int64_t mask_numel,
                             GradMode mode = GradMode::kOverwrite);

// The naive oracle: plain loops, the full score row in a vector.
void attention_reference(const AttentionDims& dims, const float* q, const float* k, const float* v,
                         const AttentionMask* mask, float* out);

}  // namespace qforge::kernels
