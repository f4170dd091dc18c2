"""`cohere download REPO_ID`: plan with the Hub's metadata (cohere_cli.store.hub), fetch with our engine
(cohere_cli.store.download), publish into the store (cohere_cli.store). Progress on stderr; the entry's path (or one
JSON object) on stdout."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import sys
import threading
import time
from pathlib import Path

from rich.markup import escape

from cohere_cli import store
from cohere_cli.store import hub
from cohere_cli.store import sizes
from cohere_cli.ui.console import err, info, warn
from cohere_cli.store.download import FileSpec, Options, Progress, Transfer, expect_id
from cohere_cli.errors import DownloadError
from cohere_cli.store.httppool import fetch_bytes
from cohere_cli.store.staging import PLAN, adopt_verified, prune_staging, publish, staged_bytes, staging_lock

KV_SEQ = 8192


# ---- progress displays -------------------------------------------------------------------------------------------
class RichProgress(Progress):
    """Total and per-file bars (bytes, speed, ETA) on a terminal; completed files scroll above."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichBars

        self.bars = RichBars(
            TextColumn("{task.description}", justify="left"), BarColumn(bar_width=None), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True, refresh_per_second=8,
        )
        self.tasks: dict[str, int] = {}
        self.lock = threading.Lock()

    def begin(self, files: list[FileSpec], on_disk: dict[str, int]) -> None:
        self.sizes = {f.path: f.size for f in files}
        self.on_disk = dict(on_disk)
        self.bars.start()
        self.total = self.bars.add_task("[bold]total[/bold]", total=sum(self.sizes.values()),
                                        completed=sum(on_disk.values()))

    def _task(self, path: str) -> int:
        with self.lock:
            tid = self.tasks.get(path)
            if tid is None:
                label = path if len(path) <= 40 else "…" + path[-39:]
                tid = self.tasks[path] = self.bars.add_task(escape(label), total=self.sizes.get(path, 0),
                                                           completed=self.on_disk.get(path, 0))
            return tid

    def advance(self, path: str, nbytes: int) -> None:
        self.bars.update(self._task(path), advance=nbytes)
        self.bars.update(self.total, advance=nbytes)

    def verified(self, path: str) -> None:
        with self.lock:
            tid = self.tasks.pop(path, None)
        if tid is not None:
            self.bars.remove_task(tid)
        size = sizes.human_bytes(self.sizes.get(path, 0))
        self.bars.console.print(f"  [green]✓[/green] {escape(path)} [dim]({size}, verified)[/dim]")

    def failed(self, path: str, message: str) -> None:
        self.bars.console.print(f"  [red]✗[/red] {escape(message)}")

    def retrying(self, path: str, error: str, delay: float) -> None:
        self.bars.console.print(f"  [yellow]retrying[/yellow] {escape(path)} in {delay:.1f}s ({escape(error)})")

    def end(self) -> None:
        self.bars.stop()


class PlainProgress(Progress):
    """Plain lines when stderr is not a terminal: one per verified file, a status line every `interval` s."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.lock = threading.Lock()

    def _line(self, text: str) -> None:
        err.print(text, markup=False, highlight=False, soft_wrap=True)

    def begin(self, files: list[FileSpec], on_disk: dict[str, int]) -> None:
        self.sizes = {f.path: f.size for f in files}
        self.total = sum(self.sizes.values())
        self.done = sum(on_disk.values())
        self.fetched = 0
        self.t0 = self.last = time.monotonic()
        already = f" ({sizes.human_bytes(self.done)} already on disk)" if self.done else ""
        self._line(f"fetching {len(files)} files, {sizes.human_bytes(self.total)}{already}")

    def advance(self, path: str, nbytes: int) -> None:
        with self.lock:
            self.done += nbytes
            self.fetched += nbytes
            now = time.monotonic()
            if now - self.last < self.interval:
                return
            self.last = now
            speed = self.fetched / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / speed if speed > 0 else float("inf")
            pct = 100 * self.done / max(self.total, 1)
            self._line(f"  {pct:5.1f}% {sizes.human_bytes(self.done)} / {sizes.human_bytes(self.total)}, "
                       f"{sizes.human_bytes(speed)}/s, ETA {_eta(eta)}")

    def verified(self, path: str) -> None:
        self._line(f"  verified {path} ({sizes.human_bytes(self.sizes.get(path, 0))})")

    def failed(self, path: str, message: str) -> None:
        self._line(f"  FAILED {message}")

    def retrying(self, path: str, error: str, delay: float) -> None:
        self._line(f"  retrying {path} in {delay:.1f}s ({error})")


def _eta(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds + 0.5)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


# ---- the command -------------------------------------------------------------------------------------------------
def _free_bytes(path: Path) -> tuple[int, Path]:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free, path


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
    for s in specs:
        rec = existing.files.get(s.path)
        if rec and _same_file(rec, s) and (existing.path / s.path).is_file():
            reuse[s.path] = (existing.path / s.path, rec)
    if existing.commit == commit:
        keep = {rel: (existing.path / rel, rec) for rel, rec in existing.files.items() if (existing.path / rel).is_file()}
    return existing, reuse, keep


def _probe_access(spec: FileSpec, headers: dict, timeout: float, ep: str, describe) -> None:
    """One HEAD before anything is written: no network, a gated repo or a bad token fail here, leaving nothing."""
    try:
        status, h, _ = fetch_bytes(spec.url, headers, timeout=timeout, head=True)
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(hub.network_error(ep, e)) from None
    if 400 <= status < 500 and status not in (408, 429):  # busy/5xx: the transfer retries those
        raise DownloadError(describe(status, h, spec.path))


def run_download(
    repo_id: str,
    *,
    revision: str | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    token: str | None = None,
    dry_run: bool = False,
    max_workers: int | None = None,
    json_out: bool = False,
) -> Path | None:
    """Resolve, plan, fetch, verify and publish REPO_ID as a store entry; returns its folder (None for --dry-run)."""
    repo_id = repo_id.strip().strip("/")
    hub.check_online()
    token = hub.resolve_token(token)
    repo = hub.fetch_repo(repo_id, revision, token)
    files = hub.select_files(repo.files, include, exclude)
    if not files:
        listing = ", ".join(f.path for f in repo.files[:8]) + (", ..." if len(repo.files) > 8 else "")
        raise DownloadError(f"no file of {repo_id} matches the selection (it has: {listing}): adjust --include / "
                            "--exclude")
    if not include and not any(f.path.endswith(".safetensors") for f in files):
        other = [f.path for f in repo.files if f.path.endswith((".bin", ".gguf", ".pt", ".pth"))]
        hint = f" (it has {other[0]}...: cohere-cli reads safetensors only)" if other else ""
        raise DownloadError(f"{repo_id} has no *.safetensors weights at the top level{hint}; "
                            "pass --include GLOB to fetch specific files anyway")
    ep, name = repo.endpoint, repo_id
    specs = [FileSpec(f.path, hub.file_url(ep, repo_id, repo.commit, f.path), f.size, f.sha256, f.blob_id)
             for f in files]
    options = Options.from_env(max_workers=max_workers)
    headers = hub.request_headers(token)

    def describe(status: int, h, path: str) -> str:
        return hub.access_error(repo_id, ep, status, h, has_token=bool(token), gated=repo.gated, path=path,
                                commit=repo.commit)

    existing, reuse, keep = _reusable(name, specs, repo.commit)
    if existing is not None and existing.commit == repo.commit and len(reuse) == len(specs) and not dry_run:
        store.remember_last_used(existing.name)
        info(f"{name} is up to date (commit {repo.commit[:12]}) in {existing.path}")
        _report(json_out, existing.path, repo, specs, fetched=0, seconds=0.0)
        return existing.path
    staging = store.partial_path(name)
    transfer = Transfer(staging, specs, headers, options, describe)

    if dry_run:
        transfer.prepare()
        _print_plan(repo, specs, transfer, reuse, headers, json_out)
        return None

    probe = next((s for s in specs if s.path not in reuse), None)
    if probe is not None:
        _probe_access(probe, headers, options.timeout, ep, describe)

    existed = staging.exists()
    t0 = time.monotonic()
    try:
        with staging_lock(staging, repo_id):
            (staging / PLAN).write_text(json.dumps({
                "name": name, "repo_id": repo_id, "revision": revision, "commit": repo.commit, "endpoint": ep,
                "files": {s.path: {"size": s.size, "sha256": s.sha256, "blob_id": s.blob_id} for s in specs},
            }, indent=1))
            prune_staging(staging, {f.path: expect_id(f.size, f.sha256, f.blob_id) for f in repo.files})
            for s in specs:
                if s.path in reuse:
                    adopt_verified(staging, s, reuse[s.path][0], reuse[s.path][1]["sha256"])
            transfer.prepare()
            free, where = _free_bytes(store.store_root())
            if transfer.remaining_bytes > free:
                if not existed:  # only links to files already in the store were made: undo them
                    shutil.rmtree(staging, ignore_errors=True)
                raise DownloadError(
                    f"{repo_id} needs {sizes.human_bytes(transfer.remaining_bytes)} more on disk but only "
                    f"{sizes.human_bytes(free)} is free under {where}: free some space or set COHERE_CLI_HOME to a "
                    "bigger disk"
                )
            if transfer.remaining_bytes and transfer.total_bytes - transfer.remaining_bytes > 0:
                info(f"resuming: {sizes.human_bytes(transfer.total_bytes - transfer.remaining_bytes)} of "
                     f"{sizes.human_bytes(transfer.total_bytes)} already on disk")
            progress = RichProgress() if err.is_terminal else PlainProgress()
            results = transfer.run(progress)
            source = {"repo_id": repo_id, "revision": revision or "main", "commit": repo.commit, "endpoint": ep}
            path = publish(name, staging, results, source=source, keep=keep)
    except KeyboardInterrupt:
        kept = staged_bytes(staging)
        _cleanup_if_empty(staging, existed)
        if kept:
            err.print(f"[yellow]stopped[/yellow]: {sizes.human_bytes(kept)} kept in {escape(str(staging))}; "
                      f"run the same command to resume", highlight=False)
        raise
    except BaseException:
        _cleanup_if_empty(staging, existed)
        raise
    seconds = time.monotonic() - t0
    store.remember_last_used(name)
    rate = f" at {sizes.human_bytes(transfer.fetched_bytes / max(seconds, 1e-9))}/s" if transfer.fetched_bytes else ""
    err.print(f"[green]downloaded[/green] {escape(name)} (commit {repo.commit[:12]}, {len(specs)} files, "
              f"{sizes.human_bytes(transfer.total_bytes)}) in {seconds:.1f}s{rate}", highlight=False)
    _report(json_out, path, repo, specs, fetched=transfer.fetched_bytes, seconds=seconds)
    return path


def _cleanup_if_empty(staging: Path, existed: bool) -> None:
    """A failed first attempt that fetched nothing leaves nothing behind."""
    if not existed and staged_bytes(staging) == 0:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()


def _report(json_out: bool, path: Path, repo: hub.RepoInfo, specs: list[FileSpec], *, fetched: int,
            seconds: float) -> None:
    if json_out:
        print(json.dumps({
            "name": repo.repo_id, "path": str(path), "repo_id": repo.repo_id, "revision": repo.revision,
            "commit": repo.commit, "files": len(specs), "total_bytes": sum(s.size for s in specs),
            "fetched_bytes": fetched, "seconds": round(seconds, 3),
        }))
    else:
        print(path)
    sys.stdout.flush()


def _print_plan(repo: hub.RepoInfo, specs: list[FileSpec], transfer: Transfer, reuse: dict, headers: dict,
                json_out: bool) -> None:
    on_disk = transfer.on_disk
    total = sum(s.size for s in specs)
    have = sum(s.size if s.path in reuse else on_disk.get(s.path, 0) for s in specs)
    free, where = _free_bytes(store.store_root())
    need = total - have
    config, config_note = None, None
    cfg_spec = next((s for s in specs if s.path == "config.json"), None)
    if cfg_spec is None:
        config_note = "config.json is not in the selection"
    else:
        try:
            status, h, body = fetch_bytes(cfg_spec.url, headers, timeout=transfer.opts.timeout)
            if status == 200:
                config = json.loads(body)
                if not isinstance(config, dict):
                    config, config_note = None, "config.json is not a JSON object"
            else:
                config_note = transfer.describe(status, h, "config.json")
        except (OSError, ValueError, http.client.HTTPException) as e:
            config_note = f"config.json unreadable ({e})"
    memory: dict | None = None
    dims = None
    if config is not None:
        try:
            d = dims = sizes.Dims.from_config(config)  # ValueError (one note) on anything it cannot size
            memory = {
                "parameters": sizes.param_counts(d).total,
                "weights_bytes": {p: sizes.weights_bytes(d, p) for p in ("bf16", "int8", "nf4")},
                "kv_cache_bytes": {"seq": KV_SEQ, "bf16": sizes.kv_cache_bytes(d, KV_SEQ)},
            }
        except ValueError as e:
            config_note = str(e)
    if json_out:
        print(json.dumps({
            "repo_id": repo.repo_id, "revision": repo.revision, "commit": repo.commit, "gated": repo.gated,
            "files": [{"path": s.path, "size": s.size, "sha256": s.sha256,
                       "on_disk": s.size if s.path in reuse else on_disk.get(s.path, 0)} for s in specs],
            "total_bytes": total, "to_fetch_bytes": need, "free_bytes": free, "store": str(where),
            "fits": need <= free, "memory": memory, "note": config_note,
        }))
        return
    gated = f" (gated: {repo.gated})" if repo.gated else ""
    print(f"{repo.repo_id} @ {repo.revision or 'main'} -> commit {repo.commit}{gated}")
    width = max(len(s.path) for s in specs)
    for s in specs:
        if s.path in reuse:
            state = "in store"
        elif on_disk.get(s.path, 0) >= s.size and s.size:
            state = "on disk"
        elif on_disk.get(s.path, 0):
            state = f"partial {100 * on_disk[s.path] // max(s.size, 1)}%"
        else:
            state = "to fetch"
        print(f"  {s.path:<{width}}  {sizes.human_bytes(s.size):>9}  {state}")
    already = f" ({sizes.human_bytes(have)} already here)" if have else ""
    print(f"total: {len(specs)} files, {sizes.human_bytes(total)}; to fetch {sizes.human_bytes(need)}{already}")
    verdict = "fits" if need <= free else "DOES NOT FIT"
    print(f"disk: {sizes.human_bytes(free)} free under {where} -> {verdict}")
    if dims is not None:
        for line in sizes.memory_lines(dims, KV_SEQ):
            print(line)
    else:
        print(f"memory: unknown ({config_note})")
    if need > free:
        warn(f"the download would not fit: free {sizes.human_bytes(need - free)} more first")
