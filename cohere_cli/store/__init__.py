"""The local checkpoint store: one folder that knows what it holds.

Layout (root = $COHERE_CLI_HOME, else ~/.cache/cohere-cli)::

    models/
      CohereLabs--c4ai-command-r7b-12-2024/    entry "CohereLabs/c4ai-command-r7b-12-2024" (downloaded: "/" -> "--")
        config.json  tokenizer.json  model-00001-of-00004.safetensors ...   the HF-format files
        manifest.json                                                      what the entry is (below)
      c4ai-command-r7b-12-2024-nf4/             a derived entry (quantized from the one above)
    .partial/<entry folder>/                   a download in progress: part files that survive restarts
    .tmp/                                      entries being built; renamed into models/ when complete
    state.json                                 {"last_used": NAME}

An entry exists only when complete: it is built under .tmp/ and published with one rename (`entry_tmpdir`).

manifest.json (format 1)::

    {"format": 1, "name": "CohereLabs/c4ai-command-r7b-12-2024",
     "source": {"repo_id": ..., "revision": "main", "commit": "<40 hex>", "endpoint": "https://huggingface.co"},
     "parent": null | "<entry name it was derived from>",
     "architecture": "Cohere2ForCausalLM", "model_type": "cohere2", "parameters": 8028033024,
     "storage_dtype": "bfloat16", "precision": "bf16" | "int8" | "nf4" | ...,
     "created_at": "2025-01-31T12:00:00Z",
     "files": {"config.json": {"size": 1234, "sha256": "..."}, ...}}

MODEL on the command line (`locate`, the one resolver every command uses) is, in this order: an existing folder; an
entry name or folder name (case-insensitive); the built-in `demo`; the repo part of a name
("c4ai-command-r7b-12-2024"); a unique trailing run of dash-separated words ("command-r7b-12-2024"); a unique run of
words anywhere ("r7b-12-2024-nf4"); a unique substring. Ambiguity at a step is an error that lists the candidates.
The first three and the repo part are exact (`Located.exact`); the rest are short forms, which `models rm` never
acts on without asking."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cohere_cli.errors import ModelNotFound, StoreError
from cohere_cli.store.atomic import cleanup_stale_tmp, publish_folder, write_atomic
from cohere_cli.config import read_json_object
from cohere_cli.untrusted import confine, inert
from cohere_cli.store.manifest import (  # noqa: F401  (store.read_manifest etc.: the entries' API)
    MANIFEST, MANIFEST_FORMAT, make_manifest, read_manifest, sha256_file, utc_now, write_manifest)

HOME_ENV = "COHERE_CLI_HOME"


# ---- layout -----------------------------------------------------------------------------------------------------
def store_root() -> Path:
    """$COHERE_CLI_HOME, else ~/.cache/cohere-cli (not created here); StoreError when it is not a folder."""
    root = Path(os.environ.get(HOME_ENV) or "~/.cache/cohere-cli").expanduser()
    if root.exists() and not root.is_dir():
        raise StoreError(f"the store {root} is not a folder: point {HOME_ENV} at a folder (or move the file away)")
    return root


def models_dir() -> Path:
    return _no_symlink(store_root() / "models")


def _no_symlink(path: Path) -> Path:
    """`path` (inside the store root) when no part of it below the root is a symlink, else StoreError (one line).
    The store's own folders (models/, .partial/, .tmp/, an entry, a staging folder) are written into and deleted
    from: one planted as a symlink would take those writes and deletes to wherever it points. Checked with lstat
    part by part before anything is written (a check of the resolved path alone would pass a symlinked folder
    whose target is inside, and `confine` resolves its root). The root itself may be a symlink: the user chose
    it (COHERE_CLI_HOME)."""
    root = store_root()
    q = root
    for part in path.relative_to(root).parts:
        q = q / part
        try:
            st = os.lstat(q)
        except OSError:
            break  # absent: nothing below it exists either
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"
            raise StoreError(f"{inert(str(q))} is {kind}, not a folder of the store: cohere-cli never writes "
                             f"through one; move it away (rm {inert(str(q))}) and run the command again")
    return path


def folder_name(name: str) -> str:
    """Entry name -> folder name under models/: "Org/repo" -> "Org--repo"."""
    name = name.strip().strip("/")
    if not name or name in (".", "..") or "\\" in name or name.startswith(".") or name.count("/") > 1:
        raise StoreError(f"'{name}' is not a usable store name: use letters, digits, '-', '_', '.' and one '/'")
    if "--" in name:  # "Org--x" and "Org/x" would share one folder: a quantize named so would replace a download
        raise StoreError(f"'{inert(name)}' is not a usable store name: '--' stands for '/' in the store's folder "
                         "names; use one '-' (or 'Org/name')")
    return name.replace("/", "--")


def check_layout() -> None:
    """StoreError (one line) when models/, .partial/ or .tmp/ is a symlink or not a folder: before a command that
    writes into the store writes anything."""
    for sub in ("models", ".partial", ".tmp"):
        _no_symlink(store_root() / sub)


def entry_path(name: str) -> Path:
    return _no_symlink(models_dir() / folder_name(name))


def partial_path(name: str) -> Path:
    """Where a download of entry `name` keeps its part files until it is complete."""
    return _no_symlink(store_root() / ".partial" / folder_name(name))


def _tmp_root() -> Path:
    return _no_symlink(store_root() / ".tmp")


# ---- entries ----------------------------------------------------------------------------------------------------
@dataclass
class Entry:
    name: str
    path: Path
    manifest: dict = field(repr=False)

    @property
    def source(self) -> dict:
        return self.manifest.get("source") or {}

    @property
    def commit(self) -> str | None:
        return self.source.get("commit")

    @property
    def files(self) -> dict[str, dict]:
        """The manifest's file records as written ({name: {size, sha256...}}, wrong types dropped). The names are
        untrusted (a tampered store): `file(name)` confines one before it is opened, hashed or unlinked."""
        files = self.manifest.get("files")
        if not isinstance(files, dict):
            return {}
        return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, dict)}

    def file(self, rel: str) -> Path:
        """The entry's file `rel` (a manifest key), or UnsafeInput when it names a place outside the entry."""
        return confine(self.path, rel, f"the file name in {self.name}'s manifest")

    def size_on_disk(self) -> int:
        """Bytes of the entry's files as they are on disk now (manifest included)."""
        total = 0
        for p in self.path.rglob("*"):
            with contextlib.suppress(OSError):
                if p.is_file():
                    total += p.stat().st_size
        return total

    @property
    def short_name(self) -> str:
        return self.name.rsplit("/", 1)[-1]


def list_entries() -> list[Entry]:
    """Every complete entry (a folder under models/ with a readable manifest.json), sorted by name."""
    root = models_dir()
    if not root.is_dir():
        return []
    entries = []
    for d in root.iterdir():
        if d.name.startswith(".") or not d.is_dir():
            continue
        m = read_manifest(d)
        if m is None:
            continue
        name = m.get("name") or d.name.replace("--", "/", 1)
        entries.append(Entry(str(name), d, m))
    return sorted(entries, key=lambda e: e.name.lower())


def get_entry(name: str) -> Entry | None:
    """The entry with exactly this name (or folder name), case-insensitive; None when absent."""
    key = name.strip().strip("/").lower()
    for e in list_entries():
        if key in (e.name.lower(), e.path.name.lower()):
            return e
    return None


def _words(s: str) -> list[str]:
    return [w for w in s.lower().replace("_", "-").replace(".", "-").split("-") if w]


def _contains_run(hay: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(hay[i : i + n] == needle for i in range(len(hay) - n + 1))


def match_entry(spec: str) -> tuple[Entry, bool] | None:
    """The entry `spec` names and whether by an exact name (full name, folder name, repo part) rather than a short
    form (see the module docstring). None when nothing matches; ModelNotFound when a step is ambiguous."""
    entries = list_entries()
    key = spec.strip().strip("/").lower()
    if not key:
        return None
    words = _words(key)
    tiers: list[Callable[[Entry], bool]] = [
        lambda e: key in (e.name.lower(), e.path.name.lower()),
        lambda e: e.short_name.lower() == key,
        lambda e: bool(words) and _words(e.short_name)[-len(words) :] == words,
        lambda e: bool(words) and _contains_run(_words(e.name), words),
        lambda e: key in e.name.lower(),
    ]
    for i, match in enumerate(tiers):
        hits = [e for e in entries if match(e)]
        if len(hits) == 1:
            return hits[0], i < 2
        if len(hits) > 1:
            names = ", ".join(e.name for e in hits)
            raise ModelNotFound(f"'{spec}' matches several store entries ({names}): give the full name")
    return None


def find_entry(spec: str) -> Entry | None:
    """The entry `spec` names, exactly or by an unambiguous short form; ModelNotFound when ambiguous."""
    m = match_entry(spec)
    return m[0] if m else None


BUILTIN_DEMO = Path(__file__).parents[1] / "data" / "demo"
DEMO = "demo"


def builtin_entry(spec: str) -> Path | None:
    """`demo`: the small trained model shipped inside the package (scripts/train_demo.py)."""
    if spec.strip().lower() == DEMO and (BUILTIN_DEMO / "config.json").is_file():
        return BUILTIN_DEMO
    return None


@dataclass
class Located:
    """What MODEL named: a folder, and the store entry when it is one (exact: named in full, not a short form)."""
    folder: Path
    entry: Entry | None = None
    exact: bool = True
    builtin: bool = False

    @property
    def name(self) -> str:
        """The name to show and to record (last used, a quantized entry's parent): the entry's name, `demo`, or
        the folder's absolute path (never what the user typed: that may be a short form or relative)."""
        return self.entry.name if self.entry else DEMO if self.builtin else str(self.folder.absolute())


def locate(spec: str) -> Located:
    """MODEL as given on the command line -> Located, in the module docstring's order. Raises ModelNotFound with
    close matches and what to run otherwise."""
    p = Path(spec).expanduser()
    if p.is_dir() and (p / "config.json").exists():
        return Located(p)
    if p.is_dir() and not any(n(spec) for n in (get_entry, builtin_entry, match_entry)):
        return Located(p)  # a folder that is not a checkpoint, and no name: the caller says "no config.json"
    # a folder named `demo` in the current directory that holds no checkpoint does not hide the built-in
    exact = get_entry(spec)
    if exact is not None:  # a store entry named exactly `demo` wins over the built-in
        return Located(exact.path, exact)
    demo = builtin_entry(spec)
    if demo is not None:
        return Located(demo, builtin=True)
    m = match_entry(spec)
    if m is not None:
        return Located(m[0].path, m[0], exact=m[1])
    if p.exists():
        raise ModelNotFound(f"'{spec}' is a file, not a checkpoint folder: give the folder that holds config.json")
    raise ModelNotFound(_not_found_message(spec))


def resolve_model(spec: str) -> Path:
    """MODEL -> a checkpoint folder (`locate`)."""
    return locate(spec).folder


def _not_found_message(spec: str) -> str:
    names = [e.name for e in list_entries()]
    pool = names + [n.rsplit("/", 1)[-1] for n in names]
    close = difflib.get_close_matches(spec, pool, n=3, cutoff=0.5)
    close = list(dict.fromkeys(close))
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    if spec.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):  # `--plain true`: read as MODEL
        hint = " (a flag such as --plain or --json takes no value: write it alone, without true/false)"
    fetch = f"`cohere download {spec}` fetches it" if spec.count("/") == 1 else "`cohere download REPO_ID` fetches one"
    return f"no checkpoint folder or store entry named '{spec}'{hint}: `cohere models` lists the store, {fetch}"


# ---- building and removing entries ------------------------------------------------------------------------------
def _cleanup_stale_tmp() -> None:
    cleanup_stale_tmp(_tmp_root())


@contextlib.contextmanager
def entry_tmpdir(name: str, *, replace: bool = False) -> Iterator[Path]:
    """Build entry `name` in a temporary folder inside the store; on success it is published with one rename (a
    manifest.json is written first if the caller did not write one); on any exception, KeyboardInterrupt included,
    the folder is removed and nothing appears in the store. An existing entry of that name is an error unless
    `replace`, in which case it is swapped out only once the new one is complete."""
    dest = entry_path(name)
    if dest.exists() and not replace:
        raise StoreError(f"the store already has '{name}' ({dest}): remove it first with `cohere models rm {name}`")
    root = _tmp_root()
    root.mkdir(parents=True, exist_ok=True)
    models_dir().mkdir(parents=True, exist_ok=True)
    _cleanup_stale_tmp()

    def finish(tmp: Path) -> None:
        m = read_manifest(tmp)
        if m is None:
            write_manifest(tmp, make_manifest(tmp, name=name))
        elif m.get("name") != name:
            m["name"] = name
            write_manifest(tmp, m)

    with publish_folder(dest, work=root, prefix=f"{folder_name(name)}.", finish=finish) as tmp:
        yield tmp


def remove_entry(name: str) -> Path:
    """Delete an entry (exact name): renamed out of models/ first, so it never appears half-deleted."""
    entry = get_entry(name)
    if entry is None:
        raise ModelNotFound(_not_found_message(name))
    _tmp_root().mkdir(parents=True, exist_ok=True)
    trash = Path(tempfile.mkdtemp(prefix=f"{entry.path.name}.rm.", suffix=f".{os.getpid()}.tmp", dir=_tmp_root()))
    os.rmdir(trash)
    os.rename(entry.path, trash)
    shutil.rmtree(trash, ignore_errors=True)
    if last_used() == entry.name:
        _write_state({k: v for k, v in _read_state().items() if k != "last_used"})
    return entry.path


# ---- downloads in progress --------------------------------------------------------------------------------------
@dataclass
class Partial:
    name: str
    path: Path
    bytes_on_disk: int
    info: dict = field(repr=False)


def list_partials() -> list[Partial]:
    """Downloads that were started and not finished (their part files are kept for the next run)."""
    root = store_root() / ".partial"
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if not d.is_dir():
            continue
        try:  # our own file, but in a folder anyone with the store's permissions can write: bounded
            info = read_json_object(d / "plan.json", 1 << 20)
        except (OSError, ValueError):
            info = {}
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        out.append(Partial(str(info.get("name") or d.name.replace("--", "/", 1)), d, size, info))
    return out


# ---- small state ------------------------------------------------------------------------------------------------
def _state_path() -> Path:
    return store_root() / "state.json"


def _read_state() -> dict:
    try:
        return read_json_object(_state_path(), 1 << 20)
    except (OSError, ValueError):
        return {}


def _write_state(state: dict) -> None:
    path = _state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(state, indent=2) + "\n")


def remember_last_used(name: str) -> None:
    """Record the model last used (`cohere chat` with no MODEL uses it). Never fails the caller."""
    with contextlib.suppress(OSError):
        _write_state({**_read_state(), "last_used": name})


def last_used() -> str | None:
    v = _read_state().get("last_used")
    return v if isinstance(v, str) and v else None
