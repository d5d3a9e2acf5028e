// Attention: per task one BLAS product for the scores, the row softmax of kernels/softmax.h and
// one BLAS product with V; the backward recomputes the softmax and runs four more products.
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/parallel.h"
#include "kernels/softmax.h"

namespace qforge::kernels {
namespace {

int64_t mask_batch_offset(const AttentionMask& mask, int64_t b) {
  int64_t offset = 0;
  for (size_t d = mask.batch_shape.size(); d-- > 0;) {
    const int64_t extent = mask.batch_shape[d];
    offset += (b % extent) * mask.batch_strides[d];
    b /= extent;
  }
  return offset;
}

// Adds the mask and the causal exclusion to one q_len × kv_len block of task b.
void apply_masks(const AttentionDims& dims, const AttentionMask* mask, int64_t b, float* scores) {
  if (mask) {
    const float* m = mask->data + mask_batch_offset(*mask, b);
    for (int64_t i = 0; i < dims.q_len; ++i) {
      float* row = scores + i * dims.kv_len;
      const float* mrow = m + i * mask->row_stride;
      for (int64_t j = 0; j < dims.kv_len; ++j) row[j] += mrow[j * mask->col_stride];
    }
  }
  if (dims.causal) {
    const float excluded = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < dims.q_len; ++i) {
      float* row = scores + i * dims.kv_len;
      for (int64_t j = i + 1; j < dims.kv_len; ++j) row[j] = excluded;
    }
  }
}

}  // namespace

AttentionMask attention_mask_layout(const float* data, const Shape& mask_shape,
                                    const Shape& score_shape) {
  const size_t rank = score_shape.size();
  const size_t offset = rank - mask_shape.size();
  Shape strides(rank, 0);
  int64_t stride = 1;
  for (size_t d = mask_shape.size(); d-- > 0;) {
    strides[offset + d] = mask_shape[d] == 1 ? 0 : stride;
    stride *= mask_shape[d];
  }
  AttentionMask mask;
  mask.data = data;
  mask.batch_shape.assign(score_shape.begin(), score_shape.end() - 2);
  mask.batch_strides.assign(strides.begin(), strides.end() - 2);
  mask.row_stride = strides[rank - 2];
  mask.col_stride = strides[rank - 1];
  return mask;
}

size_t attention_slot_bytes(const AttentionDims& dims) {
  return aligned_bytes(static_cast<size_t>(dims.q_len * dims.kv_len) * sizeof(float));
}

size_t attention_workspace_bytes(const AttentionDims& dims, int slots) {
  return attention_slot_bytes(dims) * static_cast<size_t>(std::max(slots, 1));
}

void attention(const AttentionDims& dims, const float* q, const float* k, const float* v,
               const AttentionMask* mask, float* out, std::byte* workspace, int slots) {
  const int64_t q_size = dims.q_len * dims.head_dim;
  const int64_t k_size = dims.kv_len * dims.head_dim;
  const int64_t v_size = dims.kv_len * dims.value_dim;
  const int64_t out_size = dims.q_len * dims.value_dim;
  const SoftmaxDims rows{.outer = dims.q_len, .axis_size = dims.kv_len, .inner = 1};
  parallel_tasks_with_scratch(dims.batch, slots, attention_slot_bytes(dims), workspace,
                              [&](int64_t b, std::byte* scratch) {
                                float* scores = reinterpret_cast<float*>(scratch);
                                sgemm(Transpose::kNo, Transpose::kYes, dims.q_len, dims.kv_len,
                                      dims.head_dim, dims.scale, q + b * q_size, dims.head_dim,
                                      k + b * k_size, dims.head_dim, 0.0f, scores, dims.kv_len);
                                apply_masks(dims, mask, b, scores);
                                softmax(rows, scores, scores);
                                sgemm(Transpose::kNo, Transpose::kNo, dims.q_len, dims.value_dim,
                                      dims.kv_len, 1.0f, scores, dims.kv_len, v + b * v_size,
                                      dims.value_dim, 0.0f, out + b * out_size, dims.value_dim);
                              });
}

size_t attention_backward_workspace_bytes(const AttentionDims& dims, int slots) {
  return 2 * attention_slot_bytes(dims) * static_cast<size_t>(std::max(slots, 1));
}

void attention_backward(const AttentionDims& dims, const float* q, const float* k, const float* v,
                        const AttentionMask* mask, const float* dout, const AttentionGrads& grads,
                        std::byte* workspace, int slots) {
  const int64_t q_size = dims.q_len * dims.head_dim;
  const int64_t k_size = dims.kv_len * dims.head_dim;
  const int64_t v_size = dims.kv_len * dims.value_dim;
  const int64_t out_size = dims.q_len * dims.value_dim;
  const int64_t score_size = dims.q_len * dims.kv_len;
  const SoftmaxDims rows{.outer = dims.q_len, .axis_size = dims.kv_len, .inner = 1};
  const size_t block = attention_slot_bytes(dims);
  const float beta = grads.mode == GradMode::kAccumulate ? 1.0f : 0.0f;
  const bool need_scores = grads.dq || grads.dk || grads.dscores;
  parallel_tasks_with_scratch(
      dims.batch, slots, 2 * block, workspace, [&](int64_t b, std::byte* scratch) {
        const float* qb = q + b * q_size;
        const float* kb = k + b * k_size;
        const float* vb = v + b * v_size;
        const float* dob = dout + b * out_size;
        auto* p = reinterpret_cast<float*>(scratch);
        float* ds = grads.dscores ? grads.dscores + b * score_size
                                  : reinterpret_cast<float*>(scratch + block);
        sgemm(Transpose::kNo, Transpose::kYes, dims.q_len, dims.kv_len, dims.head_dim, dims.scale,
              qb, dims.head_dim, kb, dims.head_dim, 0.0f, p, dims.kv_len);
        apply_masks(dims, mask, b, p);
        softmax(rows, p, p);
        if (grads.dv) {
          sgemm(Transpose::kYes, Transpose::kNo, dims.kv_len, dims.value_dim, dims.q_len, 1.0f, p,
                dims.kv_len, dob, dims.value_dim, beta, grads.dv + b * v_size, dims.value_dim);
        }
        if (!need_scores) return;
        sgemm(Transpose::kNo, Transpose::kYes, dims.q_len, dims.kv_len, dims.value_dim, 1.0f, dob,
              dims.value_dim, vb, dims.value_dim, 0.0f, ds, dims.kv_len);
        softmax_backward(rows, p, ds, ds);
        if (grads.dq) {
          sgemm(Transpose::kNo, Transpose::kNo, dims.q_len, dims.head_dim, dims.kv_len, dims.scale,
                ds, dims.kv_len, kb, dims.head_dim, beta, grads.dq + b * q_size, dims.head_dim);
        }
        if (grads.dk) {
          sgemm(Transpose::kYes, Transpose::kNo, dims.kv_len, dims.head_dim, dims.q_len, dims.scale,
                ds, dims.kv_len, qb, dims.head_dim, beta, grads.dk + b * k_size, dims.head_dim);
        }
      });
}

void attention_mask_backward(const AttentionDims& dims, const AttentionMask& mask,
                             const float* dscores, float* dmask, int64_t mask_numel,
                             GradMode mode) {
  if (mode == GradMode::kOverwrite) std::fill_n(dmask, mask_numel, 0.0f);
  const int64_t score_size = dims.q_len * dims.kv_len;
  // Adds rows [i0, i1) of every task, tasks in order.
  auto add_rows = [&](int64_t i0, int64_t i1) {
    for (int64_t b = 0; b < dims.batch; ++b) {
      float* m = dmask + mask_batch_offset(mask, b);
      const float* s = dscores + b * score_size;
      for (int64_t i = i0; i < i1; ++i) {
        float* mrow = m + i * mask.row_stride;
        const float* srow = s + i * dims.kv_len;
        if (mask.col_stride == 1) {
          for (int64_t j = 0; j < dims.kv_len; ++j) mrow[j] += srow[j];
        } else {
          for (int64_t j = 0; j < dims.kv_len; ++j) mrow[j * mask.col_stride] += srow[j];
        }
      }
    }
  };
  if (mask.row_stride == 0) {
    add_rows(0, dims.q_len);  // every row adds into the same mask row
    return;
  }
  // Distinct rows touch distinct mask elements: each element still sums its tasks in order.
  const int64_t grain =
      std::max<int64_t>(1, 16384 / std::max<int64_t>(1, dims.batch * dims.kv_len));
  parallel_for(dims.q_len, grain, add_rows);
}

void attention_reference(const AttentionDims& dims, const float* q, const float* k, const float* v,
                         const AttentionMask* mask, float* out) {
  std::vector<double> row(static_cast<size_t>(dims.kv_len));
  for (int64_t b = 0; b < dims.batch; ++b) {
    const float* qb = q + b * dims.q_len * dims.head_dim;
    const float* kb = k + b * dims.kv_len * dims.head_dim;
    const float* vb = v + b * dims.kv_len * dims.value_dim;
    float* ob = out + b * dims.q_len * dims.value_dim;
    for (int64_t i = 0; i < dims.q_len; ++i) {
      double peak = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < dims.kv_len; ++j) {
        double s = 0;
        for (int64_t d = 0; d < dims.head_dim; ++d) {
          s += double(qb[i * dims.head_dim + d]) * kb[j * dims.head_dim + d];
        }
        s *= dims.scale;
        if (mask) {
          s +=
              mask->data[mask_batch_offset(*mask, b) + i * mask->row_stride + j * mask->col_stride];
        }
        if (dims.causal && j > i) s = -std::numeric_limits<double>::infinity();
        row[static_cast<size_t>(j)] = s;
        peak = std::max(peak, s);
      }
      double total = 0;
      for (double& s : row) {
        s = std::exp(s - peak);
        total += s;
      }
      for (int64_t e = 0; e < dims.value_dim; ++e) {
        double acc = 0;
        for (int64_t j = 0; j < dims.kv_len; ++j) {
          acc += row[static_cast<size_t>(j)] * vb[j * dims.value_dim + e];
        }
        ob[i * dims.value_dim + e] = static_cast<float>(acc / total);
      }
    }
  }
}

}  // namespace qforge::kernels
