"""bitsandbytes-format linear layers for the model core, and the kernels they run on CPU.

`QuantLinear4bit` (nf4/fp4) and `QuantLinear8bit` (LLM.int8) hold a weight as `cohere quantize` and transformers
store it (cohere_cli/weights/quant.py builds them from those tensors) and pick a path per call shape (`forward`,
`kernel_max_rows`, `woq_max_rows`). Few rows (decode) read 4 or 8 bits per weight instead of 16: one row runs
a native kernel on the stored bytes (cohere_cli/weights/kernels: nf4_row.c on bitsandbytes' CPU layout, int8_row.c for
LLM.int8()) with its pointers bound once (`_bound`), or bitsandbytes' fused 4-bit kernel (its C function called
directly, `gemv_4bit_cpu`) and torch's int8 kernels where those do not build; a few rows take bitsandbytes' 4-bit
kernel or torch's weight-only int8 kernel. Many rows (prefill) either run bitsandbytes' kernels or dequantize the weight
once per call and run one bf16 GEMM, whichever is faster on this CPU (benchmarks/quant_paths.py, gemv_paths.py;
the numbers are in cohere_cli/weights/qpath.py). `cat` fuses modules that read the same input (layout.fuse_rows); `force_path` pins one path (tests,
benchmarks).

bitsandbytes' CPU plumbing (its import, the 4-bit kernel's layout and C function) is in cohere_cli/weights/bnb_cpu.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cohere_cli.weights import kernels
from cohere_cli.weights.bnb_cpu import (bnb, cpu_has_bnb_kernel, gemv_4bit_cpu, int8_scaled_mm, native_gemv_4bit,
                                        pack_for_cpu, unpack_from_cpu)
from cohere_cli.weights.qpath import (UNLIMITED, WOQ_MAX_ROWS, _bound, _f32, _PlanFree, cpu_has_int8_mm,
                                      kernel_max_rows)


class QuantLinear4bit(_PlanFree, nn.Module):
    """A bitsandbytes 4-bit linear layer for the model core (drop-in for nn.Linear in forward).

    On a CPU with AVX512-BF16 the weight lives in the fused kernel's layout ([n, k/2] bytes) with absmax in bf16 for
    the kernel and in fp32 for dequantization. forward(x) with at most `kernel_max_rows` rows runs the kernel
    (decode: reads half a byte per weight, 5x faster than bf16); more rows dequantize the whole weight once
    (bitsandbytes' kernel, after a byte shuffle back to the standard layout) and run one GEMM in the activations'
    dtype. kernel_max_rows is 16 on CPUs with AMX (there bf16 GEMM is ~10x faster than the kernel at 512 rows) and
    unlimited elsewhere (there the kernel is within 1.4x of bf16 GEMM at 512 rows and beats dequantize+GEMM).
    Without AVX512-BF16 (or on CUDA) the standard layout is kept and every call dequantizes (CPU) or goes through
    bitsandbytes' matmul_4bit (CUDA)."""

    bits = 4

    def __init__(self, in_features: int, out_features: int, data: torch.Tensor, absmax: torch.Tensor,
                 quant_type: str, blocksize: int, bias: torch.Tensor | None = None, cpu_layout: bool = False):
        """data: the packed 4-bit weight in the standard layout, or with cpu_layout already in the CPU kernel's
        (another module's buffer, see cat)."""
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.quant_type, self.blocksize = quant_type, blocksize
        n, k = out_features, in_features
        data = data.reshape(-1)
        if data.dtype != torch.uint8:  # bnb_4bit_quant_storage other than uint8: same bytes
            data = data.view(torch.uint8)
        self.cpu_kernel = (data.device.type == "cpu" and cpu_has_bnb_kernel() and n % 32 == 0 and k % 2 == 0
                           and k % blocksize == 0)
        self.register_buffer("absmax", absmax.float().contiguous(), persistent=False)  # (n*k/blocksize,)
        self.register_buffer("code", bnb().functional.get_4bit_type(quant_type, device=data.device),
                             persistent=False)
        if cpu_layout and not self.cpu_kernel:
            raise ValueError("4-bit data in the CPU kernel's layout, on a module that cannot run that kernel")
        if self.cpu_kernel:
            packed = data.view(n, k // 2) if cpu_layout else pack_for_cpu(data, n, k)
            self.register_buffer("packed", packed, persistent=False)  # (n, k/2)
            self.register_buffer("absmax_t", self.absmax.view(n, k // blocksize).t().to(torch.bfloat16).contiguous(),
                                 persistent=False)
        else:
            self.register_buffer("packed", data.view(-1, 1), persistent=False)  # standard layout
            self.absmax_t = None
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.kernel_max_rows = kernel_max_rows(4)  # per instance: force_path() and benchmarks change it

    @classmethod
    def from_stored(cls, tensors: dict[str, torch.Tensor], in_features: int, out_features: int,
                    bias: torch.Tensor | None = None, device: str | torch.device = "cpu") -> "QuantLinear4bit":
        """Build from the transformers serialization ({'weight': ..., 'weight.absmax': ..., ...}, suffixes relative to
        the module). Raises ValueError when the tensors do not describe an (out, in) 4-bit weight."""
        F_ = bnb().functional
        qs_items = {k.removeprefix("weight."): v for k, v in tensors.items() if k != "weight"}
        state = F_.QuantState.from_dict(qs_items, device=torch.device(device))
        if tuple(state.shape) != (out_features, in_features):
            raise ValueError(f"its quantization state says shape {tuple(state.shape)}, the config implies "
                             f"{(out_features, in_features)}")
        data = tensors["weight"].to(device)
        if data.numel() * data.element_size() * 2 < out_features * in_features:
            raise ValueError(f"its packed weight holds {data.numel() * data.element_size() * 2} 4-bit values, "
                             f"{out_features * in_features} expected")
        absmax = state.absmax
        if state.nested:  # what dequantize_4bit does on every call, done once
            absmax = F_.dequantize_blockwise(state.absmax, state.state2) + state.offset
        return cls(in_features, out_features, data, absmax.float(), state.quant_type, state.blocksize, bias)

    @classmethod
    def cat(cls, parts: list["QuantLinear4bit"]) -> "QuantLinear4bit | None":
        """One module computing the parts' outputs side by side (layout.fuse_rows), from their bytes as they are:
        4-bit rows are independent (blocks never straddle rows when in_features % blocksize == 0) and the CPU
        layout interleaves rows within 32-row groups only. The parts keep views of the fused buffers."""
        p0 = parts[0]
        if any((p.in_features, p.quant_type, p.blocksize, p.cpu_kernel, p.bias is None)
               != (p0.in_features, p0.quant_type, p0.blocksize, p0.cpu_kernel, p0.bias is None) for p in parts):
            return None
        k, bs = p0.in_features, p0.blocksize
        if k % bs:
            return None
        rows = lambda t: t.view(-1, k // 2)  # either layout as (n, k/2) bytes: rows stay whole in both
        bias = None if p0.bias is None else torch.cat([p.bias for p in parts])
        fused = cls(k, sum(p.out_features for p in parts), torch.cat([rows(p.packed) for p in parts]),
                    torch.cat([p.absmax for p in parts]), p0.quant_type, bs, bias, cpu_layout=p0.cpu_kernel)
        fused.kernel_max_rows = p0.kernel_max_rows
        o = 0
        for p in parts:
            n = p.out_features
            p.absmax = fused.absmax[o * k // bs : (o + n) * k // bs]
            p.packed = rows(fused.packed)[o : o + n].view(p.packed.shape)
            if p0.cpu_kernel:
                p.absmax_t = fused.absmax_t[:, o : o + n]  # a strided view: gemv_4bit_cpu copies it if called
            if bias is not None:
                p.bias = nn.Parameter(fused.bias[o : o + n], requires_grad=False)
            o += n
        return fused

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """The (out, in) weight in `dtype`, with bitsandbytes' dequantize kernel: equal to
        dequantize_4bit(quantize_4bit(w)) bit for bit."""
        std = unpack_from_cpu(self.packed) if self.cpu_kernel else self.packed
        shape = (self.out_features, self.in_features)
        return torch.ops.bitsandbytes.dequantize_4bit.default(std, self.absmax, self.blocksize, self.quant_type,
                                                               shape, dtype)

    def _row_call(self):
        """One bf16 row (a decode step) with the weight's pointers bound (_bound): through our kernel
        (kernels.gemv_4bit_row, same layout) where it builds, else bitsandbytes' C function."""

        def build(packed, absmax_t, bias, code):
            ours, theirs = kernels.gemv_4bit_row(), native_gemv_4bit(self.quant_type)
            if not self.cpu_kernel or bias is not None or not kernels.cpu_contiguous(packed, torch.uint8) \
                    or not (absmax_t.is_cpu and absmax_t.dtype == torch.bfloat16) \
                    or not kernels.cpu_contiguous(code, torch.float32):
                return None
            absmax_t = absmax_t.contiguous()  # a copy only for the parts of a fused module, never called in decode
            n, k, bs = self.out_features, self.in_features, self.blocksize
            pp, ap, cp = packed.data_ptr(), absmax_t.data_ptr(), code.data_ptr()
            spec = None  # kernels/block_step.c's description of the weight (row_spec), where it runs ours
            if ours is not None and bs % 4 == 0:  # x, out -> 0, or 1 where it declines
                run = lambda xp, op: ours(xp, pp, ap, cp, n, k, bs, op)
                spec = (3, n, k, pp, bs, ap, cp, 0.0) if n % 32 == 0 and k % bs == 0 else None  # what it takes
            elif theirs is not None:  # returns nothing: never declines
                run = lambda xp, op: theirs(1, n, k, xp, pp, ap, op, bs, k, n)
            else:
                return None

            def call(x):
                out = torch.empty((*x.shape[:-1], n), dtype=torch.bfloat16)
                return None if run(x.data_ptr(), out.data_ptr()) else out

            call.keep, call.spec = (absmax_t, code), spec
            return call

        return _bound(self, ("packed", "absmax_t", "bias", "code"), build, self.quant_type, self.blocksize)

    def row_spec(self) -> tuple | None:
        """What forward runs for one bf16 row on CPU, as kernels/block_step.c reads it, or None (another path)."""
        call = self._row_call() if self.kernel_max_rows > 0 else None
        return getattr(call, "spec", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == self.in_features and x.dtype == torch.bfloat16 and x.is_cpu and self.kernel_max_rows > 0 \
                and x.is_contiguous():
            call = self._row_call()
            out = None if call is None else call(x)
            if out is not None:
                return out
        rows = x.numel() // x.shape[-1]
        if self.cpu_kernel and rows <= self.kernel_max_rows and x.device.type == "cpu":
            a = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()  # (rows, k)
            out = gemv_4bit_cpu(a, self.packed, self.absmax_t, self.code, self.quant_type, self.blocksize,
                                self.out_features).reshape(*x.shape[:-1], self.out_features).to(x.dtype)
            return out if self.bias is None else out + self.bias.to(x.dtype)
        if not self.cpu_kernel and x.device.type != "cpu":  # CUDA & co: bitsandbytes' own dispatch
            return self._bnb_matmul(x)
        cdtype = x.dtype if x.dtype in (torch.bfloat16, torch.float32) else torch.float32
        w = self.dequantize(cdtype)
        b = None if self.bias is None else self.bias.to(cdtype)
        return F.linear(x.to(cdtype), w, b).to(x.dtype)

    def _bnb_matmul(self, x):
        F_ = bnb().functional
        state = F_.QuantState(absmax=self.absmax, shape=torch.Size((self.out_features, self.in_features)),
                              dtype=x.dtype, blocksize=self.blocksize, code=self.code, quant_type=self.quant_type)
        return bnb().matmul_4bit(x, self.packed, quant_state=state, bias=self.bias)

    def extra_repr(self) -> str:
        path = (f"bnb cpu kernel <= {self.kernel_max_rows} rows, else dequantize+gemm" if self.cpu_kernel
                else "dequantize+gemm")
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.quant_type}, "
                f"blocksize={self.blocksize}, {path}")


class QuantLinear8bit(_PlanFree, nn.Module):
    """A bitsandbytes LLM.int8() linear layer: int8 weight (out, in) + one fp32 scale per output row (SCB).

    Up to `woq_max_rows` rows (decode) of bf16 activations on CPU: weight-only int8, torch's _weight_int8pack_mm
    (x @ (cb * SCB/127)^T with the activations left in bf16: no activation quantization, so it is closer to the
    float result than LLM.int8(); 1.2-1.8x faster than bitsandbytes' path at one row, slower past 8 rows).
    Then, at most `kernel_max_rows` rows (unlimited by default: it won at every shape measured): bitsandbytes' int8
    path (activations quantized per row to int8, int8 GEMM via torch._int_mm, outlier columns above `threshold` kept
    in floating point as int8_mixed_scaled_mm does: _outlier_parts); more rows: dequantize the weight and run one
    GEMM in the activations' dtype. One bf16 row on CPU runs LLM.int8() itself first (_llm_int8_row)."""

    bits = 8

    def __init__(self, in_features: int, out_features: int, cb: torch.Tensor, scb: torch.Tensor,
                 threshold: float = 0.0, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.threshold = in_features, out_features, float(threshold)
        cb = cb.contiguous()
        if cb.data_ptr() % 64:  # a view into a bigger buffer (safetensors packs tensors back to back)
            cb = cb.clone()  # torch allocates CPU tensors 64-byte aligned: see forward
        self.register_buffer("cb", cb, persistent=False)
        self.register_buffer("scb", scb.float().contiguous(), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.kernel_max_rows = kernel_max_rows(8)
        self.woq_max_rows = WOQ_MAX_ROWS
        self.row_kernel = self.row_kernel_fits()  # one row: _llm_int8_row
        self.register_buffer("scale", None, persistent=False)  # bf16 SCB/127 for the weight-only path, made once

    @classmethod
    def from_stored(cls, tensors: dict[str, torch.Tensor], in_features: int, out_features: int,
                    bias: torch.Tensor | None = None, threshold: float = 0.0,
                    device: str | torch.device = "cpu") -> "QuantLinear8bit":
        cb, scb = tensors["weight"], tensors["SCB"]
        if cb.dtype != torch.int8 or tuple(cb.shape) != (out_features, in_features):
            raise ValueError(f"its int8 weight is {cb.dtype} {tuple(cb.shape)}, "
                             f"int8 {(out_features, in_features)} expected")
        if tuple(scb.shape) != (out_features,):
            raise ValueError(f"its SCB has shape {tuple(scb.shape)}, ({out_features},) expected")
        fmt = tensors.get("weight_format")
        if fmt is not None and int(fmt.item() if isinstance(fmt, torch.Tensor) else 0) != 0:
            raise ValueError(f"its weight_format is {int(fmt.item())}: only row-major (0) is supported")
        bnb()  # registers the torch.ops.bitsandbytes kernels
        return cls(in_features, out_features, cb.to(device), scb.to(device), threshold, bias)

    @classmethod
    def cat(cls, parts: list["QuantLinear8bit"]) -> "QuantLinear8bit | None":
        """One module computing the parts' outputs side by side (layout.fuse_rows): int8 rows and their scales are
        independent, so this is a concatenation; the parts keep views of the fused buffers."""
        p0 = parts[0]
        if any((p.in_features, p.threshold, p.bias is None) != (p0.in_features, p0.threshold, p0.bias is None)
               for p in parts):
            return None
        cb, scb = torch.cat([p.cb for p in parts]), torch.cat([p.scb for p in parts])
        bias = None if p0.bias is None else torch.cat([p.bias for p in parts])
        fused = cls(p0.in_features, cb.shape[0], cb, scb, p0.threshold, bias)
        fused.kernel_max_rows, fused.woq_max_rows, fused.row_kernel = p0.kernel_max_rows, p0.woq_max_rows, p0.row_kernel
        o = 0
        for p in parts:
            n = p.out_features
            p.cb, p.scb, p.scale = fused.cb[o : o + n], fused.scb[o : o + n], None
            if bias is not None:
                p.bias = nn.Parameter(fused.bias[o : o + n], requires_grad=False)
            o += n
        return fused

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        w = torch.ops.bitsandbytes.int8_vectorwise_dequant.default(self.cb, self.scb)  # float32, bnb's rounding
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows == 1 and self.row_kernel and x.is_cpu:
            out = self._llm_int8_row(x)
            if out is not None:
                return out
        # torch's weight-only kernel reads past the row when in_features is not a multiple of 16 (garbage, NaN or a
        # crash: checked on torch 2.13 with poisoned memory after the tensors); Cohere's are multiples of 256. From
        # 4 rows on it also loads the weight with aligned instructions: a weight not 64-byte aligned segfaults
        # (torch 2.13: a 64 x 160 int8 weight at offset 40, from a small cohere2_moe expert)
        if rows <= self.woq_max_rows and x.dtype == torch.bfloat16 and x.device.type == "cpu" \
                and self.in_features % 16 == 0 and self.cb.data_ptr() % 64 == 0:
            if self.scale is None:  # the dequantization scale of each row, SCB/127, as the kernel wants it
                self.scale = (self.scb / 127.0).to(torch.bfloat16)
            out = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.cb, self.scale)
            out = out.reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias.to(x.dtype)
        if rows <= self.kernel_max_rows:
            a = x.reshape(-1, x.shape[-1])
            if self.threshold > 0.0:
                a = a.clone()  # int8_vectorwise_quant zeroes outliers in place (and restores them) while quantizing
            ca, sca, outliers = torch.ops.bitsandbytes.int8_vectorwise_quant.default(a, self.threshold)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            out = int8_scaled_mm(ca, self.cb, sca, self.scb, bias, x.dtype)
            if self.threshold > 0.0 and outliers is not None and outliers.numel():
                out = out.addmm(*self._outlier_parts(a, outliers))
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        cdtype = x.dtype if x.dtype in (torch.bfloat16, torch.float32) else torch.float32
        b = None if self.bias is None else self.bias.to(cdtype)
        return F.linear(x.to(cdtype), self.dequantize(cdtype), b).to(x.dtype)

    def _outlier_parts(self, a: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """bitsandbytes' outlier decomposition (int8_mixed_scaled_mm): the activations' outlier columns in floating
        point times the same columns of the dequantized weight, (rows, m) and (m, out), to add to the int8
        product. Unlike bitsandbytes, the column count m is padded to a power of two with zero columns (the same
        sum): every new inner size of a float matmul leaves ~0.7 MB resident in torch/oneDNN on CPU (measured,
        whatever ONEDNN_PRIMITIVE_CACHE_CAPACITY says), and the outlier count changes from chunk to chunk, so an
        8K-token int8 prefill of the demo model grew by ~70 MB."""
        n = cols.numel()
        m = 1 << (n - 1).bit_length()  # (rows, n) -> (rows, m)
        sub_a = a.new_zeros(a.shape[0], m)
        sub_a[:, :n] = a[:, cols]
        w = torch.ops.bitsandbytes.int8_vectorwise_dequant.default(self.cb[:, cols].contiguous(), self.scb)
        sub_b = w.new_zeros(m, self.out_features, dtype=a.dtype)
        sub_b[:n] = w.to(a.dtype).t()  # bitsandbytes rounds the dequantized columns to the activations' dtype
        return sub_a, sub_b

    def row_spec(self) -> tuple | None:
        """What forward runs for one bf16 row on CPU (LLM.int8() natively), as kernels/block_step.c reads it, or None."""
        call = self._row_call() if self.row_kernel and self.cb.is_cpu else None
        return getattr(call, "spec", None)

    def row_kernel_fits(self) -> bool:
        """Whether one row should take _llm_int8_row here: _int_mm has its AVX-512 kernel and the weight is on CPU."""
        return cpu_has_int8_mm() and self.cb.device.type == "cpu"

    def _llm_int8_row(self, x: torch.Tensor) -> torch.Tensor | None:
        """One row (..., in) through LLM.int8() exactly as bitsandbytes computes it on CPU (int8_vectorwise_quant,
        then int8_scaled_mm: _int_mm and int8_mm_dequant) -> (..., out), or None where the row has an outlier
        (|x| >= threshold: bitsandbytes' path then keeps those columns in floating point) or is all zeros. In bf16
        on AVX512-VNNI: one call of the native kernel (cohere_cli/weights/kernels), the same bits without ~30 us of torch
        ops per call."""
        call = self._row_call() if x.dtype == torch.bfloat16 else None
        if call is not None:
            return call(x.contiguous())
        a = x.reshape(1, -1)
        lo, hi = torch.aminmax(a)
        amax = max(-lo.item(), hi.item())  # a bf16/fp32 value, exact as a Python float
        if amax == 0.0 or (self.threshold > 0.0 and amax >= self.threshold):
            return None
        # round(A * (127 / absmax)) in float32, where bitsandbytes' `127.0 / row_stats` is torch's
        # reciprocal(row_stats) * 127, two float32 roundings (each correctly rounded from the exact double here)
        scale = _f32(_f32(1.0 / amax) * 127.0)
        q = a.to(torch.float32, copy=True).mul_(scale).round_().to(torch.int8)  # (1, in)
        acc = torch._int_mm(q, self.cb.t())  # (1, out) int32
        # int8_mm_dequant: acc * (row_stats * SCB) * 1/127^2 (its constant), in float32
        out = torch.mul(acc, self.scb * amax).mul_(6.200124e-05)
        if self.bias is not None:
            out += self.bias.to(a.dtype)
        return out.to(a.dtype).reshape(*x.shape[:-1], self.out_features)

    def _row_call(self):
        """The native kernel for one bf16 row with the weight's pointers bound (_bound): x -> out, or None where
        the row has an outlier."""

        def build(cb, scb, bias):
            fn = kernels.int8_row()
            if fn is None or not (kernels.cpu_contiguous(cb, torch.int8) and kernels.cpu_contiguous(scb, torch.float32)
                                  and (bias is None or kernels.cpu_contiguous(bias, torch.bfloat16))):
                return None
            rowsum = _row_sums(cb)  # the kernel's correction for its unsigned activations, once
            n, k, thr = self.out_features, self.in_features, self.threshold
            args = (k, cb.data_ptr(), scb.data_ptr(), rowsum.data_ptr(), None if bias is None else bias.data_ptr())

            def call(x):
                out = torch.empty((*x.shape[:-1], n), dtype=torch.bfloat16)
                return None if fn(x.data_ptr(), *args, out.data_ptr(), n, thr) else out

            call.keep = rowsum
            call.spec = None if bias is not None else (2, n, k, cb.data_ptr(), 0, scb.data_ptr(), rowsum.data_ptr(), thr)
            return call

        return _bound(self, ("cb", "scb", "bias"), build, self.threshold)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8, "
                f"threshold={self.threshold}, one row: {'LLM.int8() on _int_mm, ' if self.row_kernel else ''}"
                f"weight-only <= {self.woq_max_rows} bf16 rows, "
                f"bnb int8 kernel <= {self.kernel_max_rows} rows, else dequantize+gemm")


def _row_sums(cb: torch.Tensor) -> torch.Tensor:
    """The int32 sum of each row of an int8 matrix (out, in), as an int8 product with a column of ones: exact, and
    nothing the size of the matrix is made. `cb.sum(1, dtype=torch.int32)` widens the whole matrix to int32 first
    (a 256000 x 2048 head: 2 GB for a moment, and up to 700 MB of it left in the heap after)."""
    try:
        return torch._int_mm(cb, cb.new_ones(cb.shape[1], 8))[:, 0].contiguous()  # (out, 8) int32 -> (out,)
    except RuntimeError:  # shapes _int_mm does not take
        return torch.cat([c.sum(1, dtype=torch.int32) for c in cb.split(1024)])


FUSED_NAMES = ("in_proj", "qkv_proj", "gate_up_proj")  # modules layout.fuse adds (views of the checkpoint's modules)


def quantized_modules(model: nn.Module, fused: bool = False) -> dict[str, nn.Module]:
    """The checkpoint's quantized linears by name; with fused=True every quantized module forward runs, also those
    load builds that the checkpoint does not store (the fused ones, FUSED_NAMES, and the int8 head, `lm_head`)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantLinear4bit, QuantLinear8bit))
            and (fused or (n.rpartition(".")[2] not in FUSED_NAMES and n != "lm_head"))}


def force_path(model: nn.Module, path: str | None) -> None:
    """Make every quantized linear use one path: "woq" (int8 only: weight-only), "kernel" (bitsandbytes' fused
    kernel, its registered ops for int8), "dequantize", or None for the per-shape default (for int8 one row then
    runs _llm_int8_row where _int_mm is fast)."""
    for m in quantized_modules(model, fused=True).values():
        limits = {"kernel": UNLIMITED, "woq": UNLIMITED, "dequantize": 0, None: kernel_max_rows(m.bits)}
        m.kernel_max_rows = limits[path]
        if m.bits == 8:
            m.woq_max_rows = {"woq": UNLIMITED, None: WOQ_MAX_ROWS}.get(path, 0)
            m.row_kernel = path is None and m.row_kernel_fits()
