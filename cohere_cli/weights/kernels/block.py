"""A block's whole decode step in one native call (block_step.c): LayerNorm, the fused input projection, rotary +
cache write + attention, SwiGLU, the two output projections and the residual, for a parallel Cohere block whose
three matmuls each run one of our one-row kernels (packed bf16, LLM.int8(), 4-bit). kernels.DecodeOps.step tries
it first and keeps its per-op path (the same kernels, one call each) wherever this declines.

Why: the per-op path spent ~125 us a layer in Python around its kernels on the 2-core dev machine (~2 ms of a
7-16 ms decode step of the 213M benchmark model, the share growing as the matmuls get cheaper: 4-bit, int8).

Each linear describes its weight for the kernel (`row_spec()`: RowKernelLinear, CodedLinear, QuantLinear8bit, QuantLinear4bit,
from the pointers their own one-row paths bind and check); the description of a block is rebuilt whenever one of
those, or its norm weight, changes."""

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


class BlockStep:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, block, x, start: int, rope, cache_layer):
        """layout.FusedBlock's one-token step through block_step.c -> x's shape, or None where it declines before
        writing anything (the caller's per-op path then runs the same kernels). A decline after the attention (an
        outlier for LLM.int8()) is finished here with the block's modules, as the per-op path would."""
        import torch

        a, norm = block.self_attn, block.input_layernorm
        specs = (row_spec(block.in_proj), row_spec(a.o_proj), row_spec(block.mlp.down_proj))
        if None in specs:
            return None
        w = norm.weight  # (read through its pointer on every call: an edit in place needs no new description)
        key = (specs, w.data_ptr(), w.dtype, norm.eps, a.window, block.split)
        plan = block.__dict__.get("_block_step")
        if plan is None or plan[0] != key:
            H = x.shape[-1]
            if not ((cpu_contiguous(w, torch.bfloat16) or cpu_contiguous(w, torch.float32)) and w.numel() == H
                    and len(block.split) == 2 and block.split[1] % 2 == 0):
                return None
            desc = BlockDesc(Mat(*specs[0]), Mat(*specs[1]), Mat(*specs[2]), w.data_ptr(), w.dtype == torch.bfloat16,
                             norm.eps, 1.0 / math.sqrt(a.hd), H, a.nh, a.nkv, a.hd, block.split[1] // 2, a.window or 0)
            plan = (key, desc, ct.byref(desc), w)  # the norm weight kept alive with its pointer
            block.__dict__["_block_step"] = plan
        kc, vc, slot_pos = cache_layer
        n = kc.shape[2] if kc.dim() == 4 else 0
        # everything the C function assumes that the description does not fix: a mismatch would read out of bounds
        if not (cpu_contiguous(x, torch.bfloat16) and x.numel() == plan[1].hidden and cpu_contiguous(kc, torch.bfloat16)
                and cpu_contiguous(vc, torch.bfloat16) and kc.shape == (1, a.nkv, n, a.hd) and vc.shape == kc.shape
                and n > 0):
            return None
        cs = None
        if a.use_rope:
            if not (cpu_contiguous(rope, torch.complex64) and rope.numel() == a.hd // 2):
                return None
            cs = rope.data_ptr()  # hd/2 (cos, sin) float32 pairs
        if slot_pos is not None and not (cpu_contiguous(slot_pos, torch.int64) and slot_pos.numel() == n):
            return None
        slot, S = (start % n, n) if slot_pos is not None else (start, start + 1)  # a ring: attend over all of it
        if not (0 <= slot < n and 0 < S <= n):
            return None
        d = plan[1]
        att, act, ao = (torch.empty(1, 1, m, dtype=torch.bfloat16) for m in (d.nh * d.hd, d.inter, d.hidden))
        out = torch.empty_like(x)
        stage = self.fn(plan[2], x.data_ptr(), cs, kc.data_ptr(), vc.data_ptr(), n, slot, S,
                        None if slot_pos is None else slot_pos.data_ptr(), start, torch.get_num_threads(),
                        att.data_ptr(), act.data_ptr(), ao.data_ptr(), out.data_ptr())
        if stage == 0:
            return out
        if stage == 1:
            return None  # nothing written: the per-op path runs the block
        # a late decline (LLM.int8() found an outlier in o_proj's or down_proj's input): the rest as the per-op path
        # computes it, from the attention output and activation the kernel left (the cache already holds the token)
        if stage == 2:
            ao = a.o_proj(att)
        return x + ao + block.mlp.down_proj(act)


@functools.cache
def block_step() -> BlockStep | None:
    """block_step.c loaded (BlockStep), or None where it is not available here (it runs all three matmul kernels:
    AVX512-BF16 and VNNI)."""
    lib = _library("block_step.c", AVX512_BF16 | INT8_ROW)
    if lib is None:
        return None
    p, i = ct.c_void_p, ct.c_int64
    return BlockStep(_function(lib.block_step_bf16, [p, p, p, p, p, i, i, i, p, i, i, p, p, p, p]))
