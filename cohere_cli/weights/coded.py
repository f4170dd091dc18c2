"""Coded bf16 linears: a packed bf16 weight (packed.RowKernelLinear) stored in 12 bits per weight without losing a
bit (kernels/coded_row.c: each word's exponent as a 4-bit code into its block's 15 most frequent exponents, the
~1.5e-4 of words with another exponent kept whole), for CPUs with AVX512-BF16 and VBMI2.

Why: a bf16 decode step reads every weight once, and packed_row.c already reads them at the machine's memory
bandwidth, so decode speed is bytes per token: coded, a bf16 model reads and holds 0.75 of them. One-row products
(decode) run on the coded bytes and give packed_row.c's results bit for bit; products of several rows (prefill)
decode the weight back into a packed buffer shared by the model's linears of that shape (Scratch) and run
oneDNN on it as before, so they give the same bits as the uncoded model. COHERE_CLI_CODED_BF16=0 keeps the packed
bf16 weights as they are."""

from __future__ import annotations

import threading
import weakref

import torch
import torch.nn.functional as F

from cohere_cli.model import Linear, linear
from cohere_cli.weights.kernels import PACKED_BLOCK, packed_row
from cohere_cli.weights.kernels.coded import Coded, CodedRow, coded_row
from cohere_cli.weights.packed import RowKernelLinear, pack_linear


class Scratch:
    """A packed bf16 weight of one shape and layout (the packed weight of the first linear coded in that shape)
    whose buffer several-row products decode a coded weight into, one at a time."""

    def __init__(self, packed: torch.Tensor):
        self.weight, self.raw, self.lock = packed, packed_row().raw(packed), threading.Lock()


# (n, k, kp) -> the Scratch the coded linears of that shape share; an entry lives as long as a linear holds it
_SCRATCH: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def code_linear(lin: RowKernelLinear, scratch: bool = True) -> bool:
    """Turn `lin` into a CodedLinear in place (its packed weight replaced by the coded form); False where it stays
    as it is (no coded kernel here, a weight the packed kernel does not read, or one it would not make smaller).
    `scratch`: several-row products
    decode into the shared Scratch of the shape (kept for the model's life: worth it for the block linears that
    prefill runs every chunk), else into a transient plain weight (the head, whose prefill needs one row)."""
    cr, row = coded_row(), packed_row()
    if cr is None or type(lin) is not RowKernelLinear or not lin.row_ready(row):
        return False
    w = lin.weight
    n, k = w.shape
    c = cr.code(row.raw(w), n, k, lin.row_kp)
    if c is None or c.nbytes >= 2 * n * k:  # a weight small or padded enough to gain nothing
        return False
    s = None
    if scratch:
        s = _SCRATCH.get((n, k, c.kp))
        if s is None:
            s = _SCRATCH[(n, k, c.kp)] = Scratch(w)
    for name in ("row_kp", "row_of", "row_ptr"):
        lin.__dict__.pop(name, None)
    lin.weight = None
    for name, t in (("body", c.body), ("meta", c.meta), ("exc", c.exc)):
        lin.register_buffer(f"coded_{name}", t, persistent=False)  # counted as the module's memory (bench)
    lin.__dict__.update(coded=c, scratch=s, kernel=cr)
    lin.__class__ = CodedLinear
    return True


class CodedLinear(Linear):
    """A bias-free bf16 Linear whose packed weight is held coded (code_linear): one row (decode) runs
    kernels/coded_row.c on the coded bytes; more rows (prefill) decode the weight first."""

    coded: Coded
    scratch: Scratch | None
    kernel: CodedRow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:  # a weight assigned since: it is the weight
            return linear(x, self.weight, self.bias)
        return self.coded_forward(x) if self.bias is None else self.coded_forward(x) + self.bias

    def coded_forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == x.shape[-1]:
            out = self.kernel.row(x, self.coded)
            if out is not None:
                return out.view(*x.shape[:-1], -1)  # (..., N)
        s = self.scratch
        if s is None:
            return F.linear(x, self.plain())
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

    def uncode(self) -> None:
        """Back to a packed bf16 linear (packed.pack_linear on the decoded weight), e.g. for batch_invariant."""
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
