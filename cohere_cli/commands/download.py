"""`cohere download REPO_ID`: the work is cohere_cli.store.fetch (plan with the Hub's metadata, fetch with our
engine, publish into the store); here, progress on stderr and the entry's path (or one JSON object) on stdout."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


from cohere_cli import store
from cohere_cli.store import hub, sizes
from cohere_cli.store.download import Progress
from cohere_cli.store.partfile import FileSpec
from cohere_cli.store.fetch import KV_SEQ, Plan, fetch, plan_download, plan_record
from cohere_cli.store.staging import staged_bytes
from cohere_cli.ui.console import err, info, warn, shown
from cohere_cli.untrusted import inert


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
                tid = self.tasks[path] = self.bars.add_task(shown(label), total=self.sizes.get(path, 0),
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
        self.bars.console.print(f"  [green]✓[/green] {shown(path)} [dim]({size}, verified)[/dim]")

    def failed(self, path: str, message: str) -> None:
        self.bars.console.print(f"  [red]✗[/red] {shown(message)}")

    def retrying(self, path: str, error: str, delay: float) -> None:
        self.bars.console.print(f"  [yellow]retrying[/yellow] {shown(path)} in {delay:.1f}s ({shown(error)})")

    def end(self) -> None:
        self.bars.stop()


class PlainProgress(Progress):
    """Plain lines when stderr is not a terminal: one per verified file, a status line every `interval` s."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.lock = threading.Lock()

    def _line(self, text: str) -> None:
        err.print(inert(text), markup=False, highlight=False, soft_wrap=True)  # Hub file names are untrusted

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
    plan = plan_download(repo_id, revision=revision, include=include, exclude=exclude, token=token,
                         max_workers=max_workers)
    repo, name = plan.repo, plan.name
    if plan.up_to_date and not dry_run:
        store.remember_last_used(plan.existing.name)
        info(f"{name} is up to date (commit {repo.commit[:12]}) in {plan.existing.path}")
        _report(json_out, plan.existing.path, repo, plan.specs, fetched=0, seconds=0.0)
        return plan.existing.path
    if dry_run:
        _print_plan(plan, json_out)
        return None
    t0 = time.monotonic()
    try:
        path = fetch(plan, RichProgress() if err.is_terminal else PlainProgress(), say=info)
    except KeyboardInterrupt:
        kept = staged_bytes(plan.staging)
        if kept:
            err.print(f"[yellow]stopped[/yellow]: {sizes.human_bytes(kept)} kept in {shown(str(plan.staging))}; "
                      f"run the same command to resume", highlight=False)
        raise
    seconds = time.monotonic() - t0
    store.remember_last_used(name)
    transfer = plan.transfer
    rate = f" at {sizes.human_bytes(transfer.fetched_bytes / max(seconds, 1e-9))}/s" if transfer.fetched_bytes else ""
    err.print(f"[green]downloaded[/green] {shown(name)} (commit {repo.commit[:12]}, {len(plan.specs)} files, "
              f"{sizes.human_bytes(transfer.total_bytes)}) in {seconds:.1f}s{rate}", highlight=False)
    _report(json_out, path, repo, plan.specs, fetched=transfer.fetched_bytes, seconds=seconds)
    return path


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


def _print_plan(plan: Plan, json_out: bool) -> None:
    rec, dims = plan_record(plan)
    if json_out:
        print(json.dumps(rec))
        return
    repo, on_disk = plan.repo, {f["path"]: f["on_disk"] for f in rec["files"]}
    gated = f" (gated: {repo.gated})" if repo.gated else ""
    print(f"{repo.repo_id} @ {repo.revision or 'main'} -> commit {repo.commit}{gated}")
    width = max(len(s.path) for s in plan.specs)
    for s in plan.specs:
        if s.path in plan.reuse:
            state = "in store"
        elif on_disk[s.path] >= s.size and s.size:
            state = "on disk"
        elif on_disk[s.path]:
            state = f"partial {100 * on_disk[s.path] // max(s.size, 1)}%"
        else:
            state = "to fetch"
        print(inert(f"  {s.path:<{width}}  {sizes.human_bytes(s.size):>9}  {state}"))
    total, need, free = rec["total_bytes"], rec["to_fetch_bytes"], rec["free_bytes"]
    have = total - need
    already = f" ({sizes.human_bytes(have)} already here)" if have else ""
    print(f"total: {len(plan.specs)} files, {sizes.human_bytes(total)}; to fetch {sizes.human_bytes(need)}{already}")
    verdict = "fits" if need <= free else "DOES NOT FIT"
    print(f"disk: {sizes.human_bytes(free)} free under {rec['store']} -> {verdict}")
    if dims is not None:
        for line in sizes.memory_lines(dims, KV_SEQ):
            print(line)
    else:
        print(inert(f"memory: unknown ({rec['note']})"))
    if need > free:
        warn(f"the download would not fit: free {sizes.human_bytes(need - free)} more first")
