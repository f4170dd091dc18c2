"""Staging for `cohere download`: `<store>/.partial/<entry>/` holds the part files, what has been verified
(verified.json) and the plan; one download per entry at a time (a lock file); once every file is verified `publish`
links them into a temporary entry and renames it into the store with its manifest (cohere_cli.store.entry_tmpdir)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cohere_cli.config import read_json_object
from cohere_cli.errors import CohereError, DownloadError
from cohere_cli.store.atomic import write_atomic
from cohere_cli.store.manifest import MANIFEST

if TYPE_CHECKING:
    from cohere_cli.store.partfile import FileResult, FileSpec

VERIFIED = "verified.json"
PLAN = "plan.json"
LOCK = ".lock"
# Names the store's bookkeeping takes, in staging and in an entry: a repo file of that name would overwrite (or be
# overwritten by) it, so such a file is refused (one line that says how to leave it out).
_RESERVED = {VERIFIED, PLAN, LOCK, MANIFEST}


def reserved_name(path: str) -> bool:
    """Whether repo path `path` collides with the store's own files: top-level bookkeeping, or a folder of that
    name ('manifest.json/x', '.lock/x'); `X.part` parts, or a folder named like one ('x.part/y')."""
    parts = path.split("/")
    return parts[0] in _RESERVED or any(p.endswith((".part", ".part.json")) for p in parts)


def atomic_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data))


def read_json(path: Path) -> dict:
    """One of the staging folder's own small JSON files, or {} when absent or unusable (a part state then starts
    over): bounded, regular files only."""
    try:
        return read_json_object(path, 16 << 20)
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def staging_lock(staging: Path, what: str, busy: CohereError | None = None) -> Iterator[None]:
    """Hold an exclusive lock on a staging folder for the whole download (a second `cohere download` of the same
    entry would corrupt the parts; `models rm` and the cleanup of a published download's leftovers take it too, so
    they never pull a live download's files from under it). `busy` is raised when another process holds it."""
    staging.mkdir(parents=True, exist_ok=True)
    lock_path = staging / LOCK
    f = open(lock_path, "a+")
    try:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except OSError:
            raise busy or DownloadError(f"another `cohere download` of {what} is running: wait for it, or stop "
                                        "it") from None
        yield
    finally:
        f.close()


def staging_files(staging: Path) -> Iterator[tuple[Path, str]]:
    """(file, repo path it belongs to) for every downloaded or partial file in a staging folder."""
    for p in staging.rglob("*"):
        if not p.is_file() or p.name.startswith(".") or p.name.endswith(".tmp"):
            continue
        rel = p.relative_to(staging).as_posix()
        if rel in (PLAN, VERIFIED):
            continue
        for suffix in (".part.json", ".part"):
            if rel.endswith(suffix):
                rel = rel[: -len(suffix)]
                break
        yield p, rel


def staged_bytes(staging: Path) -> int:
    """Bytes of downloaded data a staging folder holds (bookkeeping not counted)."""
    if not staging.is_dir():
        return 0
    return sum(p.stat().st_size for p, _ in staging_files(staging) if not p.name.endswith(".part.json"))


def prune_staging(staging: Path, expected: Mapping[str, str]) -> None:
    """Delete what a staging folder holds for files that are not in the repo at this commit ({path: expect} of all
    its files, selected or not) or that were fetched for other contents; parts of files merely left out by this
    run's --include/--exclude are kept for a later run."""
    if not staging.is_dir():
        return
    verified = read_json(staging / VERIFIED)
    for p, rel in list(staging_files(staging)):
        want = expected.get(rel)
        if p.name.endswith(".part.json"):
            stale = read_json(p).get("expect") != want
        elif p.name.endswith(".part"):
            stale = want is None
        else:
            stale = (verified.get(rel) or {}).get("expect") != want
        if stale:
            with contextlib.suppress(OSError):
                p.unlink()
    kept = {k: v for k, v in verified.items() if v.get("expect") == expected.get(k)}
    if kept != verified:
        atomic_json(staging / VERIFIED, kept)
    for d in sorted((d for d in staging.rglob("*") if d.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()  # only empty ones


def remove_staging(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()  # .partial/ itself, when it was the last


def clean_published(staging: Path, commit: str | None, files: Mapping[str, dict]) -> None:
    """Drop what a staging folder still holds of a download already published at the same `commit` with these
    manifest `files` (a kill -9 between the publish and the cleanup leaves it, and `cohere models` would call it
    incomplete forever); remove the folder when nothing else is left. Never while a download holds it."""
    if not commit or read_json(staging / PLAN).get("commit") != commit:
        return
    try:
        with staging_lock(staging, "", busy=CohereError()):
            verified = read_json(staging / VERIFIED)
            for p, rel in list(staging_files(staging)):
                rec, have = verified.get(rel) or {}, files.get(rel) or {}
                if p.name.endswith(".part.json") or p.name.endswith(".part") or not rec.get("sha256"):
                    continue
                if rec.get("sha256") == have.get("sha256") and rec.get("size") == have.get("size"):
                    with contextlib.suppress(OSError):
                        p.unlink()
            if not any(True for _ in staging_files(staging)):
                remove_staging(staging)
    except (CohereError, OSError):
        return  # a live download, or a folder we cannot touch: leave it as it is


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def adopt_verified(staging: Path, spec: FileSpec, source: Path, sha256: str) -> None:
    """Put an already verified local copy (a file of an existing entry with the same checksum) into staging as
    done, so it is not fetched again."""
    link_or_copy(source, staging / spec.path)
    rec = read_json(staging / VERIFIED)
    rec[spec.path] = {"expect": spec.expect, "sha256": sha256, "size": spec.size}
    atomic_json(staging / VERIFIED, rec)


def publish(name: str, staging: Path, results: dict[str, FileResult], *, source: dict,
            keep: dict[str, tuple[Path, dict]] | None = None, **manifest_fields) -> Path:
    """Build entry `name` from the verified files in `staging` (plus `keep`: {relpath: (file, manifest record)}
    carried over from the entry being replaced), write its manifest and rename it into the store (replacing an
    older entry of that name only now that the new one is complete). Staging is removed after."""
    from cohere_cli import store

    files: dict[str, dict] = {}
    with store.entry_tmpdir(name, replace=True) as tmp:
        for rel, (src, record) in (keep or {}).items():
            if rel not in results:
                try:
                    link_or_copy(src, tmp / rel)
                except FileNotFoundError:  # the old entry was removed meanwhile (`models rm`): not carried over
                    continue
                files[rel] = dict(record)
        for rel, r in results.items():
            link_or_copy(staging / rel, tmp / rel)
            files[rel] = {"size": r.size, "sha256": r.sha256, **({"blob_id": r.blob_id} if r.blob_id else {})}
        files = dict(sorted(files.items()))
        store.write_manifest(tmp, store.make_manifest(tmp, name=name, source=source, files=files, **manifest_fields))
    # staging keeps only parts of files this run did not select (a later, wider run resumes them)
    verified = read_json(staging / VERIFIED)
    for rel in results:
        verified.pop(rel, None)
        with contextlib.suppress(OSError):
            (staging / rel).unlink()
    if any(True for _ in staging_files(staging)):
        atomic_json(staging / VERIFIED, verified)
    else:
        remove_staging(staging)
    return store.entry_path(name)
