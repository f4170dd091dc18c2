/* One bf16 activation row times a bf16 weight in oneDNN's packed layout (layout.pack_weight), on AVX512-BF16:
 *
 *   out[n] = bf16( sum_k w[n][k] * x[k] )      (float32 sums)
 *
 * Layout (what torch.ops.mkldnn._reorder_linear_weight(w, 1) gives for bf16 on AVX-512 machines; the caller checks
 * it once per weight shape, kernels.packed_row_layout): outputs in blocks of 64, each block [kp/2][64][2]: for
 * every pair of inputs (k = 2p, 2p+1), the 64 outputs' two weights side by side, 256 bytes; kp is k padded (zeros).
 * One block is 64*kp bf16, the blocks follow each other; the last block is padded with zero rows.
 *
 * Why not oneDNN's own one-row kernel on the same buffer: on the 2-core dev machine it reads the packed weights at
 * 15-20 GB/s for the 1.25B benchmark model's shapes, where this loop reads them at the machine's read bandwidth
 * (benchmarks/gemv_paths.py): each block is one front-to-back stream of 256-byte steps, 4 vdpbf16ps per step, each
 * multiplying 16 outputs' (w[2p], w[2p+1]) pairs by the broadcast (x[2p], x[2p+1]); no horizontal sums. Prefill
 * (several rows) keeps oneDNN's kernels, which read the same buffer, so there is one copy of every weight.
 *
 * The sums are float32 over k in pairs, in another order than oneDNN's: results agree with F.linear to float32
 * rounding, not bit for bit (the tests hold them to it). Returns 0, or 1 for a shape it does not take. */
#include "bf16.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

AVX512 int gemv_packed_bf16(const uint16_t *x, const uint16_t *w, int64_t n, int64_t k, int64_t kp, int threads,
                            uint16_t *out) {
    if (n <= 0 || k <= 0 || kp < k || kp % 2 || threads < 1) return 1;
    const int64_t blocks = (n + 63) / 64, pairs = k / 2;
    const uint32_t *xp = (const uint32_t *)x;  /* (x[2p], x[2p+1]) as one 32-bit word */
    const uint32_t last = k % 2 ? x[k - 1] : 0;  /* an odd k: the final pair is (x[k-1], 0), its weight pair (w, 0) */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        const uint16_t *p = w + b * 64 * kp;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;  /* outputs 64b + 0..15, 16..31, 32..47, 48..63 */
        __m512 c0 = a0, c1 = a0, c2 = a0, c3 = a0;  /* the odd pairs: two chains per output hide vdpbf16ps' latency */
        int64_t q = 0;
        for (; q + 2 <= pairs; q += 2, p += 256) {
            __m512bh x0 = (__m512bh)_mm512_set1_epi32((int)xp[q]), x1 = (__m512bh)_mm512_set1_epi32((int)xp[q + 1]);
            a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(p), x0);
            a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(p + 32), x0);
            a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512(p + 64), x0);
            a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512(p + 96), x0);
            c0 = _mm512_dpbf16_ps(c0, (__m512bh)_mm512_loadu_si512(p + 128), x1);
            c1 = _mm512_dpbf16_ps(c1, (__m512bh)_mm512_loadu_si512(p + 160), x1);
            c2 = _mm512_dpbf16_ps(c2, (__m512bh)_mm512_loadu_si512(p + 192), x1);
            c3 = _mm512_dpbf16_ps(c3, (__m512bh)_mm512_loadu_si512(p + 224), x1);
        }
        if (q < pairs || k % 2) {  /* one pair left: an odd count of pairs, or the half pair of an odd k */
            __m512bh x0 = (__m512bh)_mm512_set1_epi32((int)(q < pairs ? xp[q] : last));
            a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(p), x0);
            a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(p + 32), x0);
            a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512(p + 64), x0);
            a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512(p + 96), x0);
            p += 128;
            if (q < pairs && k % 2) {  /* both: an odd count of pairs and then the half pair */
                x0 = (__m512bh)_mm512_set1_epi32((int)last);
                c0 = _mm512_dpbf16_ps(c0, (__m512bh)_mm512_loadu_si512(p), x0);
                c1 = _mm512_dpbf16_ps(c1, (__m512bh)_mm512_loadu_si512(p + 32), x0);
                c2 = _mm512_dpbf16_ps(c2, (__m512bh)_mm512_loadu_si512(p + 64), x0);
                c3 = _mm512_dpbf16_ps(c3, (__m512bh)_mm512_loadu_si512(p + 96), x0);
            }
        }
        __m512 r[4] = {_mm512_add_ps(a0, c0), _mm512_add_ps(a1, c1), _mm512_add_ps(a2, c2), _mm512_add_ps(a3, c3)};
        for (int i = 0; i < 4; i++) {
            int64_t o = b * 64 + 16 * i, m = n - o;  /* outputs o.. of this block that exist */
            if (m <= 0) break;
            __m256i h = (__m256i)_mm512_cvtneps_pbh(r[i]);
            _mm256_mask_storeu_epi16(out + o, m >= 16 ? 0xFFFF : (__mmask16)((1u << m) - 1), h);
        }
    }
    return 0;
}
