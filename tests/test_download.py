"""`cohere download` against a real HTTP server on 127.0.0.1 (tests/hub_server.py) speaking the Hub protocol, with
injected faults; bytes re-sent after an interruption are measured by the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cohere_cli import store
from cohere_cli.store import download
from cohere_cli.store import staging
from cohere_cli.cli import app
from cohere_cli.errors import DownloadError, UsageError
from hub_server import HOLD_LIMIT, HubServer, make_tiny_cohere, use_hub

REPO = "CohereForAI/tiny-command-r"
GATED = "CohereForAI/tiny-gated"
PRIVATE = "CohereForAI/tiny-private"
SHARD1 = "model-00001-of-00002.safetensors"  # ~5.5 MB: 6 ranges of 1 MiB
SHARD2 = "model-00002-of-00002.safetensors"
DEFAULT_SET = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "model.safetensors.index.json", SHARD1, SHARD2}
runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_cohere(tmp_path_factory.mktemp("hub") / "tiny")


@pytest.fixture(scope="module")
def hub(ckpt):
    srv = HubServer().start()
    srv.commit = srv.add_repo(REPO, ckpt)
    srv.repos[REPO].refs["v1"] = srv.commit
    srv.add_repo(GATED, ckpt, gated="manual", allowed=("hf_good",))
    srv.add_repo(PRIVATE, ckpt, private=True, allowed=("hf_good",))
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def env(hub, tmp_path, monkeypatch):
    # no read may time out on a busy machine (but see the stall test)
    use_hub(monkeypatch, hub, tmp_path, COHERE_CLI_DL_CHUNK_SIZE=str(1 << 20), COHERE_CLI_DL_RETRIES="3",
            COHERE_CLI_DL_TIMEOUT="60")
    hub.faults.clear()
    hub.reset_counts()
    yield
    hub.faults.clear()


def size(ckpt: Path, rel: str) -> int:
    return (ckpt / rel).stat().st_size


def ok(*args: str):
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, f"{r.output}\n{r.exception!r}"
    return r


def fails(*args: str, exc=DownloadError) -> str:
    r = runner.invoke(app, list(args))
    assert isinstance(r.exception, exc), f"{r.output}\n{r.exception!r}"
    msg = str(r.exception)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def partials() -> list[store.Partial]:
    return store.list_partials()


# ---- the happy path ------------------------------------------------------------------------------------------------
def test_download_publishes_verified_entry(hub, ckpt):
    # the first shard's bodies are held until two of them are in flight at once: the ranges must come in parallel
    hub.faults.hold_after(0, path=SHARD1)
    result = {}
    run = threading.Thread(target=lambda: result.update(r=runner.invoke(app, ["download", REPO])), daemon=True)
    run.start()
    deadline = time.monotonic() + 120
    while hub.max_in_flight[SHARD1] < 2 and run.is_alive():
        assert time.monotonic() < deadline, "the shard's ranges never came in parallel"
        time.sleep(0.02)
    hub.faults.release()
    run.join(300)
    assert "r" in result, "the download did not end"
    r = result["r"]
    assert r.exit_code == 0, f"{r.output}\n{r.exception!r}"
    path = Path(r.stdout.strip())
    assert path == store.models_dir() / "CohereForAI--tiny-command-r"
    assert {p.name for p in path.iterdir()} == DEFAULT_SET | {"manifest.json"}  # no README, .bin, original/
    for rel in DEFAULT_SET:
        assert (path / rel).read_bytes() == (ckpt / rel).read_bytes()
        assert hub.sent(rel) == size(ckpt, rel)  # every byte exactly once (the access probe is a HEAD)
    m = store.read_manifest(path)
    assert m["source"] == {"repo_id": REPO, "revision": "main", "commit": hub.commit, "endpoint": hub.url}
    hosted = hub.repos[REPO].commits[hub.commit]
    for rel in DEFAULT_SET:
        assert m["files"][rel]["sha256"] == hosted[rel].sha256 and m["files"][rel]["size"] == hosted[rel].size
    assert m["architecture"] == "CohereForCausalLM" and m["precision"] == "bf16" and m["parameters"] > 4_000_000
    # big files came in parallel ranges; the CDN never saw the Authorization header
    shard1_blob = f"/cdn/{hosted[SHARD1].sha256}"
    ranges = [q for q in hub.requests if q["path"] == shard1_blob and q["range"]]
    assert len(ranges) == 6  # 5.5 MB in 1 MiB ranges
    assert hub.max_in_flight[SHARD1] >= 2
    assert "verified model-00001-of-00002.safetensors" in r.stderr
    assert store.last_used() == REPO
    assert partials() == []


def test_second_download_is_up_to_date(hub):
    ok("download", REPO)
    hub.reset_counts()
    r = ok("download", REPO)
    assert "up to date" in r.stderr and sum(hub.bytes_sent.values()) == 0


def test_revision_is_resolved_and_recorded(hub):
    r = ok("download", REPO, "--revision", "v1", "--json")
    rec = json.loads(r.stdout)
    assert rec["commit"] == hub.commit and rec["revision"] == "v1"
    assert store.get_entry(REPO).manifest["source"]["revision"] == "v1"


def test_include_exclude(hub):
    r = ok("download", REPO, "--include", "*.json", "--exclude", "generation_config.json", "--json")
    path = Path(json.loads(r.stdout)["path"])
    assert {p.name for p in path.iterdir()} == {"config.json", "tokenizer.json", "tokenizer_config.json",
                                                "special_tokens_map.json", "model.safetensors.index.json",
                                                "manifest.json"}
    msg = fails("download", REPO, "--include", "*.gguf")
    assert "no file of" in msg and "--include" in msg


def test_new_commit_fetches_only_changed_files(hub, ckpt, tmp_path):
    ok("download", REPO)
    changed = tmp_path / "v2"
    changed.mkdir()
    for p in ckpt.rglob("*"):
        if p.is_file():
            dst = changed / p.relative_to(ckpt)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(p.read_bytes())
    data = bytearray((changed / SHARD2).read_bytes())
    data[-1] ^= 1
    (changed / SHARD2).write_bytes(bytes(data))
    new = hub.push(REPO, changed)
    hub.reset_counts()
    try:
        ok("download", REPO)
    finally:
        hub.repos[REPO].refs["main"] = hub.commit
    assert hub.sent(SHARD1) == 0 and hub.sent(SHARD2) == size(changed, SHARD2)
    e = store.get_entry(REPO)
    assert e.commit == new and (e.path / SHARD2).read_bytes() == bytes(data)


# ---- resuming ------------------------------------------------------------------------------------------------------
def test_connection_dropped_mid_file_is_resumed_in_the_same_run(hub, ckpt):
    hub.faults.drop(SHARD1, at=2_500_000, times=1)
    r = ok("download", REPO)
    assert "retrying model-00001-of-00002.safetensors" in r.stderr
    assert hub.sent(SHARD1) == size(ckpt, SHARD1)  # only the missing bytes were sent again: none twice


def test_rerun_after_failure_transfers_only_missing_bytes(hub, ckpt):
    hub.faults.drop(SHARD1, at=2_500_000, times=None)  # the link dies there on every attempt
    msg = fails("download", REPO)
    assert "giving up on model-00001-of-00002.safetensors" in msg and "run the same command again" in msg
    assert store.list_entries() == []  # nothing half-written is published
    [p] = partials()
    assert p.name == REPO and p.bytes_on_disk >= 2_500_000
    r = runner.invoke(app, ["models"])
    assert "incomplete download" in r.stderr and f"cohere download {REPO}" in r.stderr
    first = dict(hub.bytes_sent)
    hub.faults.clear()
    hub.reset_counts()
    r = ok("download", REPO)
    assert "resuming" in r.stderr
    second = dict(hub.bytes_sent)
    for rel in DEFAULT_SET:
        assert first.get(rel, 0) + second.get(rel, 0) == size(ckpt, rel), rel  # nothing was sent twice
    assert second.get(SHARD1, 0) <= size(ckpt, SHARD1) - 2_500_000
    assert partials() == []


HELD_AT = 3_000_000  # bytes the server sends in all before it holds every transfer (of ~11 MB)


def _run_until_held(hub) -> subprocess.Popen:
    """A download that gets HELD_AT bytes and then waits on the server, which holds every body mid-way, until the
    client has written and recorded (state saved after every write) everything it was sent: whatever the test does
    next happens mid-download, however busy the machine."""
    hub.faults.hold_after(HELD_AT)
    env = {**os.environ, "COHERE_CLI_DL_SAVE_INTERVAL": "0",
           "COHERE_CLI_DL_TIMEOUT": "600"}  # a held connection is silent: no timeout may end it first
    proc = subprocess.Popen([sys.executable, "-m", "cohere_cli", "download", REPO], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (hub.faults.holding() and _saved_bytes() == sum(hub.bytes_sent.values()) == HELD_AT):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, ("the download never reached the hold", _saved_bytes(),
                                             dict(hub.bytes_sent))
        time.sleep(0.02)
    return proc


def _saved_bytes() -> int:
    """Bytes the staging folder holds for good: the part states' recorded progress plus the files already finished
    (what a rerun will not fetch again)."""
    from cohere_cli.store.staging import staging_files

    total = 0
    for p in partials():
        for f, _ in staging_files(p.path):
            try:
                if f.name.endswith(".part.json"):
                    total += sum(json.loads(f.read_text()).get("done") or [])
                elif not f.name.endswith(".part"):
                    total += f.stat().st_size
            except (OSError, ValueError):
                pass  # being written or replaced right now: read again on the next poll
    return total


def _resent_after_rerun(hub, ckpt, first: dict) -> tuple[int, int]:
    hub.faults.clear()
    hub.reset_counts()
    ok("download", REPO)
    second = dict(hub.bytes_sent)
    resent = sum(first.get(rel, 0) + second.get(rel, 0) - size(ckpt, rel) for rel in DEFAULT_SET)
    return resent, sum(second.values())


def test_ctrl_c_then_rerun_continues(hub, ckpt):
    proc = _run_until_held(hub)
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        hub.faults.end_holds()  # the held bodies end: nothing more is sent or counted
    assert proc.returncode == 130, err
    assert "run the same command to resume" in err and "Traceback" not in err
    assert store.list_entries() == [] and len(partials()) == 1
    first = dict(hub.bytes_sent)
    assert sum(first.values()) == HELD_AT
    resent, second = _resent_after_rerun(hub, ckpt, first)
    print(f"\nresume after Ctrl-C: {sum(first.values())} B sent before, {second} B after, re-sent {resent} B")
    assert resent == 0  # everything that arrived before the Ctrl-C was kept


def test_kill_9_then_rerun_continues(hub, ckpt):
    proc = _run_until_held(hub)
    try:
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        hub.faults.end_holds()  # the held bodies end: nothing more is sent or counted
    assert store.list_entries() == [] and len(partials()) == 1
    first = dict(hub.bytes_sent)
    resent, second = _resent_after_rerun(hub, ckpt, first)
    print(f"\nresume after kill -9: {sum(first.values())} B sent before, {second} B after, re-sent {resent} B")
    assert resent == 0 and second == sum(size(ckpt, rel) for rel in DEFAULT_SET) - HELD_AT  # only the rest


# ---- verification --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", [SHARD2, "config.json"])
def test_corrupted_byte_is_detected_and_discarded(hub, ckpt, rel):
    hub.faults.corrupt(rel, at=size(ckpt, rel) // 2)
    msg = fails("download", REPO)
    assert f"{rel} failed verification" in msg and ("sha256" in msg if rel == SHARD2 else "git blob id" in msg)
    assert "run the same command again" in msg
    assert store.list_entries() == []
    [p] = partials()
    assert not (p.path / rel).exists() and not (p.path / f"{rel}.part").exists()  # the bad part is deleted
    assert (p.path / SHARD1).is_file()  # the good files are kept
    hub.faults.clear()
    hub.reset_counts()
    ok("download", REPO)
    assert hub.sent(rel) == size(ckpt, rel) and hub.sent(SHARD1) == 0


def test_transient_server_errors_are_retried(hub, ckpt):
    hub.faults.fail(SHARD1, 503, times=2)
    hub.faults.fail("config.json", 429, times=1)
    r = ok("download", REPO)
    assert "HTTP 503" in r.stderr
    assert hub.sent(SHARD1) == size(ckpt, SHARD1)


def test_stalled_server_times_out_and_resumes(hub, ckpt, monkeypatch):
    monkeypatch.setenv("COHERE_CLI_DL_TIMEOUT", "5")  # short enough for the test, long for a healthy connection
    hub.faults.stall(SHARD1, at=1_500_000, seconds=HOLD_LIMIT)  # until the test ends: only a timeout gets past it
    r = ok("download", REPO)
    assert "timed out" in r.stderr
    assert hub.sent(SHARD1) == size(ckpt, SHARD1)
    hub.faults.clear()  # the stalled body ends; wait for it, so that no later test counts it as in flight
    deadline = time.monotonic() + 60
    while hub.in_flight[SHARD1]:
        assert time.monotonic() < deadline, "the stalled body never ended"
        time.sleep(0.02)


# ---- errors --------------------------------------------------------------------------------------------------------
def test_gated_repo_without_token_says_where_to_accept(hub):
    msg = fails("download", GATED)
    assert f"{hub.url}/{GATED}" in msg and "accept its license" in msg
    assert "--token" in msg and "HF_TOKEN" in msg
    assert store.list_entries() == [] and partials() == []  # nothing half-written
    assert sum(hub.bytes_sent.values()) == 0


def test_gated_repo_with_a_token_that_has_no_access(hub):
    msg = fails("download", GATED, "--token", "hf_other")
    assert "no access" in msg and f"{hub.url}/{GATED}" in msg
    assert partials() == []


def test_gated_repo_with_token_from_flag_env_or_login(hub, monkeypatch, tmp_path):
    ok("download", GATED, "--token", "hf_good")
    assert not any(q["auth"] for q in hub.requests if q["role"] == "cdn")
    assert any(q["auth"] for q in hub.requests if q["role"] == "hub")
    store.remove_entry(GATED)
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    ok("download", GATED)
    store.remove_entry(GATED)
    monkeypatch.delenv("HF_TOKEN")
    token_file = tmp_path / "hf" / "token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text("hf_good")  # what `hf auth login` saves
    ok("download", GATED)


def test_private_and_unknown_repos(hub):
    msg = fails("download", PRIVATE)
    assert f"no model repo '{PRIVATE}'" in msg and "--token" in msg
    msg = fails("download", "CohereForAI/does-not-exist", "--token", "hf_good")
    assert "no model repo 'CohereForAI/does-not-exist'" in msg and "check the spelling" in msg
    msg = fails("download", REPO, "--token", "hf_wrong")
    assert "rejected the token" in msg
    msg = fails("download", "not a/valid/repo", exc=UsageError)
    assert "ORG/NAME" in msg


def test_unknown_revision(hub):
    msg = fails("download", REPO, "--revision", "v9")
    assert "has no revision 'v9'" in msg and "--revision" in msg


def test_no_network(monkeypatch):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    msg = fails("download", REPO)
    assert "cannot reach" in msg and "network" in msg
    assert partials() == []


def test_offline_mode(monkeypatch, hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = fails("download", REPO)
    assert "HF_HUB_OFFLINE" in msg
    assert not hub.requests


def test_disk_too_small_is_refused_up_front(hub, monkeypatch):
    from cohere_cli.store import fetch

    monkeypatch.setattr(fetch, "free_bytes", lambda path: (1_000_000, path))
    msg = fails("download", REPO)
    assert "needs 9.97 MB more on disk but only 1 MB is free" in msg
    assert sum(hub.bytes_sent.values()) == 0 and partials() == []


def test_concurrent_download_of_same_entry_is_refused(hub):
    with staging.staging_lock(store.partial_path(REPO), REPO):
        msg = fails("download", REPO)
    assert "another `cohere download`" in msg


def test_errors_reach_the_terminal_as_one_line(hub):
    r = subprocess.run([sys.executable, "-m", "cohere_cli", "download", "CohereForAI/does-not-exist"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: no model repo") and "Traceback" not in r.stderr


# ---- --dry-run -----------------------------------------------------------------------------------------------------
def test_dry_run_fetches_nothing(hub, ckpt):
    r = ok("download", REPO, "--dry-run")
    out = r.stdout
    for rel in DEFAULT_SET:
        assert rel in out
    assert "README.md" not in out and "pytorch_model.bin" not in out and "original/" not in out
    assert "total: 8 files, 9.97 MB" in out and "free under" in out and "fits" in out
    assert "weights bf16" in out and "int8" in out and "nf4" in out and "KV cache at 8192 tokens" in out
    assert set(hub.bytes_sent) <= {"config.json"}  # read for the memory estimate, nothing else
    assert not (store.store_root() / ".partial").exists() and store.list_entries() == []
    r = ok("download", REPO, "--dry-run", "--json")
    plan = json.loads(r.stdout)
    from cohere_cli.store import sizes

    d = sizes.Dims.from_config(json.loads((ckpt / "config.json").read_text()))
    assert plan["memory"]["weights_bytes"]["nf4"] == sizes.weights_bytes(d, "nf4")
    assert plan["memory"]["kv_cache_bytes"]["bf16"] == sizes.kv_cache_bytes(d, 8192)
    assert plan["total_bytes"] == sum(size(ckpt, rel) for rel in DEFAULT_SET) and plan["fits"] is True


def test_dry_run_shows_partial_progress(hub):
    hub.faults.drop(SHARD1, at=2_500_000, times=None)
    fails("download", REPO)
    hub.faults.clear()
    r = ok("download", REPO, "--dry-run")
    assert "partial" in r.stdout and "already here" in r.stdout


def test_dry_run_of_gated_repo_explains_access(hub):
    r = ok("download", GATED, "--dry-run")
    assert "gated: manual" in r.stdout and "accept its license" in r.stdout


# ---- the engine on its own -----------------------------------------------------------------------------------------
def test_engine_resumes_from_saved_state(hub, ckpt, tmp_path):
    hosted = hub.repos[REPO].commits[hub.commit][SHARD1]
    spec = download.FileSpec(SHARD1, f"{hub.url}/{REPO}/resolve/{hub.commit}/{SHARD1}", hosted.size,
                             sha256=hosted.sha256)
    opts = download.Options(chunk_size=1 << 20, backoff=0.01, retries=1, timeout=2, max_workers=3)
    hub.faults.drop(SHARD1, at=3_200_000, times=None)
    t = download.Transfer(tmp_path / "stage", [spec], {}, opts)
    with pytest.raises(DownloadError):
        t.run()
    state = json.loads((tmp_path / "stage" / f"{SHARD1}.part.json").read_text())
    assert state["chunk_size"] == 1 << 20 and sum(state["done"]) == t.fetched_bytes
    hub.faults.clear()
    t2 = download.Transfer(tmp_path / "stage", [spec], {}, opts)
    t2.prepare()
    assert t2.remaining_bytes == hosted.size - t.fetched_bytes
    res = t2.run()
    assert t.fetched_bytes + t2.fetched_bytes == hosted.size
    assert res[SHARD1].sha256 == hosted.sha256
    assert (tmp_path / "stage" / SHARD1).read_bytes() == (ckpt / SHARD1).read_bytes()


# ---- the downloaded entry runs ---------------------------------------------------------------------------------------
def test_generate_runs_on_the_downloaded_entry(hub, tmp_path):
    from factory_checkpoint import make_checkpoint

    ck = make_checkpoint(tmp_path / "gen", dtype="bfloat16")
    hub.add_repo("CohereForAI/tiny-generate", ck)
    ok("download", "CohereForAI/tiny-generate")
    r = subprocess.run([sys.executable, "-m", "cohere_cli", "generate", "tiny-generate", "hello", "--max-tokens",
                        "4", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert len(rec["token_ids"]) <= 4


def test_narrower_rerun_keeps_other_parts(hub, ckpt):
    hub.faults.drop(SHARD1, at=2_500_000, times=None)
    fails("download", REPO)
    hub.faults.clear()
    ok("download", REPO, "--include", "*.json")  # a first look at the configs only
    [p] = partials()  # the shard parts survive for the full download
    assert p.bytes_on_disk >= 2_500_000
    hub.reset_counts()
    ok("download", REPO)
    assert hub.sent(SHARD1) <= size(ckpt, SHARD1) - 2_500_000
    assert hub.sent("config.json") == 0 and partials() == []


def test_dry_run_of_a_moe_in_a_vision_wrapper_counts_what_a_token_reads(hub, tmp_path):
    """Command A+'s shape (cohere2_vision around cohere2_moe), under the CohereLabs organisation: the dry run sizes
    the text model, all of it for memory and the chosen experts for what a token reads."""
    from factory_checkpoint import make_checkpoint

    from cohere_cli.store import sizes

    folder = make_checkpoint(tmp_path / "a-plus", model_type="cohere2_moe", vision=True, sliding_window=8,
                             templates="cmd3", moe=dict(num_experts=8, num_experts_per_tok=2, num_shared_experts=1))
    hub.add_repo("CohereLabs/tiny-command-a-plus", folder)
    r = ok("download", "CohereLabs/tiny-command-a-plus", "--dry-run")
    assert "(cohere2_moe)" in r.stdout and "active per token (2 of 8 experts)" in r.stdout
    plan = json.loads(ok("download", "CohereLabs/tiny-command-a-plus", "--dry-run", "--json").stdout)
    d = sizes.Dims.from_config(json.loads((folder / "config.json").read_text()))
    assert plan["memory"]["weights_bytes"]["bf16"] == sizes.weights_bytes(d, "bf16")
    assert sizes.weights_bytes(d, "bf16", active=True) < sizes.weights_bytes(d, "bf16")
