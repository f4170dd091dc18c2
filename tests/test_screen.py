"""Issue 18, what the user sees: the real `cohere chat` in an 80x24 pseudo-terminal, everything it writes fed to a
VT100 screen model (pyte) whose screen and scrollback the tests read, as a user would.

Run as a script, this file is the command the tests drive (as tests/held_cli.py is):

    python tests/test_screen.py FILE PIECE PAUSE DIR cohere-args...

every local answer says FILE's text, PIECE characters a piece (tests/hostile_cli.py `say`); with PAUSE > 0 the K-th
answer waits after its PAUSE-th piece: it creates DIR/held.K (holding whether the terminal echoes typed keys at that
moment) and goes on once the test creates DIR/go.K (a Ctrl-C ends the wait as it would end the model's forward). Each
answer appends the terminal's echo before and after it to DIR/echo. Everything else is the real command."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
HOLD_LIMIT = 600  # seconds: a test that never lets an answer go on has failed long before this


def _echo() -> str:
    import termios

    return "on" if termios.tcgetattr(0)[3] & termios.ECHO else "off"


def _driver() -> None:
    sys.path.insert(0, str(HERE.parent))
    import hostile_cli
    from cohere_cli.engine import generate
    from cohere_cli.ui import repl

    text, piece, pause, folder, *args = sys.argv[1:]
    pause, folder = int(pause), Path(folder)
    hostile_cli.PIECE = int(piece)
    hostile_cli.say(Path(text).read_text(encoding="utf-8"))
    said, answers = generate.stream_generate, [0]

    def paused(*a, **kw):
        answers[0] += 1
        for i, r in enumerate(said(*a, **kw), 1):
            yield r
            if i == pause:
                # written whole, then renamed: the test reads it as soon as it exists, never a half-written file
                held, whole = folder / f"held.{answers[0]}", folder / f"held.{answers[0]}.tmp"
                whole.write_text(_echo())
                os.replace(whole, held)
                go, deadline = folder / f"go.{answers[0]}", time.monotonic() + HOLD_LIMIT
                while not go.exists():
                    assert time.monotonic() < deadline, "the test never let the answer go on"
                    time.sleep(0.01)

    generate.stream_generate = paused
    answer = repl.Repl.answer

    def logged(self):
        before = _echo()
        try:
            answer(self)
        finally:
            with open(folder / "echo", "a") as f:
                f.write(f"{before} {_echo()}\n")

    repl.Repl.answer = logged
    from cohere_cli.cli import main as cohere

    sys.argv = ["cohere", *args]
    cohere()


if __name__ == "__main__":
    _driver()
    sys.exit(0)


# ---- the tests -------------------------------------------------------------------------------------------------

import io  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402

import pexpect  # noqa: E402
import pyte  # noqa: E402
import pytest  # noqa: E402

from factory_checkpoint import make_endless_checkpoint  # noqa: E402

ROWS, COLS = 24, 80
WORD = re.compile(r"\bw\d{4}\b")


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    return make_endless_checkpoint(tmp_path_factory.mktemp("endless"), max_position_embeddings=8192)


class Term:
    """`cohere chat` through this file's driver in an 80x24 terminal; `lines()` is the scrollback and the screen."""

    def __init__(self, tmp: Path, text: str, piece: int, pause: int, args: list[str]):
        self.dir = tmp / "run"
        self.dir.mkdir()
        said = tmp / "said.txt"
        said.write_text(text, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        # no cursor position requests: pyte does not answer them, and prompt-toolkit would wait at every prompt
        env.update(COHERE_CLI_HOME=str(tmp / "home"), TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1")
        self.screen = pyte.HistoryScreen(COLS, ROWS, history=100_000)
        self.stream = pyte.ByteStream(self.screen)
        self.written = 0  # bytes the terminal received
        self.p = pexpect.spawn(sys.executable, [str(HERE), str(said), str(piece), str(pause), str(self.dir), "chat",
                                                *args], env=env, dimensions=(ROWS, COLS), timeout=60)

    def feed(self, data: bytes) -> None:
        self.written += len(data)
        self.stream.feed(data)

    def lines(self) -> list[str]:
        rows = [*self.screen.history.top, *(self.screen.buffer[y] for y in range(ROWS))]
        return [("".join(row[x].data for x in range(COLS))).rstrip() for row in rows]

    def until(self, ok, what: str, timeout: float = 60) -> None:
        """Reads what the command writes until `ok()` holds for the screen (or fails after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while not ok():
            assert time.monotonic() < deadline, f"never saw {what}:\n" + "\n".join(self.lines()[-ROWS:])
            try:
                self.feed(self.p.read_nonblocking(1 << 16, timeout=0.05))
            except pexpect.TIMEOUT:
                pass
            except pexpect.EOF:
                raise AssertionError(f"the chat ended before {what}:\n" + "\n".join(self.lines()[-ROWS:]))

    def cursor_line(self) -> str:
        return self.lines()[len(self.screen.history.top) + self.screen.cursor.y]

    def prompt(self, n: int) -> None:
        """Until the n-th `>>>` prompt (counted in the scrollback and screen) waits, empty, for input."""
        self.until(lambda: sum(s.startswith(">>>") for s in self.lines()) >= n and self.cursor_line() == ">>>",
                   f"prompt {n}")

    def held(self, k: int) -> str:
        marker = self.dir / f"held.{k}"
        self.until(marker.exists, f"answer {k} held")
        return marker.read_text()

    def statuses(self) -> int:
        return sum("tok/s" in s for s in self.lines())

    def end(self) -> None:
        """Ctrl-D at a prompt, and the chat ends. Only once the prompt shows, so in raw mode: sent while the chat
        still prints an answer's status line (the tty in cooked mode), the tty would keep it as a NUL for the next
        read, which prompt-toolkit takes for Ctrl-@, and the chat would go on."""
        self.until(lambda: self.cursor_line().startswith(">>>"), "a prompt to end the chat at")
        self.p.sendeof()
        while True:
            try:
                self.feed(self.p.read_nonblocking(1 << 16, timeout=60))
            except pexpect.EOF:
                break
        self.p.wait()


def screen_lines(data: bytes, cols: int = COLS) -> list[str]:
    """The scrollback and screen of a `cols`x24 terminal after `data` (as a pty passes it: LF to CR LF)."""
    screen = pyte.HistoryScreen(cols, ROWS, history=100_000)
    pyte.ByteStream(screen).feed(data.replace(b"\n", b"\r\n"))
    rows = [*screen.history.top, *(screen.buffer[y] for y in range(ROWS))]
    lines = [("".join(row[x].data for x in range(cols))).rstrip() for row in rows]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def between(lines: list[str], start: str, end: str) -> list[str]:
    """The lines after the first one that starts with `start`, up to the next one that contains `end`."""
    i = next(i for i, s in enumerate(lines) if s.startswith(start))
    j = next(j for j in range(i + 1, len(lines)) if end in lines[j])
    return lines[i + 1 : j]


def tall_paragraph() -> tuple[list[str], str]:
    """A short paragraph, then one of 420 lines of ten words (25,220 characters): the words, and the text."""
    words = [f"w{i:04d}" for i in range(1, 4201)]
    return words, "A first paragraph.\n\n" + "\n".join(" ".join(words[i : i + 10]) for i in range(0, len(words), 10)) + "\n"


def test_an_answer_taller_than_the_terminal_is_written_once(endless, tmp_path):
    """An unfinished paragraph taller than the screen: what scrolls off is written once, as final, only what is still
    on the screen is redrawn; the answer ends complete, in order, every line once, in bounded bytes."""
    words, text = tall_paragraph()
    # 17 pieces. How many are frames depends on the machine (at most 12 a second); with every one a frame the bytes
    # stay within the bound below, and the screen is in order after every write (test_every_write_of_a_tall_...)
    piece = 1500
    t = Term(tmp_path, text, piece, pause=8, args=[str(endless), "--max-tokens", "40"])
    t.prompt(1)
    t.p.send("go on\r")
    t.until(lambda: any(s.startswith(">>> go on") for s in t.lines()), "the message")
    start = t.written
    t.held(1)  # 8 pieces (12,000 characters, over 150 lines) streamed, and drawn at least once
    t.until(lambda: WORD.search("\n".join(t.lines()[-ROWS:])), "the answer streaming")
    seen = WORD.findall("\n".join(t.lines()))
    assert seen == words[: len(seen)], "mid-answer: repeated or missing words"
    (t.dir / "go.1").write_text("")
    t.until(lambda: t.statuses() == 1, "the status line")
    answer = between(t.lines(), ">>> go on", "tok/s")
    written, shown = t.written - start, [s for s in answer if s.strip()]
    most = max(shown.count(s) for s in shown)
    print(f"\n{written} bytes written for {len(text)} characters; {len(shown)} lines shown, {len(set(shown))} "
          f"distinct, one of them {most} times")
    assert WORD.findall("\n".join(answer)) == words  # complete, in order, each word once
    assert len(shown) == len(set(shown)) and len(shown) > 10 * ROWS
    assert written < 3 * len(text), f"{written} bytes written for a {len(text)}-character answer"
    t.end()


@pytest.mark.parametrize("kind", ["paragraph", "code", "list"])
def test_a_tall_tail_streamed_in_pieces_ends_as_if_printed_at_once(kind):
    """MarkdownStream itself, every piece a frame: the scrollback ends exactly as the text printed at once, however
    the pieces fall (nothing lost, nothing twice), for the blocks that grow taller than the screen unfinished."""
    from rich.console import Console

    from cohere_cli.ui.mdstream import MarkdownStream

    text = {"paragraph": "\n".join(" ".join(f"w{i:04d}" for i in range(j, j + 10)) for j in range(0, 800, 10)),
            "code": "```python\n" + "\n".join(f"x{i} = {i}" for i in range(60)) + "\n```\n",
            "list": "\n".join(f"- item {i} " + "word " * (i % 3 * 9) for i in range(40))}[kind]

    def shown(pieces: list[str], fps: float) -> list[str]:
        out = io.StringIO()
        stream = MarkdownStream(Console(file=out, width=COLS, height=ROWS, force_terminal=True, highlight=False,
                                        color_system=None), fps=fps)
        for piece in pieces:
            stream.update(piece)
        stream.close()
        return screen_lines(out.getvalue().encode())

    at_once = shown([text], fps=12)
    assert len(at_once) > 2 * ROWS
    for seed in range(2):
        rnd, pieces, i = random.Random(seed), [], 0
        while i < len(text):
            n = rnd.randint(1, 150)
            pieces.append(text[i : i + n])
            i += n
        assert shown(pieces, fps=1e9) == at_once, seed


def test_every_write_of_a_tall_answer_leaves_the_screen_in_order():
    """MarkdownStream itself, every piece a frame (the most frames a slow machine can get): after each write to the
    terminal, where a reader may look before the next one comes, the screen shows the answer's start, in order. Rich
    redraws its live region after a print above it as it was at the last refresh: printing final lines in one write
    and the new tail in the next showed the old tail under them in between (words twice, seen mid-answer by the test
    above on a loaded machine). And the whole answer stays within that test's bound of 3 bytes a character."""
    from rich.console import Console

    from cohere_cli.ui.mdstream import MarkdownStream

    class Writes(io.StringIO):
        def __init__(self):
            super().__init__()
            self.each: list[str] = []

        def write(self, s: str) -> int:
            self.each.append(s)
            return super().write(s)

    words, text = tall_paragraph()
    out = Writes()
    stream = MarkdownStream(Console(file=out, width=COLS, height=ROWS, force_terminal=True, highlight=False,
                                    color_system=None), fps=1e9)
    for i in range(0, len(text), 1500):
        stream.update(text[i : i + 1500])
    stream.close()
    screen = pyte.HistoryScreen(COLS, ROWS, history=100_000)
    feed = pyte.ByteStream(screen).feed
    for n, s in enumerate(out.each, 1):
        feed(s.replace("\n", "\r\n").encode())
        rows = [*screen.history.top, *(screen.buffer[y] for y in range(ROWS))]
        seen = WORD.findall("\n".join("".join(row[x].data for x in range(COLS)) for row in rows))
        assert seen == words[: len(seen)], f"after write {n} of {len(out.each)}: words repeated or missing"
    assert seen == words
    written = len(out.getvalue().encode()) + out.getvalue().count("\n")  # a pty writes a LF as CR LF
    assert written < 3 * len(text), f"{written} bytes written for a {len(text)}-character answer"


@pytest.mark.parametrize("case", ["span closes", "terminal widens"])
def test_a_tail_that_rewraps_after_its_top_was_printed_loses_nothing(case):
    """Lines already printed above the screen cannot be redrawn; when the tail re-wraps under them (a `**` that closes
    removes characters from lines above; a wider terminal changes every line), the next lines go on exactly where
    the printed text stopped: every word on the screen once, in order (the reviewer's repro lost w0163)."""
    from rich.console import Console

    from cohere_cli.ui.mdstream import MarkdownStream

    words = [f"w{i:04d}" for i in range(400)]
    text = "QQQQ **bold " + " ".join(words) + " end** tail."
    out, wide = io.StringIO(), 120
    console = Console(file=out, width=COLS, height=ROWS, force_terminal=True, highlight=False, color_system=None)
    stream = MarkdownStream(console, fps=1e9)
    for k in range(0, len(text), 7):
        if case == "terminal widens" and k == 7 * 200:
            console.width = wide
        stream.update(text[k : k + 7])
    stream.close()
    shown = screen_lines(out.getvalue().encode(), cols=wide)
    assert WORD.findall("\n".join(shown)) == words, "\n".join(shown)
    assert "tail." in shown[-1] or "tail." in "\n".join(shown[-3:])


def test_keys_typed_during_an_answer_are_not_echoed_into_it(endless, tmp_path):
    """Keys typed while an answer streams would be echoed by the terminal in the middle of rich's live region and
    break its cursor arithmetic (lines drawn twice). The echo is off during the answer and back after it, Ctrl-C
    included; what was typed is kept for the next prompt, as a shell or IPython keeps type-ahead."""
    text = "".join(f"line {i:02d} of the answer\n\n" for i in range(1, 9))
    t = Term(tmp_path, text, piece=20, pause=6, args=[str(endless), "--max-tokens", "40"])
    t.prompt(1)
    t.p.send("first\r")
    assert t.held(1) == "off"
    t.p.send("zz typed zz\r")  # echoed, this would land in the live region, and move it down a line
    (t.dir / "go.1").write_text("")
    t.until(lambda: t.statuses() == 1, "the first answer's status line")
    # the typed line is the next message, sent as typed: it shows at the prompt, not inside the answer
    t.until(lambda: any(s.startswith(">>> zz typed zz") for s in t.lines()), "the type-ahead at the prompt")
    answer = between(t.lines(), ">>> first", "tok/s")
    shown = [s for s in answer if s.strip()]
    assert shown == [f"line {i:02d} of the answer" for i in range(1, 9)], answer
    assert t.held(2) == "off"
    t.p.send("qq")
    t.p.sendintr()  # Ctrl-C still stops the answer (and the terminal drops the keys typed before it)
    t.until(lambda: any("[interrupted" in s for s in t.lines()), "the interruption")
    t.prompt(3)
    t.p.send("after")
    t.until(lambda: t.cursor_line() == ">>> after", "what is typed at the next prompt")
    assert not any("zz" in s or "qq" in s for s in between(t.lines(), ">>> zz typed zz", "[interrupted"))
    assert (t.dir / "echo").read_text().split("\n") == ["on on", "on on", ""]
    t.p.send("\x15")  # Ctrl-U
    t.end()


def test_alt_enter_continuation_lines_show_the_continuation_prompt(endless, tmp_path):
    t = Term(tmp_path, "fine\n", piece=20, pause=0, args=[str(endless), "--max-tokens", "4"])
    t.prompt(1)
    t.p.send("first line")
    t.p.send("\x1b\r")  # Alt-Enter: a new line, not sent
    t.p.send("second line")
    t.until(lambda: t.cursor_line() == "... second line", "the continuation prompt")
    assert t.lines()[len(t.screen.history.top) + t.screen.cursor.y - 1] == ">>> first line"
    t.p.send("\r")
    t.until(lambda: t.statuses() == 1, "the answer")
    t.prompt(2)
    save = tmp_path / "conv.json"
    t.p.send(f"/save {save}\r")
    t.prompt(3)
    msgs = json.loads(save.read_text())["messages"]
    assert [m["content"] for m in msgs if m["role"] == "user"] == ["first line\nsecond line"]
    t.end()
