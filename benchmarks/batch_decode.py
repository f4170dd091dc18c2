"""Aggregate decode throughput of continuous batching (engine/batch.py) against one stream, in one process and one run.

    python benchmarks/batch_decode.py [--threads 2] [--rounds 3] [--prompt 128] [--gen 64] [--conc 1,2,4,8]
                                      [--cache DIR]

On the 213M bf16 checkpoint of benchmarks/vs_transformers.py (built there once, into --cache). Per round, in a
rotating order: stream_generate on one prompt (the unbatched baseline, decode tokens/s as vs_transformers times
it: (gen-1) / first-to-last token), and for each concurrency c, BatchEngine with c requests added at once (c
different prompts): aggregate decode tokens/s = tokens emitted by the steps after the first (the first step
admits and prefills every request) / their time. Ratios against the baseline are taken within a round (the machine
is shared: noise hits each alike), then the median over rounds. Target (issue 20): >= 2.5x at concurrency 4.

Token identity: every stream's greedy tokens at every concurrency must equal stream_generate's for its prompt.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from vs_transformers import build_checkpoint, prompt  # noqa: E402

TARGET = 2.5  # at concurrency 4


def unbatched(model, ids: list[int], gen: int) -> tuple[list[int], float]:
    """stream_generate's greedy tokens and decode tokens/s."""
    from cohere_cli.bench.child import NullTokenizer
    from cohere_cli.engine.generate import stream_generate
    from cohere_cli.engine.sampling import SamplingParams

    tokens, stamps = [], []
    for r in stream_generate(model, NullTokenizer(), ids, SamplingParams(), gen, stop_ids=set(),
                             context=len(ids) + gen + 1):
        if r.token is not None:
            tokens.append(r.token)
            stamps.append(time.perf_counter())
    return tokens, (gen - 1) / (stamps[-1] - stamps[0])


def batched(engine, prompts: list[list[int]], gen: int) -> tuple[list[list[int]], float]:
    """Each request's tokens and the aggregate decode tokens/s of the steps after the admitting one. Every
    request prefills its whole prompt: the slots forget what they hold (a prompt seen before would otherwise
    prefill one token, the last, as a conversation's next turn does, with other roundings than a fresh run)."""
    from cohere_cli.engine.sampling import SamplingParams

    for slot in engine.slots:
        if slot.session is not None:
            slot.session.reset()
    order = {engine.add(p, SamplingParams(), gen, stop_ids=set()): i for i, p in enumerate(prompts)}
    tokens: list[list[int]] = [[] for _ in prompts]

    def collect(responses) -> int:
        n = 0
        for sid, r in responses:
            if r.token is not None:
                tokens[order[sid]].append(r.token)
                n += 1
        return n

    collect(engine.step())  # admits and prefills all, then the first decode
    t0, n = time.perf_counter(), 0
    while engine.busy():
        n += collect(engine.step())
    return tokens, n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--conc", default="1,2,4,8")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "cohere-cli-bench")
    a = ap.parse_args()

    import torch

    from cohere_cli.bench.child import NullTokenizer
    from cohere_cli.engine.batch import BatchEngine
    from cohere_cli.weights.checkpoint import load_model

    torch.set_num_threads(a.threads)
    folder = build_checkpoint(a.cache)
    model = load_model(folder, dtype="bfloat16").model
    concs = [int(c) for c in a.conc.split(",")]
    prompts = [prompt(a.prompt, seed=i) for i in range(max(concs))]
    engine = BatchEngine(model, NullTokenizer(), max_batch=max(concs), context=a.prompt + a.gen + 1)

    refs = [unbatched(model, p, a.gen)[0] for p in prompts]  # also the warm-up
    batched(engine, prompts, 4)  # probes the linears once, warms every slot's cache
    configs = ["stream"] + [f"batch{c}" for c in concs]
    tps: dict[str, list[float]] = {c: [] for c in configs}
    ratios: dict[str, list[float]] = {c: [] for c in configs[1:]}
    mismatches: list[str] = []
    for rnd in range(a.rounds):
        got = {}
        for cfg in configs[rnd % len(configs):] + configs[: rnd % len(configs)]:
            if cfg == "stream":
                toks, got[cfg] = unbatched(model, prompts[0], a.gen)
                if toks != refs[0]:
                    mismatches.append(f"round {rnd}: stream_generate is not deterministic")
                continue
            c = int(cfg[5:])
            streams, got[cfg] = batched(engine, prompts[:c], a.gen)
            for i, toks in enumerate(streams):
                if toks != refs[i]:
                    first = next((j for j, (x, y) in enumerate(zip(toks, refs[i])) if x != y), len(toks))
                    mismatches.append(f"round {rnd}, concurrency {c}, stream {i}: differs from token {first}")
        for cfg, v in got.items():
            tps[cfg].append(v)
            if cfg != "stream":
                ratios[cfg].append(v / got["stream"])
        print(f"round {rnd + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in got.items()), file=sys.stderr)

    print(f"\n213M bf16, {a.threads} threads, prompt {a.prompt}, {a.gen} greedy tokens per stream, "
          f"{a.rounds} rounds (median)")
    print(f"{'engine':<28}{'aggregate decode tok/s':>24}{'vs stream_generate':>20}")
    print(f"{'stream_generate, 1 stream':<28}{statistics.median(tps['stream']):>24.1f}{'1.00x':>20}")
    for c in concs:
        r = statistics.median(ratios[f"batch{c}"])
        mark = f"  (target >= {TARGET}x: {'met' if r >= TARGET else 'NOT met'})" if c == 4 else ""
        print(f"{f'BatchEngine, {c} streams':<28}{statistics.median(tps[f'batch{c}']):>24.1f}{r:>19.2f}x{mark}")
    exact = engine.forward.lin.known.values()
    print(f"\nlinears batched: {sum(exact)} of {len(exact)} (the others row by row: one-row kernel differs)")
    if mismatches:
        print("token identity: FAILED\n  " + "\n  ".join(mismatches))
        sys.exit(1)
    print(f"token identity: every stream at every concurrency equals its stream_generate greedy run "
          f"({sum(concs) * a.rounds} streams)")


if __name__ == "__main__":
    main()
