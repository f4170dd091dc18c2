"""Tool calls in a Cohere model's output, parsed while it streams; and tool-call messages made ready for a template.

Two formats (spec section 3.3 / 3.5):

* Command R / R+ / Aya (`tool_use` template), FORMAT_COMMAND_R: free text, then on a line of its own
  ``Action: ```json`` + a JSON list ``[{"tool_name": ..., "parameters": {...}}]`` + closing fence. A call of
  `directly-answer` / `directly_answer` means "no tool": reported as a DirectlyAnswer event, never run.
* Command R7B / Command A (cmd3 templates), FORMAT_CMD3: ``<|START_THINKING|>plan<|END_THINKING|>``, then
  ``<|START_ACTION|>[{"tool_call_id": "0", "tool_name": ..., "parameters": {...}}]<|END_ACTION|>`` or
  ``<|START_RESPONSE|>answer<|END_RESPONSE|>`` (``<|START_TEXT|>`` / ``<|END_TEXT|>`` of the reasoning variants
  read as a response too). Text outside any block is shown as answer text.

`ToolCallParser.feed(piece)` takes decoded text as the model writes it and returns the events that piece completes;
`finish()` flushes at the end of the turn. Split anywhere, a stream gives the same events once adjacent text events
are joined (`coalesce`). The model's output is untrusted: an action over MAX_ACTION_CHARS, over MAX_CALLS calls,
nested over MAX_DEPTH, malformed JSON or a wrong shape is one Error event, after which the rest of the turn is ignored.
A call to a tool not in `tools` is an Error carrying that call (answer it with an error result, or end the turn).
Calls come out in the OpenAI format (`arguments` a JSON string) with fresh ids: the model's cmd3 `tool_call_id` is a
position its template recomputes, and ids must be unique across the conversation for it to match results to calls.

Templates want `arguments` as a dict: transformers passes messages through as given, so an OpenAI JSON-string
`arguments` is rendered as a quoted string (``"parameters": "{\\"x\\": 1}"``) by both families' templates.
`template_messages()` turns them into dicts first (as vLLM does before rendering).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cohere_cli.untrusted import one_line, parse_json

FORMAT_COMMAND_R = "command-r"
FORMAT_CMD3 = "cmd3"
FORMATS = (FORMAT_COMMAND_R, FORMAT_CMD3)

MAX_ACTION_CHARS = 1 << 20  # one action block's JSON; real ones are a few hundred characters
MAX_CALLS = 32  # calls in one action block
MAX_DEPTH = 64  # JSON nesting in one action block
MAX_NAME = 256  # characters in a tool name
DIRECTLY_ANSWER = frozenset({"directly-answer", "directly_answer"})

START_THINKING, END_THINKING = "<|START_THINKING|>", "<|END_THINKING|>"
START_ACTION, END_ACTION = "<|START_ACTION|>", "<|END_ACTION|>"
START_RESPONSE, END_RESPONSE = "<|START_RESPONSE|>", "<|END_RESPONSE|>"
START_TEXT, END_TEXT = "<|START_TEXT|>", "<|END_TEXT|>"
END_OF_TURN = "<|END_OF_TURN_TOKEN|>"
_ACTION = "\nAction:"  # Command R: "Action:" at the start of the output or of a line
_TOP_MARKERS = (START_THINKING, START_ACTION, START_RESPONSE, START_TEXT, END_OF_TURN)

# JSON outside strings is only these characters: anything else (`<|END_ACTION|>`, a closing fence, prose) inside an
# unclosed list means the JSON is broken, found at once instead of at the size bound.
_JSON_CHARS = frozenset(" \t\r\n,:[]{}-+.0123456789eEtruefalsn")



@dataclass(frozen=True)
class Text:
    """Answer text to show (outside any action or thinking block)."""
    text: str


@dataclass(frozen=True)
class Thinking:
    """Plan / thinking text (cmd3 `<|START_THINKING|>`), shown apart from the answer."""
    text: str


@dataclass(frozen=True)
class ToolCall:
    """A complete call to a known tool: {"id", "type": "function", "function": {"name", "arguments": JSON str}}."""
    call: dict


@dataclass(frozen=True)
class DirectlyAnswer:
    """Command R's `directly-answer` pseudo-tool: the model wants to answer without tools."""


@dataclass(frozen=True)
class Error:
    """The model's action is unusable: `message` is one inert line. With `call`, only that call is (an unknown
    tool: the others still come); without, the whole block is and the parser ignores the rest of the turn."""
    message: str
    call: dict | None = None


Event = Text | Thinking | ToolCall | DirectlyAnswer | Error


def coalesce(events: Iterable[Event]) -> list[Event]:
    """`events` with adjacent Text (and adjacent Thinking) events joined and empty ones dropped."""
    out: list[Event] = []
    for e in events:
        if isinstance(e, (Text, Thinking)):
            if not e.text:
                continue
            if out and type(out[-1]) is type(e):
                out[-1] = type(e)(out[-1].text + e.text)
                continue
        out.append(e)
    return out


def _random_ids() -> Iterator[str]:
    while True:
        yield "call_" + uuid.uuid4().hex[:24]



class _JsonScan:
    """Finds where one JSON list or object ends, a character at a time (strings and escapes tracked), bounded."""

    def __init__(self):
        self.chunks: list[str] = []
        self.size = 0
        self.depth = 0
        self.started = self.in_string = self.escape = False

    def feed(self, text: str) -> tuple[int, str | None]:
        """Consume `text`: (characters used, error); see `done` for whether the value ended."""
        for i, c in enumerate(text, 1):
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == '"':
                    self.in_string = False
                continue
            if not self.started:
                if c.isspace():
                    continue
                if c not in "[{":
                    return i, "the action is not a JSON list of calls"
                self.started = True
            if c == '"':
                self.in_string = True
            elif c in "[{":
                self.depth += 1
                if self.depth > MAX_DEPTH:
                    return i, f"the action's JSON nests over {MAX_DEPTH} deep"
            elif c in "]}":
                self.depth -= 1
                if self.depth == 0:
                    return self._add(text[:i], i)
            elif c not in _JSON_CHARS:
                return i, "the action's JSON is malformed"
        return self._add(text, len(text))

    def _add(self, text: str, used: int) -> tuple[int, str | None]:
        self.size += len(text)
        if self.size > MAX_ACTION_CHARS:
            return used, f"the action is over {MAX_ACTION_CHARS >> 20} MiB"
        self.chunks.append(text)
        return used, None

    @property
    def done(self) -> bool:
        return self.started and self.depth == 0 and not self.in_string



@dataclass
class ToolCallParser:
    """Incremental parser of one assistant turn. `fmt`: FORMAT_COMMAND_R or FORMAT_CMD3; `tools`: the names the
    model may call (None: any name); `ids`: where call ids come from (fresh random ones by default); `prefix`: the
    end of the rendered prompt, so that a prompt ending in `<|START_RESPONSE|>` (cmd3 default template) or
    `<|START_THINKING|>` starts inside that block."""

    fmt: str
    tools: Iterable[str] | None = None
    ids: Iterator[str] = field(default_factory=_random_ids)
    prefix: str = ""
    # what the turn said, for the assistant message
    text: str = field(default="", init=False)
    thinking: str = field(default="", init=False)
    tool_calls: list[dict] = field(default_factory=list, init=False)
    directly_answer: bool = field(default=False, init=False)
    failed: str | None = field(default=None, init=False)

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise ValueError(f"unknown tool-call format {self.fmt!r}: one of {', '.join(FORMATS)}")
        self._known = None if self.tools is None else frozenset(self.tools)
        self._scan: _JsonScan | None = None
        self._finished = self._fence = self._synthetic = self._top_open = False
        # Command R: a "\n" put before the output, so that "Action:" first is at a line start too
        self._buf, self._lead = ("\n", True) if self.fmt == FORMAT_COMMAND_R else ("", False)
        tail = self.prefix.rstrip()
        self._state = "text" if self.fmt == FORMAT_COMMAND_R else "response" if tail.endswith(
            (START_RESPONSE, START_TEXT)) else "thinking" if tail.endswith(START_THINKING) else "top"

    def feed(self, piece: str) -> list[Event]:
        """The events completed by `piece` (the next decoded text of the turn)."""
        if self.failed or self._finished or not piece:
            return []
        self._buf += piece
        return self._run(final=False)

    def finish(self) -> list[Event]:
        """The last events at the end of the turn: held-back text, or an Error for an action left open."""
        if self.failed or self._finished:
            return []
        events = self._run(final=True)
        self._finished = True
        return events

    def message(self) -> dict:
        """The assistant message (OpenAI format) of what was parsed: `content` (None for a tool-call turn without
        text), `tool_calls`, and for cmd3 the plan as `tool_plan` (what its template renders for a tool-call turn)."""
        message: dict = {"role": "assistant", "content": self.text.strip() or None}
        if self.tool_calls:
            message["tool_calls"] = [json.loads(json.dumps(c)) for c in self.tool_calls]
            if self.fmt == FORMAT_CMD3 and self.thinking.strip():
                message["tool_plan"] = self.thinking.strip()
        return message

    def _run(self, final: bool) -> list[Event]:
        events: list[Event] = []
        while not self.failed and getattr(self, f"_step_{self._state}")(final, events):
            pass
        return events

    def _emit(self, events: list[Event], kind: type, text: str) -> None:
        if self._lead and text:  # the "\n" put before a Command R output is no text of the model's
            text, self._lead = text[1:], False
        if text:
            if kind is Text:
                self.text += text
            else:
                self.thinking += text
            events.append(kind(text))

    def _fail(self, events: list[Event], message: str) -> bool:
        self.failed = message
        return events.append(Error(message)) or False

    def _until(self, final: bool, events: list[Event], kind: type, markers: tuple[str, ...]) -> str | None:
        """Emit the buffer's text up to the first of `markers` (consumed, returned); hold back an end that may
        be the start of one; None when none is there yet."""
        found = _first(self._buf, markers)
        if found:
            i, marker = found
            self._synthetic = self._lead and i == 0  # the marker's "\n" was the one put before the output
            if self._synthetic:
                self._lead = False
            self._emit(events, kind, self._buf[:i])
            self._buf = self._buf[i + len(marker):]
            return marker
        keep = 0 if final else _partial_suffix(self._buf, markers)
        self._emit(events, kind, self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep:]
        return None

    # Command R: text, "Action:", optional fence, JSON, optional closing fence, text again.
    def _step_text(self, final, events) -> bool:
        return self._until(final, events, Text, (_ACTION,)) is not None and self._go("action_open")

    def _step_action_open(self, final, events) -> bool:
        rest = self._buf.lstrip()
        if rest.startswith("```"):
            after = rest[3:]
            if after[:4] != "json" and "json".startswith(after) and not final:
                return False  # "```js": wait for the rest of the word
            if after[:4] == "json":
                after = after[4:]
            self._buf, self._state, self._fence = after, "json", True
            return True
        if rest[:1] in ("[", "{"):
            self._buf, self._state, self._fence = rest, "json", False
            return True
        if not final and "```".startswith(rest):
            return False  # nothing but whitespace or part of a fence yet
        # not an action after all: "Action:" was text
        self._emit(events, Text, _ACTION[1:] if self._synthetic else _ACTION)
        self._state = "text"
        return True

    def _step_json(self, final, events) -> bool:
        if self._scan is None:
            self._scan = _JsonScan()
        used, error = self._scan.feed(self._buf)
        self._buf = self._buf[used:]
        if error:
            return self._fail(events, error)
        if not self._scan.done:
            if final:
                return self._fail(events, "the turn ended inside the action's JSON")
            return False
        source, self._scan = "".join(self._scan.chunks), None
        if not self._calls(source, events):
            return False
        self._state = "action_close"
        return True

    def _step_action_close(self, final, events) -> bool:
        close = END_ACTION if self.fmt == FORMAT_CMD3 else "```" if self._fence else ""
        rest = self._buf.lstrip()
        if close and rest.startswith(close):
            self._buf = rest[len(close):]
        elif close and not final and close.startswith(rest):
            return False  # whitespace or part of the closing marker so far
        elif self.fmt == FORMAT_CMD3 and rest:
            return self._fail(events, "the action's JSON is not followed by <|END_ACTION|>")
        self._state = "top" if self.fmt == FORMAT_CMD3 else "text"
        return True

    # cmd3: blocks between markers; text outside them is answer text, stripped (the whitespace between blocks is
    # layout): trailing whitespace is held back until text follows it.
    def _step_top(self, final, events) -> bool:
        found = _first(self._buf, _TOP_MARKERS)
        end = found[0] if found else len(self._buf) - (0 if final else _partial_suffix(self._buf, _TOP_MARKERS))
        segment = self._buf[:end] if self._top_open else self._buf[:end].lstrip()
        body = segment.rstrip()
        if body:
            self._top_open = True
            self._emit(events, Text, body)
        if not found:
            self._buf = "" if final else segment[len(body):] + self._buf[end:]
            return False
        self._buf, self._top_open = self._buf[end + len(found[1]):], False
        self._state = {START_THINKING: "thinking", START_ACTION: "json", END_OF_TURN: "ended"}.get(found[1], "response")
        return True

    def _step_thinking(self, final, events) -> bool:
        return self._until(final, events, Thinking, (END_THINKING,)) is not None and self._go("top")

    def _step_response(self, final, events) -> bool:
        return self._until(final, events, Text, (END_RESPONSE, END_TEXT)) is not None and self._go("top")

    def _go(self, state: str) -> bool:
        self._state = state
        return True

    def _step_ended(self, final, events) -> bool:  # after <|END_OF_TURN_TOKEN|>: nothing more is the turn's
        self._buf = ""

    def _calls(self, source: str, events: list[Event]) -> bool:
        try:
            value = parse_json(source)
        except ValueError as e:
            return self._fail(events, f"the action {one_line(e, 200)}")
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
            return self._fail(events, "the action is not a list of {\"tool_name\", \"parameters\"} objects")
        if len(value) > MAX_CALLS:
            return self._fail(events, f"the action has {len(value)} calls, over the {MAX_CALLS} allowed")
        parsed = []
        for c in value:
            name, params = c.get("tool_name"), c.get("parameters", {})
            if not isinstance(name, str) or not name or len(name) > MAX_NAME:
                return self._fail(events, "a call's tool_name is not a name")
            if not isinstance(params, dict):
                return self._fail(events, f"the parameters of the call to {one_line(name, 60)} are not an object")
            parsed.append((name, params))
        for name, params in parsed:
            if name in DIRECTLY_ANSWER and (self._known is None or name not in self._known):
                self.directly_answer = True
                events.append(DirectlyAnswer())
                continue
            call = {"id": next(self.ids), "type": "function",
                    "function": {"name": name, "arguments": json.dumps(params, ensure_ascii=False)}}
            self.tool_calls.append(call)  # every call the model made: the history must hold what each result answers
            if self._known is not None and name not in self._known:
                events.append(Error(f"the model called an unknown tool {one_line(name, 60)!r}", call))
            else:
                events.append(ToolCall(call))
        return True


def _first(buf: str, markers: tuple[str, ...]) -> tuple[int, str] | None:
    """(index, marker) of the earliest of `markers` in `buf`, or None."""
    found = [(i, m) for m in markers if (i := buf.find(m)) >= 0]
    return min(found) if found else None


def _partial_suffix(buf: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `buf` that is a proper start of one of `markers` (to hold back)."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(buf)), best, -1):
            if buf.endswith(m[:k]):
                best = k
                break
    return best


# ------------------------------------------------------------------------------------------------------ messages


def template_messages(messages: Iterable[dict]) -> list[dict]:
    """A copy of `messages` ready for a Cohere tool template: each tool call's JSON-string `arguments` (OpenAI
    format) parsed into the dict the templates render; anything else (a dict already, JSON that is no object) kept."""
    out = []
    for m in messages:
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if isinstance(calls, list):
            m = {**m, "tool_calls": [
                {**c, "function": {**c["function"], "arguments": _as_dict(c["function"]["arguments"])}}
                if isinstance(c, dict) and isinstance(c.get("function"), dict) and "arguments" in c["function"]
                else c for c in calls]}
        out.append(m)
    return out


def _as_dict(arguments):
    if isinstance(arguments, str):
        try:
            parsed = parse_json(arguments)
        except ValueError:
            return arguments
        return parsed if isinstance(parsed, dict) else arguments
    return arguments
