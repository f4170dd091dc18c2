"""kernels/coded_row.c loaded: the lossless 12-bit form of a packed bf16 weight (each word's low byte, and its high
byte as a 4-bit code into the block's 15 most frequent high bytes, the rare others kept whole), its one-row product
and the way back to the packed buffer. weights/coded.py holds the linear that uses them."""

from __future__ import annotations

import ctypes as ct
import functools
import os
from dataclasses import dataclass
from typing import Callable

from cohere_cli.weights.kernels import AVX512_BF16, PACKED_BLOCK, _function, _library, cpu_contiguous

CODED = AVX512_BF16 | {"avx512vbmi", "avx512_vbmi2", "bmi2"}  # coded_row.c: vpermt2b, vpexpandw, pext
CODED_ENV = "COHERE_CLI_CODED_BF16"  # 0: packed bf16 weights stay 16-bit (packed.RowKernelLinear)
STEP_BYTES = 192  # per input pair of a block of 64 outputs: 128 low bytes, 64 bytes of high-byte codes
META = 3  # int64 per block: its table (16 bytes), the index of its first exception


@dataclass(frozen=True)
class Coded:
    """A packed bf16 weight in coded_row.c's form: body (uint8), meta (blocks, META) int64, exc (int16: the words
    kept whole), for an (n, k) weight whose packed buffer has k padded to kp."""

    body: object
    meta: object
    exc: object
    n: int
    k: int
    kp: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.body, self.meta, self.exc))


def buffers(blocks: int, kp: int):
    """An empty body (uint8: every block's steps, then every step's flag byte, as coded_row.c reads them) and meta
    for a weight of `blocks` blocks of 64 outputs and k padded to kp."""
    import torch

    body = torch.empty(blocks * (kp // 2) * (STEP_BYTES + 1), dtype=torch.uint8)
    return body, torch.empty(blocks, META, dtype=torch.int64)


def spans(body, blocks: int, kp: int, b0: int, b1: int):
    """The views of `body` (buffers) that blocks b0 .. b1-1 are coded into: (their steps, their flags)."""
    q, steps = kp // 2, blocks * (kp // 2) * STEP_BYTES
    return body[b0 * q * STEP_BYTES : b1 * q * STEP_BYTES], body[steps + b0 * q : steps + b1 * q]


@dataclass(frozen=True)
class CodedRow:
    plan: Callable
    encode: Callable
    gemv: Callable
    decode: Callable
    gemm: Callable

    def code(self, raw, n: int, k: int, kp: int) -> Coded | None:
        """The packed buffer `raw` (a flat int16 view of blocks x 64 x kp words: PackedRow.raw) coded, or None."""
        blocks = -(-n // PACKED_BLOCK)
        body, meta = buffers(blocks, kp)
        exc = self.code_into(raw, kp, *spans(body, blocks, kp, 0, blocks), meta)
        return None if exc is None else Coded(body, meta, exc, n, k, kp)

    def code_into(self, raw, kp: int, body, flags, meta):
        """Code the packed buffer `raw` (blocks x 64 x kp words, blocks = meta's rows) into body (its blocks' steps),
        flags (a byte per step) and meta: views of a weight's buffers (Coded), of its blocks from the first block of
        `raw` on. -> its exceptions (int16; meta[:, 2] counts them from 0), or None."""
        import torch

        blocks = meta.shape[0]
        if not (raw.numel() == blocks * PACKED_BLOCK * kp and cpu_contiguous(raw, torch.int16)
                and cpu_contiguous(body, torch.uint8) and body.numel() == blocks * (kp // 2) * STEP_BYTES
                and cpu_contiguous(flags, torch.uint8) and flags.numel() == blocks * (kp // 2)
                and cpu_contiguous(meta, torch.int64) and meta.shape == (blocks, META)):
            return None
        threads = torch.get_num_threads()
        counts = torch.empty(blocks, dtype=torch.int64)
        if self.plan(raw.data_ptr(), blocks, kp, threads, meta.data_ptr(), counts.data_ptr()):
            return None
        meta[:, 2] = counts.cumsum(0) - counts  # (blocks,): each block's first exception
        exc = torch.empty(int(counts.sum()), dtype=torch.int16)
        if self.encode(raw.data_ptr(), blocks, kp, threads, meta.data_ptr(), body.data_ptr(), flags.data_ptr(),
                       exc.data_ptr()):
            return None
        return exc

    def row(self, x, c: Coded):
        """x @ w.T as (n,) bf16 for one contiguous bf16 row x of k values, or None for an x it does not take."""
        import torch

        if not (cpu_contiguous(x, torch.bfloat16) and x.numel() == c.k):
            return None
        out = torch.empty(c.n, dtype=torch.bfloat16)
        fail = self.gemv(x.data_ptr(), c.body.data_ptr(), c.meta.data_ptr(), c.exc.data_ptr(), c.n, c.k, c.kp,
                         torch.get_num_threads(), out.data_ptr())
        return None if fail else out

    def rows(self, x, c: Coded):
        """x @ w.T as (rows, n) bf16 for contiguous bf16 rows x (rows, k), each row with row()'s bits, or None."""
        import torch

        if not (cpu_contiguous(x, torch.bfloat16) and x.dim() == 2 and x.shape[1] == c.k):
            return None
        out = torch.empty(x.shape[0], c.n, dtype=torch.bfloat16)
        fail = self.gemm(x.data_ptr(), x.shape[0], c.body.data_ptr(), c.meta.data_ptr(), c.exc.data_ptr(), c.n, c.k,
                         c.kp, torch.get_num_threads(), out.data_ptr())
        return None if fail else out

    def decode_into(self, c: Coded, raw) -> bool:
        """The packed buffer back into `raw` (PackedRow.raw of a packed weight of c's shape and layout)."""
        import torch

        blocks = c.meta.shape[0]
        if raw.numel() != blocks * PACKED_BLOCK * c.kp or not cpu_contiguous(raw, torch.int16):
            return False
        return not self.decode(c.body.data_ptr(), c.meta.data_ptr(), c.exc.data_ptr(), blocks, c.kp,
                               torch.get_num_threads(), raw.data_ptr())


@functools.cache
def coded_row() -> CodedRow | None:
    """coded_row.c's functions, or None where they are not available here (or COHERE_CLI_CODED_BF16=0)."""
    if os.environ.get(CODED_ENV, "1") == "0":
        return None
    lib = _library("coded_row.c", CODED)
    if lib is None:
        return None
    p, i, t = ct.c_void_p, ct.c_int64, ct.c_int
    return CodedRow(_function(lib.coded_plan, [p, i, i, t, p, p]), _function(lib.coded_encode, [p, i, i, t, p, p, p, p]),
                    _function(lib.gemv_coded_bf16, [p, p, p, p, i, i, i, t, p]),
                    _function(lib.coded_decode, [p, p, p, i, i, t, p]),
                    _function(lib.gemm_coded_bf16, [p, i, p, p, p, i, i, i, t, p]))
