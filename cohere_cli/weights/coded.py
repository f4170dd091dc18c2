"""Coded bf16 linears: a packed bf16 weight (packed.RowKernelLinear) stored in 12 bits per weight without losing a
bit (kernels/coded_row.c: each word's low byte, its high byte as a 4-bit code into its block's 15 most frequent high
bytes, the ~1.5e-4 of words with another high byte kept whole), for CPUs with AVX512-BF16, VBMI and VBMI2.

Why: a bf16 decode step reads every weight once, and packed_row.c already reads them at the machine's memory
bandwidth, so decode speed is bytes per token: coded, a bf16 model reads and holds 0.75 of them.

Every product runs on the coded bytes, each row with the same bits whatever the number of rows (one row:
packed_row.c's bits; several rows: the same sums, each block decoded once per 4 rows, kernels/coded_row.c's
gemm_coded_bf16). On the 2-core AVX-512 machine that is faster than oneDNN on the 16-bit packed weight up to ~100
rows and within 5% of it at 512 (benchmarks/coded_rows.py). On CPUs with AMX, whose bf16 GEMM is several times
faster, products of more than AMX_ROWS rows decode the weight into a packed buffer shared by the model's coded
linears of that shape (Scratch) and run oneDNN on it. COHERE_CLI_CODED_BF16=0 keeps the packed 16-bit weights."""

from __future__ import annotations

import threading
import weakref

import torch
import torch.nn.functional as F

from cohere_cli.model import Linear, linear
from cohere_cli.weights.kernels import PACKED_BLOCK, cpu_flags, packed_row
from cohere_cli.weights.kernels.coded import Coded, CodedRow, buffers, coded_row, spans
from cohere_cli.weights.packed import RowKernelLinear, pack_linear


class Scratch:
    """A packed bf16 weight of one shape and layout (the packed weight of the first linear coded in that shape)
    whose buffer several-row products decode a coded weight into, one at a time."""

    def __init__(self, packed: torch.Tensor):
        self.weight, self.raw, self.lock = packed, packed_row().raw(packed), threading.Lock()


# (n, k, kp) -> the Scratch the coded linears of that shape share; an entry lives as long as a linear holds it
_SCRATCH: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
AMX_ROWS = 16  # with AMX: more rows than this run oneDNN on the decoded weight (see the module's docstring)


def uses_scratch() -> bool:
    """Whether products of many rows decode into a Scratch and run oneDNN (CPUs with AMX bf16), rather than run
    gemm_coded_bf16."""
    return "amx_bf16" in cpu_flags()


def code_linear(lin: RowKernelLinear) -> bool:
    """Turn `lin` into a CodedLinear in place (its packed weight replaced by the coded form); False where it stays
    as it is (no coded kernel here, a weight the packed kernel does not read, or one it would not make smaller). On
    CPUs with AMX, its products of many rows decode into the Scratch its shape shares (kept for the model's life:
    worth it for the block linears that prefill runs every chunk)."""
    cr, row = coded_row(), packed_row()
    if cr is None or type(lin) is not RowKernelLinear or not lin.row_ready(row):
        return False
    w = lin.weight
    n, k = w.shape
    c = cr.code(row.raw(w), n, k, lin.row_kp)
    if c is None or c.nbytes >= 2 * n * k:  # a weight small or padded enough to gain nothing
        return False
    s = None
    if uses_scratch():
        s = _SCRATCH.get((n, k, c.kp))
        if s is None:
            s = _SCRATCH[(n, k, c.kp)] = Scratch(w)
    for name in ("row_kp", "row_of", "row_ptr"):
        lin.__dict__.pop(name, None)
    _install(lin, c, s, cr)
    return True


def _install(lin: Linear, c: Coded, scratch: Scratch | None, kernel: CodedRow) -> None:
    """`lin` becomes the CodedLinear of `c` (no weight of its own)."""
    lin.weight = None
    for name, t in (("body", c.body), ("meta", c.meta), ("exc", c.exc)):
        lin.register_buffer(f"coded_{name}", t, persistent=False)  # counted as the module's memory (bench)
    lin.__dict__.update(coded=c, scratch=scratch, kernel=kernel)
    lin.__class__ = CodedLinear


HEAD_CHUNK_BYTES = 4 << 20  # the most of a head packed at once by coded_head (the source's pages, then the copy)


def coded_head(w: torch.Tensor, release=None) -> "CodedLinear | None":
    """The head (vocab, hidden) bf16 weight `w` packed and coded by chunks of rows into one CodedLinear, or None
    where the coded kernel is not here or a chunk is not packed in the layout it reads (the caller then packs it
    itself). `release(start, end)` is called once rows start..end are coded (a mapped source gives their pages back).
    Why chunks: packing copies the weight, so a head coded in one piece holds its source pages, the packed copy and
    the coded one at once (the 213M model's 65 MB head: +170 MB of peak RSS at load, more than its coded blocks
    saved); a chunk at a time, loading peaks one chunk above the model. Why one module: the chunks' codes are the
    whole weight's (blocks of 64 rows are coded each on its own), and one kernel call per step is cheaper than one
    per chunk."""
    cr, row = coded_row(), packed_row()
    if cr is None or row is None or w.dtype != torch.bfloat16 or w.dim() != 2:
        return None
    n, k = w.shape
    rows = max(1, HEAD_CHUNK_BYTES // (k * 2) // PACKED_BLOCK) * PACKED_BLOCK  # whole blocks per chunk
    body = meta = None
    kp = blocks = 0
    excs: list[torch.Tensor] = []
    for r in range(0, n, rows):
        part = w[r : r + rows]
        with torch.device("meta"):
            lin = Linear(k, part.shape[0], bias=False)
        pack_linear(lin, part)
        if type(lin) is not RowKernelLinear or not lin.row_ready(row) or (body is not None and lin.row_kp != kp):
            return None
        if body is None:
            kp, blocks = lin.row_kp, -(-n // PACKED_BLOCK)
            body, meta = buffers(blocks, kp)
        b0, b1 = r // PACKED_BLOCK, -(-(r + part.shape[0]) // PACKED_BLOCK)
        exc = cr.code_into(row.raw(lin.weight), kp, *spans(body, blocks, kp, b0, b1), meta[b0:b1])
        if exc is None:
            return None
        meta[b0:b1, 2] += sum(e.numel() for e in excs)  # exceptions of the chunks before
        excs.append(exc)
        del lin
        if release is not None:
            release(r, r + part.shape[0])
    with torch.device("meta"):
        head = Linear(k, n, bias=False)
    _install(head, Coded(body, meta, torch.cat(excs), n, k, kp), None, cr)
    return head


class CodedLinear(Linear):
    """A bf16 Linear whose packed weight is held coded (code_linear): its products run kernels/coded_row.c on the
    coded bytes, each row with the bits it has alone (with AMX, many rows run oneDNN on the decoded weight)."""

    coded: Coded
    scratch: Scratch | None
    kernel: CodedRow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:  # a weight assigned since: it is the weight
            return linear(x, self.weight, self.bias)
        return self.coded_forward(x) if self.bias is None else self.coded_forward(x) + self.bias

    def coded_forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        s = self.scratch
        if rows == 1:
            out = self.kernel.row(x, self.coded)
        elif s is None or rows <= AMX_ROWS:
            out = self.kernel.rows(x.reshape(rows, x.shape[-1]), self.coded) if rows else None  # (rows, N)
        else:
            out = None
        if out is not None:
            return out.view(*x.shape[:-1], -1)  # (..., N)
        if s is None:  # an input the kernels do not take (not bf16, not contiguous): the plain weight
            return F.linear(x, self.plain().to(x.dtype))
        with s.lock:
            if not self.kernel.decode_into(self.coded, s.raw):
                raise RuntimeError("a coded weight's scratch buffer no longer matches it")
            return linear(x, s.weight)

    def plain(self) -> torch.Tensor:
        """The (n, k) bf16 weight, decoded."""
        c = self.coded
        blocks = c.meta.shape[0]
        raw = torch.empty(blocks * PACKED_BLOCK * c.kp, dtype=torch.int16)
        if not self.kernel.decode_into(c, raw):
            raise RuntimeError("a coded weight could not be decoded")
        w = raw.view(blocks, c.kp // 2, PACKED_BLOCK, 2).transpose(1, 2)  # (blocks, 64, kp/2, 2): rows back together
        return w.reshape(blocks * PACKED_BLOCK, c.kp)[: c.n, : c.k].contiguous().view(torch.bfloat16)  # (n, k)

    def row_spec(self) -> tuple | None:
        """The weight as kernels/block_step.c reads it (kernels.block.Mat's fields: kind 4, coded), or None where a
        weight or bias was assigned since."""
        if self.weight is not None or self.bias is not None:
            return None
        c = self.coded
        return (4, c.n, c.k, c.body.data_ptr(), c.kp, c.meta.data_ptr(), c.exc.data_ptr(), 0.0)

    def rows_invariant(self) -> bool:
        """Whether every product gives each row the bits it has alone (no Scratch: the coded kernels at every row
        count), as `cohere serve` needs (packed.batch_invariant)."""
        return self.scratch is None

    def uncode(self) -> None:
        """Back to a packed bf16 linear (packed.pack_linear on the decoded weight): for batch_invariant where
        rows_invariant() does not hold."""
        w = self.plain() if self.weight is None else self.weight.detach()
        for name in ("coded_body", "coded_meta", "coded_exc"):
            delattr(self, name)
        for name in ("coded", "scratch", "kernel"):
            self.__dict__.pop(name, None)
        self.__class__ = Linear
        self.weight = torch.nn.Parameter(w, requires_grad=False)
        pack_linear(self)

    def extra_repr(self) -> str:
        c = self.coded
        return f"in_features={c.k}, out_features={c.n}, coded bf16 {8 * c.nbytes / (c.n * c.k):.2f} bits/weight"
