"""Streaming Markdown without flicker: finished blocks are printed once and never redrawn; only the unfinished
tail lives in a small rich Live region. A block is finished at a blank line outside a code fence.

Links and images are shown as text with their URL, never as terminal hyperlinks (OSC 8): the model's text is
untrusted, and a hyperlink's target is invisible until clicked ("the docs" that opens a phishing page)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.segment import Segment, Segments
from rich.live import Live
from markdown_it.token import Token
from rich.markdown import Markdown

from cohere_cli.ui.console import out_write
from cohere_cli.untrusted import inert


def split_stable(text: str) -> int:
    """Index up to which `text` consists of finished Markdown blocks (0 if none)."""
    cut, fence, pos = 0, False, 0
    for line in text.splitlines(keepends=True):
        pos += len(line)
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        elif not fence and line.strip() == "" and line.endswith("\n") and pos < len(text):
            cut = pos
    return cut


class VisibleMarkdown(Markdown):
    """rich's Markdown without hyperlinks: `[the docs](URL)` shows as "the docs (URL)", and an image `![alt](URL)`,
    which rich would show as its alt text alone, as "🌆 alt (URL)". (rich's own image element also prints before the
    paragraph it sits in and loses a link around it; rendered as a link it stays in place.)"""

    def __init__(self, markup: str):
        super().__init__(markup, hyperlinks=False)

    def _flatten_tokens(self, tokens):
        for token in super()._flatten_tokens(tokens):
            if token.type != "image":
                yield token
                continue
            src = str(token.attrs.get("src", ""))
            alt = token.content or src.rstrip("/").rsplit("/", 1)[-1]
            yield Token("link_open", "a", 1, attrs={"href": src})
            yield Token("text", "", 0, content="🌆 " + alt)
            yield Token("link_close", "a", -1)


class PlainStream:
    """The text straight to stdout (--plain, or stdout is not a terminal): through out_write, so inert on a terminal
    and byte for byte into a pipe or file."""

    def __init__(self):
        self.last = ""  # the last character written: the text itself is the caller's (not kept twice)

    def update(self, delta: str) -> None:
        if delta:
            self.last = delta[-1]
            out_write(delta)

    def close(self, suffix: str = "") -> None:
        out_write(suffix + ("\n" if not (self.last + suffix).endswith("\n") else ""))


class MarkdownStream:
    """Rendered on a terminal only, so the model's text is made inert first: rich passes ESC and other control
    characters through to the terminal (OSC 52 clipboard writes, title changes, screen clears).

    The unfinished tail is redrawn only while it fits on the screen: rich's Live cannot move the cursor above the
    top of the screen, so a taller live region would be written again, whole, below what scrolled off, every frame.
    When the rendered tail gets taller than the screen, its top lines are printed once, as final (they would
    scroll off anyway), and only the bottom part stays live.

    What is printed is tracked as text, not as a number of lines: `printed` counts the tail's characters already
    on the screen (whitespace and the markers `*_`~` not counted; a blank line counts one). A tail can re-wrap after its top was printed: a
    `**` that closes removes two characters from a line above, a resize changes every line. Each redraw renders
    the tail again and skips exactly the characters printed, cutting a line in the middle if it must, so nothing is
    lost or shown twice; only the line breaks above the screen keep their old places."""

    def __init__(self, console: Console | None = None, fps: float = 12.0):
        self.console = console or Console(highlight=False)
        self.text, self.committed, self.printed = "", 0, 0
        self.min_interval, self.last_draw = 1.0 / fps, 0.0
        self.live = Live(console=self.console, auto_refresh=False, transient=True, vertical_overflow="visible")
        self.live.start()

    def update(self, delta: str) -> None:
        if not delta:
            return
        self.text += inert(delta)  # per piece is enough: inert maps characters one by one
        cut = split_stable(self.text)
        now = time.monotonic()
        if cut > self.committed or now - self.last_draw >= self.min_interval:
            self._draw(cut)
            self.last_draw = now

    def _lines(self, markdown: str) -> list[list[Segment]]:
        return self.console.render_lines(VisibleMarkdown(markdown), self.console.options, pad=False)

    def _draw(self, cut: int) -> None:
        committed, printed, final = self.committed, self.printed, []
        if cut > committed:  # finished blocks: printed once above the live region, less what already was
            final = _skip(self._lines(self.text[committed:cut]), printed)
            committed, printed = cut, 0
        tail = _skip(self._lines(self.text[committed:]), printed)
        over = len(tail) - max(1, self.console.size.height - 2)
        if over > 0:  # the top of a tail taller than the screen: final now
            final += tail[:over]
            printed += sum(_weight(line) for line in tail[:over])
            tail = tail[over:]
        # One frame, one write, in which the screen is always a prefix of the answer: rich redraws the live region
        # after anything printed above it as it was at its last refresh, so printing the final lines under the old
        # tail would show that stale tail below them (words twice) until the next refresh, and write it for nothing.
        # The region is emptied first, then the final lines, then the new tail.
        with self.console:
            if final:
                self.live.update(Segments([]), refresh=True)
                self.live.console.print(_segments(final))
                self.committed, self.printed = committed, printed  # printed: a Ctrl-C from here loses nothing
            self.live.update(_segments(tail), refresh=True)
        self.committed, self.printed = committed, printed

    def close(self, suffix: str = "") -> None:
        with self.console:  # one write: the tail never blinks out between the live region and its final print
            self.live.update("", refresh=True)
            self.live.stop()
            rest = self.text[self.committed :] + inert(suffix)
            if rest.strip():
                self.console.print(_segments(_skip(self._lines(rest), self.printed)))


_UNCOUNTED = frozenset(" \t\n\r\xa0*_`~")  # whitespace moves when a line re-wraps; markers vanish when a span closes


def _weight(line: list[Segment]) -> int:
    """The line's counted characters; a blank line (a block's margin, which does not move when text re-wraps)
    counts as one, so that it is not printed twice."""
    return sum(1 for seg in line if not seg.control for ch in seg.text if ch not in _UNCOUNTED) or 1


def _skip(lines: list[list[Segment]], printed: int) -> list[list[Segment]]:
    """`lines` less their first `printed` counted characters; a line printed in part keeps its rest."""
    for i, line in enumerate(lines):
        if printed <= 0:
            return lines[i:]
        w = _weight(line)
        if w <= printed:
            printed -= w
            continue
        rest: list[Segment] = []
        for seg in line:
            if seg.control or printed <= 0:
                rest.append(seg)
                continue
            for j, ch in enumerate(seg.text):
                if printed <= 0:
                    rest.append(Segment(seg.text[j:], seg.style))
                    break
                if ch not in _UNCOUNTED:
                    printed -= 1
        return [rest] + lines[i + 1 :]
    return []


def _segments(lines: list[list[Segment]]) -> Segments:
    return Segments([segment for line in lines for segment in (*line, Segment.line())])
