"""The interactive `cohere chat` session: prompt-toolkit input, streamed answers, slash commands."""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cohere_cli.chat.citations import CitationStream
from cohere_cli.ui.console import err, error, info, warn, shown
from cohere_cli.chat.conversation import Conversation, read_document
from cohere_cli.chat.session import ChatBackend
from cohere_cli.engine.sampling import check_bounds
from cohere_cli.errors import CohereError, UsageError
from cohere_cli.ui.mdstream import MarkdownStream, PlainStream

HELP = [
    ("/help", "this list"),
    ("/exit", "leave (or Ctrl-D)"),
    ("/reset", "forget the conversation (keeps the preamble and documents)"),
    ("/system [TEXT]", "show or set the system preamble"),
    ("/set NAME VALUE", "temperature, top_p, top_k, min_p, max_tokens, seed, repetition_penalty"),
    ("/show", "model, precision, settings, context used"),
    ("/regen", "answer the last message again"),
    ("/undo", "remove the last exchange"),
    ("/edit", "edit your last message and answer it again"),
    ("/copy", "copy the last answer to the clipboard"),
    ("/save [FILE]", "save the conversation as JSON"),
    ("/load FILE", "load a saved conversation"),
    ("/doc add FILE | list | clear", "documents for grounded answers with citations"),
    ("/sources", "the documents the last answer cited"),
    ("/stats", "tokens and speed per turn"),
]
COMMANDS = [h[0].split()[0] for h in HELP]
SETTABLE = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "max_tokens": int,
            "seed": int, "repetition_penalty": float}


class Repl:
    def __init__(self, engine: ChatBackend, conv: Conversation, *, plain: bool, history_file: Path | None):
        self.engine, self.conv = engine, conv
        self.tty = sys.stdin.isatty() and sys.stdout.isatty()
        self.plain = plain or not sys.stdout.isatty()
        self.out = Console(highlight=False)  # answers go to stdout
        self.history_file = history_file
        self.prompt_session = None
        self.last_footnotes: list[str] = []
        self._pending_default = ""

    # ---- input ------------------------------------------------------------------------------------------------
    def _session(self):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import WordCompleter
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings

        kb = KeyBindings()

        @kb.add("escape", "enter")  # Alt-Enter: a new line instead of sending
        def _(event):
            event.current_buffer.insert_text("\n")

        history = InMemoryHistory()
        if self.history_file is not None:
            try:
                self.history_file.parent.mkdir(parents=True, exist_ok=True)
                history = FileHistory(str(self.history_file))
            except OSError:
                pass
        words = COMMANDS + ["/doc add", "/doc list", "/doc clear"] + [f"/set {k}" for k in SETTABLE]
        return PromptSession(history=history, key_bindings=kb, enable_history_search=False,
                             completer=WordCompleter(words, sentence=True, match_middle=False),
                             complete_while_typing=True, reserve_space_for_menu=4)

    def read(self) -> str:
        if not self.tty:
            line = sys.stdin.readline()
            if not line:
                raise EOFError
            text = line.rstrip("\n")
            if text.strip().startswith('"""'):
                text = self._read_block(text, lambda: sys.stdin.readline().rstrip("\n"))
            return text
        if self.prompt_session is None:
            self.prompt_session = self._session()
        default, self._pending_default = self._pending_default, ""
        text = self.prompt_session.prompt(">>> ", default=default)
        if text.strip().startswith('"""'):
            text = self._read_block(text, lambda: self.prompt_session.prompt("... "))
        return text

    @staticmethod
    def _read_block(first: str, more) -> str:
        """A \"\"\"-delimited block over several lines."""
        body = first.strip()[3:]
        if body.rstrip().endswith('"""'):
            return body.rstrip()[:-3]
        lines = [body] if body else []
        while True:
            line = more()
            if line.rstrip().endswith('"""'):
                lines.append(line.rstrip()[:-3])
                return "\n".join(lines).strip("\n")
            lines.append(line)

    # ---- main loop ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        e = self.engine
        info(f"cohere chat · {e.name} · context {e.context} tokens · /help for commands, Ctrl-D to leave")
        armed = False
        while True:
            try:
                text = self.read()
            except KeyboardInterrupt:
                if armed:
                    break
                info("(Ctrl-C again or Ctrl-D to leave)")
                armed = True
                continue
            except EOFError:
                break
            armed = False
            if not text.strip():
                continue
            sent = False
            try:
                if text.lstrip().startswith("/"):
                    if self.command(text.strip()) == "exit":
                        break
                else:
                    self.conv.add_user(text)
                    sent = True
                    self.answer()
            except KeyboardInterrupt:  # Ctrl-C before the answer streams (fitting, connecting) or in a command
                if sent and self.conv.turns and self.conv.turns[-1]["role"] == "user":
                    self.conv.pop_exchange()  # the new message was not answered: as if it was never sent
                info("[interrupted]")  # (a /regen keeps its question: /regen again asks it again)
            except CohereError as ex:  # one line, and the session goes on
                error(str(ex))
            except (MemoryError, RuntimeError) as ex:
                if not isinstance(ex, MemoryError) and "out of memory" not in str(ex).lower():
                    raise
                if self.conv.turns and self.conv.turns[-1]["role"] == "user":
                    self.conv.pop_exchange()
                self.engine.reset()
                error("out of memory for this turn: /reset, shorten the conversation, or restart with a smaller "
                      "--ctx or a quantized model")

    def answer(self) -> None:
        try:
            ids, dropped = self.engine.fit(self.conv)
        except CohereError:
            self.conv.pop_exchange()  # the message that does not fit is not kept
            raise
        if dropped:
            warn(f"context full: dropped the {dropped} oldest exchange{'s' * (dropped > 1)} "
                 f"(the preamble and documents stay)")
        stream = PlainStream() if self.plain else MarkdownStream(self.out)
        cites = CitationStream([d.get("title", "") for d in self.conv.documents], markdown=not self.plain) \
            if self.conv.documents else None
        raw, last, interrupted = [], None, False
        try:
            for r in self.engine.stream(self.conv, ids):
                if r.error:
                    error(r.error)
                raw.append(r.text)
                stream.update(cites.feed(r.text) if cites else r.text)
                last = r
        except KeyboardInterrupt:
            interrupted = True
        tail = cites.finish() if cites else ""
        stream.close(tail)
        self.conv.add_assistant("".join(raw), interrupted=interrupted)
        if cites:
            self.last_footnotes = cites.footnote_lines()
            for line in self.last_footnotes:
                err.print(f"[cyan]{shown(line)}[/cyan]", soft_wrap=True)
        if interrupted:
            info("[interrupted: the partial answer stays in the conversation; /regen to answer again]")
        elif last is not None:
            used = last.prompt_tokens + last.generation_tokens
            info(f"{used}/{self.engine.context} tokens · {last.prefilled_tokens} prefilled in "
                 f"{last.ttft_s * 1000:.0f} ms · {last.decode_tokens_per_s:.1f} tok/s")

    # ---- slash commands -----------------------------------------------------------------------------------------
    def command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        handler = getattr(self, "cmd_" + name[1:].replace("-", "_"), None)
        if name not in COMMANDS or handler is None:
            error(f"unknown command {name}: /help lists them")
            return None
        return handler(arg)

    def cmd_help(self, arg):
        t = Table(show_header=False, box=None, pad_edge=False)
        for k, v in HELP:
            t.add_row(f"[bold]{shown(k)}[/bold]", shown(v))
        t.add_row("Alt-Enter", 'new line (or wrap a block in """ ... """)')
        t.add_row("Ctrl-C", "stop the answer (twice on an empty prompt: leave)")
        err.print(t)

    def cmd_exit(self, arg):
        return "exit"

    def cmd_reset(self, arg):
        self.conv.clear()
        self.engine.reset()
        info("conversation cleared (preamble and documents kept)")

    def cmd_system(self, arg):
        if not arg:
            info(f"system preamble: {self.conv.system!r}" if self.conv.system else "no system preamble")
            return
        self.conv.system = arg
        info("system preamble set")

    def cmd_set(self, arg):
        key, _, value = arg.partition(" ")
        if key not in SETTABLE or not value.strip():
            error(f"usage: /set {'|'.join(SETTABLE)} VALUE")
            return
        try:
            v = None if key == "seed" and value.strip().lower() == "none" else SETTABLE[key](value)
        except ValueError:
            error(f"{key} takes a{'n integer' if SETTABLE[key] is int else ' number'}, not {value!r}")
            return
        try:
            check_bounds(key, v)
        except UsageError as e:
            error(str(e))
            return
        if key == "max_tokens":
            self.engine.settings.max_tokens = v
        else:
            self.engine.with_params(**{key: v})
        info(f"{key} = {v}")

    def cmd_show(self, arg):
        e, p = self.engine, self.engine.settings.params
        t = Table(show_header=False, box=None, pad_edge=False)
        for k, v in e.describe().items():
            t.add_row(k, str(v))
        t.add_row("sampling", f"temperature {p.temperature}, top_k {p.top_k}, top_p {p.top_p}, min_p {p.min_p}, "
                              f"repetition_penalty {p.repetition_penalty}, seed {p.seed}")
        t.add_row("max_tokens", str(e.settings.max_tokens))
        used = e.history[-1].prompt_tokens + e.history[-1].generated if e.history else 0
        t.add_row("context", f"{used}/{e.context} tokens used")
        t.add_row("conversation", f"{len(self.conv.turns)} turns, {len(self.conv.documents)} documents")
        err.print(t)

    def cmd_regen(self, arg):
        if not self.conv.turns or self.conv.turns[-1]["role"] != "assistant":
            error("nothing to regenerate yet")
            return
        self.conv.turns.pop()
        self.answer()

    def cmd_undo(self, arg):
        if self.conv.pop_exchange() is None:
            error("nothing to undo")
        else:
            info("removed the last exchange")

    def cmd_edit(self, arg):
        user = self.conv.pop_exchange()
        if user is None:
            error("nothing to edit yet")
            return
        if self.tty:
            self._pending_default = user["content"]  # the next prompt opens with it, ready to edit
            info("edit your last message and press Enter")
        else:
            info("last message removed: type its new version")

    def cmd_copy(self, arg):
        last = self.conv.last("assistant")
        if last is None:
            error("no answer to copy yet")
            return
        text = last["content"]
        how = copy_to_clipboard(text, osc52=sys.stdout.isatty())
        info(f"copied {len(text)} characters ({how})" if how else "no clipboard here: use /save")

    def cmd_save(self, arg):
        path = Path(arg).expanduser() if arg else default_save_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conv.save(path)
        info(f"saved {len(self.conv.turns)} turns to {path}")

    def cmd_load(self, arg):
        if not arg:
            error("usage: /load FILE")
            return
        self.conv = Conversation.load(Path(arg))
        info(f"loaded {len(self.conv.turns)} turns from {arg}")

    def cmd_doc(self, arg):
        sub, _, rest = arg.partition(" ")
        if sub == "add" and rest.strip():
            doc = read_document(Path(rest.strip()))
            self.engine.check_grounding()
            self.conv.documents.append(doc)
            info(f"document {len(self.conv.documents) - 1}: {doc['title']} ({len(doc['text'])} characters)")
        elif sub == "list":
            if not self.conv.documents:
                info("no documents")
            for i, d in enumerate(self.conv.documents):
                info(f"{i}: {d.get('title', '')} ({len(d.get('text', ''))} characters)")
        elif sub == "clear":
            self.conv.documents.clear()
            info("documents cleared")
        else:
            error("usage: /doc add FILE | /doc list | /doc clear")

    def cmd_sources(self, arg):
        if not self.last_footnotes:
            info("the last answer cited no documents")
        for line in self.last_footnotes:
            err.print(f"[cyan]{shown(line)}[/cyan]", soft_wrap=True)

    def cmd_stats(self, arg):
        t = Table("turn", "prompt", "prefilled", "generated", "first token", "tok/s")
        for i, s in enumerate(self.engine.history, 1):
            t.add_row(str(i), str(s.prompt_tokens), str(s.prefilled_tokens), str(s.generated),
                      f"{s.ttft_s * 1000:.0f} ms", f"{s.decode_tokens_per_s:.1f}")
        err.print(t)


def default_save_path() -> Path:
    from cohere_cli.store import store_root

    return store_root() / "chats" / f"chat-{dt.datetime.now():%Y%m%d-%H%M%S}.json"


def copy_to_clipboard(text: str, osc52: bool) -> str | None:
    """A clipboard command where one exists, and OSC 52 in a terminal (works over SSH). Returns how."""
    for cmd in (["wl-copy"], ["xclip", "-selection", "clipboard"], ["xsel", "-b", "-i"], ["pbcopy"], ["clip.exe"]):
        if shutil.which(cmd[0]) and (cmd[0] != "wl-copy" or os.environ.get("WAYLAND_DISPLAY")):
            try:
                subprocess.run(cmd, input=text.encode(), check=True, timeout=5, capture_output=True)
                return cmd[0]
            except (OSError, subprocess.SubprocessError):
                pass
    if osc52:
        sys.stdout.write("\x1b]52;c;" + base64.b64encode(text.encode()).decode() + "\x07")
        sys.stdout.flush()
        return "OSC 52 terminal escape"
    return None
