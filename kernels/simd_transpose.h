// A 16 × 16 transpose of floats in AVX-512 registers, for the kernels that turn rows into
// columns: the depthwise channel-vector path (pixel-major copies) and the tiled Transpose.
// Internal to kernels/: include it from .cpp files only.
#pragma once

#ifdef __AVX512F__
#include <immintrin.h>

namespace qforge::kernels {

// r[i] lane j becomes r[j] lane i. The merge-masked forms with every lane set avoid GCC 12's
// false uninitialised warnings on the plain ones.
inline void transpose16(__m512 r[16]) {
  constexpr __mmask16 kAll = 0xFFFF;
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = r[2 * i];
    const __m512 b = r[2 * i + 1];
    t[2 * i] = _mm512_mask_unpacklo_ps(a, kAll, a, b);
    t[2 * i + 1] = _mm512_mask_unpackhi_ps(a, kAll, a, b);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_mask_shuffle_ps(t[4 * i], kAll, t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_mask_shuffle_ps(t[4 * i], kAll, t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_mask_shuffle_ps(t[4 * i + 1], kAll, t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_mask_shuffle_ps(t[4 * i + 1], kAll, t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm512_mask_shuffle_f32x4(r[j], kAll, r[j], r[4 + j], 0x88);
    t[4 + j] = _mm512_mask_shuffle_f32x4(r[j], kAll, r[j], r[4 + j], 0xDD);
    t[8 + j] = _mm512_mask_shuffle_f32x4(r[8 + j], kAll, r[8 + j], r[12 + j], 0x88);
    t[12 + j] = _mm512_mask_shuffle_f32x4(r[8 + j], kAll, r[8 + j], r[12 + j], 0xDD);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm512_mask_shuffle_f32x4(t[j], kAll, t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_mask_shuffle_f32x4(t[j], kAll, t[j], t[8 + j], 0xDD);
    r[4 + j] = _mm512_mask_shuffle_f32x4(t[4 + j], kAll, t[4 + j], t[12 + j], 0x88);
    r[12 + j] = _mm512_mask_shuffle_f32x4(t[4 + j], kAll, t[4 + j], t[12 + j], 0xDD);
  }
}

}  // namespace qforge::kernels

#endif
