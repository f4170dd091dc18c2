"""`cohere download` as a library: resolve a repo on the Hub, plan what to fetch (reusing files the store already
holds), fetch it with the transfer engine (store/download.py) into the entry's staging folder (store/staging.py),
verify and publish it. The command (commands/download.py) only shows progress and messages."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cohere_cli import store
from cohere_cli.errors import DownloadError, UnsafeInput
from cohere_cli.store import hub, sizes
from cohere_cli.store.download import Options, Progress, Transfer
from cohere_cli.store.atomic import free_bytes
from cohere_cli.store.httppool import fetch_bytes
from cohere_cli.store.partfile import FileSpec, expect_id, staged_path
from cohere_cli.store.staging import (PLAN, adopt_verified, clean_published, prune_staging, publish, reserved_name, staged_bytes,
                                      staging_lock)
from cohere_cli.untrusted import inert, is_confined, parse_json

KV_SEQ = 8192  # the context the plan's memory estimate is for
MAX_FILE_BYTES = 1 << 50  # 1 PiB: a listed size past it is no checkpoint file (and would size lists per chunk)


@dataclass
class Plan:
    repo: hub.RepoInfo
    revision: str | None
    name: str  # the store entry
    specs: list[FileSpec]  # the files to have
    headers: dict
    transfer: Transfer
    existing: store.Entry | None  # the entry of that name already in the store
    reuse: dict[str, tuple[Path, dict]]  # files of it equal to a wanted one: linked, not fetched
    keep: dict[str, tuple[Path, dict]]  # all its files, carried over when it is at the same commit

    @property
    def staging(self) -> Path:
        return self.transfer.staging

    @property
    def up_to_date(self) -> bool:
        return (self.existing is not None and self.existing.commit == self.repo.commit
                and len(self.reuse) == len(self.specs))


def plan_download(repo_id: str, *, revision: str | None = None, include: list[str] | None = None,
                  exclude: list[str] | None = None, token: str | None = None,
                  max_workers: int | None = None) -> Plan:
    """What downloading REPO_ID means now: its commit, the selected files, what the store already has."""
    repo_id = repo_id.strip().strip("/")
    hub.check_online()
    token = hub.resolve_token(token)
    opts = Options.from_env(max_workers=max_workers)
    repo = hub.fetch_repo(repo_id, revision, token, timeout=opts.timeout)
    name = repo_id
    store.check_layout()
    files = hub.select_files(_check_names(repo, store.partial_path(name), store.entry_path(name)), include, exclude)
    clash = next((f.path for f in files if reserved_name(f.path)), None)
    if clash is not None:
        raise DownloadError(f"{repo_id} has a file named {inert(repr(clash))}, a name the store keeps for its own "
                            f"bookkeeping: leave it out with --exclude '{inert(clash)}'")
    if not files:
        listing = ", ".join(f.path for f in repo.files[:8]) + (", ..." if len(repo.files) > 8 else "")
        raise DownloadError(f"no file of {repo_id} matches the selection (it has: {listing}): adjust --include / "
                            "--exclude")
    if not include and not any(f.path.endswith(".safetensors") for f in files):
        other = [f.path for f in repo.files if f.path.endswith((".bin", ".gguf", ".pt", ".pth"))]
        hint = f" (it has {other[0]}...: cohere-cli reads safetensors only)" if other else ""
        raise DownloadError(f"{repo_id} has no *.safetensors weights at the top level{hint}; "
                            "pass --include GLOB to fetch specific files anyway")
    ep = repo.endpoint
    specs = [FileSpec(f.path, hub.file_url(ep, repo_id, repo.commit, f.path), f.size, f.sha256, f.blob_id)
             for f in files]
    headers = hub.request_headers(token)

    def describe(status: int, h, path: str) -> str:
        return hub.access_error(repo_id, ep, status, h, has_token=bool(token), gated=repo.gated, path=path,
                                commit=repo.commit)

    existing, reuse, keep = _reusable(name, specs, repo.commit)
    for folder in {store.entry_path(name), *([existing.path] if existing is not None else [])}:
        _check_owner(folder, repo_id)
    if existing is not None:  # what a kill -9 right after publishing left in staging
        clean_published(store.partial_path(name), existing.commit, existing.files)
    transfer = Transfer(store.partial_path(name), specs, headers, opts, describe)
    return Plan(repo, revision, name, specs, headers, transfer, existing, reuse, keep)


def _check_names(repo: hub.RepoInfo, *folders: Path) -> list[hub.RemoteFile]:
    """Every name in the listing, selected or not, must be a plain relative path that stays inside the staging
    folder and the entry (a hostile Hub lists '../../x' or '/etc/x' to make us write or delete there, or a name that
    is no UTF-8 or holds control characters), listed once, and never both a file and a folder ('a' and 'a/b'); and
    no file may be bigger than any real checkpoint file. One line naming the first that is not, before any name is
    used (made into a URL, shown) and anything is written. Returns the listing."""
    where = f"the file name listed by {repo.endpoint} for {repo.repo_id}"
    trust = "nothing was downloaded (is HF_ENDPOINT a Hub you trust?)"
    seen: set[str] = set()
    for f in repo.files:
        for folder in folders:
            try:
                staged_path(folder, f.path, where)
            except UnsafeInput as e:
                raise UnsafeInput(f"{e}; {trust}") from None
        if f.path in seen:
            raise UnsafeInput(f"{repo.endpoint} lists {inert(repr(f.path))} twice for {repo.repo_id}; {trust}")
        seen.add(f.path)
        if f.size > MAX_FILE_BYTES:
            raise DownloadError(f"{repo.endpoint} lists {inert(repr(f.path))} of {repo.repo_id} at {f.size} bytes, "
                                f"more than any checkpoint file ({MAX_FILE_BYTES >> 50} PiB); {trust}")
    for f in repo.files:
        parts = f.path.split("/")
        folder = next((d for d in ("/".join(parts[:k]) for k in range(1, len(parts))) if d in seen), None)
        if folder is not None:
            raise UnsafeInput(f"{repo.endpoint} lists {inert(repr(folder))} of {repo.repo_id} both as a file and as "
                              f"a folder ({inert(repr(f.path))}); {trust}")
    return repo.files


def _check_owner(folder: Path, repo_id: str) -> None:
    """The entry in `folder` (which publishing replaces) must be a download of `repo_id`: one made otherwise (a
    `quantize -o Org--x` shares the folder of `Org/x`), or of unknown origin, is the user's and is never replaced."""
    if not os.path.lexists(folder):
        return
    m = store.read_manifest(folder) or {}
    if str((m.get("source") or {}).get("repo_id", "")).lower() != repo_id.lower():
        shown = inert(str(m.get("name") or folder.name))
        raise DownloadError(f"the store already has {shown} ({inert(str(folder))}), which is not a download of "
                            f"{repo_id}: remove it first with `cohere models rm {shown}`, then run this again")


def fetch(p: Plan, progress: Progress, say: Callable[[str], None] = lambda msg: None) -> Path:
    """Fetch, verify and publish the plan; return the entry's folder. Whatever happens, the staging folder keeps
    what arrived (the same command resumes) unless nothing did."""
    repo, staging, transfer = p.repo, p.staging, p.transfer
    probe = next((s for s in p.specs if s.path not in p.reuse), None)
    if probe is not None:
        _probe_access(probe, p.headers, transfer.opts.timeout, repo.endpoint, transfer.describe)
    existed = staging.exists()
    try:
        with staging_lock(staging, repo.repo_id):
            (staging / PLAN).write_text(json.dumps({
                "name": p.name, "repo_id": repo.repo_id, "revision": p.revision, "commit": repo.commit,
                "endpoint": repo.endpoint,
                "files": {s.path: {"size": s.size, "sha256": s.sha256, "blob_id": s.blob_id} for s in p.specs},
            }, indent=1))
            prune_staging(staging, {f.path: expect_id(f.size, f.sha256, f.blob_id) for f in repo.files})
            for s in p.specs:
                if s.path in p.reuse:
                    adopt_verified(staging, s, p.reuse[s.path][0], p.reuse[s.path][1]["sha256"])
            transfer.prepare()
            where = store.store_root()
            free, _ = free_bytes(where)
            if transfer.remaining_bytes > free:
                if not existed:  # only links to files already in the store were made: undo them
                    shutil.rmtree(staging, ignore_errors=True)
                raise DownloadError(
                    f"{repo.repo_id} needs {sizes.human_bytes(transfer.remaining_bytes)} more on disk but only "
                    f"{sizes.human_bytes(free)} is free under {where}: free some space or set COHERE_CLI_HOME to a "
                    "bigger disk"
                )
            if transfer.remaining_bytes and transfer.total_bytes - transfer.remaining_bytes > 0:
                say(f"resuming: {sizes.human_bytes(transfer.total_bytes - transfer.remaining_bytes)} of "
                    f"{sizes.human_bytes(transfer.total_bytes)} already on disk")
            results = transfer.run(progress)
            source = {"repo_id": repo.repo_id, "revision": p.revision or "main", "commit": repo.commit,
                      "endpoint": repo.endpoint}
            return publish(p.name, staging, results, source=source, keep=p.keep)
    except OSError as e:  # the disk is full, the store changed under us: one line, the staging kept for a rerun
        _cleanup_if_empty(staging, existed)
        raise DownloadError(f"{repo.repo_id}: {e.strerror or e} ({inert(str(e.filename or staging))}): fix that, "
                            "then run the same command again to resume") from None
    except BaseException:
        _cleanup_if_empty(staging, existed)
        raise


def plan_record(p: Plan) -> tuple[dict, sizes.Dims | None]:
    """--dry-run: the plan as one JSON-able record (files and what is on disk, the disk space, the memory the model
    will take, from its config.json), and the dimensions behind that estimate."""
    transfer = p.transfer
    transfer.prepare()
    on_disk = transfer.on_disk
    total = sum(s.size for s in p.specs)
    have = sum(s.size if s.path in p.reuse else on_disk.get(s.path, 0) for s in p.specs)
    where = store.store_root()
    free, _ = free_bytes(where)
    need = total - have
    config, note = None, None
    cfg_spec = next((s for s in p.specs if s.path == "config.json"), None)
    if cfg_spec is None:
        note = "config.json is not in the selection"
    else:
        try:
            status, h, body = fetch_bytes(cfg_spec.url, p.headers, timeout=transfer.opts.timeout)
            if status == 200:
                config = parse_json(body)
                if not isinstance(config, dict):
                    config, note = None, "config.json is not a JSON object"
            else:
                note = transfer.describe(status, h, "config.json")
        except (OSError, ValueError, http.client.HTTPException) as e:
            note = f"config.json unreadable ({e})"
    memory, dims = None, None
    if config is not None:
        try:
            d = dims = sizes.Dims.from_config(config)  # ValueError (one note) on anything it cannot size
            memory = {
                "parameters": sizes.param_counts(d).total,
                "weights_bytes": {q: sizes.weights_bytes(d, q) for q in ("bf16", "int8", "nf4")},
                "kv_cache_bytes": {"seq": KV_SEQ, "bf16": sizes.kv_cache_bytes(d, KV_SEQ)},
            }
        except ValueError as e:
            note = str(e)
    repo = p.repo
    return {
        "repo_id": repo.repo_id, "revision": repo.revision, "commit": repo.commit, "gated": repo.gated,
        "files": [{"path": s.path, "size": s.size, "sha256": s.sha256,
                   "on_disk": s.size if s.path in p.reuse else on_disk.get(s.path, 0)} for s in p.specs],
        "total_bytes": total, "to_fetch_bytes": need, "free_bytes": free, "store": str(where),
        "fits": need <= free, "memory": memory, "note": note,
    }, dims


def _same_file(record: dict, spec: FileSpec) -> bool:
    """Whether a manifest record describes the file `spec` expects (same size and checksum)."""
    if record.get("size") != spec.size:
        return False
    if spec.sha256:
        return record.get("sha256") == spec.sha256
    return bool(spec.blob_id) and record.get("blob_id") == spec.blob_id


def _reusable(name: str, specs: list[FileSpec], commit: str):
    """(existing entry, {path: (file, record)} of its files that equal a wanted one and can be linked instead of
    fetched, {path: (file, record)} of all its files to carry over when it is at the same commit)."""
    existing = store.get_entry(name)
    reuse: dict[str, tuple[Path, dict]] = {}
    keep: dict[str, tuple[Path, dict]] = {}
    if existing is None:
        return None, reuse, keep
    # The manifest is untrusted too (a tampered store): only its names that stay inside the entry are used.
    files = {rel: rec for rel, rec in existing.files.items() if is_confined(existing.path, rel)}
    for s in specs:
        rec = files.get(s.path)
        if rec and _same_file(rec, s) and (existing.path / s.path).is_file():
            reuse[s.path] = (existing.path / s.path, rec)
    if existing.commit == commit:
        keep = {rel: (existing.path / rel, rec) for rel, rec in files.items()
                if (existing.path / rel).is_file() and not reserved_name(rel)}
    return existing, reuse, keep


def _probe_access(spec: FileSpec, headers: dict, timeout: float, ep: str, describe) -> None:
    """One HEAD before anything is written: no network, a gated repo or a bad token fail here, leaving nothing."""
    try:
        status, h, _ = fetch_bytes(spec.url, headers, timeout=timeout, head=True)
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(hub.network_error(ep, e)) from None
    if 400 <= status < 500 and status not in (408, 429):  # busy/5xx: the transfer retries those
        raise DownloadError(describe(status, h, spec.path))


def _cleanup_if_empty(staging: Path, existed: bool) -> None:
    """A failed first attempt that fetched nothing leaves nothing behind."""
    if not existed and staged_bytes(staging) == 0:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()
