"""The limit a benchmark is judged against, and the machine it runs on (cohere bench, benchmarks/).

1. Pure arithmetic (no torch): bytes a decode step must read (weights + the KV cache it attends to, from
   cohere_cli.store.sizes), the bandwidth roofline that gives (tokens/s <= bandwidth / bytes per token), and the FLOPs of
   a prefill (linears, causal attention, the last position's logits). Unit-tested in tests/test_bench.py.
2. The machine: a memory-bandwidth probe (a float32 `sum` over a buffer far larger than the last-level cache, 1 GiB
   by default, best of several reads: an achievable read bandwidth, not the datasheet figure), on CUDA the device's
   peak from its memory clock and bus width, the CPU's name and the versions that matter.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

from cohere_cli.store import sizes

PROBE_BYTES = 1 << 30  # >> any CPU's last-level cache (32 MiB on the dev machine, 300 MiB on some Xeons)
PROBE_REPEATS = 5
# (max - min) / median above this (shown as ± half the range: above ±25%): the repeats disagree so much that the
# median says more about what else the machine was doing than about the model
NOISY_SPREAD = 0.5

# ---- 1. the limit: pure arithmetic ----------------------------------------------------------------------------------
def weights_read_per_token(d: sizes.Dims, precision: str, int8_head: bool = False) -> int:
    """Bytes of weights one decode step reads at `precision`: every linear (attention, MLP or a MoE's chosen and
    shared experts, lm_head) once. With tied
    embeddings the table is read as lm_head; an untied input embedding contributes one row only. `int8_head`: the
    head runs as LLM.int8() (quantized checkpoints on CPU, quant.HEAD_KEY): 1 byte per weight + a float32 scale
    per row instead of the float table."""
    total = sizes.weights_bytes(d, precision, active=True)
    elem = 4 if precision == "fp32" else 2  # embeddings stay 16-bit under bitsandbytes
    if not d.tied:
        total -= (d.vocab - 1) * d.hidden * elem
    if int8_head:
        total -= d.vocab * d.hidden * (elem - 1) - 4 * d.vocab
    return total


def kv_read_per_token(d: sizes.Dims, context: int, bytes_per_element: int = 2) -> int:
    """Bytes of keys and values one decode step reads when it attends to `context` positions (sliding layers hold
    at most their window)."""
    return sizes.kv_cache_bytes(d, context, bytes_per_element)


def decode_bytes_per_token(d: sizes.Dims, precision: str, context: int, kv_bytes_per_element: int = 2) -> int:
    return weights_read_per_token(d, precision) + kv_read_per_token(d, context, kv_bytes_per_element)


def roofline_tokens_per_s(bytes_per_token: float, bandwidth_bytes_per_s: float) -> float:
    """The most decode steps per second memory allows: each step streams its bytes once."""
    if bytes_per_token <= 0:
        raise ValueError("bytes_per_token must be positive")
    return bandwidth_bytes_per_s / bytes_per_token


def roofline_fraction(tokens_per_s: float, bytes_per_token: float, bandwidth_bytes_per_s: float) -> float:
    """Achieved decode speed as a fraction of the roofline (1.0 = every byte read at full bandwidth)."""
    return tokens_per_s / roofline_tokens_per_s(bytes_per_token, bandwidth_bytes_per_s)


def _causal_keys(n: int, window: int | None) -> int:
    """Sum over positions p = 0..n-1 of the keys position p attends to: p+1, or min(p+1, window)."""
    if window is None or n <= window:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def prefill_flops(d: sizes.Dims, tokens: int, start: int = 0, logits_positions: int = 1) -> int:
    """FLOPs (multiply-add = 2) of running `tokens` tokens at positions start.. through the model: the linears
    (2 x linear params per token), attention (QK^T and PV: 4 x heads x head_dim per attended key, causal, windows
    respected) and the lm_head for `logits_positions` positions (prefill and decode ask for the last one only).
    Norms, RoPE and activations are left out (<1%)."""
    c = sizes.param_counts(d).active()  # a MoE token runs its k experts (and the shared ones) only
    linear = 2 * c.linear * tokens
    qdim = d.heads * d.head_dim
    attn = 0
    for sliding in d.sliding:
        w = d.sliding_window if sliding else None
        attn += 4 * qdim * (_causal_keys(start + tokens, w) - _causal_keys(start, w))
    return linear + attn + 2 * d.vocab * d.hidden * logits_positions


def decode_flops(d: sizes.Dims, context: int) -> int:
    """FLOPs of one decode step whose query attends to `context` positions (itself included)."""
    return prefill_flops(d, 1, start=context - 1)


def summarize(samples: list[float]) -> dict:
    """Median, min, max and spread = (max - min) / median over the repeats."""
    if not samples:
        return {"median": None, "min": None, "max": None, "spread": None, "samples": []}
    med = statistics.median(samples)
    return {"median": med, "min": min(samples), "max": max(samples),
            "spread": (max(samples) - min(samples)) / med if med else 0.0, "samples": list(samples)}


def noisy(stat: dict | None, limit: float = NOISY_SPREAD) -> bool:
    """Whether a STAT (summarize's) spreads more than `limit`: other work, frequency scaling or swapping moved the
    repeats, not the model. One sample has no spread, so it is never noisy."""
    if not isinstance(stat, dict) or len(stat.get("samples") or []) < 2:
        return False
    spread = stat.get("spread")
    return isinstance(spread, (int, float)) and spread > limit


# ---- 2. the machine -------------------------------------------------------------------------------------------------
def measure_bandwidth(device: str = "cpu", nbytes: int = PROBE_BYTES, repeats: int = PROBE_REPEATS) -> dict:
    """Read bandwidth: float32 `torch.sum` over an `nbytes` buffer, best of `repeats` (noise only slows it down).
    Uses the threads torch is set to (bandwidth with one core is about half that with two)."""
    import torch

    dev = torch.device(device)
    buf = torch.ones(nbytes // 4, dtype=torch.float32, device=dev)  # written once: every page is resident
    best = float("inf")
    for _ in range(repeats + 1):  # the first read is a warm-up
        _sync(dev)
        t = time.perf_counter()
        s = buf.sum()
        _sync(dev)
        best = min(best, time.perf_counter() - t)
        del s
    del buf
    return {"bytes_per_s": nbytes / best, "method": f"float32 torch.sum over {nbytes >> 20} MiB, best of {repeats}",
            "buffer_bytes": nbytes, "repeats": repeats}


def device_peak_bandwidth(device: str) -> float | None:
    """A CUDA device's datasheet memory bandwidth (double data rate x bus width x memory clock); None elsewhere."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(torch.device(device))
    clock_khz, bus_bits = getattr(p, "memory_clock_rate", 0), getattr(p, "memory_bus_width", 0)
    return 2 * bus_bits / 8 * clock_khz * 1000 if clock_khz and bus_bits else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(with_torch: bool = True) -> dict:
    """Package versions for the record. torch's build (and its CUDA) is read only with_torch: a remote bench never
    imports torch."""
    from importlib import metadata

    from cohere_cli import __version__

    def ver(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    out = {"cohere_cli": __version__, "torch": ver("torch"), "bitsandbytes": ver("bitsandbytes"), "cuda": None,
           "python": platform.python_version(), "platform": platform.platform()}
    if with_torch:
        import torch

        out.update(torch=torch.__version__, cuda=torch.version.cuda)
    return out


def _sync(dev) -> None:
    if dev.type == "cuda":
        import torch

        torch.cuda.synchronize(dev)
