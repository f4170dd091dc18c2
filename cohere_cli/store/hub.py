"""What cohere-cli takes from huggingface_hub: the endpoint (HF_ENDPOINT), the token (--token, HF_TOKEN or the saved
login), repo metadata (revision -> commit sha, per-file size, LFS sha256, git blob id) and its typed errors, each
turned into one DownloadError line that says what to do. The transfer itself is cohere_cli.store.download's.

Read at call time, not import time, so HF_ENDPOINT / HF_HUB_OFFLINE set after huggingface_hub was imported count."""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from cohere_cli.errors import DownloadError, UsageError

# What a Command-R family checkpoint needs, top-level files only: no .bin, GGUF or original/ files.
DEFAULT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors.index.json",
    "*.safetensors",
)
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files: the content sha256 the Hub stores
    blob_id: str | None  # the git blob sha1 (for small, non-LFS files the only checksum the Hub gives)


@dataclass
class RepoInfo:
    repo_id: str
    revision: str | None  # as asked (None: the default branch)
    commit: str
    endpoint: str
    gated: bool | str  # False, "auto" or "manual"
    private: bool
    files: list[RemoteFile]


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def check_online() -> None:
    if is_offline():
        raise DownloadError(
            "HF_HUB_OFFLINE=1 is set, so nothing can be downloaded: unset it to download "
            "(models already in the store keep working: `cohere models` lists them)"
        )


def resolve_token(token: str | None) -> str | None:
    """--token, else HF_TOKEN, else the token saved by `hf auth login`."""
    if token:
        return token.strip()
    from huggingface_hub import get_token

    return get_token()


def request_headers(token: str | None) -> dict[str, str]:
    """User-agent (+ Authorization when there is a token) for our own requests to the endpoint."""
    from huggingface_hub.utils import build_hf_headers

    from cohere_cli import __version__

    return dict(build_hf_headers(token=token or False, library_name="cohere-cli", library_version=__version__))


def file_url(ep: str, repo_id: str, commit: str, path: str) -> str:
    return f"{ep}/{repo_id}/resolve/{commit}/{quote(path)}"


def _login_hint() -> str:
    return "pass a token with --token hf_... (or set HF_TOKEN, or save one with `hf auth login`)"


def access_error(repo_id: str, ep: str, status: int, headers: Mapping[str, str], *, has_token: bool,
                 gated: bool | str = False, path: str | None = None, commit: str | None = None) -> str:
    """One line for an HTTP error status from the Hub (metadata or file), saying what to do."""
    code = headers.get("X-Error-Code") or headers.get("x-error-code") or ""
    server = headers.get("X-Error-Message") or headers.get("x-error-message") or ""
    page = f"{ep}/{repo_id}"
    if code == "GatedRepo" or (status in (401, 403) and gated):
        if has_token and status == 403:
            return (f"{repo_id} is gated and your token has no access yet: accept its license at {page} with the "
                    "account the token belongs to (approval can take a while), then run this again")
        if has_token:
            return (f"{repo_id} is gated and the Hub rejected your token: accept its license at {page}, then "
                    f"{_login_hint()} with a valid token")
        return f"{repo_id} is gated: accept its license at {page} (logged in), then {_login_hint()}"
    if code == "RevisionNotFound":
        return f"{repo_id} has no such revision: check --revision (a branch, tag or commit sha listed at {page})"
    if code == "EntryNotFound" or (status == 404 and path and code != "RepoNotFound"):
        at = f" at commit {commit[:12]}" if commit else ""
        return f"{path} is not in {repo_id}{at}: check --include, or run again if the repo just changed"
    if status == 401 and "Invalid credentials" in server:
        return f"{ep} rejected the token (401 invalid credentials): check --token / HF_TOKEN or log in again"
    if code == "RepoNotFound" or status in (401, 404):
        if has_token:
            return f"no model repo '{repo_id}' on {ep} that your token can see: check the spelling (ORG/NAME)"
        return (f"no model repo '{repo_id}' on {ep}: check the spelling (ORG/NAME); if it is private, "
                f"{_login_hint()}")
    if status == 403:
        return f"{ep} refused access to {repo_id} (403{': ' + server if server else ''}): check the token's permissions"
    if status == 429 or status >= 500:
        return f"{ep} answered {status}{' (' + server + ')' if server else ''}: the Hub is busy or down, try again later"
    return f"{ep} answered {status} for {path or repo_id}{': ' + server if server else ''}"


def network_error(ep: str, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"cannot reach {ep} ({reason}): check your network connection, proxy settings or HF_ENDPOINT"


MAX_METADATA_BYTES = 32 << 20  # a repo's listing with blobs: ~200 bytes a file (10,000 files: ~2 MB)
METADATA_TIMEOUT = 30.0  # seconds without a byte before the metadata request is retried
_COMMIT = re.compile(r"[0-9a-f]{40}")


def fetch_repo(repo_id: str, revision: str | None, token: str | None, *, attempts: int = 3,
               timeout: float = METADATA_TIMEOUT) -> RepoInfo:
    """Resolve `revision` to a commit sha and list every file with its size and checksums (one GET of
    /api/models/REPO[/revision/REV]?blobs=True, what `model_info(files_metadata=True)` asks), retrying transient
    failures. Our own request, not huggingface_hub's: it has a timeout (theirs has none) and a bounded body (theirs
    reads an endless one into memory), and what comes back is checked field by field (the Hub is untrusted)."""
    import http.client

    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from cohere_cli.store.httppool import fetch_bytes

    check_online()
    ep = endpoint()
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UsageError(
            f"'{repo_id}' is not a Hub repo id: use ORG/NAME, e.g. CohereLabs/c4ai-command-r7b-12-2024"
        ) from None
    rev = f"/revision/{quote(revision, safe='')}" if revision else ""
    url = f"{ep}/api/models/{repo_id}{rev}?blobs=True"
    headers = request_headers(token)
    for attempt in range(1, attempts + 1):
        try:
            status, h, body = fetch_bytes(url, headers, timeout=timeout, max_bytes=MAX_METADATA_BYTES + 1)
        except ConnectionRefusedError as e:
            raise DownloadError(network_error(ep, e)) from None
        except (OSError, http.client.HTTPException) as e:
            if attempt < attempts:
                time.sleep(0.5 * 2 ** (attempt - 1))
                continue
            raise DownloadError(network_error(ep, e)) from None
        if status == 200:
            break
        code = h.get("X-Error-Code") or h.get("x-error-code") or ""
        if code == "RevisionNotFound" and revision:
            raise DownloadError(
                f"{repo_id} has no revision '{revision}': check --revision (a branch, tag or commit sha listed at "
                f"{ep}/{repo_id})")
        if (status == 429 or status >= 500) and attempt < attempts:
            time.sleep(0.5 * 2 ** (attempt - 1))
            continue
        raise DownloadError(access_error(repo_id, ep, status, h, has_token=bool(token), gated=code == "GatedRepo"))
    if len(body) > MAX_METADATA_BYTES:
        raise DownloadError(f"{ep} sent over {MAX_METADATA_BYTES >> 20} MiB of metadata for {repo_id}, more than any "
                            "repo listing: is HF_ENDPOINT a Hub endpoint?")
    return parse_listing(body, repo_id, revision, ep)


def parse_listing(body: bytes, repo_id: str, revision: str | None, ep: str) -> RepoInfo:
    """The Hub's model_info JSON -> RepoInfo, every field checked (DownloadError, one line, on anything else)."""
    from cohere_cli.untrusted import inert, parse_json

    def bad(why: str) -> DownloadError:
        return DownloadError(f"{ep} answered the metadata of {repo_id} with {inert(why)[:300]}: is HF_ENDPOINT a Hub "
                             "endpoint?")

    try:
        data = parse_json(body)
    except ValueError as e:
        raise bad(f"something that {e}") from None
    if not isinstance(data, dict):
        raise bad("JSON that is not an object")
    sha, siblings = data.get("sha"), data.get("siblings")
    if not isinstance(sha, str) or not _COMMIT.fullmatch(sha):
        raise bad(f"no commit sha (sha = {sha!r:.60})")
    if not isinstance(siblings, list):
        raise bad("no file list (siblings)")
    files = [_remote_file(s, bad) for s in siblings]
    gated = data.get("gated")
    return RepoInfo(repo_id=repo_id, revision=revision, commit=sha, endpoint=ep,
                    gated=gated if gated in ("auto", "manual") else bool(gated is True),
                    private=data.get("private") is True, files=files)


def _remote_file(s: object, bad) -> RemoteFile:
    """One entry of `siblings`: {rfilename, size, blobId, lfs: {sha256, size}}, each of the right type."""
    if not isinstance(s, dict) or not isinstance(s.get("rfilename"), str):
        raise bad(f"a file entry without a name ({s!r:.80})")
    name, lfs = s["rfilename"], s.get("lfs")
    if lfs is not None and not (isinstance(lfs, dict) and isinstance(lfs.get("sha256"), str)
                                and re.fullmatch(r"[0-9a-fA-F]{64}", lfs["sha256"])):
        raise bad(f"a malformed LFS record for {name!r:.200}")
    size = lfs.get("size") if lfs is not None else s.get("size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise bad(f"a size that is not a byte count for {name!r:.200} ({size!r:.40})")
    blob = s.get("blobId")
    if blob is not None and not (isinstance(blob, str) and re.fullmatch(r"[0-9a-fA-F]{40}", blob)):
        raise bad(f"a malformed blobId for {name!r:.200}")
    return RemoteFile(path=name, size=size, sha256=lfs["sha256"] if lfs is not None else None, blob_id=blob)


def select_files(files: Iterable[RemoteFile], include: list[str] | None, exclude: list[str] | None) -> list[RemoteFile]:
    """--include patterns (fnmatch on the repo path) replace the default set (DEFAULT_FILES, top level only);
    --exclude patterns are then removed. Small (non-LFS) files first, then LFS files, each by path."""
    chosen = []
    for f in files:
        if include:
            keep = any(fnmatch.fnmatch(f.path, g) for g in include)
        else:
            keep = "/" not in f.path and any(fnmatch.fnmatch(f.path, g) for g in DEFAULT_FILES)
        if keep and exclude and any(fnmatch.fnmatch(f.path, g) for g in exclude):
            keep = False
        if keep:
            chosen.append(f)
    return sorted(chosen, key=lambda f: (f.sha256 is not None, f.path))
