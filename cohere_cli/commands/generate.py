"""`cohere generate MODEL PROMPT`: raw completion, BOS added, no chat template."""

from __future__ import annotations

from cohere_cli.commands.stream import run_and_print
from cohere_cli.runtime import load_runtime
from cohere_cli.sampling import SamplingParams


def run_generate(model: str, prompt: str, params: SamplingParams, *, max_tokens: int, dtype: str,
                 json_out: bool) -> None:
    rt = load_runtime(model, dtype)
    ids = rt.tokenizer.encode(prompt, add_bos=True)
    run_and_print(rt, ids, params, max_tokens, json_out)
