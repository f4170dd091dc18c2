"""`cohere bench`: what a model does on this machine, and how close that is to what the machine allows.

Three parts, top to bottom:

1. The limit, as pure arithmetic (no torch): bytes a decode step must read (weights + the KV cache it attends to,
   from cohere_cli.sizes), the bandwidth roofline that gives (tokens/s <= bandwidth / bytes per token), and the
   FLOPs of a prefill (linears, causal attention, the last position's logits). Unit-tested in tests/test_bench.py.
2. The machine: a memory-bandwidth probe (a float32 `sum` over a buffer far larger than the last-level cache, 1 GiB
   by default, best of several reads: an achievable read bandwidth, not the datasheet figure) and, on CUDA, the
   device's peak from its memory clock and bus width.
3. The measurement, one precision per child process (`python -m cohere_cli.bench JOB RESULT`): the peak resident
   set is process-wide and only ever grows, so each precision gets a fresh process and reports its own peak
   (the high-water mark is reset after loading, so the figure is what running takes: weights + KV cache +
   activations; the peak including loading is reported beside it). The child loads the checkpoint (or quantizes a
   float one in memory when the store has no entry at that precision), warms up, then `repeat` times:
     - prefill 512 tokens (`generate.prefill` into the session's preallocated KV cache);
     - prefill `seq` tokens, argmax of the last logits: prefill tokens/s at seq and time to first token;
     - decode through `generate.stream_generate` itself (what `cohere generate` runs) with the session rewound to
       seq - gen - 1 (it keeps the cache of the seq-token prefill): one prompt token is re-run, then gen - 1 decode
       steps at positions seq-gen .. seq-2, i.e. at a context of ~seq tokens, even when seq is the model's whole
       context, and without a second prefill.
   Medians and spread ((max - min) / median) over the repeats go back to the parent as JSON.

`run_bench` (the parent side) plans the precisions, probes the bandwidth, runs the children and assembles one
self-describing record; cohere_cli/commands/bench.py prints it. This module imports torch only inside functions
that need it, so planning and the arithmetic stay cheap.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cohere_cli import sizes
from cohere_cli.errors import CohereError, UsageError

SCHEMA = "cohere-cli.bench/1"
FLOAT_PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
QUANT_PRECISIONS = ("int8", "nf4", "fp4")
ALL_PRECISIONS = (*FLOAT_PRECISIONS, *QUANT_PRECISIONS)
DEFAULT_PRECISIONS = ("bf16", "int8", "nf4")
SHORT_PREFILL = 512
PROBE_BYTES = 1 << 30  # >> any CPU's last-level cache (32 MiB on the dev machine, 300 MiB on some Xeons)
PROBE_REPEATS = 5
# environment variables that change CPU speed (recorded when set): thread pools and how idle threads wait
ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "KMP_BLOCKTIME",
            "CUDA_VISIBLE_DEVICES")


# ---- 1. the limit: pure arithmetic ----------------------------------------------------------------------------------
def weights_read_per_token(d: sizes.Dims, precision: str) -> int:
    """Bytes of weights one decode step reads at `precision`: every linear (attention, MLP, lm_head) once. With tied
    embeddings the table is read as lm_head; an untied input embedding contributes one row only."""
    total = sizes.weights_bytes(d, precision)
    if not d.tied:
        elem = 4 if precision == "fp32" else 2  # embeddings stay 16-bit under bitsandbytes
        total -= (d.vocab - 1) * d.hidden * elem
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
    c = sizes.param_counts(d)
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


# ---- peak memory (in the child) -------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def reset_peak_rss() -> bool:
    """Lower the resident-set high-water mark to the current RSS (Linux >= 4.0: clear_refs 5). False if we can't."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Return freed heap to the OS, so the run's peak is not inflated by what loading left behind."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---- quantizing a loaded model in memory ----------------------------------------------------------------------------
def quantize_in_memory(model, precision: str, folder: Path | None = None) -> int:
    """Replace every linear `cohere quantize` would quantize by the module a quantized checkpoint loads into
    (cohere_cli.quant), with the same defaults (nf4/fp4: blocksize 64, double quantization; int8: threshold 6),
    one layer at a time so the float weights are freed as we go; then fuses and packs as load_model does (with
    the checkpoint `folder`, a tied head is packed and the embedding read from the file, as load_model does).
    `model` comes from load_model(..., inference=False). Returns the number of linears replaced."""
    from cohere_cli import qlinear, quant

    spec = quant.QuantSpec(bits=8) if precision == "int8" else quant.QuantSpec(bits=4, quant_type=precision)
    spec.validate()
    if any(getattr(m, k, None) is not None for m in model.modules() for k in ("in_proj", "qkv_proj", "gate_up_proj")):
        raise ValueError("quantize_in_memory needs the checkpoint's own layout: load_model(..., inference=False)")
    n = 0
    for name in [name for name, _ in model.named_modules() if spec.wants(name)]:
        mod = model.get_submodule(name)
        w = mod.weight.detach()
        stored = quant.quantize_weight(w, spec)
        bias = None if mod.bias is None else mod.bias.detach()
        if spec.bits == 4:
            new = qlinear.QuantLinear4bit.from_stored(stored, mod.in_features, mod.out_features, bias, w.device)
        else:
            new = qlinear.QuantLinear8bit.from_stored(stored, mod.in_features, mod.out_features, bias, spec.threshold,
                                                    w.device)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, new)
        del w, stored, mod
        n += 1
    emb = None
    w = model.model.embed_tokens.weight
    if folder is not None and w.device.type == "cpu" and model.lm_head.weight is w:
        from cohere_cli.checkpoint import mapped_tensor, weight_files

        emb = mapped_tensor(weight_files(Path(folder)), "model.embed_tokens.weight", w.dtype)
    model.fuse().pack(embedding=emb)  # the inference layout load_model gives a quantized checkpoint
    return n


def module_bytes(model) -> int:
    """Bytes of every parameter and buffer, each storage counted once (tied weights, shared views), except an
    embedding read from the checkpoint file (model.pack(embedding=...)): only the rows of tokens seen are ever in
    memory, and its packed copy, the head, is counted."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if getattr(t, "file_backed", False):
            continue
        if t.is_mkldnn:  # a packed weight (model.pack_weight): its own opaque memory, never shared
            total += t.numel() * t.element_size()
            continue
        key = (t.device, t.untyped_storage().data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


# ---- 3. the measurement (runs in a child process) ------------------------------------------------------------------
class _NullDecoder:
    def step(self, token: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


class NullTokenizer:
    """What stream_generate needs from a tokenizer when only speed matters: no text, no stop tokens."""

    vocab_size = None
    stop_ids: set[int] = set()

    def stream_decoder(self):
        return _NullDecoder()


def _say(msg: str) -> None:
    from cohere_cli.console import info

    info(msg)


def measure(job: dict) -> dict:
    """One precision, in this process: load (or quantize), warm up, repeat; raw figures for the parent."""
    import torch

    from cohere_cli.checkpoint import load_model
    from cohere_cli.generate import Session, prefill, stream_generate
    from cohere_cli.sampling import SamplingParams

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    dev = torch.device(job["device"])
    prec, seq, gen, short, repeat = job["precision"], job["seq"], job["gen"], job["short"], job["repeat"]

    t0 = time.perf_counter()
    loaded = load_model(Path(job["folder"]), dtype=job["dtype"], device=dev, inference=job["mode"] != "quantize")
    model = loaded.model
    replaced = 0
    if job["mode"] == "quantize":
        replaced = quantize_in_memory(model, prec, Path(job["folder"]))
    load_s = time.perf_counter() - t0
    release_memory()
    load_peak = peak_rss_bytes()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    peak_reset = reset_peak_rss()

    cfg = model.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (seq,), generator=g).to(dev)
    id_list = ids.tolist()
    session = Session(model, max_seq=seq, slack=max(512, gen + 8))
    greedy = SamplingParams(temperature=0.0, seed=0)
    tok = NullTokenizer()

    def timed_prefill(n: int) -> float:
        session.reset()
        _sync(dev)
        t = time.perf_counter()
        with torch.inference_mode():
            logits = prefill(model, ids[:n], session.cache, 0)
            int(torch.argmax(logits))  # the first token: what a user waits for
        dt = time.perf_counter() - t
        session.ids[:] = id_list[:n]
        return dt

    def decode(steps: int) -> float:
        """Rewind the session to seq - steps and generate `steps` tokens: 1 prefilled, steps-1 decoded."""
        session.ids[:] = id_list[:seq]  # what the cache holds after timed_prefill(seq)
        last = None
        for r in stream_generate(model, tok, id_list[: seq - steps], greedy, steps, stop_ids=set(), session=session):
            last = r
        if last.prefilled_tokens != 1:
            raise RuntimeError(f"decode rewind prefilled {last.prefilled_tokens} tokens, 1 expected")
        return last.decode_tokens_per_s

    # warm-up: every shape the timed runs use, once (a chunk of prefill, decode steps at context seq)
    _say(f"{prec}: warm-up")
    timed_prefill(min(short, seq))
    session.ids[:] = id_list[:seq]
    decode(min(gen, 8))

    p_short, p_seq, ttft, dec = [], [], [], []
    for i in range(repeat):
        _say(f"{prec}: run {i + 1}/{repeat}")
        if short < seq:
            p_short.append(short / timed_prefill(short))
        dt = timed_prefill(seq)
        p_seq.append(seq / dt)
        ttft.append(dt)
        if short >= seq:
            p_short.append(p_seq[-1])
        dec.append(decode(gen))

    out = {
        "precision": prec,
        "compute_dtype": str(loaded.dtype).removeprefix("torch."),
        "kv_bytes_per_element": session.cache.layers[0][0].element_size(),
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "quantized_linears": replaced,
        "model_bytes": module_bytes(model),
        "kv_cache_bytes": session.cache.nbytes(),
        "prefill_short_tokens_per_s": p_short,
        "prefill_seq_tokens_per_s": p_seq,
        "ttft_s": ttft,
        "decode_tokens_per_s": dec,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_with_load_bytes": max(load_peak, peak_rss_bytes()),
        "peak_rss_includes_load": not peak_reset,
        "cuda_allocated_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
        "cuda_reserved_bytes": torch.cuda.max_memory_reserved(dev) if dev.type == "cuda" else None,
    }
    return out


def _worker_main(argv: list[str]) -> int:
    job_path, result_path = argv
    job = json.loads(Path(job_path).read_text())
    try:
        result = measure(job)
    except CohereError as e:
        Path(result_path).write_text(json.dumps({"error": str(e), "exit_code": e.exit_code}))
        return 1
    Path(result_path).write_text(json.dumps(result))
    return 0


# ---- the parent: plan, probe, run, assemble -------------------------------------------------------------------------
@dataclass
class Plan:
    precision: str
    folder: str  # checkpoint the child loads
    mode: str  # "load" or "quantize" (in memory, from the float checkpoint in `folder`)
    dtype: str  # load_model's dtype argument
    source: str  # for humans and the record


def parse_precisions(text: str | None) -> list[str] | None:
    if text is None:
        return None
    out = []
    for p in (x.strip().lower() for x in text.split(",")):
        if not p:
            continue
        p = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16", "int4": "nf4"}.get(p, p)
        if p not in ALL_PRECISIONS:
            raise UsageError(f"--precision {p!r} is not one of {', '.join(ALL_PRECISIONS)}")
        if p not in out:
            out.append(p)
    if not out:
        raise UsageError("--precision is empty: give e.g. bf16,int8,nf4")
    return out


def _own_precision(folder: Path, raw: dict) -> str:
    try:
        storage = sizes.tensor_stats(sizes.checkpoint_files(folder)).storage_dtype
    except (OSError, ValueError):
        storage = None
    return sizes.precision_of(raw, storage) or "bf16"


def plan_precisions(folder: Path, raw: dict, wanted: list[str] | None) -> list[Plan]:
    """Where each precision comes from: the checkpoint itself, a store entry quantized from it (manifest parent),
    its float parent in the store, or quantization in memory. Raises UsageError when a float precision is asked of
    a quantized checkpoint whose parent is not in the store."""
    from cohere_cli import store

    own = _own_precision(folder, raw)
    quantized_ckpt = own not in FLOAT_PRECISIONS
    wanted = wanted or ([own] if quantized_ckpt else list(DEFAULT_PRECISIONS))
    manifest = store.read_manifest(folder) or {}
    float_folder, float_name, float_own = folder, manifest.get("name") or folder.name, own
    if quantized_ckpt:
        parent = manifest.get("parent")
        entry = store.get_entry(parent) if parent else None
        float_folder = entry.path if entry else None
        float_name = entry.name if entry else None
        if entry:
            float_own = entry.manifest.get("precision") or "bf16"
    derived = {}
    if float_name:
        for e in store.list_entries():
            if e.manifest.get("parent") == float_name and e.manifest.get("precision"):
                derived.setdefault(e.manifest["precision"], e)
    plans = []
    for p in wanted:
        if p == own:
            plans.append(Plan(p, str(folder), "load", FLOAT_PRECISIONS.get(p, "auto"), "checkpoint"))
        elif float_folder is None:
            parent = f" ({manifest['parent']})" if manifest.get("parent") else ""
            raise UsageError(f"{p} needs the float checkpoint this {own} one was quantized from, and the store does "
                             f"not hold it{parent}: bench --precision {own}, or bench the float parent")
        elif p in FLOAT_PRECISIONS:
            src = "checkpoint" if float_folder == folder else f"store: {float_name}"
            if p != float_own:
                src += f" ({float_own} converted to {p} at load)"
            plans.append(Plan(p, str(float_folder), "load", FLOAT_PRECISIONS[p], src))
        elif p in derived:
            plans.append(Plan(p, str(derived[p].path), "load", "auto", f"store: {derived[p].name}"))
        else:
            how = "int8 (LLM.int8, threshold 6; weight-only for decode)" if p == "int8" else f"{p} (blocksize 64, double quantization)"
            plans.append(Plan(p, str(float_folder), "quantize", "auto",
                              f"quantized in memory from {float_own}: bitsandbytes {how}"))
    return plans


def _model_info(spec: str, folder: Path, raw: dict, d: sizes.Dims) -> dict:
    from cohere_cli import store

    m = store.read_manifest(folder) or {}
    src = m.get("source") or {}
    return {
        "name": m.get("name") or spec, "path": str(folder), "revision": src.get("commit") or src.get("revision"),
        "parent": m.get("parent"), "architecture": (raw.get("architectures") or [None])[0],
        "model_type": d.model_type, "parameters": sizes.param_counts(d).total, "context": _context(d),
        "hidden": d.hidden, "layers": d.layers, "heads": d.heads, "kv_heads": d.kv_heads, "head_dim": d.head_dim,
        "intermediate": d.intermediate, "vocab": d.vocab, "sliding_window": d.sliding_window,
        "tied_embeddings": d.tied,
    }


def read_dims(folder: Path) -> tuple[dict, sizes.Dims]:
    """config.json and its dimensions, without importing torch (so argument errors come back at once)."""
    from cohere_cli.errors import CheckpointError

    path = Path(folder) / "config.json"
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        return raw, sizes.Dims.from_config(raw)
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a checkpoint: it has no config.json") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def _context(d: sizes.Dims) -> int:
    return int(d.max_position_embeddings or 8192)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device here (use --device cpu)")
    return device


def check_settings(d: sizes.Dims, name: str, seq: int, gen: int, repeat: int) -> None:
    ctx = _context(d)
    if seq > ctx:
        raise UsageError(f"--seq {seq} is larger than {name}'s context ({ctx} tokens): use --seq {ctx} or less")
    if gen < 2:
        raise UsageError("--gen must be at least 2 (one token comes from the prefill, the rest are decode steps)")
    if gen >= seq:
        raise UsageError(f"--gen {gen} must be smaller than --seq {seq}: decode runs at positions seq-gen .. seq-1")
    if repeat < 1:
        raise UsageError("--repeat must be at least 1")


def run_child(job: dict) -> dict:
    """Run measure(job) in a fresh interpreter; its progress goes to our stderr, its result comes back as JSON."""
    with tempfile.TemporaryDirectory(prefix="cohere-bench-") as tmp:
        job_path, res_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        env = os.environ.copy()
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "cohere_cli.bench", str(job_path), str(res_path)]
        try:
            fd = sys.stderr.fileno()
            sys.stderr.flush()
            proc = subprocess.run(cmd, env=env, stdout=fd, stderr=fd, stdin=subprocess.DEVNULL)
        except (AttributeError, OSError, ValueError):  # stderr is not a real file (e.g. under a test runner)
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  stdin=subprocess.DEVNULL)
            sys.stderr.write(proc.stdout)
        if proc.returncode in (-2, 130):
            raise KeyboardInterrupt
        result = json.loads(res_path.read_text()) if res_path.is_file() else None
    if proc.returncode != 0 or result is None:
        if result and "error" in result:
            e = CohereError(result["error"])
            e.exit_code = result.get("exit_code", 1)
            raise e
        raise CohereError(f"the {job['precision']} benchmark process failed (exit {proc.returncode}): see above")
    return result


def derive(raw_child: dict, d: sizes.Dims, settings: dict, bandwidth: float, peak_bw: float | None) -> dict:
    """The record's figures for one precision, from the child's raw samples and the arithmetic above."""
    prec, seq, gen, short = raw_child["precision"], settings["seq"], settings["gen"], settings["prefill_short"]
    kv_elem = raw_child["kv_bytes_per_element"]
    ctx = settings["decode_mean_context"]
    w_read = weights_read_per_token(d, prec)
    kv_read = kv_read_per_token(d, ctx, kv_elem)
    per_tok = w_read + kv_read
    p_short = summarize(raw_child["prefill_short_tokens_per_s"])
    p_seq = summarize(raw_child["prefill_seq_tokens_per_s"])
    dec = summarize(raw_child["decode_tokens_per_s"])
    fl_short, fl_seq = prefill_flops(d, short), prefill_flops(d, seq)
    roof = roofline_tokens_per_s(per_tok, bandwidth)
    return {
        "precision": prec,
        "source": raw_child["source"],
        "compute_dtype": raw_child["compute_dtype"],
        "threads": raw_child["threads"],
        "load_s": raw_child["load_s"],
        "quantized_linears": raw_child["quantized_linears"],
        "model_bytes": raw_child["model_bytes"],
        "kv_cache_bytes": raw_child["kv_cache_bytes"],
        "weights_read_bytes_per_token": w_read,
        "kv_read_bytes_per_token": kv_read,
        "decode_bytes_per_token": per_tok,
        "prefill_512_tokens_per_s": p_short,
        "prefill_seq_tokens_per_s": p_seq,
        "ttft_s": summarize(raw_child["ttft_s"]),
        "decode_tokens_per_s": dec,
        "decode_roofline_tokens_per_s": roof,
        "decode_roofline_fraction": dec["median"] / roof,
        "decode_device_peak_fraction": (dec["median"] * per_tok / peak_bw) if peak_bw else None,
        "prefill_512_flops": fl_short,
        "prefill_seq_flops": fl_seq,
        "prefill_512_flop_per_s": fl_short * p_short["median"] / short,
        "prefill_seq_flop_per_s": fl_seq * p_seq["median"] / seq,
        "decode_flops_per_token": decode_flops(d, ctx),
        "peak_memory": {
            "rss_bytes": raw_child["peak_rss_bytes"],
            "rss_with_load_bytes": raw_child["peak_rss_with_load_bytes"],
            "rss_includes_load": raw_child["peak_rss_includes_load"],
            "cuda_allocated_bytes": raw_child["cuda_allocated_bytes"],
            "cuda_reserved_bytes": raw_child["cuda_reserved_bytes"],
        },
    }


def run_bench(spec: str = "demo", *, seq: int = 8192, gen: int = 128, precisions: list[str] | None = None,
              repeat: int = 3, threads: int | None = None, device: str = "auto", probe_bytes: int | None = None,
              on_plan=None) -> dict:
    """Benchmark `spec` at each precision; return the record (see cohere_cli/commands/bench.py for its schema).
    `on_plan(plans)` is called once the plan is known, before any measurement (to tell the user)."""
    from cohere_cli.store import resolve_model

    folder = resolve_model(spec)
    raw, d = read_dims(folder)
    check_settings(d, spec, seq, gen, repeat)
    plans = plan_precisions(folder, raw, precisions)
    if on_plan:
        on_plan(plans)

    import torch

    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    probe_bytes = probe_bytes or int(os.environ.get("COHERE_BENCH_PROBE_BYTES") or PROBE_BYTES)
    bw = measure_bandwidth(dev, probe_bytes)
    peak_bw = device_peak_bandwidth(dev)
    short = min(SHORT_PREFILL, seq)
    settings = {"seq": seq, "gen": gen, "repeat": repeat, "warmup": 1, "prefill_short": short,
                "precisions": [p.precision for p in plans], "threads": threads, "device": dev,
                "decode_positions": [seq - gen, seq - 2], "decode_mean_context": seq - gen // 2,
                "prefill_chunk": _prefill_chunk()}
    results = []
    for p in plans:
        job = {**asdict(p), "device": dev, "seq": seq, "gen": gen, "short": short, "repeat": repeat,
               "threads": threads}
        child = run_child(job)
        child["source"] = p.source
        results.append(derive(child, d, settings, bw["bytes_per_s"], peak_bw))
    gpu = torch.cuda.get_device_name(torch.device(dev)) if dev.startswith("cuda") else None
    from cohere_cli.store import utc_now

    return {
        "schema": SCHEMA,
        "created_at": utc_now(),
        "versions": versions(),
        "machine": {
            "device": dev, "cpu": cpu_name(), "cpu_count": os.cpu_count(), "gpu": gpu, "threads": threads,
            "memory_bandwidth_bytes_per_s": bw["bytes_per_s"], "bandwidth_probe": bw["method"],
            "device_peak_bandwidth_bytes_per_s": peak_bw,
            "env": {k: os.environ.get(k) for k in ENV_KEYS if os.environ.get(k) is not None},
        },
        "model": _model_info(spec, folder, raw, d),
        "settings": settings,
        "results": results,
    }


def _prefill_chunk() -> int:
    from cohere_cli.generate import PREFILL_CHUNK

    return PREFILL_CHUNK


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
