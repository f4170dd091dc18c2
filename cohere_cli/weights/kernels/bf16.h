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

#endif
