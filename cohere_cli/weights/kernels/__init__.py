"""Native CPU kernels that torch and bitsandbytes do not have, compiled on first use.

- `int8_row()` is LLM.int8() for one activation row (a decode step) on AVX512-VNNI, int8_row.c: the same
  arithmetic as bitsandbytes' CPU path bit for bit, but one C call instead of ~9 torch ops (~30 us of overhead per
  call on the benchmark model's shapes, 3 calls per layer plus the head).
- `gemv_4bit_row()` is one bf16 row times a bitsandbytes 4-bit (nf4/fp4) weight in bitsandbytes' CPU layout on
  AVX512-BF16, nf4_row.c: 10-20% faster than bitsandbytes' own kernel at one row, which its instruction count
  bounds (decode of 4-bit models).
- `packed_row()` is one bf16 row times a bf16 weight in oneDNN's packed layout (packed.pack_weight) on AVX512-BF16,
  packed_row.c: the decode matmuls of bf16 models, 1.2-1.8x faster than oneDNN's one-row kernel on the same buffer
  (prefill keeps oneDNN's kernels on it: one copy of every weight). `packed_row_layout()` checks, for each packed
  weight, that the buffer holds it in the layout the kernel reads (in full for the first weight of each shape).
- `coded.coded_row()` (kernels/coded.py, coded_row.c) stores such a packed bf16 weight in 12 bits per weight without
  losing a bit (each word's low byte, its high byte as a 4-bit code into the block's 15 most frequent ones, the rare
  others kept whole) and multiplies one row by it with packed_row's bits: a decode step reads 0.75 of the bytes
  (weights/coded.py), on AVX512-BF16 with VBMI and VBMI2.
- `decode_ops()` is the rest of a bf16 decode step of a block besides its matmuls, decode.c: the LayerNorm, the
  attention after the q/k/v projection (rotary, cache write, grouped-query attention over the cache) and the
  SwiGLU activation, one call each instead of F.scaled_dot_product_attention and ~25 small ops
  (layout.FusedBlock.native, set by weights/layout.py).

Each is built once per machine with the system C compiler into the store's `kernels/` folder (~1 s: one small C
file and bf16.h, no torch headers) and loaded with ctypes; their OpenMP is torch's (libgomp.so.1 is already
loaded when they are). Where one cannot be built or run (no compiler, no AVX-512 extension it needs,
COHERE_CLI_NATIVE=0) the callers keep their torch path: int8_row gives the same results, gemv_4bit_row, packed_row
and decode_ops the same up to float32 rounding.
"""

from __future__ import annotations

import ctypes as ct
import functools
import math
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).parent
FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC"]  # no FMA contraction: bitsandbytes' roundings
ENV = "COHERE_CLI_NATIVE"  # 0: never build or load native kernels
AVX512_BF16 = {"avx512_bf16", "avx512bw", "avx512dq", "avx512vl"}  # what nf4_row.c and decode.c are compiled for
INT8_ROW = {"avx512_vnni", "avx512bw", "avx512vl"}  # int8_row.c


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


@functools.cache
def int8_row():
    """The C function llm_int8_row_bf16 (see int8_row.c), or None where it is not available here."""
    lib = _library("int8_row.c", INT8_ROW)
    p, i = ct.c_void_p, ct.c_int64
    return None if lib is None else _function(lib.llm_int8_row_bf16, [p, i, p, p, p, p, p, i, ct.c_float])


@functools.cache
def int8_dequant():
    """The C function int8_dequant_bf16 (see int8_row.c): bitsandbytes' int8_mm_dequant into bf16, or None."""
    lib = _library("int8_row.c", INT8_ROW)
    p, i = ct.c_void_p, ct.c_int64
    return None if lib is None else _function(lib.int8_dequant_bf16, [p, i, i, p, p, p, p])


@functools.cache
def gemv_4bit_row():
    """The C function gemv_4bit_row_bf16 (see nf4_row.c): (x, packed, absmax_t, code, n, k, blocksize, out) -> 0,
    or 1 for a shape it does not take; None where it is not available here."""
    lib = _library("nf4_row.c", AVX512_BF16)
    p, i = ct.c_void_p, ct.c_int64
    return None if lib is None else _function(lib.gemv_4bit_row_bf16, [p, p, p, p, i, i, i, p])


PACKED_BLOCK = 64  # outputs per block of oneDNN's packed bf16 layout, as packed_row.c reads it


@functools.cache
def packed_row():
    """A PackedRow for kernels/packed_row.c, or None where it is not available here."""
    lib = _library("packed_row.c", AVX512_BF16)
    if lib is None:
        return None
    import torch

    try:  # oneDNN's raw buffer: the ops inductor uses for packed weights
        data_ptr, nbytes = torch.ops.mkldnn.data_ptr, torch.ops.mkldnn._nbytes
    except (AttributeError, RuntimeError):
        return None
    p, i = ct.c_void_p, ct.c_int64
    return PackedRow(_function(lib.gemv_packed_bf16, [p, p, i, i, i, ct.c_int, p]), data_ptr, nbytes)


@dataclass(frozen=True)
class PackedRow:
    """packed_row.c's one-row product on oneDNN's packed bf16 buffers, and the raw view of such a buffer."""

    fn: Callable
    data_ptr: Callable  # packed weight -> the address of oneDNN's buffer
    nbytes: Callable  # packed weight -> its size

    def __call__(self, x, ptr: int, n: int, k: int, kp: int):
        """x @ w.T as (n,) bf16 for one contiguous bf16 row `x` of k values and the (n, k) weight whose packed
        buffer is at `ptr` (data_ptr of a weight packed_row_layout confirmed, kp its padded k); None for an `x` it
        does not take. The caller keeps the weight alive and checks it is the one `ptr` came from."""
        import torch

        if not (cpu_contiguous(x, torch.bfloat16) and x.numel() == k):
            return None
        out = torch.empty(n, dtype=torch.bfloat16)
        return None if self.fn(x.data_ptr(), ptr, n, k, kp, torch.get_num_threads(), out.data_ptr()) else out

    def raw(self, packed):
        """The bytes of oneDNN's buffer of `packed` as a flat int16 tensor (valid while `packed` lives)."""
        import torch

        size = self.nbytes(packed)
        return torch.frombuffer((ct.c_char * size).from_address(self.data_ptr(packed)), dtype=torch.int16)


ROWS_CHECKED = 4096  # rows compared per step by packed_row_layout (a transient copy of this many rows)
SAMPLE_EVERY = 16  # a weight of a shape already checked in full: its first, last and every 16th block compared
_CHECKED: set[tuple] = set()  # (n, k, kp, threads) whose layout a weight confirmed in full in this process


def packed_row_layout(w, packed) -> int | None:
    """kp (k padded) where oneDNN's buffer of `packed` holds the bf16 (n, k) weight `w` exactly in the layout
    packed_row.c reads (blocks of 64 outputs, each [kp/2][64][2], zero padding), else None (then the kernel is not
    used for it). oneDNN picks its layout by machine and shape, and a wrong guess would compute garbage, so the
    first weight of each shape is compared in full (in steps of ROWS_CHECKED rows), which takes about as long as
    packing it (0.66 s per GB on the dev machine); later weights of that shape packed at the same thread count,
    which oneDNN packs with the same primitive, in samples (the first, the last and every SAMPLE_EVERY-th block of 64 rows)."""
    import torch

    row = packed_row()
    n, k = w.shape if w.dim() == 2 else (0, 0)
    if row is None or n == 0 or w.dtype != torch.bfloat16 or not packed.is_mkldnn or packed.shape != w.shape \
            or packed.dtype != torch.bfloat16:
        return None
    raw = row.raw(packed)
    blocks = -(-n // PACKED_BLOCK)
    if raw.numel() % (blocks * PACKED_BLOCK):
        return None
    kp = raw.numel() // (blocks * PACKED_BLOCK)
    if kp < k or kp % 2:
        return None
    plain = w.view(torch.int16)
    key = (n, k, kp, torch.get_num_threads())  # oneDNN's layout follows the thread count too (more threads than
    if key in _CHECKED:  # blocks of 64 rows: another blocking); the packing ran at this count
        spans = [(b, b + 1) for b in sorted({0, blocks - 1, *range(0, blocks, SAMPLE_EVERY)})]
    else:
        step = ROWS_CHECKED // PACKED_BLOCK  # blocks per step
        spans = [(b, min(blocks, b + step)) for b in range(0, blocks, step)]
    for b0, b1 in spans:
        r0, r1 = b0 * PACKED_BLOCK, min(n, b1 * PACKED_BLOCK)
        nb = b1 - b0
        want = torch.zeros(nb * PACKED_BLOCK, kp, dtype=torch.int16)  # (rows padded, kp)
        want[: r1 - r0, :k] = plain[r0:r1]
        want = want.view(nb, PACKED_BLOCK, kp // 2, 2).transpose(1, 2)  # (blocks, kp/2, 64, 2): the packed order
        got = raw[r0 * kp : (r0 + nb * PACKED_BLOCK) * kp].view(nb, kp // 2, PACKED_BLOCK, 2)
        if not torch.equal(got, want):
            return None
    _CHECKED.add(key)
    return kp


@dataclass(frozen=True)
class DecodeOps:
    """decode.c's functions for model.Block's native decode step (`step`, installed by weights/layout.py), each taking and returning torch tensors, or
    returning None to decline (the block then takes its torch path; nothing is written before declining).

    attend(qkv, rope, kc, vc, slot, S, slot_pos, qpos, window, nh, nkv, hd, scale) -> (nh*hd,): rotary on the new
        token's q and k (rope: its complex rotations, or None), k and v written at cache slot `slot` (and
        slot_pos[slot] = qpos for a ring), attention over slots [0, S) masked by position like Attention._sdpa.
    norm(x, weight, eps) -> x's shape: Cohere's LayerNorm of one row.
    silu_mul(gate_up) -> (..., I): silu(gate) * up, gate and up side by side in gate_up (..., 2I)."""

    attend: Callable
    norm: Callable
    silu_mul: Callable
    block: Callable | None = None  # kernels.block.BlockStep: the whole step in one call, tried first

    def step(self, block, x, start: int, rope, cache_layer):
        """layout.FusedBlock.forward for one token through these ops: norm, the fused input projection, then rotary +
        cache write + attention in one call and the SwiGLU activation in another, the two output projections and
        the residual. The same computation as the block's torch path, written to the cache the same way
        (Attention._update_cache); None where an op declines before anything is written (its dtype, its shapes)."""
        if self.block is not None:
            out = self.block(block, x, start, rope, cache_layer)
            if out is not None:
                return out
        a, norm = block.self_attn, block.input_layernorm
        h = self.norm(x, norm.weight, norm.eps)
        if h is None:
            return None
        qkv, gate_up = block.in_proj(h).split(block.split, dim=-1)  # (1, 1, (nh+2nkv)*hd), (1, 1, 2I)
        o = self.attend_step(a, qkv, start, rope, cache_layer)
        if o is None:
            return None
        act = self.silu_mul(gate_up)  # (1, 1, I); bf16 like qkv, so it never declines where attend did not
        return x + a.o_proj(o.view(x.shape[:-1] + (-1,))) + block.mlp.down_proj(act)

    def attend_step(self, a, qkv, start: int, rope, cache_layer):
        """Attention `a` of one token from its projected q/k/v (1, 1, (nh+2nkv)*hd): rotary, cache write and
        attention over the cache in one call -> (nh*hd,), before the output projection; None where it declines
        (nothing written). Also layout.FusedAttention's decode step (a MoE block's attention)."""
        kc, vc, slot_pos = cache_layer
        R = kc.shape[2]
        slot, S = (start % R, R) if slot_pos is not None else (start, start + 1)  # a ring: attend over all of it
        return self.attend(qkv, rope if a.use_rope else None, kc, vc, slot, S, slot_pos, start, a.window or 0, a.nh,
                           a.nkv, a.hd, 1.0 / math.sqrt(a.hd))  # (nh*hd,)


@functools.cache
def decode_ops() -> DecodeOps | None:
    """decode.c loaded (DecodeOps), or None where it is not available here."""
    lib = _library("decode.c", AVX512_BF16)
    if lib is None:
        return None
    import torch

    i, p, f = ct.c_int64, ct.c_void_p, ct.c_float
    attn = _function(lib.decode_attn_bf16, [p, p, p, p, i, i, i, p, i, i, i, i, i, f, i, p])
    ln = _function(lib.layer_norm_bf16, [p, p, i, i, f, p])
    act = _function(lib.silu_mul_bf16, [p, i, p])
    bf16 = torch.bfloat16

    def attend(qkv, rope, kc, vc, slot, S, slot_pos, qpos, window, nh, nkv, hd, scale):
        # everything the C function assumes, checked here: a mismatch would read or write out of bounds
        n = kc.shape[2] if kc.dim() == 4 else 0
        if not (all(cpu_contiguous(t, bf16) for t in (qkv, kc, vc)) and qkv.numel() == (nh + 2 * nkv) * hd
                and kc.shape == (1, nkv, n, hd) and vc.shape == kc.shape and 0 <= slot < n and 0 < S <= n):
            return None
        if rope is not None and not (cpu_contiguous(rope, torch.complex64) and rope.numel() == hd // 2):
            return None
        if slot_pos is not None and not (cpu_contiguous(slot_pos, torch.int64) and slot_pos.numel() == n):
            return None
        out = torch.empty(nh * hd, dtype=bf16)
        cs = None if rope is None else torch.view_as_real(rope).data_ptr()  # hd/2 (cos, sin) float32 pairs
        err = attn(qkv.data_ptr(), cs, kc.data_ptr(), vc.data_ptr(), kc.shape[2], slot, S,
                   None if slot_pos is None else slot_pos.data_ptr(), qpos, window, nh, nkv, hd, scale,
                   torch.get_num_threads(), out.data_ptr())
        return None if err else out

    def norm(x, weight, eps):  # one row
        if not (cpu_contiguous(x, bf16) and x.numel() == x.shape[-1] and weight.shape == x.shape[-1:]
                and (cpu_contiguous(weight, bf16) or cpu_contiguous(weight, torch.float32))):
            return None
        out = torch.empty_like(x)
        ln(x.data_ptr(), weight.data_ptr(), weight.dtype == bf16, x.shape[-1], eps, out.data_ptr())
        return out

    def silu_mul(gate_up):  # one row
        if not (cpu_contiguous(gate_up, bf16) and gate_up.numel() == gate_up.shape[-1] and gate_up.shape[-1] % 2 == 0):
            return None
        n = gate_up.shape[-1] // 2
        out = torch.empty(*gate_up.shape[:-1], n, dtype=bf16)
        act(gate_up.data_ptr(), n, out.data_ptr())
        return out

    from cohere_cli.weights.kernels.block import block_step

    return DecodeOps(attend, norm, silu_mul, block_step())


def cpu_contiguous(t, dtype) -> bool:
    """A contiguous CPU tensor of `dtype`: what every native kernel reads through a raw pointer."""
    return t.dtype == dtype and t.is_cpu and t.is_contiguous()


def _library(source: str, needs: set[str]):
    """kernels/`source` compiled and loaded (ctypes.CDLL), or None with COHERE_CLI_NATIVE=0, on a CPU without the
    extensions `needs` (/proc/cpuinfo names), or where it cannot be built."""
    if os.environ.get(ENV, "1") == "0" or not needs <= cpu_flags():
        return None
    return _load(HERE / source)


def _function(fn, argtypes: list, restype=ct.c_int):
    """A kernel's C function typed for ctypes: `argtypes` in, an int status out (0: done) unless told otherwise."""
    fn.restype, fn.argtypes = restype, argtypes
    return fn


def _sources(src: Path) -> list[Path]:
    """`src` and every file it includes from this folder (`#include "..."`, recursively: block_step.c includes the
    other kernels' sources), each once."""
    seen: list[Path] = []
    todo = [src]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.append(f)
        for line in f.read_text().splitlines():
            if line.startswith('#include "'):
                todo.append(f.parent / line.split('"')[1])
    return seen


@functools.cache
def _load(src: Path):
    """ctypes.CDLL of `src` compiled, building it first if this machine has no copy yet; None on any failure. The
    build key covers the source, the files it includes (bf16.h; block_step.c: the other kernels), the compiler and
    its flags. Once per source and process: int8_row.c serves two functions (int8_row, int8_dequant)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    text = b"".join(f.read_bytes() for f in _sources(src))
    key = hashlib.sha256(text + " ".join([cc, *FLAGS]).encode()).hexdigest()[:16]
    try:
        from cohere_cli.store import store_root

        folder = store_root() / "kernels"
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    so = folder / f"{src.stem}-{key}.so"
    if not so.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{src.stem}-", suffix=".so")
        os.close(fd)
        try:
            done = subprocess.run([cc, *FLAGS, str(src), "-o", tmp], capture_output=True, timeout=120)
            if done.returncode != 0:
                return None
            os.replace(tmp, so)  # whole or not at all: another process may be loading the same name
        except (OSError, subprocess.SubprocessError):
            return None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    try:
        return ct.CDLL(str(so))
    except OSError:
        return None
