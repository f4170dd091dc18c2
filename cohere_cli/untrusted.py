"""The three guards every input from outside passes (threat model: README, "What the tool trusts"). A Hub or
mirror, every file of a checkpoint, an endpoint server and every token a model generates are untrusted; the user is
not. Each guard has one owner, here:

- `confine(root, name)`: a path named from outside (a Hub file name, a manifest key, a shard index entry) becomes a
  path inside `root`, or UnsafeInput. Checked before any open, rename or unlink.
- `inert(text)`: untrusted text made safe for a terminal: control characters that terminals act on (ESC starts
  OSC 52 clipboard writes, title changes, screen clears) are shown as visible symbols; ordinary Unicode is kept.
- `read_bounded(path, max_bytes)` / `parse_json(data)`: a file the user named (`--doc`, `/load`) is read only if it is a
  regular file under a size bound; JSON from outside is parsed with every failure (depth bombs too) a ValueError.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from cohere_cli.errors import NotARegularFile, TooBig, UnsafeInput

MAX_NAME = 1024  # bytes in a relative path from outside; a real checkpoint's longest is under 100
MAX_PART = 255  # bytes in one path component (NAME_MAX on Linux and macOS)


_CONTROL = frozenset(range(0x20)) | {0x7F} | frozenset(range(0x80, 0xA0))  # C0 (tab, newline too), DEL, C1


def _bad_name(name: object) -> str | None:
    """Why `name` cannot be a relative path inside a folder, or None when it can."""
    if not isinstance(name, str) or not name:
        return "it is not a file name"
    try:
        size = len(name.encode("utf-8"))  # strict: a lone surrogate is no file name (and crashes quote(), open())
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if size > MAX_NAME:
        return "it is too long"
    if any(ord(c) in _CONTROL for c in name):  # NUL, newline, ESC...: a name that could forge lines on a terminal
        return "it contains control characters"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "it is an absolute path"
    if "\\" in name:
        return "it contains a backslash"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "it leaves its folder (empty, '.' or '..' parts)"
    if any(len(p.encode("utf-8")) > MAX_PART for p in parts):
        return "a part of it is too long"
    return None


def check_name(name: str, what: str = "a file name from outside") -> str:
    """`name` when it is a plain relative path (no absolute, '..', '.', empty or NUL parts, not over-long); else
    UnsafeInput naming `what`. The form only: confine() also resolves it against its folder."""
    why = _bad_name(name)
    if why is not None:
        raise UnsafeInput(f"refusing {what} {inert(repr(name))[:200]}: {why}")
    return name


def confine(root: Path, name: str, what: str = "a file name from outside") -> Path:
    """`root / name` when `name` is a plain relative path (no absolute, '..', '.', empty or NUL parts) whose
    resolved location, symlinks followed, is still inside `root`; else UnsafeInput naming `what`."""
    why = _bad_name(name)
    path = Path(root) / name if why is None else None
    if path is not None:
        real_root = os.path.realpath(root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root or real == real_root:
            why = "it resolves outside its folder (a symlink)"
    if why is not None:
        raise UnsafeInput(f"refusing {what} {inert(repr(name))[:200]}: {why}")
    return path


def is_confined(root: Path, name: str) -> bool:
    try:
        confine(root, name)
    except UnsafeInput:
        return False
    return True


# C0 controls (but \t and \n), DEL and C1 controls: what a terminal interprets. Each C0/DEL becomes its Unicode
# "control picture" (ESC -> U+241B), a C1 becomes U+FFFD, and \r is dropped (\r\n -> \n; a lone \r would let text
# overwrite what was shown before it). Nothing else changes: accents, CJK, emoji, RTL text pass as they are.
_INERT = {c: 0x2400 + c for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)}
_INERT[0x0D] = None
_INERT[0x7F] = 0x2421
_INERT.update({c: 0xFFFD for c in range(0x80, 0xA0)})
# a lone surrogate (from JSON "\ud800") is no character: printing it raises UnicodeEncodeError in the console
_INERT.update({c: 0xFFFD for c in range(0xD800, 0xE000)})


def inert(text: str) -> str:
    """`text` with nothing a terminal would act on: safe to print, whatever a server or model sent."""
    return text.translate(_INERT)


def one_line(text: object, limit: int = 300) -> str:
    """Untrusted text (a server's error, a template's raise_exception) as part of one of our lines: inert,
    whitespace (newlines too) folded to single spaces, cut to `limit` characters with an ellipsis."""
    text = " ".join(inert(str(text)[: limit * 4]).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_bounded(path: Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `max_bytes`; UnsafeInput for a FIFO, device, folder or a bigger
    file (never blocks on a FIFO, never reads more than `max_bytes + 1`); OSError as the OS raised it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(f"{inert(str(path))} is not a regular file: give the {what} as a file")
        if st.st_size > max_bytes:
            raise TooBig(f"{inert(str(path))} is {_size(st.st_size)}, over the {_size(max_bytes)} a {what} may be")
        os.set_blocking(fd, True)
        chunks, n = [], 0
        while n <= max_bytes:
            b = os.read(fd, min(1 << 20, max_bytes + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
        if n > max_bytes:  # grew while we read
            raise TooBig(f"{inert(str(path))} is over the {_size(max_bytes)} a {what} may be")
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_json(data: bytes | str):
    """json.loads for untrusted bytes: ValueError (a readable reason, as "is ..." / "holds ...") for bad UTF-8,
    bad JSON, nesting so deep the parser gives up (RecursionError: `[[[[...` 100,000 deep) or an integer past
    Python's digit bound."""
    try:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except UnicodeDecodeError as e:
        raise ValueError(f"is not UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"is not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError("nests too deep to be JSON anyone meant") from None
    except ValueError:  # Python's bound on integer digits (4300): a number no one meant either
        raise ValueError("holds a number with thousands of digits") from None


def _size(n: int) -> str:
    for unit, k in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << k:
            return f"{n / (1 << k):.3g} {unit}"
    return f"{n} bytes"
