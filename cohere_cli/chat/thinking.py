"""Thinking apart from the answer, for a chat whose template has a thinking phase (engine/thinking.py).

One parser reads every answer of such a template: ToolCallParser (engine/toolcalls.py), which already tells cmd3's
`<|START_THINKING|>` blocks from `<|START_RESPONSE|>` / `<|START_TEXT|>` answers. The tool loop feeds it itself
(chat/toolloop.py); a plain answer printed by `chat --prompt` goes through `ThinkingSplit`, which yields the same
Responses with `text` the answer only and `thinking` the thinking. Control tokens reach the parser as their markers
(`piece`): a local model yields them as ids with no text.

History: the answer is stored as `content` and the thinking as `reasoning_content` (the field transformers copies to
`thinking` / `reasoning` for templates): the template then renders it exactly as it expects. cmd3 templates leave it
out of plain answers (they render a plan, `tool_plan`, only before tool calls); the reasoning templates write it back
between `<|START_THINKING|>` and `<|END_THINKING|>`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from cohere_cli.engine.response import Response
from cohere_cli.engine.thinking import has_thinking, template_source
from cohere_cli.engine.toolcalls import FORMAT_CMD3, Text, Thinking, ToolCallParser


def piece(r: Response, tok) -> str:
    """A response's text as the parser reads it: a control token (cmd3's blocks are made of them) as its marker."""
    if tok is not None and r.token is not None and r.token in tok.control_ids:
        return tok.id_to_token(r.token) or ""
    return r.text


def thinks(tok, template: str | None) -> bool:
    """Whether answers rendered with this tokenizer's template `template` (None: its default) may hold thinking."""
    return tok is not None and has_thinking(template_source(tok.chat_templates, template))


def prompt_tail(tok, ids: list[int]) -> str:
    """The end of the rendered prompt, for the parser to start inside the block it opens."""
    return tok.decode(ids[-8:]) if tok is not None and ids else ""


class ThinkingSplit:
    """Wraps one answer's stream: each Response comes out with `text` the answer's part and `thinking` the
    thinking's part of it; `text` and `thinking` are the whole answer's parts."""

    def __init__(self, tok, prompt_ids: list[int]):
        self.tok = tok
        self.parser = ToolCallParser(FORMAT_CMD3, prefix=prompt_tail(tok, prompt_ids))

    def __call__(self, stream: Iterator[Response]) -> Iterator[Response]:
        for r in stream:
            events = self.parser.feed(piece(r, self.tok))
            if r.token is None and r.finish_reason is not None:
                events += self.parser.finish()
            text = "".join(e.text for e in events if isinstance(e, Text))
            thinking = "".join(e.text for e in events if isinstance(e, Thinking))
            yield replace(r, text=text, thinking=thinking)

    @property
    def text(self) -> str:
        return self.parser.text.strip()

    @property
    def thinking(self) -> str:
        return self.parser.thinking.strip()
