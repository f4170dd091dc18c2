"""Whole or not at all: the one way files and folders appear on disk. A reader never sees half a file, and a
command that fails, is interrupted or is killed leaves the old file or folder (or nothing) in place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from cohere_cli.errors import StoreError


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary name beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def free_bytes(path: Path) -> tuple[int, Path]:
    """Free bytes on the disk that holds `path` (or would: its nearest existing parent), and that existing folder."""
    q = Path(path).absolute()
    while not q.exists() and q != q.parent:
        q = q.parent
    return shutil.disk_usage(q).free, q


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def publish_folder(dest: Path, *, work: Path, prefix: str,
                   finish: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Build a folder in `work` (on dest's filesystem), then `finish(folder)` and publish it at `dest` with one
    rename. On any exception, KeyboardInterrupt included, the folder is removed and `dest` is as it was: an
    existing `dest` is set aside (in `work`) only once the new one is complete, and put back if the rename fails.
    The folder's name carries our pid, so a later run can tell a dead process's leftovers."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=f".{os.getpid()}.tmp", dir=work))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
        yield tmp
        if finish is not None:
            finish(tmp)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", suffix=f".{os.getpid()}.tmp", dir=work))
            os.rmdir(old)
            os.rename(dest, old)
        try:
            os.rename(tmp, dest)
        except OSError as e:
            if old is not None:
                os.rename(old, dest)
            raise StoreError(f"could not publish {dest} ({e.strerror or e}): is another cohere process writing "
                             f"it?") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
