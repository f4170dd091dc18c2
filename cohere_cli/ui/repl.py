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
from cohere_cli.ui.reader import Reader, typing_unechoed
from cohere_cli.ui.toolview import list_tools, tool_answer

HELP = [
    ("/help", "this list"),
    ("/exit", "leave (or Ctrl-D)"),
    ("/reset", "forget the conversation (keeps the preamble and documents)"),
    ("/system [TEXT]", "show or set the system preamble"),
    ("/set [NAME VALUE]", "show the settings, or set temperature, top_p, top_k, min_p, max_tokens, seed (a number "
                          "or random), repetition_penalty"),
    ("/show", "model, precision, settings, context used, exchanges (a message and its answer)"),
    ("/regen", "answer the last message again"),
    ("/undo", "remove the last exchange"),
    ("/edit", "edit your last message and answer it again"),
    ("/copy", "copy the last answer to the clipboard"),
    ("/save [FILE]", "save the conversation as JSON"),
    ("/load FILE", "load a saved conversation"),
    ("/doc add FILE | list | clear", "documents for grounded answers with citations"),
    ("/sources", "the documents the last answer cited"),
    ("/stats", "tokens and speed per answer (interrupted ones too)"),
    ("/tools", "the tools the model may call (--tools FILE)"),
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
        words = COMMANDS + ["/doc add", "/doc list", "/doc clear"] + [f"/set {k}" for k in SETTABLE]
        self.reader = Reader(self.tty, history_file, words)
        self.last_footnotes: list[str] = []
        self._before = None  # the conversation as it was before the current turn (turn, _restore)
        self.tools = self.tool_view = None  # --tools: a ToolLoop (chat/toolloop.py) and its view (ui/toolview.py)

    # ---- main loop ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Until /exit, Ctrl-D, the end of piped input or Ctrl-C twice on an empty prompt; nothing else ends it."""
        e = self.engine
        info(f"cohere chat · {e.name} · context {e.context} tokens · /help for commands, Ctrl-D to leave")
        armed = False
        while True:
            try:
                text = self.reader.read()
            except KeyboardInterrupt:
                if armed:
                    break
                info("(Ctrl-C again or Ctrl-D to leave)")
                armed = True
                continue
            except EOFError:
                break
            except CohereError as ex:  # an input over its bound
                error(str(ex))
                continue
            armed = False
            if not text.strip():
                continue
            try:
                if self.turn(text) == "exit":
                    break
            except KeyboardInterrupt:  # a second Ctrl-C while the first was being handled
                self._restore()
                info("[interrupted]")

    def turn(self, text: str) -> str | None:
        """One message or slash command. Whatever goes wrong in it, the session goes on and the conversation is as
        it was before it (a partial answer stopped by Ctrl-C stays: it is part of the transcript)."""
        c = self.conv
        self._before = (c, list(c.turns), list(c.documents), c.system)
        try:
            if text.lstrip().startswith("/"):
                return self.command(text.strip())
            self.conv.add_user(text)
            self.answer()
        except KeyboardInterrupt:  # Ctrl-C before the answer streams (rendering, fitting, connecting) or in a command
            self._restore()  # the new message was not answered: as if it was never sent; /regen keeps the old answer
            info("[interrupted]")
        except CohereError as ex:  # one line, and the session goes on
            self._restore()
            error(str(ex))
        except (MemoryError, RuntimeError) as ex:
            if not isinstance(ex, MemoryError) and "out of memory" not in str(ex).lower():
                self._unexpected(ex)
            else:
                self._restore()
                self.engine.reset()
                error("out of memory for this turn: /reset, shorten the conversation, or restart with a smaller "
                      "--ctx or a quantized model")
        except Exception as ex:  # noqa: BLE001 - the last resort: a bug must not cost the user the conversation
            self._unexpected(ex)
        return None

    def _restore(self) -> None:
        """The conversation as it was before this turn (unless its answer is already in it)."""
        if self._before is not None:
            self.conv, turns, documents, self.conv.system = self._before
            self.conv.turns[:], self.conv.documents[:] = turns, documents
            self._before = None

    def _unexpected(self, ex: BaseException) -> None:
        self._restore()
        try:
            self.engine.reset()  # the KV cache may hold half a turn
        except Exception:  # noqa: BLE001
            pass
        error(f"unexpected {type(ex).__name__}: {ex} (the conversation is kept: /save it, and please report this)")

    def answer(self) -> None:
        if self.tools is not None:
            return tool_answer(self)
        # keys typed meanwhile would be echoed into the live region and break its redraws (reader.py)
        with typing_unechoed(self.tty):
            ids, dropped = self.engine.fit(self.conv)  # a message that does not fit is not kept (turn restores)
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
            except BaseException:
                stream.close()  # the terminal back to normal (no live region left) before the error line
                raise
            tail = cites.finish() if cites else ""
            stream.close(tail)
            self.conv.add_assistant("".join(raw), interrupted=interrupted)
            self._before = None  # the answer is in the conversation now: whatever happens next keeps it
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

    def settings(self) -> dict[str, str]:
        """Every /set-table value as the user would type it (a seed left to chance: `random`, never `None`)."""
        p = self.engine.settings.params
        values = {k: getattr(p, k, None) for k in SETTABLE}
        values["max_tokens"] = self.engine.settings.max_tokens
        return {k: "random" if v is None else str(v) for k, v in values.items()}

    def cmd_set(self, arg):
        key, _, value = arg.partition(" ")
        if not arg:  # as ollama's /show parameters: what /set would change
            t = Table(show_header=False, box=None, pad_edge=False)
            for k, v in self.settings().items():
                t.add_row(k, v)
            err.print(t)
            info("/set NAME VALUE changes one")
            return
        if key not in SETTABLE or not value.strip():
            error(f"usage: /set {'|'.join(SETTABLE)} VALUE (/set alone shows them)")
            return
        try:
            v = None if key == "seed" and value.strip().lower() in ("none", "random") else SETTABLE[key](value)
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
        info(f"{key} = {self.settings()[key]}")

    def cmd_show(self, arg):
        e = self.engine
        t = Table(show_header=False, box=None, pad_edge=False)
        for k, v in e.describe().items():  # a server's model id, a checkpoint's template name: untrusted
            t.add_row(shown(k), shown(v))
        v = self.settings()
        t.add_row("sampling", ", ".join(f"{k} {v[k]}" for k in SETTABLE if k != "max_tokens"))
        t.add_row("max_tokens", v["max_tokens"])
        used = e.context_used(self.conv)  # the conversation as it is now: after /undo, /reset, /load too
        t.add_row("context", f"{used}/{e.context} tokens used" if used is not None else
                  f"?/{e.context} tokens used (the server counts them: known after the next answer)")
        t.add_row("conversation", self.conv.summary())
        err.print(t)

    def cmd_regen(self, arg):
        i = max((i for i, t in enumerate(self.conv.turns) if t["role"] == "user"), default=len(self.conv.turns))
        if i >= len(self.conv.turns) - 1:
            error("nothing to regenerate yet")
            return
        del self.conv.turns[i + 1:]  # its answer, and with tools the calls and results before it
        self.answer()

    def cmd_undo(self, arg):
        if self.conv.pop_exchange() is None:
            error("nothing to undo")
        else:
            n = self.conv.exchanges()
            info(f"removed the last exchange ({n} exchange{'s' * (n != 1)} left)")

    def cmd_edit(self, arg):
        user = self.conv.pop_exchange()
        if user is None:
            error("nothing to edit yet")
            return
        if self.tty:
            self.reader.pending_default = user["content"]  # the next prompt opens with it, ready to edit
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
        info(f"{len(text)} characters: {how}" if how else
             "not copied: no clipboard command (wl-copy, xclip, xsel, pbcopy) and no terminal to send OSC 52 to; "
             "/save writes the conversation to a file")

    def cmd_save(self, arg):
        path = Path(arg).expanduser() if arg else default_save_path()
        if not arg:  # our own folder for chats; a folder the user names must already exist (Conversation.save)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"cannot create {path.parent} ({e.strerror or e}): /save FILE elsewhere") from None
        self.conv.save(path)
        info(f"saved {self.conv.summary()} to {path}")

    def cmd_load(self, arg):
        if not arg:
            error("usage: /load FILE")
            return
        self.conv = Conversation.load(Path(arg))
        info(f"loaded {self.conv.summary()} from {arg}")

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

    def cmd_tools(self, arg):
        list_tools(self.tools, self.tool_view)

    def cmd_stats(self, arg):
        if not self.engine.history:
            info("no answers yet")
            return
        t = Table(title="this session's answers (each /regen is one more)")
        for name in ("#", "prompt", "prefilled", "generated", "context", "TTFT", "tok/s"):
            t.add_column(name, overflow="fold")  # a narrow terminal wraps a number, never cuts it to "27…"
        t.add_column("", no_wrap=True, min_width=len("interrupted"))
        for i, s in enumerate(self.engine.history, 1):
            t.add_row(str(i), str(s.prompt_tokens), str(s.prefilled_tokens), str(s.generated), str(s.used),
                      f"{s.ttft_s * 1000:.0f} ms" if s.generated else "-",
                      f"{s.decode_tokens_per_s:.1f}" if s.generated else "-", "interrupted" if s.interrupted else "")
        err.print(t)


def default_save_path() -> Path:
    from cohere_cli.store import store_root

    return store_root() / "chats" / f"chat-{dt.datetime.now():%Y%m%d-%H%M%S}.json"


CLIPBOARD_COMMANDS = (["wl-copy"], ["xclip", "-selection", "clipboard"], ["xsel", "-b", "-i"], ["pbcopy"],
                      ["clip.exe"])
TMUX_CONF = "`set -g set-clipboard on` in ~/.tmux.conf"


def _ran(cmd: list[str], text: str) -> bool:
    try:
        subprocess.run(cmd, input=text.encode(), check=True, timeout=5, capture_output=True)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def _tmux_set_clipboard() -> str:
    """tmux's set-clipboard option (on, external: tmux passes a copy on to the terminal; off), "" if unknown."""
    try:
        r = subprocess.run(["tmux", "show-options", "-gv", "set-clipboard"], capture_output=True, timeout=5,
                           text=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def copy_to_clipboard(text: str, osc52: bool) -> str | None:
    """Put `text` where the user can paste it; say where, and what it takes to reach the system clipboard when that
    is not sure (never a bare "copied" for an escape sequence nobody may act on). None: nowhere.

    Inside tmux ($TMUX), tmux's own paste buffer first: `tmux load-buffer -w -` also hands it to the terminal's
    clipboard unless tmux's set-clipboard is off (a plain OSC 52 from us would be dropped by tmux's default,
    set-clipboard external). Then a clipboard command (Wayland, X11, macOS, WSL); then, in a terminal, OSC 52
    (works over SSH, where the terminal allows it; inside tmux only with set-clipboard on)."""
    tmux = bool(os.environ.get("TMUX")) and shutil.which("tmux") is not None
    if tmux:
        if _ran(["tmux", "load-buffer", "-w", "-"], text):
            mode = _tmux_set_clipboard()
            if mode in ("on", "external"):
                return ("copied to tmux's paste buffer (prefix ] pastes it), and tmux passed it on to the terminal's "
                        "clipboard (the terminal must accept OSC 52)")
            if mode == "off":
                return ("copied to tmux's paste buffer (prefix ] pastes it), not to the system clipboard: tmux's "
                        f"set-clipboard is off; {TMUX_CONF} passes copies on")
            return ("copied to tmux's paste buffer (prefix ] pastes it), and to the terminal's clipboard if tmux's "
                    f"set-clipboard is on or external ({TMUX_CONF})")
        if _ran(["tmux", "load-buffer", "-"], text):  # tmux before 3.2 has no -w
            return ("copied to tmux's paste buffer (prefix ] pastes it); this tmux cannot pass it on to the system "
                    "clipboard (tmux 3.2 or later can)")
    for cmd in CLIPBOARD_COMMANDS:
        if shutil.which(cmd[0]) and (cmd[0] != "wl-copy" or os.environ.get("WAYLAND_DISPLAY")) and _ran(cmd, text):
            return f"copied with {cmd[0]}"
    if osc52:
        sys.stdout.write("\x1b]52;c;" + base64.b64encode(text.encode()).decode() + "\x07")
        sys.stdout.flush()
        if os.environ.get("TMUX"):
            return f"sent as an OSC 52 escape: inside tmux it reaches the clipboard only with {TMUX_CONF}"
        return ("sent to the terminal as an OSC 52 escape: it is on the clipboard if the terminal accepts OSC 52 "
                "(most do; some need it allowed in their settings)")
    return None
