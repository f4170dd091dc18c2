"""Tool use in chat (`cohere chat --tools FILE`): one loop for a local model and an endpoint.

Each round renders the conversation with the model's tool template (Command R's `tool_use`, a cmd3 template's tools
path: session.render_text), streams the answer through ToolCallParser (engine/toolcalls.py) and, when the model
calls tools, asks the view (ui/toolview.py) to confirm each call, runs it (chat/tools.py: time and output bounds),
appends the assistant message with its `tool_calls` and one `tool` message per call (OpenAI's message format), and
goes round again, at most `max_steps` rounds of calls. A server that parses calls itself (it takes `tools` in
/v1/chat/completions) hands them over on its closing response; otherwise they are parsed here from the text.

Command R's `tool_use` template asks for `Action:` again after the results; the model says it is done with the
`directly-answer` pseudo-tool. Its answer is then asked for as Cohere documents the multi-step flow (spec 3.3/3.4,
transformers' `apply_grounded_generation_template`): the `rag` template, with this turn's tool results as the
documents, so the answer comes grounded ("Grounded answer: ... <co: 0>...</co: 0>") and shows citations as --doc
answers do. cmd3 models answer in the same template (`<|START_RESPONSE|>`, citations `<co>..</co: 1:[0]>`).

Nothing here prints: what happens is told to the view. Model output is untrusted: names and arguments reach the view
as they are, and the view makes them inert. Ctrl-C while a tool runs stops the tool (its process group is killed) and
raises KeyboardInterrupt: the REPL then puts the conversation back as it was before the turn."""

from __future__ import annotations

import json
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

from cohere_cli.chat.citations import CitationStream
from cohere_cli.chat.conversation import Conversation
from cohere_cli.chat.session import ChatBackend, tool_format
from cohere_cli.chat.tools import template_tool
from cohere_cli.chat.thinking import piece
from cohere_cli.chat.tools import Tool, run_tool
from cohere_cli.engine.response import Response
from cohere_cli.engine.toolcalls import (END_ACTION, END_RESPONSE, END_TEXT, END_THINKING, FORMAT_CMD3, MAX_CALLS,
                                         START_ACTION, START_RESPONSE, START_TEXT, START_THINKING, DirectlyAnswer,
                                         Error, Text, Thinking, ToolCall, ToolCallParser, FORMAT_COMMAND_R)
from cohere_cli.untrusted import one_line

DEFAULT_MAX_STEPS = 5
CMD3_MARKERS = (START_THINKING, END_THINKING, START_ACTION, END_ACTION, START_RESPONSE, END_RESPONSE, START_TEXT,
                END_TEXT)


class ToolView(Protocol):
    """What the user sees of a tool turn (ui/toolview.py)."""

    def begin(self) -> None: ...  # a round's answer starts streaming
    def text(self, text: str) -> None: ...  # answer text (citations already turned into [n] marks)
    def thinking(self, text: str) -> None: ...  # the plan / thinking, shown apart
    def end(self, last: Response | None, interrupted: bool) -> None: ...  # the round's stream is over
    def dropped(self, n: int) -> None: ...  # old exchanges dropped to fit the context
    def call(self, call: dict) -> None: ...  # a call the model made: name and arguments (untrusted)
    def confirm(self, call: dict) -> bool: ...  # run it? (y/N/always, or --yes)
    def result(self, call: dict, result: str) -> None: ...
    def error(self, message: str) -> None: ...  # one line
    def note(self, message: str) -> None: ...
    def footnotes(self, lines: list[str]) -> None: ...


@dataclass
class TurnResult:
    last: Response | None  # the final round's closing response
    text: str  # the final answer's raw text
    interrupted: bool = False
    steps: int = 0  # rounds that called tools


class ToolLoop:
    def __init__(self, engine: ChatBackend, tools: list[Tool], *, max_steps: int = DEFAULT_MAX_STEPS,
                 markdown: bool = True, timeout_s: float | None = None):
        self.engine, self.tools, self.max_steps, self.markdown = engine, {t.name: t for t in tools}, max_steps, markdown
        self.timeout_s = timeout_s
        tok = engine.tokenizer
        if tools:
            engine.settings.tools = [template_tool(t.schema) for t in tools]  # the defaults templates read
            self.fmt = tool_format(tok, engine.settings.template) if tok is not None else FORMAT_COMMAND_R
        else:  # no tools: a plain chat whose template has a thinking phase, its answers read by the same parser
            self.fmt = FORMAT_CMD3
        if self.fmt == FORMAT_CMD3 and hasattr(engine, "keep_markers"):
            engine.keep_markers = CMD3_MARKERS  # a raw completion's text keeps the blocks the parser reads

    # ---- one user turn ------------------------------------------------------------------------------------------
    def turn(self, conv: Conversation, view: ToolView) -> TurnResult:
        """Answer the conversation's last user message, with as many rounds of tool calls as the model makes (at
        most max_steps). The assistant and tool messages are appended to `conv` as they happen."""
        start = max((i + 1 for i, t in enumerate(conv.turns) if t["role"] == "user"), default=0)
        steps = 0
        while True:
            parser, result = self._round(conv, view, cited=self._has_results(conv, start))
            text = parser.text.strip() if self.fmt == FORMAT_CMD3 else result.text
            thinking = parser.thinking.strip() if self.fmt == FORMAT_CMD3 else None  # chat/thinking.py: history
            if result.interrupted:  # Ctrl-C in the answer: the partial answer stays, as in plain chat
                conv.add_assistant(text, interrupted=True, thinking=thinking)
                return replace(result, text=text, steps=steps)
            if parser.failed:  # the model's action is unusable: one line, its text kept, the turn over
                view.error(f"the model's tool call is malformed: {parser.failed}")
                conv.add_assistant(text, thinking=thinking)
                return replace(result, text=text, steps=steps)
            if not parser.tool_calls and (parser.directly_answer or self._empty(parser)) and self.fmt != FORMAT_CMD3:
                return self._grounded_answer(conv, view, start, steps)
            if not parser.tool_calls or not self.tools:
                conv.add_assistant(text, thinking=thinking)
                return replace(result, text=text, steps=steps)
            if steps >= self.max_steps:
                view.note(f"stopped after {steps} rounds of tool calls (--max-steps {self.max_steps}): ask again "
                          f"to go on")
                return replace(result, steps=steps)
            steps += 1
            message = parser.message()
            conv.turns.append(message)
            for call in message["tool_calls"]:
                conv.turns.append({"role": "tool", "tool_call_id": call["id"], "content": self._call(call, view)})

    @staticmethod
    def _empty(parser: ToolCallParser) -> bool:
        return not parser.text.strip()

    def _round(self, conv: Conversation, view: ToolView, cited: bool,
               titles: list[str] | None = None) -> tuple[ToolCallParser, TurnResult]:
        ids, dropped = self.engine.fit(conv)
        if dropped:
            view.dropped(dropped)
        tok = self.engine.tokenizer
        prefix = tok.decode(ids[-8:]) if tok is not None and ids else ""
        parser = ToolCallParser(self.fmt, tools=self.tools or None, prefix=prefix)
        cites = None
        if cited or conv.documents:
            cites = CitationStream(titles if titles is not None else self._titles(conv), markdown=self.markdown)
            if self.fmt == FORMAT_CMD3 and titles is None:
                n = len(conv.documents)  # documents are call 0's results; then one source per tool call
                cites.source = (lambda call, res: res if call == 0 else n + call - 1) if n else (lambda call, res: call)
        raw, last, interrupted = [], None, False
        view.begin()

        def show(events):
            for e in events:
                if isinstance(e, Text):
                    view.text(cites.feed(e.text) if cites else e.text)
                elif isinstance(e, Thinking):
                    view.thinking(e.text)
                elif isinstance(e, Error) and e.call is not None:
                    pass  # an unknown tool: answered with an error result (_call)
                elif isinstance(e, (ToolCall, DirectlyAnswer, Error)):
                    pass  # shown when they are run / the turn ends

        try:
            for r in self.engine.stream(conv, ids):
                if r.error:
                    view.error(r.error)
                raw.append(piece(r, tok))  # a control token as its marker: the cmd3 blocks are made of them
                show(parser.feed(raw[-1]))
                if r.tool_calls:
                    self._server_calls(parser, r.tool_calls)
                last = r
        except KeyboardInterrupt:
            interrupted = True
        except BaseException:
            view.end(None, True)
            raise
        if not interrupted:
            show(parser.finish())
        if cites:
            view.text(cites.finish())
        view.end(last, interrupted)
        if cites and cites.footnotes:
            view.footnotes(cites.footnote_lines())
        return parser, TurnResult(last, "".join(raw), interrupted)

    def _server_calls(self, parser: ToolCallParser, calls: list) -> None:
        """The calls a server parsed (its closing response), checked as the parser checks the model's."""
        for c in calls[:MAX_CALLS]:
            fn = c.get("function") if isinstance(c, dict) else None
            name = fn.get("name") if isinstance(fn, dict) else None
            if not isinstance(name, str) or not name:
                parser.failed = "the server sent a tool call without a name"
                return
            args = fn.get("arguments") or "{}"
            call_id = c.get("id") if isinstance(c.get("id"), str) and c.get("id") else "call_" + uuid.uuid4().hex[:24]
            parser.tool_calls.append({"id": call_id, "type": "function",
                                      "function": {"name": name[:256], "arguments": args}})

    # ---- running one call -----------------------------------------------------------------------------------------
    def _call(self, call: dict, view: ToolView) -> str:
        view.call(call)
        name = call["function"]["name"]
        tool = self.tools.get(name)
        if tool is None:
            result = f"error: there is no tool named {one_line(name, 60)!r}; the tools are: {', '.join(self.tools)}"
        elif not view.confirm(call):
            result = "error: the user declined to run this tool"
        else:
            result = self._run(tool, call["function"]["arguments"])
        view.result(call, result)
        return result

    def _run(self, tool: Tool, arguments: str) -> str:
        """run_tool in a worker thread, so that Ctrl-C here stops it (the tool's process group is killed) before the
        KeyboardInterrupt goes on up."""
        cancel, box = threading.Event(), {}
        kwargs = {"timeout_s": self.timeout_s} if self.timeout_s else {}
        worker = threading.Thread(target=lambda: box.setdefault("r", run_tool(tool, arguments, cancel=cancel,
                                                                               **kwargs)), daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.05)
        except KeyboardInterrupt:
            cancel.set()
            worker.join(5)
            raise
        return box.get("r", "error: the tool gave no result")

    # ---- Command R: the final answer, grounded on the tool results -----------------------------------------------
    def _grounded_answer(self, conv: Conversation, view: ToolView, start: int, steps: int) -> TurnResult:
        docs = list(conv.documents) + self._result_docs(conv, start)
        flat = Conversation(system=conv.system, turns=_flatten(conv.turns), documents=docs)
        with self._plain():
            parser, result = self._round(flat, view, cited=bool(docs), titles=[d.get("title", "") for d in docs])
        conv.add_assistant(result.text, interrupted=result.interrupted)
        return replace(result, steps=steps)

    @contextmanager
    def _plain(self):
        """Render without tools (the rag template, or the default one when there is nothing to ground on)."""
        s = self.engine.settings
        saved = (s.tools, s.template)
        s.tools, s.template = None, None
        try:
            yield
        finally:
            s.tools, s.template = saved

    def _has_results(self, conv: Conversation, start: int) -> bool:
        return any(t["role"] == "tool" for t in conv.turns[start:])

    def _titles(self, conv: Conversation) -> list[str]:
        """Citation titles in the order the template numbers sources: documents, then each tool call's result."""
        return [d.get("title", "") for d in conv.documents] + [d["title"] for d in self._result_docs(conv, 0)]

    @staticmethod
    def _result_docs(conv: Conversation, start: int) -> list[dict]:
        calls = {c["id"]: c["function"] for t in conv.turns if t.get("tool_calls") for c in t["tool_calls"]}
        docs = []
        for t in conv.turns[start:]:
            if t["role"] == "tool":
                fn = calls.get(t.get("tool_call_id"), {"name": "tool", "arguments": ""})
                docs.append({"title": f"{fn['name']} {one_line(fn['arguments'], 80)}".strip(), "text": t["content"]})
        return docs


def _flatten(turns: list[dict]) -> list[dict]:
    """The turns as plain text messages (what the default and rag templates take): tool calls and their results
    left out (the results are the documents), an assistant's text around its calls kept."""
    out = []
    for t in turns:
        if t["role"] == "tool" or (t.get("tool_calls") and not (t.get("content") or "").strip()):
            continue
        m = {"role": t["role"], "content": t.get("content") or ""}
        if out and out[-1]["role"] == m["role"] == "assistant":
            out[-1]["content"] += "\n" + m["content"]
        else:
            out.append(m)
    return out


def call_arguments(call: dict) -> str:
    """A call's arguments as compact JSON text for showing (the model's text if it is no JSON)."""
    args = call["function"].get("arguments", "")
    try:
        return json.dumps(json.loads(args), ensure_ascii=False)
    except (TypeError, ValueError):
        return str(args)
