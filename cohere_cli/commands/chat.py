"""`cohere chat`: templated conversation turns."""

from __future__ import annotations

import json
from pathlib import Path

from cohere_cli.commands.stream import run_and_print
from cohere_cli.errors import UsageError
from cohere_cli.runtime import load_runtime
from cohere_cli.sampling import SamplingParams

ROLES = {"system", "user", "assistant", "tool"}


def read_history(path: Path) -> list[dict]:
    """A saved conversation: {"messages": [{"role": ..., "content": ...}, ...]}."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"history file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"history file {path} is not valid JSON ({e})") from None
    msgs = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(msgs, list):
        raise UsageError(f'history file {path} must hold {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
    for i, m in enumerate(msgs):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise UsageError(f"history file {path}: message {i} needs a role ({', '.join(sorted(ROLES))}) "
                             f"and a string content")
    return msgs


def build_messages(prompt: str, system: str | None, history: list[dict]) -> list[dict]:
    msgs = [dict(m) for m in history]
    if system is not None:  # --system replaces the saved preamble, or adds one
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = system
        else:
            msgs.insert(0, {"role": "system", "content": system})
    msgs.append({"role": "user", "content": prompt})
    return msgs


def run_chat_once(model: str, prompt: str, params: SamplingParams, *, system: str | None, history: Path | None,
                  template: str | None, max_tokens: int, dtype: str, json_out: bool) -> None:
    msgs = build_messages(prompt, system, read_history(history) if history else [])
    rt = load_runtime(model, dtype)
    # A named template asked for without its inputs renders with an empty list (no tools, no documents) rather
    # than failing inside the template.
    extra = {"tools": []} if template == "tool_use" else {"documents": []} if template == "rag" else {}
    text = rt.tokenizer.apply_chat_template(msgs, template=template, add_generation_prompt=True, **extra)
    ids = rt.tokenizer.encode(text, add_bos=False)  # the template already wrote BOS (pitfall 10)
    run_and_print(rt, ids, params, max_tokens, json_out)
