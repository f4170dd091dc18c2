"""Grounded answers: turn the model's citation markup into highlighted spans with footnotes, while it streams.

Command R / R+ / Aya (`rag` template) write
    Relevant Documents: 0,1 / Cited Documents: 0 / Answer: ... / Grounded answer: The <co: 0>fact</co: 0> ...
Command R7B / Command A (cmd3) write `<co>fact</co: 0:[1,2]>` (tool call 0, results 1 and 2; documents are
injected as the results of tool call 0, so result i is document i).
Raw tags are never shown: a possible tag is held back until it is complete."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

OPEN_R = re.compile(r"<co: ?(\d+(?:\s*,\s*\d+)*)>")
CLOSE_R = re.compile(r"</co: ?(\d+(?:\s*,\s*\d+)*)>")
OPEN_3 = re.compile(r"<co>")
CLOSE_3 = re.compile(r"</co: ?((?:\d+:\[[\d,\s]*\],?\s*)+)>")
TAGS = (OPEN_R, CLOSE_R, OPEN_3, CLOSE_3)
MAX_TAG = 64  # longer than any tag we parse: past this a '<' is just text
HEADER = "Relevant Documents:"
GROUNDED = "Grounded answer:"


def _docs_r(spec: str) -> list[int]:
    return [int(x) for x in spec.replace(" ", "").split(",") if x]


def _docs_3(spec: str, source=None) -> list[int]:
    """The sources of a cmd3 closing tag: result indices (documents are the results of call 0), or with `source`
    whatever source(call, result) numbers them (tool use: each call's result is a source of its own)."""
    docs = []
    for call, results in re.findall(r"(\d+):\[([\d,\s]*)\]", spec):
        docs += [int(x) if source is None else source(int(call), int(x))
                 for x in results.replace(" ", "").split(",") if x]
    return docs


@dataclass
class CitationStream:
    """feed() text deltas, get display deltas back; finish() flushes. `markdown` wraps cited spans in ** **."""

    titles: list[str]
    markdown: bool = True
    buf: str = ""
    mode: str = "undecided"  # undecided -> header (Command R preamble lines, hidden) -> answer
    footnotes: dict[int, int] = field(default_factory=dict)  # document index -> footnote number
    _open: bool = False
    _at_start: bool = True  # strip the blank after "Grounded answer:", which may arrive in a later delta
    source: object = None  # cmd3 tool use: (call index, result index) -> index in titles (_docs_3)

    def feed(self, delta: str) -> str:
        self.buf += delta
        if self.mode == "undecided":
            head = self.buf.lstrip()
            if HEADER.startswith(head) and len(head) < len(HEADER):
                return ""  # could still become the Command R header
            self.mode = "header" if head.startswith(HEADER) else "answer"
        if self.mode == "header":
            i = self.buf.find(GROUNDED)
            if i < 0:
                return ""
            self.buf, self.mode = self.buf[i + len(GROUNDED) :], "answer"
        return self._start(self._drain(final=False))

    def _start(self, out: str) -> str:
        if self._at_start:
            out = out.lstrip()
            self._at_start = not out
        return out

    def finish(self) -> str:
        if self.mode != "answer":  # never reached "Grounded answer:": show the plain answer, else everything
            text = self.buf
            i = text.find("Answer:")
            self.buf, self.mode = (text[i + len("Answer:") :].lstrip() if i >= 0 else text), "answer"
        out = self._start(self._drain(final=True))
        if self._open and self.markdown:
            out += "**"
            self._open = False
        return out

    def footnote_lines(self) -> list[str]:
        lines = []
        for doc, n in sorted(self.footnotes.items(), key=lambda kv: kv[1]):
            title = self.titles[doc] if 0 <= doc < len(self.titles) else f"document {doc} (not attached)"
            lines.append(f"[{n}] {title}")
        return lines

    # ---- internals --------------------------------------------------------------------------------------------
    def _marker(self, docs: list[int]) -> str:
        nums = []
        for d in docs:
            if d not in self.footnotes:
                self.footnotes[d] = len(self.footnotes) + 1
            nums.append(str(self.footnotes[d]))
        return "[" + ",".join(dict.fromkeys(nums)) + "]" if nums else ""

    def _drain(self, final: bool) -> str:
        out = []
        while self.buf:
            lt = self.buf.find("<")
            if lt < 0:
                out.append(self.buf)
                self.buf = ""
                break
            out.append(self.buf[:lt])
            rest = self.buf[lt:]
            m = next((m for t in TAGS if (m := t.match(rest))), None)
            if m:
                out.append(self._tag(m))
                self.buf = rest[m.end() :]
                continue
            gt = rest.find(">")
            if not final and gt < 0 and len(rest) < MAX_TAG:
                self.buf = rest  # maybe an incomplete tag: wait for more text
                break
            out.append("<")  # not a tag
            self.buf = rest[1:]
        return "".join(out)

    def _tag(self, m: re.Match) -> str:
        if m.re in (OPEN_R, OPEN_3):
            self._open = True
            return "**" if self.markdown else ""
        docs = _docs_r(m.group(1)) if m.re is CLOSE_R else _docs_3(m.group(1), self.source)
        close = "**" if self.markdown and self._open else ""
        self._open = False
        return close + self._marker(docs)


def render_citations(text: str, titles: list[str], markdown: bool = False) -> tuple[str, list[str]]:
    """A whole answer at once: (display text, footnote lines)."""
    cs = CitationStream(titles, markdown=markdown)
    shown = cs.feed(text) + cs.finish()
    return shown, cs.footnote_lines()
