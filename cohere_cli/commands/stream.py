"""Printing one generation, local or remote: text deltas to stdout as they come and a stats line on stderr, or one
JSON object with --json. The one print loop; what differs between a local model and a server is only what the
record and the stats line say (`Local`, `Remote`).

The --json record names counts as OpenAI's `usage` does (`prompt_tokens`, `completion_tokens`: numbers, what a script
that reads OpenAI, llm or ollama output looks for) and gives the ids beside them (`prompt_ids`, `token_ids`)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

from cohere_cli.engine.response import Response
from cohere_cli.ui.console import err, out_write, shown
from cohere_cli.ui.thinking import ThinkingNote


@dataclass
class Local:
    """A local model: token ids, prefill speed and peak memory are known here."""

    prompt_ids: Sequence[int]

    def record(self, last: Response, text: str, tokens: list[int]) -> dict:
        return {
            "prompt_tokens": len(self.prompt_ids),
            "completion_tokens": len(tokens),
            "prompt_ids": list(self.prompt_ids),
            "token_ids": tokens,
            "text": text,
            "finish_reason": last.finish_reason,
            "prefill_tokens_per_s": last.prefill_tokens_per_s,
            "decode_tokens_per_s": last.decode_tokens_per_s,
            "ttft_s": last.ttft_s,
            "peak_memory_bytes": last.peak_memory_bytes,
        }

    def stats(self, r: Response) -> str:
        return (f"{r.prompt_tokens} prompt tokens at {r.prefill_tokens_per_s:.1f} tok/s, "
                f"{r.generation_tokens} generated at {r.decode_tokens_per_s:.1f} tok/s, "
                f"first token {r.ttft_s * 1000:.0f} ms, peak memory {r.peak_memory_bytes / 2**20:.0f} MiB, "
                f"finish: {r.finish_reason}")


@dataclass
class Remote:
    """A server: it sends text, not ids; prompt ids exist only when rendered here with a local tokenizer."""

    prompt_ids: list[int] | None
    endpoint: str
    model: str | None

    def record(self, last: Response, text: str, tokens: list[int]) -> dict:
        return {
            "endpoint": self.endpoint,
            "model": self.model,
            "prompt_tokens": last.prompt_tokens,  # as the server counted them, else as rendered here
            "completion_tokens": last.generation_tokens,  # the server's count, else the local tokenizer's (or a guess)
            "prompt_ids": self.prompt_ids,  # as rendered here (None without a local tokenizer)
            "token_ids": None,  # the server sends text, not ids
            "text": text,
            "finish_reason": last.finish_reason,
            "prefill_tokens_per_s": last.prefill_tokens_per_s,
            "decode_tokens_per_s": last.decode_tokens_per_s,
            "ttft_s": last.ttft_s,
            "peak_memory_bytes": None,
        }

    def stats(self, r: Response) -> str:
        return (f"{r.prompt_tokens} prompt tokens, {r.generation_tokens} generated at {r.decode_tokens_per_s:.1f} "
                f"tok/s, first token {r.ttft_s * 1000:.0f} ms, finish: {r.finish_reason}")


def print_stream(stream: Iterator[Response], json_out: bool, what: Local | Remote,
                 hide_thinking: bool = False) -> Response:
    """Print the stream; return its closing Response. When it breaks off (a RemoteError), the text that arrived stays
    printed, its line ended on a terminal, and the error propagates (one line at the CLI boundary). The text is kept
    only for --json (its record holds it); printed, only its last character is (was the line ended?). Thinking
    (`Response.thinking`, chat/thinking.py) goes to stderr dimmed, or is counted with `hide_thinking`; --json
    records it as `thinking`, apart from `text`."""
    tokens, text, thinking, tail, last = [], [], [], "", None
    note = ThinkingNote(hide_thinking)
    try:
        for r in stream:
            if r.token is not None:
                tokens.append(r.token)
            if json_out:
                text.append(r.text)
                thinking.append(r.thinking)
            else:
                if note.show(r.thinking):
                    tail = "thinking"
                if r.text:
                    if tail == "thinking":
                        err.print()  # the thinking's line ended: the answer starts apart from it
                    note.close()
                    out_write(r.text)
                    tail = r.text[-1]
            last = r
    except BaseException:
        if not json_out and tail not in ("", "\n") and sys.stdout.isatty():
            out_write("\n")  # the error line starts on a line of its own
        raise
    if json_out:
        # JSON escapes C0 controls, not DEL or C1 (ensure_ascii=False): out_write keeps a terminal safe from those
        record = {**what.record(last, "".join(text), tokens), "thinking": "".join(thinking).strip()}
        out_write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        if tail == "thinking":
            err.print()
            tail = ""
        note.close()
        if tail != "\n":
            out_write("\n")  # end the answer's line, on a terminal and in a file alike
        err.print(f"[dim]{shown(what.stats(last))}[/dim]")  # a server's finish_reason is untrusted
    return last
