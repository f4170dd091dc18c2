"""The Cohere Command-R family in one file: CohereForCausalLM (`cohere`: Command R, R+, Aya), Cohere2ForCausalLM
(`cohere2`: Command R7B, Command A) and Cohere2MoeForCausalLM (`cohere2_moe`: Command A+, North), also inside a
`cohere2_vision` wrapper (config.weight_prefix). Read top to bottom: config, KV cache, norm and rotary helpers,
attention, MLP and experts, block, model. Module names follow the checkpoint keys (`model.layers.N.self_attn.q_proj`), so loading needs no key
table. The architecture only, one route per module: the inference layout (fused projections, packed weights, the
native decode step) is weights/layout.py, whose subclasses reuse the pieces below (Attention.position and .attend,
MLP.down). This file imports only torch and its config (cohere_cli/config.py). Reference: ../shared/cohere-spec.md, sections 1 and 5.

Shapes: B batch, T new tokens this call, S keys attended, H hidden, nh/nkv query/kv heads, hd head dim, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cohere_cli.config import ModelConfig  # the one config.json parser


# ---- KV cache -------------------------------------------------------------------------------------------------------
class KVCache:
    """Preallocated keys/values per layer, written in place (no per-token allocation).
    Full-attention layers keep `max_seq` positions. Sliding layers of Cohere2 keep a ring buffer of
    `window + slack` slots (slot = position % size) with the position each slot holds: a 128K-token R7B context
    then costs ~4.6K positions on 3 of every 4 layers. The slack lets a chat rewind up to `slack` tokens (to the
    longest common prefix with the next prompt) without losing keys still inside the window.
    Keys are stored after RoPE, so slot order never matters to attention: masks are built from positions."""

    EMPTY = -(2**40)  # position of a never-written slot: outside every window

    def __init__(self, cfg: ModelConfig, max_seq: int, dtype: torch.dtype, device="cpu", batch: int = 1,
                 slack: int = 512):
        self.max_seq, self.layers = max_seq, []
        self.ring_size = min(max_seq, (cfg.sliding_window or max_seq) + slack)
        for i in range(cfg.n_layers):
            ring = cfg.is_sliding(i) and self.ring_size < max_seq
            n = self.ring_size if ring else max_seq
            k = torch.zeros(batch, cfg.n_kv_heads, n, cfg.head_dim, dtype=dtype, device=device)  # (B, nkv, n, hd)
            slot_pos = torch.full((n,), self.EMPTY, dtype=torch.long, device=device) if ring else None
            self.layers.append((k, torch.zeros_like(k), slot_pos))
        self.window = cfg.sliding_window

    def can_rewind(self, to: int, filled: int) -> bool:
        """Can generation restart at position `to` after positions 0..filled-1 were written? Full layers always
        can; a ring still holds positions filled-size..filled-1 and must hold to-window+1..to-1."""
        if not any(sp is not None for _, _, sp in self.layers):
            return True
        return max(0, to - self.window + 1) >= max(0, filled - self.ring_size)

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _, _ in self.layers)


# ---- norm and rotary helpers ----------------------------------------------------------------------------------------
def layer_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Cohere's LayerNorm: mean-centred, weight only (no bias), always computed in float32.
    weight is (H,) for the block norms or (heads, hd) for R+'s per-head q/k norms (normalised over hd only)."""
    xf = x.float()
    if weight.dim() == 1:  # the weight inside the kernel: one op fewer, bit-identical to y * weight
        return F.layer_norm(xf, xf.shape[-1:], weight.float(), None, eps).to(x.dtype)
    y = F.layer_norm(xf, xf.shape[-1:], None, None, eps)
    return (y * weight.float()).to(x.dtype)


class LayerNorm(nn.Module):
    def __init__(self, shape, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(shape)), eps

    def forward(self, x):
        return layer_norm(x, self.weight, self.eps)


class RMSNorm(LayerNorm):
    """cohere2_moe with rms_norm_eps (Llama's RMSNorm): x / rms(x) in float32, rounded to the input dtype BEFORE
    the weight multiplies it (transformers' order; multiplying in float32 differs in the last bf16 bit)."""

    def forward(self, x):
        xf = x.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return self.weight * y


def block_norm(cfg: ModelConfig) -> LayerNorm:
    return (RMSNorm if cfg.rms_norm else LayerNorm)(cfg.hidden_size, cfg.norm_eps)


def rope_cos_sin(pos: torch.Tensor, hd: int, theta: float, dtype: torch.dtype) -> torch.Tensor:
    """The rotations for positions `pos` (T,) as complex numbers cos + i sin, (T, 1, hd/2) complex64. Frequencies
    in float32, cos/sin rounded to the model dtype exactly as transformers does (bit-level parity in bf16/fp16)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device=pos.device) / hd)  # (hd/2,)
    freqs = pos.float()[:, None] * inv_freq[None, :]  # (T, hd/2)
    return torch.complex(freqs.cos().to(dtype).float(), freqs.sin().to(dtype).float())[:, None, :]  # (T, 1, hd/2)


def apply_rope(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """Interleaved (GPT-J) rotary embedding: pairs are (2i, 2i+1), NOT the two halves as in Llama/NeoX.
    Getting this wrong garbles Cohere output silently (spec pitfall 1). x: (B, T, heads, hd).
    A pair (x1, x2) read as the complex x1 + i x2 times cos + i sin is (x1 cos - x2 sin, x2 cos + x1 sin): the same
    products in float32 as the real form (bit-identical), in 3 kernels instead of 12."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, T, heads, hd/2) complex64
    return torch.view_as_real(xc * cis).flatten(-2).to(x.dtype)  # (B, T, heads, hd)


# ---- linear layers --------------------------------------------------------------------------------------------------
def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, or oneDNN's linear when `w` was reordered for it (weights/packed.pack_weight)."""
    if w.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


class Linear(nn.Linear):
    """nn.Linear whose weight may be a packed one (same name, same shape, oneDNN layout: weights/layout.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


# ---- attention ------------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        H, nh, nkv, hd, b = cfg.hidden_size, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.attention_bias
        self.q_proj = Linear(H, nh * hd, bias=b)
        self.k_proj = Linear(H, nkv * hd, bias=b)
        self.v_proj = Linear(H, nkv * hd, bias=b)
        self.o_proj = Linear(nh * hd, H, bias=b)
        if cfg.use_qk_norm:  # Command R+: per-head weights, shape (heads, hd)
            self.q_norm = LayerNorm((nh, hd), cfg.norm_eps)
            self.k_norm = LayerNorm((nkv, hd), cfg.norm_eps)
        self.nh, self.nkv, self.hd, self.eps = nh, nkv, hd, cfg.norm_eps
        self.window = cfg.sliding_window if cfg.is_sliding(layer) else None
        # Cohere2: RoPE only on sliding layers; its global layers use no positional encoding at all (pitfall 2).
        self.use_rope = cfg.uses_rope(layer)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, rope, cache_layer=None, masks: dict | None = None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd)  # (B, T, nh, hd)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd)  # (B, T, nkv, hd)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd)  # (B, T, nkv, hd)
        q, k = self.position(q, k, rope)
        return self.attend(q, k, v, pos, cache_layer, masks)

    def position(self, q: torch.Tensor, k: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, T, nh, hd) and k (B, T, nkv, hd) made position-aware: R+'s per-head norms, then RoPE."""
        if hasattr(self, "q_norm"):  # before RoPE, normalised over hd per head
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        return q, k

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, cache_layer=None,
               masks: dict | None = None) -> torch.Tensor:
        """Attention of positioned q, k and v (B, T, heads, hd) at positions `pos` (T,), through the cache if
        any, and the output projection: (B, T, H)."""
        return self.o_proj(self.mix(q, k, v, pos, cache_layer, masks))

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, cache_layer=None,
            masks: dict | None = None) -> torch.Tensor:
        """`attend` before the output projection: the heads' outputs side by side, (B, T, nh*hd). Its own step so
        that batched decoding (engine/batch_forward.py) attends row by row, each row over its own cache, and then
        runs one o_proj for all rows."""
        B, T, nh, hd = q.shape
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)

        if cache_layer is None:  # training / reference path: the whole sequence at once
            keys, values, kpos = k, v, pos
        else:
            keys, values, kpos = self._update_cache(k, v, pos, cache_layer)
        # layers without a ring see the same keys at the same positions: one mask per forward serves them all
        shared = masks if cache_layer is None or cache_layer[2] is None else None
        out = self._sdpa(q, keys, values, pos, kpos, shared)  # (B, nh, T, hd)
        return out.transpose(1, 2).reshape(B, T, nh * hd)  # (B, T, nh*hd)

    def _update_cache(self, k, v, pos, cache_layer):
        """Write this call's keys/values into the cache; return what to attend to and, where a mask is needed
        beyond plain causality, the keys' positions."""
        kc, vc, slot_pos = cache_layer
        start, T = int(pos[0]), k.shape[2]
        if slot_pos is None:  # plain cache: positions 0..start+T-1 in order
            kc[:, :, start : start + T] = k
            vc[:, :, start : start + T] = v
            kpos = torch.arange(start + T, device=k.device) if self.window is not None else None
            return kc[:, :, : start + T], vc[:, :, : start + T], kpos
        R = kc.shape[2]
        if T == 1:  # decode: write the new key, attend over the ring (the mask keeps the window)
            kc[:, :, start % R], vc[:, :, start % R] = k[:, :, 0], v[:, :, 0]
            slot_pos[start % R] = start
            return kc, vc, slot_pos
        # chunked prefill: the ring as it was (read before we overwrite it) + this chunk. Slots holding positions
        # >= start are left over from a rewound branch and must not be seen.
        old = torch.where(slot_pos < start, slot_pos, KVCache.EMPTY)
        keys, values = torch.cat((kc, k), dim=2), torch.cat((vc, v), dim=2)  # (B, nkv, R+T, hd)
        last = pos[-min(T, R) :]  # only the last R positions of the chunk survive in the ring
        kc[:, :, last % R], vc[:, :, last % R] = k[:, :, -len(last) :], v[:, :, -len(last) :]
        slot_pos[last % R] = last
        return keys, values, torch.cat((old, pos))

    def _sdpa(self, q, k, v, qpos, kpos, masks: dict | None = None):
        """Grouped-query attention without copying K/V per query head: the nh/nkv query heads sharing one kv head
        are folded into the query length, (B, nkv, g*T, hd), so K/V are read once (matters for decode speed)."""
        B, _, T, hd = q.shape
        g, S, dtype = self.nh // self.nkv, k.shape[2], q.dtype
        if dtype == torch.float16:  # fp16 scores overflow on Cohere (pitfall 8): attend in float32
            q, k, v = q.float(), k.float(), v.float()
        if T > 1 and self.window is None and kpos is None and q.device.type == "cpu" and _FLASH_CPU is not None:
            return self._prefix_and_causal(q, k, v).to(dtype)
        mask = None
        if T > 1 or kpos is not None:  # one query on a full layer sees every key the cache hands over
            mask = masks.get((self.window, S)) if masks is not None else None
            if mask is None:
                kp = kpos if kpos is not None else torch.arange(S, device=q.device)
                mask = kp[None, :] <= qpos[:, None]  # (T, S) causal
                if self.window is not None:  # sliding: the token itself + window-1 before it
                    mask &= kp[None, :] > qpos[:, None] - self.window
                mask = mask.repeat(g, 1)  # (g*T, S), rows ordered like the folded queries
                if masks is not None:  # rebuilt per layer it cost ~10% of a late 512-token chunk of an 8K prefill
                    masks[(self.window, S)] = mask
        qg = q.reshape(B, self.nkv, g * T, hd)  # (B, nkv, g*T, hd): heads j*g..j*g+g-1 share kv head j
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=1.0 / math.sqrt(hd))
        return out.reshape(B, self.nh, T, hd).to(dtype)

    def _prefix_and_causal(self, q, k, v):
        """Prefill of a full-attention layer with no mask: the chunk's queries see every key before the chunk
        (P = S - T of them, no mask needed) and the chunk's own keys causally. Two flash-attention calls, one over
        the prefix (queries folded as in _sdpa) and one causal over the chunk, merged by their log-sum-exps:
        out = (o1 e^l1 + o2 e^l2) / (e^l1 + e^l2). Against one call with a (g*T, S) boolean mask: 12% less time at
        S = 8192 (104 -> 91 ms per layer and 512-token chunk), most of an 8K prefill's attention."""
        B, nh, T, hd = q.shape
        nkv, S = k.shape[1], k.shape[2]
        g, P, scale = nh // nkv, S - T, 1.0 / math.sqrt(hd)
        kd = k[:, :, P:].repeat_interleave(g, dim=1)  # (B, nh, T, hd): the chunk's keys per query head
        vd = v[:, :, P:].repeat_interleave(g, dim=1)  # (B, nh, T, hd)
        o2, l2 = _FLASH_CPU(q, kd, vd, is_causal=True, scale=scale)[:2]  # (B, nh, T, hd), (B, nh, T)
        if P == 0:
            return o2
        qg = q.reshape(B, nkv, g * T, hd)  # (B, nkv, g*T, hd), folded as in _sdpa
        o1, l1 = _FLASH_CPU(qg, k[:, :, :P], v[:, :, :P], scale=scale)[:2]  # (B, nkv, g*T, hd), (B, nkv, g*T)
        o1, l1 = o1.reshape(B, nh, T, hd), l1.reshape(B, nh, T)
        m = torch.maximum(l1, l2)
        w1, w2 = (l1 - m).exp(), (l2 - m).exp()  # (B, nh, T) float32
        return (o1.float() * w1[..., None] + o2.float() * w2[..., None]) / (w1 + w2)[..., None]


# CPU flash attention that also returns the log-sum-exp of each query's scores (F.scaled_dot_product_attention does
# not); absent in some builds, where prefill keeps the masked path.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


# ---- MLP, block, model ----------------------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, intermediate: int | None = None):
        super().__init__()
        H, I = cfg.hidden_size, intermediate or cfg.intermediate_size
        self.gate_proj = Linear(H, I, bias=False)
        self.up_proj = Linear(H, I, bias=False)
        self.down_proj = Linear(I, H, bias=False)

    def forward(self, x):
        return self.down(self.gate_proj(x), self.up_proj(x))

    def down(self, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(g) * u)  # SwiGLU


class Router(nn.Module):
    """`mlp.gate`: scores of the top `k` of E experts per token. Kept in float by quantization (it is tiny, and a
    flipped choice changes the whole layer's output)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_experts, cfg.hidden_size))  # (E, H)
        self.k, self.fn, self.norm_topk = cfg.n_experts_per_tok, cfg.router_fn, cfg.norm_topk_prob

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, H) -> scores (N, k) in x's dtype and expert ids (N, k)."""
        top, ids = torch.topk(F.linear(x, self.weight), self.k, dim=-1)  # (N, k) logits of the chosen experts
        if self.fn == "softmax":  # over the k chosen logits only (not all E, unlike Mixtral), in float32
            scores = F.softmax(top, dim=-1, dtype=torch.float)
        else:
            scores = torch.sigmoid(top)
            if self.norm_topk:  # only sigmoid scores are renormalised; softmax ones already sum to 1
                scores = scores / scores.sum(dim=-1, keepdim=True)
        return scores.to(x.dtype), ids


class SparseMoE(nn.Module):
    """cohere2_moe's sparse MLP: `gate` (the router), `experts.N` (SwiGLU MLPs, one per expert as on disk) and
    `shared_experts` (one MLP of intermediate * num_shared_experts that every token runs)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = Router(cfg)
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.n_experts))
        if cfg.n_shared_experts:
            self.shared_experts = MLP(cfg, cfg.intermediate_size * cfg.n_shared_experts)
        self.average = cfg.shared_combine == "average"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, H): every token of every sequence
        scores, ids = self.gate(x)  # (N, k), (N, k)
        out = self.routed(x, scores, ids)  # (N, H)
        if hasattr(self, "shared_experts"):
            out = out + self.shared_experts(x)
            if self.average:  # "average": (routed + shared) / 2
                out = out / 2
        return out.reshape(shape)

    def routed(self, x: torch.Tensor, scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """sum over each token's k experts of score * expert(token), tokens grouped by expert: one batched call
        per expert that any token chose (a Python loop over experts, never over tokens)."""
        if x.shape[0] == 1:  # decode: k experts, added in ascending expert order as below (the same roundings)
            out = None
            for j in ids[0].argsort().tolist():
                y = self.experts[int(ids[0, j])](x) * scores[0, j]  # (1, H)
                out = y if out is None else out + y
            return out
        out = torch.zeros_like(x)  # (N, H)
        flat = ids.flatten()  # (N*k,) expert of each (token, slot)
        order = flat.argsort(stable=True)  # (token, slot) pairs grouped by expert
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()
        tokens = order // ids.shape[1]  # (N*k,) the token of each pair, in expert order
        w = scores.flatten()[order]  # (N*k,)
        start = 0
        for e, n in enumerate(counts):
            if n:
                t = tokens[start : start + n]
                y = self.run_expert(e, x[t]) * w[start : start + n, None]  # (n, H)
                out.index_add_(0, t, y.to(out.dtype))
                start += n
        return out

    def run_expert(self, e: int, rows: torch.Tensor) -> torch.Tensor:
        """Expert `e` on the rows routed to it, (n, H) -> (n, H) (weights/layout.py pads them)."""
        return self.experts[e](rows)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = block_norm(cfg)
        self.self_attn = Attention(cfg, layer)
        if cfg.is_sparse(layer):
            self.mlp = SparseMoE(cfg)
        else:  # cohere2_moe's dense prefix layers have their own width
            self.mlp = MLP(cfg, cfg.dense_intermediate_size if cfg.mlp_types else None)

    def forward(self, x, pos, rope, cache_layer=None, masks: dict | None = None):
        # Parallel block with ONE norm: attention and MLP both read the same normed input, one residual add.
        h = self.input_layernorm(x)
        return x + self.self_attn(h, pos, rope, cache_layer, masks) + self.mlp(h)


class Decoder(nn.Module):
    """`model.*` in the checkpoint."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)  # no sqrt(H) scaling, unlike Gemma
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = block_norm(cfg)

    def forward(self, x, pos, rope, cache: KVCache | None = None, masks: dict | None = None):
        """The blocks, in order: (B, T, H) -> (B, T, H). (The embedding and the final norm are the caller's.)"""
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, rope, cache.layers[i] if cache is not None else None, masks)
        return x


class CohereForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:  # checkpoints carry no lm_head.weight (pitfall 6)
            self.lm_head.weight = self.model.embed_tokens.weight

    def _rope(self, start: int, T: int, dtype: torch.dtype, device) -> torch.Tensor:
        """rope_cos_sin for positions start..start+T-1, sliced from a table of the first 2^k positions built once
        per dtype and device (the same values: elementwise): 11 small ops per decode step, ~20-25 us, become one
        slice. Grows with the positions used: 4 MB per 8K positions at head dim 128, next to 1 GB of R7B's cache."""
        tab = self.__dict__.get("_rope_table")
        if tab is None or tab.shape[0] < start + T or tab.device != device or self._rope_dtype != dtype:
            n = max(1024, 1 << (start + T - 1).bit_length())
            # an ordinary tensor even when built during generation (inference mode): autograd may use it later
            with torch.inference_mode(False), torch.no_grad():
                pos = torch.arange(n, device=device)
                tab = rope_cos_sin(pos, self.config.head_dim, self.config.rope_theta, dtype)  # (n, 1, hd/2) complex64
            self._rope_table, self._rope_dtype = tab, dtype
        return tab[start : start + T]  # (T, 1, hd/2)

    def forward(self, tokens: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """tokens (B, T) at positions start_pos.. -> logits (B, T, V), or (B, 1, V) with last_only (prefill and
        decode never need seq x vocab logits). Logits come back in float32, multiplied by logit_scale."""
        T = tokens.shape[1]
        pos = torch.arange(start_pos, start_pos + T, device=tokens.device)  # (T,)
        x = self.model.embed_tokens(tokens)  # (B, T, H)
        rope = self._rope(start_pos, T, x.dtype, x.device)  # once for all layers
        masks: dict = {}  # attention masks shared by layers of one kind, built by the first that needs one
        x = self.model(x, pos, rope, cache, masks)
        if last_only:
            x = x[:, -1:]  # (B, 1, H)
        x = self.model.norm(x)
        # logit_scale is easy to drop: argmax survives, sampling and logprobs do not (pitfall 4).
        return self.lm_head(x).float() * self.config.logit_scale
