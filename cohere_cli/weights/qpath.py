"""Which path a quantized linear takes for each call shape on this CPU, as measured (the numbers below), and the
binding of a module's one-row native call (cohere_cli/weights/qlinear.py runs them)."""

from __future__ import annotations

import struct
import weakref

import torch
from torch import nn

from cohere_cli.weights import kernels

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
# One row (a decode step) takes a fourth: LLM.int8() itself, bitsandbytes' arithmetic bit for bit (the activation row
# quantized to int8 by its absmax, torch._int_mm, the same dequantization), written as 9 small ops on the row instead
# of its registered ops (which cost ~100 us of Python and tensor bookkeeping per call; a decode step of a Cohere
# model makes 3 such calls per layer plus the head). _int_mm reads the int8 weight where it lies (no copy) with
# AVX512-VNNI; same EPYC, 2 threads, weights from memory, one row, ms (GB/s of int8 weight):
#     weight          _int_mm         torch._weight_int8pack_mm   (fbgemm's prepacked dynamic linear)
#     7168 x 1024     0.175 (42)      0.263 (28)                  0.145 (51)
#     34816 x 4096    4.37  (33)      4.18  (34)                  3.86  (37)
#     4096 x 14336    1.16  (51)      1.72  (34)                  1.12  (53)
# fbgemm is a little faster but needs its own copy of every weight, made at 0.1-0.3 GB/s (a 7B model: ~40 s at
# load on 2 cores, and twice the memory): not taken. Without AVX-512, _int_mm falls back to scalar code, and one row
# stays on the weight-only path. Where the native kernel builds (cohere_cli/weights/kernels/int8_row.c: the same arithmetic
# in one call, AVX512-VNNI), bf16 rows take it instead of the 9 ops: decode step of the 213M model 1.37x -> 1.49x
# our bf16 step.
UNLIMITED = 1 << 62


def cpu_has_int8_mm() -> bool:
    """Whether torch._int_mm has its AVX-512 kernel here (bitsandbytes' own condition for using it on CPU)."""
    if not hasattr(cpu_has_int8_mm, "_v"):
        major, minor = (int(v) for v in torch.__version__.split(".")[:2])
        cpu_has_int8_mm._v = (major, minor) >= (2, 6) and torch.backends.cpu.get_cpu_capability() == "AVX512"
    return cpu_has_int8_mm._v


def kernel_max_rows(bits: int) -> int:
    if bits == 4 and cpu_has_amx():
        return KERNEL_MAX_ROWS_AMX_4BIT
    return UNLIMITED


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16 (Xeon 4th gen+): there bf16 GEMM is ~5x faster than AVX-512 alone."""
    return "amx_bf16" in kernels.cpu_flags()


def _bound(module: nn.Module, names: tuple[str, ...], build, *settings):
    """A module's one-row native call with its constant arguments (weight pointers) bound once: the ctypes call is
    ~2 us, the general forward around it ~6-9 us, and a decode step makes 3 such calls per layer. Rebuilt by
    build() whenever a tensor it binds is another tensor, or the same one with other storage, dtype or contents
    (cat, .to(), .data swapped, an in-place edit: data_ptr, dtype, _version), or a captured setting changed, so a
    bound pointer never outlives its tensor. The tensors are held weakly (a replaced weight is freed as before),
    and _PlanFree drops the plan from copies and pickles. build returns None where the tensors do not fit.
    This check runs for every linear of every decode step (~2 us here, block_step.c's checks of a whole model)."""
    d = module.__dict__
    b, p = d["_buffers"], d["_parameters"]
    ts = [b[n] if n in b else p.get(n) for n in names]
    plan = d.get("_plan")
    if plan is not None and plan[1] == settings and _unchanged(plan[0], ts):
        return plan[2]
    call = build(*ts)
    d["_plan"] = (tuple(None if t is None else (weakref.ref(t), t.data_ptr(), t.dtype, _version(t)) for t in ts),
                  settings, call)
    return call


def _unchanged(stamps, ts) -> bool:
    """Whether each of `ts` is the tensor its stamp (weakref, data_ptr, dtype, _version) was taken of, unchanged."""
    for s, t in zip(stamps, ts):
        if s is None or t is None:
            if s is not t:
                return False
        elif s[0]() is not t or t.data_ptr() != s[1] or t.dtype != s[2] or (s[3] >= 0 and t._version != s[3]):
            return False  # (s[3] -1: an inference tensor, which keeps no version; the same object stays one)
    return True


def _version(t: torch.Tensor) -> int:
    """t's in-place edit count; -1 for a tensor made in inference mode, which keeps none (a model loaded under
    torch.inference_mode())."""
    return -1 if t.is_inference() else t._version


class _PlanFree:
    """Copies (copy.deepcopy) and pickles of a module leave out its bound native call (_bound): it holds raw
    pointers to the original's tensors."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_plan", None)
        return state


def _f32(v: float) -> float:
    """v rounded to float32 (as a Python float)."""
    return struct.unpack("f", struct.pack("f", v))[0]
