"""A request -> the prompt ids the engine runs, rendered with the model's own templates exactly as `cohere chat`
renders them (chat/session.py: tools with its tool template, documents with its `rag` template or documents path,
the thinking switch); and the answer's tokens -> OpenAI's fields: `content`, `reasoning_content` (a thinking phase),
`tool_calls` (parsed by engine/toolcalls.py, Command R `Action:` lists and cmd3 `<|START_ACTION|>` blocks), with
citations rendered as the REPL renders them (`span[1]` and footnotes naming the documents)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from cohere_cli.chat.citations import CitationStream
from cohere_cli.chat.conversation import Conversation
from cohere_cli.chat.session import ChatSettings, render_text, tool_format
from cohere_cli.chat.thinking import piece, prompt_tail, thinks
from cohere_cli.engine.response import Response
from cohere_cli.engine.sampling import SamplingParams
from cohere_cli.engine.toolcalls import FORMAT_CMD3, Error, Text, Thinking, ToolCall, ToolCallParser
from cohere_cli.errors import CohereError, ContextOverflow, UsageError
from cohere_cli.serve.schema import ApiError, ChatRequest, CompletionRequest

log = logging.getLogger("cohere_cli.serve")
DEFAULT_CHAT_TOKENS = 1024  # chat.session.DEFAULT_MAX_TOKENS, unless generation_config.json says
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class Served:
    """The one model this server serves: its id (what /v1/models lists), tokenizer, context, sampling defaults."""
    name: str
    tokenizer: object
    context: int
    folder: Path | None = None
    defaults: dict = field(default_factory=dict)  # generation_config.json (chat/session.generation_defaults)


@dataclass
class Job:
    ids: list[int]
    params: SamplingParams
    max_tokens: int
    stop_ids: set[int] | None
    output: "ChatOutput | CompletionOutput"


def _params(served: Served, req) -> SamplingParams:
    merged = {k: v for k, v in served.defaults.items() if k != "max_tokens"}
    try:
        return SamplingParams(**{**merged, **req.sampling()})
    except UsageError as e:
        raise ApiError(400, str(e)) from None


def _fit(served: Served, ids: list[int], wanted: int) -> int:
    if not ids:
        raise ApiError(400, "the prompt is empty", code="empty_prompt")
    if len(ids) >= served.context:
        raise ApiError(400, f"the prompt has {len(ids)} tokens, the context is {served.context}: shorten it",
                       code="context_length_exceeded")
    return min(wanted, served.context - len(ids))


def chat_job(served: Served, req: ChatRequest) -> Job:
    """Render the conversation (blocking: the template may run for seconds; call it off the event loop)."""
    tok = served.tokenizer
    turns = []
    for m in req.messages:
        turn = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            turn["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        for key in ("tool_call_id", "reasoning_content", "tool_plan"):
            if getattr(m, key) is not None:
                turn[key] = getattr(m, key)
        turns.append(turn)
    documents = [d if isinstance(d, dict) else {"text": d} for d in req.documents or []]
    tools = [t.model_dump() for t in req.tools] if req.tools and req.tool_choice != "none" else None
    think = next(iter((req.chat_template_kwargs or {}).values()), None)
    settings = ChatSettings(tools=tools, citations=req.citation_mode, think=think)
    try:
        text = render_text(tok, Conversation(turns=turns, documents=documents), settings, served.name)
        ids = tok.encode(text, add_bos=False)  # the template wrote BOS itself
        fmt = tool_format(tok, None) if tools is not None else FORMAT_CMD3
    except ContextOverflow as e:
        raise ApiError(400, str(e), code="context_length_exceeded") from None
    except CohereError as e:  # no tools path / documents path, the template refused the conversation, its bounds
        raise ApiError(400, str(e)) from None
    wanted = req.max_completion_tokens or req.max_tokens or served.defaults.get("max_tokens", DEFAULT_CHAT_TOKENS)
    parse = tools is not None or thinks(tok, None)
    titles = [d.get("title", "") for d in documents] if documents else None
    output = ChatOutput(tok, req.stops(), fmt if parse else None, prompt_tail(tok, ids),
                        [t["function"]["name"] for t in tools or []], titles)
    return Job(ids, _params(served, req), _fit(served, ids, wanted), set() if req.ignore_eos else None, output)


def completion_job(served: Served, req: CompletionRequest) -> Job:
    tok = served.tokenizer
    prompt = req.prompt[0] if isinstance(req.prompt, list) and isinstance(req.prompt[0], (str, list)) else req.prompt
    if isinstance(prompt, str):
        bos = getattr(tok, "bos_token", None)
        ids = tok.encode(prompt, add_bos=not (bos and prompt.startswith(bos)))
    else:
        ids = list(prompt)
        bad = next((i for i in ids if not 0 <= i < tok.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"prompt: token id {bad} is outside the vocabulary (0..{tok.vocab_size - 1})",
                           param="prompt")
    wanted = req.max_tokens or DEFAULT_COMPLETION_TOKENS
    output = CompletionOutput(tok, req.stops(), req.skip_special_tokens)
    return Job(ids, _params(served, req), _fit(served, ids, wanted), set() if req.ignore_eos else None, output)


class StopStrings:
    """`stop` strings: text up to the first one; a tail that may start one is held back until it is known."""

    def __init__(self, stops: list[str]):
        self.stops, self.buf, self.hit = stops, "", False

    def feed(self, text: str) -> str:
        if not self.stops or self.hit:
            return "" if self.hit else text
        self.buf += text
        found = [i for s in self.stops if (i := self.buf.find(s)) >= 0]
        if found:
            out, self.buf, self.hit = self.buf[:min(found)], "", True
            return out
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(self.buf) + 1))
                    if self.buf.endswith(s[:k])), default=0)
        out, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


class CompletionOutput:
    """A raw completion's text: control tokens as their markers (a client's tool-call parser reads cmd3's blocks
    from them, as from vLLM, where Cohere's markers are not special tokens), unless skip_special_tokens."""

    def __init__(self, tok, stops: list[str], skip_special: bool):
        self.tok, self.skip, self.stop = tok, skip_special, StopStrings(stops)

    @property
    def stopped(self) -> bool:
        return self.stop.hit

    def feed(self, r: Response) -> list[tuple[str, object]]:
        text = self.stop.feed(r.text if self.skip else piece(r, self.tok))
        return [("content", text)] if text else []

    def finish(self) -> list[tuple[str, object]]:
        text = self.stop.flush()
        return [("content", text)] if text else []


class ChatOutput:
    """An answer's events: ("content", text), ("reasoning_content", text), ("tool_call", call). `fmt`: the tool-call
    parser's format when the answer is parsed (tools offered, or a template with a thinking phase), else None."""

    def __init__(self, tok, stops: list[str], fmt: str | None, prefix: str, tools: list[str],
                 titles: list[str] | None):
        self.tok, self.stop = tok, StopStrings(stops)
        self.parser = ToolCallParser(fmt, tools=tools or None, prefix=prefix) if fmt else None
        self.cites = CitationStream(titles, markdown=False) if titles is not None else None
        self.tool_calls: list[dict] = []

    @property
    def stopped(self) -> bool:
        return self.stop.hit

    def feed(self, r: Response) -> list[tuple[str, object]]:
        raw = self.stop.feed(piece(r, self.tok) if self.parser else r.text)
        return self._events(raw, final=False)

    def finish(self) -> list[tuple[str, object]]:
        out = self._events(self.stop.flush(), final=True)
        if self.cites is not None:
            tail = self.cites.finish()
            lines = self.cites.footnote_lines()
            tail += ("\n\n" + "\n".join(lines)) if lines else ""
            if tail:
                out.append(("content", tail))
        return out

    def _events(self, raw: str, final: bool) -> list[tuple[str, object]]:
        if self.parser is None:
            events = [Text(raw)] if raw else []
        else:
            events = self.parser.feed(raw) + (self.parser.finish() if final else [])
        out = []
        for e in events:
            if isinstance(e, Text):
                text = self.cites.feed(e.text) if self.cites is not None else e.text
                if text:
                    out.append(("content", text))
            elif isinstance(e, Thinking):
                out.append(("reasoning_content", e.text))
            elif isinstance(e, (ToolCall, Error)) and getattr(e, "call", None) is not None:
                self.tool_calls.append(e.call)  # an unknown tool's call too: the client answers it
                out.append(("tool_call", e.call))
            elif isinstance(e, Error):
                log.warning("the model's tool call is malformed: %s", e.message)
        return out
