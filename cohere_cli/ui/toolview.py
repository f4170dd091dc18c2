"""What the user sees of tool use in `cohere chat --tools`: the answer streaming (thinking dimmed, on stderr), each
call the model makes (name and arguments, made inert: model output is untrusted), the `y/N/always` question, the
results, citations. The loop itself is chat/toolloop.py; the REPL hands its turns here (Repl.answer)."""

from __future__ import annotations

import json
import sys

from rich.table import Table

from cohere_cli.chat.toolloop import ToolLoop, TurnResult, call_arguments
from cohere_cli.engine.response import Response
from cohere_cli.ui.console import err, error, info, out_write, shown, warn
from cohere_cli.ui.mdstream import MarkdownStream, PlainStream
from cohere_cli.ui.reader import typing_unechoed
from cohere_cli.ui.thinking import ThinkingNote
from cohere_cli.untrusted import one_line

MAX_SHOWN_RESULT = 200  # characters of a tool's result shown (the model gets all of it, within its bound)
QUESTION = "run it? [y/N/always] "


class TerminalToolView:
    """The REPL's view (and --prompt's, with stream_out=PlainStream-like printing): `yes` runs every call without
    asking (--yes); answering `always` does so for the rest of the session. Without a terminal to ask on (piped
    input), a call is not run unless --yes: reading the answer would eat the next line of the input."""

    def __init__(self, *, plain: bool, out=None, tty: bool, yes: bool = False, collect: bool = False,
                 hide_thinking: bool = False):
        self.plain, self.out, self.tty, self.always, self.collect = plain, out, tty, yes, collect
        self.stream = None
        self.footnote_lines: list[str] = []
        self._quiet = None
        self._thinking = False
        self.thoughts = ThinkingNote(hide_thinking)

    # ---- the answer streaming -------------------------------------------------------------------------------------
    def begin(self) -> None:
        self.stream, self._thinking = None, False
        self.thoughts.count = 0
        self._quiet = typing_unechoed(self.tty)  # keys typed while it streams are not echoed into it (reader.py)
        self._quiet.__enter__()

    def text(self, text: str) -> None:
        if not text or self.collect:
            return
        self._end_thinking()
        self.thoughts.close()
        if self.stream is None:
            self.stream = PlainStream() if self.plain else MarkdownStream(self.out)
        self.stream.update(text)

    def thinking(self, text: str) -> None:
        if self.thoughts.show(text):  # on stderr: with --json too
            self._thinking = True

    def _end_thinking(self) -> None:
        if self._thinking:
            err.print()
            self._thinking = False

    def end(self, last: Response | None, interrupted: bool) -> None:
        self._end_thinking()
        self.thoughts.close()
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        if self._quiet is not None:
            self._quiet.__exit__(None, None, None)
            self._quiet = None

    def dropped(self, n: int) -> None:
        warn(f"context full: dropped the {n} oldest exchange{'s' * (n > 1)} (the preamble and documents stay)")

    # ---- calls --------------------------------------------------------------------------------------------------
    def call(self, call: dict) -> None:
        fn = call["function"]
        err.print(f"[cyan]tool call:[/cyan] [bold]{shown(one_line(fn['name'], 80))}[/bold] "
                  f"{shown(one_line(call_arguments(call), 500))}", soft_wrap=True)

    def confirm(self, call: dict) -> bool:
        if self.always:
            return True
        if not self.tty:
            info("not run: there is no terminal to ask on (--yes runs tools without asking)")
            return False
        while True:
            err.print(shown(QUESTION), end="")
            line = sys.stdin.readline()  # Ctrl-C here: KeyboardInterrupt, the turn is taken back (Repl.turn)
            answer = line.strip().lower()
            if not line or answer in ("", "n", "no"):
                info("not run")
                return False
            if answer in ("y", "yes"):
                return True
            if answer in ("a", "always"):
                self.always = True
                info("tools run without asking for the rest of this session")
                return True
            error("answer y, n or always")

    def result(self, call: dict, result: str) -> None:
        style = "red" if result.startswith("error:") else "dim"
        head = one_line(result, MAX_SHOWN_RESULT)
        more = f" ({len(result)} characters)" if len(result) > MAX_SHOWN_RESULT else ""
        err.print(f"[{style}]  → {shown(head)}{more}[/{style}]", soft_wrap=True)

    def error(self, message: str) -> None:
        error(message)

    def note(self, message: str) -> None:
        info(message)

    def footnotes(self, lines: list[str]) -> None:
        self.footnote_lines = lines
        for line in lines:
            err.print(f"[cyan]{shown(line)}[/cyan]", soft_wrap=True)


def tool_answer(repl) -> None:
    """The REPL's answer to its conversation's last message when tools are on (Repl.answer)."""
    view = repl.tool_view
    view.footnote_lines = []
    result = repl.tools.turn(repl.conv, view)
    repl._before = None  # the answer is in the conversation now: whatever happens next keeps it
    repl.last_footnotes = view.footnote_lines
    if result.interrupted:
        info("[interrupted: the partial answer stays in the conversation; /regen to answer again]")
    elif result.last is not None:
        last = result.last
        info(f"{last.prompt_tokens + last.generation_tokens}/{repl.engine.context} tokens · "
             f"{last.prefilled_tokens} prefilled in {last.ttft_s * 1000:.0f} ms · {last.decode_tokens_per_s:.1f} tok/s"
             + (f" · {result.steps} tool round{'s' * (result.steps != 1)}" if result.steps else ""))


def list_tools(loop: ToolLoop | None, view: TerminalToolView | None) -> None:
    """/tools: the tools the model may call."""
    if loop is None or not loop.tools:
        info("no tools: start the chat with --tools FILE (a JSON list, a .py file, or list_models)")
        return
    t = Table(show_header=False, box=None, pad_edge=False)
    for tool in loop.tools.values():
        params = tool.schema["function"].get("parameters", {}).get("properties", {})
        how = " ".join(tool.exec) if tool.exec else "python function" if tool.function else "no exec: answered " \
            "with an error"
        t.add_row(f"[bold]{shown(tool.name)}[/bold]({shown(', '.join(params))})", shown(tool.description),
                  f"[dim]{shown(how)}[/dim]")
    err.print(t)
    info(f"calls {'run without asking' if view is not None and view.always else 'are confirmed (y/N/always)'}; "
         f"at most {loop.max_steps} rounds of calls per message")


def one_shot(loop: ToolLoop, conv, *, json_out: bool, yes: bool, hide_thinking: bool = False) -> TurnResult:
    """`chat --prompt` with tools: the turn printed as it goes (plain text on stdout), or with --json one object
    holding the final text and the whole conversation in OpenAI's message format (tool_calls and tool messages)."""
    tty = sys.stdin.isatty() and sys.stderr.isatty()
    view = TerminalToolView(plain=True, tty=tty, yes=yes, collect=json_out, hide_thinking=hide_thinking)
    loop.markdown = False  # printed as it comes: citations as [n] marks, no ** around the cited spans
    result = loop.turn(conv, view)
    last = result.last
    if json_out:
        record = {"text": result.text, "thinking": (conv.last("assistant") or {}).get("reasoning_content", ""),
                  "messages": conv.to_json()["messages"], "steps": result.steps,
                  "finish_reason": last.finish_reason if last else None,
                  "prompt_tokens": last.prompt_tokens if last else 0,
                  "completion_tokens": last.generation_tokens if last else 0}
        out_write(json.dumps(record, ensure_ascii=False) + "\n")
    elif last is not None:
        line = (f"{last.prompt_tokens} prompt tokens, {last.generation_tokens} generated, finish: "
                f"{last.finish_reason}, {result.steps} tool round{'s' * (result.steps != 1)}")
        err.print(f"[dim]{shown(line)}[/dim]")
    return result
