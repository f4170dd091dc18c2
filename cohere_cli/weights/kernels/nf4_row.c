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
 * column pairs of one 32-row group) take 17 in-lane instructions: the nibbles, the bf16 code of each as two
 * vpshufb table lookups (low and high byte, 16-entry tables), interleaved back into bf16 words (vpunpck*bw),
 * whose 32-bit lanes are then (column 2c, 2c+1) pairs of one row, which is what vdpbf16ps multiplies by the
 * (x[2c], x[2c+1]) pair. The unpacks leave rows in a fixed permuted lane order, undone once per group when the
 * result is stored. Per block the sum is scaled by absmax in float32. The codes are rounded to bf16 for the
 * lookup (bitsandbytes rounds code * absmax to bf16 instead): both are within 2^-9 of the exact weight, and the
 * tests hold this to bitsandbytes' dequantize_4bit as closely as bitsandbytes' own kernel.
 *
 * Returns 0, or 1 for shapes it does not take (n % 32, k % blocksize, blocksize odd): the caller then keeps
 * bitsandbytes' kernel. */
#include "bf16.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

AVX512 int gemv_4bit_row_bf16(const uint16_t *x, const uint8_t *packed, const uint16_t *absmax_t, const float *code,
                              int64_t n, int64_t k, int64_t blocksize, uint16_t *out) {
    if (n % 32 || k % blocksize || blocksize % 4) return 1;
    uint8_t lo8[16], hi8[16];
    for (int i = 0; i < 16; i++) {
        uint16_t h = f32_to_bf16(code[i]);
        lo8[i] = h & 0xFF, hi8[i] = h >> 8;
    }
    const __m512i lutlo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)lo8));
    const __m512i luthi = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)hi8));
    const __m512i low = _mm512_set1_epi8(0x0F);
    /* 64 bytes = column pair c (bytes 0-31: rows 0-7, 8-15 per 16-byte lane) and c+1 (bytes 32-63). After the
     * unpacks, 32-bit lanes of the low-nibble words hold rows A = [0-3, 8-11, 0-3, 8-11] (unpacklo) and
     * B = [4-7, 12-15, 4-7, 12-15] (unpackhi), the first half of column pair c, the second of c+1; the high
     * nibbles the same rows + 16 (C, D). */
    const __m512i xidx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);  /* x pair c | c+1 */
    const __m512i iA = _mm512_set_epi32(11, 10, 9, 8, 3, 2, 1, 0, 11, 10, 9, 8, 3, 2, 1, 0);
    const __m512i iB = _mm512_set_epi32(15, 14, 13, 12, 7, 6, 5, 4, 15, 14, 13, 12, 7, 6, 5, 4);
    /* halves summed, A' = rows [0-3, 8-11] and B' = [4-7, 12-15] -> rows 0..15 in order */
    const __m512i iout = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0);
    const int64_t kh = k / 2, blocks = k / blocksize, pairs = blocksize / 2;
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < n / 32; g++) {
        const uint8_t *w = packed + g * kh * 32;
        __m512 tA = _mm512_setzero_ps(), tB = tA, tC = tA, tD = tA;
        if (g + 1 < n / 32)  /* the next group's scales: one line per block, n*2 bytes apart (no stream to detect) */
            for (int64_t b = 0; b < blocks; b++)
                _mm_prefetch((const char *)(absmax_t + b * n + (g + 1) * 32), _MM_HINT_T0);
        for (int64_t b = 0; b < blocks; b++) {
            __m512 A = _mm512_setzero_ps(), B = A, C = A, D = A;
            const int64_t c0 = b * pairs;
            for (int64_t c = c0; c < c0 + pairs; c += 2) {
                __m512i v = _mm512_loadu_si512(w + c * 32);
                __m512i nl = _mm512_and_si512(v, low), nh = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                __m512i ll = _mm512_shuffle_epi8(lutlo, nl), lh = _mm512_shuffle_epi8(luthi, nl);
                __m512i hl = _mm512_shuffle_epi8(lutlo, nh), hh = _mm512_shuffle_epi8(luthi, nh);
                __m512bh xv = (__m512bh)_mm512_permutexvar_epi32(
                    xidx, _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)(x + 2 * c))));
                A = _mm512_dpbf16_ps(A, (__m512bh)_mm512_unpacklo_epi8(ll, lh), xv);
                B = _mm512_dpbf16_ps(B, (__m512bh)_mm512_unpackhi_epi8(ll, lh), xv);
                C = _mm512_dpbf16_ps(C, (__m512bh)_mm512_unpacklo_epi8(hl, hh), xv);
                D = _mm512_dpbf16_ps(D, (__m512bh)_mm512_unpackhi_epi8(hl, hh), xv);
            }
            const uint16_t *s = absmax_t + b * n + g * 32;
            __m512 slo = bf16x16_to_f32(s), shi = bf16x16_to_f32(s + 16);
            tA = _mm512_fmadd_ps(A, _mm512_permutexvar_ps(iA, slo), tA);
            tB = _mm512_fmadd_ps(B, _mm512_permutexvar_ps(iB, slo), tB);
            tC = _mm512_fmadd_ps(C, _mm512_permutexvar_ps(iA, shi), tC);
            tD = _mm512_fmadd_ps(D, _mm512_permutexvar_ps(iB, shi), tD);
        }
        __m256 a = _mm256_add_ps(_mm512_castps512_ps256(tA), _mm512_extractf32x8_ps(tA, 1));
        __m256 bb = _mm256_add_ps(_mm512_castps512_ps256(tB), _mm512_extractf32x8_ps(tB, 1));
        __m256 cc = _mm256_add_ps(_mm512_castps512_ps256(tC), _mm512_extractf32x8_ps(tC, 1));
        __m256 d = _mm256_add_ps(_mm512_castps512_ps256(tD), _mm512_extractf32x8_ps(tD, 1));
        __m512 r0 = _mm512_permutex2var_ps(_mm512_castps256_ps512(a), iout, _mm512_castps256_ps512(bb));
        __m512 r1 = _mm512_permutex2var_ps(_mm512_castps256_ps512(cc), iout, _mm512_castps256_ps512(d));
        _mm256_storeu_si256((__m256i *)(out + g * 32), (__m256i)_mm512_cvtneps_pbh(r0));
        _mm256_storeu_si256((__m256i *)(out + g * 32 + 16), (__m256i)_mm512_cvtneps_pbh(r1));
    }
    return 0;
}
