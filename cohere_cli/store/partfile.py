"""One file of a download: what is expected of it, and its `.part` on disk with the per-chunk progress that lets
any later run resume it (see cohere_cli/store/download.py for the engine that fills it)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cohere_cli.store.httppool import Fatal
from cohere_cli.store.staging import atomic_json, read_json
from cohere_cli.untrusted import check_name, confine

_HASH_BLOCK = 8 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class FileSpec:
    path: str  # where it goes in the entry (posix, relative)
    url: str
    size: int
    sha256: str | None = None  # expected content sha256 (LFS files)
    blob_id: str | None = None  # expected git blob sha1 (small files)

    @property
    def expect(self) -> str:
        return expect_id(self.size, self.sha256, self.blob_id)


def expect_id(size: int, sha256: str | None, blob_id: str | None) -> str:
    """What identifies a file's expected contents in the part states: its sha256, else its git blob id."""
    return sha256 or blob_id or f"size:{size}"


@dataclass
class FileResult:
    path: str
    size: int
    sha256: str
    blob_id: str | None = None


def git_blob_sha1_prefix(size: int) -> bytes:
    return b"blob %d\0" % size


def _fsync(fd: int) -> None:
    with contextlib.suppress(OSError):
        (getattr(os, "fdatasync", None) or os.fsync)(fd)


def regular_size(path: Path) -> int:
    """The size of `path` when it is a regular file (a symlink is not followed: it counts as absent), else -1."""
    try:
        st = path.lstat()
    except OSError:
        return -1
    return st.st_size if stat.S_ISREG(st.st_mode) else -1


def staged_path(folder: Path, rel: str, what: str) -> Path:
    """`folder / rel` for a name from outside: a plain relative path (confine's rules) whose folders resolve
    inside `folder`; the last part itself may be a symlink someone planted, which is never followed (parts are
    opened O_NOFOLLOW, a finished file is checked with lstat) and is replaced by the file we fetch."""
    check_name(rel, what)
    parent = posixpath.dirname(rel)
    if parent:
        confine(folder, parent, what)
    return Path(folder) / rel


class PartFile:
    """One file: its part file, the bytes on disk per chunk, and the hashing that follows them."""

    def __init__(self, spec: FileSpec, staging: Path, chunk_size: int):
        self.spec = spec
        self.staging = staging
        self.final = staged_path(staging, spec.path, "a file name to download")
        self.part = self.final.with_name(self.final.name + ".part")
        self.state_path = self.final.with_name(self.final.name + ".part.json")
        self.chunk_size = chunk_size
        self.done: list[int] = []
        self.cond = threading.Condition()
        self.save_lock = threading.Lock()
        self.fd: int | None = None  # open only while a worker writes (acquire/release): 1,100 files, few fds
        self.users = 0
        self.started = False  # start() ran: there is a part whose progress save() records
        self.closed = False
        self.saved: list[int] | None = None
        self.last_save = 0.0
        self.hasher: threading.Thread | None = None
        self.result: FileResult | None = None
        self.status = "fetch"  # fetch | verified | recheck

    # layout
    @property
    def n_chunks(self) -> int:
        return -(-self.spec.size // self.chunk_size) if self.spec.size else 0

    def bounds(self, i: int) -> tuple[int, int]:
        start = i * self.chunk_size
        return start, min(start + self.chunk_size, self.spec.size)

    def on_disk(self) -> int:
        return self.spec.size if self.status != "fetch" else sum(self.done)

    def contiguous(self) -> int:
        """Bytes from offset 0 that are all on disk (call with cond held)."""
        total = 0
        for i, d in enumerate(self.done):
            total += d
            start, end = self.bounds(i)
            if start + d < end:
                break
        return total

    def load(self) -> None:
        """Read the saved per-chunk progress, trusting it only for the same expected file and never beyond what
        the part file physically holds."""
        st = read_json(self.state_path)
        try:
            pst = self.part.lstat()  # a symlink planted at X.part is not our part: start clean (open() removes it)
            size_on_disk = pst.st_size if stat.S_ISREG(pst.st_mode) else -1
        except OSError:
            size_on_disk = -1
        if (st.get("expect") == self.spec.expect and st.get("size") == self.spec.size
                and isinstance(st.get("chunk_size"), int) and st["chunk_size"] > 0 and size_on_disk >= 0):
            self.chunk_size = st["chunk_size"]
            done = st.get("done") or []
            if len(done) == self.n_chunks and all(isinstance(d, int) and d >= 0 for d in done):
                self.done = []
                for i, d in enumerate(done):
                    start, end = self.bounds(i)
                    self.done.append(max(0, min(d, end - start, size_on_disk - start)))
                self.saved = list(self.done)
                return
        self.done = []  # nothing on disk: the per-chunk list is made by start(), after the free-space check (a
        # listed size of 1 PiB would be millions of slots for a --dry-run that fetches nothing)

    def start(self) -> None:
        """Make the part file exist (no fd is kept: workers open it while they write, see acquire)."""
        if len(self.done) != self.n_chunks:
            self.done = [0] * self.n_chunks
        self.final.parent.mkdir(parents=True, exist_ok=True)
        staged_path(self.staging, self.spec.path + ".part", "a part file")  # its folders are ours, no symlink out
        if self.saved is None:  # nothing trustworthy on disk: start clean (unlinking a symlink leaves its target)
            with contextlib.suppress(FileNotFoundError):
                self.part.unlink()
        os.close(self._open())
        self.started = True
        self.save(force=True)

    def _open(self) -> int:
        """The part file, never through a symlink (O_NOFOLLOW: one planted there is refused, not followed)."""
        try:
            return os.open(self.part, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise Fatal(f"{self.part} is a symlink, not a part file we wrote: remove it and run the same "
                            "command again") from None
            if e.errno in (errno.EMFILE, errno.ENFILE):
                raise Fatal(f"too many open files opening {self.part}: raise `ulimit -n` or lower "
                            "COHERE_CLI_DL_MAX_WORKERS") from None
            raise Fatal(f"cannot open {self.part} ({e.strerror or e})") from None

    def acquire(self) -> None:
        """Open the part for writing (shared by the workers on its chunks) until the matching release()."""
        with self.save_lock:
            if self.fd is None and not self.closed:
                self.fd = self._open()
            self.users += 1

    def release(self) -> None:
        """The last writer out syncs and closes the fd, so a repo of thousands of files holds a few at a time."""
        with self.save_lock:
            self.users -= 1
            if self.users == 0 and self.fd is not None:
                _fsync(self.fd)
                os.close(self.fd)
                self.fd = None

    def write(self, data: memoryview, offset: int) -> None:
        fd = self.fd
        if fd is None:  # closed under us: the download was stopped
            raise Fatal(f"{self.spec.path}: the download was stopped")
        while data:
            try:
                n = os.pwrite(fd, data, offset)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise Fatal(f"the disk is full writing {self.spec.path}: free some space and run the same "
                                 "command again (the bytes so far are kept)") from None
                raise Fatal(f"cannot write {self.part} ({e.strerror or e})") from None
            data = data[n:]
            offset += n

    def advance(self, i: int, n: int) -> None:
        with self.cond:
            self.done[i] += n
            self.cond.notify_all()

    def save(self, force: bool = False) -> None:
        with self.save_lock:
            if self.closed or not self.started:
                return
            with self.cond:
                done = list(self.done)
            if done == self.saved and not force:
                return
            if self.fd is not None:  # a closed fd was synced by release()
                _fsync(self.fd)
            atomic_json(self.state_path, {"expect": self.spec.expect, "size": self.spec.size,
                                           "chunk_size": self.chunk_size, "done": done})
            self.saved = done
            self.last_save = time.monotonic()

    def close(self) -> None:
        with self.save_lock:
            self.closed = True
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None

    def discard(self) -> None:
        self.close()
        for p in (self.part, self.state_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def hash_following(self, stopped: Callable[[], bool],
                       gate: contextlib.AbstractContextManager = contextlib.nullcontext()
                       ) -> tuple[str, str | None] | None:
        """Hash the part as its bytes arrive (from offset 0, waiting on `cond` for more) and check it against the
        spec: (sha256 hex, problem or None), or None when stopped() says the rest will not come in this run.
        `gate` bounds how many hashers read (hold an fd) at once."""
        spec = self.spec
        sha = hashlib.sha256()
        git = hashlib.sha1(git_blob_sha1_prefix(spec.size)) if spec.blob_id and not spec.sha256 else None
        pos = 0
        while pos < spec.size:
            with self.cond:
                while (avail := self.contiguous()) <= pos:
                    if stopped():
                        return None
                    self.cond.wait(0.5)
            # opened per run of new bytes, not for the file's whole life: waiting hashers hold no fd
            with gate:
                fd = os.open(self.part, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
                try:
                    while pos < avail:
                        data = os.pread(fd, min(_HASH_BLOCK, avail - pos), pos)
                        if not data:
                            raise OSError(f"{self.part} is shorter than its recorded progress")
                        sha.update(data)
                        if git is not None:
                            git.update(data)
                        pos += len(data)
                finally:
                    os.close(fd)
        digest = sha.hexdigest()
        problem = None
        on_disk = os.lstat(self.part).st_size
        if on_disk != spec.size:
            problem = f"{spec.path} has {on_disk} bytes, expected {spec.size}"
        elif spec.sha256 and digest != spec.sha256.lower():
            problem = f"{spec.path} failed verification (sha256 {digest[:12]}... instead of {spec.sha256[:12]}...)"
        elif git is not None and git.hexdigest() != spec.blob_id.lower():  # type: ignore[union-attr]
            problem = (f"{spec.path} failed verification (git blob id {git.hexdigest()[:12]}... instead of "
                       f"{spec.blob_id[:12]}...)")  # type: ignore[index]
        return digest, problem
