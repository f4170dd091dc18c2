"""Packed linears: on CPU every float linear's weight reordered once into oneDNN's blocked layout (pack_weight); a
bf16 one's one-row product (decode) then runs through a native kernel reading that same buffer (RowKernelLinear),
prefill keeps oneDNN's kernels on it. For serving, batch_invariant makes one-row products give the bits of a batch.
weights/layout.py applies these to the fused model (pack)."""

from __future__ import annotations

import weakref

import torch
from torch import nn

from cohere_cli.model import Linear, linear
from cohere_cli.weights.kernels import packed_row, packed_row_layout


def pack_weight(w: torch.Tensor) -> torch.Tensor:
    """A CPU weight reordered once into oneDNN's blocked layout for one-row (decode) matmuls, or `w` itself where
    oneDNN cannot take it. Why (benchmarks/gemv_paths.py, the 213M model's shapes, 2 threads, weights from
    memory): one-row bf16 F.linear reads a row-major weight at 18-24 GB/s, the packed weight at 29-53 GB/s (the
    32000x1024 head: 3.4 -> 1.2 ms); fp32 19-22 -> 25-40 GB/s; 512-row prefill matmuls are 5-20% faster too; bf16
    results are bit-identical to F.linear."""
    return torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), 1) if packable(w) else w


def pack_linear(lin: Linear, w: torch.Tensor | None = None) -> None:
    """`lin`'s weight (or `w`, its plain matrix given separately) packed (pack_weight); a bf16 one then runs its
    one-row products through kernels.packed_row (RowKernelLinear), where the packed buffer is in the layout it reads."""
    w = lin.weight.detach() if w is None else w
    packed = pack_weight(w)
    lin.weight = nn.Parameter(packed, requires_grad=False)
    if packed is not w and lin.bias is None and type(lin) is Linear:
        kp = packed_row_layout(w, packed)
        if kp is not None:
            # plain attributes (no new state_dict key); a weak reference: a weight assigned since is not kept alive
            lin.__dict__.update(row_kp=kp, row_of=weakref.ref(lin.weight), row_ptr=packed_row().data_ptr(packed))
            lin.__class__ = RowKernelLinear


class RowKernelLinear(Linear):
    """A Linear with a packed bf16 weight whose one-row product (decode) runs through kernels.packed_row on the
    same buffer oneDNN reads for several rows. Why: oneDNN's one-row kernel reads packed bf16 weights at 21-27 GB/s
    on the 2-core machine, the native loop at the machine's read bandwidth (1.2-1.8x faster per matmul,
    benchmarks/gemv_paths.py --model 1.2b). Its sums run in another order than oneDNN's: equal to float32 rounding,
    not bit for bit (batch_invariant turns it back into a Linear for serving)."""

    row_kp: int  # the packed buffer's padded k (kernels.packed_row_layout)
    row_of: weakref.ref  # to the weight it was checked for (a weight assigned since runs oneDNN)
    row_ptr: int  # the address of row_of's packed buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row = packed_row()
        if x.numel() == x.shape[-1] and self.row_ready(row):
            out = row(x, self.row_ptr, *self.weight.shape, self.row_kp)
            if out is not None:
                return out.view(*x.shape[:-1], -1)  # (..., N)
        return linear(x, self.weight, self.bias)

    def row_ready(self, row) -> bool:
        """Whether the kernel may run on the checked buffer: the weight is still the one checked, its data not
        replaced since, no bias assigned since."""
        w = self.weight
        return row is not None and w is self.row_of() and self.bias is None and w.is_mkldnn \
            and w.dtype == torch.bfloat16 and row.data_ptr(w) == self.row_ptr

    def row_spec(self) -> tuple | None:
        """The weight as kernels/block_step.c reads it (kernels.block.Mat's fields), or None: see row_ready."""
        if not self.row_ready(packed_row()):
            return None
        return (1, *self.weight.shape, self.row_ptr, self.row_kp, None, None, 0.0)


def packable(w: torch.Tensor) -> bool:
    """Whether pack_weight reorders `w`: plain CPU fp32, or bf16 where oneDNN has bf16 kernels (fp16 on CPU, never
    picked by --dtype auto, stays on F.linear)."""
    if w.device.type != "cpu" or w.is_mkldnn or not torch.backends.mkldnn.is_available():
        return False
    return w.dtype == torch.float32 or (w.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def batch_invariant(model: nn.Module) -> int:
    """Make every packed linear give a row the same bits alone as within any batch (TwoRowLinear where oneDNN's
    one-row kernel differs); the number switched. For `cohere serve` (engine/batch_forward.py), whose answers must not
    depend on who else is served. Not part of pack(): a second row costs single-stream decode up to 2x per linear in
    fp32 (every packed fp32 linear differs) and ~1.2x in bf16 where K > 1024, for an agreement only batching needs."""
    n = 0
    for m in model.modules():
        if hasattr(m, "uncode") and not m.rows_invariant():  # coded.CodedLinear running oneDNN for many rows (AMX)
            m.uncode()
        if type(m) is RowKernelLinear:  # its one-row sums differ from oneDNN's several-row ones
            m.__class__ = Linear
        if type(m) is Linear and m.weight is not None and m.weight.is_mkldnn and one_row_differs(m):
            m.__class__ = TwoRowLinear
            n += 1
    return n


class TwoRowLinear(Linear):
    """A Linear whose one-row product is computed as a product of two rows (the row twice, the first kept).
    Why: oneDNN multiplies one row (decode) with another accumulation order over K than two rows or more, for
    some shapes (torch 2.13: bf16 with K > 1024, e.g. the 213M model's down_proj, ~1 output in 4,000 differs in
    its last bit; fp32 always), while any two counts of rows >= 2 agree. `cohere serve` decodes several
    sequences in one product (engine/batch_forward.py), and a sequence must get the same logits batched as alone:
    with this, every row count gives the same bits, and a stream's tokens do not depend on who else is served.
    Installed by batch_invariant, for serving only (its cost is below)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[-1]:
            return linear(x, self.weight, self.bias)
        two = x.reshape(1, -1).expand(2, -1).contiguous()  # (2, K): the one row twice
        return linear(two, self.weight, self.bias)[:1].view(*x.shape[:-1], -1)  # (..., 1, N)


_ONE_ROW_DIFFERS: dict[tuple, bool] = {}  # per (weight shape, dtype, bias): oneDNN picks its kernel by shape
PROBE_OUTPUTS = 1 << 16  # outputs compared per probe: a K-order difference shows in ~16 of them (1 in 4,000)


def probe_rows(n_out: int) -> int:
    """Rows of an exactness probe of a product with `n_out` outputs per row: PROBE_OUTPUTS outputs, 2 to 64 rows
    (each a pass over the weight). 16 rows of 1,024 outputs missed a 1-in-4,000 difference in ~1 load of 20."""
    return min(max(2, -(-PROBE_OUTPUTS // n_out)), 64)


def one_row_differs(lin: Linear) -> bool:
    """Whether `lin` gives a row alone other bits than the same row within a product of several rows, where two
    rows (TwoRowLinear) give the bits of several. Probed once per shape with random rows (probe_rows)."""
    w, b = lin.weight, lin.bias
    key = (tuple(w.shape), w.dtype, b is not None)
    if key not in _ONE_ROW_DIFFERS:
        rows = probe_rows(w.shape[0])
        g = torch.Generator().manual_seed(0)
        p = torch.randn(rows, w.shape[1], generator=g).to(w.dtype)  # (rows, K)
        many = linear(p, w, b)  # (rows, N)
        alone = torch.cat([linear(p[i : i + 1], w, b) for i in range(rows)])
        twice = torch.cat([linear(p[i : i + 1].expand(2, -1).contiguous(), w, b)[:1] for i in range(rows)])
        _ONE_ROW_DIFFERS[key] = not torch.equal(alone, many) and torch.equal(twice, many) and \
            torch.equal(linear(p[:3], w, b), many[:3])
    return _ONE_ROW_DIFFERS[key]
