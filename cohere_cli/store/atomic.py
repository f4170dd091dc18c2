"""Whole or not at all: the one way files and folders appear on disk. A reader never sees half a file, and a
command that fails, is interrupted or is killed leaves the old file or folder (or nothing) in place."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


# What publish_folder (store/atomic.py) names its folders in .tmp/ (prefix "<entry folder>.", an old entry set aside
# as ".<entry folder>.old.") and remove_entry its trash ("<entry folder>.rm."): mkdtemp's 8 random characters, then
# ".<pid>.tmp". Only names of exactly that shape are ours to delete.
_TMP_NAME = re.compile(r"\.?[^/]+?\.(?:old\.|rm\.)?[a-z0-9_]{8}\.(?P<pid>[0-9]{1,10})\.tmp")


def cleanup_stale_tmp(root: Path) -> None:
    """Remove .tmp/ folders left by processes that died (their names carry the pid): only folders (never through a
    symlink) whose whole name is one this tool makes."""
    try:
        if not stat.S_ISDIR(os.lstat(root).st_mode):
            return
        names = os.listdir(root)
    except OSError:
        return
    for n in names:
        m = _TMP_NAME.fullmatch(n)
        if m is None:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        d = root / n
        try:
            st = os.lstat(d)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            with contextlib.suppress(OSError):
                d.unlink()  # the link only, never its target
        elif stat.S_ISDIR(st.st_mode):
            shutil.rmtree(d, ignore_errors=True)
