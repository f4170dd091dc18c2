"""The transfer engine behind `cohere download`: resumable, parallel, verified.

- Every file is fetched with HTTP Range requests into `<staging>/<path>.part`; `<path>.part.json` records, per
  chunk, how many bytes are on disk (saved every `save_interval` seconds after an fdatasync, when a chunk completes,
  and when a worker stops for any reason). A later run, after Ctrl-C, a crash or a dropped connection, continues
  every chunk from the bytes already on disk. Staging lives in the store's `.partial/<entry>/` so it survives
  restarts; `cohere models` lists it and `cohere models rm` removes it.
- Files are split into `chunk_size` ranges fetched by up to `max_workers` threads (big shards in parallel ranges,
  small files side by side), over persistent connections (cohere_cli/store/httppool.py); redirects are followed and
  Authorization is dropped when one leaves the origin (signed CDN URLs reject it).
- Transient failures (connection reset or dropped, timeouts, 408/429/5xx) are retried with exponential backoff and
  jitter; the count resets whenever an attempt gained bytes, so a link that drops every minute still finishes.
  Other statuses (401/403 gated, 404...) stop the download at once with a message from `describe_http_error`.
- A hashing thread per file follows the downloaded prefix, so verification costs little extra time: LFS files must
  match their sha256, small files their git blob id (the Hub's ETag for them), all files their size. A mismatch
  deletes that file's part and fails loudly; the other files are kept.
- Verified files are renamed to `<staging>/<path>`; `staging.publish` links them into a temporary entry and renames
  it into the store with its manifest (cohere_cli/store/staging.py).

Tuning from the environment (tests use it): COHERE_CLI_DL_CHUNK_SIZE (bytes), COHERE_CLI_DL_TIMEOUT (s),
COHERE_CLI_DL_RETRIES, COHERE_CLI_DL_BACKOFF (s), COHERE_CLI_DL_SAVE_INTERVAL (s)."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import queue
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cohere_cli.errors import DownloadError
from cohere_cli.store.httppool import Fatal, HttpPool
from cohere_cli.store.partfile import FileResult, FileSpec, PartFile, regular_size
from cohere_cli.store.staging import VERIFIED, atomic_json, read_json

ENV_PREFIX = "COHERE_CLI_DL_"
_READ_BLOCK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass
class Options:
    max_workers: int = 8
    chunk_size: int = 64 << 20  # bytes per Range request / resume unit
    timeout: float = 30.0  # seconds without a byte before a connection is abandoned and retried
    retries: int = 8  # consecutive attempts that gain nothing before giving up
    backoff: float = 1.0  # first retry delay, doubling up to backoff_max
    backoff_max: float = 30.0
    save_interval: float = 1.0  # seconds between part-state saves while bytes flow

    @classmethod
    def from_env(cls, **overrides) -> Options:
        o = cls()
        for f in dataclasses.fields(cls):
            raw = os.environ.get(ENV_PREFIX + f.name.upper())
            if raw:
                try:
                    setattr(o, f.name, type(getattr(o, f.name))(float(raw)))
                except ValueError:
                    raise DownloadError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a number") from None
        for k, v in overrides.items():
            if v is not None:
                setattr(o, k, v)
        o.max_workers = max(1, int(o.max_workers))
        o.chunk_size = max(64 << 10, int(o.chunk_size))
        return o


class Progress:
    """What the engine reports; every method may be called from worker threads. The default does nothing."""

    def begin(self, files: list[FileSpec], on_disk: dict[str, int]) -> None: ...

    def advance(self, path: str, nbytes: int) -> None: ...

    def verified(self, path: str) -> None: ...

    def failed(self, path: str, message: str) -> None: ...

    def retrying(self, path: str, error: str, delay: float) -> None: ...

    def end(self) -> None: ...


class _Transient(Exception):
    def __init__(self, msg: str, retry_after: float | None = None):
        super().__init__(msg)
        self.retry_after = retry_after


class _Aborted(Exception):
    pass


# ---- the transfer ------------------------------------------------------------------------------------------------
class Transfer:
    """Fetch `files` into `staging` (see the module docstring). prepare() reads what is already on disk without
    changing anything (--dry-run uses it); run() fetches the rest and returns a FileResult per file."""

    def __init__(self, staging: Path, files: list[FileSpec], headers: Mapping[str, str], options: Options,
                 describe_http_error: Callable[[int, Mapping[str, str], str], str] | None = None):
        self.staging = Path(staging)
        self.files = list(files)
        self.headers = dict(headers)
        self.opts = options
        self.describe = describe_http_error or (lambda status, h, path: f"the server answered {status} for {path}")
        self.jobs = [PartFile(f, self.staging, options.chunk_size) for f in self.files]
        self._abort = threading.Event()  # Ctrl-C: stop now, unblock every socket
        self._drain = threading.Event()  # a fatal error: start nothing new, finish the ranges being received
        self._workers_done = threading.Event()
        self._fatal: str | None = None
        self._bad: list[str] = []
        self._lock = threading.Lock()
        self._tasks: queue.Queue = queue.Queue()
        self._http = HttpPool(options.timeout)
        self._progress = Progress()
        self._hashers: list[threading.Thread] = []
        self._reading = threading.BoundedSemaphore(max(8, options.max_workers))  # hashers reading at once (fds)
        self._verified: dict[str, dict] = {}
        self._prepared = False
        self.fetched_bytes = 0  # bytes received from the network by this run

    # -- what is already there
    def prepare(self) -> None:
        self._verified = read_json(self.staging / VERIFIED)
        for job in self.jobs:
            rec = self._verified.get(job.spec.path) or {}
            size = regular_size(job.final)  # a symlink planted in staging is never taken as a fetched file
            if size == job.spec.size and rec.get("expect") == job.spec.expect and rec.get("sha256"):
                job.status = "verified"
                job.result = FileResult(job.spec.path, size, rec["sha256"], job.spec.blob_id)
            elif size == job.spec.size:
                job.status = "recheck"  # renamed into place but not recorded (a crash in between): hash again
            else:
                job.load()
        self._prepared = True

    @property
    def on_disk(self) -> dict[str, int]:
        return {j.spec.path: j.on_disk() for j in self.jobs}

    @property
    def remaining_bytes(self) -> int:
        return sum(j.spec.size - j.on_disk() for j in self.jobs)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    # -- fetching
    def run(self, progress: Progress | None = None) -> dict[str, FileResult]:
        if not self._prepared:
            self.prepare()
        self._progress = progress or Progress()
        self.staging.mkdir(parents=True, exist_ok=True)
        self._progress.begin(self.files, self.on_disk)
        workers: list[threading.Thread] = []
        try:
            for job in self.jobs:
                if job.status != "verified":
                    self._queue(job)
            n = min(self.opts.max_workers, self._tasks.qsize())
            workers = [threading.Thread(target=self._worker, name=f"dl-{k}", daemon=True) for k in range(n)]
            for t in workers:
                t.start()
            for t in workers:
                while t.is_alive():
                    t.join(0.2)
            self._workers_done.set()
            for job in self.jobs:
                with job.cond:
                    job.cond.notify_all()
            while True:
                with self._lock:
                    alive = [h for h in self._hashers if h.is_alive()]
                if not alive:
                    break
                alive[0].join(0.2)
        except BaseException:
            self._stop(workers)
            raise
        finally:
            unsaved = self._save_all()
            self._progress.end()
        if self._fatal:
            raise DownloadError(self._fatal)
        if unsaved:  # after the run's own error, which says more (the bytes are on disk either way)
            raise DownloadError(unsaved)
        if self._bad:
            more = f" (and {len(self._bad) - 1} more)" if len(self._bad) > 1 else ""
            raise DownloadError(f"{self._bad[0]}{more}: the damaged data was deleted; run the same command again "
                                "to fetch it anew (verified files are kept)")
        missing = [j.spec.path for j in self.jobs if j.result is None]
        if missing:
            raise DownloadError(f"{missing[0]} did not complete: run the same command again to resume")
        return {j.spec.path: j.result for j in self.jobs}  # type: ignore[misc]

    def _queue(self, job: PartFile) -> None:
        """Queue the chunks of `job` still to fetch (its part file made, no fd kept open)."""
        try:
            if job.status == "recheck":
                job.part.parent.mkdir(parents=True, exist_ok=True)
                os.replace(job.final, job.part)
                job.done = [e - s for s, e in (job.bounds(i) for i in range(job.n_chunks))]
                job.saved = list(job.done)
                job.status = "fetch"
            job.start()
        except Fatal as e:
            raise DownloadError(str(e)) from None
        except OSError as e:
            raise DownloadError(f"cannot prepare {job.part} ({e.strerror or e}): check {self.staging}, then run "
                                "the same command again") from None
        pending = [i for i in range(job.n_chunks) if job.done[i] < job.bounds(i)[1] - job.bounds(i)[0]]
        for i in pending:
            self._tasks.put((job, i))
        if not pending:
            self._ensure_hasher(job)

    def _save_all(self) -> str | None:
        """Save every file's progress and close it; a save that fails (the disk is full, staging was removed)
        is one line to show, not a traceback out of a `finally`: the next run re-checks what the part holds."""
        problem = None
        for job in self.jobs:
            try:
                job.save()
            except OSError as e:
                problem = problem or (f"cannot save the progress of {job.spec.path} in {self.staging} ("
                                      f"{e.strerror or e}): free some space and run the same command again")
            finally:
                job.close()
        return problem

    def _stop(self, workers: list[threading.Thread]) -> None:
        self._abort.set()
        self._http.shutdown_all()
        for job in self.jobs:
            with job.cond:
                job.cond.notify_all()
        deadline = time.monotonic() + 5
        for t in workers + list(self._hashers):
            t.join(max(0.0, deadline - time.monotonic()))

    def _fail(self, message: str) -> None:
        """Stop the download with `message`. Ranges already flowing are finished and kept (no byte that reached
        this machine is thrown away); nothing new is started."""
        with self._lock:
            if self._fatal is None:
                self._fatal = message
        self._drain.set()

    def _ensure_hasher(self, job: PartFile) -> None:
        with self._lock:
            if job.hasher is None:
                job.hasher = threading.Thread(target=self._hash, args=(job,), name=f"hash-{job.spec.path}",
                                              daemon=True)
                self._hashers.append(job.hasher)
                job.hasher.start()

    def _worker(self) -> None:
        try:
            while not (self._abort.is_set() or self._drain.is_set()):
                try:
                    job, i = self._tasks.get_nowait()
                except queue.Empty:
                    return
                self._ensure_hasher(job)
                job.acquire()
                try:
                    self._chunk(job, i)
                finally:
                    job.release()
                job.save()
        except Fatal as e:
            self._fail(str(e))
        except _Aborted:
            pass
        except OSError as e:  # saving progress: the disk is full, staging was removed under us
            self._fail(f"cannot save download progress in {self.staging} ({e.strerror or e}): run the same command "
                       "again to resume")
        except Exception as e:  # a bug, not the network: say so rather than hang
            self._fail(f"unexpected error while downloading ({type(e).__name__}: {e})")
        finally:
            self._http.close_thread()

    def _chunk(self, job: PartFile, i: int) -> None:
        start, end = job.bounds(i)
        failures = 0
        while True:
            before = job.done[i]
            if start + before >= end or self._drain.is_set():
                return
            try:
                self._transfer(job, i, start + before, end)
                continue
            except (Fatal, _Aborted):
                raise
            except (OSError, http.client.HTTPException, _Transient) as e:
                if self._abort.is_set():
                    raise _Aborted from None
                failures = 0 if job.done[i] > before else failures + 1
                if failures > self.opts.retries:
                    raise Fatal(
                        f"giving up on {job.spec.path} after {failures} failed attempts ({_describe_exc(e)}): "
                        "check the network and run the same command again to resume"
                    ) from None
                delay = min(self.opts.backoff * 2 ** max(0, failures - 1), self.opts.backoff_max)
                delay *= random.uniform(0.75, 1.0)
                if isinstance(e, _Transient) and e.retry_after:
                    delay = max(delay, min(e.retry_after, self.opts.backoff_max))
                job.save()
                if self._drain.is_set():
                    return
                self._progress.retrying(job.spec.path, _describe_exc(e), delay)
                if self._abort.wait(delay) or self._drain.is_set():
                    return

    def _transfer(self, job: PartFile, i: int, pos: int, end: int) -> None:
        spec = job.spec
        headers = {**self.headers, "Range": f"bytes={pos}-{end - 1}"}
        resp, origin = self._http.get(spec.url, headers)
        complete = False
        try:
            status = resp.status
            skip = 0
            if status == 206:
                m = _CONTENT_RANGE.fullmatch((resp.getheader("Content-Range") or "").strip())
                if not m or int(m[1]) != pos:
                    raise _Transient(f"unexpected Content-Range {resp.getheader('Content-Range')!r}")
                if m[3] != "*" and int(m[3]) != spec.size:
                    raise Fatal(f"{spec.path} is {m[3]} bytes on the server, not {spec.size}: the repo changed; "
                                 "run the same command again")
            elif status == 200:
                if resp.length is not None and resp.length != spec.size:
                    raise Fatal(f"{spec.path} is {resp.length} bytes on the server, not {spec.size}: the repo "
                                 "changed; run the same command again")
                skip = pos  # the server ignored Range: read past the bytes we already have
            elif status in (408, 429) or status >= 500:
                retry_after = resp.getheader("Retry-After")
                resp.read(1 << 16)
                raise _Transient(f"HTTP {status}", float(retry_after) if (retry_after or "").isdigit() else None)
            elif status == 416:
                raise Fatal(f"{spec.path} is smaller on the server than expected ({spec.size} bytes): the repo "
                             "changed; run the same command again")
            else:
                resp.read(1 << 16)
                raise Fatal(self.describe(status, {k: v for k, v in resp.getheaders()}, spec.path))
            # read1: one socket read at a time, so every byte received is on disk and counted even when the
            # next read times out or is interrupted (readinto would wait to fill the whole buffer).
            while skip:
                data = resp.read1(min(_READ_BLOCK, skip))
                if not data:
                    raise _Transient("connection closed early")
                skip -= len(data)
            want = end - pos
            while want > 0:
                if self._abort.is_set():
                    raise _Aborted
                data = resp.read1(min(_READ_BLOCK, want))
                if not data:
                    raise _Transient("connection closed early")
                n = len(data)
                job.write(memoryview(data), pos)
                pos += n
                want -= n
                with self._lock:
                    self.fetched_bytes += n
                self._progress.advance(spec.path, n)  # before the hasher can see the bytes and report the file
                job.advance(i, n)
                if time.monotonic() - job.last_save > self.opts.save_interval:
                    job.save()
            if status == 206 and resp.length == 0 and not resp.will_close:
                resp.read()  # marks the response done so the connection can carry the next range
                complete = True
        finally:
            if not complete:
                self._http.drop(origin)

    def _hash(self, job: PartFile) -> None:
        spec = job.spec
        try:
            checked = job.hash_following(lambda: self._abort.is_set() or self._workers_done.is_set(), self._reading)
            if checked is None:
                return  # stopped, or the rest of this file will not come in this run
            digest, problem = checked
            if problem:
                job.discard()
                with self._lock:
                    self._bad.append(problem)
                self._progress.failed(spec.path, problem)
                return
            job.close()
            os.replace(job.part, job.final)
            with contextlib.suppress(FileNotFoundError):
                job.state_path.unlink()
            job.result = FileResult(spec.path, spec.size, digest, spec.blob_id)
            with self._lock:
                self._verified[spec.path] = {"expect": spec.expect, "sha256": digest, "size": spec.size}
                atomic_json(self.staging / VERIFIED, self._verified)
            self._progress.verified(spec.path)
        except OSError as e:
            self._fail(f"cannot read back {job.part} to verify it ({e})")


def _describe_exc(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, http.client.IncompleteRead):
        return "connection dropped mid-transfer"
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text and not isinstance(e, _Transient) else (text or type(e).__name__)
