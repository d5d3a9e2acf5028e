// Masks of one bit per element, the compact records a training forward keeps for its backward
// (runtime::OpKernel::Record): element i is bit i % 8 of byte i / 8. A mask is stored in whole
// 64-bit words (mask_bytes), so that threads writing different words never share a byte; the
// bits past the last element are written as zero.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qforge::kernels {

// Bytes of a mask of n elements: whole 64-bit words.
inline size_t mask_bytes(int64_t n) {
  return static_cast<size_t>((n + 63) / 64) * sizeof(uint64_t);
}

inline bool mask_bit(const uint8_t* mask, int64_t i) {
  return ((mask[i >> 3] >> (i & 7)) & 1) != 0;
}

// Packs flags (each 0 or 1) of up to 64 elements into one word, element j at bit j.
inline uint64_t pack_flags(const uint8_t* flags, int64_t count) {
  uint64_t word = 0;
  for (int64_t b = 0; b * 8 < count; ++b) {
    uint64_t eight = 0;
    const int64_t k = count - b * 8 < 8 ? count - b * 8 : 8;
    for (int64_t j = 0; j < k; ++j) eight |= static_cast<uint64_t>(flags[b * 8 + j]) << (8 * j);
    // Gathers the low bit of each byte (byte j at bit 8j) into bits 56 + j: every other product
    // term lies below bit 56 at a distinct position, so no carry reaches the top byte.
    word |= ((eight * 0x0102040810204080ull) >> 56) << (8 * b);
  }
  return word;
}

// mask bit i = y[i] > 0 (false for NaN): where a ReLU passes its gradient.
void positive_mask(const float* y, int64_t n, uint8_t* mask);

// dx[i] = dy[i] where mask bit i is set, else +0: the gradient a mask passes.
void masked_gradient(const float* dy, const uint8_t* mask, int64_t n, float* dx);

}  // namespace qforge::kernels
