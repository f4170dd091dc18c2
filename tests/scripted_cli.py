"""`cohere` with the local model's answers scripted, so that a tool loop runs end to end through the real command:

    python tests/scripted_cli.py SCRIPT.json cohere-args...

SCRIPT.json is {"rules": [{"if": [TEXT, ...], "tail": [TEXT, ...], "not": [TEXT, ...], "say": ANSWER}, ...]}: for
each answer the prompt (the real ids the command rendered with the model's real template, decoded) picks the first
rule whose "if" texts are all in it, and whose "tail" texts are all, "not" texts none, in its part from the last
user message on; ANSWER is encoded with the checkpoint's real tokenizer and
streamed one token at a time as `Response`s, control tokens (cmd3's <|START_ACTION|> ...) as their ids, exactly as
engine.generate.stream_generate yields them. No rule: an answer saying so. Every prompt is appended to the file
named by $SCRIPTED_PROMPTS (when set), one JSON string a line, for the test to check what was rendered.

Everything else is the real command in the real process: template rendering, fitting, the tool loop, tools, the
REPL, /save. Only the model's forward pass is replaced: a tiny random model cannot be relied on to write a tool call
(see tests/test_toolloop.py for why this rather than an overfit checkpoint)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def scripted(rules: list[dict]):
    from cohere_cli.engine.response import Response

    def stream_generate(model, tokenizer, prompt_ids, params, max_tokens, **kwargs):
        prompt = tokenizer.decode(prompt_ids)
        if os.environ.get("SCRIPTED_PROMPTS"):
            with open(os.environ["SCRIPTED_PROMPTS"], "a", encoding="utf-8") as f:
                f.write(json.dumps(prompt) + "\n")
        tail = prompt.rsplit("<|USER_TOKEN|>", 1)[-1]  # from the last user message on
        say = next((r["say"] for r in rules if all(t in prompt for t in r.get("if", []))
                    and all(t in tail for t in r.get("tail", []))
                    and not any(t in tail for t in r.get("not", []))), "no scripted answer for this prompt")
        ids = tokenizer.encode(say, add_bos=False)[:max_tokens]
        detok = tokenizer.stream_decoder()
        n_prompt = len(prompt_ids)
        for i, token in enumerate(ids, 1):
            yield Response(detok.step(token), token, n_prompt, i, 1000.0, 100.0, 0.01, 0, None, n_prompt)
        yield Response(detok.flush(), None, n_prompt, len(ids), 1000.0, 100.0, 0.01, 0,
                       "length" if len(ids) == max_tokens else "stop", n_prompt)

    return stream_generate


def main() -> None:
    script, *args = sys.argv[1:]
    rules = json.loads(Path(script).read_text(encoding="utf-8"))["rules"]
    from cohere_cli.engine import generate

    generate.stream_generate = scripted(rules)  # callers import it inside their functions: they all get this one
    from cohere_cli.cli import main as cohere

    sys.argv = ["cohere", *args]
    cohere()


if __name__ == "__main__":
    main()
