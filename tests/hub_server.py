"""A Hugging Face Hub look-alike on 127.0.0.1 for tests and the loopback benchmark.

It speaks what huggingface_hub 2.4 and cohere-cli use (shapes read from huggingface_hub/hf_api.py and
file_download.py):

- `GET /api/models/{repo}[/revision/{rev}]` (`model_info`, `repo_info`; `?blobs=True` adds size, blobId and
  `lfs: {sha256, size, pointerSize}` to each sibling), `sha` = the resolved commit;
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=` (`list_repo_tree`: `{type, oid, size, path, lfs: {oid,
  size, pointerSize}}`), `POST /api/models/{repo}/paths-info/{rev}` (`get_paths_info`, form field `paths`);
- `GET|HEAD /{repo}/resolve/{rev}/{path}`: small files are served directly (ETag = git blob id); LFS files answer
  302 to a second listener standing in for the CDN (`/cdn/{sha256}?sig=...`) with `X-Linked-Etag`,
  `X-Linked-Size` and `X-Repo-Commit`, like the Hub. The CDN rejects requests that carry Authorization (signed S3
  URLs do). Both honour `Range: bytes=a-b` (206 + Content-Range) and send Accept-Ranges / Content-Length.
- errors with the Hub's `X-Error-Code` / `X-Error-Message` headers: RepoNotFound (404, or 401 without a token),
  RevisionNotFound, EntryNotFound, GatedRepo (401 without a token, 403 with a token that has no access), and 401
  "Invalid credentials in Authorization header" for unknown tokens. Gated repos show their metadata to anyone,
  as on the Hub; private repos only to allowed tokens.

Faults (`server.faults`, consumed per response, thread-safe): `drop(path, at, times)` cuts the connection after
sending the bytes before absolute offset `at` (times=None: every time); `stall(path, at, seconds)` (cut short by clear()); `corrupt(path,
at)` flips that byte in every response; `fail(path, status, times)`; `rate` (bytes/s per response);
`hold_after(n)`: send n more bytes in all (every file and connection together), then hold every body mid-way
until `release()` (they go on) or `end_holds()` (they end, sending nothing more): a transfer that a test interrupts
can never finish before the interrupt arrives.
`bytes_sent[path]` counts the body bytes actually written to sockets for each file; `requests` logs every request.

Hostile metadata (`hostile_metadata(repo_id, ...)`, what a tampered mirror or an ordinary web server at HF_ENDPOINT
sends for `/api/models/{repo}`): bogus `siblings` appended to the real ones, a raw `body` instead of the JSON, an
`endless` body, `silent`: the request is accepted and never answered (until stop()), or `trickle`: a header line
that never ends, a byte every 50 ms (the listing, or the repo's files).
"""

from __future__ import annotations

import email.utils
import fnmatch
import hashlib
import json
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth", "tokenizer.json")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HostedFile:
    path: str
    source: Path
    size: int
    sha256: str
    blob_id: str  # git oid: of the content (small files) or of the LFS pointer (LFS files)
    lfs: bool

    @classmethod
    def from_file(cls, path: str, source: Path, lfs: bool) -> HostedFile:
        h = hashlib.sha256()
        g = hashlib.sha1(b"blob %d\0" % source.stat().st_size)
        with open(source, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
                g.update(block)
        size = source.stat().st_size
        sha = h.hexdigest()
        if lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()
            return cls(path, source, size, sha, git_blob_id(pointer), True)
        return cls(path, source, size, sha, g.hexdigest(), False)

    def sibling(self, blobs: bool) -> dict:
        d: dict = {"rfilename": self.path}
        if blobs:
            d["size"] = self.size
            d["blobId"] = self.blob_id
            if self.lfs:
                d["lfs"] = {"sha256": self.sha256, "size": self.size, "pointerSize": 134}
        return d

    def tree_entry(self) -> dict:
        d = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.lfs:
            d["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return d


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, dict[str, HostedFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool | str = False
    private: bool = False
    allowed: set[str] = field(default_factory=set)  # tokens that may read a gated/private repo

    def resolve(self, rev: str) -> str | None:
        if rev in self.refs:
            return self.refs[rev]
        if rev in self.commits:
            return rev
        return None


HOLD_LIMIT = 300  # seconds a held body waits for release() before the server gives up on it (the test failed)


class Faults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.released = threading.Condition(self.lock)
        self.clear()

    def clear(self) -> None:
        with self.lock:
            self.drops: dict[str, list[list]] = {}
            self.stalls: dict[str, list[list]] = {}
            self.corruptions: dict[str, set[int]] = {}
            self.failures: dict[str, list[list]] = {}
            self.rate: float | None = None
            self.budget: int | None = None  # bytes left to send before holding (None: no hold)
            self.hold_path: str | None = None  # the file whose bodies the budget holds (None: all)
            self.epoch = getattr(self, "epoch", 0) + 1  # held bodies end (see end_holds)
            self.released.notify_all()

    def hold_after(self, n: int, path: str | None = None) -> None:
        """After n more bytes (of `path` only, or of every file), hold the bodies being sent."""
        with self.lock:
            self.budget = n
            self.hold_path = path
            self.released.notify_all()

    def release(self) -> None:
        """Held bodies go on sending."""
        with self.lock:
            self.budget = None
            self.released.notify_all()

    def end_holds(self) -> None:
        """Held bodies end without sending another byte (their client is gone): nothing counts after this."""
        with self.lock:
            self.budget = None
            self.epoch += 1
            self.released.notify_all()

    def wait_stall(self, seconds: float) -> bool:
        """Sleep `seconds` unless clear() or end_holds() comes first: False when cut short (the body ends)."""
        with self.lock:
            epoch = self.epoch
            deadline = time.monotonic() + seconds
            while self.epoch == epoch:
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self.released.wait(left)
            return False

    def holding(self) -> bool:
        """True once the budget is spent: every body being sent now waits."""
        with self.lock:
            return self.budget == 0

    def take_budget(self, want: int) -> int:
        """How many of `want` bytes may go now; waits while the budget is spent. 0: the hold was ended, or lasted
        past HOLD_LIMIT (the test failed)."""
        with self.lock:
            epoch = self.epoch
            deadline = time.monotonic() + HOLD_LIMIT
            while self.budget == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return 0
                self.released.wait(left)
            if self.epoch != epoch:
                return 0
            if self.budget is None:
                return want
            n = min(want, self.budget)
            self.budget -= n
            return n

    def drop(self, path: str, at: int, times: int | None = 1) -> None:
        with self.lock:
            self.drops.setdefault(path, []).append([at, times])

    def stall(self, path: str, at: int, seconds: float, times: int | None = 1) -> None:
        with self.lock:
            self.stalls.setdefault(path, []).append([at, seconds, times])

    def corrupt(self, path: str, at: int) -> None:
        with self.lock:
            self.corruptions.setdefault(path, set()).add(at)

    def fail(self, path: str, status: int = 503, times: int | None = 1) -> None:
        with self.lock:
            self.failures.setdefault(path, []).append([status, times])

    # consumed by the server
    def _take(self, table: dict, path: str, start: int, end: int, at_index: int = 0) -> list | None:
        for item in table.get(path, []):
            at = item[at_index]
            if start <= at <= end and (item[-1] is None or item[-1] > 0):
                if item[-1] is not None:
                    item[-1] -= 1
                return item
        return None

    def take_drop(self, path: str, start: int, end: int) -> int | None:
        with self.lock:
            item = self._take(self.drops, path, start, end)
            return item[0] if item else None

    def take_stall(self, path: str, start: int, end: int) -> tuple[int, float] | None:
        with self.lock:
            item = self._take(self.stalls, path, start, end)
            return (item[0], item[1]) if item else None

    def take_failure(self, path: str) -> int | None:
        with self.lock:
            for item in self.failures.get(path, []):
                if item[1] is None or item[1] > 0:
                    if item[1] is not None:
                        item[1] -= 1
                    return item[0]
            return None


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, hub: HubServer, role: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub
        self.role = role


class HubServer:
    def __init__(self, *, cdn: bool = True, tokens: tuple[str, ...] = ("hf_good", "hf_other")) -> None:
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.tokens = set(tokens)
        self.use_cdn = cdn
        self.bytes_sent: Counter[str] = Counter()
        self.requests: list[dict] = []
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()  # most bodies of one file being sent at the same time
        self._lock = threading.Lock()
        self._blobs: dict[str, HostedFile] = {}
        self._servers: list[_Listener] = []
        self.hostile: dict[str, dict] = {}
        self._stopping = threading.Event()

    # ---- lifecycle
    def start(self) -> HubServer:
        self.api = _Listener(self, "hub")
        self.cdn = _Listener(self, "cdn")
        self._servers = [self.api, self.cdn]
        for s in self._servers:
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.faults.end_holds()
        for s in self._servers:
            s.shutdown()
            s.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self.cdn.server_address[1]}"

    # ---- content
    def add_repo(self, repo_id: str, folder: Path, *, gated: bool | str = False, private: bool = False,
                 allowed: tuple[str, ...] = ("hf_good",), lfs_patterns: tuple[str, ...] = LFS_PATTERNS) -> str:
        """Host every file under `folder` as `repo_id` at a new commit on main; returns the commit sha."""
        repo = self.repos.setdefault(repo_id, Repo(repo_id))
        repo.gated, repo.private, repo.allowed = gated, private, set(allowed)
        return self.push(repo_id, folder, lfs_patterns=lfs_patterns)

    def push(self, repo_id: str, folder: Path, *, ref: str = "main",
             lfs_patterns: tuple[str, ...] = LFS_PATTERNS) -> str:
        repo = self.repos[repo_id]
        folder = Path(folder)
        files = {}
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = p.relative_to(folder).as_posix()
                lfs = any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(p.name, g) for g in lfs_patterns)
                files[rel] = HostedFile.from_file(rel, p, lfs)
        digest = hashlib.sha1(repo_id.encode() + str(len(repo.commits)).encode())
        for f in files.values():
            digest.update(f"{f.path}:{f.sha256}:{f.blob_id}".encode())
        commit = digest.hexdigest()
        repo.commits[commit] = files
        repo.refs[ref] = commit
        with self._lock:
            for f in files.values():
                self._blobs.setdefault(f.sha256, f)
        return commit

    def hostile_metadata(self, repo_id: str, *, siblings: list | None = None, body: bytes | None = None,
                         ctype: str = "application/json", endless: bool = False, silent: bool = False,
                         trickle: str | None = None) -> None:
        """Serve `repo_id`'s listing made hostile (see the module docstring) until clear_hostile(). `trickle`:
        "listing" or "files" (its resolve URLs, HEAD included) answer with a status line, then a header line
        that grows a byte every 50 ms, forever (until stop()): never a complete answer, never a quiet socket."""
        self.hostile[repo_id] = dict(siblings=siblings or [], body=body, ctype=ctype, endless=endless, silent=silent,
                                     trickle=trickle)

    def clear_hostile(self) -> None:
        self.hostile.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.bytes_sent.clear()
            self.requests.clear()
            self.max_in_flight.clear()

    def _enter(self, path: str, delta: int) -> None:
        with self._lock:
            self.in_flight[path] += delta
            self.max_in_flight[path] = max(self.max_in_flight[path], self.in_flight[path])

    def sent(self, path: str) -> int:
        with self._lock:
            return self.bytes_sent[path]

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self.bytes_sent[path] += n

    def _log(self, **kw) -> None:
        with self._lock:
            self.requests.append(kw)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Listener

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    # ---- plumbing
    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _reply(self, status: int, body: bytes = b"", headers: dict | None = None, ctype: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None):
        self._reply(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str | None, message: str, headers: dict | None = None):
        h = dict(headers or {})
        if code:
            h["X-Error-Code"] = code
        h["X-Error-Message"] = message
        self._json({"error": message}, status, h)

    def _split_repo(self, parts: list[str]) -> tuple[Repo | None, list[str]]:
        for n in (2, 1):
            rid = "/".join(parts[:n])
            if rid in self.hub.repos:
                return self.hub.repos[rid], parts[n:]
        return None, parts[2:]

    def _auth_problem(self, repo: Repo, *, content: bool) -> bool:
        """Answer 401/403/404 if this request may not see `repo` (metadata) or its files (content)."""
        token = self._token()
        if token is not None and token not in self.hub.tokens:
            self._error(401, None, "Invalid credentials in Authorization header")
            return True
        if repo.private and token not in repo.allowed:
            if token is None:
                self._error(401, "RepoNotFound", "Repository not found")
            else:
                self._error(404, "RepoNotFound", "Repository not found")
            return True
        if repo.gated and content and token not in repo.allowed:
            if token is None:
                self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must have access "
                            "to it and be authenticated to access it. Please log in.")
            else:
                self._error(403, "GatedRepo", f"Access to model {repo.repo_id} is restricted and you are not in the "
                            f"authorized list. Visit {self.hub.url}/{repo.repo_id} to ask for access.")
            return True
        return False

    # ---- verbs
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._route()

    def _route(self):
        sp = urlsplit(self.path)
        query = parse_qs(sp.query)
        parts = [unquote(p) for p in sp.path.split("/") if p]
        self.hub._log(method=self.command, path=sp.path, role=self.server.role, range=self.headers.get("Range"),
                      auth=self.headers.get("Authorization") is not None)
        try:
            if parts[:1] == ["_control"] and self.server.role == "hub":
                return self._control(parts[1:], query)
            if self.server.role == "cdn":
                return self._cdn(parts)
            if parts[:2] == ["api", "models"]:
                return self._api(parts[2:], query)
            if "resolve" in parts:
                i = parts.index("resolve")
                repo = self.hub.repos.get("/".join(parts[:i]))
                if repo is None:
                    return self._error(404 if self._token() else 401, "RepoNotFound", "Repository not found")
                if len(parts) < i + 3:
                    return self._error(404, "EntryNotFound", "Entry not found")
                return self._resolve(repo, parts[i + 1], "/".join(parts[i + 2 :]))
            return self._error(404, None, "Not found")
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    def _control(self, parts: list[str], query: dict):
        """For a server in another process (benchmarks): /_control/stats, /_control/reset,
        /_control/rate?value=BYTES_PER_S (0 = unlimited), /_control/clear."""
        hub = self.hub
        if parts == ["stats"]:
            with hub._lock:
                return self._json({"bytes_sent": dict(hub.bytes_sent), "requests": len(hub.requests)})
        if parts == ["reset"]:
            hub.reset_counts()
        elif parts == ["rate"]:
            value = float(query.get("value", ["0"])[0])
            with hub.faults.lock:
                hub.faults.rate = value or None
        elif parts == ["clear"]:
            hub.faults.clear()
        else:
            return self._error(404, None, "unknown control")
        return self._json({"ok": True})

    def _api(self, parts: list[str], query: dict):
        repo, rest = self._split_repo(parts)
        if repo is None:
            return self._error(404 if self._token() else 401, "RepoNotFound", "Repository not found")
        if self._auth_problem(repo, content=False):
            return
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode()) if length else {}
        kind, rev, sub = (rest[0] if rest else ""), (rest[1] if len(rest) > 1 else "main"), rest[2:]
        if kind in ("", "revision"):
            commit = repo.resolve(rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            files = repo.commits[commit]
            ns = repo.repo_id.split("/")[0]
            bad = self.hub.hostile.get(repo.repo_id)
            if bad is not None and self._hostile(bad):
                return
            return self._json({
                "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "modelId": repo.repo_id, "author": ns, "sha": commit, "lastModified": "2024-12-13T00:00:00.000Z",
                "createdAt": "2024-12-01T00:00:00.000Z", "private": repo.private, "gated": repo.gated,
                "disabled": False, "downloads": 0, "likes": 0, "library_name": "transformers",
                "tags": ["transformers", "safetensors", "cohere"],
                "siblings": [f.sibling(blobs) for f in files.values()] + (bad["siblings"] if bad else []),
            })
        if kind in ("tree", "paths-info"):
            commit = repo.resolve(rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            files = repo.commits[commit]
            if kind == "paths-info":
                wanted = form.get("paths", [])  # type: ignore[possibly-undefined]
                out = [files[p].tree_entry() for p in wanted if p in files]
                out += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": p} for p in wanted
                        if p not in files and any(f.startswith(p + "/") for f in files)]
                return self._json(out)
            base = "/".join(sub)
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            out, dirs = [], set()
            for f in files.values():
                if base and not f.path.startswith(base + "/"):
                    continue
                rel = f.path[len(base) + 1 :] if base else f.path
                if recursive or "/" not in rel:
                    out.append(f.tree_entry())
                if "/" in rel:
                    top = rel.split("/")[0] if not recursive else None
                    for d in ([top] if top else _parents(rel)):
                        dirs.add(f"{base}/{d}" if base else d)
            if base and not out and not dirs:
                return self._error(404, "EntryNotFound", f"{base} does not exist")
            out += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
            return self._json(out)
        return self._error(404, None, "Not found")

    def _hostile(self, bad: dict) -> bool:
        """Answer a listing request the hostile way, if `bad` says one (True when answered)."""
        if bad.get("trickle") == "listing":
            return self._trickle()
        if bad["silent"]:
            self.hub._stopping.wait()  # accepted, never answered
            self.close_connection = True
            return True
        if bad["endless"]:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            block = b'{"siblings": [' + b" " * 65536
            for _ in range(1 << 16):  # 4 GiB at most, until the client hangs up
                if self.hub._stopping.is_set():
                    break
                self.wfile.write(block)
            self.close_connection = True
            return True
        if bad["body"] is not None:
            self._reply(200, bad["body"], ctype=bad["ctype"])
            return True
        return False

    def _trickle(self) -> bool:
        """A status line, then one header line a byte every 50 ms until stop() or the client hangs up: the headers
        never end (one line, so no header-count limit cuts it short; http.client's 64 KiB line limit takes 55
        minutes to reach)."""
        self.close_connection = True
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Trickle: ")
            while not self.hub._stopping.wait(0.05):
                self.wfile.write(b"a")
                self.wfile.flush()
        except OSError:
            pass
        return True

    def _resolve(self, repo: Repo, rev: str, path: str):
        if self._auth_problem(repo, content=False):
            return
        bad = self.hub.hostile.get(repo.repo_id)
        if bad is not None and bad.get("trickle") == "files":
            return self._trickle()
        commit = repo.resolve(rev)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        f = repo.commits[commit].get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist at {rev}",
                               {"X-Repo-Commit": commit})
        if self._auth_problem(repo, content=True):
            return
        common = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if f.lfs:
            common.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size), "ETag": f'"{f.sha256}"'})
            if self.hub.use_cdn:
                loc = f"{self.hub.cdn_url}/cdn/{f.sha256}?X-Amz-Signature=fake&name={quote(f.path)}"
                return self._reply(302, b"", {**common, "Location": loc}, ctype="text/plain")
        else:
            common["ETag"] = f'"{f.blob_id}"'
        self._serve(f, common)

    def _cdn(self, parts: list[str]):
        if len(parts) != 2 or parts[0] != "cdn" or parts[1] not in self.hub._blobs:
            return self._reply(404, b"NoSuchKey", ctype="application/xml")
        if self.headers.get("Authorization"):
            return self._reply(400, b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed"
                               b"</Message></Error>", ctype="application/xml")
        f = self.hub._blobs[parts[1]]
        self._serve(f, {"ETag": f'"{f.sha256}"', "Accept-Ranges": "bytes"})

    def _serve(self, f: HostedFile, headers: dict):
        hub = self.hub
        status = hub.faults.take_failure(f.path)
        if status is not None:
            return self._error(status, None, "injected failure", {"Retry-After": "0"})
        start, end = 0, f.size - 1
        rng = self.headers.get("Range")
        partial = False
        if rng and rng.startswith("bytes=") and "," not in rng:
            a, _, b = rng[6:].strip().partition("-")
            try:
                if a == "":
                    start, end = max(0, f.size - int(b)), f.size - 1
                else:
                    start, end = int(a), (int(b) if b else f.size - 1)
                    end = min(end, f.size - 1)
            except ValueError:
                start, end = 0, f.size - 1
            else:
                if start > end or start >= f.size:
                    return self._reply(416, b"", {"Content-Range": f"bytes */{f.size}"}, ctype="text/plain")
                partial = True
        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Last-Modified", email.utils.formatdate(usegmt=True))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD" or f.size == 0:
            return
        self.hub._enter(f.path, 1)
        try:
            self._send_body(f, start, end)
        finally:
            self.hub._enter(f.path, -1)

    def _send_body(self, f: HostedFile, start: int, end: int):
        faults = self.hub.faults
        cut = faults.take_drop(f.path, start, end)
        stall = faults.take_stall(f.path, start, end)
        with faults.lock:
            corrupt = sorted(faults.corruptions.get(f.path, ()))
            rate = faults.rate
            held = faults.budget is not None and faults.hold_path in (None, f.path)
        sock = self.connection
        with open(f.source, "rb") as fh:
            if cut is None and stall is None and not corrupt and not rate and not held:
                sent = sock.sendfile(fh, start, end - start + 1)
                self.hub._count(f.path, sent)
                return
            pos = start
            fh.seek(start)
            block = 16 << 10 if rate else 256 << 10
            while pos <= end:
                limit = end + 1
                if cut is not None:
                    limit = min(limit, cut)
                if stall is not None:
                    if pos >= stall[0]:
                        if not faults.wait_stall(stall[1]):  # the test is over: end this body
                            self.close_connection = True
                            return
                        stall = None
                        continue
                    limit = min(limit, stall[0])
                if pos >= limit:  # reached the drop point: end the connection cleanly mid-body
                    self.close_connection = True
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                want = faults.take_budget(min(block, limit - pos)) if held else min(block, limit - pos)
                if want == 0:  # held and never released: give up on this body
                    self.close_connection = True
                    return
                data = bytearray(fh.read(want))
                for at in corrupt:
                    if pos <= at < pos + len(data):
                        data[at - pos] ^= 0xFF
                sock.sendall(data)
                self.hub._count(f.path, len(data))
                pos += len(data)
                if rate:
                    time.sleep(len(data) / rate)


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


# ---- a tiny Cohere checkpoint without torch or transformers --------------------------------------------------------
def _bf16_bytes(numel: int, rng) -> bytes:
    import numpy as np

    x = (rng.standard_normal(numel, dtype=np.float32) * 0.05).view(np.uint32)
    return ((x + 0x8000) >> 16).astype(np.uint16).tobytes()  # round to nearest bf16


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> None:
    """tensors: name -> (dtype, shape, raw little-endian bytes)."""
    header, offset = {}, 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for _, _, raw in tensors.values():
            f.write(raw)


def make_tiny_cohere(folder: Path, *, hidden: int = 512, intermediate: int = 1024, layers: int = 2, heads: int = 8,
                     kv_heads: int = 2, vocab: int = 1024, model_type: str = "cohere", seed: int = 0,
                     extras: bool = True) -> Path:
    """A random bf16 Command-R style checkpoint (2 shards + index, config, tokenizer files), ~10 MB by default:
    big enough that the first shard (~6 MB) is fetched in several parallel ranges."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hd = hidden // heads
    shapes: dict[str, list[int]] = {"model.embed_tokens.weight": [vocab, hidden]}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": [hidden],
            p + "self_attn.q_proj.weight": [heads * hd, hidden],
            p + "self_attn.k_proj.weight": [kv_heads * hd, hidden],
            p + "self_attn.v_proj.weight": [kv_heads * hd, hidden],
            p + "self_attn.o_proj.weight": [hidden, heads * hd],
            p + "mlp.gate_proj.weight": [intermediate, hidden],
            p + "mlp.up_proj.weight": [intermediate, hidden],
            p + "mlp.down_proj.weight": [hidden, intermediate],
        })
    shapes["model.norm.weight"] = [hidden]
    names = list(shapes)
    split = names.index(f"model.layers.{layers - 1}.input_layernorm.weight") if layers > 1 else len(names)
    shards = [names[:split], names[split:]] if layers > 1 else [names]
    weight_map, total = {}, 0
    for k, group in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for n in group:
            numel = int(np.prod(shapes[n]))
            tensors[n] = ("BF16", shapes[n], _bf16_bytes(numel, rng))
            weight_map[n] = fname
            total += 2 * numel
        write_safetensors(folder / fname, tensors)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    arch = "CohereForCausalLM" if model_type == "cohere" else "Cohere2ForCausalLM"
    cfg = {
        "architectures": [arch], "model_type": model_type, "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "vocab_size": vocab, "max_position_embeddings": 8192, "rope_theta": 10000.0, "logit_scale": 0.0625,
        "layer_norm_eps": 1e-5, "hidden_act": "silu", "attention_bias": False, "use_qk_norm": False,
        "bos_token_id": 5, "eos_token_id": 255001, "pad_token_id": 0, "torch_dtype": "bfloat16",
    }
    if model_type == "cohere2":
        cfg.update({"sliding_window": 4096, "sliding_window_pattern": 4, "head_dim": hd})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    if extras:
        (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 5, "eos_token_id": 255001}))
        (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<BOS_TOKEN>", "add_bos_token": True}))
        (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<BOS_TOKEN>"}))
        words = " ".join(f"w{i}" for i in range(200))
        (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"},
                                                           "note": words}))
        # files the default selection must skip
        (folder / "README.md").write_text("# tiny\n")
        (folder / "pytorch_model.bin").write_bytes(os.urandom(1000))
        (folder / "original").mkdir(exist_ok=True)
        (folder / "original" / "consolidated.safetensors").write_bytes(os.urandom(2000))
    return folder


if __name__ == "__main__":  # serve a folder: python tests/hub_server.py REPO_ID FOLDER (prints the endpoint URL)
    import sys

    srv = HubServer().start()
    srv.add_repo(sys.argv[1], Path(sys.argv[2]))
    print(srv.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        srv.stop()


def use_hub(monkeypatch, hub: HubServer, tmp_path: Path, **env: str) -> None:
    """Point cohere-cli at `hub` for one test: its endpoint, a fresh HF home and store under `tmp_path`, no token
    from the machine, quick retries; `env` sets more COHERE_CLI_* variables."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COHERE_CLI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COHERE_CLI_DL_BACKOFF", "0.01")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
