/* One bf16 activation row times a bitsandbytes 4-bit weight (nf4 or fp4) on AVX512-BF16, in the layout
 * bitsandbytes' own CPU kernel uses (qlinear.pack_for_cpu), so prefill (bitsandbytes' kernel) and decode (this)
 * share one copy of the weight:
 *
 *   out[r] = bf16( sum over blocks b of absmax[b][r] * sum_{j in b} code[q(r, j)] * x[j] )
 *
 * Layout: rows in groups of 32; for group g and column pair c (columns 2c, 2c+1), 32 bytes at
 * packed + (g * k/2 + c) * 32: byte 2i holds row 32g+i (low nibble) and row 32g+16+i (high nibble) of column 2c,
 * byte 2i+1 the same rows of column 2c+1. absmax_t: (k / blocksize, n) bf16. code: the 16 values of the 4-bit
 * type (bitsandbytes' get_4bit_type), float32.
 *
 * Why not bitsandbytes' gemv_4bit: at one row it is bound by its instruction count, not by memory (on the
 * 2-core dev machine 23-46 GB/s where a plain read of the same bytes runs at 50-80). Here 64 packed bytes (two
 * column pairs of one 32-row group) take 6 shuffles: each 32-byte column pair zero-extended to 16-bit words
 * (vpmovzxbw), whose 32-bit lanes are then (column 2c, 2c+1) of one row, i = 0..15 in order; vpermw looks the bf16
 * code up directly from the word (it reads the index's low 5 bits, the low nibble and one bit above it, so the
 * 16 codes sit in a 32-entry table twice), and again from the word shifted right by 4 (the high nibble: rows
 * 16..31). vdpbf16ps multiplies those lanes by the broadcast (x[2c], x[2c+1]) pair. The previous version (two
 * vpshufb lookups for the bf16 code's low and high byte, interleaved back with vpunpck*bw, 9 shuffles) read
 * L3-resident weights at 45-50 GB/s on the dev machine, this one at 53-57 (benchmark shapes of 213M and 1.25B,
 * alternating runs): the machine's read bandwidth when it is fast. Per block the sum is scaled by absmax in
 * float32. The codes are rounded to bf16 for the lookup (bitsandbytes rounds code * absmax to bf16 instead): both
 * are within 2^-9 of the exact weight, and the tests hold this to bitsandbytes' dequantize_4bit as closely as
 * bitsandbytes' own kernel.
 *
 * Returns 0, or 1 for shapes it does not take (n % 32, k % blocksize, blocksize odd): the caller then keeps
 * bitsandbytes' kernel. */
#include "bf16.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

AVX512 int gemv_4bit_row_bf16(const uint16_t *x, const uint8_t *packed, const uint16_t *absmax_t, const float *code,
                              int64_t n, int64_t k, int64_t blocksize, uint16_t *out) {
    if (n % 32 || k % blocksize || blocksize % 4) return 1;
    uint16_t tab[32];
    for (int i = 0; i < 32; i++) tab[i] = f32_to_bf16(code[i & 15]);  /* index bit 4 (a neighbour's bit): ignored */
    const __m512i T = _mm512_loadu_si512(tab);
    const uint32_t *xp = (const uint32_t *)x;
    const int64_t kh = k / 2, blocks = k / blocksize, pairs = blocksize / 2;
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < n / 32; g++) {
        const uint8_t *w = packed + g * kh * 32;
        __m512 tlo = _mm512_setzero_ps(), thi = tlo;
        if (g + 1 < n / 32)  /* the next group's scales: one line per block, n*2 bytes apart (no stream to detect) */
            for (int64_t b = 0; b < blocks; b++)
                _mm_prefetch((const char *)(absmax_t + b * n + (g + 1) * 32), _MM_HINT_T0);
        for (int64_t b = 0; b < blocks; b++) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, c0 = a0, c1 = a0;
            const int64_t cb = b * pairs;
            for (int64_t c = cb; c < cb + pairs; c += 2) {
                /* column pair c, then c+1: 32 bytes each -> words (row i: column 2c | 2c+1) */
                __m512i w0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(w + c * 32)));
                __m512i w1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(w + c * 32 + 32)));
                __m512bh x0 = (__m512bh)_mm512_set1_epi32((int)xp[c]), x1 = (__m512bh)_mm512_set1_epi32((int)xp[c + 1]);
                /* low nibbles: rows 0-15 (a), high nibbles: rows 16-31 (c) */
                a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_permutexvar_epi16(w0, T), x0);
                c0 = _mm512_dpbf16_ps(c0, (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(w0, 4), T), x0);
                a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_permutexvar_epi16(w1, T), x1);
                c1 = _mm512_dpbf16_ps(c1, (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(w1, 4), T), x1);
            }
            const uint16_t *s = absmax_t + b * n + g * 32;
            tlo = _mm512_fmadd_ps(_mm512_add_ps(a0, a1), bf16x16_to_f32(s), tlo);
            thi = _mm512_fmadd_ps(_mm512_add_ps(c0, c1), bf16x16_to_f32(s + 16), thi);
        }
        _mm256_storeu_si256((__m256i *)(out + g * 32), (__m256i)_mm512_cvtneps_pbh(tlo));
        _mm256_storeu_si256((__m256i *)(out + g * 32 + 16), (__m256i)_mm512_cvtneps_pbh(thi));
    }
    return 0;
}
