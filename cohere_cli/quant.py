"""bitsandbytes quantization for the model core: 4-bit (nf4/fp4) and 8-bit (LLM.int8) linear layers.

Three jobs, all with bitsandbytes' own functions (no re-implementation of its number formats):

1. Quantize one weight, row chunk by row chunk, into the tensors transformers writes for bitsandbytes models
   (`Quantizer4bit` / `Quantizer8bit`, `quantize_weight`; used by the streaming `cohere quantize`):
     4-bit: `weight` (U8 [n*k/2, 1]), `weight.absmax`, `weight.quant_map`, [`weight.nested_absmax`,
            `weight.nested_quant_map`], `weight.quant_state.bitsandbytes__nf4` (U8 bytes of a JSON)
     8-bit: `weight` (I8 [n, k]), `SCB` (F32 [n]), `weight_format` (U8 scalar 0 = row-major)
   Chunks are aligned to quantization blocks, so the result equals bitsandbytes' one-shot `quantize_4bit` /
   `int8_vectorwise_quant` bit for bit (tests/test_quant.py checks it) while memory stays at one chunk.
2. Build quantized linear modules from those stored tensors (`QuantLinear4bit.from_stored`,
   `QuantLinear8bit.from_stored`; `QuantizedLoader` is the hook checkpoint.load_model calls).
3. Run them fast on CPU: the module picks the path per call shape (`forward`, `kernel_max_rows`, `woq_max_rows`).
   Few rows (decode) read 4 or 8 bits per weight instead of 16: bitsandbytes' fused 4-bit kernel (its C function
   called directly, `gemv_4bit_cpu`), torch's weight-only int8 kernel on bitsandbytes' int8 rows and scales; many
   rows (prefill) either run bitsandbytes' kernels or dequantize the weight once per call and run one bf16 GEMM,
   whichever is faster on this CPU (benchmarks/quant_paths.py, gemv_paths.py; numbers above
   KERNEL_MAX_ROWS_AMX_4BIT). `cat` fuses modules that read the same input (model.fuse_rows).

bitsandbytes is imported lazily (it costs ~1.5 s and logs noise on import); this module never imports
transformers."""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cohere_cli.errors import CheckpointError

# The linears bitsandbytes quantizes in a Cohere model: attention and MLP projections. Embeddings, norms and the
# (tied) lm_head stay in the parent's dtype, as in transformers' bitsandbytes integration.
QUANTIZABLE = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)$")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
NESTED_BLOCKSIZE = 256  # bitsandbytes' double quantization of absmax (fixed in quantize_4bit)

# Per-call path choice on CPU: at most kernel_max_rows() rows (tokens) run bitsandbytes' fused kernel, more rows
# dequantize the weight once and run one GEMM. Measured with benchmarks/quant_paths.py (4096x4096 weight, 8 copies
# cycled so weights come from memory, bf16 activations, best of 6 runs on a shared machine; ms):
#   AMD EPYC (AVX-512 + AVX512-BF16, no AMX), 1 thread:
#     rows           1      8      32     128    512
#     bf16 GEMM      1.93   2.02   3.93   11.2   41.9
#     nf4 kernel     0.39   0.98   3.63   14.5   56.7
#     nf4 deq+GEMM   12.3   11.3   19.9   35.8   64.3   (dequantize alone 11-23 ms, a third of it the byte shuffle)
#     int8 kernel    0.71   3.03   4.12   8.51   27.1
#     int8 deq+GEMM  49.1   34.0   58.2   67.6   91.0   (int8_vectorwise_dequant alone ~50 ms)
#   same, 2 threads, 1 row: bf16 1.65, nf4 kernel 0.26, int8 kernel 0.41.
#   Xeon with AMX (platform-notes.md, 2 threads): bf16 GEMM 8.1 ms at 512 rows, nf4 kernel ~102 ms, dequantize 1.8 ms.
# So: without AMX the fused kernels win at every row count a prefill chunk has (bf16 GEMM on AVX-512 is barely faster
# than bitsandbytes' tiled kernel, and dequantizing costs more than the difference); with AMX, 4-bit prefill is ~5x
# faster dequantized (AMX bf16 GEMM) while decode stays on the kernel. The int8 kernel (torch._int_mm, VNNI) beats
# bf16 itself at every shape here, and on the AMX Xeon takes 8.8-9.2 ms at 512 rows against 8.1 ms for the bf16 GEMM
# alone, before any dequantization: int8 never dequantizes.
KERNEL_MAX_ROWS_AMX_4BIT = 16
# Below bitsandbytes' int8 kernel, decode rows take a third path: weight-only int8 (torch._weight_int8pack_mm, bf16
# activations, no activation quantization). Same EPYC, 5632x1024 weight, 2 threads (ms):
#     rows                         1      2      4      8      16     64
#     torch._weight_int8pack_mm    0.167  0.161  0.187  0.329  0.623  2.90
#     bnb int8 (threshold 6)       0.225  0.424  0.443  0.442  0.542  1.16
WOQ_MAX_ROWS = 8
UNLIMITED = 1 << 62


def kernel_max_rows(bits: int) -> int:
    if bits == 4 and cpu_has_amx():
        return KERNEL_MAX_ROWS_AMX_4BIT
    return UNLIMITED


def bnb():
    """bitsandbytes, imported once with its import-time warnings silenced ("Failed to load CPU gemm_4bit_forward
    from kernels-community": it falls back to its own AVX512-BF16 kernel, the message is noise for users)."""
    import importlib

    log = logging.getLogger("bitsandbytes")
    if not getattr(bnb, "_quiet", False):
        log.setLevel(logging.ERROR)
        bnb._quiet = True
    try:
        return importlib.import_module("bitsandbytes")
    except Exception as e:  # a broken install raises all sorts of things at import
        raise CheckpointError(f"bitsandbytes is not usable here ({type(e).__name__}: {e}): reinstall it "
                              f"(pip install bitsandbytes)") from None


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16 (Xeon 4th gen+): there bf16 GEMM is ~5x faster than AVX-512 alone."""
    if not hasattr(cpu_has_amx, "_v"):
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
        cpu_has_amx._v = " amx_bf16" in flags
    return cpu_has_amx._v


def cpu_has_bnb_kernel() -> bool:
    """Whether bitsandbytes' fused 4-bit CPU kernel runs here (it needs AVX512-BF16)."""
    if not hasattr(cpu_has_bnb_kernel, "_v"):
        try:
            cpu_has_bnb_kernel._v = bool(bnb().functional.has_avx512bf16())
        except Exception:
            cpu_has_bnb_kernel._v = False
    return cpu_has_bnb_kernel._v


# ---- what to quantize -----------------------------------------------------------------------------------------------
@dataclass
class QuantSpec:
    """How to quantize: what `cohere quantize` options become, and what the manifest records."""

    bits: int  # 4 or 8
    quant_type: str = "nf4"  # 4-bit only: nf4 | fp4
    blocksize: int = 64  # 4-bit only
    double_quant: bool = True  # 4-bit only: quantize the absmax values again (8-bit, blocks of 256)
    compute_dtype: str = "bfloat16"  # what the linears compute in (bnb_4bit_compute_dtype)
    threshold: float = 6.0  # 8-bit only: LLM.int8() outlier threshold on activations (llm_int8_threshold)
    keep: list[str] = field(default_factory=list)  # glob patterns of module names left unquantized

    def validate(self) -> None:
        from cohere_cli.errors import UsageError

        if self.bits not in (4, 8):
            raise UsageError(f"--bits must be 4 or 8 (got {self.bits}): bitsandbytes stores nf4/fp4 or int8")
        if self.quant_type not in ("nf4", "fp4"):
            raise UsageError(f"--quant-type must be nf4 or fp4 (got {self.quant_type!r})")
        if self.blocksize not in BLOCKSIZES:
            raise UsageError(f"--blocksize must be one of {', '.join(map(str, BLOCKSIZES))} (got {self.blocksize})")

    @property
    def precision(self) -> str:
        return self.quant_type if self.bits == 4 else "int8"

    def wants(self, module: str) -> bool:
        """Whether the linear `module` (e.g. model.layers.3.mlp.up_proj) is quantized."""
        if not QUANTIZABLE.match(module):
            return False
        return not any(fnmatch.fnmatchcase(module, g) or fnmatch.fnmatchcase(module + ".weight", g)
                       for g in self.keep)

    def quantization_config(self, kept: list[str]) -> dict:
        """config.json's `quantization_config`, spelled as transformers' BitsAndBytesConfig.to_dict() writes it, so
        that `AutoModelForCausalLM.from_pretrained` loads the folder as is. Unquantized linears are listed in
        llm_int8_skip_modules (lm_head always: transformers never quantizes it)."""
        four = self.bits == 4
        return {
            "quant_method": "bitsandbytes",
            "_load_in_8bit": not four,
            "_load_in_4bit": four,
            "llm_int8_threshold": float(self.threshold),
            "llm_int8_skip_modules": ["lm_head", *kept],
            "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False,
            "bnb_4bit_quant_type": self.quant_type if four else "fp4",
            "bnb_4bit_use_double_quant": bool(self.double_quant) if four else False,
            "bnb_4bit_compute_dtype": self.compute_dtype,
            "bnb_4bit_quant_storage": "uint8",
            "load_in_4bit": four,
            "load_in_8bit": not four,
        }


def row_chunk(shape: tuple[int, int], blocksize: int, target_elems: int = 1 << 22) -> int:
    """Rows per quantization chunk: about target_elems weights (4M: 8 MB of bf16, ~50 MB of bitsandbytes'
    temporaries) and a whole number of 4-bit blocks, so that chunked quantization equals one-shot quantization
    (the last chunk takes whatever rows are left)."""
    import math

    n, k = shape
    step = blocksize // math.gcd(max(k, 1), blocksize)  # fewest rows whose weights fill whole blocks
    return max(step, (target_elems // max(k, 1)) // step * step)


# ---- quantizing one weight (streamed by rows) -----------------------------------------------------------------------
class Quantizer4bit:
    """`rows(w)` quantizes a chunk of rows (pure: chunks may run on several threads) -> (packed bytes, absmax);
    `finish(absmaxes)`, given every chunk's absmax in row order, -> the other tensors of the serialization, exactly
    what QuantState.as_dict(packed=True) holds after a one-shot quantize_4bit of the whole weight."""

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, spec: QuantSpec):
        self.shape, self.dtype, self.spec = tuple(shape), dtype, spec

    def rows(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if w.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            w = w.float()
        packed, state = bnb().functional.quantize_4bit(w.contiguous(), blocksize=self.spec.blocksize,
                                                       compress_statistics=False, quant_type=self.spec.quant_type,
                                                       quant_storage=torch.uint8)
        return packed.reshape(-1), state.absmax

    def finish(self, stats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        F_ = bnb().functional
        absmax = torch.cat(stats) if len(stats) > 1 else stats[0]
        code = F_.get_4bit_type(self.spec.quant_type, device="cpu")
        common = dict(shape=torch.Size(self.shape), dtype=self.dtype, blocksize=self.spec.blocksize, code=code,
                      quant_type=self.spec.quant_type)
        if self.spec.double_quant:  # as quantize_4bit(compress_statistics=True) does it
            offset = absmax.mean()
            qabsmax, state2 = F_.quantize_blockwise(absmax - offset, blocksize=NESTED_BLOCKSIZE)
            state = F_.QuantState(absmax=qabsmax, offset=offset, state2=state2, **common)
        else:
            state = F_.QuantState(absmax=absmax, **common)
        return {f"weight.{k}": v for k, v in state.as_dict(packed=True).items()}


class Quantizer8bit:
    """LLM.int8() row-wise quantization as bitsandbytes' Int8Params does it (weights cast to fp16, then
    int8_vectorwise_quant): `rows(w)` -> (int8 rows, their absmax = SCB); `finish(scbs)` -> SCB and weight_format."""

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, spec: QuantSpec):
        self.shape = tuple(shape)

    def rows(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cb, scb, _ = bnb().functional.int8_vectorwise_quant(w.to(torch.float16).contiguous())
        return cb.reshape(-1), scb

    def finish(self, stats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        scb = torch.cat(stats) if len(stats) > 1 else stats[0]
        return {"SCB": scb, "weight_format": torch.tensor(0, dtype=torch.uint8)}


def quantizer(shape, dtype, spec: QuantSpec):
    return (Quantizer4bit if spec.bits == 4 else Quantizer8bit)(shape, dtype, spec)


def weight_shape_on_disk(shape: tuple[int, int], spec: QuantSpec) -> tuple[list[int], str]:
    """Shape and safetensors dtype of the stored `weight` of a quantized linear of `shape`."""
    n, k = shape
    if spec.bits == 4:
        return [(n * k + 1) // 2, 1], "U8"
    return [n, k], "I8"


def quantize_weight(w: torch.Tensor, spec: QuantSpec, rows: int | None = None) -> dict[str, torch.Tensor]:
    """The serialization of one linear weight {suffix: tensor}, quantized `rows` rows at a time (default: chunks of
    ~4M values; `rows` must keep chunks on whole 4-bit blocks)."""
    q = quantizer(tuple(w.shape), w.dtype, spec)
    step = rows or row_chunk(tuple(w.shape), spec.blocksize)
    datas, stats = zip(*(q.rows(w[r : r + step]) for r in range(0, w.shape[0], step)))
    data = torch.cat(datas)
    out = {"weight": data.reshape(-1, 1) if spec.bits == 4 else data.reshape(w.shape)}
    out.update(q.finish(list(stats)))
    return out


# ---- the CPU kernel's weight layout ---------------------------------------------------------------------------------
# bitsandbytes' fused CPU kernel (gemv_4bit with AVX512-BF16) wants the weight repacked in blocks of 32 output rows
# (functional._convert_weight_packed_for_cpu, done by Linear4bit on its first CPU forward). Bytes 2i and 2i+1 of the
# 32-byte group for rows 32b..32b+31 and columns 2c, 2c+1 hold rows 32b+i (low nibbles) and 32b+16+i (high nibbles).
# These two functions convert between that layout and the standard one with 64-bit lane arithmetic (~2 ms for a
# 4096x4096 weight; bitsandbytes' own conversion goes through int32 per nibble and takes ~20x longer).
_M_LO = 0x000F000F000F000F
_M_HI = 0x00F000F000F000F0


def pack_for_cpu(std: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Standard packed bytes ([n*k/2] uint8, two weights per byte, row-major) -> the CPU kernel layout [n, k/2]."""
    kh = k // 2
    s = std.reshape(n // 32, 2, 16, kh).permute(0, 3, 2, 1).contiguous()  # (n/32, kh, 16, 2): [row i, row 16+i]
    u = s.view(-1).view(torch.int64)  # 4 (row i, row 16+i) byte pairs per 64-bit lane
    lo = ((u >> 8) & _M_HI) | ((u >> 4) & _M_LO)  # byte 2i: high nibbles of both rows' bytes
    hi = ((u >> 4) & _M_HI) | (u & _M_LO)  # byte 2i+1: low nibbles
    return (lo | (hi << 8)).view(torch.uint8).view(n, kh)


def unpack_from_cpu(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_for_cpu: [n, k/2] kernel layout -> standard [n*k/2, 1] bytes."""
    n, kh = packed.shape
    u = packed.reshape(-1).view(torch.int64)
    lo = (u & _M_LO) << 4 | ((u >> 8) & _M_LO)  # row i    = (low nibble of byte 2i) << 4 | low nibble of 2i+1
    hi = (u & _M_HI) | ((u >> 12) & _M_LO)  # row 16+i = high nibble of byte 2i | high nibble of 2i+1 >> 4
    r = (lo | (hi << 8)).view(torch.uint8).view(n // 32, kh, 16, 2)
    out = torch.empty(n // 32, 2, 16, kh, dtype=torch.uint8, device=packed.device)
    out.copy_(r.permute(0, 3, 2, 1))
    return out.view(-1, 1)


# ---- quantized linear modules ---------------------------------------------------------------------------------------
def gemv_4bit_cpu(a: torch.Tensor, packed: torch.Tensor, absmax_t: torch.Tensor, code: torch.Tensor, quant_type: str,
                  blocksize: int, n: int) -> torch.Tensor:
    """bitsandbytes' fused 4-bit CPU kernel: a (rows, k) bf16 contiguous -> (rows, n) bf16. Where bitsandbytes would
    run its own C function (no kernels-community kernel loaded), call that function directly: the registered op
    wraps it in ~15-20 us of Python per call (a tensor comparison, reshapes, dtype checks), and a decode step of a
    Cohere model makes 7 such calls per layer; measured 9 us against 26 us for a 256x1024 weight. Same kernel,
    same bits (tests/test_quant.py)."""
    absmax_t = absmax_t.contiguous()  # a no-op, but for the parts of a fused module (QuantLinear4bit.cat)
    fn = _native_gemv_4bit(quant_type)
    if fn is None:
        return torch.ops.bitsandbytes.gemv_4bit.default(a, packed, [n, a.shape[1]], absmax_t, code, blocksize)
    import ctypes as ct

    out = torch.empty(a.shape[0], n, dtype=torch.bfloat16)
    fn(ct.c_int64(a.shape[0]), ct.c_int64(n), ct.c_int64(a.shape[1]), ct.c_void_p(a.data_ptr()),
       ct.c_void_p(packed.data_ptr()), ct.c_void_p(absmax_t.data_ptr()), ct.c_void_p(out.data_ptr()),
       ct.c_int64(blocksize), ct.c_int64(a.stride(0)), ct.c_int64(n))
    return out


def _native_gemv_4bit(quant_type: str):
    """The C function bitsandbytes' CPU gemv_4bit op calls, or None where the op would do something else."""
    cache = _native_gemv_4bit.__dict__
    if quant_type not in cache:
        fn = None
        try:
            import bitsandbytes.backends.cpu.ops as cpu_ops
            from bitsandbytes.cextension import lib

            if getattr(cpu_ops, "gemm_4bit_forward_kernel", None) is None:
                fn = getattr(lib, f"gemv_4bit_inference_cpu_{quant_type}_bf16", None)
        except Exception:  # another bitsandbytes layout: keep the registered op
            fn = None
        cache[quant_type] = fn
    return cache[quant_type]


class QuantLinear4bit(nn.Module):
    """A bitsandbytes 4-bit linear layer for the model core (drop-in for nn.Linear in forward).

    On a CPU with AVX512-BF16 the weight lives in the fused kernel's layout ([n, k/2] bytes) with absmax in bf16 for
    the kernel and in fp32 for dequantization. forward(x) with at most `kernel_max_rows` rows runs the kernel
    (decode: reads half a byte per weight, 5x faster than bf16); more rows dequantize the whole weight once
    (bitsandbytes' kernel, after a byte shuffle back to the standard layout) and run one GEMM in the activations'
    dtype. kernel_max_rows is 16 on CPUs with AMX (there bf16 GEMM is ~10x faster than the kernel at 512 rows) and
    unlimited elsewhere (there the kernel is within 1.4x of bf16 GEMM at 512 rows and beats dequantize+GEMM). Without AVX512-BF16 (or on CUDA) the standard layout
    is kept and every call dequantizes (CPU) or goes through bitsandbytes' matmul_4bit (CUDA)."""

    bits = 4

    def __init__(self, in_features: int, out_features: int, data: torch.Tensor, absmax: torch.Tensor,
                 quant_type: str, blocksize: int, bias: torch.Tensor | None = None):
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
        if self.cpu_kernel:
            self.register_buffer("packed", pack_for_cpu(data, n, k), persistent=False)  # (n, k/2)
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
        """One module computing the parts' outputs side by side (model.fuse_rows), from their bytes as they are:
        4-bit rows are independent (blocks never straddle rows when in_features % blocksize == 0) and the CPU
        layout interleaves rows within 32-row groups only. The parts keep views of the fused buffers."""
        p0 = parts[0]
        if any((p.in_features, p.quant_type, p.blocksize, p.cpu_kernel, p.bias is None)
               != (p0.in_features, p0.quant_type, p0.blocksize, p0.cpu_kernel, p0.bias is None) for p in parts):
            return None
        k, bs = p0.in_features, p0.blocksize
        if k % bs:
            return None
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.in_features, fused.out_features = k, sum(p.out_features for p in parts)
        fused.quant_type, fused.blocksize, fused.cpu_kernel = p0.quant_type, bs, p0.cpu_kernel
        fused.kernel_max_rows = p0.kernel_max_rows
        fused.register_buffer("absmax", torch.cat([p.absmax for p in parts]), persistent=False)
        fused.register_buffer("code", p0.code, persistent=False)
        rows = lambda t: t.view(-1, k // 2) if not p0.cpu_kernel else t  # standard layout as (n, k/2) bytes
        fused.register_buffer("packed", torch.cat([rows(p.packed) for p in parts]), persistent=False)
        if p0.cpu_kernel:
            fused.register_buffer("absmax_t", torch.cat([p.absmax_t for p in parts], dim=1), persistent=False)
        else:
            fused.absmax_t = None
        fused.bias = None if p0.bias is None else nn.Parameter(torch.cat([p.bias for p in parts]), requires_grad=False)
        o = 0
        for p in parts:
            n = p.out_features
            p.absmax = fused.absmax[o * k // bs : (o + n) * k // bs]
            p.packed = fused.packed[o : o + n] if p0.cpu_kernel else fused.packed[o : o + n].reshape(-1, 1)
            if p0.cpu_kernel:
                p.absmax_t = fused.absmax_t[:, o : o + n]  # a strided view: gemv_4bit_cpu copies it if called
            if p.bias is not None:
                p.bias = nn.Parameter(fused.bias[o : o + n], requires_grad=False)
            o += n
        if not p0.cpu_kernel:
            fused.packed = fused.packed.view(-1, 1)
        return fused

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """The (out, in) weight in `dtype`, with bitsandbytes' dequantize kernel: equal to
        dequantize_4bit(quantize_4bit(w)) bit for bit."""
        std = unpack_from_cpu(self.packed) if self.cpu_kernel else self.packed
        shape = (self.out_features, self.in_features)
        return torch.ops.bitsandbytes.dequantize_4bit.default(std, self.absmax, self.blocksize, self.quant_type,
                                                               shape, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


class QuantLinear8bit(nn.Module):
    """A bitsandbytes LLM.int8() linear layer: int8 weight (out, in) + one fp32 scale per output row (SCB).

    Up to `woq_max_rows` rows (decode) of bf16 activations on CPU: weight-only int8, torch's _weight_int8pack_mm
    (x @ (cb * SCB/127)^T with the activations left in bf16: no activation quantization, so it is closer to the
    float result than LLM.int8(); 1.2-1.8x faster than bitsandbytes' path at one row, slower past 8 rows).
    Then, at most `kernel_max_rows` rows (unlimited by default: it won at every shape measured): bitsandbytes' int8 path
    (activations quantized per row to int8, int8 GEMM via torch._int_mm, outlier columns above `threshold` kept in
    floating point: int8_mixed_scaled_mm); more rows: dequantize the weight and run one GEMM in the activations'
    dtype."""

    bits = 8

    def __init__(self, in_features: int, out_features: int, cb: torch.Tensor, scb: torch.Tensor,
                 threshold: float = 0.0, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.threshold = in_features, out_features, float(threshold)
        self.register_buffer("cb", cb.contiguous(), persistent=False)
        self.register_buffer("scb", scb.float().contiguous(), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.kernel_max_rows = kernel_max_rows(8)
        self.woq_max_rows = WOQ_MAX_ROWS
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
        """One module computing the parts' outputs side by side (model.fuse_rows): int8 rows and their scales are
        independent, so this is a concatenation; the parts keep views of the fused buffers."""
        p0 = parts[0]
        if any((p.in_features, p.threshold, p.bias is None) != (p0.in_features, p0.threshold, p0.bias is None)
               for p in parts):
            return None
        cb, scb = torch.cat([p.cb for p in parts]), torch.cat([p.scb for p in parts])
        bias = None if p0.bias is None else torch.cat([p.bias for p in parts])
        fused = cls(p0.in_features, cb.shape[0], cb, scb, p0.threshold, bias)
        fused.kernel_max_rows, fused.woq_max_rows = p0.kernel_max_rows, p0.woq_max_rows
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
        if rows <= self.woq_max_rows and x.dtype == torch.bfloat16 and x.device.type == "cpu":
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
            if self.threshold > 0.0:
                out, _ = torch.ops.bitsandbytes.int8_mixed_scaled_mm.default(a, ca, self.cb, sca, self.scb,
                                                                              outliers, bias)
            else:
                out = torch.ops.bitsandbytes.int8_scaled_mm.default(ca, self.cb, sca, self.scb, bias=bias,
                                                                     dtype=x.dtype)
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        cdtype = x.dtype if x.dtype in (torch.bfloat16, torch.float32) else torch.float32
        b = None if self.bias is None else self.bias.to(cdtype)
        return F.linear(x.to(cdtype), self.dequantize(cdtype), b).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8, "
                f"threshold={self.threshold}, weight-only <= {self.woq_max_rows} bf16 rows, "
                f"bnb int8 kernel <= {self.kernel_max_rows} rows, else dequantize+gemm")


# ---- loading quantized checkpoints (the hook in checkpoint.load_model) ----------------------------------------------
_QS_KEY = re.compile(r"^(?P<mod>.+)\.weight\.quant_state\.bitsandbytes__(nf4|fp4)$")


def is_quantized_config(raw: dict) -> bool:
    return isinstance(raw.get("quantization_config"), dict)


class QuantizedLoader:
    """Routes the tensors of bitsandbytes-quantized linears, as load_model streams them, into quantized modules.

    Which modules are quantized is read from the safetensors headers up front (a 4-bit module has a
    `weight.quant_state.bitsandbytes__*` tensor, an 8-bit one an `SCB`), so components may arrive in any order
    and even in different shards; each module is built as soon as its last component arrives and its source
    tensors are dropped."""

    def __init__(self, model: nn.Module, raw: dict, files: list[Path], dtype: torch.dtype, device: torch.device,
                 *, names: set[str] | None = None, prefix: str = ""):
        """names: every tensor name of the checkpoint (read from the files' headers when not given); prefix: only
        modules under it are handled (quality.py loads one block at a time)."""
        q = raw["quantization_config"]
        method = q.get("quant_method")
        if method != "bitsandbytes":
            raise CheckpointError(f"config.json: quantization method {method!r} is not supported: only bitsandbytes "
                                  f"(nf4, fp4, int8) checkpoints load, e.g. those written by `cohere quantize`")
        self.model, self.dtype, self.device = model, dtype, torch.device(device)
        self.threshold = float(q.get("llm_int8_threshold", 6.0) or 0.0)
        if names is None:
            from cohere_cli.sizes import read_safetensors_header

            names = set()
            for f in files:
                try:
                    names |= set(read_safetensors_header(f))
                except (OSError, ValueError) as e:
                    raise CheckpointError(f"{f} is corrupt or truncated ({e}): re-download it") from None
        self.need: dict[str, set[str]] = {}  # module -> component suffixes to collect
        self.kind: dict[str, int] = {}
        for n in names:
            if not n.startswith(prefix):
                continue
            m = _QS_KEY.match(n)
            if m:
                mod = m.group("mod")
                self.kind[mod] = 4
                comp = {"weight", "weight.absmax", "weight.quant_map", n[len(mod) + 1 :]}
                if f"{mod}.weight.nested_absmax" in names:
                    comp |= {"weight.nested_absmax", "weight.nested_quant_map"}
                self.need[mod] = comp
            elif n.endswith(".SCB"):
                mod = n[: -len(".SCB")]
                self.kind[mod] = 8
                self.need[mod] = {"weight", "SCB"} | ({"weight_format"} if f"{mod}.weight_format" in names else set())
        for mod in self.kind:
            try:
                sub = model.get_submodule(mod)
            except AttributeError:
                raise CheckpointError(f"checkpoint quantizes {mod!r}, which this {raw.get('model_type')} model "
                                      f"does not have") from None
            if not isinstance(sub, nn.Linear):
                raise CheckpointError(f"checkpoint quantizes {mod!r}, which is not a linear layer")
            if f"{mod}.bias" in names:
                self.need[mod].add("bias")
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.built = 0

    def _owner(self, key: str) -> tuple[str, str] | None:
        for suffix_start in _dots(key):
            mod = key[:suffix_start]
            if mod in self.kind:
                return mod, key[suffix_start + 1 :]
        return None

    def take(self, key: str, sf) -> bool:
        """If `key` belongs to a quantized module, read it from `sf` and return True (load_model then skips it)."""
        owner = self._owner(key)
        if owner is None:
            return False
        mod, suffix = owner
        comps = self.pending.setdefault(mod, {})
        comps[suffix] = sf.get_tensor(key)
        if self.need[mod] <= comps.keys():
            self._build(mod, self.pending.pop(mod))
        return True

    def _build(self, mod: str, comps: dict[str, torch.Tensor]) -> None:
        old = self.model.get_submodule(mod)
        bias = comps.pop("bias", None)
        if bias is not None:
            bias = bias.to(device=self.device, dtype=self.dtype)
        try:
            if self.kind[mod] == 4:
                new = QuantLinear4bit.from_stored(comps, old.in_features, old.out_features, bias, self.device)
            else:
                new = QuantLinear8bit.from_stored(comps, old.in_features, old.out_features, bias, self.threshold,
                                                  self.device)
        except (ValueError, KeyError, AssertionError, RuntimeError) as e:
            raise CheckpointError(f"quantized tensor {mod!r}: {e}") from None
        parent, _, attr = mod.rpartition(".")
        setattr(self.model.get_submodule(parent), attr, new)
        self.built += 1

    def finish(self) -> None:
        if self.pending:
            mod = sorted(self.pending)[0]
            lack = sorted(self.need[mod] - set(self.pending[mod]))
            raise CheckpointError(f"quantized layer {mod!r} lacks {', '.join(lack)}: the checkpoint is incomplete")


def _dots(key: str):
    """Positions of '.' in key, right to left (candidate module/suffix splits)."""
    i = key.rfind(".")
    while i > 0:
        yield i
        i = key.rfind(".", 0, i)


FUSED_NAMES = ("in_proj", "qkv_proj", "gate_up_proj")  # modules model.fuse() adds (views of the checkpoint's modules)


def quantized_modules(model: nn.Module, fused: bool = False) -> dict[str, nn.Module]:
    """The checkpoint's quantized linears by name; with fused=True also the fused ones forward runs."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantLinear4bit, QuantLinear8bit))
            and (fused or n.rpartition(".")[2] not in FUSED_NAMES)}


def force_path(model: nn.Module, path: str | None) -> None:
    """Make every quantized linear use one path: "woq" (int8 only: weight-only), "kernel" (bitsandbytes' fused
    kernel), "dequantize", or None for the per-shape default."""
    for m in quantized_modules(model, fused=True).values():
        limits = {"kernel": UNLIMITED, "woq": UNLIMITED, "dequantize": 0, None: kernel_max_rows(m.bits)}
        m.kernel_max_rows = limits[path]
        if m.bits == 8:
            m.woq_max_rows = {"woq": UNLIMITED, None: WOQ_MAX_ROWS}.get(path, 0)


def read_quant_state_json(t: torch.Tensor) -> dict:
    return json.loads(bytes(t.cpu().numpy()).decode("utf-8"))
