"""Issue 18: the prompt as an argument, from `-`/a pipe, or from --prompt-file, for `generate` and `chat`; flags
shown as flags in --help; a clamped --ctx said out loud. Each drives the real command on the built-in demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cohere_cli.cli import app

ENV = {**os.environ, "COLUMNS": "200"}


def cohere(*args: str, stdin: str | None = None, home=None) -> subprocess.CompletedProcess:
    env = {**ENV, **({"COHERE_CLI_HOME": str(home)} if home else {})}
    return subprocess.run([sys.executable, "-m", "cohere_cli", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=300, stdin=None if stdin is not None else subprocess.DEVNULL)


def prompt_of(r: subprocess.CompletedProcess) -> list:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["prompt_ids"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The prompt ids of the prompts given as arguments, each run once for the module (in-process, on the real app:
    the argument form is the reference the piped and file forms are compared with)."""
    home = tmp_path_factory.mktemp("home")
    runs = {"generate fox": ["generate", "demo", "the quick fox"],
            "chat fox": ["chat", "demo", "--prompt", "the quick fox"], "chat q": ["chat", "demo", "--prompt", "q"]}
    out = {}
    for key, args in runs.items():
        r = CliRunner().invoke(app, [*args, "-n", "2", "--json"], env={"COHERE_CLI_HOME": str(home)})
        assert r.exit_code == 0, (r.output, r.exception)
        out[key] = json.loads(r.stdout)["prompt_ids"]
    return out


def test_generate_reads_a_piped_prompt_and_dash(tmp_path, reference):
    direct = reference["generate fox"]
    piped = prompt_of(cohere("generate", "demo", "-n", "2", "--json", stdin="the quick fox\n", home=tmp_path))
    dash = prompt_of(cohere("generate", "demo", "-", "-n", "2", "--json", stdin="the quick fox\n", home=tmp_path))
    assert piped == direct == dash


def test_prompt_file_for_generate_and_chat(tmp_path, reference):
    f = tmp_path / "q.txt"
    f.write_text("the quick fox\n")
    assert (prompt_of(cohere("generate", "demo", "--prompt-file", str(f), "-n", "2", "--json", home=tmp_path))
            == reference["generate fox"])
    assert (prompt_of(cohere("chat", "demo", "--prompt-file", str(f), "-n", "2", "--json", home=tmp_path))
            == reference["chat fox"])


def test_chat_takes_the_prompt_as_an_argument_or_dash(tmp_path, reference):
    want = reference["chat q"]
    assert prompt_of(cohere("chat", "demo", "q", "-n", "2", "--json", home=tmp_path)) == want
    assert prompt_of(cohere("chat", "demo", "-", "-n", "2", "--json", stdin="q\n", home=tmp_path)) == want
    assert prompt_of(cohere("chat", "demo", "--prompt", "-", "-n", "2", "--json", stdin="q", home=tmp_path)) == want


def test_a_bad_prompt_file_is_one_error_line(tmp_path, capfd, monkeypatch):
    """Through the `cohere` entry point itself (cli.main, the error boundary that writes the `error:` line),
    in-process with the file descriptors captured; test_too_much_stdin_is_one_error_line and
    test_an_empty_prompt_on_stdin_or_in_a_file_is_one_error_line see the same boundary from a subprocess."""
    from cohere_cli.cli import main

    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * ((4 << 20) + 1))
    monkeypatch.setenv("COHERE_CLI_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    for bad in ("/dev/zero", str(tmp_path), str(tmp_path / "missing.txt"), str(big)):
        for cmd in (["generate", "demo"], ["chat", "demo"]):
            monkeypatch.setattr(sys, "argv", ["cohere", *cmd, "--prompt-file", bad])
            capfd.readouterr()
            with pytest.raises(SystemExit) as e:
                main()
            out, err = capfd.readouterr()
            lines = err.strip().splitlines()
            assert e.value.code not in (0, None) and len(lines) == 1 and lines[0].startswith("error:"), (bad, err)


def test_too_much_stdin_is_one_error_line(tmp_path):
    r = cohere("generate", "demo", "-n", "2", stdin="a" * ((4 << 20) + 1), home=tmp_path)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "error: the prompt on stdin is over the 4 MiB a prompt may be"], r.stderr


def test_help_shows_flags_as_flags_and_lists_by_their_item():
    def help_of(*cmd: str) -> str:  # in-process on the real app: the same text as `cohere CMD --help` prints
        r = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, (r.output, r.exception)
        return r.stdout

    out = help_of("chat")
    assert "<bool>" not in out and "list[" not in out, out
    assert "--doc" in out and "FILE" in out
    for cmd in (["generate"], ["download"], ["models", "rm"], ["quantize"], ["bench"]):
        out = help_of(*cmd)
        assert "Usage:" in out and "<bool>" not in out and "list[" not in out, (cmd, out)


def test_a_clamped_ctx_is_a_warning(tmp_path):
    r = cohere("chat", "demo", "--ctx", "99999999", "--prompt", "hi", "-n", "2", home=tmp_path)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "--ctx 99999999" in warnings[0] and "using 8192" in warnings[0], r.stderr
    r = cohere("chat", "demo", "--ctx", "512", "--prompt", "hi", "-n", "2", home=tmp_path)
    assert "warning:" not in r.stderr, r.stderr


def test_a_flag_given_a_value_says_flags_take_none(tmp_path):
    """`cohere chat --plain true --prompt hi`: click reads 'true' as MODEL (a flag takes no value); the one line says
    so instead of only 'no store entry named true'."""
    r = cohere("chat", "--plain", "true", "--prompt", "hi", home=tmp_path)
    assert r.returncode != 0 and "takes no value" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_empty_prompt_on_stdin_or_in_a_file_is_one_error_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    for args, stdin in ((("generate", "demo"), ""), (("chat", "demo", "-"), ""), (("generate", "demo", "-f", str(empty)), None)):
        r = cohere(*args, stdin=stdin, home=tmp_path)
        assert r.returncode != 0 and "is empty" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
