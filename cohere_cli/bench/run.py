"""`cohere bench`: what a model does on this machine, and how close that is to what the machine allows.

`run_bench` plans where each precision comes from (the checkpoint, a store entry quantized from it, its float parent,
or quantization in memory), probes the memory bandwidth (cohere_cli/bench/roofline.py), runs one child process per
precision (commands/bench_child.py running bench/child.py: a fresh process so each reports its own peak memory), and assembles one
self-describing record: per precision the child's medians and spread over the repeats, plus what they mean against
the roofline (decode as a fraction of bandwidth / bytes per token, prefill as FLOP/s). cohere_cli/commands/bench.py
prints it. Nothing here imports torch, so planning stays cheap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from cohere_cli.store import sizes
from cohere_cli.errors import CohereError, UsageError
from cohere_cli.bench.roofline import (PROBE_BYTES, cpu_name, decode_flops, device_peak_bandwidth, kv_read_per_token,
                                 measure_bandwidth, noisy, prefill_flops, roofline_tokens_per_s, summarize, versions,
                                 weights_read_per_token)
SCHEMA = "cohere-cli.bench/1"
FLOAT_PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
QUANT_PRECISIONS = ("int8", "nf4", "fp4")
ALL_PRECISIONS = (*FLOAT_PRECISIONS, *QUANT_PRECISIONS)
DEFAULT_PRECISIONS = ("bf16", "int8", "nf4")
SHORT_PREFILL = 512
# the figures of a result measured over the repeats (each a STAT: median, min, max, spread, samples)
TIMED = ("prefill_512_tokens_per_s", "prefill_seq_tokens_per_s", "ttft_s", "decode_tokens_per_s")
# environment variables that change CPU speed (recorded when set): thread pools and how idle threads wait
ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "KMP_BLOCKTIME",
            "CUDA_VISIBLE_DEVICES")


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
        entry = store.get_entry(parent) if isinstance(parent, str) else None
        demo = _builtin_parent(parent) if entry is None else None
        float_folder = entry.path if entry else demo
        float_name = entry.name if entry else store.DEMO if demo else None
        if entry or demo:
            float_own = (entry.manifest.get("precision") if entry else None) or "bf16"
    elif folder.resolve() == store.BUILTIN_DEMO.resolve():
        float_name = store.DEMO
    derived = {}
    if float_name:
        names = {float_name, str(float_folder.absolute())}  # older quantizations recorded a folder's path
        for e in store.list_entries():
            if e.manifest.get("parent") in names and e.manifest.get("precision"):
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
            how = "int8 (LLM.int8, threshold 6)" if p == "int8" else f"{p} (blocksize 64, double quantization)"
            plans.append(Plan(p, str(float_folder), "quantize", "auto",
                              f"quantized in memory from {float_own}: bitsandbytes {how}"))
    return plans


def _builtin_parent(parent) -> Path | None:
    """The built-in demo when a manifest's parent names it: `demo`, or its path as quantize wrote it before."""
    from cohere_cli import store

    demo = store.builtin_entry(store.DEMO)
    if demo is None or not isinstance(parent, str):
        return None
    return demo if parent == store.DEMO or parent == str(demo.absolute()) else None


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
    from cohere_cli.config import read_config_json
    from cohere_cli.errors import CheckpointError

    raw = read_config_json(folder)
    try:
        return raw, sizes.Dims.from_config(raw)
    except ValueError as e:
        raise CheckpointError(f"{Path(folder) / 'config.json'}: {e}") from None


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
        root = str(Path(__file__).resolve().parents[2])  # the folder that holds cohere_cli/
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "cohere_cli.commands.bench_child", str(job_path), str(res_path)]
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
    prec, seq, short = raw_child["precision"], settings["seq"], settings["prefill_short"]
    kv_elem = raw_child["kv_bytes_per_element"]
    ctx = settings["decode_mean_context"]
    w_read = weights_read_per_token(d, prec, int8_head=raw_child["head"] == "int8") - raw_child["coded_bytes_saved"]
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
        "head": raw_child["head"],
        "native_kernels": raw_child["native_kernels"],
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


def noisy_figures(record: dict) -> list[tuple[str, str]]:
    """(precision, figure) of each timed figure whose repeats spread too much to trust its median
    (roofline.noisy): the machine was busy. Empty with --repeat 1 (one sample has no spread)."""
    return [(r.get("precision"), k) for r in record.get("results") or [] if isinstance(r, dict)
            for k in TIMED if noisy(r.get(k))]


def _prefill_chunk() -> int:
    from cohere_cli.engine.generate import PREFILL_CHUNK

    return PREFILL_CHUNK
