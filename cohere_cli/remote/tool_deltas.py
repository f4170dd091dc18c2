"""Tool calls a server parsed (vLLM with `tools`): OpenAI's streamed `tool_calls` deltas merged into whole calls."""

from __future__ import annotations

import json

MAX_SERVER_CALLS = 32  # tool calls in one answer (engine.toolcalls.MAX_CALLS)


def tool_call_deltas(choice: dict, calls: dict[int, dict]) -> int:
    """Merge a chunk's `tool_calls` deltas (a whole message's too) into `calls`; returns the characters added (for
    the MAX_BODY bound). Shapes are checked where the calls are used (chat/toolloop.py): here only types."""
    part = choice.get("delta") or choice.get("message")
    deltas = part.get("tool_calls") if isinstance(part, dict) else None
    added = 0
    for pos, d in enumerate(deltas if isinstance(deltas, list) else ()):
        if not isinstance(d, dict):
            continue
        i = d.get("index", pos)
        if not isinstance(i, int) or (i not in calls and len(calls) >= MAX_SERVER_CALLS):
            continue
        c = calls.setdefault(i, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if isinstance(d.get("id"), str):
            c["id"] = d["id"][:256]
        fn = d.get("function")
        if isinstance(fn, dict):
            for key in ("name", "arguments"):
                value = fn.get(key)
                if isinstance(value, dict):
                    value = json.dumps(value, ensure_ascii=False)
                if isinstance(value, str):
                    c["function"][key] += value
                    added += len(value)
    return added
