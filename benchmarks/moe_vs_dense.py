"""A cohere2_moe model against a dense cohere2 model with the same active parameters, in one process and one run.

    python benchmarks/moe_vs_dense.py [--threads 2] [--rounds 3] [--gen 64] [--prompt 512] [--no-peak] [--cache DIR]

1. Builds (once, into --cache, default ~/.cache/cohere-cli-bench) two synthetic checkpoints in bf16, written by
   transformers from its random init:
     moe:   North-shaped, scaled to a 2-core machine: hidden 1024, 12 layers, 16 heads / 4 KV heads (head_dim 64),
            32 experts of intermediate 512, top-4 (softmax), one dense prefix layer (intermediate 2048), RMSNorm,
            sliding window 4096 on 3 of 4 layers, vocab 256000, tied embeddings (~0.85B parameters, ~0.3B active);
     dense: the same attention, norm and vocabulary with a SwiGLU of intermediate 2048 = 4 x 512 in every layer:
            the parameters the MoE model reads per token.
2. Loads ours: moe bf16, moe nf4 (quantized in memory with cohere_cli.weights.quant, as `cohere bench` does), dense
   bf16.
3. Per round, each engine once (order rotating between rounds; ratios are taken within a round, then the median):
   a --prompt (512) token prompt, then --gen greedy tokens; prefill tokens/s = prompt / time to first token, decode
   tokens/s = (gen - 1) / time from the first to the last token.
4. Peak memory (unless --no-peak): one subprocess per engine loads it and runs three different prompts (new
   expert row counts in each prefill); the peak RSS while running
   against the checkpoint's bytes in its compute dtype (and the RSS of a bare `import torch, cohere_cli` process,
   which is not the model's).
Targets (issue 17): decode moe bf16 >= 0.7x dense bf16; decode moe nf4 >= 1.8x moe bf16; prefill moe >= 0.5x
dense; peak while decoding <= 1.1x the checkpoint's bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

COMMON = dict(vocab_size=256000, hidden_size=1024, num_hidden_layers=12, num_attention_heads=16,
              num_key_value_heads=4, max_position_embeddings=8192, sliding_window=4096, tie_word_embeddings=True,
              bos_token_id=5, eos_token_id=6, pad_token_id=0)
MOE = dict(intermediate_size=512, num_experts=32, num_experts_per_tok=4, first_k_dense_replace=1,
           prefix_dense_intermediate_size=2048, rms_norm_eps=1e-5, head_dim=64)
DENSE = dict(intermediate_size=2048)
TARGETS = {"decode moe bf16 / dense bf16": 0.7, "decode moe nf4 / moe bf16": 1.8, "prefill moe / dense": 0.5}
ENGINES = ("moe:bf16", "moe:nf4", "dense:bf16")


def build(cache: Path, kind: str) -> Path:
    folder = cache / f"north-shaped-{kind}-bf16"
    if (folder / ".complete").is_file():
        return folder
    import torch
    from transformers import Cohere2Config, Cohere2ForCausalLM, Cohere2MoeConfig, Cohere2MoeForCausalLM

    print(f"building the {kind} checkpoint in {folder} (once)", file=sys.stderr)
    tmp = folder.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    if kind == "moe":
        model = Cohere2MoeForCausalLM(Cohere2MoeConfig(**COMMON, **MOE))
    else:
        model = Cohere2ForCausalLM(Cohere2Config(**COMMON, **DENSE))
    model.to(torch.bfloat16).save_pretrained(tmp)
    del model
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def engine(name: str, cache: Path):
    from vs_transformers import Ours

    kind, precision = name.split(":")
    return Ours(build(cache, kind), precision)


def prompt(n: int, seed: int = 0) -> list[int]:
    import torch

    return torch.randint(7, COMMON["vocab_size"], (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def checkpoint_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def peak_worker(name: str, cache: Path, n: int, gen: int, threads: int) -> None:
    import torch

    from cohere_cli.bench import child as bench_child

    torch.set_num_threads(threads)
    e = engine(name, cache)
    bench_child.release_memory()
    bench_child.reset_peak_rss()
    for seed in range(3):  # three different prompts: a MoE's experts see new row counts in each prefill
        e.run(prompt(n, seed), gen)
    status = {k: bench_child._status_kib(k) * 1024 for k in ("RssAnon", "RssFile")}
    print(json.dumps({"engine": name, "peak_rss_run": bench_child.peak_rss_bytes(), **status}))


def bare_rss() -> int:
    code = ("import torch, cohere_cli.weights.checkpoint; from cohere_cli.bench import child as c; "
            "print(c.peak_rss_bytes())")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=ROOT).stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--no-peak", action="store_true")
    ap.add_argument("--cache", type=Path, default=Path(os.path.expanduser("~/.cache/cohere-cli-bench")))
    ap.add_argument("--peak-worker")
    a = ap.parse_args()
    a.cache.mkdir(parents=True, exist_ok=True)
    if a.peak_worker:
        return peak_worker(a.peak_worker, a.cache, a.prompt, a.gen, a.threads)

    import torch

    torch.set_num_threads(a.threads)
    for kind in ("moe", "dense"):
        build(a.cache, kind)
    engines = {name: engine(name, a.cache) for name in ENGINES}
    ids = prompt(a.prompt)
    for e in engines.values():  # warm-up: first calls pay for allocations and kernel selection
        e.run(ids[:64], 4)
    rows: dict[str, list[tuple[float, float]]] = {n: [] for n in ENGINES}
    ratios: dict[str, list[float]] = {k: [] for k in TARGETS}
    for r in range(a.rounds):
        order = ENGINES[r % 3:] + ENGINES[: r % 3]
        got = {}
        for name in order:
            ttft, decode = engines[name].run(ids, a.gen)
            got[name] = (a.prompt / ttft, decode)
            rows[name].append(got[name])
            print(f"  round {r + 1} {name:10s} prefill {got[name][0]:7.1f} tok/s  decode {decode:6.1f} tok/s",
                  file=sys.stderr)
        ratios["decode moe bf16 / dense bf16"].append(got["moe:bf16"][1] / got["dense:bf16"][1])
        ratios["decode moe nf4 / moe bf16"].append(got["moe:nf4"][1] / got["moe:bf16"][1])
        ratios["prefill moe / dense"].append(got["moe:bf16"][0] / got["dense:bf16"][0])

    print(f"\n{a.threads} threads, {a.prompt}-token prompt, {a.gen} generated, medians of {a.rounds} rounds")
    print("| engine | prefill tok/s | decode tok/s |\n|---|---|---|")
    for name in ENGINES:
        print(f"| {name} | {statistics.median(p for p, _ in rows[name]):.1f} | "
              f"{statistics.median(d for _, d in rows[name]):.1f} |")
    print("\n| ratio (median of within-round ratios) | got | target |\n|---|---|---|")
    for k, target in TARGETS.items():
        got = statistics.median(ratios[k])
        print(f"| {k} | {got:.2f}x | >= {target}x {'ok' if got >= target else 'MISSED'} |")
    if a.no_peak:
        return
    del engines
    base = bare_rss()
    print("\n| engine | peak RSS decoding | checkpoint bytes (compute dtype) | ratio | ratio without the bare process "
          "| anonymous memory after the runs / checkpoint |")
    print("|---|---|---|---|---|---|")
    for name in ("moe:bf16", "dense:bf16"):
        p = subprocess.run([sys.executable, __file__, "--peak-worker", name, "--cache", str(a.cache), "--threads",
                            str(a.threads), "--prompt", str(a.prompt), "--gen", "16"], capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stderr[-2000:], file=sys.stderr)
            continue
        rec = json.loads(p.stdout.strip().splitlines()[-1])
        peak, ck = rec["peak_rss_run"], checkpoint_bytes(build(a.cache, name.split(":")[0]))
        print(f"| {name} | {peak / 1e9:.2f} GB | {ck / 1e9:.2f} GB | {peak / ck:.2f}x | {(peak - base) / ck:.2f}x "
              f"| {rec['RssAnon'] / ck:.2f}x (+{rec['RssFile'] / 1e6:.0f} MB of mapped files: libraries' code) |")
    print(f"(a bare `import torch, cohere_cli` process: {base / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
