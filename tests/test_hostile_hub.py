"""Issue 16 on the store side: a hostile Hub (tests/hub_server.py made hostile), a tampered store and a tampered
checkpoint may name paths outside where they belong, collide with the store's bookkeeping, send endless or
malformed metadata, never answer, or hold a thousand files; each case ends in one line (or succeeds) and touches
nothing outside the store."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cohere_cli import store
from cohere_cli.errors import CohereError, StoreError, UnsafeInput
from cohere_cli.store import partfile
from cohere_cli.store.staging import PLAN, VERIFIED, staging_lock
from hub_server import HubServer, git_blob_id, use_hub
from limits import run_cli
from test_download import fails as _fails
from test_download import ok

REPO = "Org/small"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile") / "small"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "cohere"}\n')
    (folder / "tokenizer_config.json").write_text("{}\n")
    (folder / "model.safetensors").write_bytes(os.urandom(3000))
    return folder


@pytest.fixture(scope="module")
def hub(files):
    srv = HubServer().start()
    srv.add_repo(REPO, files)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def env(hub, tmp_path, monkeypatch):
    use_hub(monkeypatch, hub, tmp_path, COHERE_CLI_DL_RETRIES="1")
    hub.faults.clear()
    hub.clear_hostile()
    yield
    hub.faults.clear()
    hub.clear_hostile()


def fails(*args: str, exc=CohereError) -> str:
    return _fails(*args, exc=exc)  # any of our errors, one line (test_download's expects a DownloadError)


def victim(tmp_path: Path) -> Path:
    """A file of the user's beside the store (home = tmp_path/home, staging = home/.partial/Org--small)."""
    v = tmp_path / "outside" / "victim.txt"
    v.parent.mkdir(exist_ok=True)
    v.write_text("precious")
    return v


def untouched(v: Path) -> None:
    assert v.read_text() == "precious"
    assert sorted(p.name for p in v.parent.iterdir()) == ["victim.txt"]  # no part, no link beside it


def bogus(name: str, data: bytes = b"evil!") -> dict:
    return {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}


# ---- class 1: paths outside the store ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,include", [
    ("../../../outside/victim.txt", "*"),  # the reported case
    ("../../../outside/victim.txt.safetensors", "*.safetensors"),
    ("model/../../../../outside/victim.txt", "model*"),
    ("/tmp/cohere-hostile-abs/victim.txt", "*"),  # absolute
])
def test_listing_name_outside_the_store_is_refused(hub, tmp_path, name, include):
    v = victim(tmp_path)
    hub.hostile_metadata(REPO, siblings=[bogus(name)])
    msg = fails("download", REPO, "--include", include, exc=UnsafeInput)
    assert repr(name)[:60] in msg and "nothing was downloaded" in msg
    untouched(v)
    assert not Path("/tmp/cohere-hostile-abs").exists()
    assert store.list_entries() == [] and store.list_partials() == []


@pytest.mark.parametrize("sibling", [
    bogus("config\0.json"),  # a NUL in a file name
    {"rfilename": 5, "size": 1},
    {"rfilename": "x.json", "size": "12"},
    {"rfilename": "x.json", "size": -1},
    {"rfilename": "x.safetensors", "lfs": {"sha256": 1, "size": 3}},
    {"rfilename": "x.json", "blobId": ["not", "hex"]},
    "not an object",
])
def test_malformed_siblings_are_one_line(hub, sibling):
    hub.hostile_metadata(REPO, siblings=[sibling])
    fails("download", REPO, "--include", "*")
    assert store.list_entries() == [] and store.list_partials() == []


def test_symlink_planted_at_a_part_file_is_not_followed(hub, files, tmp_path):
    v = victim(tmp_path)
    staging = store.partial_path(REPO)
    staging.mkdir(parents=True)
    (staging / "config.json.part").symlink_to(v)  # the reported case: progress says "nothing yet", write at 0
    size = (files / "config.json").stat().st_size
    (staging / "config.json.part.json").write_text(json.dumps(
        {"expect": git_blob_id((files / "config.json").read_bytes()), "size": size, "chunk_size": 1 << 26,
         "done": [0]}))
    (staging / "tokenizer_config.json").symlink_to(v)  # variant: at a finished file, recorded as verified
    (staging / VERIFIED).write_text(json.dumps({"tokenizer_config.json": {
        "expect": git_blob_id(b"{}\n"), "sha256": "0" * 64, "size": 3}}))
    ok("download", REPO, "--include", "*")
    untouched(v)
    [e] = store.list_entries()
    for rel in ("config.json", "tokenizer_config.json"):
        assert not (e.path / rel).is_symlink() and (e.path / rel).read_bytes() == (files / rel).read_bytes()


def test_symlinked_folder_in_staging_is_refused(hub, tmp_path):
    v = victim(tmp_path)
    staging = store.partial_path(REPO)
    staging.mkdir(parents=True)
    (staging / "sub").symlink_to(v.parent)
    hub.hostile_metadata(REPO, siblings=[bogus("sub/x.json")])
    msg = fails("download", REPO, "--include", "*", exc=UnsafeInput)
    assert "symlink" in msg
    untouched(v)


def _tamper_manifest(key: str) -> store.Entry:
    [e] = store.list_entries()
    m = json.loads((e.path / "manifest.json").read_text())
    m["files"][key] = {"size": 8, "sha256": "0" * 64}
    (e.path / "manifest.json").write_text(json.dumps(m))
    return e


def test_manifest_keys_outside_the_entry_are_never_deleted_or_hashed(hub, tmp_path):
    v = victim(tmp_path)
    ok("download", REPO, "--include", "*")
    e = _tamper_manifest("../../../outside/victim.txt")
    msg = fails("models", "verify", REPO, exc=StoreError)  # verify: never hashes it, says so
    assert "outside" in msg
    (e.path / "config.json").unlink()  # a re-download at the same commit carries the manifest's files over
    ok("download", REPO, "--include", "*")
    untouched(v)
    [e] = store.list_entries()
    assert "../../../outside/victim.txt" not in e.files and (e.path / "config.json").is_file()
    _tamper_manifest("/etc/hostname")  # variant: absolute
    assert "outside" in fails("models", "verify", REPO, exc=StoreError)


def test_shard_index_naming_a_file_outside_is_refused(tmp_path):
    from cohere_cli.errors import CheckpointError
    from cohere_cli.weights.checkpoint import weight_files

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    for weight_map in ({"a": "../outside.safetensors"}, {"a": str(tmp_path / "outside.safetensors")}, {"a": 7},
                       ["not", "a", "map"]):
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(CheckpointError) as e:
            weight_files(folder)
        assert "\n" not in str(e.value)
    (folder / "model.safetensors.index.json").write_text("[" * 100_000)
    with pytest.raises(CheckpointError):
        weight_files(folder)


# ---- class 2: the store's own names --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["manifest.json", "verified.json", "plan.json", "model.safetensors.part"])
def test_repo_files_named_like_bookkeeping_are_refused(hub, tmp_path, name):
    hub.hostile_metadata(REPO, siblings=[bogus(name)])
    msg = fails("download", REPO, "--include", "*")
    assert f"--exclude '{name}'" in msg
    assert store.list_entries() == [] and store.list_partials() == []


def _partial_beside_entry() -> Path:
    staging = store.partial_path(REPO)
    staging.mkdir(parents=True)
    (staging / PLAN).write_text(json.dumps({"name": REPO, "repo_id": REPO, "commit": "f" * 40}))
    (staging / "new.bin.part").write_bytes(b"12345")
    return staging


def test_rm_of_a_partial_never_removes_the_published_entry(hub):
    ok("download", REPO, "--include", "*")
    staging = _partial_beside_entry()
    r = ok("models")
    assert f"cohere models rm --partial {REPO}" in r.stderr  # what the warning advises is what removes the partial
    ok("models", "rm", "--partial", REPO, "--yes")
    assert not staging.exists() and [e.name for e in store.list_entries()] == [REPO]
    _partial_beside_entry()
    ok("models", "rm", REPO, "--yes")  # variant: the published entry, and only it
    assert store.list_entries() == [] and staging.exists()
    assert "--partial" in fails("models", "rm", REPO, "--yes")  # only the partial is left: say how


def test_rm_of_a_running_download_is_refused(hub):
    staging = _partial_beside_entry()
    with staging_lock(staging, REPO):  # what a running `cohere download` holds
        msg = fails("models", "rm", "--partial", REPO, "--yes", exc=StoreError)
        assert "is running" in msg and staging.exists()
    ok("models", "rm", "--partial", REPO, "--yes")


def _leave_staging_as_a_kill_after_publish_does() -> Path:
    """Publish done, staging cleanup not: the verified files and their records are still in staging."""
    [e] = store.list_entries()
    staging = store.partial_path(REPO)
    staging.mkdir(parents=True)
    verified = {}
    for rel, rec in e.files.items():
        shutil.copy(e.path / rel, staging / rel)
        verified[rel] = {"expect": rec.get("blob_id") or rec["sha256"], "sha256": rec["sha256"], "size": rec["size"]}
    (staging / VERIFIED).write_text(json.dumps(verified))
    (staging / PLAN).write_text(json.dumps({"name": REPO, "repo_id": REPO, "commit": e.commit}))
    return staging


def test_staging_left_by_a_kill_after_publish_is_cleaned(hub):
    ok("download", REPO, "--include", "*")
    staging = _leave_staging_as_a_kill_after_publish_does()
    with staging_lock(staging, REPO):  # a live download: left alone
        r = ok("models")
    assert staging.exists() and "incomplete download" in r.stderr
    r = ok("models")
    assert not staging.exists() and "incomplete download" not in r.stderr
    staging = _leave_staging_as_a_kill_after_publish_does()  # variant: the next (up to date) download cleans it
    ok("download", REPO, "--include", "*")
    assert not staging.exists()


def test_home_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    monkeypatch.setenv("COHERE_CLI_HOME", str(home))
    assert "is not a folder" in fails("download", REPO, "--include", "*", exc=StoreError)
    assert "is not a folder" in fails("models", exc=StoreError)


# ---- classes 5, 6, 8: what the Hub's metadata may be ---------------------------------------------------------------
@pytest.mark.parametrize("body", [b"<html><body>It works!</body></html>", b"[" * 100_000, b"[1, 2]",
                                  b'{"sha": "abc", "siblings": []}', b'{"sha": "' + b"a" * 40 + b'", "siblings": 3}'])
def test_metadata_that_is_not_a_listing_is_one_line(hub, body):
    hub.hostile_metadata(REPO, body=body, ctype="text/html")
    assert "HF_ENDPOINT" in fails("download", REPO)


def test_endless_metadata_is_bounded(hub, tmp_path):
    hub.hostile_metadata(REPO, endless=True)
    r = run_cli(["download", REPO], home=tmp_path / "home", address_space=1 << 30,
                env={"HF_ENDPOINT": hub.url, "COHERE_CLI_DL_TIMEOUT": "60"})
    assert r.returncode == 1 and "Traceback" not in r.stderr and "MiB of metadata" in r.stderr, r.stderr


def test_oversized_metadata_is_refused(hub):  # variant: finite but past the bound
    from cohere_cli.store import hub as hubmod

    hub.hostile_metadata(REPO, body=b" " * (hubmod.MAX_METADATA_BYTES + 10))
    assert "MiB of metadata" in fails("download", REPO)


@pytest.mark.parametrize("revision", [None, "main"])
def test_metadata_that_never_answers_times_out(hub, monkeypatch, revision):
    monkeypatch.setenv("COHERE_CLI_DL_TIMEOUT", "0.2")
    hub.hostile_metadata(REPO, silent=True)
    msg = fails("download", REPO, *(["--revision", revision] if revision else []))
    assert "cannot reach" in msg and "timed out" in msg


@pytest.mark.parametrize("where", ["finally", "worker"])
def test_disk_full_while_saving_progress_is_one_line(hub, monkeypatch, where):
    import threading

    real = partfile.PartFile.save

    def save(self, force=False):
        # "finally": the reported case, ENOSPC from the saves in Transfer.run's `finally` (on the main thread);
        # "worker": the variant, from a worker's save after its range
        main = threading.current_thread() is threading.main_thread()
        if not force and main == (where == "finally") and self.spec.path == "model.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, force)

    monkeypatch.setattr(partfile.PartFile, "save", save)
    if where == "finally":
        hub.faults.fail("model.safetensors", 404, times=None)  # never comes: its progress is saved at the end
    msg = fails("download", REPO, "--include", "*")
    assert ("model.safetensors" if where == "finally" else "No space left on device") in msg
    assert store.list_entries() == []  # no half entry


def test_huge_config_dimension_in_dry_run_and_info_is_one_line(hub, tmp_path):
    folder = tmp_path / "bomb"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "cohere2", "hidden_size": 64, "num_hidden_layers": 10**9, "num_attention_heads": 4,
        "intermediate_size": 128, "vocab_size": 256, "sliding_window": 16}))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    hub.add_repo("Org/bomb", folder)
    env = {"HF_ENDPOINT": hub.url}
    r = run_cli(["download", "Org/bomb", "--dry-run"], home=tmp_path / "home", env=env)
    assert r.returncode == 0 and "memory: unknown" in r.stdout and "num_hidden_layers" in r.stdout, r.stderr
    r = run_cli(["models", "info", str(folder)], home=tmp_path / "home", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "num_hidden_layers" in r.stderr, r.stderr


# ---- class 7: many files -------------------------------------------------------------------------------------------
def test_a_thousand_files_under_ulimit_1024(hub, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1100):
        (folder / f"f{i:04d}.json").write_text(f"{i}\n")
    hub.add_repo("Org/many", folder)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    env = {**os.environ, "COHERE_CLI_HOME": str(tmp_path / "home"), "HF_ENDPOINT": hub.url}
    r = subprocess.run([sys.executable, "-m", "cohere_cli", "download", "Org/many", "--include", "*"], env=env,
                       capture_output=True, text=True, preexec_fn=limit, stdin=subprocess.DEVNULL, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    [e] = store.list_entries()
    assert len(e.files) == 1100 and (e.path / "f1099.json").read_text() == "1099\n"


# ---- what reaches the terminal -------------------------------------------------------------------------------------
def test_escape_sequences_in_hub_names_and_manifests_stay_inert(hub, files, tmp_path):
    folder = tmp_path / "esc"
    shutil.copytree(files, folder)
    (folder / "evil\x1b]0;pwned\x07.json").write_text("{}")
    hub.add_repo("Org/esc", folder)
    env = {**os.environ, "COHERE_CLI_HOME": str(tmp_path / "home"), "HF_ENDPOINT": hub.url}
    r = subprocess.run([sys.executable, "-m", "cohere_cli", "download", "Org/esc", "--include", "*"], env=env,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    # a name with control characters is refused (untrusted.check_name), in one line shown inert
    assert r.returncode == 1 and "pwned" in r.stderr and "control characters" in r.stderr, r.stderr
    assert "\x1b" not in r.stderr + r.stdout and len(r.stderr.strip().splitlines()) == 1
    assert store.list_entries() == [] and store.list_partials() == []
    ok("download", REPO, "--include", "*")
    [e] = store.list_entries()
    m = json.loads((e.path / "manifest.json").read_text())
    m["name"], m["architecture"], m["precision"] = "Org/small\x1b[2J", "\x1b]52;c;cHduZWQ=\x07Arch", "\x9b31m"
    (e.path / "manifest.json").write_text(json.dumps(m))
    for args in (["models"], ["models", "info", REPO], ["download", REPO, "--include", "*", "--dry-run"]):
        r = subprocess.run([sys.executable, "-m", "cohere_cli", *args], env=env, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=120)
        out = r.stdout + r.stderr
        assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out, (args, out)


# ---- class 8: the store's own folders planted as symlinks, and what a store name may be ----------------------------
@pytest.mark.parametrize("planted", [".partial/Org--small", ".partial", ".tmp", "models", "models/Org--small"])
def test_store_folders_planted_as_symlinks_are_never_followed(hub, tmp_path, planted):
    """A symlink standing in for the staging folder (the reported case), .partial, .tmp, models or the entry: the
    download refuses (one line) before writing or deleting anything through it."""
    v = victim(tmp_path)
    (v.parent / "model.safetensors.part").write_bytes(b"mine")  # what prune_staging would delete
    (v.parent / "photos.2023").mkdir()
    link = tmp_path / "home" / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(v.parent)
    msg = fails("download", REPO, "--include", "*", exc=StoreError)
    assert "symlink" in msg and planted.split("/")[-1] in msg
    assert v.read_text() == "precious" and (v.parent / "model.safetensors.part").read_bytes() == b"mine"
    assert sorted(p.name for p in v.parent.iterdir()) == ["model.safetensors.part", "photos.2023", "victim.txt"]


def test_stale_tmp_cleanup_deletes_only_its_own_names(tmp_path):
    """.tmp/ holds folders named `<entry>.<8 random>.<pid>.tmp`: only those of a dead pid are removed; any other
    name with a number in it stays, and a symlink of that shape is unlinked, never its target emptied."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp = tmp_path / "home" / ".tmp"
    tmp.mkdir(parents=True)
    keep = ["photos.2023", "thesis.v2.99999", f"notes.{dead.pid}", f"Org--x.abcd1234.{dead.pid}.tmp.bak",
            f"Org--x.{dead.pid}.tmp"]
    for n in keep:
        (tmp / n).mkdir()
        (tmp / n / "f").write_text("mine")
    (tmp / f"Org--x.abcd_123.{dead.pid}.tmp").mkdir()  # ours, its process gone
    (tmp / f".Org--x.old.k9k9k9k9.{dead.pid}.tmp").mkdir()
    v = victim(tmp_path)
    (tmp / f"Org--y.zzzzzzzz.{dead.pid}.tmp").symlink_to(v.parent)
    store._cleanup_stale_tmp()
    assert sorted(p.name for p in tmp.iterdir()) == sorted(keep)
    assert all((tmp / n / "f").read_text() == "mine" for n in keep)
    untouched(v)


def test_download_never_replaces_an_entry_that_is_not_that_repos(hub, tmp_path):
    """An entry in the folder `Org/small` maps to ("Org--small", made by `quantize -o Org--small` before '--' was
    refused in store names) is the user's: the download refuses, one line saying how to remove it."""
    with pytest.raises(StoreError, match="'--'"):
        store.folder_name("Org--small")
    entry = tmp_path / "home" / "models" / "Org--small"
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")
    (entry / "manifest.json").write_text(json.dumps({"format": 1, "name": "Org--small", "parent": "Org/other",
                                                     "files": {"config.json": {"size": 2, "sha256": "0" * 64}}}))
    msg = fails("download", REPO, "--include", "*")
    assert "not a download of Org/small" in msg and "cohere models rm Org--small" in msg
    assert sorted(p.name for p in entry.iterdir()) == ["config.json", "manifest.json"]
    assert json.loads((entry / "manifest.json").read_text())["name"] == "Org--small"
    assert store.list_partials() == []


# ---- class 9: sizes and names no checkpoint has --------------------------------------------------------------------
@pytest.mark.parametrize("size", [10**18, 10**30])
def test_listed_size_past_any_checkpoint_is_refused(hub, tmp_path, size):
    hub.hostile_metadata(REPO, siblings=[{"rfilename": "huge.safetensors", "size": size, "blobId": "0" * 40}])
    for args in (["--dry-run"], []):
        r = run_cli(["download", REPO, *args], home=tmp_path / "home", address_space=1 << 30)
        assert r.returncode == 1 and "Traceback" not in r.stderr and "more than any checkpoint file" in r.stderr, \
            r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "home" / ".partial").exists()


def test_dry_run_of_a_big_file_allocates_nothing_per_chunk(hub, tmp_path):
    """2**49 bytes in 64 KiB chunks is 2**33 chunks (64 GiB of list): a dry run and the free-space refusal size
    nothing per chunk, under a 1 GiB address-space limit."""
    hub.hostile_metadata(REPO, siblings=[{"rfilename": "zz.safetensors", "size": 1 << 49, "blobId": "0" * 40}])
    env = {"COHERE_CLI_DL_CHUNK_SIZE": str(64 << 10)}
    r = run_cli(["download", REPO, "--dry-run"], home=tmp_path / "home", address_space=1 << 30, env=env)
    assert r.returncode == 0 and "zz.safetensors" in r.stdout, r.stderr
    r = run_cli(["download", REPO], home=tmp_path / "home", address_space=1 << 30, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "free some space" in r.stderr, r.stderr


@pytest.mark.parametrize("dry", [False, True])
def test_listed_name_that_is_not_utf8_is_refused_before_use(hub, dry):
    hub.hostile_metadata(REPO, siblings=[bogus("x\ud800.safetensors")])
    msg = fails("download", REPO, *(["--dry-run"] if dry else []), exc=UnsafeInput)
    assert "nothing was downloaded" in msg
    assert store.list_partials() == []


def test_manifest_key_that_is_not_utf8_is_never_used(hub):
    ok("download", REPO, "--include", "*")
    e = _tamper_manifest("x\ud800.json")
    assert "x\\ud800.json" in fails("models", "verify", REPO, exc=StoreError)  # named, never hashed
    (e.path / "config.json").unlink()  # a re-download at the same commit carries the manifest's files over
    ok("download", REPO, "--include", "*")  # carried over? never: it is no name inside the entry
    [e] = store.list_entries()
    assert "x\ud800.json" not in e.files


# ---- class 10: a Hub that trickles -------------------------------------------------------------------------------
@pytest.mark.parametrize("where,args", [("listing", []), ("files", ["--include", "*"]), ("files", ["--dry-run"])])
def test_a_hub_that_trickles_forever_hits_the_deadline(hub, monkeypatch, where, args):
    """A header byte every 50 ms, forever (the server never completes an answer; each read gets bytes well within
    the per-read timeout): metadata, the HEAD probe and the --dry-run config.json fetch each end at their deadline."""
    monkeypatch.setenv("COHERE_CLI_DL_TIMEOUT", "0.25")
    hub.hostile_metadata(REPO, trickle=where)
    if args == ["--dry-run"]:
        out = ok("download", REPO, *args).output
        assert "too slowly" in out
        return
    msg = fails("download", REPO, *args)
    assert "too slowly" in msg and "cannot reach" in msg
    assert store.list_entries() == [] and store.list_partials() == []


@pytest.mark.parametrize("extra,hint", [
    ([bogus("config.json", b"{}")], "twice"),
    ([bogus("config.json/x")], "both as a file and as a folder"),
    ([bogus("manifest.json/x")], "--exclude 'manifest.json/x'"),
    ([bogus("plan.json/x")], "--exclude 'plan.json/x'"),
    ([bogus(".lock/x")], "--exclude '.lock/x'"),
    ([bogus("x.part/y")], "--exclude 'x.part/y'"),
])
def test_listing_shapes_that_cannot_be_stored_are_refused_up_front(hub, tmp_path, extra, hint):
    hub.hostile_metadata(REPO, siblings=extra)
    msg = fails("download", REPO, "--include", "*")
    assert hint in msg
    assert not (tmp_path / "home" / ".partial").exists() and store.list_entries() == []
