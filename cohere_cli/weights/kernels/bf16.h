/* bf16 <-> float32 conversions shared by the kernels in this folder (the loader hashes this header into every
 * kernel's build key, so a change here rebuilds them all). */
#ifndef COHERE_CLI_BF16_H
#define COHERE_CLI_BF16_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as c10::BFloat16 */
    uint32_t u;
    memcpy(&u, &f, 4);
    if (isnan(f)) return 0x7FC0;
    u += 0x7FFF + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* 16 bf16 at p -> 16 float32 (exact: bf16 is the top half of a float32) */
__attribute__((target("avx512f,avx512bw")))
static inline __m512 bf16x16_to_f32(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* One block of 64 outputs, 4 x 16 float32 sums, rounded to bf16 into out[o0 ..]; only outputs below n exist (the
 * packed layouts pad the last block). */
__attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512bf16")))
static inline void store_block_bf16(const __m512 a[4], uint16_t *out, int64_t o0, int64_t n) {
    for (int i = 0; i < 4; i++) {
        const int64_t o = o0 + 16 * i, m = n - o;
        if (m <= 0) break;
        _mm256_mask_storeu_epi16(out + o, m >= 16 ? 0xFFFF : (__mmask16)((1u << m) - 1),
                                 (__m256i)_mm512_cvtneps_pbh(a[i]));
    }
}

#endif
