"""Where a one-shot prompt comes from (issue 18): the argument, `-` (stdin), or --prompt-file FILE; `generate` also
reads a piped stdin when no prompt is given, as `llm` and `ollama run` do. Both read bounded: a prompt is at most
what a document may be (chat.conversation.MAX_DOCUMENT), a file must be a regular file."""

from __future__ import annotations

import sys
from pathlib import Path

from cohere_cli.chat.conversation import MAX_DOCUMENT, read_local
from cohere_cli.errors import UsageError

MAX_PROMPT = MAX_DOCUMENT


def read_stdin(max_bytes: int = MAX_PROMPT) -> str:
    data = sys.stdin.buffer.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UsageError(f"the prompt on stdin is over the {max_bytes >> 20} MiB a prompt may be")
    return _text(data, "stdin")


def _text(data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the prompt in {where} is not UTF-8 text") from None
    text = text.rstrip("\r\n")  # as `$(cat FILE)` would pass it
    if not text.strip():  # `</dev/null`, an empty file: a mistake, not a wish to generate from nothing
        raise UsageError(f"the prompt in {where} is empty: give the text as an argument, on stdin or in a file")
    return text


def resolve_prompt(prompt: str | None, prompt_file: Path | None, *, what: str) -> str | None:
    """The prompt text: `prompt`, stdin for `-`, else FILE's contents; None when none was given."""
    if prompt is not None and prompt_file is not None:
        raise UsageError(f"give the prompt once: {what} or --prompt-file, not both")
    if prompt_file is not None:
        path = Path(prompt_file).expanduser()
        return _text(read_local(path, MAX_PROMPT, "prompt file"), str(path))
    if prompt == "-":
        return read_stdin()
    return prompt


def stdin_is_piped() -> bool:
    try:
        return not sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False
