"""What the REPL reads: a prompt-toolkit line editor in a terminal (history, completion, Alt-Enter), or piped lines;
both take \"\"\"-delimited blocks over several lines. Every message has a size bound, and the end of the input is
always EOFError (never a wait or a busy loop)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from cohere_cli.chat.conversation import MAX_DOCUMENT
from cohere_cli.errors import UsageError
from cohere_cli.ui.console import warn

# One message typed or piped (a line, or a """ block): as much text as a document may hold (longer text: /doc add).
MAX_MESSAGE = MAX_DOCUMENT


def _stdin_line() -> str:
    """One line of piped input without its newline, at most MAX_MESSAGE characters (a longer line is skipped to its
    end, then refused); EOFError at the end of the input."""
    line = sys.stdin.readline(MAX_MESSAGE + 1)
    if not line:
        raise EOFError
    if len(line) > MAX_MESSAGE and not line.endswith("\n"):
        while (rest := sys.stdin.readline(1 << 20)) and not rest.endswith("\n"):
            pass
        raise UsageError(f"an input line is over {MAX_MESSAGE >> 20} MiB: /doc add FILE for long text")
    return line.rstrip("\n")


@contextmanager
def typing_unechoed(tty: bool):
    """While an answer streams: keys typed are not echoed by the terminal. The echo would land inside rich's live
    region and break its cursor arithmetic (a line drawn twice, an answer line overwritten). Signals stay on (Ctrl-C
    stops the answer), and the echo comes back however the block ends. What was typed is kept for the next prompt,
    where it shows and can be edited, as a shell or IPython keeps type-ahead (prompt-toolkit keeps it between
    prompts too); after a Ctrl-C it is gone, as the terminal drops pending input on an interrupt."""
    try:
        import termios
    except ImportError:  # Windows: its console echoes typed keys only while a read waits for them
        termios = None
    saved = None
    if tty and termios is not None:
        try:
            fd = sys.stdin.fileno()
            saved = termios.tcgetattr(fd)
            quiet = list(saved)
            quiet[3] &= ~(termios.ECHO | termios.ECHONL)  # ISIG stays: Ctrl-C, Ctrl-Z, Ctrl-\ as ever
            termios.tcsetattr(fd, termios.TCSANOW, quiet)
        except (OSError, ValueError, termios.error):  # not a terminal after all: nothing to hide
            saved = None
    try:
        yield
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSANOW, saved)


class Reader:
    def __init__(self, tty: bool, history_file: Path | None, words: list[str]):
        self.tty, self.history_file, self.words = tty, history_file, words
        self.prompt_session = None
        self.pending_default = ""  # the next prompt opens with this text (/edit)

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
        return PromptSession(history=history, key_bindings=kb, enable_history_search=False,
                             prompt_continuation=_more,
                             completer=WordCompleter(self.words, sentence=True, match_middle=False),
                             complete_while_typing=True, reserve_space_for_menu=4)

    def read(self) -> str:
        """The next message or command; EOFError at the end of the input. Piped input is read a bounded line at a
        time (MAX_MESSAGE): an endless line or block cannot fill memory."""
        if not self.tty:
            text = _stdin_line()
            if text.strip().startswith('"""'):
                text = self._read_block(text, _stdin_line)
            return text
        if self.prompt_session is None:
            self.prompt_session = self._session()
        default, self.pending_default = self.pending_default, ""
        text = self.prompt_session.prompt(">>> ", default=default)
        if text.strip().startswith('"""'):
            text = self._read_block(text, lambda: self.prompt_session.prompt("... "))
        return text

    @staticmethod
    def _read_block(first: str, more) -> str:
        """A \"\"\"-delimited block over several lines. `more()` raises EOFError when the input ends: the block
        then ends the session, unsent, rather than waiting forever for its closing quotes."""
        body = first.strip()[3:]
        if body.rstrip().endswith('"""'):
            return body.rstrip()[:-3]
        lines = [body] if body else []
        size = len(body)
        while True:
            try:
                line = more()
            except EOFError:
                warn('the input ended inside a """ block: its text was not sent')
                raise
            if line.rstrip().endswith('"""'):
                lines.append(line.rstrip()[:-3])
                if size > MAX_MESSAGE:
                    raise UsageError(f"that message is over {MAX_MESSAGE >> 20} MiB: /doc add FILE for long text")
                return "\n".join(lines).strip("\n")
            size += len(line) + 1
            if size <= MAX_MESSAGE:  # past it, the block is read to its end but not kept
                lines.append(line)


def _more(width: int, line_number: int, wrap_count: int) -> str:
    """Before each line after the first of an Alt-Enter message: `... `, as in a \"\"\" block; a line that is only
    wrapped (no new line in the message) is indented as far instead."""
    return "... " if wrap_count == 0 else " " * 4
