"""A block's whole decode step in one native call (block_step.c): LayerNorm, the fused input projection, rotary +
cache write + attention, SwiGLU, the two output projections and the residual, for a parallel Cohere block whose
three matmuls each run one of our one-row kernels (packed bf16, LLM.int8(), 4-bit). kernels.DecodeOps.step tries
it first and keeps its per-op path (the same kernels, one call each) wherever this declines.

Why: the per-op path spent ~125 us a layer in Python around its kernels on the 2-core dev machine (~2 ms of a
7-16 ms decode step of the 213M benchmark model, the share growing as the matmuls get cheaper: 4-bit, int8).

All the blocks of a model go in one call too (BlockStep.layers, model_step_bf16: layout.FusedDecoder): the checks
of every block run back to back in Python, then one call runs the blocks in order. Why: even one call per block
left ~70 us a block in Python while decoding (~1.1 ms of a 7 ms step of the 213M benchmark model in 4-bit) where
the same code took ~25 us in a loop: between two blocks' kernels, which stream megabytes of weights, it ran from
cold caches. All the checks together: ~0.7 ms a step, ~13 us a block hot (8 of them the three row_spec()s).

Each linear describes its weight for the kernel (`row_spec()`: RowKernelLinear, CodedLinear, QuantLinear8bit,
QuantLinear4bit, from the pointers their own one-row paths bind and check); the description of a block is rebuilt
whenever one of those, or its norm weight, changes, and the model's list of them whenever one of those, or a
cache tensor, does."""

from __future__ import annotations

import ctypes as ct
import functools
import math

from cohere_cli.weights.kernels import AVX512_BF16, INT8_ROW, _function, _library, cpu_contiguous


class Mat(ct.Structure):
    """block_step.c's Mat: kind (1 packed bf16, 2 LLM.int8(), 3 4-bit, 4 coded bf16), n, k, weight (coded: body),
    kp (packed, coded: k padded; 4-bit: blocksize), a, b (int8: scb, rowsum; 4-bit: absmax_t, code; coded: meta,
    exceptions), threshold (int8)."""

    _fields_ = [("kind", ct.c_int64), ("n", ct.c_int64), ("k", ct.c_int64), ("w", ct.c_void_p), ("kp", ct.c_int64),
                ("a", ct.c_void_p), ("b", ct.c_void_p), ("threshold", ct.c_float)]


class BlockDesc(ct.Structure):
    """block_step.c's Block."""

    _fields_ = [("in_proj", Mat), ("o_proj", Mat), ("down", Mat), ("norm_w", ct.c_void_p), ("norm_bf16", ct.c_int64),
                ("eps", ct.c_float), ("scale", ct.c_float), ("hidden", ct.c_int64), ("nh", ct.c_int64),
                ("nkv", ct.c_int64), ("hd", ct.c_int64), ("inter", ct.c_int64), ("window", ct.c_int64)]


def row_spec(m) -> tuple | None:
    """A linear's one-row kernel as a Mat's fields, or None where it has none (or not now)."""
    spec = getattr(m, "row_spec", None)
    return spec() if spec is not None else None


class Layer(ct.Structure):
    """block_step.c's Layer (model_step_bf16): a block's description, its cache (kc, vc: (nkv, n, hd) bf16; slot_pos:
    a ring's positions or NULL) and whether it rotates."""

    _fields_ = [("b", ct.c_void_p), ("kc", ct.c_void_p), ("vc", ct.c_void_p), ("n", ct.c_int64), ("rope", ct.c_int64),
                ("slot_pos", ct.c_void_p)]


class BlockStep:
    """block_step.c's two entries: one block's step (`__call__`) and a run of blocks' in one call (`layers`)."""

    def __init__(self, fn, layers_fn=None):
        self.fn, self.layers_fn = fn, layers_fn

    @staticmethod
    def describe(block, hidden: int):
        """The block's description for block_step.c, (key, BlockDesc, its address, the norm weight it points
        into), kept on the block and rebuilt whenever one of its weights' descriptions (row_spec) or its norm
        weight changes; None where the block has no such description now."""
        import torch

        m = block._modules  # (the submodules straight from their dicts: this runs for every layer of every step)
        a, norm = m["self_attn"], m["input_layernorm"]
        specs = (row_spec(m["in_proj"]), row_spec(a._modules["o_proj"]), row_spec(m["mlp"]._modules["down_proj"]))
        if None in specs:
            return None
        w = norm.weight  # (read through its pointer on every call: an edit in place needs no new description)
        key = (specs, w.data_ptr(), w.dtype, norm.eps, a.window, block.split, hidden)
        plan = block.__dict__.get("_block_step")
        if plan is None or plan[0] != key:
            if not ((cpu_contiguous(w, torch.bfloat16) or cpu_contiguous(w, torch.float32)) and w.numel() == hidden
                    and len(block.split) == 2 and block.split[1] % 2 == 0):
                return None
            desc = BlockDesc(Mat(*specs[0]), Mat(*specs[1]), Mat(*specs[2]), w.data_ptr(), w.dtype == torch.bfloat16,
                             norm.eps, 1.0 / math.sqrt(a.hd), hidden, a.nh, a.nkv, a.hd, block.split[1] // 2,
                             a.window or 0)
            plan = (key, desc, ct.addressof(desc), w)  # the norm weight kept alive with its pointer
            block.__dict__["_block_step"] = plan
        return plan

    @staticmethod
    def cache_fits(a, kc, vc, slot_pos) -> bool:
        """Whether a layer's cache is what block_step.c reads: contiguous bf16 (1, nkv, n, hd), n > 0, and a ring's
        positions n int64."""
        import torch

        n = kc.shape[2] if kc.dim() == 4 else 0
        return (cpu_contiguous(kc, torch.bfloat16) and cpu_contiguous(vc, torch.bfloat16) and n > 0
                and kc.shape == (1, a.nkv, n, a.hd) and vc.shape == kc.shape
                and (slot_pos is None or (cpu_contiguous(slot_pos, torch.int64) and slot_pos.numel() == n)))

    @staticmethod
    def rope_fits(a, rope) -> bool:
        import torch

        return not a.use_rope or (cpu_contiguous(rope, torch.complex64) and rope.numel() == a.hd // 2)

    def __call__(self, block, x, start: int, rope, cache_layer):
        """layout.FusedBlock's one-token step through block_step.c -> x's shape, or None where it declines before
        writing anything (the caller's per-op path then runs the same kernels). A decline after the attention (an
        outlier for LLM.int8()) is finished here with the block's modules, as the per-op path would."""
        import torch

        H = x.shape[-1]
        plan = self.describe(block, H)
        a = block.self_attn
        kc, vc, slot_pos = cache_layer
        # everything the C function assumes that the description does not fix: a mismatch would read out of bounds
        if plan is None or not (cpu_contiguous(x, torch.bfloat16) and x.numel() == H
                                and self.cache_fits(a, kc, vc, slot_pos) and self.rope_fits(a, rope)):
            return None
        n = kc.shape[2]
        slot, S = (start % n, n) if slot_pos is not None else (start, start + 1)  # a ring: attend over all of it
        if not (0 <= slot < n and 0 < S <= n):
            return None
        att, act, ao = scratch([plan[1]])
        out = torch.empty_like(x)
        stage = self.fn(plan[2], x.data_ptr(), rope.data_ptr() if a.use_rope else None, kc.data_ptr(), vc.data_ptr(),
                        n, slot, S, None if slot_pos is None else slot_pos.data_ptr(), start,
                        torch.get_num_threads(), att.data_ptr(), act.data_ptr(), ao.data_ptr(), out.data_ptr())
        return out if stage == 0 else self.finish(block, x, stage, att, act, ao)

    @staticmethod
    def finish(block, x, stage: int, att, act, ao):
        """A block whose step declined at `stage`: None at 1 (nothing written: the per-op path runs the block),
        else the rest as the per-op path computes it, from the attention output and activation the kernel left (the
        cache already holds the token): an outlier LLM.int8() found in o_proj's or down_proj's input."""
        if stage == 1:
            return None
        if stage == 2:
            ao = block.self_attn.o_proj(att)
        return x + ao.view(x.shape) + block.mlp.down_proj(act)

    def layers(self, decoder, x, start: int, rope, cache, run_one):
        """layout.FusedDecoder's one-token step of all its blocks through model_step_bf16: the blocks' checks back
        to back, then one call for the run of them (block_step_bf16 each, the same bits as one call per block).
        A block that declines is finished (BlockStep.finish) or run by `run_one(i, x)` (its module), and the run
        goes on from the next. -> the last block's output, or None where some block has no description (nothing
        written: the caller runs the blocks one by one)."""
        import torch

        blocks, H = decoder.layers, x.shape[-1]
        if self.layers_fn is None or len(cache.layers) != len(blocks) or not (cpu_contiguous(x, torch.bfloat16)
                                                                             and x.numel() == H):
            return None
        plans, key = [], []
        for block, (kc, vc, slot_pos) in zip(blocks, cache.layers):
            plan = self.describe(block, H)
            a = block._modules["self_attn"]
            if plan is None or not (self.cache_fits(a, kc, vc, slot_pos) and self.rope_fits(a, rope)):
                return None
            plans.append(plan)
            key.append((id(plan), kc.data_ptr(), vc.data_ptr(), kc.shape[2], a.use_rope,
                        None if slot_pos is None else slot_pos.data_ptr()))
        key = tuple(key)
        run = decoder.__dict__.get("_model_step")
        if run is None or run[0] != key:  # (the plans are held with it: an id in its key is never another plan's)
            arr = (Layer * len(plans))(*(Layer(p[2], k[1], k[2], k[3], k[4], k[5]) for p, k in zip(plans, key)))
            run = decoder.__dict__["_model_step"] = (key, arr, plans)
        arr, cs = run[1], rope.data_ptr() if rope is not None else None
        threads, stage, i = torch.get_num_threads(), ct.c_int64(0), 0
        att, act, ao = scratch([p[1] for p in plans])
        while i < len(blocks):
            bufs = (torch.empty_like(x), torch.empty_like(x))
            done = self.layers_fn(ct.byref(arr, i * ct.sizeof(Layer)), len(blocks) - i, x.data_ptr(), cs, start,
                                  threads, att.data_ptr(), act.data_ptr(), ao.data_ptr(), bufs[0].data_ptr(),
                                  bufs[1].data_ptr(), ct.byref(stage))
            if done:
                x = bufs[(done - 1) % 2]  # the output of the last block done
            i += done
            if stage.value:
                d = plans[i][1]
                out = self.finish(blocks[i], x, stage.value, att[..., : d.nh * d.hd], act[..., : d.inter],
                                  ao[..., : d.hidden])
                x = run_one(i, x) if out is None else out
                i += 1
                if not (cpu_contiguous(x, torch.bfloat16) and x.numel() == H):  # (what the next call reads)
                    while i < len(blocks):
                        x, i = run_one(i, x), i + 1
        return x


def scratch(descs):
    """Where block_step.c leaves a block's attention output, activation and o_proj output, for any of `descs`:
    (1, 1, width) bf16 each, the widest of the blocks', views of one buffer."""
    import torch

    widths = [max(d.nh * d.hd for d in descs), max(d.inter for d in descs), max(d.hidden for d in descs)]
    return (t.view(1, 1, -1) for t in torch.empty(sum(widths), dtype=torch.bfloat16).split(widths))


@functools.cache
def block_step() -> BlockStep | None:
    """block_step.c loaded (BlockStep), or None where it is not available here (it runs all three matmul kernels:
    AVX512-BF16 and VNNI)."""
    lib = _library("block_step.c", AVX512_BF16 | INT8_ROW)
    if lib is None:
        return None
    p, i = ct.c_void_p, ct.c_int64
    return BlockStep(_function(lib.block_step_bf16, [p, p, p, p, p, i, i, i, p, i, i, p, p, p, p]),
                     _function(lib.model_step_bf16, [p, i, p, p, i, i, p, p, p, p, p, p], restype=i))
