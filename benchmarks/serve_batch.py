"""Issue 20's acceptance run: `cohere bench --endpoint` against `cohere serve`, and the token identity check through
the server, in one run.

    python benchmarks/serve_batch.py [--concurrency 1,4,8] [--seq 64] [--gen 128] [--streams 8] [--cache DIR]

The model: the 213M bf16 checkpoint of benchmarks/vs_transformers.py (built there once, into --cache) with the demo
model's tokenizer beside it (its vocabulary of 4096 fits the checkpoint's 32000 rows). Steps:
1. `cohere serve` on 127.0.0.1 (an ephemeral port), `--ctx 1024 --max-batch 8`.
2. `cohere bench --endpoint URL --concurrency ... --seq ... --gen ... --json`: aggregate tok/s per concurrency and
   the ratio of concurrency 4 to 1 (target >= 2.5x); any failed request fails the run. The bench client shares the
   machine, and sends the same prompt each time: after a slot's first request the server reuses its cached prompt
   and prefills one token, so TTFT here is a cache hit's (decode, what the ratio is about, is not affected).
3. Identity: --streams prompts (different token ids), greedy, `ignore_eos`, --gen tokens each, through
   /v1/completions: first one at a time, then all at once (batched by the server); every stream's text must equal
   its one-at-a-time text and `stream_generate`'s run of the same ids in this process, on the model as the server
   runs it (weights/packed.batch_invariant; `cohere generate` keeps oneDNN's one-row kernels, which may differ in
   the last bit where K > 1024, so its greedy text can differ at a near tie). "All at once" runs on a freshly started server: sent to the server that already answered
   them, each prompt would reuse the cache its first run left (prefix reuse, for a conversation's next turn) and
   prefill only its last token, which rounds differently from a whole prefill, batch or no batch.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from vs_transformers import build_checkpoint  # noqa: E402

TARGET = 2.5  # aggregate tok/s at concurrency 4 over concurrency 1
DEMO = ROOT / "cohere_cli" / "data" / "demo"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def model_folder(cache: Path) -> Path:
    """The 213M checkpoint's files (hard links where possible) with the demo's tokenizer."""
    src = build_checkpoint(cache)
    dst = cache / "cohere-213m-bf16-demo-tokenizer"
    if not (dst / "model.safetensors").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and f.name not in TOKENIZER_FILES:
                shutil.copy2(f, dst / f.name)
        for name in TOKENIZER_FILES:
            shutil.copy2(DEMO / name, dst / name)
    return dst


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-m", "cohere_cli", "serve", str(folder), "--port", "0", "--ctx", "1024",
                          "--max-batch", "8"], stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        print(line, end="", file=sys.stderr)
        m = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        if m:
            return p, m.group(1)
    raise SystemExit(f"cohere serve ended before listening (exit {p.wait()})")


def complete(url: str, ids: list[int], gen: int) -> str:
    body = json.dumps({"prompt": ids, "max_tokens": gen, "temperature": 0, "ignore_eos": True,
                       "skip_special_tokens": True}).encode()  # the text stream_generate yields
    req = urllib.request.Request(url + "/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    assert out["usage"]["completion_tokens"] == gen, out["usage"]
    return out["choices"][0]["text"]


def local_texts(folder: Path, prompts: list[list[int]], gen: int) -> list[str]:
    import torch

    from cohere_cli.engine.generate import stream_generate
    from cohere_cli.engine.runtime import load_runtime
    from cohere_cli.engine.sampling import SamplingParams
    from cohere_cli.weights.packed import batch_invariant

    torch.set_num_threads(2)
    rt = load_runtime(str(folder), "bfloat16")
    batch_invariant(rt.model)  # as cohere serve runs it: its unbatched path
    texts = []
    for ids in prompts:
        texts.append("".join(r.text for r in stream_generate(rt.model, rt.tokenizer, ids, SamplingParams(), gen,
                                                             stop_ids=set(), context=1024)))
    del rt
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4,8", help="levels for cohere bench; '' to check identity only")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "cohere-cli-bench")
    a = ap.parse_args()

    folder = model_folder(a.cache)
    server, url = start_server(folder)
    try:
        if a.concurrency:
            bench = subprocess.run([sys.executable, "-m", "cohere_cli", "bench", "--endpoint", url, "--concurrency",
                                    a.concurrency, "--seq", str(a.seq), "--gen", str(a.gen), "--json"],
                                   capture_output=True, text=True, timeout=3600)
            if bench.returncode != 0:
                raise SystemExit(f"cohere bench failed: {bench.stderr.strip()[-500:]}")
            results = json.loads(bench.stdout)["results"]
            print(f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'aggregate tok/s':>15} {'vs 1':>6}")
            agg = {x["concurrency"]: x["aggregate_tokens_per_s"] for x in results}
            for x in results:
                ratio = f"{x['aggregate_tokens_per_s'] / agg[1]:.2f}x" if 1 in agg else ""
                print(f"{x['concurrency']:>11} {x['requests']:>8} {x['errors']:>6} "
                      f"{x['aggregate_tokens_per_s']:>15.1f} {ratio:>6}")
            if any(x["errors"] for x in results):
                raise SystemExit("requests failed: the ratios are not comparable")
            if 1 in agg and 4 in agg:
                r = agg[4] / agg[1]
                print(f"aggregate tok/s, concurrency 4 / 1: {r:.2f}x (target >= {TARGET}x: "
                      f"{'met' if r >= TARGET else 'NOT met'})")

        prompts = [[5] + [(97 * i + 31 * j) % 4000 + 8 for j in range(a.seq)] for i in range(a.streams)]
        alone = [complete(url, p, a.gen) for p in prompts]
    finally:
        server.terminate()
        server.wait(60)
    server, url = start_server(folder)  # fresh caches: a prompt seen before would reuse its prefix (see above)
    try:
        with ThreadPoolExecutor(a.streams) as pool:
            together = list(pool.map(lambda p: complete(url, p, a.gen), prompts))
    finally:
        server.terminate()
        server.wait(60)
    local = local_texts(folder, prompts, a.gen)
    bad = [i for i in range(a.streams) if not (alone[i] == together[i] == local[i])]
    if bad:
        for i in bad:
            for name, other in (("served at once", together[i]), ("stream_generate", local[i])):
                if other != alone[i]:
                    at = next((j for j, (x, y) in enumerate(zip(alone[i], other)) if x != y),
                              min(len(alone[i]), len(other)))
                    print(f"stream {i}: served alone and {name} differ from character {at}: "
                          f"{alone[i][at:at + 40]!r} against {other[at:at + 40]!r}")
        print(f"token identity: FAILED for streams {bad}")
        sys.exit(1)
    print(f"token identity: {a.streams} greedy streams of {a.gen} tokens, served one at a time, served "
          f"{a.streams} at once, and stream_generate in this process: the same text, every stream")


if __name__ == "__main__":
    main()
