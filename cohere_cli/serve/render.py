"""A request -> the prompt ids the engine runs, rendered with the model's own templates exactly as `cohere chat`
renders them (chat/session.py: tools with its tool template, documents with its `rag` template or documents path,
the thinking switch); and the answer's tokens -> OpenAI's fields: `content`, `reasoning_content` (a thinking phase),
`tool_calls` (parsed by engine/toolcalls.py, Command R `Action:` lists and cmd3 `<|START_ACTION|>` blocks), with
citations rendered as the REPL renders them (`span[1]` and footnotes naming the documents)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from cohere_cli.chat.citations import CitationStream
from cohere_cli.chat.tools import template_tool
from cohere_cli.chat.conversation import Conversation
from cohere_cli.chat.session import DEFAULT_MAX_TOKENS, ChatSettings, render_text, tool_format
from cohere_cli.chat.thinking import piece, prompt_tail, thinks
from cohere_cli.engine.response import Response
from cohere_cli.engine.sampling import SamplingParams
from cohere_cli.engine.toolcalls import FORMAT_CMD3, START_ACTION, Error, Text, Thinking, ToolCall, ToolCallParser
from cohere_cli.errors import CohereError, ContextOverflow, UsageError
from cohere_cli.serve.schema import ApiError, ChatRequest, CompletionRequest

log = logging.getLogger("cohere_cli.serve")
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class Served:
    """The one model this server serves: its id (what /v1/models lists), tokenizer, context, sampling defaults."""
    name: str
    tokenizer: object
    context: int
    folder: Path | None = None
    defaults: dict = field(default_factory=dict)  # generation_config.json (chat/session.generation_defaults)
    _guard: "PromptGuard | None" = field(default=None, init=False, repr=False)

    def guard(self) -> "PromptGuard":
        if self._guard is None:
            self._guard = PromptGuard(self.tokenizer)
        return self._guard


class PromptGuard:
    """What a prompt is checked for before it is tokenized. Control tokens: the text of an untrusted field (a message,
    a document, a tool's schema or result) must not contain the tokenizer's control-token strings, which `encode`
    turns into the real control ids (a forged turn). Length: a text of more characters than the context can hold is
    refused before tokenizing it (seconds of CPU for megabytes): no token covers more than PER_TOKEN times the
    characters of the longest vocabulary entry (byte-level entries have a character per byte, decoded text fewer;
    the factor covers a normalizer composing characters)."""

    PER_TOKEN = 4

    def __init__(self, tok):
        n = getattr(tok, "vocab_size", 0)
        entries = [t for i in range(n) if (t := tok.id_to_token(i))]
        self.max_chars = self.PER_TOKEN * max((len(t) for t in entries), default=64)
        controls = sorted({t for i in getattr(tok, "control_ids", ()) if (t := tok.id_to_token(i))}, key=len,
                          reverse=True)
        self.controls = re.compile("|".join(map(re.escape, controls))) if controls else None

    def check_control(self, where: str, text: str) -> None:
        found = self.controls.search(text) if self.controls is not None and text else None
        if found:
            raise ApiError(400, f"{where}: the control token {found.group()!r} is not allowed in this field (it "
                                f"would be read as the prompt's own markup)", code="control_token", param=where)

    def check_fields(self, where: str, value) -> None:
        """check_control on every string in `value` (keys included), named by its path."""
        if isinstance(value, str):
            self.check_control(where, value)
        elif isinstance(value, dict):
            for k, v in value.items():
                self.check_control(where, str(k))
                self.check_fields(f"{where}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self.check_fields(f"{where}.{i}", v)

    def check_length(self, text: str, context: int) -> None:
        if len(text) > context * self.max_chars:
            raise ApiError(400, f"the prompt has {len(text)} characters: more than a context of {context} tokens "
                                f"can hold: shorten it", code="context_length_exceeded")


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
    tok, guard = served.tokenizer, served.guard()
    turns = []
    for i, m in enumerate(req.messages):
        guard.check_fields(f"messages.{i}", m.model_dump(exclude={"role"}, exclude_none=True))
        turn = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            turn["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        for key in ("tool_call_id", "reasoning_content", "tool_plan"):
            if getattr(m, key) is not None:
                turn[key] = getattr(m, key)
        turns.append(turn)
    documents = [d if isinstance(d, dict) else {"text": d} for d in req.documents or []]
    guard.check_fields("documents", documents)
    tools = [template_tool(t.model_dump()) for t in req.tools] if req.tools and req.tool_choice != "none" else None
    guard.check_fields("tools", tools)
    think = next(iter((req.chat_template_kwargs or {}).values()), None)
    settings = ChatSettings(tools=tools, citations=req.citation_mode, think=think)
    try:
        text = render_text(tok, Conversation(turns=turns, documents=documents), settings, served.name)
        guard.check_length(text, served.context)
        ids = tok.encode(text, add_bos=False)  # the template wrote BOS itself
        fmt = tool_format(tok, None) if tools is not None else FORMAT_CMD3
    except ContextOverflow as e:
        raise ApiError(400, str(e), code="context_length_exceeded") from None
    except CohereError as e:  # no tools path / documents path, the template refused the conversation, its bounds
        raise ApiError(400, str(e)) from None
    wanted = req.max_completion_tokens or req.max_tokens or served.defaults.get("max_tokens", DEFAULT_MAX_TOKENS)
    parse = tools is not None or thinks(tok, None)
    titles = [d.get("title", "") for d in documents] if documents else None
    output = ChatOutput(tok, req.stops(), fmt if parse else None, prompt_tail(tok, ids),
                        [t["function"]["name"] for t in tools or []], titles)
    return Job(ids, _params(served, req), _fit(served, ids, wanted), set() if req.ignore_eos else None, output)


def completion_job(served: Served, req: CompletionRequest) -> Job:
    tok = served.tokenizer
    prompt = req.prompt[0] if isinstance(req.prompt, list) and isinstance(req.prompt[0], (str, list)) else req.prompt
    if isinstance(prompt, str):
        served.guard().check_length(prompt, served.context)
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
        # only the offered tools' names are calls (none offered: every action is text)
        self.parser = ToolCallParser(fmt, tools=tools, prefix=prefix) if fmt else None
        self.marker = START_ACTION if fmt == FORMAT_CMD3 else "Action:"
        self.cites = CitationStream(titles, markdown=False) if titles is not None else None
        self.tool_calls: list[dict] = []  # sent at the end of the turn, once the whole action is known to be sound
        self.pending: list[dict] = []
        self.raw: list[str] = []  # the answer as the model wrote it: what a malformed action comes back as
        self.failed: str | None = None

    @property
    def stopped(self) -> bool:
        return self.stop.hit

    def feed(self, r: Response) -> list[tuple[str, object]]:
        raw = self.stop.feed(piece(r, self.tok) if self.parser else r.text)
        self.raw.append(raw)
        return self._events(raw, final=False)

    def finish(self) -> list[tuple[str, object]]:
        tail = self.stop.flush()
        self.raw.append(tail)
        out = self._events(tail, final=True)
        if self.failed is not None:  # as vLLM: the model's own text as content, no tool_calls
            raw = "".join(self.raw)
            at = raw.find(self.marker)
            out.append(("content", raw[at:] if at >= 0 else raw))
        else:
            self.tool_calls.extend(self.pending)
            out += [("tool_call", c) for c in self.pending]
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
            elif isinstance(e, ToolCall):
                self.pending.append(e.call)
            elif isinstance(e, Error) and self.failed is None:
                self.failed = e.message
                log.warning("the model's tool call is unusable (%s): its text is the answer", e.message)
        return out
