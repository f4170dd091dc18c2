"""Printing a generation: text deltas to stdout as they come, stats to stderr; or one JSON object with --json."""

from __future__ import annotations

import json
from typing import Sequence

from cohere_cli.console import err, out_write
from cohere_cli.response import Response
from cohere_cli.runtime import Runtime
from cohere_cli.sampling import SamplingParams


def stats_line(r: Response) -> str:
    return (
        f"{r.prompt_tokens} prompt tokens at {r.prefill_tokens_per_s:.1f} tok/s, "
        f"{r.generation_tokens} generated at {r.decode_tokens_per_s:.1f} tok/s, "
        f"first token {r.ttft_s * 1000:.0f} ms, peak memory {r.peak_memory_bytes / 2**20:.0f} MiB, "
        f"finish: {r.finish_reason}"
    )


def run_and_print(rt: Runtime, prompt_ids: Sequence[int], params: SamplingParams, max_tokens: int,
                  json_out: bool, stop_ids: set[int] | None = None) -> Response:
    from cohere_cli.generate import stream_generate  # torch: only here, where a local model runs

    tokens, text, last = [], [], None
    for r in stream_generate(rt.model, rt.tokenizer, prompt_ids, params, max_tokens, stop_ids=stop_ids):
        if r.token is not None:
            tokens.append(r.token)
        text.append(r.text)
        if not json_out and r.text:
            out_write(r.text)
        last = r
    if json_out:
        record = {
            "prompt_tokens": list(prompt_ids),
            "tokens": tokens,
            "text": "".join(text),
            "finish_reason": last.finish_reason,
            "prefill_tokens_per_s": last.prefill_tokens_per_s,
            "decode_tokens_per_s": last.decode_tokens_per_s,
            "ttft_s": last.ttft_s,
            "peak_memory_bytes": last.peak_memory_bytes,
        }
        print(json.dumps(record, ensure_ascii=False))
    else:
        if not "".join(text).endswith("\n"):
            out_write("\n")  # end the answer's line, on a terminal and in a file alike
        err.print(f"[dim]{stats_line(last)}[/dim]")
    return last
