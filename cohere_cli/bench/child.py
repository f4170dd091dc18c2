"""One precision of `cohere bench`, measured in a process of its own (`python -m cohere_cli.commands.bench_child
JOB RESULT`): the peak resident set is process-wide and only ever grows, so each precision gets a fresh process and
reports its own peak (the high-water mark is reset after loading, so the figure is what running takes: weights + KV
cache + activations; the peak including loading is reported beside it). The child loads the checkpoint (or quantizes
a float one in memory when the store has no entry at that precision), warms up, then `repeat` times:
  - prefill 512 tokens (`generate.prefill` into the session's preallocated KV cache);
  - prefill `seq` tokens, argmax of the last logits: prefill tokens/s at seq and time to first token;
  - decode through `generate.stream_generate` itself (what `cohere generate` runs) with the session rewound to
    seq - gen - 1 (it keeps the cache of the seq-token prefill): one prompt token is re-run, then gen - 1 decode
    steps at positions seq-gen .. seq-2, i.e. at a context of ~seq tokens, even when seq is the model's whole
    context, and without a second prefill.
Raw samples go back to the parent (cohere_cli/bench/run.py) as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

from cohere_cli.errors import CohereError
from cohere_cli.bench.roofline import _sync
from cohere_cli.weights.memory import trim_heap

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
    trim_heap()


# ---- quantizing a loaded model in memory ----------------------------------------------------------------------------
def quantize_in_memory(model, precision: str, folder: Path | None = None) -> int:
    """Replace every linear `cohere quantize` would quantize by the module a quantized checkpoint loads into
    (cohere_cli.weights.quant), with the same defaults (nf4/fp4: blocksize 64, double quantization; int8: threshold 6; the
    head int8 on CPU),
    one layer at a time so the float weights are freed as we go; then fuses and packs as load_model does (with
    the checkpoint `folder`, a tied head is packed and the embedding read from the file, as load_model does).
    `model` comes from load_model(..., inference=False). Returns the number of linears replaced."""
    from cohere_cli.weights import qlinear
    from cohere_cli.weights import quant

    spec = quant.QuantSpec(bits=8) if precision == "int8" else quant.QuantSpec(bits=4, quant_type=precision)
    spec.validate()
    if any(getattr(m, k, None) is not None for m in model.modules() for k in qlinear.FUSED_NAMES):
        raise ValueError("quantize_in_memory needs the checkpoint's own layout: load_model(..., inference=False)")
    n = 0
    for name in [name for name, _ in model.named_modules() if spec.wants(name)]:
        mod = model.get_submodule(name)
        w = mod.weight.detach()
        stored = quant.quantize_weight(w, spec)
        bias = None if mod.bias is None else mod.bias.detach()
        quant.replace_linear(model, name, stored, spec.bits, bias, spec.threshold, w.device)
        del w, stored, mod
        n += 1
    from cohere_cli.weights.checkpoint import inference_layout, weight_files

    # the layout load_model gives a quantized checkpoint (head included: int8 on CPU, spec.head's default)
    inference_layout(model, weight_files(Path(folder)) if folder is not None else None,
                     int8_head=spec.threshold if spec.head == "int8" else None)
    return n


def module_bytes(model) -> int:
    """Bytes of every parameter and buffer, each storage counted once (tied weights, shared views), and of the
    packed buffers coded linears share per shape (coded.Scratch, with AMX), except an embedding read from the
    checkpoint file (layout.pack(embedding=...)): only the rows of tokens seen are ever in
    memory, and its packed copy, the head, is counted."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if getattr(t, "file_backed", False):
            continue
        if t.is_mkldnn:  # a packed weight (packed.pack_weight): its own opaque memory, never shared
            total += t.numel() * t.element_size()
            continue
        key = (t.device, t.untyped_storage().data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    scratches = {id(s): s for m in model.modules() if (s := getattr(m, "scratch", None)) is not None}
    return total + sum(s.weight.numel() * s.weight.element_size() for s in scratches.values())  # coded.Scratch


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


def measure(job: dict, say: Callable[[str], None] = lambda msg: None) -> dict:
    """One precision, in this process: load (or quantize), warm up, repeat; raw figures for the parent. `say`
    gets a line of progress at each step."""
    import torch

    from cohere_cli.weights.checkpoint import load_model
    from cohere_cli.engine.generate import Session, prefill, stream_generate
    from cohere_cli.weights.qlinear import QuantLinear8bit
    from cohere_cli.engine.sampling import SamplingParams

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
    say(f"{prec}: warm-up")
    timed_prefill(min(short, seq))
    session.ids[:] = id_list[:seq]
    decode(min(gen, 8))

    p_short, p_seq, ttft, dec = [], [], [], []
    for i in range(repeat):
        say(f"{prec}: run {i + 1}/{repeat}")
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
        "head": "int8" if isinstance(model.lm_head, QuantLinear8bit) else "float",
        "native_kernels": native_kernels(model),
        "kv_bytes_per_element": session.cache.layers[0][0].element_size(),
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "quantized_linears": replaced,
        "model_bytes": module_bytes(model),
        "coded_bytes_saved": coded_bytes_saved(model),
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


def coded_bytes_saved(model) -> int:
    """Bytes a decode step does not read because the model's bf16 linears are coded (weights/coded.py): their
    16-bit size less their coded size. The roofline's bytes per token come from the dimensions (bench/sizes)."""
    from cohere_cli.weights.coded import CodedLinear

    return sum(2 * m.coded.n * m.coded.k - m.coded.nbytes for m in model.modules() if type(m) is CodedLinear)


def native_kernels(model) -> list[str]:
    """The cohere_cli.weights.kernels the model's decode step runs here: decode (bf16 on CPU, where it built and
    checkpoint.inference_layout installed it), block_step (decode's whole block in one call), model_step (all
    blocks in one call: layout.FusedDecoder), packed_row (packed bf16 linears, packed.RowKernelLinear), coded_row (bf16 linears coded in 12 bits, coded.CodedLinear),
    gemv_4bit_row (4-bit linears), int8_row (int8 linears)."""
    from cohere_cli.weights import kernels
    from cohere_cli.weights.coded import CodedLinear
    from cohere_cli.weights.packed import RowKernelLinear
    from cohere_cli.weights.qlinear import QuantLinear4bit, QuantLinear8bit

    names = []
    natives = [getattr(layer, "native", None) for layer in model.model.layers]
    if any(n is not None for n in natives):
        names.append("decode")
    if any(getattr(n, "block", None) is not None for n in natives):
        names.append("block_step")
    whole = getattr(model.model, "native", None)
    if whole is not None and getattr(whole.block, "layers_fn", None) is not None:
        names.append("model_step")
    if any(isinstance(m, RowKernelLinear) for m in model.modules()):
        names.append("packed_row")
    if any(isinstance(m, CodedLinear) for m in model.modules()):
        names.append("coded_row")
    if any(isinstance(m, QuantLinear4bit) and m.cpu_kernel for m in model.modules()) and kernels.gemv_4bit_row():
        names.append("gemv_4bit_row")
    if any(isinstance(m, QuantLinear8bit) and m.row_kernel for m in model.modules()) and kernels.int8_row():
        names.append("int8_row")
    return names


def run_job(job_path: Path, result_path: Path, say: Callable[[str], None]) -> int:
    """The child process's work (its entry point is cohere_cli.commands.bench_child): the job from one JSON file,
    the result, or the one-line error, into the other."""
    job = json.loads(job_path.read_text())
    try:
        result = measure(job, say)
    except CohereError as e:
        result_path.write_text(json.dumps({"error": str(e), "exit_code": e.exit_code}))
        return 1
    result_path.write_text(json.dumps(result))
    return 0
