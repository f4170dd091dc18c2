"""manifest.json: what a store entry is (format in cohere_cli/store/__init__.py's docstring), written when the entry
is built and checked by `cohere models verify`."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

from cohere_cli.config import read_config_json, read_json_object
from cohere_cli.errors import CheckpointError
from cohere_cli.store.atomic import write_atomic

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
MAX_MANIFEST_BYTES = 16 << 20  # a manifest of 10,000 files is ~2 MB
_HASH_BLOCK = 8 << 20


def read_manifest(folder: Path) -> dict | None:
    """folder/manifest.json as a dict, or None when absent or unreadable (size-bounded: a manifest lists files).
    A manifest is untrusted (a copied or tampered store): every field of the wrong type is dropped here, once, so
    no reader meets a string where it expects a number or an object."""
    try:
        return checked(read_json_object(Path(folder) / MANIFEST, MAX_MANIFEST_BYTES))
    except (OSError, ValueError):
        return None


_NUMBER = (int, float)
# field -> the type it must have (bool is an int to Python: refused where a number is wanted)
_FIELDS = {
    "format": int, "name": str, "parent": str, "architecture": str, "model_type": str, "parameters": int,
    "storage_dtype": str, "precision": str, "created_at": str, "source": dict, "files": dict,
    "quantization": dict, "quality": dict,
}
QUALITY_NUMBERS = ("parent_perplexity", "perplexity", "kl_mean", "kl_p99", "top1_agreement", "tokens", "windows",
                   "window")


def checked(m: dict) -> dict:
    """`m` without the fields whose type is wrong: a string source, a quality report missing a number, a
    parameter count that is text, a file record that is not an object."""
    out = {}
    for k, v in m.items():
        want = _FIELDS.get(k)
        if v is not None and want is not None and (not isinstance(v, want) or (want is int and isinstance(v, bool))):
            continue  # null stays: it is the format's "none" ("parent": null), and every reader handles it
        out[k] = v
    if isinstance(out.get("source"), dict):
        out["source"] = {k: v for k, v in out["source"].items() if isinstance(v, str)}
    if isinstance(out.get("files"), dict):
        out["files"] = {k: v for k, v in out["files"].items() if isinstance(k, str) and isinstance(v, dict)}
    q = out.get("quality")
    if q is not None and not (all(isinstance(q.get(k), _NUMBER) and not isinstance(q.get(k), bool)
                                  for k in QUALITY_NUMBERS) and isinstance(q.get("dtype"), str)):
        del out["quality"]
    return out


# What make_manifest always writes (the fields that may be null included): a folder with a manifest.json lacking
# any of them was not written by us (a browser extension, a web app and many tools have a manifest.json too).
_WRITTEN = frozenset(("format", "name", "source", "parent", "architecture", "model_type", "parameters",
                      "storage_dtype", "precision", "created_at", "files"))


def written_by_us(folder: Path) -> bool:
    """Whether `folder` is provably a checkpoint cohere-cli wrote, so that `--force` may replace it: a format-1
    manifest.json with every field make_manifest writes, whose `files` all exist (regular files inside), and
    nothing else in the folder but JSON (config, tokenizer, templates) and safetensors files."""
    from cohere_cli.untrusted import is_confined

    try:
        m = read_json_object(Path(folder) / MANIFEST, MAX_MANIFEST_BYTES)
        files = m.get("files")
        if m.get("format") != MANIFEST_FORMAT or not _WRITTEN <= m.keys() or not isinstance(files, dict):
            return False
        for rel in files:
            if not (isinstance(rel, str) and is_confined(folder, rel)
                    and stat.S_ISREG(os.lstat(Path(folder) / rel).st_mode)):
                return False
        for p in Path(folder).rglob("*"):
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink() or not (p.is_dir() or rel in files or p.name.endswith((".json", ".safetensors"))):
                return False
    except (OSError, ValueError, UnicodeError):
        return False
    return True


# ---- manifests --------------------------------------------------------------------------------------------------
def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks; `progress(n)` is called with each block's size."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_HASH_BLOCK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            if progress is not None:
                progress(n)
    return h.hexdigest()


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write folder/manifest.json atomically (temporary name, then rename)."""
    folder = Path(folder)
    target = folder / MANIFEST
    write_atomic(target, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return target


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_manifest(
    folder: Path,
    *,
    name: str,
    source: dict | None = None,
    parent: str | None = None,
    precision: str | None = None,
    files: dict[str, dict] | None = None,
    **extra,
) -> dict:
    """A manifest for the checkpoint in `folder`: architecture, parameter count and storage dtype from config.json
    and the safetensors headers; `files` ({relpath: {"size", "sha256", ...}}) is computed (hashing every file)
    when not given. Extra keyword fields are added as they are."""
    from cohere_cli.store import sizes

    folder = Path(folder)
    if files is None:
        files = {}
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder).as_posix()
            if p.is_file() and rel != MANIFEST and not p.name.startswith("."):
                files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    try:
        config = read_config_json(folder)
    except CheckpointError:
        config = None
    try:
        stats = sizes.tensor_stats(sizes.checkpoint_files(folder))
        params, storage = stats.parameters or None, stats.storage_dtype
    except (OSError, ValueError):
        params, storage = None, None
    arch = None
    if isinstance(config, dict):
        archs = config.get("architectures") or []
        arch = archs[0] if archs else None
    m = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "source": source,
        "parent": parent,
        "architecture": arch,
        "model_type": config.get("model_type") if isinstance(config, dict) else None,
        "parameters": params,
        "storage_dtype": storage,
        "precision": precision or sizes.precision_of(config, storage),
        "created_at": utc_now(),
    }
    m.update(extra)
    m["files"] = files
    return m
