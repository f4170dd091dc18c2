"""Score the built-in `demo` model: 40 questions it was trained on and 20 paraphrases it never saw; and its use of the
built-in list_models tool.

    python scripts/eval_demo.py              # the packaged model (cohere_cli/data/demo)
    python scripts/eval_demo.py PATH -v      # another checkpoint folder, printing every answer

Each question goes through the real code path (cohere_cli.engine.runtime.load_runtime -> the model's chat template ->
cohere_cli.engine.generate.stream_generate, greedy). An answer is right when it contains the expected command (or flag).
Tool use, scored only for a checkpoint with a tool_use template (trained with `--tool-convs N`), the prompt rendered
with tools=[list_models] and that template as `cohere chat --tools list_models` does: 10 held-out "which models do I
have" paraphrases must give an action that cohere_cli.engine.toolcalls parses to one list_models call; with that call
and a result of 1-5 made-up store entries in the history, the answer must name every entry; help-desk questions with
the tool present must be answered directly (no call) with the right command.
Exits 1 unless the training questions score >= 90% and the held-out paraphrases >= 60%, and, when tool use is scored,
the tool calls >= 80%, the answers from results >= 70% and the direct answers >= 80%. With --write, the scores are
stored in the model folder (eval.json, and TRAINING.md's evaluation section).
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
TOOL_CALL_MIN, TOOL_ANSWER_MIN, TOOL_DIRECT_MIN = 0.80, 0.70, 0.80


def answer(rt, question: str, max_tokens: int, system: str | None = None) -> str:
    from cohere_cli.engine.generate import stream_generate
    from cohere_cli.engine.sampling import SamplingParams

    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    prompt = rt.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
    ids = rt.tokenizer.encode(prompt, add_bos=False)  # the template writes BOS itself
    return "".join(r.text for r in stream_generate(rt.model, rt.tokenizer, ids, SamplingParams(), max_tokens))


def tool_turn(rt, messages: list[dict], max_tokens: int) -> tuple[str, object]:
    """Greedy output for `messages` rendered with tools=[list_models], and the ToolCallParser that read it."""
    from cohere_cli.chat.tools import load_tools
    from cohere_cli.engine.generate import stream_generate
    from cohere_cli.engine.sampling import SamplingParams
    from cohere_cli.engine.toolcalls import FORMAT_COMMAND_R, ToolCallParser, template_messages

    tools = [t.schema for t in load_tools("list_models")]
    prompt = rt.tokenizer.apply_chat_template(template_messages(messages), tools=tools, add_generation_prompt=True)
    ids = rt.tokenizer.encode(prompt, add_bos=False)
    parser = ToolCallParser(FORMAT_COMMAND_R, tools=["list_models"])
    text = ""
    for r in stream_generate(rt.model, rt.tokenizer, ids, SamplingParams(), max_tokens):
        text += r.text
        parser.feed(r.text)
    parser.finish()
    return text, parser


def calls_list_models(parser) -> bool:
    return (not parser.failed and not parser.directly_answer and len(parser.tool_calls) == 1
            and parser.tool_calls[0]["function"]["name"] == "list_models"
            and json.loads(parser.tool_calls[0]["function"]["arguments"]) == {})


def with_result(question: str, entries: list[dict]) -> list[dict]:
    """The conversation as the chat loop holds it after the call: the OpenAI-format call and its result."""
    call = {"id": "call_0", "type": "function", "function": {"name": "list_models", "arguments": "{}"}}
    return [{"role": "user", "content": question}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": demo_data.tool_result(entries)}]


def score_tools(rt, verbose: bool) -> dict[str, list[dict]]:
    cases = demo_data.tool_eval_cases()
    out: dict[str, list[dict]] = {"calls": [], "answers": [], "direct": []}

    def note(kind, row):
        out[kind].append(row)
        if verbose or not row["right"]:
            print(f"[tool {kind}] {'ok  ' if row['right'] else 'MISS'} {row['question']}\n        -> {row['answer']!r}",
                  flush=True)

    for q in cases["calls"]:
        text, parser = tool_turn(rt, [{"role": "user", "content": q}], 64)
        note("calls", {"question": q, "answer": text, "right": calls_list_models(parser)})
    for q, entries in cases["stores"]:
        names = [e["name"] for e in entries]
        text, parser = tool_turn(rt, with_result(q, entries), 160)
        note("answers", {"question": q, "names": names, "answer": text,
                         "right": all(n in text for n in names) and not parser.tool_calls})
    for q, expect in cases["direct"]:
        text, parser = tool_turn(rt, [{"role": "user", "content": q}], 64)
        note("direct", {"question": q, "expect": expect, "answer": text,
                        "right": expect in text and not parser.tool_calls and not parser.failed})
    return out


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
    has_tools = "tool_use" in rt.tokenizer.chat_templates  # trained with --tool-convs N
    tools = score_tools(rt, args.verbose) if has_tools else {}
    tr, hr = sum(r["right"] for r in train), sum(r["right"] for r in held)
    res = {
        "train_right": tr, "train_total": len(train), "train_score": tr / len(train),
        "heldout_right": hr, "heldout_total": len(held), "heldout_score": hr / len(held),
        "dtype": str(rt.loaded.dtype).removeprefix("torch."), "max_tokens": args.max_tokens,
        "seconds": round(time.perf_counter() - t0, 1), "answers": train + held,
        "needs": {"train": TRAIN_MIN, "heldout": HELDOUT_MIN, "tool_call": TOOL_CALL_MIN,
                  "tool_answer": TOOL_ANSWER_MIN, "tool_direct": TOOL_DIRECT_MIN},
    }
    for kind, key in (("calls", "tool_call"), ("answers", "tool_answer"), ("direct", "tool_direct")):
        if has_tools:
            right = sum(r["right"] for r in tools[kind])
            res |= {f"{key}_right": right, f"{key}_total": len(tools[kind]), f"{key}_score": right / len(tools[kind])}
    if has_tools:
        res["tool_answers"] = tools
    print(f"training questions:    {tr}/{len(train)} = {tr / len(train):.0%} (need {TRAIN_MIN:.0%})")
    print(f"held-out paraphrases:  {hr}/{len(held)} = {hr / len(held):.0%} (need {HELDOUT_MIN:.0%})")
    if has_tools:
        for key, label, need, what in (("tool_call", "list_models calls:   ", TOOL_CALL_MIN, "held-out paraphrases"),
                                       ("tool_answer", "answers from results:", TOOL_ANSWER_MIN,
                                        "every name of the result"),
                                       ("tool_direct", "direct answers:      ", TOOL_DIRECT_MIN,
                                        "no call, right command")):
            print(f"{label}  {res[key + '_right']}/{res[key + '_total']} = {res[key + '_score']:.0%} "
                  f"(need {need:.0%}; {what})")
    else:
        print("tool use: not scored (the checkpoint has no tool_use template)")
    print(f"({res['dtype']}, greedy, {res['seconds']}s)")
    if args.write:
        folder = Path(args.model)
        (folder / "eval.json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
        info = folder / "training.json"
        if info.is_file():
            from train_demo import write_training_md

            write_training_md(folder, json.loads(info.read_text()), res)
    ok = res["train_score"] >= TRAIN_MIN and res["heldout_score"] >= HELDOUT_MIN and (not has_tools or (
        res["tool_call_score"] >= TOOL_CALL_MIN and res["tool_answer_score"] >= TOOL_ANSWER_MIN
        and res["tool_direct_score"] >= TOOL_DIRECT_MIN))
    if not ok:
        print("FAIL: the demo must not ship below these scores: improve scripts/demo_data.py or the training and "
              "retrain", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
