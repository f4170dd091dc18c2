"""Our prefill and decode against transformers' `generate`, same weights, dtype and threads, in one process and one run.

    python benchmarks/vs_transformers.py [--threads 2] [--rounds 3] [--gen 128] [--long 8192]
                                         [--precisions bf16,int8,nf4] [--no-peak] [--profile] [--cache DIR]

1. Builds (once, into --cache, default ~/.cache/cohere-cli-bench) a synthetic Cohere checkpoint of the issue's
   reference shape: hidden 1024, 16 layers, 16 heads / 4 KV heads, intermediate 2816, vocab 32000, tied embeddings
   (213M parameters, 426 MB in bf16): transformers' CohereForCausalLM with its random init, saved in bf16.
   max_position_embeddings is 16384 so that decoding 128 tokens after an 8192-token prompt stays in context.
2. Loads it into transformers (bf16, sdpa attention) and into cohere_cli (bf16; int8 and nf4 quantized in memory
   with cohere_cli.weights.quant, as `cohere bench` does when the store has no quantized entry).
3. Per round, for each workload, each engine once, the engine order rotating between rounds (the machine is
   shared: noise hits every engine alike, and ratios are taken within a round, then the median over rounds):
     short: a 512-token prompt, then --gen greedy tokens
     long:  a --long (8192) token prompt, then --gen greedy tokens
   timed from the call to the first token (prefill tokens/s = prompt / time to first token: prefill + first
   sampled token, what a user waits for) and from the first to the last token (decode tokens/s = (gen-1) / that).
   transformers runs `model.generate(..., do_sample=False, min_new_tokens=gen)` with a streamer that timestamps
   each token; we run `cohere_cli.engine.generate.stream_generate` (what `cohere generate` runs) with the same timestamps.
4. Peak memory per engine: a fresh subprocess per engine (this script with --peak-worker) loads the model, resets
   the resident-set high-water mark and runs the long workload (8192-token prefill + 16 tokens): the peak RSS of
   running, and of loading + running.
5. Prints a table, the ratios against each target of issue #7, the bandwidth roofline (roofline.measure_bandwidth),
   and with --profile (or --profile-only) torch.profiler tables of our bf16 decode step at context 512 (20 steps)
   plus a cProfile of them, and of one 512-token prefill chunk at the start and at the end of the long prompt.

transformers is a benchmark/test dependency only; cohere_cli itself never imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
             num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=16384)
TARGETS = {  # issue #7, on the 2-core machine with 2 threads
    "decode bf16 vs transformers": 1.5,
    "decode int8 vs our bf16": 1.5,
    "decode nf4 vs our bf16": 2.0,
    "prefill 512 vs transformers": 1.0,
    "prefill long vs transformers": 1.0,
}


# ---- the checkpoint -------------------------------------------------------------------------------------------------
def build_checkpoint(cache: Path) -> Path:
    folder = cache / "cohere-213m-bf16"
    if (folder / ".complete").is_file():
        return folder
    import torch
    from transformers import CohereConfig, CohereForCausalLM

    print(f"building the 213M checkpoint in {folder} (once)", file=sys.stderr)
    tmp = cache / "cohere-213m-bf16.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    cfg = CohereConfig(**SHAPE, tie_word_embeddings=True, bos_token_id=5, eos_token_id=6, pad_token_id=0)
    model = CohereForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(tmp)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# ---- engines --------------------------------------------------------------------------------------------------------
class Ours:
    def __init__(self, folder: Path, precision: str):
        from cohere_cli.bench import run as bench
        from cohere_cli.bench import child as bench_child
        from cohere_cli.weights.checkpoint import load_model

        self.name, self.precision = f"ours {precision}", precision
        dtype = "float32" if precision == "fp32" else "bfloat16"
        self.model = load_model(folder, dtype=dtype, inference=precision not in bench.QUANT_PRECISIONS).model
        if precision in bench.QUANT_PRECISIONS:
            bench_child.quantize_in_memory(self.model, precision, folder)
        bench_child.release_memory()

    def run(self, ids: list[int], gen: int) -> tuple[float, float]:
        """(time to first token, decode tokens/s), timed from the call."""
        from cohere_cli.bench.child import NullTokenizer
        from cohere_cli.engine.generate import Session, stream_generate
        from cohere_cli.engine.sampling import SamplingParams

        stamps = []
        t0 = time.perf_counter()
        session = Session(self.model, max_seq=len(ids) + gen)
        for r in stream_generate(self.model, NullTokenizer(), ids, SamplingParams(temperature=0.0, seed=0), gen,
                                 stop_ids=set(), session=session):
            if r.token is not None:
                stamps.append(time.perf_counter())
        assert len(stamps) == gen, len(stamps)
        return stamps[0] - t0, (gen - 1) / (stamps[-1] - stamps[0])


class Transformers:
    def __init__(self, folder: Path, precision: str = "bf16"):
        import torch
        from transformers import AutoModelForCausalLM

        assert precision == "bf16", "transformers runs bf16 here"
        self.name, self.precision = "transformers bf16", precision
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                                          attn_implementation="sdpa").eval()

    def run(self, ids: list[int], gen: int) -> tuple[float, float]:
        import torch
        from transformers.generation.streamers import BaseStreamer

        stamps = []

        class Stamp(BaseStreamer):
            def __init__(self):
                self.first = True

            def put(self, value):
                if self.first:  # generate() hands over the prompt first
                    self.first = False
                    return
                stamps.append(time.perf_counter())

            def end(self):
                pass

        x = torch.tensor([ids])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=gen, min_new_tokens=gen,
                                      do_sample=False, streamer=Stamp(), pad_token_id=0)
        assert out.shape[1] == len(ids) + gen and len(stamps) == gen, (out.shape, len(stamps))
        return stamps[0] - t0, (gen - 1) / (stamps[-1] - stamps[0])


def make_engine(name: str, folder: Path):
    kind, precision = name.split(":")
    return Ours(folder, precision) if kind == "ours" else Transformers(folder, precision)


def prompt(n: int, seed: int = 0) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(7, SHAPE["vocab_size"], (n,), generator=g).tolist()


# ---- peak memory, one engine per process ----------------------------------------------------------------------------
def peak_worker(engine: str, folder: Path, long: int, threads: int) -> None:
    import torch

    from cohere_cli.bench import child as bench_child

    torch.set_num_threads(threads)
    e = make_engine(engine, folder)
    bench_child.release_memory()
    load_peak = bench_child.peak_rss_bytes()
    after_load = bench_child._status_kib("VmRSS") * 1024
    bench_child.reset_peak_rss()
    e.run(prompt(long), 16)
    run_peak = bench_child.peak_rss_bytes()
    print(json.dumps({"engine": engine, "rss_after_load": after_load, "peak_rss_run": run_peak,
                      "peak_rss_total": max(load_peak, run_peak)}))


def measure_peaks(engines: list[str], folder: Path, long: int, threads: int) -> dict:
    peaks = {}
    for name in engines:
        cmd = [sys.executable, __file__, "--peak-worker", name, "--long", str(long), "--threads", str(threads),
               "--cache", str(folder.parent)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stderr[-3000:], file=sys.stderr)
            continue
        peaks[name] = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"  peak {name}: {peaks[name]['peak_rss_run'] / 1e6:.0f} MB running, "
              f"{peaks[name]['peak_rss_total'] / 1e6:.0f} MB with loading", file=sys.stderr)
    return peaks


# ---- profile --------------------------------------------------------------------------------------------------------
def profile_decode(engine: Ours, context: int = 512, steps: int = 20) -> None:
    import cProfile
    import pstats

    import torch
    from torch.profiler import ProfilerActivity, profile

    from cohere_cli.engine.generate import Session, prefill

    model = engine.model
    s = Session(model, max_seq=context + 2 * steps + 8)
    ids = torch.tensor(prompt(context))
    x = torch.tensor([[11]])
    with torch.inference_mode():
        prefill(model, ids, s.cache, 0)

        def step(i):
            logits = model(x, context + i, s.cache, last_only=True)[0, -1]
            return int(torch.argmax(logits))

        for i in range(5):
            step(i)
        t = time.perf_counter()
        for i in range(steps):
            step(i)
        per = (time.perf_counter() - t) / steps
        print(f"\n== profile: {engine.name} decode step at context {context}: {per * 1000:.2f} ms/step "
              f"({1 / per:.1f} tok/s) without profiling, {torch.get_num_threads()} threads")
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for i in range(steps):
                step(i)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=40))
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=14,
                                                                 max_name_column_width=30, max_shapes_column_width=60))
        pr = cProfile.Profile()
        pr.enable()
        for i in range(steps):
            step(i)
        pr.disable()
    print(f"== cProfile of {steps} decode steps (Python-level: where the interpreter spends it)")
    pstats.Stats(pr).sort_stats("tottime").print_stats(18)


def profile_prefill(engine: Ours, long: int, chunk: int = 512) -> None:
    """One prefill chunk at the start and one at the end of a `long`-token prompt (the cache before it filled)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from cohere_cli.engine.generate import Session

    model = engine.model
    s = Session(model, max_seq=long)
    ids = torch.tensor(prompt(long))
    with torch.inference_mode():
        for start in (0, long - chunk):
            piece = ids[start : start + chunk][None]
            model(piece, start, s.cache, last_only=True)  # warm-up for this shape
            t = time.perf_counter()
            model(piece, start, s.cache, last_only=True)
            dt = time.perf_counter() - t
            print(f"\n== profile: {engine.name} prefill chunk of {chunk} at positions {start}..{start + chunk - 1}: "
                  f"{dt * 1000:.0f} ms ({chunk / dt:.0f} tok/s) without profiling")
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                model(piece, start, s.cache, last_only=True)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


# ---- main -----------------------------------------------------------------------------------------------------------
def fmt_ratio(x: float | None, target: float | None = None, lower_is_better: bool = False) -> str:
    if x is None:
        return "-"
    if target is None:
        return f"{x:.2f}x"
    ok = x <= target if lower_is_better else x >= target
    return f"{x:.2f}x (target {'<' if lower_is_better else '>='} {target:g}x: {'holds' if ok else 'MISSES'})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--short", type=int, default=512)
    ap.add_argument("--long", type=int, default=8192)
    ap.add_argument("--precisions", default="bf16,int8,nf4", help="ours; transformers always runs bf16")
    ap.add_argument("--no-peak", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--no-long", action="store_true", help="skip the long-prompt workload")
    ap.add_argument("--profile", action="store_true", help="profile one bf16 decode step of ours at context 512")
    ap.add_argument("--profile-only", action="store_true", help="only the profile")
    ap.add_argument("--cache", type=Path,
                    default=Path(os.environ.get("COHERE_BENCH_CACHE") or "~/.cache/cohere-cli-bench").expanduser())
    ap.add_argument("--omp-wait", choices=("PASSIVE", "ACTIVE"), default=None,
                    help="set OMP_WAIT_POLICY for both engines (on a shared machine PASSIVE avoids threads spinning "
                         "at barriers while the other core runs someone else's job)")
    ap.add_argument("--peak-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.omp_wait:  # before torch (libgomp) is loaded; the peak subprocesses inherit it
        os.environ["OMP_WAIT_POLICY"] = a.omp_wait

    import torch

    torch.set_num_threads(a.threads)
    a.cache.mkdir(parents=True, exist_ok=True)
    folder = build_checkpoint(a.cache)
    if a.peak_worker:
        return peak_worker(a.peak_worker, folder, a.long, a.threads)

    from cohere_cli.bench import roofline
    from cohere_cli.store import sizes

    precisions = [p.strip() for p in a.precisions.split(",") if p.strip()]
    if a.profile_only:
        e = Ours(folder, "bf16")
        profile_decode(e)
        return profile_prefill(e, a.long)
    names = ["hf:bf16"] + [f"ours:{p}" for p in precisions]
    print(f"loading {', '.join(names)} ({a.threads} threads, torch {torch.__version__})", file=sys.stderr)
    engines = {n: make_engine(n, folder) for n in names}
    bw = roofline.measure_bandwidth("cpu")["bytes_per_s"]
    d = sizes.Dims.from_config(json.loads((folder / "config.json").read_text()))

    workloads = [("short", a.short)] + ([] if a.no_long else [("long", a.long)])
    prompts = {w: prompt(n, seed=i) for i, (w, n) in enumerate(workloads)}
    # warm-up: every engine, both paths (one chunk of prefill, a few decode steps)
    for e in engines.values():
        e.run(prompt(a.short, seed=9), 4)

    res = {(n, w): {"ttft": [], "decode": []} for n in names for w, _ in workloads}
    for r in range(a.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for w, n_tok in workloads:
            for name in order:
                ttft, dec = engines[name].run(prompts[w], a.gen)
                res[(name, w)]["ttft"].append(ttft)
                res[(name, w)]["decode"].append(dec)
                print(f"  round {r + 1}/{a.rounds} {w:5s} {name:18s} prefill {n_tok / ttft:7.1f} tok/s  "
                      f"decode {dec:6.1f} tok/s", file=sys.stderr)

    peaks = {} if a.no_peak else measure_peaks(names, folder, a.long, a.threads)

    def med(xs):
        return statistics.median(xs) if xs else None

    def ratio(num: str, den: str, w: str, what: str, invert: bool = False):
        """Median over rounds of the within-round ratio num/den (for ttft: den/num = speed ratio)."""
        if (num, w) not in res or (den, w) not in res:
            return None
        xs = [(b / a_ if invert else a_ / b) for a_, b in zip(res[(num, w)][what], res[(den, w)][what])]
        return med(xs)

    def best_ratio(num: str, den: str, w: str, what: str, invert: bool = False):
        """Best round against best round (noise from other jobs only ever slows a run down)."""
        if (num, w) not in res or (den, w) not in res:
            return None
        pick = min if invert else max
        a_, b = pick(res[(num, w)][what]), pick(res[(den, w)][what])
        return b / a_ if invert else a_ / b

    # ---- table
    lens = dict(workloads)
    print(f"\n## cohere-cli vs transformers {__import__('transformers').__version__}, 213M Cohere "
          f"(hidden 1024, 16 layers, GQA 16:4, vocab 32000), {a.threads} threads, gen {a.gen}, "
          f"{a.rounds} rounds (medians); memory bandwidth {bw / 1e9:.1f} GB/s (sum over 1 GiB, best of 5); "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}\n")
    cols = ["engine"] + [f"prefill {lens[w]} tok/s" for w, _ in workloads] + \
        [f"decode@{lens[w]} tok/s" for w, _ in workloads] + [f"roofline@{lens[w]}" for w, _ in workloads] + \
        ["peak RSS run / total"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for n in names:
        e = engines[n]
        row = [e.name]
        row += [f"{lens[w] / med(res[(n, w)]['ttft']):.0f}" for w, _ in workloads]
        row += [f"{med(res[(n, w)]['decode']):.1f}" for w, _ in workloads]
        for w, _ in workloads:
            per_tok = roofline.decode_bytes_per_token(d, e.precision, lens[w] + a.gen // 2)
            frac = roofline.roofline_fraction(med(res[(n, w)]["decode"]), per_tok, bw)
            row.append(f"{frac * 100:.0f}% of {roofline.roofline_tokens_per_s(per_tok, bw):.0f}")
        pk = peaks.get(n)
        row.append(f"{pk['peak_rss_run'] / 1e6:.0f} / {pk['peak_rss_total'] / 1e6:.0f} MB" if pk else "-")
        print("| " + " | ".join(row) + " |")

    # ---- ratios and targets
    print("\n## ratios: median over rounds of the within-round ratio (targets are judged on it); and best round vs "
          "best round\n")
    checks = []

    def line(label, x, target=None, lower=False, best=None):
        also = f"; best round vs best round {best:.2f}x" if best is not None else ""
        print(f"- {label}: {fmt_ratio(x, target, lower)}{also}")
        if target is not None and x is not None:
            checks.append((label, x >= target if not lower else x <= target))

    if "ours:bf16" in engines:
        for w, n_tok in workloads:
            line(f"prefill {n_tok}: ours bf16 / transformers", ratio("ours:bf16", "hf:bf16", w, "ttft", invert=True),
                 TARGETS["prefill 512 vs transformers" if w == "short" else "prefill long vs transformers"],
                 best=best_ratio("ours:bf16", "hf:bf16", w, "ttft", invert=True))
        for w, n_tok in workloads:
            line(f"decode@{n_tok}: ours bf16 / transformers", ratio("ours:bf16", "hf:bf16", w, "decode"),
                 TARGETS["decode bf16 vs transformers"] if w == "short" else None,
                 best=best_ratio("ours:bf16", "hf:bf16", w, "decode"))
        for p in ("int8", "nf4"):
            if f"ours:{p}" not in engines:
                continue
            for w, n_tok in workloads:
                line(f"decode@{n_tok}: ours {p} / ours bf16", ratio(f"ours:{p}", "ours:bf16", w, "decode"),
                     TARGETS[f"decode {p} vs our bf16"] if w == "short" else None,
                     best=best_ratio(f"ours:{p}", "ours:bf16", w, "decode"))
            for w, n_tok in workloads:
                line(f"prefill {n_tok}: ours {p} / transformers bf16",
                     ratio(f"ours:{p}", "hf:bf16", w, "ttft", invert=True),
                     best=best_ratio(f"ours:{p}", "hf:bf16", w, "ttft", invert=True))
        if "hf:bf16" in peaks and "ours:bf16" in peaks:
            for p in precisions:
                if f"ours:{p}" in peaks:
                    line(f"peak RSS running prefill {a.long}: ours {p} / transformers bf16",
                         peaks[f"ours:{p}"]["peak_rss_run"] / peaks["hf:bf16"]["peak_rss_run"],
                         1.0 if p == "bf16" else None, lower=True)
    print("\n## targets: " + ", ".join(f"{lbl}: {'holds' if ok else 'MISSES'}" for lbl, ok in checks))
    if a.profile:
        e = engines.get("ours:bf16") or Ours(folder, "bf16")
        profile_decode(e)
        profile_prefill(e, a.long)


if __name__ == "__main__":
    main()
