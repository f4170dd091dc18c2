"""What a newcomer meets first (issue 18): the demo with --doc, the quality report after quantizing the demo, the load
line of a quantized demo, and a folder that is not a checkpoint. Each through the real command: the one-line errors
in a subprocess (what the user sees on stderr), the rest in-process with typer's CliRunner on the real app."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cohere_cli
from cohere_cli.cli import app

DEMO = Path(cohere_cli.__file__).parent / "data" / "demo"


def cohere(*args: str, home: Path, **kw) -> subprocess.Popen:
    """The real `cohere` in a subprocess, stdin closed (no terminal: the REPL is not interactive)."""
    env = {**os.environ, "COHERE_CLI_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "cohere_cli", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def one_line_error(p: subprocess.Popen) -> str:
    """The command failed with exactly one line on stderr, an `error:` line, and nothing on stdout."""
    out, err = p.communicate(timeout=120)
    assert p.returncode not in (0, None), err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not out.strip(), out
    return lines[0]


def invoke(home: Path, *args: str):
    r = CliRunner().invoke(app, list(args), env={"COHERE_CLI_HOME": str(home)})
    assert r.exit_code == 0, (r.output, r.exception)
    return r


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, quantized_demo):
    """A store holding the demo quantized to nf4 (with its quality report: what `cohere quantize demo` printed)
    and to int8 (conftest's quantized_demo: quantized once per run)."""
    home = quantized_demo.copy(tmp_path_factory.mktemp("home"))
    return home, quantized_demo.report


@pytest.fixture(scope="module")
def grounding_ckpt(tmp_path_factory) -> Path:
    """The demo's weights and tokenizer with Command R's three templates (default, tool_use, rag): a model whose
    template renders documents."""
    from cohere_cli.engine.template import builtin_template

    d = tmp_path_factory.mktemp("ckpt") / "grounded"
    shutil.copytree(DEMO, d)
    conf = json.loads((d / "tokenizer_config.json").read_text())
    conf["chat_template"] = [{"name": n, "template": builtin_template(f"command-r-{n}")}
                             for n in ("default", "tool_use", "rag")]
    (d / "tokenizer_config.json").write_text(json.dumps(conf))
    return d


@pytest.fixture
def doc(tmp_path) -> Path:
    f = tmp_path / "penguins.txt"
    f.write_text("Emperor penguins are the tallest penguins.")
    return f


# ---- 1. --doc with a model that cannot ground answers ----------------------------------------------------------------
@pytest.mark.parametrize("mode", [["--prompt", "what is tallest?"], []], ids=["one-shot", "repl"])
def test_demo_with_doc_is_refused_before_loading(tmp_path, doc, mode):
    line = one_line_error(cohere("chat", "demo", "--doc", str(doc), *mode, home=tmp_path))
    # said before the weights load (no "demo: cohere, bfloat16 (...) loaded in" line), one line, no REPL command
    assert "demo cannot answer from documents" in line and "Command R, R+, R7B and A" in line, line
    assert "run without --doc" in line and "/doc" not in line, line


def test_a_template_without_documents_points_at_the_one_with(tmp_path, doc, grounding_ckpt):
    line = one_line_error(cohere("chat", str(grounding_ckpt), "--doc", str(doc), "--template", "default",
                                 "--prompt", "hi", home=tmp_path))
    assert "'default' has no documents path" in line and "--template rag" in line and "/doc" not in line, line


def test_a_model_with_a_documents_template_answers_from_documents(tmp_path, doc, grounding_ckpt):
    r = invoke(tmp_path, "chat", str(grounding_ckpt), "--doc", str(doc), "--prompt", "Which penguins are the "
               "tallest?", "--max-tokens", "2")
    assert "loaded in" in r.output


def test_only_the_repl_suggests_doc_clear(grounding_ckpt):
    """A conversation that gains documents inside the REPL (/load) on a model without a documents path: there the
    advice is the REPL's own command."""
    from cohere_cli.chat.session import ChatSettings, grounded_template
    from cohere_cli.engine.tokenizer import Tokenizer
    from cohere_cli.errors import TemplateError

    with pytest.raises(TemplateError, match="demo cannot answer from documents.*Command R.*/doc clear"):
        grounded_template(Tokenizer.from_dir(DEMO), None, ChatSettings(), "demo")
    assert grounded_template(Tokenizer.from_dir(grounding_ckpt), None, ChatSettings(), "g")[0] == "rag"


def test_models_info_says_what_a_model_can_ground(tmp_path, grounding_ckpt):
    demo = invoke(tmp_path, "models", "info", "demo").stdout
    assert "documents     no: its chat template has no documents (RAG) path" in demo and "Command R" in demo
    assert "tools         yes (its 'tool_use' template)" in demo  # trained to call list_models
    grounded = invoke(tmp_path, "models", "info", str(grounding_ckpt)).stdout
    assert "documents     yes: `cohere chat --doc FILE`" in grounded and "'rag' template" in grounded
    assert "tools         yes (its 'tool_use' template)" in grounded
    can = json.loads(invoke(tmp_path, "models", "info", str(grounding_ckpt), "--json").stdout)["capabilities"]
    assert can == {"chat_templates": ["default", "rag", "tool_use"], "documents": "rag", "tools": "tool_use"}


# ---- 2. the quality report explains itself ---------------------------------------------------------------------------
def test_quality_report_after_quantizing_the_demo_explains_its_numbers(quantized):
    home, report = quantized
    assert "built-in evaluation text (general English" in report, report
    ppl = next(line for line in report.splitlines() if line.strip().startswith("perplexity"))
    assert "e+" not in ppl and "," in ppl, ppl  # 105,608, not 1.056e+05
    assert "%: the change is what matters" in ppl and "(+" in ppl, ppl
    assert "help-desk toy" in report and "not by the absolute number" in report, report
    info = invoke(home, "models", "info", "demo-nf4").stdout  # the same report, from the manifest
    assert "help-desk toy" in info and ppl in info


def test_quality_report_of_a_model_that_knows_the_text_has_no_note():
    from cohere_cli.bench.quality import format_report

    lines = format_report({"parent_perplexity": 12.3456, "perplexity": 12.4701, "kl_mean": 0.00321,
                           "kl_p99": 0.0412, "top1_agreement": 0.9712, "tokens": 4088, "windows": 8, "window": 512,
                           "dtype": "bfloat16", "vocab": 255029}, parent="CohereLabs/c4ai-command-r7b-12-2024")
    assert lines[1].split()[:4] == ["perplexity", "12.35", "->", "12.47"] and "(+1.0%" in lines[1], lines
    assert "mean 0.00321, p99 0.0412" in lines[2] and "97.1%" in lines[3], lines
    assert len(lines) == 4  # no note


# ---- 3. the load line says what the weights are ----------------------------------------------------------------------
@pytest.mark.parametrize("name, precision", [("demo-nf4", "nf4"), ("demo-int8", "int8")])
def test_load_line_of_a_quantized_demo_names_its_precision(quantized, name, precision):
    home, _ = quantized
    r = invoke(home, "chat", name, "--prompt", "hi", "--max-tokens", "1")
    line = next(line for line in r.output.splitlines() if "loaded in" in line)
    assert line.startswith(f"{name}: cohere, {precision} (") and "compute" in line, line
    assert "bfloat16 (" not in line, line


# ---- 4. a folder that is not a checkpoint: one check, one message -------------------------------------------------
def run_main(args: list[str], home: Path, capsys, monkeypatch) -> tuple[int, str]:
    """The `cohere` entry point itself (cli.main: the error boundary that writes the `error:` line), in-process."""
    from cohere_cli.cli import main

    monkeypatch.setenv("COHERE_CLI_HOME", str(home))
    monkeypatch.setattr(sys, "argv", ["cohere", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    assert not out.strip(), out
    return e.value.code, err


def test_every_command_says_the_same_of_a_folder_without_config_json(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tokenizer.json").write_text("{}")  # whatever else it holds, it has no config.json
    commands = {"generate": ["generate", str(empty), "hi"], "models info": ["models", "info", str(empty)],
                "quantize": ["quantize", str(empty)], "bench": ["bench", str(empty)],
                "chat (REPL)": ["chat", str(empty)]}
    lines = {"chat": one_line_error(cohere("chat", str(empty), "--prompt", "hi", home=tmp_path))}  # as reported
    for what, args in commands.items():
        code, err = run_main(args, tmp_path, capsys, monkeypatch)
        assert code != 0 and len(err.strip().splitlines()) == 1, (what, err)
        lines[what] = err.strip()
    want = f"error: {empty} is not a checkpoint folder (no config.json)"
    assert all(line.startswith(want) for line in lines.values()), lines
    assert len(set(lines.values())) == 1, lines  # word for word
    assert "tokenizer.json" not in lines["chat"] and "cohere models" in lines["chat"]


@pytest.mark.parametrize("vocab", ["abc", [1], True, -5, None])
def test_a_tampered_vocab_in_a_manifest_report_is_ignored(vocab):
    """The report's `vocab` comes from a manifest (untrusted): a value that is not a positive number is left out,
    never a traceback in `cohere models info` (the reviewer's repro: "vocab": "abc")."""
    from cohere_cli.bench.quality import format_report

    d = dict(tokens=100, windows=1, window=128, dtype="float32", parent_perplexity=1.0e5, perplexity=1.1e5,
             kl_mean=0.01, kl_p99=0.1, top1_agreement=0.9, vocab=vocab)
    text = "\n".join(format_report(d))
    assert "perplexity" in text and "uniform guess" not in text
