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
 * 21-27 GB/s for the 1.25B benchmark model's shapes, where this loop reads them at the machine's read bandwidth
 * (benchmarks/gemv_paths.py): each block is one front-to-back stream of 256-byte steps, 4 vdpbf16ps per step, each
 * multiplying 16 outputs' (w[2p], w[2p+1]) pairs by the broadcast (x[2p], x[2p+1]); no horizontal sums; each
 * thread reads 4 blocks side by side. Prefill
 * (several rows) keeps oneDNN's kernels, which read the same buffer, so there is one copy of every weight.
 *
 * The sums are float32 over k in pairs, in another order than oneDNN's: results agree with F.linear to float32
 * rounding, not bit for bit (the tests hold them to it). Returns 0, or 1 for a shape it does not take. */
#include "bf16.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
#define STREAMS 4  /* blocks read side by side by one thread */

/* Blocks b0 .. b0+S-1, S a constant after inlining: their S streams advance together, 256 bytes per step each
 * being 64 outputs' weights for one input pair. Several streams per thread read 10-18% faster than one on the
 * dev machine (more memory requests in flight than one stream's prefetcher issues); 4 x 4 accumulators. */
static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
void blocks_bf16(const uint32_t *xp, uint32_t last, const uint16_t *w, int64_t n, int64_t k, int64_t kp,
                 int64_t b0, const int S, uint16_t *out) {
    __m512 a[STREAMS][4];
    const uint16_t *p[STREAMS];
    for (int s = 0; s < S; s++) {
        p[s] = w + (b0 + s) * 64 * kp;
        for (int i = 0; i < 4; i++) a[s][i] = _mm512_setzero_ps();
    }
    const int64_t pairs = k / 2;
    for (int64_t q = 0; q <= pairs; q++) {
        if (q == pairs && k % 2 == 0) break;  /* an odd k ends in a half pair: (x[k-1], 0), its weights (w, 0) */
        __m512bh xq = (__m512bh)_mm512_set1_epi32((int)(q < pairs ? xp[q] : last));
        for (int s = 0; s < S; s++)
            for (int i = 0; i < 4; i++)
                a[s][i] = _mm512_dpbf16_ps(a[s][i], (__m512bh)_mm512_loadu_si512(p[s] + q * 128 + 32 * i), xq);
    }
    for (int s = 0; s < S; s++) store_block_bf16(a[s], out, (b0 + s) * 64, n);
}

AVX512 int gemv_packed_bf16(const uint16_t *x, const uint16_t *w, int64_t n, int64_t k, int64_t kp, int threads,
                            uint16_t *out) {
    if (n <= 0 || k <= 0 || kp < k + k % 2 || kp % 2 || threads < 1) return 1;
    const int64_t blocks = (n + 63) / 64, groups = (blocks + STREAMS - 1) / STREAMS;
    const uint32_t *xp = (const uint32_t *)x;  /* (x[2p], x[2p+1]) as one 32-bit word */
    const uint32_t last = k % 2 ? x[k - 1] : 0;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < groups; g++) {
        const int64_t b0 = g * STREAMS, left = blocks - b0;
        switch (left >= STREAMS ? STREAMS : left) {  /* constant stream counts: the loops unroll */
            case 4: blocks_bf16(xp, last, w, n, k, kp, b0, 4, out); break;
            case 3: blocks_bf16(xp, last, w, n, k, kp, b0, 3, out); break;
            case 2: blocks_bf16(xp, last, w, n, k, kp, b0, 2, out); break;
            default: blocks_bf16(xp, last, w, n, k, kp, b0, 1, out); break;
        }
    }
    return 0;
}
