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
#include <omp.h>

#include "bf16.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
#define GROUPS 4  /* 32-row groups read side by side by one thread */

/* Groups g0 .. g0+S-1 (S a constant after inlining), their S streams advancing together: each its own sums, in the
 * order one group alone takes them (the same bits). Why: one thread reading one group at a time (one stream, its
 * 64 scale lines n*2 bytes apart prefetched a group ahead) read 17-25 GB/s at the benchmark models' shapes from
 * memory; 4 side by side, 22-38 GB/s (0.58-0.89x the time per product, 2 threads, and 0.66-0.77x at 1 thread for
 * all but the 1024 x 1024 shape: 1.0x): more requests in flight, and each block's scales for the 4 groups in 4
 * adjacent lines. */
static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
void groups_4bit(const uint32_t *xp, const uint8_t *packed, const uint16_t *absmax_t, __m512i T, int64_t n,
                 int64_t k, int64_t blocksize, int64_t g0, const int S, uint16_t *out) {
    const int64_t blocks = k / blocksize, pairs = blocksize / 2;
    __m512 tlo[GROUPS], thi[GROUPS];
    const uint8_t *w[GROUPS];
    for (int s = 0; s < S; s++) {
        w[s] = packed + (g0 + s) * (k / 2) * 32;
        tlo[s] = thi[s] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < blocks; b++) {
        __m512 a0[GROUPS], a1[GROUPS], c0[GROUPS], c1[GROUPS];
        for (int s = 0; s < S; s++) a0[s] = a1[s] = c0[s] = c1[s] = _mm512_setzero_ps();
        for (int64_t c = b * pairs; c < (b + 1) * pairs; c += 2) {
            __m512bh x0 = (__m512bh)_mm512_set1_epi32((int)xp[c]), x1 = (__m512bh)_mm512_set1_epi32((int)xp[c + 1]);
            for (int s = 0; s < S; s++) {
                /* column pair c, then c+1: 32 bytes each -> words (row i: column 2c | 2c+1) */
                __m512i w0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(w[s] + c * 32)));
                __m512i w1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(w[s] + c * 32 + 32)));
                /* low nibbles: rows 0-15 (a), high nibbles: rows 16-31 (c) */
                a0[s] = _mm512_dpbf16_ps(a0[s], (__m512bh)_mm512_permutexvar_epi16(w0, T), x0);
                c0[s] = _mm512_dpbf16_ps(c0[s], (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(w0, 4), T), x0);
                a1[s] = _mm512_dpbf16_ps(a1[s], (__m512bh)_mm512_permutexvar_epi16(w1, T), x1);
                c1[s] = _mm512_dpbf16_ps(c1[s], (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(w1, 4), T), x1);
            }
        }
        for (int s = 0; s < S; s++) {
            const uint16_t *sc = absmax_t + b * n + (g0 + s) * 32;
            tlo[s] = _mm512_fmadd_ps(_mm512_add_ps(a0[s], a1[s]), bf16x16_to_f32(sc), tlo[s]);
            thi[s] = _mm512_fmadd_ps(_mm512_add_ps(c0[s], c1[s]), bf16x16_to_f32(sc + 16), thi[s]);
        }
    }
    for (int s = 0; s < S; s++) {
        _mm256_storeu_si256((__m256i *)(out + (g0 + s) * 32), (__m256i)_mm512_cvtneps_pbh(tlo[s]));
        _mm256_storeu_si256((__m256i *)(out + (g0 + s) * 32 + 16), (__m256i)_mm512_cvtneps_pbh(thi[s]));
    }
}

AVX512 int gemv_4bit_row_bf16(const uint16_t *x, const uint8_t *packed, const uint16_t *absmax_t, const float *code,
                              int64_t n, int64_t k, int64_t blocksize, uint16_t *out) {
    if (n % 32 || k % blocksize || blocksize % 4) return 1;
    uint16_t tab[32];
    for (int i = 0; i < 32; i++) tab[i] = f32_to_bf16(code[i & 15]);  /* index bit 4 (a neighbour's bit): ignored */
    const __m512i T = _mm512_loadu_si512(tab);
    const uint32_t *xp = (const uint32_t *)x;
    /* 4 groups a unit where every thread gets at least one unit, else one (more threads than n / 128) */
    const int64_t G = n / 32, per = G >= (int64_t)GROUPS * omp_get_max_threads() ? GROUPS : 1;
    const int64_t units = (G + per - 1) / per;
#pragma omp parallel for schedule(static)
    for (int64_t u = 0; u < units; u++) {
        const int64_t g0 = u * per;
        if (per == GROUPS && G - g0 >= GROUPS)
            groups_4bit(xp, packed, absmax_t, T, n, k, blocksize, g0, GROUPS, out);
        else  /* the last few groups, one at a time */
            for (int64_t g = g0; g < G; g++) groups_4bit(xp, packed, absmax_t, T, n, k, blocksize, g, 1, out);
    }
    return 0;
}
