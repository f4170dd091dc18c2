"""A chat transcript: the system preamble, alternating user/assistant turns, and attached documents.

It is rendered whole with the model's template every turn (so BOS and the preamble appear exactly once, where the
template puts them); the KV session then reuses whatever prefix the cache already holds."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cohere_cli.errors import UsageError
from cohere_cli.store.atomic import write_atomic
from cohere_cli.untrusted import parse_json, read_bounded

ROLES = {"system", "user", "assistant", "tool"}

# Bounds on the files a chat reads (threat model: README). Every document and the whole conversation are rendered
# into the prompt every turn, and the longest context of a Cohere model is 256K tokens, about 1 MiB of text: what is
# much larger than that cannot be a prompt, only a way to exhaust memory (`--doc /dev/zero`, a 1 GiB log file).
MAX_DOCUMENT = 4 << 20  # bytes of one document: four times the longest context
MAX_CONVERSATION = 8 << 20  # bytes of a saved conversation: its turns and documents together, with room to spare
# Every turn renders every message through the template, and fitting drops one old exchange per render: 10^4
# messages (a few tokens each at least: more than any context holds) keeps that to seconds, 10^6 would be hours.
MAX_MESSAGES = 10_000


@dataclass
class Conversation:
    system: str | None = None
    # {"role": "user"|"assistant", "content": str[, "reasoning_content"][, "interrupted"]}; tool use (OpenAI's format):
    # {"role": "assistant", "content": str|None, "tool_calls": [...][, "tool_plan"]}, {"role": "tool",
    # "tool_call_id", "content"}
    turns: list[dict] = field(default_factory=list)
    documents: list[dict] = field(default_factory=list)  # {"title": ..., "text": ...}

    def messages(self) -> list[dict]:
        """What the template sees: system first (if any), then the turns without our bookkeeping keys (a tool
        call's `tool_calls` / `tool_plan` and a tool result's `tool_call_id` are kept: OpenAI's message format)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [_public(t) for t in self.turns]

    def add_user(self, text: str) -> None:
        self.turns.append({"role": "user", "content": text})

    def add_assistant(self, text: str, interrupted: bool = False, thinking: str | None = None) -> None:
        turn = {"role": "assistant", "content": text}
        if thinking:  # the template renders it as it expects (chat/thinking.py)
            turn["reasoning_content"] = thinking
        if interrupted:
            turn["interrupted"] = True
        self.turns.append(turn)

    def last(self, role: str) -> dict | None:
        return next((t for t in reversed(self.turns) if t["role"] == role), None)

    def pop_exchange(self) -> dict | None:
        """Remove the last user turn and everything after it (/undo, /edit, /regen); return that user turn."""
        for i in range(len(self.turns) - 1, -1, -1):
            if self.turns[i]["role"] == "user":
                user = self.turns[i]
                del self.turns[i:]
                return user
        return None

    def clear(self) -> None:
        self.turns.clear()

    # ---- words and identity, for the REPL's messages and the engine's token counts ---------------------------------
    def exchanges(self) -> int:
        """How many exchanges (a message of the user's and its answer, if it has one yet): one per user message."""
        return sum(t["role"] == "user" for t in self.turns)

    def summary(self) -> str:
        """`3 exchanges (6 messages), a preamble, 1 document`: the one vocabulary /show, /save and /load use."""
        n, m = self.exchanges(), len(self.turns)
        parts = [f"{n} exchange{'s' * (n != 1)} ({m} message{'s' * (m != 1)})"]
        if self.system:
            parts.append("a preamble")
        if self.documents:
            parts.append(f"{len(self.documents)} document{'s' * (len(self.documents) != 1)}")
        return ", ".join(parts)

    def hasher(self):
        """A sha256 over what the template sees (preamble, documents, every message), one message at a time:
        `h = conv.hasher(); h.update(message_bytes("assistant", answer))` equals the hasher of the conversation
        with that answer added. Bookkeeping keys (`interrupted`) are not part of it."""
        h = hashlib.sha256(json.dumps([self.system, self.documents], ensure_ascii=False).encode())
        for t in self.turns:
            h.update(message_bytes(t["role"], t["content"], {k: t[k] for k in TOOL_KEYS if k in t}))
        return h

    def fingerprint(self) -> str:
        return self.hasher().hexdigest()

    # ---- the {"messages": [...]} file format that `--history`, /save and /load share ----------------------------
    def to_json(self) -> dict:
        out = {"messages": self.messages()}
        if self.documents:
            out["documents"] = self.documents
        return out

    def save(self, path: Path) -> None:
        """Write the conversation to `path` whole or not at all; UsageError (one line, the conversation untouched)
        when it cannot be. Never creates folders: a typo in a folder name must not leave new folders behind."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise UsageError(f"{path} is a folder: give a file name, like {path / 'chat.json'}")
        if not path.parent.exists():
            raise UsageError(f"cannot save to {path}: the folder {path.parent} does not exist (create it first)")
        if not path.parent.is_dir():
            raise UsageError(f"cannot save to {path}: {path.parent} is a file, not a folder")
        try:
            write_atomic(path, json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n")
        except OSError as e:  # /proc, a read-only disk, no permission, disk full, a name too long
            raise UsageError(f"cannot save to {path} ({e.strerror or e}): pick another file") from None

    @classmethod
    def load(cls, path: Path) -> "Conversation":
        msgs, docs = read_messages(path)
        conv = cls(documents=docs)
        if msgs and msgs[0]["role"] == "system":
            conv.system = msgs.pop(0)["content"]
        conv.turns = msgs
        return conv


TOOL_KEYS = ("tool_calls", "tool_plan", "tool_call_id", "reasoning_content")
MAX_ID = 256  # characters of a tool call id or a tool name in a loaded file (real ones: ~30)
MAX_FILE_CALLS = 32  # tool calls in one assistant message of a loaded file (engine.toolcalls.MAX_CALLS)


def _public(t: dict) -> dict:
    return {"role": t["role"], "content": t["content"], **{k: t[k] for k in TOOL_KEYS if k in t}}


def message_bytes(role: str, content: str | None, tool: dict | None = None) -> bytes:
    return b"\n" + json.dumps([role, content, tool] if tool else [role, content], ensure_ascii=False).encode()


def _tool_calls(calls) -> list[dict] | None:
    """A loaded message's `tool_calls`, each {"id", "type": "function", "function": {"name", "arguments": str}}
    (arguments given as an object are kept as its JSON text); None when they are not that."""
    if not isinstance(calls, list) or not 0 < len(calls) <= MAX_FILE_CALLS:
        return None
    out = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if not (isinstance(fn, dict) and isinstance(c.get("id"), str) and 0 < len(c["id"]) <= MAX_ID
                and isinstance(fn.get("name"), str) and 0 < len(fn["name"]) <= MAX_ID):
            return None
        args = fn.get("arguments", "{}")
        if isinstance(args, dict):
            args = json.dumps(args, ensure_ascii=False)
        if not isinstance(args, str):
            return None
        out.append({"id": c["id"], "type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def _message(m, i: int, path: Path) -> dict:
    """One validated message of a loaded file, with only the keys a chat uses; UsageError otherwise."""
    bad = f"conversation file {path}: message {i}"
    if not (isinstance(m, dict) and m.get("role") in ROLES):
        raise UsageError(f"{bad} needs a role ({', '.join(sorted(ROLES))}) and a string content")
    out = {"role": m["role"], "content": m.get("content")}
    if m["role"] == "assistant" and isinstance(m.get("reasoning_content"), str):
        out["reasoning_content"] = m["reasoning_content"]
    if m["role"] == "assistant" and m.get("tool_calls") is not None:
        out["tool_calls"] = _tool_calls(m["tool_calls"])
        if out["tool_calls"] is None:
            raise UsageError(f'{bad}: tool_calls must be a list of 1 to {MAX_FILE_CALLS} {{"id", "function": '
                             f'{{"name", "arguments"}}}} objects')
        if isinstance(m.get("tool_plan"), str):
            out["tool_plan"] = m["tool_plan"]
        if out["content"] is None:
            return out
    if m["role"] == "tool":
        call_id = m.get("tool_call_id")
        if not (isinstance(call_id, str) and 0 < len(call_id) <= MAX_ID):
            raise UsageError(f"{bad}: a tool message needs its tool_call_id (a string)")
        out["tool_call_id"] = call_id
    if not isinstance(out["content"], str):
        raise UsageError(f"{bad} needs a role ({', '.join(sorted(ROLES))}) and a string content")
    return out


def read_messages(path: Path) -> tuple[list[dict], list[dict]]:
    """Read and validate a saved conversation; UsageError with a one-line reason otherwise."""
    path = Path(path).expanduser()
    data = parse_or_raise(read_local(path, MAX_CONVERSATION, "conversation file"), path, "conversation file")
    msgs = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(msgs, list):
        raise UsageError(f'conversation file {path} must hold {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
    if len(msgs) > MAX_MESSAGES:
        raise UsageError(f"conversation file {path} holds {len(msgs)} messages, over the {MAX_MESSAGES} a chat "
                         f"may load: keep the recent part of it")
    msgs = [_message(m, i, path) for i, m in enumerate(msgs)]
    docs = data.get("documents") or []
    if not (isinstance(docs, list) and all(isinstance(d, dict) and all(isinstance(v, str) for v in d.values())
                                           for d in docs)):
        raise UsageError(f"conversation file {path}: documents must be a list of objects with string values")
    return msgs, docs


def read_document(path: Path) -> dict:
    """A document for grounded generation: {"title": file name, "text": its contents}."""
    path = Path(path).expanduser()
    try:
        text = read_local(path, MAX_DOCUMENT, "document").decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"document {path} is not UTF-8 text (convert PDFs and other binaries to text first)") from None
    return {"title": path.name, "text": text.strip()}


def read_local(path: Path, max_bytes: int, what: str) -> bytes:
    """A file the user named, read whole if it is a regular file under `max_bytes` (never blocks on a FIFO, never
    reads /dev/zero); UnsafeInput (untrusted.read_bounded) or UsageError with a one-line reason otherwise."""
    try:
        return read_bounded(path, max_bytes, what)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"cannot read {what} {path} ({e.strerror or e})") from None


def parse_or_raise(data: bytes, path: Path, what: str):
    try:
        return parse_json(data)
    except ValueError as e:
        raise UsageError(f"{what} {path} {e}") from None
