"""Issue 18: one MODEL resolver for every command, driven through the real commands. `demo` is the built-in demo
everywhere (not demo-nf4), `models rm` never removes an entry named only by a short form on --yes, a bare `cohere
chat` records the resolved name and falls back to the demo when it is gone, `cohere models` lists the built-in, and
`cohere bench` finds the demo's nf4 copy in the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cohere_cli import store
from cohere_cli.cli import app
from cohere_cli.errors import UsageError
from hub_server import make_tiny_cohere
from test_bench_ux import table_lines, whole
from cohere_cli.commands.bench import _num

runner = CliRunner()


def cohere(home: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COHERE_CLI_HOME": str(home), **extra_env}
    return subprocess.run([sys.executable, "-m", "cohere_cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture
def with_nf4(quantized_demo, tmp_path) -> Path:
    """A store holding demo-nf4, made by `cohere quantize --bits 4` from the built-in demo (conftest: quantized once
    per run, copied here)."""
    home = quantized_demo.copy(tmp_path / "home", "demo-nf4")
    assert (home / "models" / "demo-nf4" / "manifest.json").is_file()
    return home


def test_demo_is_the_builtin_for_info_verify_rm(with_nf4):
    r = cohere(with_nf4, "models", "info", "demo", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == str(store.BUILTIN_DEMO) and "demo-nf4" not in r.stderr
    r = cohere(with_nf4, "models", "verify", "demo")
    assert r.returncode != 0 and "demo-nf4" not in r.stderr and "only store entries" in r.stderr
    r = cohere(with_nf4, "models", "rm", "demo", "--yes")
    assert r.returncode != 0 and "built-in" in r.stderr and "demo-nf4" not in r.stderr
    assert (with_nf4 / "models" / "demo-nf4").is_dir()
    # a short form still works for info and verify, and says which entry it resolved to
    r = cohere(with_nf4, "models", "verify", "nf4")
    assert r.returncode == 0 and "nf4: the store entry demo-nf4" in r.stderr and "ok: demo-nf4" in r.stderr


def test_models_lists_the_builtin_demo(with_nf4, tmp_path):
    r = cohere(tmp_path / "fresh", "models", "--json")
    assert r.returncode == 0, r.stderr
    assert [(m["name"], m["builtin"]) for m in json.loads(r.stdout)["models"]] == [("demo", True)]
    r = cohere(tmp_path / "fresh", "models")
    assert r.returncode == 0 and "demo" in r.stdout and "built-in" in r.stdout and "is empty" in r.stderr
    r = cohere(with_nf4, "models", "--json")
    models = {m["name"]: m for m in json.loads(r.stdout)["models"]}
    assert models["demo"]["builtin"] and not models["demo-nf4"]["builtin"]
    assert models["demo-nf4"]["parent"] == "demo"  # the name, not the package's install path


def test_bench_finds_the_demo_nf4_in_the_store(with_nf4):
    """`cohere bench` right after `cohere quantize demo --bits 4` (its precisions cut to the one in question): nf4
    is read from the store, not quantized again in memory, and the real table fits 80 columns with every figure
    whole (test_bench_ux.py tests the fitting itself on made-up records)."""
    r = cohere(with_nf4, "bench", "--seq", "24", "--gen", "2", "--repeat", "1", "--threads", "1",
               "--precision", "nf4", "--json", COLUMNS="80", COHERE_BENCH_PROBE_BYTES=str(16 << 20))
    assert r.returncode == 0, r.stderr
    assert "not in the store" not in r.stderr and "warning: nf4" not in r.stderr
    res = json.loads(r.stdout)["results"]
    assert [x["precision"] for x in res] == ["nf4"] and res[0]["source"] == "store: demo-nf4"
    assert res[0]["quantized_linears"] == 0  # loaded quantized, not quantized in memory
    assert "…" not in r.stderr
    table = "\n".join(table_lines(r.stderr))
    assert table and all(len(line) <= 80 for line in table.splitlines()), table
    for key, scale in (("prefill_seq_tokens_per_s", 1), ("ttft_s", 1000), ("decode_tokens_per_s", 1)):
        assert whole(_num(res[0][key]["median"] * scale), table), (key, table)
    assert whole(_num(res[0]["decode_roofline_tokens_per_s"]), table)


def test_chat_records_the_resolved_name_and_rm_clears_it(with_nf4):
    """In-process on the real app (the record and the notes are the commands' own, not the process's)."""

    def chat(*args: str):
        r = runner.invoke(app, ["chat", *args, "--prompt", "hi", "--max-tokens", "2", "--plain"],
                          env={"COHERE_CLI_HOME": str(with_nf4)})
        assert r.exit_code == 0, (r.output, r.exception)
        return r

    chat("nf4")
    assert json.loads((with_nf4 / "state.json").read_text())["last_used"] == "demo-nf4"
    assert "using demo-nf4 (the last one used)" in chat().stderr
    r = runner.invoke(app, ["models", "rm", "demo-nf4", "-y"], env={"COHERE_CLI_HOME": str(with_nf4)})
    assert r.exit_code == 0, (r.output, r.exception)
    assert "last_used" not in json.loads((with_nf4 / "state.json").read_text())
    assert "using demo (the built-in demo)" in chat().stderr
    # a record left by an older version (a short form, or an entry removed by hand): the demo, and a note
    (with_nf4 / "state.json").write_text(json.dumps({"last_used": "nf4"}))
    assert "using demo (the last one used, nf4, is gone)" in chat().stderr


def test_rm_never_removes_a_short_form_on_yes(tmp_path, monkeypatch):
    monkeypatch.setenv("COHERE_CLI_HOME", str(tmp_path / "home"))
    tiny = make_tiny_cohere(tmp_path / "tiny", hidden=64, intermediate=128, vocab=256, extras=False)
    for name in ("Org/nl", "Other/ab"):
        with store.entry_tmpdir(name) as tmp:
            for p in tiny.iterdir():
                (tmp / p.name).write_bytes(p.read_bytes())
    r = runner.invoke(app, ["models", "rm", "Org", "--yes"])  # only a substring of Org/nl
    assert isinstance(r.exception, UsageError)
    assert "`cohere models rm Org/nl`" in str(r.exception)
    assert store.get_entry("Org/nl") is not None
    r = runner.invoke(app, ["models", "info", "Org"])  # info may resolve it, and says to what
    assert r.exit_code == 0 and "Org: the store entry Org/nl" in r.stderr
    r = runner.invoke(app, ["models", "rm", "nl", "--yes"])  # the repo part is the entry's own name
    assert r.exit_code == 0 and "removed Org/nl" in r.stderr
    r = runner.invoke(app, ["models", "rm", "Other/ab", "--yes"])
    assert r.exit_code == 0 and store.get_entry("Other/ab") is None


def test_a_folder_without_a_checkpoint_does_not_hide_a_name(tmp_path, monkeypatch):
    """`mkdir demo && cohere models info demo`: a folder in the current directory with no config.json does not hide
    the built-in demo (the README: `demo` is always the built-in); a folder with a config.json still wins."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COHERE_CLI_HOME", str(tmp_path / "home"))
    (tmp_path / "demo").mkdir()
    assert store.locate("demo").builtin
    (tmp_path / "empty").mkdir()
    assert store.locate("empty").folder == Path("empty")  # no such name: the folder, and its own error later
