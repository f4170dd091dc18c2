/* Lossless 12-bit storage of a packed bf16 weight, and the one-row product that reads it, on AVX512-BF16 + VBMI2.
 *
 * A bf16 word is two bytes: the low one (the exponent's last bit, the 7-bit mantissa) and the high one (the sign,
 * the exponent's first 7 bits). In a trained or initialized weight the high bytes take few values: for each block
 * of 64 outputs, its 15 most frequent high bytes cover all but ~1.5-2e-4 of the words (the 1.2B benchmark model's
 * normal(0, 0.02) weights: ~7 exponent pairs of both signs; the rest are tiny values and zeros). So each word is
 * stored as its low byte plus a 4-bit code: 0-14 one of the block's 15 high bytes, 15 "the whole word is among the
 * block's exceptions" (stored apart, in order). 12 bits per weight instead of 16, every bit of every word kept:
 * the decoded weight is the packed weight, bit for bit.
 *
 * Why: one-row products (decode) of a bf16 model read every weight once per token, and packed_row.c already reads
 * them at the machine's memory bandwidth, so their speed is bytes per token: coded, 0.75 of them. Decoding 64 words
 * is one byte shuffle (the code -> high byte table lookup, vpshufb) and two byte interleaves, which the cores do
 * while they wait for memory (DFloat11 does the same for GPUs, with Huffman codes).
 *
 * Layout: the packed layout packed_row.c reads (blocks of 64 outputs, each kp/2 steps of 128 words: the 64
 * outputs' (w[2p], w[2p+1]) pairs), each step stored as CODED_STEP bytes: two halves of 64 low bytes (half a: the
 * step's words 64a .. 64a+63), then 64 bytes of codes, byte i holding the code of half 0's byte i in its low nibble
 * and half 1's in its high one. Within a half, byte i = 16l + 8h + m holds word 32h + 8l + m: the order in which
 * vpunpcklbw (h = 0) and vpunpckhbw (h = 1) put each 128-bit lane's bytes back together as words.
 * After all steps, one byte per step (block by block): 1 where the step has an exception.
 * meta: per block CODED_META int64: its 16-entry table of high bytes (entry 15 is 0), then the index of its first
 * exception in `exc`. Exceptions: the whole words, in the block's word order.
 *
 * The product's sums are packed_row.c's, in its order: results are its results bit for bit. */
#include <stdlib.h>

#include "bf16.h"

#define CODED_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx512vbmi2,bmi2"
#define CODED_STEP 192   /* bytes per step (input pair) of a block */
#define CODED_META 3     /* int64 per block: the table (16 bytes), the first exception's index */
#define CODED_ESC 15     /* the code of a word kept whole among the exceptions */
#define CODED_STREAMS 4  /* blocks read side by side by one thread (as packed_row.c) */

/* Pass 1 of coding the packed bf16 buffer `w` (blocks x 64 x kp words): each block's 15 most frequent high bytes
 * into its table (ties: the lower byte), and counts[b] = its words with another high byte (its exceptions). */
int coded_plan(const uint16_t *w, int64_t blocks, int64_t kp, int threads, int64_t *meta, int64_t *counts) {
    if (blocks <= 0 || kp <= 0 || kp % 2 || threads < 1) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t hist[256] = {0}, covered = 0;
        uint32_t part[4][256] = {{0}};  /* 4 histograms: counts of the few frequent bytes do not wait on each other */
        const uint16_t *p = w + b * 64 * kp;
        for (int64_t i = 0; i < 64 * kp; i += 4)  /* 64 * kp words: a multiple of 4 */
            for (int j = 0; j < 4; j++) part[j][p[i + j] >> 8]++;
        for (int j = 0; j < 4; j++)
            for (int e = 0; e < 256; e++) hist[e] += part[j][e];
        uint8_t tab[16], used[256] = {0};
        for (int c = 0; c < CODED_ESC; c++) {
            int best = -1;
            for (int e = 0; e < 256; e++)
                if (!used[e] && (best < 0 || hist[e] > hist[best])) best = e;
            used[best] = 1;  /* 15 distinct bytes: one no word of the block has is never written */
            tab[c] = (uint8_t)best;
            covered += hist[best];
        }
        tab[CODED_ESC] = 0;
        memcpy(meta + b * CODED_META, tab, sizeof tab);
        counts[b] = 64 * kp - covered;
    }
    return 0;
}

/* Pass 2: `w` coded into body (blocks x kp/2 steps), flags (a byte per step) and exc, with the tables coded_plan
 * wrote to meta and meta[b * CODED_META + 2] set by the caller to the running sum of counts (block b's first
 * exception). The kernels read the flags right after the steps of all blocks; body and flags are apart here so
 * that a weight can be coded in chunks of blocks into one buffer (coded.coded_head).
 * Per step: the low and high bytes of each half's 64 words in the layout's order (vpackuswb undoes the kernel's
 * interleaves), the high bytes' codes from the block's 256-entry code map (two vpermt2b and a blend on bit 7), the
 * exceptions stored in word order (vpcompressw). */
__attribute__((target(CODED_TARGET ",avx512vbmi")))
int coded_encode(const uint16_t *w, int64_t blocks, int64_t kp, int threads, const int64_t *meta, uint8_t *body,
                 uint8_t *flags, uint16_t *exc) {
    if (blocks <= 0 || kp <= 0 || kp % 2 || threads < 1) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        uint8_t code[256];
        memset(code, CODED_ESC, sizeof code);
        const uint8_t *tab = (const uint8_t *)(meta + b * CODED_META);
        for (int i = 0; i < CODED_ESC; i++) code[tab[i]] = (uint8_t)i;
        __m512i map[4];
        for (int i = 0; i < 4; i++) map[i] = _mm512_loadu_si512(code + 64 * i);
        const __m512i lowbyte = _mm512_set1_epi16(0xFF), esc = _mm512_set1_epi8(CODED_ESC);
        uint16_t *e = exc + meta[b * CODED_META + 2];
        for (int64_t q = 0; q < kp / 2; q++) {
            const uint16_t *s = w + (b * 64 * kp) + q * 128;
            uint8_t *o = body + (b * (kp / 2) + q) * CODED_STEP;
            __m512i c[2];
            int any = 0;
            for (int a = 0; a < 2; a++) {
                const __m512i r0 = _mm512_loadu_si512(s + 64 * a), r1 = _mm512_loadu_si512(s + 64 * a + 32);
                const __m512i lo = _mm512_packus_epi16(_mm512_and_si512(r0, lowbyte), _mm512_and_si512(r1, lowbyte));
                const __m512i hi = _mm512_packus_epi16(_mm512_srli_epi16(r0, 8), _mm512_srli_epi16(r1, 8));
                c[a] = _mm512_mask_blend_epi8(_mm512_movepi8_mask(hi), _mm512_permutex2var_epi8(map[0], hi, map[1]),
                                              _mm512_permutex2var_epi8(map[2], hi, map[3]));
                _mm512_storeu_si512(o + 64 * a, lo);
                const uint64_t x = _mm512_cmpeq_epi8_mask(c[a], esc);
                if (x) {  /* the exceptions in word order: the order the kernel consumes them */
                    any = 1;
                    for (int h = 0; h < 2; h++) {
                        const __mmask32 m = (__mmask32)_pext_u64(x, 0x00FF00FF00FF00FFull << (8 * h));
                        _mm512_mask_compressstoreu_epi16(e, m, h ? r1 : r0);
                        e += __builtin_popcount(m);
                    }
                }
            }
            _mm512_storeu_si512(o + 128, _mm512_or_si512(c[0], _mm512_slli_epi16(c[1], 4)));
            flags[b * (kp / 2) + q] = (uint8_t)any;
        }
    }
    return 0;
}

/* The step at `st`'s words 64a .. 64a+63 as two registers (r[0]: 64a .., r[1]: 64a+32 ..), c its half's codes;
 * where the step has exceptions (`any`), they replace their words, `*e` advanced past them. */
static inline __attribute__((always_inline, target(CODED_TARGET)))
void coded_half(const uint8_t *st, int a, __m512i c, __m512i tab, int any, const uint16_t **e, __m512i r[2]) {
    const __m512i lo = _mm512_loadu_si512(st + 64 * a), hi = _mm512_shuffle_epi8(tab, c);  /* code -> high byte */
    r[0] = _mm512_unpacklo_epi8(lo, hi);
    r[1] = _mm512_unpackhi_epi8(lo, hi);
    if (__builtin_expect(any, 0)) {  /* ~2% of steps: the exceptions, in word order */
        const uint64_t x = _mm512_cmpeq_epi8_mask(c, _mm512_set1_epi8(CODED_ESC));
        for (int h = 0; h < 2; h++) {
            const __mmask32 m = (__mmask32)_pext_u64(x, 0x00FF00FF00FF00FFull << (8 * h));
            r[h] = _mm512_mask_expandloadu_epi16(r[h], m, *e);
            *e += __builtin_popcount(m);
        }
    }
}

static inline __attribute__((always_inline, target(CODED_TARGET)))
void coded_step(const uint8_t *st, __m512i tab, int any, const uint16_t **e, __m512i r[4]) {
    const __m512i c = _mm512_loadu_si512(st + 128), low = _mm512_set1_epi8(0x0F);
    coded_half(st, 0, _mm512_and_si512(c, low), tab, any, e, r);
    coded_half(st, 1, _mm512_and_si512(_mm512_srli_epi16(c, 4), low), tab, any, e, r + 2);
}

static inline __attribute__((always_inline, target(CODED_TARGET)))
__m512i coded_table(const int64_t *meta, int64_t b) {  /* the block's 16 high bytes in each 128-bit lane */
    return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(meta + b * CODED_META)));
}

/* Where block b of a coded weight of `blocks` blocks is read from: its steps, its step flags (after every block's
 * steps), its table and its next exception. coded_next decodes its steps in order. */
typedef struct {
    const uint8_t *steps, *flags;
    const uint16_t *exc;
    __m512i tab;
} CodedBlock;

static inline __attribute__((always_inline, target(CODED_TARGET)))
CodedBlock coded_block(const uint8_t *body, const int64_t *meta, const uint16_t *exc, int64_t blocks, int64_t kp,
                       int64_t b) {
    return (CodedBlock){body + b * (kp / 2) * CODED_STEP, body + blocks * (kp / 2) * CODED_STEP + b * (kp / 2),
                        exc + meta[b * CODED_META + 2], coded_table(meta, b)};
}

static inline __attribute__((always_inline, target(CODED_TARGET)))
void coded_next(CodedBlock *c, int64_t q, __m512i r[4]) {  /* step q's 128 words (steps in order) */
    coded_step(c->steps + q * CODED_STEP, c->tab, c->flags[q], &c->exc, r);
}

/* x[2q], x[2q+1] of a row of k values as one 32-bit word, (x[k-1], 0) for the half pair of an odd k (a row of odd k
 * may start unaligned: memcpy) */
static inline uint32_t row_pair(const uint16_t *xr, int64_t k, int64_t q) {
    uint32_t v = xr[k - 1];
    if (q < k / 2) memcpy(&v, xr + 2 * q, 4);
    return v;
}

/* a[r] += step words w times row r0+r's input pair q, for R rows of x (rows x k) */
static inline __attribute__((always_inline, target(CODED_TARGET)))
void rows_dot(__m512 a[][4], const uint16_t *x, int64_t r0, const int R, int64_t k, int64_t q, const __m512i w[4]) {
    for (int r = 0; r < R; r++) {
        const __m512bh xq = (__m512bh)_mm512_set1_epi32((int)row_pair(x + (r0 + r) * k, k, q));
        for (int i = 0; i < 4; i++) a[r][i] = _mm512_dpbf16_ps(a[r][i], (__m512bh)w[i], xq);
    }
}

/* packed_row.c's blocks_bf16 on the coded blocks b0 .. b0+S-1: the same products in the same order. */
static inline __attribute__((always_inline, target(CODED_TARGET)))
void blocks_coded(const uint32_t *xp, uint32_t last, const uint8_t *body, const int64_t *meta, const uint16_t *exc,
                  int64_t n, int64_t k, int64_t kp, int64_t b0, const int S, uint16_t *out) {
    __m512 a[CODED_STREAMS][4];
    CodedBlock c[CODED_STREAMS];
    for (int s = 0; s < S; s++) {
        c[s] = coded_block(body, meta, exc, (n + 63) / 64, kp, b0 + s);
        for (int i = 0; i < 4; i++) a[s][i] = _mm512_setzero_ps();
    }
    const int64_t pairs = k / 2;
    for (int64_t q = 0; q <= pairs; q++) {
        if (q == pairs && k % 2 == 0) break;  /* an odd k ends in a half pair: (x[k-1], 0), its weights (w, 0) */
        __m512bh xq = (__m512bh)_mm512_set1_epi32((int)(q < pairs ? xp[q] : last));
        for (int s = 0; s < S; s++) {
            __m512i r[4];
            coded_next(&c[s], q, r);
            for (int i = 0; i < 4; i++) a[s][i] = _mm512_dpbf16_ps(a[s][i], (__m512bh)r[i], xq);
        }
    }
    for (int s = 0; s < S; s++) store_block_bf16(a[s], out, (b0 + s) * 64, n);
}

/* out[n] = bf16(x . w[n]) for one bf16 row x of k values and the coded (n, k) weight: gemv_packed_bf16's results. */
__attribute__((target(CODED_TARGET)))
int gemv_coded_bf16(const uint16_t *x, const uint8_t *body, const int64_t *meta, const uint16_t *exc, int64_t n,
                    int64_t k, int64_t kp, int threads, uint16_t *out) {
    if (n <= 0 || k <= 0 || kp < k + k % 2 || kp % 2 || threads < 1) return 1;
    const int64_t blocks = (n + 63) / 64, groups = (blocks + CODED_STREAMS - 1) / CODED_STREAMS;
    const uint32_t *xp = (const uint32_t *)x;  /* (x[2p], x[2p+1]) as one 32-bit word */
    const uint32_t last = k % 2 ? x[k - 1] : 0;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < groups; g++) {
        const int64_t b0 = g * CODED_STREAMS, left = blocks - b0;
        switch (left >= CODED_STREAMS ? CODED_STREAMS : left) {  /* constant stream counts: the loops unroll */
            case 4: blocks_coded(xp, last, body, meta, exc, n, k, kp, b0, 4, out); break;
            case 3: blocks_coded(xp, last, body, meta, exc, n, k, kp, b0, 3, out); break;
            case 2: blocks_coded(xp, last, body, meta, exc, n, k, kp, b0, 2, out); break;
            default: blocks_coded(xp, last, body, meta, exc, n, k, kp, b0, 1, out); break;
        }
    }
    return 0;
}

/* Rows r0 .. r0+R-1 of x (rows x k, bf16) times coded block b, R a constant after inlining: each step decoded once
 * for the R rows (R x 4 accumulators), each row's sums in gemv_coded_bf16's order (the same bits as one row). */
static inline __attribute__((always_inline, target(CODED_TARGET)))
void block_rows(const uint16_t *x, int64_t r0, const int R, const uint8_t *body, const int64_t *meta,
                const uint16_t *exc, int64_t n, int64_t k, int64_t kp, int64_t b, uint16_t *out) {
    __m512 a[4][4];
    CodedBlock c = coded_block(body, meta, exc, (n + 63) / 64, kp, b);
    for (int r = 0; r < R; r++)
        for (int i = 0; i < 4; i++) a[r][i] = _mm512_setzero_ps();
    for (int64_t q = 0; q < (k + 1) / 2; q++) {  /* an odd k ends in a half pair: (x[k-1], 0) */
        __m512i w[4];
        coded_next(&c, q, w);
        rows_dot(a, x, r0, R, k, q, w);
    }
    for (int r = 0; r < R; r++) store_block_bf16(a[r], out + (r0 + r) * n, b * 64, n);
}

/* Rows r0 .. r0+R-1 times the decoded steps q0 .. q1-1 of a block in `buf` (its words, step by step), the sums
 * carried in `part` (rows x 64 float32; `first`: start from 0): the same products in the same order as block_rows. */
static inline __attribute__((always_inline, target(CODED_TARGET)))
void chunk_rows(const uint16_t *x, int64_t r0, const int R, const uint16_t *buf, int64_t q0, int64_t q1, int64_t k,
                int first, float *part) {
    __m512 a[4][4];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < 4; i++)
            a[r][i] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(part + (r0 + r) * 64 + 16 * i);
    for (int64_t q = q0; q < q1; q++) {
        __m512i w[4];
        for (int i = 0; i < 4; i++) w[i] = _mm512_loadu_si512(buf + (q - q0) * 128 + 32 * i);
        rows_dot(a, x, r0, R, k, q, w);
    }
    for (int r = 0; r < R; r++)
        for (int i = 0; i < 4; i++) _mm512_storeu_ps(part + (r0 + r) * 64 + 16 * i, a[r][i]);
}

#define CODED_CHUNK 256  /* steps decoded at a time for many rows: 64 KB of words, in L2 beside the rows' inputs */

/* Many rows times coded block b: CODED_CHUNK steps decoded once into `buf`, then every group of 4 rows runs over
 * them (loads instead of decoding again per group), the sums kept in `part` between chunks. */
static inline __attribute__((always_inline, target(CODED_TARGET)))
void block_many_rows(const uint16_t *x, int64_t rows, const uint8_t *body, const int64_t *meta, const uint16_t *exc,
                     int64_t n, int64_t k, int64_t kp, int64_t b, uint16_t *buf, float *part, uint16_t *out) {
    const int64_t steps = (k + 1) / 2;
    CodedBlock c = coded_block(body, meta, exc, (n + 63) / 64, kp, b);
    for (int64_t q0 = 0; q0 < steps; q0 += CODED_CHUNK) {
        const int64_t q1 = q0 + CODED_CHUNK < steps ? q0 + CODED_CHUNK : steps;
        for (int64_t q = q0; q < q1; q++) {
            __m512i w[4];
            coded_next(&c, q, w);
            for (int i = 0; i < 4; i++) _mm512_storeu_si512(buf + (q - q0) * 128 + 32 * i, w[i]);
        }
        for (int64_t r0 = 0; r0 < rows; r0 += 4)
            switch (rows - r0 >= 4 ? 4 : rows - r0) {
                case 4: chunk_rows(x, r0, 4, buf, q0, q1, k, q0 == 0, part); break;
                case 3: chunk_rows(x, r0, 3, buf, q0, q1, k, q0 == 0, part); break;
                case 2: chunk_rows(x, r0, 2, buf, q0, q1, k, q0 == 0, part); break;
                default: chunk_rows(x, r0, 1, buf, q0, q1, k, q0 == 0, part); break;
            }
    }
    for (int64_t r = 0; r < rows; r++) {
        const __m512 a[4] = {_mm512_loadu_ps(part + r * 64), _mm512_loadu_ps(part + r * 64 + 16),
                             _mm512_loadu_ps(part + r * 64 + 32), _mm512_loadu_ps(part + r * 64 + 48)};
        store_block_bf16(a, out + r * n, b * 64, n);
    }
}

#define CODED_FEW_ROWS 64  /* up to this many rows, each group of 4 decodes the steps itself (block_rows): faster
                            * there than decoding once into a buffer (benchmarks/coded_rows.py) */

/* out (rows x n) = x (rows x k) times the coded weight, each row with gemv_coded_bf16's bits. Block by block, every
 * row of a block before the next block, so the coded block (64 * kp * 1.5 bytes) is read from memory once: up to
 * CODED_FEW_ROWS rows, each group of 4 decodes it again from cache; more rows decode it once, a chunk at a time, and
 * every group reads the decoded words (block_many_rows). Returns 0, or 1 (a shape it does not take, no memory). */
__attribute__((target(CODED_TARGET)))
int gemm_coded_bf16(const uint16_t *x, int64_t rows, const uint8_t *body, const int64_t *meta, const uint16_t *exc,
                    int64_t n, int64_t k, int64_t kp, int threads, uint16_t *out) {
    if (rows <= 0 || n <= 0 || k <= 0 || kp < k + k % 2 || kp % 2 || threads < 1) return 1;
    const int64_t blocks = (n + 63) / 64;
    int fail = 0;
#pragma omp parallel num_threads(threads)
    {
        uint16_t *buf = NULL;
        float *part = NULL;
        if (rows > CODED_FEW_ROWS) {  /* per thread: one chunk of decoded steps, the rows' running sums */
            buf = malloc(sizeof(uint16_t) * CODED_CHUNK * 128);
            part = malloc(sizeof(float) * rows * 64);
            if (!buf || !part) {
#pragma omp atomic write
                fail = 1;
            }
        }
#pragma omp barrier
        if (!fail) {
#pragma omp for schedule(static)
            for (int64_t b = 0; b < blocks; b++) {
                if (rows > CODED_FEW_ROWS) {
                    block_many_rows(x, rows, body, meta, exc, n, k, kp, b, buf, part, out);
                    continue;
                }
                for (int64_t r0 = 0; r0 < rows; r0 += 4)
                    switch (rows - r0 >= 4 ? 4 : rows - r0) {
                        case 4: block_rows(x, r0, 4, body, meta, exc, n, k, kp, b, out); break;
                        case 3: block_rows(x, r0, 3, body, meta, exc, n, k, kp, b, out); break;
                        case 2: block_rows(x, r0, 2, body, meta, exc, n, k, kp, b, out); break;
                        default: block_rows(x, r0, 1, body, meta, exc, n, k, kp, b, out); break;
                    }
            }
        }
        free(buf);
        free(part);
    }
    return fail;
}

/* The packed bf16 buffer back (blocks x 64 x kp words) from the coded one: with AMX, prefill runs oneDNN on it
 * (coded.Scratch); the plain weight (CodedLinear.plain) is read from it too. */
__attribute__((target(CODED_TARGET)))
int coded_decode(const uint8_t *body, const int64_t *meta, const uint16_t *exc, int64_t blocks, int64_t kp,
                 int threads, uint16_t *w) {
    if (blocks <= 0 || kp <= 0 || kp % 2 || threads < 1) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        CodedBlock c = coded_block(body, meta, exc, blocks, kp, b);
        for (int64_t q = 0; q < kp / 2; q++) {
            __m512i r[4];
            coded_next(&c, q, r);
            for (int i = 0; i < 4; i++) _mm512_storeu_si512(w + b * 64 * kp + q * 128 + 32 * i, r[i]);
        }
    }
    return 0;
}
