/* The non-matmul work of one decode step (one token, batch 1, bf16) of a Cohere block, on AVX-512 (BF16):
 *
 *   layer_norm_bf16   Cohere's LayerNorm (mean-centred, weight only) in float32, rounded to bf16
 *   decode_attn_bf16  rotary (interleaved pairs) on the new token's q and k heads, in float32, rounded to bf16
 *                     (as model.apply_rope); k and v written into the cache at `slot` (and slot_pos[slot] = qpos
 *                     for a ring); grouped-query attention of the nh query heads over the cache's first S slots
 *                     (g = nh / nkv query heads per kv head, so every key and value row is read once), keys
 *                     masked by position where a window or ring asks
 *   silu_mul_bf16     the SwiGLU activation bf16(bf16(silu(g)) * u), as torch computes F.silu(g) * u in bf16
 *
 * Why not torch: a decode step of the 213M benchmark model spent ~60 us per layer outside its matmuls, in ~25
 * small ops (each ~1-3 us of dispatch for a few thousand values) and F.scaled_dot_product_attention (~35-80 us
 * for one query over 550 keys of 4 kv heads of 64: 0.56 MB of K/V, i.e. 7-16 GB/s). Here attention takes ~16 us
 * and each of the others ~1-2 us (mostly the ctypes call).
 *
 * Arithmetic: q.k in float32 from exact bf16 products (vdpbf16ps), softmax in float32 with a polynomial exp (rel.
 * error ~1e-7), p.v accumulated in float32; keys are split into chunks across OpenMP threads and the chunks merged
 * by their log-sum-exps (flash decoding). The norm's mean and variance are summed in double. Results match the
 * torch path to float32 summation order (bf16 outputs within an ulp; tests/test_kernels.py).
 *
 * Each returns 0, or 1 for shapes it does not take (attention: hd not a multiple of 16 or over 256, g over 16):
 * the caller then keeps its torch path. Attention layouts: qkv (nh + 2 nkv) * hd bf16 (q heads, then k, then v);
 * cs hd/2 (cos, sin) float pairs or NULL (no rotary); kc, vc (nkv, n, hd) bf16; slot_pos n int64 or NULL (slot j
 * holds position j); out nh * hd bf16. window 0: no window. */
#include <stdlib.h>

#include "bf16.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
#define BLOCK 128   /* keys per score block: g * BLOCK floats of scores on the stack */
#define MAX_G 16
#define MAX_HD 256

/* e^x for x <= 88.7 (scores minus their maximum are <= 0): Cephes' expf polynomial on x - n ln2, scaled by 2^n */
AVX512 static inline __m512 exp_neg(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));  /* below: e^x < 1.7e-38, taken as e^-87 (callers: ~0) */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* the new token's head `h` (hd values at src) rotated by cs (or copied) and rounded to bf16 into dst */
static void rotate(const uint16_t *src, const float *cs, int64_t hd, uint16_t *dst) {
    if (!cs) {
        memcpy(dst, src, hd * 2);
        return;
    }
    for (int64_t i = 0; i < hd / 2; i++) {
        float x1 = bf16_to_f32(src[2 * i]), x2 = bf16_to_f32(src[2 * i + 1]);
        float c = cs[2 * i], s = cs[2 * i + 1];
        float a = x1 * c, b = x2 * s, d = x2 * c, e = x1 * s;  /* separate roundings, as torch (no FMA) */
        dst[2 * i] = f32_to_bf16(a - b);
        dst[2 * i + 1] = f32_to_bf16(d + e);
    }
}

/* Keys [j0, j1) of kv head with rows k, v, for the g queries q (bf16, g x hd): the running maximum m, sum l and
 * un-normalised output acc (g x hd float32) of an online softmax, updated in place. */
AVX512 static void attend(const uint16_t *q, int64_t g, int64_t hd, const uint16_t *k, const uint16_t *v,
                          int64_t j0, int64_t j1, const int64_t *slot_pos, int64_t qpos, int64_t window,
                          float scale, float *m, float *l, float *acc) {
    float sc[MAX_G * BLOCK];
    const int64_t nq = hd / 32, tail = hd % 32; /* tail is 0 or 16 */
    for (int64_t b0 = j0; b0 < j1; b0 += BLOCK) {
        const int64_t nb = (j1 - b0 < BLOCK) ? j1 - b0 : BLOCK;
        /* scores */
        for (int64_t jj = 0; jj < nb; jj++) {
            const int64_t j = b0 + jj;
            const int64_t p = slot_pos ? slot_pos[j] : j;
            if (p > qpos || (window > 0 && p <= qpos - window)) {
                for (int64_t i = 0; i < g; i++) sc[i * BLOCK + jj] = -INFINITY;
                continue;
            }
            const uint16_t *kr = k + j * hd;
            for (int64_t i = 0; i < g; i++) {
                const uint16_t *qi = q + i * hd;
                __m512 s = _mm512_setzero_ps();
                for (int64_t c = 0; c < nq; c++)
                    s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_loadu_si512(kr + 32 * c),
                                         (__m512bh)_mm512_loadu_si512(qi + 32 * c));
                if (tail) {
                    const __m256i kt = _mm256_loadu_si256((const __m256i *)(kr + 32 * nq));
                    const __m256i qt = _mm256_loadu_si256((const __m256i *)(qi + 32 * nq));
                    s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_zextsi256_si512(kt), (__m512bh)_mm512_zextsi256_si512(qt));
                }
                sc[i * BLOCK + jj] = _mm512_reduce_add_ps(s) * scale;
            }
        }
        /* online softmax: new maxima, rescale what was accumulated, probabilities in place of the scores */
        for (int64_t i = 0; i < g; i++) {
            float *si = sc + i * BLOCK;
            float mx = m[i];
            int nan = 0;
            for (int64_t jj = 0; jj < nb; jj++) {
                nan |= isnan(si[jj]);
                mx = si[jj] > mx ? si[jj] : mx;
            }
            if (nan) { /* a NaN score makes this head's output NaN, as in torch: a NaN sum, merged as such */
                l[i] = NAN;
                m[i] = m[i] == -INFINITY ? 0.0f : m[i];
            }
            if (mx == -INFINITY || nan) { /* every key so far masked, or the result is NaN anyway */
                for (int64_t jj = 0; jj < nb; jj++) si[jj] = 0.0f;
                continue;
            }
            const float corr = (m[i] == -INFINITY) ? 0.0f : expf(m[i] - mx);
            m[i] = mx;
            float sum = 0.0f;
            int64_t jj = 0;
            const __m512 vmx = _mm512_set1_ps(mx);
            __m512 vs = _mm512_setzero_ps();
            for (; jj + 16 <= nb; jj += 16) {
                __m512 x = _mm512_loadu_ps(si + jj);
                __m512 e = exp_neg(_mm512_sub_ps(x, vmx));
                e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ), e);
                _mm512_storeu_ps(si + jj, e);
                vs = _mm512_add_ps(vs, e);
            }
            sum = _mm512_reduce_add_ps(vs);
            for (; jj < nb; jj++) {
                float e = si[jj] == -INFINITY ? 0.0f : expf(si[jj] - mx);
                si[jj] = e;
                sum += e;
            }
            l[i] = l[i] * corr + sum;
            if (corr != 1.0f)
                for (int64_t d = 0; d < hd; d++) acc[i * hd + d] *= corr;
        }
        /* acc += p . v, four queries and 64 dims at a time in 16 registers, each value row read per pass */
        for (int64_t i0 = 0; i0 < g; i0 += 4) {
            const int64_t ni = (g - i0 < 4) ? g - i0 : 4;
            for (int64_t d0 = 0; d0 < hd; d0 += 64) {
                const int64_t nd = ((hd - d0 < 64) ? hd - d0 : 64) / 16;
                __m512 a[4][4];
                for (int64_t i = 0; i < 4; i++)
                    for (int64_t d = 0; d < 4; d++)
                        a[i][d] = (i < ni && d < nd) ? _mm512_loadu_ps(acc + (i0 + i) * hd + d0 + 16 * d)
                                                     : _mm512_setzero_ps();
                for (int64_t jj = 0; jj < nb; jj++) {
                    const uint16_t *vr = v + (b0 + jj) * hd + d0;
                    __m512 vv[4];
                    for (int64_t d = 0; d < 4; d++) vv[d] = d < nd ? bf16x16_to_f32(vr + 16 * d) : _mm512_setzero_ps();
                    for (int64_t i = 0; i < 4; i++) {
                        if (i >= ni) break;
                        const __m512 p = _mm512_set1_ps(sc[(i0 + i) * BLOCK + jj]);
                        for (int64_t d = 0; d < 4; d++) a[i][d] = _mm512_fmadd_ps(p, vv[d], a[i][d]);
                    }
                }
                for (int64_t i = 0; i < ni; i++)
                    for (int64_t d = 0; d < nd; d++) _mm512_storeu_ps(acc + (i0 + i) * hd + d0 + 16 * d, a[i][d]);
            }
        }
    }
}

int decode_attn_bf16(const uint16_t *qkv, const float *cs, uint16_t *kc, uint16_t *vc, int64_t n, int64_t slot,
                     int64_t S, int64_t *slot_pos, int64_t qpos, int64_t window, int64_t nh, int64_t nkv,
                     int64_t hd, float scale, int64_t threads, uint16_t *out) {
    const int64_t g = nh / nkv;
    if (hd % 16 || hd > MAX_HD || g > MAX_G || g * nkv != nh || S > n || slot >= n) return 1;
    /* chunks of keys per kv head: ~32 tasks in all, no chunk under 2 blocks. Not from the thread count: the
     * chunks set the order of the merge's float sums, and decode's thread count changes with the machine's load
     * (engine/threads.py) while its answers must not */
    threads = threads > 0 ? threads : 1;
    int64_t per = (32 + nkv - 1) / nkv;
    const int64_t most = (S + 2 * BLOCK - 1) / (2 * BLOCK);
    per = per < most ? per : most;
    per = per > 0 ? per : 1;
    const int64_t chunk = (S + per - 1) / per, tasks = nkv * per, stride = g * (hd + 2);
    uint16_t *q = malloc(nh * hd * 2);
    float *part = malloc(tasks * stride * 4); /* per task and query: m, l, acc[hd] */
    if (!q || !part) { /* before anything is written: the caller's torch path starts from the same cache */
        free(q);
        free(part);
        return 1;
    }
    /* rotary on q; k rotated and v copied straight into the cache */
    for (int64_t h = 0; h < nh; h++) rotate(qkv + h * hd, cs, hd, q + h * hd);
    for (int64_t h = 0; h < nkv; h++) {
        rotate(qkv + (nh + h) * hd, cs, hd, kc + (h * n + slot) * hd);
        memcpy(vc + (h * n + slot) * hd, qkv + (nh + nkv + h) * hd, hd * 2);
    }
    if (slot_pos) slot_pos[slot] = qpos;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++) {
            const int64_t h = t / per, j0 = (t % per) * chunk, j1 = (j0 + chunk < S) ? j0 + chunk : S;
            float *pt = part + t * stride, m[MAX_G], l[MAX_G];
            for (int64_t i = 0; i < g; i++) m[i] = -INFINITY, l[i] = 0.0f;
            float *acc = pt + 2 * g;
            memset(acc, 0, g * hd * 4);
            if (j0 < j1)
                attend(q + h * g * hd, g, hd, kc + h * n * hd, vc + h * n * hd, j0, j1, slot_pos, qpos, window,
                       scale, m, l, acc);
            memcpy(pt, m, g * 4);
            memcpy(pt + g, l, g * 4);
        }
        /* merge the chunks of each query head: out = sum_c acc_c e^(m_c - M) / sum_c l_c e^(m_c - M) */
#pragma omp for schedule(static)
        for (int64_t hq = 0; hq < nh; hq++) {
            const int64_t h = hq / g, i = hq % g;
            float M = -INFINITY;
            for (int64_t c = 0; c < per; c++) {
                const float mc = part[(h * per + c) * stride + i];
                M = mc > M ? mc : M;
            }
            float o[MAX_HD] = {0}, L = 0.0f;
            for (int64_t c = 0; c < per; c++) {
                const float *pt = part + (h * per + c) * stride;
                if (pt[i] == -INFINITY) continue; /* every key of the chunk masked (a NaN chunk has m finite) */
                const float w = expf(pt[i] - M);
                L += pt[g + i] * w;
                const float *acc = pt + 2 * g + i * hd;
                for (int64_t d = 0; d < hd; d++) o[d] += acc[d] * w;
            }
            for (int64_t d = 0; d < hd; d++)
                out[hq * hd + d] = f32_to_bf16(isnan(L) ? NAN : L > 0.0f ? o[d] / L : 0.0f);
        }
    }
    free(part);
    free(q);
    return 0;
}

/* out = bf16(LayerNorm(x) * w): mean and variance over the h values (two passes, double sums), then per value
 * (x - mean) * rstd * w in float32. w: h weights, bf16 (w_bf16) or float32. */
int layer_norm_bf16(const uint16_t *x, const void *w, int64_t w_bf16, int64_t h, float eps, uint16_t *out) {
    double sum = 0.0, sq = 0.0;
    for (int64_t j = 0; j < h; j++) sum += bf16_to_f32(x[j]);
    const float mean = (float)(sum / h);
    for (int64_t j = 0; j < h; j++) {
        const double d = (double)bf16_to_f32(x[j]) - (double)mean;
        sq += d * d;
    }
    const float rstd = 1.0f / sqrtf((float)(sq / h) + eps);
    for (int64_t j = 0; j < h; j++) {
        const float wj = w_bf16 ? bf16_to_f32(((const uint16_t *)w)[j]) : ((const float *)w)[j];
        out[j] = f32_to_bf16((bf16_to_f32(x[j]) - mean) * rstd * wj);
    }
    return 0;
}

/* e^x for any float32 x (silu's exp(-g)): Cephes' expf, overflow to inf, underflow to 0 */
AVX512 static inline __m512 exp_any(__m512 x) {
    const __mmask16 big = _mm512_cmp_ps_mask(x, _mm512_set1_ps(88.72f), _CMP_GT_OQ);
    const __m512 e = exp_neg(_mm512_min_ps(x, _mm512_set1_ps(88.72f)));
    return _mm512_mask_mov_ps(e, big, _mm512_set1_ps(INFINITY));
}

/* out[j] = bf16(bf16(g / (1 + e^-g)) * u) for g = gu[j], u = gu[i + j], j < i (gate and up side by side) */
AVX512 int silu_mul_bf16(const uint16_t *gu, int64_t i, uint16_t *out) {
    int64_t j = 0;
    for (; j + 16 <= i; j += 16) {
        const __m512 g = bf16x16_to_f32(gu + j), u = bf16x16_to_f32(gu + i + j);
        const __m512 e = exp_any(_mm512_sub_ps(_mm512_setzero_ps(), g));
        const __m512 s = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
        const __m256i sb = (__m256i)_mm512_cvtneps_pbh(s); /* silu rounded to bf16, as torch stores it */
        const __m512 sr = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(sb), 16));
        _mm256_storeu_si256((__m256i *)(out + j), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(sr, u)));
    }
    for (; j < i; j++) {
        const float g = bf16_to_f32(gu[j]), s = bf16_to_f32(f32_to_bf16(g / (1.0f + expf(-g))));
        out[j] = f32_to_bf16(s * bf16_to_f32(gu[i + j]));
    }
    return 0;
}
