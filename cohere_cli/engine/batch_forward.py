"""One decode step of several sequences at once (engine/batch.py's continuous batching), through model.py's modules
and weights: the architecture stays in model.py, this file only arranges rows.

Row b is one token of its own sequence at its own position, with its own KV cache (a KVCache of batch 1: its own
length, its own sliding-window ring). What is batched is what reads the weights: the projections, the MLP and the
head run once for all B rows, so a memory-bound step reads the weights once instead of B times. What is per row is
what reads the row's own cache: rotary at the row's position (a slice of the model's rope table) and attention over
its keys, through exactly the single-sequence code (the native decode kernel, or Attention.mix with its masks). A
padded (B, S_max) attention with a key mask per row would change each row's reduction (another kernel, another
length) and so the answer; per row it is the same computation as an unbatched decode, at the same cost (the keys
are the row's own either way).

The batch must not change the answer: each row's logits are bit-identical to the model's one-token forward, so
greedy tokens equal stream_generate's. Elementwise ops and the row-wise norms are independent of the other rows.
Matmuls need not be: oneDNN runs a one-row bf16 matmul with another K accumulation order than two rows or more
when K > 1024 (measured on torch 2.13: ~1 output in 4000 differs in its last bf16 bit; fp32 differs always), while
any two M >= 2 agree with each other. BatchForward therefore makes the model's packed linears batch-invariant
(weights/packed.batch_invariant: such a linear multiplies one row as two, in every decode of the served model, alone
or batched). Each linear is still probed once here (`RowExact`): batched
where B rows give the one-row results bit for bit, else row by row (an unpacked weight, a quantized kernel that
differs: each row through the one-row kernel; the weights then come from the cache for every row after the
first)."""

from __future__ import annotations

import torch
from torch import nn

from cohere_cli.model import Attention, Block, CohereForCausalLM, KVCache, SparseMoE
from cohere_cli.weights.layout import FusedAttention, FusedBlock, split_heads
from cohere_cli.weights.packed import batch_invariant, probe_rows


class RowExact:
    """Whether a module gives every row of a batch exactly what it gives that row alone; probed once per module
    with random rows (a different accumulation order shows as differing last bits in thousands of outputs)."""

    def __init__(self):
        self.known: dict[int, bool] = {}
        self.gen = torch.Generator().manual_seed(0)

    def __call__(self, lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """lin(x) for x (B, 1, K): batched where exact, else one row at a time."""
        if x.shape[0] == 1 or self.exact(lin, x):
            return lin(x)
        return torch.cat([lin(x[i : i + 1]) for i in range(x.shape[0])])

    def exact(self, lin: nn.Module, x: torch.Tensor) -> bool:
        ok = self.known.get(id(lin))
        if ok is None:
            first = torch.randn(1, 1, x.shape[-1], generator=self.gen).to(x.dtype).to(x.device)
            rows = probe_rows(lin(first).shape[-1])
            p = torch.randn(rows, 1, x.shape[-1], generator=self.gen).to(x.dtype).to(x.device)
            alone = torch.cat([lin(p[i : i + 1]) for i in range(rows)])
            ok = all(torch.equal(lin(p[:m]), alone[:m]) for m in (2, 3, rows))
            self.known[id(lin)] = ok
        return ok


class BatchForward:
    """decode(tokens, positions, caches) -> logits (B, V): model.forward(token, position, cache, last_only=True)
    for B sequences in one pass over the weights."""

    def __init__(self, model: CohereForCausalLM):
        batch_invariant(model)  # the served model: its one-row decode then gives what a batch gives
        self.model, self.lin = model, RowExact()

    @torch.inference_mode()
    def decode(self, tokens: list[int], positions: list[int], caches: list[KVCache]) -> torch.Tensor:
        m, B = self.model, len(tokens)
        dev = m.model.embed_tokens.weight.device
        x = m.model.embed_tokens(torch.tensor(tokens, dtype=torch.long, device=dev).view(B, 1))  # (B, 1, H)
        pos = [torch.tensor([p], device=dev) for p in positions]  # per row (1,), as model.forward's arange
        ropes = [m._rope(p, 1, x.dtype, dev) for p in positions]  # per row (1, 1, hd/2)
        masks = [{} for _ in range(B)]  # per row: its masks, shared by its layers of one kind as in model.forward
        for i, block in enumerate(m.model.layers):
            rows = _Rows(pos, ropes, [c.layers[i] for c in caches], masks)
            x = self.block(block, x, rows)
        x = m.model.norm(x)
        return self.lin(m.lm_head, x)[:, 0].float() * m.config.logit_scale  # (B, V)

    def block(self, block: Block, x: torch.Tensor, rows: "_Rows") -> torch.Tensor:
        """One block for B rows (B, 1, H), following the block's own single-token route."""
        if isinstance(block, FusedBlock):
            if block.native is not None:
                return self.native_block(block, x, rows)
            h = block.input_layernorm(x)
            qkv, gate_up = self.lin(block.in_proj, h).split(block.split, dim=-1)  # (B, 1, Q), (B, 1, 2I)
            a = block.self_attn
            mixed = torch.cat([a.mix(*split_heads(a, qkv[r : r + 1], rows.rope[r]), *rows.at(r)) for r in range(len(x))])
            g, u = gate_up.chunk(2, dim=-1)  # (B, 1, I) each
            return x + self.lin(a.o_proj, mixed) + self.mlp_down(block.mlp, g, u)
        h = block.input_layernorm(x)
        if isinstance(block.mlp, SparseMoE):  # routing is per token: each row alone (the one-row expert order)
            mlp = torch.cat([block.mlp(h[r : r + 1]) for r in range(len(x))])
        else:
            mlp = self.mlp(block.mlp, h)
        return x + self.attention(block.self_attn, h, rows) + mlp

    def native_block(self, block: FusedBlock, x: torch.Tensor, rows: "_Rows") -> torch.Tensor:
        """kernels.DecodeOps.step for B rows: its norm, attention and activation per row (one-row kernels),
        the matmuls batched. A row whose kernel declines (before writing anything) takes the block's own route."""
        ops, a, norm = block.native, block.self_attn, block.input_layernorm
        hs = [ops.norm(x[r : r + 1], norm.weight, norm.eps) for r in range(len(x))]
        if any(h is None for h in hs):
            return torch.cat([block(x[r : r + 1], *rows.full(r)) for r in range(len(x))])
        qkv, gate_up = self.lin(block.in_proj, torch.cat(hs)).split(block.split, dim=-1)  # (B, 1, Q), (B, 1, 2I)
        outs, declined = [], []
        for r in range(len(x)):
            o = ops.attend_step(a, qkv[r : r + 1], rows.start(r), rows.rope[r], rows.cache[r])  # (nh*hd,)
            if o is None:
                declined.append(r)
                o = qkv.new_zeros(a.nh * a.hd)
            outs.append(o)
        act = torch.cat([ops.silu_mul(gate_up[r : r + 1]) for r in range(len(x))])  # (B, 1, I)
        out = x + self.lin(a.o_proj, torch.stack(outs)[:, None]) + self.lin(block.mlp.down_proj, act)
        for r in declined:
            out[r : r + 1] = block(x[r : r + 1], *rows.full(r))
        return out

    def attention(self, a: Attention, h: torch.Tensor, rows: "_Rows") -> torch.Tensor:
        """Attention (or FusedAttention) of B rows (B, 1, H) -> (B, 1, H): projections batched, attention per row."""
        B = len(h)
        if isinstance(a, FusedAttention):
            qkv = self.lin(a.qkv_proj, h)  # (B, 1, (nh+2nkv)*hd)
            outs = []
            for r in range(B):
                o = None
                if a.native is not None:
                    o = a.native.attend_step(a, qkv[r : r + 1], rows.start(r), rows.rope[r], rows.cache[r])
                outs.append(o.view(1, 1, -1) if o is not None else
                            a.mix(*split_heads(a, qkv[r : r + 1], rows.rope[r]), *rows.at(r)))
            return self.lin(a.o_proj, torch.cat(outs))
        q = self.lin(a.q_proj, h).view(B, 1, a.nh, a.hd)  # (B, 1, nh, hd)
        k = self.lin(a.k_proj, h).view(B, 1, a.nkv, a.hd)  # (B, 1, nkv, hd)
        v = self.lin(a.v_proj, h).view(B, 1, a.nkv, a.hd)
        mixed = torch.cat([a.mix(*a.position(q[r : r + 1], k[r : r + 1], rows.rope[r]), v[r : r + 1], *rows.at(r))
                           for r in range(B)])
        return self.lin(a.o_proj, mixed)

    def mlp(self, mlp: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if hasattr(mlp, "gate_up_proj"):  # layout.FusedMLP
            g, u = self.lin(mlp.gate_up_proj, h).chunk(2, dim=-1)
        else:
            g, u = self.lin(mlp.gate_proj, h), self.lin(mlp.up_proj, h)
        return self.mlp_down(mlp, g, u)

    def mlp_down(self, mlp: nn.Module, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.lin(mlp.down_proj, torch.nn.functional.silu(g) * u)  # MLP.down, its linear through RowExact


class _Rows:
    """Each row's position, rotary, cache layer and mask dict for one layer."""

    def __init__(self, pos, rope, cache, masks):
        self.pos, self.rope, self.cache, self.masks = pos, rope, cache, masks

    def start(self, r: int) -> int:
        return int(self.pos[r][0])

    def at(self, r: int):
        """The arguments after q, k, v of Attention.mix for row r."""
        return self.pos[r], self.cache[r], self.masks[r]

    def full(self, r: int):
        """The arguments after x of Block.forward for row r."""
        return self.pos[r], self.rope[r], self.cache[r], self.masks[r]
