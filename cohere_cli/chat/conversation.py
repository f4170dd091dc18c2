"""A chat transcript: the system preamble, alternating user/assistant turns, and attached documents.

It is rendered whole with the model's template every turn (so BOS and the preamble appear exactly once, where the
template puts them); the KV session then reuses whatever prefix the cache already holds."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cohere_cli.errors import UsageError

ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class Conversation:
    system: str | None = None
    turns: list[dict] = field(default_factory=list)  # {"role": "user"|"assistant", "content": str[, "interrupted"]}
    documents: list[dict] = field(default_factory=list)  # {"title": ..., "text": ...}

    def messages(self) -> list[dict]:
        """What the template sees: system first (if any), then the turns without our bookkeeping keys."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": t["role"], "content": t["content"]} for t in self.turns]

    def add_user(self, text: str) -> None:
        self.turns.append({"role": "user", "content": text})

    def add_assistant(self, text: str, interrupted: bool = False) -> None:
        turn = {"role": "assistant", "content": text}
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

    def drop_oldest_exchange(self) -> bool:
        """Forget the oldest user turn and its answer (never the preamble or documents). False if nothing left
        to drop besides the newest user turn."""
        if len(self.turns) <= 1:
            return False
        cut = next((i for i in range(1, len(self.turns)) if self.turns[i]["role"] == "user"), len(self.turns))
        if cut >= len(self.turns):
            return False
        del self.turns[:cut]
        return True

    def clear(self) -> None:
        self.turns.clear()

    # ---- the {"messages": [...]} file format that `--history`, /save and /load share ----------------------------
    def to_json(self) -> dict:
        out = {"messages": self.messages()}
        if self.documents:
            out["documents"] = self.documents
        return out

    def save(self, path: Path) -> None:
        path = Path(path).expanduser()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Conversation":
        msgs, docs = read_messages(path)
        conv = cls(documents=docs)
        if msgs and msgs[0]["role"] == "system":
            conv.system = msgs.pop(0)["content"]
        conv.turns = [{"role": m["role"], "content": m["content"]} for m in msgs]
        return conv


def read_messages(path: Path) -> tuple[list[dict], list[dict]]:
    """Read and validate a saved conversation; UsageError with a one-line reason otherwise."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"conversation file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"conversation file {path} is not valid JSON ({e})") from None
    msgs = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(msgs, list):
        raise UsageError(f'conversation file {path} must hold {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
    for i, m in enumerate(msgs):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise UsageError(f"conversation file {path}: message {i} needs a role ({', '.join(sorted(ROLES))}) "
                             f"and a string content")
    docs = data.get("documents") or []
    if not (isinstance(docs, list) and all(isinstance(d, dict) for d in docs)):
        raise UsageError(f"conversation file {path}: documents must be a list of objects")
    return [dict(m) for m in msgs], docs


def read_document(path: Path) -> dict:
    """A document for grounded generation: {"title": file name, "text": its contents}."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"document {path} does not exist") from None
    except UnicodeDecodeError:
        raise UsageError(f"document {path} is not UTF-8 text (convert PDFs and other binaries to text first)") from None
    except OSError as e:
        raise UsageError(f"cannot read document {path} ({e.strerror})") from None
    return {"title": path.name, "text": text.strip()}
