"""bitsandbytes on CPU, called directly: its import (silenced), whether its fused 4-bit kernel runs here, that
kernel's weight layout (converted both ways), and the kernel's C function without the registered op around it.
cohere_cli/weights/qlinear.py builds the quantized linear layers on these.

bitsandbytes is imported lazily (it costs ~1.5 s and logs noise on import)."""

from __future__ import annotations

import functools
import inspect
import logging
import sys

import torch

from cohere_cli.errors import CheckpointError


def bnb():
    """bitsandbytes, imported once with its import-time warnings silenced, and without the Hub kernel it would
    fetch at import (below): "Failed to load CPU gemm_4bit_forward from kernels-community" is then expected, it
    falls back to its own AVX512-BF16 kernel."""
    import importlib

    log = logging.getLogger("bitsandbytes")
    if not getattr(bnb, "_quiet", False):
        log.setLevel(logging.ERROR)
        bnb._quiet = True
    done = sys.modules.get("bitsandbytes")
    if done is not None:
        return done
    real = torch.compile
    torch.compile = _compile_on_first_call(real)  # while bitsandbytes imports
    # On a CPU with AVX512-BF16 bitsandbytes' import asks the Hugging Face Hub for a kernel (the `kernels` package's
    # get_kernel: code fetched and run in this process), where `kernels` is installed (transformers brings it).
    # Nothing from outside runs here, and bitsandbytes keeps its own CPU kernel: while it imports, `import kernels`
    # fails (measured, after torch: +4 MB and 0.03 s instead of +18 MB, 0.29 s and a Hub request).
    blocked = "kernels" not in sys.modules
    if blocked:
        sys.modules["kernels"] = None
    try:
        return importlib.import_module("bitsandbytes")
    except Exception as e:  # a broken install raises all sorts of things at import
        raise CheckpointError(f"bitsandbytes is not usable here ({type(e).__name__}: {e}): reinstall it "
                              f"(pip install bitsandbytes)") from None
    finally:
        torch.compile = real
        if blocked and "kernels" in sys.modules and sys.modules["kernels"] is None:
            del sys.modules["kernels"]


def _compile_on_first_call(compile_):
    """torch.compile, deferred to the decorated function's first call. bitsandbytes decorates some of its default
    (pure torch) kernels with torch.compile at import; torch.compile imports torch._dynamo and inductor, 1-5 s of
    every start that loads a quantized model, though the CPU paths here never call those kernels. The decorated
    function compiles as before if it ever runs (bitsandbytes' own fallback to the plain function included)."""

    def deferred(fn=None, **kwargs):
        def wrap(f):
            if not inspect.isfunction(f):  # a module or a callable object: compiled now, as torch.compile would
                return compile_(f, **kwargs)
            compiled = []

            @functools.wraps(f)
            def call(*args, **kw):
                if not compiled:
                    try:
                        compiled.append(compile_(f, **kwargs))
                    except Exception:  # what bitsandbytes does where torch.compile fails: the plain function
                        compiled.append(f)
                return compiled[0](*args, **kw)

            return call

        return wrap if fn is None else wrap(fn)

    return deferred


def cpu_has_bnb_kernel() -> bool:
    """Whether bitsandbytes' fused 4-bit CPU kernel runs here (it needs AVX512-BF16)."""
    if not hasattr(cpu_has_bnb_kernel, "_v"):
        try:
            cpu_has_bnb_kernel._v = bool(bnb().functional.has_avx512bf16())
        except Exception:
            cpu_has_bnb_kernel._v = False
    return cpu_has_bnb_kernel._v


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


def gemv_4bit_cpu(a: torch.Tensor, packed: torch.Tensor, absmax_t: torch.Tensor, code: torch.Tensor, quant_type: str,
                  blocksize: int, n: int) -> torch.Tensor:
    """bitsandbytes' fused 4-bit CPU kernel: a (rows, k) bf16 contiguous -> (rows, n) bf16. Where bitsandbytes would
    run its own C function (no kernels-community kernel loaded), call that function directly: the registered op
    wraps it in ~15-20 us of Python per call (a tensor comparison, reshapes, dtype checks), and a decode step of a
    Cohere model makes 7 such calls per layer; measured 9 us against 26 us for a 256x1024 weight. Same kernel,
    same bits (tests/test_quant.py)."""
    absmax_t = absmax_t.contiguous()  # a no-op, but for the parts of a fused module (QuantLinear4bit.cat)
    fn = native_gemv_4bit(quant_type)
    if fn is None:
        return torch.ops.bitsandbytes.gemv_4bit.default(a, packed, [n, a.shape[1]], absmax_t, code, blocksize)
    out = torch.empty(a.shape[0], n, dtype=torch.bfloat16)
    fn(a.shape[0], n, a.shape[1], a.data_ptr(), packed.data_ptr(), absmax_t.data_ptr(), out.data_ptr(), blocksize,
       a.stride(0), n)
    return out


def native_gemv_4bit(quant_type: str):
    """The C function bitsandbytes' CPU gemv_4bit op calls, or None where the op would do something else; as our
    own ctypes prototype of its address (typed arguments: no ctypes objects to build per call, and bitsandbytes'
    own function object is left as it is): (M, N, K, A, B, absmax, out, blocksize, lda, ldc)."""
    cache = native_gemv_4bit.__dict__
    if quant_type not in cache:
        fn = None
        try:
            import ctypes as ct

            import bitsandbytes.backends.cpu.ops as cpu_ops
            from bitsandbytes.cextension import lib

            if getattr(cpu_ops, "gemm_4bit_forward_kernel", None) is None:
                raw = getattr(lib, f"gemv_4bit_inference_cpu_{quant_type}_bf16", None)
                if raw is not None:
                    i, p = ct.c_int64, ct.c_void_p
                    fn = ct.CFUNCTYPE(None, i, i, i, p, p, p, p, i, i, i)(ct.cast(raw, ct.c_void_p).value)
        except Exception:  # another bitsandbytes layout: keep the registered op
            fn = None
        cache[quant_type] = fn
    return cache[quant_type]


INT8_SLICE = 128  # rows per torch._int_mm call of int8_scaled_mm: its int32 product is held for this many rows


def int8_scaled_mm(ca: torch.Tensor, cb: torch.Tensor, sca: torch.Tensor, scb: torch.Tensor,
                   bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """bitsandbytes' int8_scaled_mm (rows of int8 activations `ca` with their absmax `sca`, times the int8 weight
    rows `cb` with theirs, `scb`) -> (rows, out), the same bits. In bf16 on a CPU where the native dequantization
    builds (kernels/int8_row.c): torch._int_mm (what bitsandbytes runs on CPU) on INT8_SLICE rows at a time, each
    int32 product turned into bf16 in one native pass. Why: bitsandbytes' dequantization is whole-matrix float32
    ops, three (rows, out) float32 temporaries at once: a 512-row prefill chunk of the 1.25B benchmark model's
    19456-output projection took 109 ms and +172 MB of peak memory that way, 67 ms and +60 MB this way, and the
    int8 model's prefill peak came from it. Elsewhere: bitsandbytes' op."""
    from cohere_cli.weights import kernels

    fn = kernels.int8_dequant() if dtype == torch.bfloat16 else None
    ok = lambda t, dt: t is None or kernels.cpu_contiguous(t, dt)  # noqa: E731
    if fn is None or not (ok(ca, torch.int8) and ok(cb, torch.int8) and ok(sca, torch.float32)
                          and ok(scb, torch.float32) and ok(bias, torch.bfloat16)) or ca.dim() != 2 \
            or ca.shape[1] != cb.shape[1] or sca.numel() != ca.shape[0] or scb.numel() != cb.shape[0] \
            or (bias is not None and bias.numel() != cb.shape[0]):
        return torch.ops.bitsandbytes.int8_scaled_mm.default(ca, cb, sca, scb, bias=bias, dtype=dtype)
    rows, n = ca.shape[0], cb.shape[0]
    out = torch.empty(rows, n, dtype=torch.bfloat16)
    for i in range(0, rows, INT8_SLICE):
        acc = torch._int_mm(ca[i : i + INT8_SLICE], cb.t())  # (r, n) int32
        r = acc.shape[0]
        fn(acc.data_ptr(), r, n, sca[i:].data_ptr(), scb.data_ptr(), None if bias is None else bias.data_ptr(),
           out[i:].data_ptr())
    return out
