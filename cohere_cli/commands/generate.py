"""`cohere generate MODEL PROMPT`: raw completion, BOS added, no chat template."""

from __future__ import annotations

from cohere_cli.commands.stream import run_and_print
from cohere_cli.runtime import load_runtime
from cohere_cli.sampling import SamplingParams


def run_generate(model: str | None, prompt: str, params: SamplingParams, *, max_tokens: int, dtype: str,
                 json_out: bool, endpoint=None) -> None:
    if endpoint is not None:  # commands.remote.EndpointOptions: MODEL (optional) only lends its tokenizer
        from cohere_cli.commands.remote import run_remote_generate

        return run_remote_generate(model, prompt, params, max_tokens=max_tokens, json_out=json_out,
                                   endpoint=endpoint)
    rt = load_runtime(model, dtype)
    ids = rt.tokenizer.encode(prompt, add_bos=True)
    run_and_print(rt, ids, params, max_tokens, json_out)
