"""What every generation loop yields, local or remote: one `Response` per step. Its own module, without torch, so
the --endpoint paths (remote.py) never import torch (~1 s of start-up)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Response:
    text: str  # text delta produced by this step ("" while a UTF-8 character is incomplete)
    token: int | None  # the token sampled this step (None on the closing response)
    prompt_tokens: int
    generation_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    ttft_s: float  # time to first token, prefill included
    peak_memory_bytes: int
    finish_reason: str | None = None  # None while running, then "stop" or "length"
    prefilled_tokens: int = 0  # prompt tokens actually run through the model (the rest came from the cache)
    error: str | None = None  # with finish_reason "error": what broke the answer off, one line for the user
    tool_calls: list | None = None  # on a server's closing response: the tool calls it parsed (untrusted, unchecked)
    thinking: str = ""  # thinking text of this step, split from `text` (chat/thinking.py ThinkingSplit)
