#include "kernels/mask.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

constexpr int64_t kWordGrain = 256;  // 64-bit words per task: 16384 elements

// Calls fn(begin, end) over whole words of an n-element mask in parallel: begin is a multiple
// of 64, so a task's elements start on a byte of its own. Then clears the bits past n.
template <class Fn>
void for_each_word_range(int64_t n, uint8_t* mask, Fn&& fn) {
  const int64_t words = (n + 63) / 64;
  parallel_for(words, kWordGrain,
               [&](int64_t begin, int64_t end) { fn(begin * 64, std::min(n, end * 64)); });
  if (n % 64 != 0) {
    const int64_t last_byte = n / 8;  // holds element n - 1 when n % 8 != 0
    if (n % 8 != 0) mask[last_byte] &= static_cast<uint8_t>((1u << (n % 8)) - 1);
    const int64_t first_clear = (n + 7) / 8;
    std::fill(mask + first_clear, mask + words * 8, uint8_t{0});
  }
}

}  // namespace

void positive_mask(const float* y, int64_t n, uint8_t* mask) {
  for_each_word_range(n, mask, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#if defined(__AVX512F__)
    const __m512 zero = _mm512_setzero_ps();
    for (; i + 16 <= end; i += 16) {
      const __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(y + i), zero, _CMP_GT_OQ);
      std::memcpy(mask + i / 8, &m, sizeof(m));
    }
#elif defined(__AVX2__)
    const __m256 zero = _mm256_setzero_ps();
    for (; i + 8 <= end; i += 8) {
      mask[i / 8] = static_cast<uint8_t>(
          _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(y + i), zero, _CMP_GT_OQ)));
    }
#endif
    for (; i < end; i += 8) {
      unsigned byte = 0;
      for (int64_t j = 0; j < 8 && i + j < end; ++j) byte |= (y[i + j] > 0.0f ? 1u : 0u) << j;
      mask[i / 8] = static_cast<uint8_t>(byte);
    }
  });
}

void masked_gradient(const float* dy, const uint8_t* mask, int64_t n, float* dx) {
  parallel_for((n + 63) / 64, kWordGrain, [&](int64_t word_begin, int64_t word_end) {
    const int64_t end = std::min(n, word_end * 64);
    int64_t i = word_begin * 64;
#if defined(__AVX512F__)
    for (; i + 16 <= end; i += 16) {
      __mmask16 m;
      std::memcpy(&m, mask + i / 8, sizeof(m));
      _mm512_storeu_ps(dx + i, _mm512_maskz_loadu_ps(m, dy + i));
    }
#elif defined(__AVX2__)
    const __m256i select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    for (; i + 8 <= end; i += 8) {
      const __m256i bits = _mm256_and_si256(_mm256_set1_epi32(mask[i / 8]), select);
      const __m256 keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(bits, select));
      _mm256_storeu_ps(dx + i, _mm256_and_ps(keep, _mm256_loadu_ps(dy + i)));
    }
#endif
    for (; i < end; ++i) dx[i] = mask_bit(mask, i) ? dy[i] : 0.0f;
  });
}

}  // namespace qforge::kernels
