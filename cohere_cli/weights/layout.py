"""The inference layout of the model core on top of its architecture (model.py holds the architecture only):

- fuse: the input projections that read the same input become one module, so decode runs one matmul (one pass
  over the weights, one call) instead of several: q/k/v/gate/up of the parallel block as `in_proj` (or q/k/v as
  `qkv_proj` and gate/up as `gate_up_proj` where the types differ, e.g. a bias on q/k/v only). The parts' weights
  become views of the fused one: memory, module names and state_dict keys stay the checkpoint's. The fused modules
  run through subclasses of model.py's (FusedBlock, FusedAttention, FusedMLP: the instance's class is swapped),
  which reuse its pieces, so model.py keeps one route per module.
- pack: on CPU every float linear's weight reordered once into oneDNN's blocked layout, a bf16 one's decode then
  through a native kernel on that same buffer (weights/packed.py);
- the native decode step: bf16 on CPU, each block's one-token step through weights/kernels' DecodeOps.

checkpoint.load_model applies them (inference_layout); bench/quality.py fuses each block it streams."""

from __future__ import annotations

import torch
from torch import nn

from cohere_cli.model import (MLP, Attention, Block, CohereForCausalLM, Decoder, LayerNorm, Linear, SparseMoE,
                              apply_rope)
from cohere_cli.weights.coded import CodedLinear, code_linear, coded_head
from cohere_cli.weights.packed import pack_linear, packable


def cat_linears(parts: list[Linear]) -> Linear | None:
    """One Linear computing the outputs of `parts` (same input) side by side; the parts' weights become views
    of its weight, so memory, module names and state_dict keys stay the checkpoint's."""
    if len({p.bias is None for p in parts}) > 1:
        return None
    w = torch.cat([p.weight.detach() for p in parts])  # (sum of out, in)
    b = torch.cat([p.bias.detach() for p in parts]) if parts[0].bias is not None else None
    with torch.device("meta"):
        fused = Linear(w.shape[1], w.shape[0], bias=b is not None)
    fused.weight = nn.Parameter(w, requires_grad=False)
    if b is not None:
        fused.bias = nn.Parameter(b, requires_grad=False)
    o = 0
    for p in parts:
        n = p.weight.shape[0]
        p.weight = nn.Parameter(w[o : o + n], requires_grad=False)
        if b is not None:
            p.bias = nn.Parameter(b[o : o + n], requires_grad=False)
        o += n
    return fused


def fuse_rows(parts: list[nn.Module]) -> nn.Module | None:
    """One module computing the outputs of `parts` (linears reading the same input) concatenated: cat_linears for
    float ones, their type's `cat` for the bitsandbytes modules of weights/qlinear.py. None where the types differ
    or cannot."""
    kind = type(parts[0])
    if any(type(p) is not kind for p in parts):
        return None
    if kind is Linear:
        return cat_linears(parts)
    return kind.cat(parts) if hasattr(kind, "cat") else None


def pack_linears(fused: nn.Module | None, parts: list[nn.Module], others: list[nn.Module]) -> None:
    """Pack every float Linear forward runs: the fused module (or, where fusing failed, its parts themselves)
    and the linears beside it. Once a fused weight is packed it is the only copy: the parts' views of the plain
    matrix are dropped (forward never reads them again)."""
    packed = [lin for lin in ([fused] if fused is not None else parts) + others if type(lin) is Linear]
    for lin in packed:
        pack_linear(lin)
        code_linear(lin)  # bf16 in 12 bits where the CPU has the kernel (weights/coded.py)
    if isinstance(fused, CodedLinear) or (isinstance(fused, Linear) and fused.weight.is_mkldnn):
        for p in parts:
            p.weight = p.bias = None


def inputs(block: Block) -> list[nn.Module]:
    """The block's five input projections, in in_proj's order: q, k, v, gate, up."""
    a, m = block.self_attn, block.mlp
    return [a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj]


def split_heads(a: Attention, qkv: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v from fused projections (B, T, (nh+2nkv)*hd), positioned as Attention.position does."""
    qkv = qkv.unflatten(-1, (a.nh + 2 * a.nkv, a.hd))  # (B, T, nh+2nkv, hd)
    q, k, v = qkv.split((a.nh, a.nkv, a.nkv), dim=2)  # (B, T, nh|nkv|nkv, hd)
    if a.use_rope and not hasattr(a, "q_norm"):  # q and k adjacent: rotate both in one call
        q, k = apply_rope(qkv[:, :, : a.nh + a.nkv], rope).split((a.nh, a.nkv), dim=2)
        return q, k, v
    q, k = a.position(q, k, rope)
    return q, k, v


class FusedAttention(Attention):
    """Attention whose q/k/v are one module, `qkv_proj` (where the block's five projections could not fuse: a MoE
    block, or differing types); with `native` (DecodeOps) a one-token step with a cache attends natively."""

    native = None

    def forward(self, x, pos, rope, cache_layer=None, masks: dict | None = None):
        qkv = self.qkv_proj(x)  # (B, T, (nh+2nkv)*hd)
        if self.native is not None and x.numel() == x.shape[-1] and cache_layer is not None:  # decode
            o = self.native.attend_step(self, qkv, int(pos[0]), rope, cache_layer)  # None: declined, unwritten
            if o is not None:
                return self.o_proj(o.view(x.shape[:-1] + (-1,)))  # (1, 1, H)
        q, k, v = split_heads(self, qkv, rope)
        return self.attend(q, k, v, pos, cache_layer, masks)


class FusedMLP(MLP):
    """The MLP whose gate and up projections are one module, `gate_up_proj`."""

    def forward(self, x):
        g, u = self.gate_up_proj(x).chunk(2, dim=-1)  # (B, T, I) each
        return self.down(g, u)


class FusedBlock(Block):
    """The parallel block whose five input projections are one module, `in_proj`; with `native` (DecodeOps, set by
    use_decode_kernels) a one-token step with a cache runs through the native kernels instead."""

    native = None

    def forward(self, x, pos, rope, cache_layer=None, masks: dict | None = None):
        if self.native is not None and x.numel() == x.shape[-1] and cache_layer is not None:  # one token: decode
            out = self.native.step(self, x, int(pos[0]), rope, cache_layer)  # None: it declined, before writing
            if out is not None:
                return out
        h = self.input_layernorm(x)
        qkv, gate_up = self.in_proj(h).split(self.split, dim=-1)  # (B, T, (nh+2nkv)*hd), (B, T, 2I)
        q, k, v = split_heads(self.self_attn, qkv, rope)
        g, u = gate_up.chunk(2, dim=-1)  # (B, T, I) each
        return x + self.self_attn.attend(q, k, v, pos, cache_layer, masks) + self.mlp.down(g, u)


class FusedDecoder(Decoder):
    """The blocks of a model whose every block is a FusedBlock with `native` set (use_decode_kernels): a one-token
    step with a cache runs all of them through one native call (DecodeOps.block.layers) instead of one per block.
    Only while every block still is one, with these ops (a block given other ops, or none, or swapped for another
    module, runs as its module does), and not where a block has hooks (they would not run)."""

    native = None

    def forward(self, x, pos, rope, cache=None, masks: dict | None = None):
        ops = self.native
        if ops is not None and ops.block is not None and cache is not None and x.numel() == x.shape[-1] \
                and all(type(b) is FusedBlock and b.native is ops for b in self.layers) and not _hooked(self.layers):

            def run_one(i, h):  # a block that declined, as its module runs it
                return self.layers[i](h, pos, rope, cache.layers[i], masks)

            out = ops.block.layers(self, x, int(pos[0]), rope, cache, run_one)  # None: declined, nothing written
            if out is not None:
                return out
        return super().forward(x, pos, rope, cache, masks)


def _hooked(layers) -> bool:
    """Whether a forward hook (its own or a global one) would see a block run."""
    from torch.nn.modules import module as m

    return bool(m._global_forward_hooks or m._global_forward_pre_hooks) or any(
        b._forward_hooks or b._forward_pre_hooks for b in layers)


def mlps(block: Block) -> list[MLP]:
    """The SwiGLU MLPs of a block: its MLP, or a sparse layer's experts and shared experts."""
    m = block.mlp
    if isinstance(m, SparseMoE):
        return [*m.experts, *([m.shared_experts] if hasattr(m, "shared_experts") else [])]
    return [m]


def fuse_mlp(m: MLP) -> None:
    if not isinstance(m, FusedMLP):
        gate_up = fuse_rows([m.gate_proj, m.up_proj])
        if gate_up is not None:
            m.gate_up_proj = gate_up
            m.__class__ = FusedMLP


def bucket(n: int) -> int:
    """n rounded up to a size with at most 2 significant bits (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, ...): at most
    ~33% padding, and ~2 sizes per octave."""
    if n <= 4:
        return n
    top = 1 << (n.bit_length() - 1)  # the highest power of two <= n
    return top if n == top else top + top // 2 if n <= top + top // 2 else 2 * top


class BucketedMoE(SparseMoE):
    """The sparse MLP of the inference layout: each expert's rows padded to bucket(n). Why: oneDNN keeps a compiled
    primitive (~0.7 MB) for every new matmul shape, and an expert's row count in a prefill is whatever the router
    gave it: unpadded, the resident memory of the 0.85B North-shaped benchmark model grew 60-80 MB with every
    512-token prefill (1781 MB after load, 2162 MB after four); padded, the shapes repeat."""

    def run_expert(self, e: int, rows: torch.Tensor) -> torch.Tensor:
        n, m = rows.shape[0], bucket(rows.shape[0])
        if m == n:  # already a bucket size
            return self.experts[e](rows)
        padded = rows.new_zeros(m, rows.shape[1])  # (m, H), rows n.. are padding
        padded[:n] = rows
        return self.experts[e](padded)[:n]


def fuse_block(block: Block) -> Block:
    """The parallel block's five input projections as one module: decode reads them in one matmul call instead of
    five (or two, fused per branch, where the types differ). A sparse (MoE) block's router decides which MLPs run
    after the norm, so only its q/k/v fuse, and each expert's gate/up."""
    if isinstance(block, FusedBlock) or isinstance(block.self_attn, FusedAttention):
        return block
    a, m = block.self_attn, block.mlp
    if isinstance(m, SparseMoE):
        qkv = fuse_rows([a.q_proj, a.k_proj, a.v_proj])
        if qkv is not None:
            a.qkv_proj = qkv
            a.__class__ = FusedAttention
        for e in mlps(block):
            fuse_mlp(e)
        m.__class__ = BucketedMoE
        return block
    if isinstance(m, FusedMLP):
        return block
    parts = inputs(block)
    fused = fuse_rows(parts)
    if fused is not None:
        block.in_proj = fused
        block.split = (sum(p.out_features for p in parts[:3]), sum(p.out_features for p in parts[3:]))
        block.__class__ = FusedBlock
        return block
    qkv, gate_up = fuse_rows(parts[:3]), fuse_rows(parts[3:])
    if qkv is not None:
        a.qkv_proj = qkv
        a.__class__ = FusedAttention
    if gate_up is not None:
        m.gate_up_proj = gate_up
        m.__class__ = FusedMLP
    return block


def fuse(model: CohereForCausalLM) -> CohereForCausalLM:
    """Fused q/k/v and gate/up matmuls in every block (weights become views; nothing is copied twice)."""
    for layer in model.model.layers:
        fuse_block(layer)
    return model


HEAD_CHUNK_BYTES = 128 << 20  # the most of a float head packed in one piece (see HeadChunks)


class HeadChunks(nn.Module):
    """The output head as row chunks of at most HEAD_CHUNK_BYTES, each its own packed Linear, their logits side by
    side. Why: packing copies a weight, so packing a head in one piece holds the plain matrix and the packed one at
    once (a 256000 x 2048 bf16 head: 1 GB twice); chunk by chunk, each chunk's source pages given back as soon as
    it is packed (packed_head), loading peaks one chunk above the model. A head under the bound stays one Linear."""

    def __init__(self, parts: list[Linear]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.in_features, self.out_features = parts[0].in_features, sum(p.out_features for p in parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)  # (..., V)


def packed_head(w: torch.Tensor, release=None) -> nn.Module:
    """The head (vocab, hidden) weight `w` packed for oneDNN, by chunks of rows (HeadChunks) where it is large, or in
    bf16 where the CPU has the coded kernel, packed and coded chunk by chunk into one module (coded.coded_head);
    `release(start, end)` is called once rows start..end are packed (a mapped source gives their pages back)."""
    head = coded_head(w, release)  # bf16, where the CPU has the kernel: one coded module (weights/coded.py)
    if head is not None:
        return head
    rows = max(1, HEAD_CHUNK_BYTES // (w.shape[1] * w.element_size()))
    parts = []
    for r in range(0, w.shape[0], rows):
        part = w[r : r + rows]
        with torch.device("meta"):
            lin = Linear(part.shape[1], part.shape[0], bias=False)
        pack_linear(lin, part)
        parts.append(lin)
        if release is not None:
            release(r, r + part.shape[0])
    return parts[0] if len(parts) == 1 else HeadChunks(parts)


def pack_block(layer: Block) -> None:
    """Pack the float linears of one block, after fuse_block (idempotent: a packed weight stays as it is)."""
    a, m = layer.self_attn, layer.mlp
    if isinstance(layer, FusedBlock):
        pack_linears(layer.in_proj, inputs(layer), [a.o_proj, m.down_proj])
    else:
        pack_linears(getattr(a, "qkv_proj", None), [a.q_proj, a.k_proj, a.v_proj], [a.o_proj])
        for e in mlps(layer):
            pack_linears(getattr(e, "gate_up_proj", None), [e.gate_proj, e.up_proj], [e.down_proj])


def pack(model: CohereForCausalLM, embedding: torch.Tensor | None = None,
         head: nn.Module | None = None, release=None) -> CohereForCausalLM:
    """CPU decode layout, after fuse(): every float linear's weight reordered once for oneDNN (pack_weight;
    1.4-2.8x faster one-row matmuls; pack_block, which checkpoint.load_model runs on each block as soon as it is
    loaded). A tied head needs a packed copy of the embedding matrix, while the embedding lookup needs its plain
    rows: given `embedding`, the same matrix in memory the model does not own (a view of the checkpoint file,
    memory-mapped: Reader.mapped), the head is packed from it (packed_head, `release` giving each chunk's pages
    back) and the lookups then read the map, where only the rows of tokens actually seen become resident (an
    untied head is packed in the same chunks, `release` giving back its own pages where it is mapped). Without
    it a tied head stays on the embedding matrix (plain 3.4 ms against packed 1.2 ms for the 32000 x 1024 head of
    the 213M benchmark model, whose whole bf16 decode step takes ~13 ms). `head`: a module to run as the head
    instead (built by the caller from the head's weight, e.g. int8 for quantized models); the embedding then
    reads `embedding` in the same way."""
    for layer in model.model.layers:
        pack_block(layer)
    emb = model.model.embed_tokens
    tied = model.lm_head.weight is emb.weight if type(model.lm_head) is Linear else False
    if head is not None:
        model.lm_head = head
    elif type(model.lm_head) is not Linear:
        return model
    elif not tied:
        w = model.lm_head.weight
        if packable(w) and model.lm_head.bias is None:
            model.lm_head = packed_head(w.detach(), release)  # `release`: the head's own pages, where mapped
        else:
            pack_linears(None, [model.lm_head], [])
    elif embedding is not None and packable(emb.weight):
        model.lm_head = packed_head(embedding, release)  # the chunks' sources: the file's pages
    else:
        if getattr(emb.weight, "file_backed", False):  # the head reads every row of it, every step: resident
            emb.weight.file_backed = False
        return model
    if tied and embedding is not None:
        assert embedding.shape == emb.weight.shape and embedding.dtype == emb.weight.dtype
        emb.weight = nn.Parameter(embedding, requires_grad=False)
        emb.weight.file_backed = True  # not memory of the model's own (bench/child.module_bytes)
    return model


def use_decode_kernels(model: CohereForCausalLM, ops) -> CohereForCausalLM:
    """Run each block's decode step (one token, batch 1, with a cache, fused input projections) through `ops`
    (weights/kernels.decode_ops: DecodeOps.step, bf16 on CPU), or None to stop. Not for R+'s q/k norms, which sit
    between projection and rotary, nor for cohere2_moe's RMSNorm (the kernel's norm is Cohere's LayerNorm)."""
    for layer in model.model.layers:
        if isinstance(layer, FusedBlock):
            plain = type(layer.input_layernorm) is LayerNorm and not hasattr(layer.self_attn, "q_norm")
            layer.native = ops if plain else None
        elif isinstance(layer.self_attn, FusedAttention):  # a MoE block: its attention, whatever its norm
            layer.self_attn.native = None if hasattr(layer.self_attn, "q_norm") else ops
    every = all(isinstance(b, FusedBlock) and b.native is not None for b in model.model.layers)
    if every and type(model.model) is Decoder:
        model.model.__class__ = FusedDecoder
    if isinstance(model.model, FusedDecoder):
        model.model.native = ops if every else None
    return model
