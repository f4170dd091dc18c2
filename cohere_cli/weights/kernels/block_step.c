/* One decode step (one token, batch 1, bf16) of a parallel Cohere block in one call, on AVX-512 (BF16, VNNI):
 *
 *   h   = LayerNorm(x)                                   layer_norm_bf16 (decode.c)
 *   y   = in_proj(h)          = [q | k | v | gate | up]  one matvec (below)
 *   att = attention(q, k, v) over the cache              decode_attn_bf16 (decode.c: rotary, cache write, GQA)
 *   act = silu(gate) * up                                silu_mul_bf16 (decode.c)
 *   out = bf16(bf16(x + o_proj(att)) + down_proj(act))   the residual as torch adds it: x + attn + mlp
 *
 * where each matvec is whichever kernel the module's weight is stored for: oneDNN's packed bf16 (packed_row.c), the same coded in 12 bits (coded_row.c),
 * LLM.int8() (int8_row.c) or bitsandbytes' 4-bit CPU layout (nf4_row.c). The same kernels, in the same order, as
 * layout.FusedBlock's per-op native path (kernels.DecodeOps.step), so the results are the same bits.
 *
 * Why: that per-op path made ~20 Python-level calls per layer (checks, torch.empty, views, adds, one ctypes call
 * per kernel), ~125 us a layer on the 2-core dev machine, ~2 ms of a 7-16 ms step of the 213M benchmark model.
 * Here the layer is one ctypes call; what is left per layer is the kernels and their OpenMP regions.
 *
 * Returns 0, or where a kernel declines (a shape it does not take; LLM.int8() on a row with an outlier) the stage
 * it reached: 1 before the attention (nothing written: the caller runs its per-op path), 2 at o_proj (this token's
 * key and value are in the cache, `att` and `act` hold the attention output and the SwiGLU activation), 3 at
 * down_proj (`ao` holds o_proj's output too). The caller finishes from there with its own modules, so a late
 * decline costs only the products that declined. `out` is written only on success. */
#include <stdlib.h>

#include "coded_row.c"
#include "decode.c"
#include "int8_row.c"
#include "nf4_row.c"
#include "packed_row.c"

enum { PACKED_BF16 = 1, LLM_INT8 = 2, BNB_4BIT = 3, CODED_BF16 = 4 };

/* One weight as its kernel reads it (kernels/block.py builds these from the modules' bound pointers). */
typedef struct {
    int64_t kind, n, k;
    const void *w;       /* the packed bf16 buffer, the int8 rows (n x k), the 4-bit bytes or the coded body */
    int64_t kp;          /* packed and coded bf16: k padded; 4-bit: the blocksize */
    const void *a, *b;   /* LLM.int8(): scb (n float32), rowsum (n int32); 4-bit: absmax_t (bf16), code (16 float32);
                          * coded bf16: meta, exceptions */
    float threshold;     /* LLM.int8()'s outlier threshold */
} Mat;

typedef struct {
    Mat in_proj, o_proj, down;
    const void *norm_w;  /* hidden values, bf16 (norm_bf16) or float32 */
    int64_t norm_bf16;
    float eps, scale;    /* the norm's epsilon, the attention's 1/sqrt(hd) */
    int64_t hidden, nh, nkv, hd, inter, window;
} Block;

static int matvec(const Mat *m, const uint16_t *x, int threads, uint16_t *out) {
    switch (m->kind) {
        case PACKED_BF16: return gemv_packed_bf16(x, m->w, m->n, m->k, m->kp, threads, out);
        case LLM_INT8: return llm_int8_row_bf16(x, m->k, m->w, m->a, m->b, NULL, out, m->n, m->threshold);
        case BNB_4BIT: return gemv_4bit_row_bf16(x, m->w, m->a, m->b, m->n, m->k, m->kp, out);
        case CODED_BF16: return gemv_coded_bf16(x, m->w, m->a, m->b, m->n, m->k, m->kp, threads, out);
        default: return 1;
    }
}

/* torch's vectorized float32 -> bf16 (round to nearest even; NaN as 0xFFFF, where its scalar conversion gives
 * 0x7FC0): what a bf16 tensor add writes */
static inline uint16_t f32_to_bf16_vec(float f) { return isnan(f) ? 0xFFFF : f32_to_bf16(f); }

/* x, out: hidden bf16 (distinct); cs: hd/2 (cos, sin) float pairs or NULL (no rotary); kc, vc: (nkv, n, hd) bf16;
 * slot_pos: n int64 or NULL; slot, S, qpos, window as decode_attn_bf16 takes them; att (nh * hd), act (inter), ao
 * (hidden): bf16 buffers the caller reads after a late decline. */
int block_step_bf16(const Block *b, const uint16_t *x, const float *cs, uint16_t *kc, uint16_t *vc, int64_t n,
                     int64_t slot, int64_t S, int64_t *slot_pos, int64_t qpos, int64_t threads, uint16_t *att,
                     uint16_t *act, uint16_t *ao, uint16_t *out) {
    const int64_t H = b->hidden, qkv = (b->nh + 2 * b->nkv) * b->hd, I = b->inter;
    /* every size the kernels rely on, from the one description: a mismatch declines instead of reading past */
    if (b->in_proj.k != H || b->in_proj.n != qkv + 2 * I || b->o_proj.k != b->nh * b->hd || b->o_proj.n != H
        || b->down.k != I || b->down.n != H || H <= 0 || I <= 0 || threads < 1)
        return 1;
    uint16_t *buf = malloc(sizeof(uint16_t) * (2 * H + qkv + 2 * I) + 64);
    if (!buf) return 1;
    uint16_t *h = buf, *y = h + H, *mo = y + qkv + 2 * I;
    int stage = 1;
    if (layer_norm_bf16(x, b->norm_w, b->norm_bf16, H, b->eps, h) || matvec(&b->in_proj, h, (int)threads, y)
        || decode_attn_bf16(y, cs, kc, vc, n, slot, S, slot_pos, qpos, b->window, b->nh, b->nkv, b->hd, b->scale,
                            threads, att))
        goto done;
    silu_mul_bf16(y + qkv, I, act);
    stage = 2;
    if (matvec(&b->o_proj, att, (int)threads, ao)) goto done;
    stage = 3;
    if (matvec(&b->down, act, (int)threads, mo)) goto done;
    for (int64_t j = 0; j < H; j++)
        out[j] = f32_to_bf16_vec(bf16_to_f32(f32_to_bf16_vec(bf16_to_f32(x[j]) + bf16_to_f32(ao[j]))) + bf16_to_f32(mo[j]));
    stage = 0;
done:
    free(buf);
    return stage;
}

/* One layer of model_step_bf16: its block, its cache (as block_step_bf16 takes it), whether it rotates (Cohere2's
 * full-attention layers do not), whether its cache is a ring (slot_pos non-NULL: a sliding window's). */
typedef struct {
    const Block *b;
    uint16_t *kc, *vc;
    int64_t n, rope;
    int64_t *slot_pos;
} Layer;

/* A decode step of L consecutive blocks in one call: block_step_bf16 for each, layer j reading layer j-1's output
 * (x for j = 0) and writing bufs[j % 2] (buf0 or buf1, hidden bf16 each, distinct from x). cs: the token's
 * rotation ((cos, sin) pairs) for the layers that rotate. Returns the number of layers done; where one declines,
 * *stage is its block_step_bf16 stage (else 0), its input is x or the previous layer's buffer, and att / act / ao
 * hold what that stage left. A cache position out of range declines at stage 1, before anything is written.
 *
 * Why: a per-layer call from Python cost ~70 us a layer around the kernels while decoding (~1.1 ms of a 7 ms step of
 * the 213M benchmark model in 4-bit): its Python ran from a cache the kernels had just flushed. The checks still
 * run in Python, for all layers back to back, before this one call. */
int64_t model_step_bf16(const Layer *layers, int64_t L, const uint16_t *x, const float *cs, int64_t qpos,
                        int64_t threads, uint16_t *att, uint16_t *act, uint16_t *ao, uint16_t *buf0, uint16_t *buf1,
                        int64_t *stage) {
    const uint16_t *in = x;
    for (int64_t j = 0; j < L; j++) {
        const Layer *l = &layers[j];
        uint16_t *out = j % 2 ? buf1 : buf0;
        int s = 1;
        if (qpos >= 0 && l->n > 0) {  /* (before the modulo: n = 0 would trap) */
            const int64_t slot = l->slot_pos ? qpos % l->n : qpos, S = l->slot_pos ? l->n : qpos + 1;
            if (slot < l->n && S <= l->n)
                s = block_step_bf16(l->b, in, l->rope ? cs : NULL, l->kc, l->vc, l->n, slot, S, l->slot_pos, qpos,
                                    threads, att, act, ao, out);
        }
        if (s) {
            *stage = s;
            return j;
        }
        in = out;
    }
    *stage = 0;
    return L;
}
