"""Score the built-in `demo` model: 40 questions it was trained on and 20 paraphrases it never saw.

    python scripts/eval_demo.py              # the packaged model (cohere_cli/data/demo)
    python scripts/eval_demo.py PATH -v      # another checkpoint folder, printing every answer

Each question goes through the real code path (cohere_cli.engine.runtime.load_runtime -> the model's chat template ->
cohere_cli.engine.generate.stream_generate, greedy). An answer is right when it contains the expected command (or flag).
Exits 1 unless the training questions score >= 90% and the held-out paraphrases >= 60%. With --write, the scores
are stored in the model folder (eval.json, and TRAINING.md's evaluation section).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import demo_data  # noqa: E402

DEMO = ROOT / "cohere_cli" / "data" / "demo"
TRAIN_MIN, HELDOUT_MIN = 0.90, 0.60


def answer(rt, question: str, max_tokens: int, system: str | None = None) -> str:
    from cohere_cli.engine.generate import stream_generate
    from cohere_cli.engine.sampling import SamplingParams

    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    prompt = rt.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
    ids = rt.tokenizer.encode(prompt, add_bos=False)  # the template writes BOS itself
    return "".join(r.text for r in stream_generate(rt.model, rt.tokenizer, ids, SamplingParams(), max_tokens))


def score(rt, items: list[tuple[str, str]], max_tokens: int, verbose: bool, label: str) -> list[dict]:
    rows = []
    for q, expect in items:
        a = answer(rt, q, max_tokens)
        ok = expect in a
        rows.append({"question": q, "expect": expect, "answer": a, "right": ok})
        if verbose or not ok:
            print(f"[{label}] {'ok  ' if ok else 'MISS'} {q}\n        expect {expect!r}\n        -> {a}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=str(DEMO), help="checkpoint folder (default: the packaged demo)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-v", "--verbose", action="store_true", help="print every answer, not only the misses")
    ap.add_argument("--write", action="store_true", help="store eval.json and update TRAINING.md in the folder")
    args = ap.parse_args()

    import torch

    from cohere_cli.engine.runtime import load_runtime

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rt = load_runtime(args.model, args.dtype)
    train_qs, heldout_qs = demo_data.eval_questions()
    train = score(rt, train_qs, args.max_tokens, args.verbose, "train")
    held = score(rt, heldout_qs, args.max_tokens, args.verbose, "held-out")
    tr, hr = sum(r["right"] for r in train), sum(r["right"] for r in held)
    res = {
        "train_right": tr, "train_total": len(train), "train_score": tr / len(train),
        "heldout_right": hr, "heldout_total": len(held), "heldout_score": hr / len(held),
        "dtype": str(rt.loaded.dtype).removeprefix("torch."), "max_tokens": args.max_tokens,
        "seconds": round(time.perf_counter() - t0, 1), "answers": train + held,
    }
    print(f"training questions:    {tr}/{len(train)} = {tr / len(train):.0%} (need {TRAIN_MIN:.0%})")
    print(f"held-out paraphrases:  {hr}/{len(held)} = {hr / len(held):.0%} (need {HELDOUT_MIN:.0%})")
    print(f"({res['dtype']}, greedy, {res['seconds']}s)")
    if args.write:
        folder = Path(args.model)
        (folder / "eval.json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
        info = folder / "training.json"
        if info.is_file():
            from train_demo import write_training_md

            write_training_md(folder, json.loads(info.read_text()), res)
    ok = res["train_score"] >= TRAIN_MIN and res["heldout_score"] >= HELDOUT_MIN
    if not ok:
        print("FAIL: the demo must not ship below these scores: improve scripts/demo_data.py or the training and "
              "retrain", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
