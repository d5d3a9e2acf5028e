// Attention: per task one BLAS product for the scores, the row softmax of kernels/softmax.h and
// one BLAS product with V.
#include "kernels/attention.h"

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/gemm.h"
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
