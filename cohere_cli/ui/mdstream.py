"""Streaming Markdown without flicker: finished blocks are printed once and never redrawn; only the unfinished
tail lives in a small rich Live region. A block is finished at a blank line outside a code fence."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown


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


class PlainStream:
    """Raw text straight to stdout (--plain, or stdout is not a terminal)."""

    def __init__(self, file=None):
        self.file = file or sys.stdout
        self.text = ""

    def update(self, delta: str) -> None:
        if delta:
            self.text += delta
            self.file.write(delta)
            self.file.flush()

    def close(self, suffix: str = "") -> None:
        self.file.write(suffix + ("\n" if not (self.text + suffix).endswith("\n") else ""))
        self.file.flush()


class MarkdownStream:
    def __init__(self, console: Console | None = None, fps: float = 12.0):
        self.console = console or Console(highlight=False)
        self.text, self.committed = "", 0
        self.min_interval, self.last_draw = 1.0 / fps, 0.0
        self.live = Live(console=self.console, auto_refresh=False, transient=True, vertical_overflow="visible")
        self.live.start()

    def update(self, delta: str) -> None:
        if not delta:
            return
        self.text += delta
        cut = split_stable(self.text)
        if cut > self.committed:  # print finished blocks above the live region, once
            self.live.console.print(Markdown(self.text[self.committed : cut]))
            self.committed = cut
        now = time.monotonic()
        if now - self.last_draw >= self.min_interval:
            self.live.update(Markdown(self.text[self.committed :]), refresh=True)
            self.last_draw = now

    def close(self, suffix: str = "") -> None:
        self.live.update("", refresh=True)
        self.live.stop()
        rest = self.text[self.committed :] + suffix
        if rest.strip():
            self.console.print(Markdown(rest))
